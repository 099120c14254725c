//! Installing a certificate into a named target from the agent's own config, crash-safe
//! and verified.
//!
//! The target's configured paths are symlinks into a versioned store
//! (`<store_dir>/current/<file>`, `current` → `<serial>/`). One install, step by step,
//! each step durable before the next, under a journal (`state_dir/installs/<target>.json`):
//! 1. **stage** — the new files are written (fsync, mode, owner) into
//!    `<store>/.staging-<serial>/`, which is then renamed to `<store>/<serial>/`;
//! 2. **link** — any configured path that is not yet a link becomes one, without changing
//!    what it holds: the first time, the files in place are copied to `<store>/initial/`
//!    and `current` points there before any path is replaced by a link;
//! 3. **switch** — `current` is pointed at the new version with one rename: every file
//!    changes at the same instant, so no moment shows a new certificate with an old key;
//! 4. **config test** (`nginx -t` …): on failure `current` goes back, no reload;
//! 5. **reload** (command, or signal to a pid file): on failure, back + reload;
//! 6. **served check**: TLS handshakes with each verify address until every one presents
//!    the new leaf, three rounds in a row, within a grace window; otherwise `current` goes
//!    back, the web server is reloaded again, and the failure is reported as rolled back.
//!
//! The current and previous versions are kept; older ones are pruned.
//!
//! A kill at any instant leaves the old or the new pair in place, every file whole.
//! [`Installer::recover`] runs at start, before the session: a switched install is
//! finished (config test, reload), an unswitched one dropped.
//!
//! The certbot preset keeps certbot's own layout (`live/` links into numbered `archive/`
//! files) and is updated file by file under the same journal (staged `.cf-new` files,
//! `.prev` copies, renames), as certbot itself does: a kill between two renames leaves
//! whole files that are finished on restart before any reload.
//!
//! Only paths and commands from the local config are ever used (design invariant 3).

use crate::error::AgentFailure;
use crate::keys::PendingKeys;
use crate::served::{self, Seen};
use crate::target::{FileRole, Reload, Target, TargetFile};
use certfleet_shared::fsutil::{read_limited, sync_dir, write_atomic};
use certfleet_shared::x509::{chain_to_pem, key_matches_spki, parse_pem_chain, CertInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OUTPUT_LIMIT: usize = 2048;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
const VERIFY_EVERY: Duration = Duration::from_millis(200);
/// Rounds in a row in which every address must present the new leaf: right after a
/// reload an old worker may still accept a connection or two (nginx and apache reload
/// asynchronously), so one good handshake proves little.
const STABLE_ROUNDS: u32 = 3;
/// Test hook: the agent stops (sleeps forever) when it reaches this named point of an
/// install, so a test can kill -9 it exactly there. Unset in production.
pub const PAUSE_ENV: &str = "CERTFLEET_AGENT_TEST_PAUSE_AT";

/// What is installed in a target right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub serial: String,
    pub not_after: i64,
    pub ips: Vec<IpAddr>,
}

/// Reads the target's current leaf, and reports it only if the key file matches it.
pub fn inspect(target: &Target) -> Option<Installed> {
    let leaf_file = target.leaf_source()?;
    let pem = String::from_utf8(read_limited(&leaf_file.path, 256 * 1024).ok()?).ok()?;
    let chain = parse_pem_chain(&pem).ok()?;
    let leaf = CertInfo::from_der(chain.first()?).ok()?;
    let key_file = target.key_source()?;
    let key = String::from_utf8(read_limited(&key_file.path, 256 * 1024).ok()?).ok()?;
    let key = private_key_block(&key)?;
    key_matches_spki(key, &leaf.spki_der).then_some(Installed {
        serial: leaf.serial_hex,
        not_after: leaf.not_after,
        ips: leaf.ips,
    })
}

/// The PKCS#8 block of a PEM file that may also hold certificates (haproxy's combined file).
fn private_key_block(pem: &str) -> Option<&str> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem.find(BEGIN)?;
    let end = pem[start..].find(END)? + start + END.len();
    Some(&pem[start..end])
}

#[derive(Debug)]
pub struct InstallOutcome {
    pub serial: String,
    pub not_after: i64,
    pub reload_output: String,
    /// Verify addresses that presented the new leaf.
    pub served_on: Vec<SocketAddr>,
    pub verify_disabled: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Staging,
    Committed,
    Swapped,
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    target: String,
    serial: String,
    phase: Phase,
    /// Destinations, and whether each had a previous version (kept as `.prev`): the
    /// certbot layout's per-file swap.
    #[serde(default)]
    files: Vec<(PathBuf, bool)>,
    /// The versioned store, the version being installed and the one `current` pointed at
    /// before (every other layout).
    #[serde(default)]
    store: Option<PathBuf>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    prev: Option<String>,
}

/// What an install switched, so it can be undone.
#[derive(Debug, Clone)]
enum Undo {
    /// certbot layout: files renamed one by one, previous ones kept as `.prev`.
    Files(Vec<(PathBuf, bool)>),
    /// Versioned store: `current` now points at `version`, before at `prev`.
    Version {
        store: PathBuf,
        version: String,
        prev: Option<String>,
    },
}

impl Undo {
    fn has_previous(&self) -> bool {
        match self {
            Undo::Files(files) => files.iter().any(|(_, had)| *had),
            Undo::Version { prev, .. } => prev.is_some(),
        }
    }
}

/// Installs certificates and repairs interrupted installs.
pub struct Installer {
    journal_dir: PathBuf,
    pause_at: Option<String>,
    observer: std::sync::Arc<rustls::ClientConfig>,
}

impl Installer {
    pub fn new(state_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            journal_dir: state_dir.join("installs"),
            pause_at: std::env::var(PAUSE_ENV).ok().filter(|s| !s.is_empty()),
            observer: certfleet_shared::tls::observer_client_config()?,
        })
    }

    fn journal_path(&self, target: &str) -> PathBuf {
        self.journal_dir.join(format!("{target}.json"))
    }

    fn write_journal(&self, j: &Journal) -> Result<(), AgentFailure> {
        std::fs::create_dir_all(&self.journal_dir)
            .map_err(|e| write_failed(&self.journal_dir, e))?;
        let path = self.journal_path(&j.target);
        let bytes = serde_json::to_vec(j)
            .map_err(|e| AgentFailure::new("internal", format!("install journal: {e}")))?;
        write_atomic(&path, &bytes, 0o600).map_err(|e| write_failed(&path, e))
    }

    fn remove_journal(&self, target: &str) {
        let path = self.journal_path(target);
        if std::fs::remove_file(&path).is_ok() {
            let _ = sync_dir(&self.journal_dir);
        }
    }

    /// Stops here forever when the test hook names this point (see [`PAUSE_ENV`]).
    async fn pause(&self, point: &str) {
        if self.pause_at.as_deref() == Some(point) {
            tracing::warn!(point, "test pause point reached");
            std::future::pending::<()>().await;
        }
    }

    /// Finishes or rolls back installs a crash interrupted. Runs before the session.
    pub async fn recover(&self, targets: &BTreeMap<String, Target>) {
        for (name, target) in targets {
            let path = self.journal_path(name);
            let Ok(bytes) = read_limited(&path, 1024 * 1024) else {
                continue;
            };
            let journal: Journal = match serde_json::from_slice(&bytes) {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(target = %name, error = %e, path = %path.display(), "unreadable install journal; leaving the target as it is");
                    continue;
                }
            };
            match self.recover_one(target, journal).await {
                Ok(msg) => tracing::warn!(target = %name, "interrupted install: {msg}"),
                Err(e) => {
                    tracing::error!(target = %name, code = e.code, error = %e.message, "interrupted install could not be repaired")
                }
            }
        }
    }

    async fn recover_one(&self, target: &Target, mut j: Journal) -> Result<String, AgentFailure> {
        if let (Some(store), Some(version)) = (j.store.clone(), j.version.clone()) {
            return self.recover_version(target, &j, store, version).await;
        }
        match j.phase {
            Phase::Staging => {
                for (path, _) in &j.files {
                    let _ = std::fs::remove_file(staged_path(path));
                }
                self.remove_journal(&target.name);
                return Ok(format!(
                    "serial {} was not committed; the previous certificate stays",
                    j.serial
                ));
            }
            Phase::Committed => {
                self.swap(&j.files)?;
                j.phase = Phase::Swapped;
                self.write_journal(&j)?;
            }
            Phase::Swapped => {}
        }
        // The files are the new ones; the web server may not have loaded them.
        if let Err(e) = run_check(target).await {
            self.restore(&Undo::Files(j.files.clone()))?;
            self.remove_journal(&target.name);
            return Err(e.rolled_back(inspect(target).map(|i| i.serial)));
        }
        let reloaded = reload(target).await;
        self.remove_journal(&target.name);
        match reloaded {
            Ok(_) => Ok(format!(
                "serial {} finished installing and the web server was reloaded; the served check follows when the coordinator asks",
                j.serial
            )),
            Err(e) => Err(e),
        }
    }

    /// Installs `chain_pem` into `target`: stage, swap, config test, reload, served check,
    /// with rollback on failure. Idempotent: a certificate already in place is only checked.
    pub async fn install(
        &self,
        target: &Target,
        chain_pem: &str,
        own_ips: &[IpAddr],
        pending: &PendingKeys,
    ) -> Result<InstallOutcome, AgentFailure> {
        let chain = parse_pem_chain(chain_pem)
            .map_err(|e| AgentFailure::bad_request(format!("certificate chain: {e}")))?;
        let leaf_der = chain
            .first()
            .ok_or_else(|| AgentFailure::bad_request("empty certificate chain"))?;
        let leaf = CertInfo::from_der(leaf_der)
            .map_err(|e| AgentFailure::bad_request(format!("leaf certificate: {e}")))?;
        if let Some(ip) = leaf.ips.iter().find(|ip| !own_ips.contains(ip)) {
            return Err(AgentFailure::new(
                "not_my_ip",
                format!("the certificate names {ip}, which is not one of this host's ips"),
            ));
        }
        let previous = inspect(target);
        let name = target.name.as_str();
        let mut reload_output = String::new();
        if previous
            .as_ref()
            .is_some_and(|i| i.serial == leaf.serial_hex)
        {
            tracing::info!(target = name, serial = %leaf.serial_hex, "certificate already installed; checking it is served");
        } else {
            let key = pending.find(&leaf.spki_der).ok_or_else(|| {
                AgentFailure::new(
                    "no_matching_key",
                    "no key on this host matches the certificate's public key (pending key lost?); a new certificate is needed",
                )
            })?;
            let contents = contents(target, &chain, &key.0, &leaf)?;
            let files = if target.archive_dir.is_some() {
                self.swap_files(target, &leaf.serial_hex, &contents).await?
            } else {
                self.swap_version(target, &leaf.serial_hex, &contents)
                    .await?
            };
            tracing::info!(target = name, serial = %leaf.serial_hex, "certificate files in place");
            self.pause("swapped").await;

            if let Err(e) = run_check(target).await {
                return Err(self.roll_back(target, &files, e, false).await);
            }
            match reload(target).await {
                Ok(out) => reload_output = out,
                Err(e) => return Err(self.roll_back(target, &files, e, true).await),
            }
            self.pause("reloaded").await;
            if let Err(e) = self.verify(target, leaf_der.as_ref()).await {
                return Err(self.roll_back(target, &files, e, true).await);
            }
            self.remove_journal(name);
            if let Undo::Version {
                store,
                version,
                prev,
            } = &files
            {
                prune_versions(store, version, prev.as_deref());
            }
            pending.remove(&leaf.spki_der);
            return Ok(InstallOutcome {
                serial: leaf.serial_hex,
                not_after: leaf.not_after,
                reload_output,
                served_on: target.verify.clone(),
                verify_disabled: target.verify.is_empty(),
            });
        }
        // Already in place (a replayed command, or after a restart): prove it is served,
        // reloading once if the web server still presents something else.
        if self.verify(target, leaf_der.as_ref()).await.is_err() {
            tracing::info!(target = name, "new certificate not served yet; reloading");
            reload_output = reload(target).await?;
            self.verify(target, leaf_der.as_ref()).await?;
        }
        pending.remove(&leaf.spki_der);
        Ok(InstallOutcome {
            serial: leaf.serial_hex,
            not_after: leaf.not_after,
            reload_output,
            served_on: target.verify.clone(),
            verify_disabled: target.verify.is_empty(),
        })
    }

    /// certbot layout: stage every file (journal), commit, rename them one by one.
    async fn swap_files(
        &self,
        target: &Target,
        serial: &str,
        contents: &[(TargetFile, Staged)],
    ) -> Result<Undo, AgentFailure> {
        let files = match self.stage(target, serial, contents).await {
            Ok(f) => f,
            Err(e) => {
                for (f, _) in contents {
                    let _ = std::fs::remove_file(staged_path(&f.path));
                }
                self.remove_journal(&target.name);
                return Err(e);
            }
        };
        self.pause("committed").await;
        for (i, (path, _)) in files.iter().enumerate() {
            promote(path)?;
            self.pause(&format!("renamed:{i}")).await;
        }
        self.write_journal(&Journal {
            target: target.name.clone(),
            serial: serial.to_owned(),
            phase: Phase::Swapped,
            files: files.clone(),
            store: None,
            version: None,
            prev: None,
        })?;
        Ok(Undo::Files(files))
    }

    /// Every other layout: the new files go into a new version directory of the store;
    /// the configured paths are symlinks into `<store>/current/`; one rename of `current`
    /// switches all of them at once, so no instant shows a mix of old and new files.
    async fn swap_version(
        &self,
        target: &Target,
        serial: &str,
        contents: &[(TargetFile, Staged)],
    ) -> Result<Undo, AgentFailure> {
        let store = target
            .store_dir
            .clone()
            .ok_or_else(|| AgentFailure::new("internal", "target without a store"))?;
        certfleet_shared::fsutil::create_dir_with_mode(&store, 0o755)
            .map_err(|e| write_failed(&store, e))?;
        let prev = current_version(&store);
        let version = if prev.as_deref() == Some(serial) {
            format!("{serial}-{:08x}", rand::random::<u32>())
        } else {
            serial.to_owned()
        };
        let mut journal = Journal {
            target: target.name.clone(),
            serial: serial.to_owned(),
            phase: Phase::Staging,
            files: Vec::new(),
            store: Some(store.clone()),
            version: Some(version.clone()),
            prev: prev.clone(),
        };
        self.write_journal(&journal)?;
        let result = self.stage_version(&store, &version, contents).await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(store.join(format!(".staging-{version}")));
            self.remove_journal(&target.name);
            return Err(e);
        }
        self.pause("staged").await;
        let prev = ensure_links(target, &store, prev)?;
        journal.phase = Phase::Committed;
        journal.prev = prev.clone();
        self.write_journal(&journal)?;
        self.pause("linked").await;
        point_current(&store, &version)?;
        journal.phase = Phase::Swapped;
        self.write_journal(&journal)?;
        Ok(Undo::Version {
            store,
            version,
            prev,
        })
    }

    /// Writes the files into `<store>/.staging-<version>/`, then renames it to
    /// `<store>/<version>/`.
    async fn stage_version(
        &self,
        store: &Path,
        version: &str,
        contents: &[(TargetFile, Staged)],
    ) -> Result<(), AgentFailure> {
        let staging = store.join(format!(".staging-{version}"));
        let _ = std::fs::remove_dir_all(&staging);
        certfleet_shared::fsutil::create_dir_with_mode(&staging, 0o755)
            .map_err(|e| write_failed(&staging, e))?;
        for (i, (file, staged)) in contents.iter().enumerate() {
            let path = staging.join(version_file_name(file.role));
            write_file(&path, link_bytes(staged), file)?;
            self.pause(&format!("staging:{i}")).await;
        }
        sync_dir(&staging).map_err(|e| write_failed(&staging, e))?;
        let dest = store.join(version);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&staging, &dest).map_err(|e| write_failed(&dest, e))?;
        sync_dir(store).map_err(|e| write_failed(store, e))
    }

    /// After a crash of a versioned install: if `current` already points at the new
    /// version, finish (config test, reload); if not, drop the new version.
    async fn recover_version(
        &self,
        target: &Target,
        j: &Journal,
        store: PathBuf,
        version: String,
    ) -> Result<String, AgentFailure> {
        if current_version(&store).as_deref() != Some(version.as_str()) {
            let _ = std::fs::remove_dir_all(store.join(format!(".staging-{version}")));
            if j.prev.as_deref() != Some(version.as_str()) {
                let _ = std::fs::remove_dir_all(store.join(&version));
            }
            self.remove_journal(&target.name);
            return Ok(format!(
                "serial {} was not switched in; the previous certificate stays",
                j.serial
            ));
        }
        let undo = Undo::Version {
            store,
            version,
            prev: j.prev.clone(),
        };
        if let Err(e) = run_check(target).await {
            self.restore(&undo)?;
            self.remove_journal(&target.name);
            return Err(e.rolled_back(inspect(target).map(|i| i.serial)));
        }
        let reloaded = reload(target).await;
        self.remove_journal(&target.name);
        reloaded.map(|_| {
            format!(
                "serial {} was switched in; the web server was reloaded, the served check follows when the coordinator asks",
                j.serial
            )
        })
    }

    /// Writes the journal, the staged files and the `.prev` copies; returns the
    /// destinations with whether each had a previous version.
    async fn stage(
        &self,
        target: &Target,
        serial: &str,
        contents: &[(TargetFile, Staged)],
    ) -> Result<Vec<(PathBuf, bool)>, AgentFailure> {
        let files: Vec<(PathBuf, bool)> = contents
            .iter()
            .map(|(f, _)| (f.path.clone(), exists(&f.path)))
            .collect();
        let mut journal = Journal {
            target: target.name.clone(),
            serial: serial.to_owned(),
            phase: Phase::Staging,
            files: files.clone(),
            store: None,
            version: None,
            prev: None,
        };
        self.write_journal(&journal)?;
        for (i, (file, staged)) in contents.iter().enumerate() {
            if let Some(dir) = file.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| write_failed(dir, e))?;
            }
            match staged {
                Staged::Content(bytes) => write_file(&staged_path(&file.path), bytes, file)?,
                Staged::Link { archive, link, .. } => {
                    if let Some(dir) = archive.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| write_failed(dir, e))?;
                    }
                    write_file(archive, link_bytes(staged), file)?;
                    make_symlink(link, &staged_path(&file.path))?;
                }
            }
            if files[i].1 {
                copy_entry(&file.path, &prev_path(&file.path), false)?;
            }
            self.pause(&format!("staging:{i}")).await;
        }
        for dir in parents(&files) {
            sync_dir(&dir).map_err(|e| write_failed(&dir, e))?;
        }
        journal.phase = Phase::Committed;
        self.write_journal(&journal)?;
        Ok(files)
    }

    /// Renames every staged file that is still there over its destination.
    fn swap(&self, files: &[(PathBuf, bool)]) -> Result<(), AgentFailure> {
        for (path, _) in files {
            if exists(&staged_path(path)) {
                promote(path)?;
            }
        }
        Ok(())
    }

    /// Puts the previous version back: `current` to the previous version in one rename,
    /// or (certbot layout) the `.prev` copies (files that had none keep the new content).
    fn restore(&self, undo: &Undo) -> Result<(), AgentFailure> {
        match undo {
            Undo::Version { store, prev, .. } => {
                if let Some(prev) = prev {
                    point_current(store, prev)?;
                }
            }
            Undo::Files(files) => {
                for (path, had_prev) in files {
                    if *had_prev {
                        copy_entry(&prev_path(path), &staged_path(path), false)?;
                        promote(path)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Rolls back after `cause`; reloads again when the web server may have seen the new
    /// files. Returns the failure to report.
    async fn roll_back(
        &self,
        target: &Target,
        files: &Undo,
        cause: AgentFailure,
        reload_again: bool,
    ) -> AgentFailure {
        let name = target.name.as_str();
        if !files.has_previous() {
            self.remove_journal(name);
            return AgentFailure::new(
                cause.code,
                format!(
                    "{}; there was no previous certificate to put back, the new files stay",
                    cause.message
                ),
            );
        }
        self.pause("rolling-back").await;
        if let Err(e) = self.restore(files) {
            return AgentFailure::new(
                "rollback_failed",
                format!(
                    "{}; restoring the previous files failed too: {}",
                    cause.message, e.message
                ),
            );
        }
        self.remove_journal(name);
        let mut message = format!("{}; the previous certificate was put back", cause.message);
        if reload_again {
            match reload(target).await {
                Ok(_) => {
                    message.push_str(" and the web server reloaded");
                    if let Some(prev) = inspect(target) {
                        let served = self.served_serials(target).await;
                        if !served.is_empty() {
                            message.push_str(&format!(" (now serving {})", served.join(", ")));
                        }
                        tracing::warn!(target = name, serial = %prev.serial, "rolled back");
                    }
                }
                Err(e) => message.push_str(&format!("; reloading it again failed: {}", e.message)),
            }
        }
        AgentFailure::new(cause.code, message).rolled_back(inspect(target).map(|i| i.serial))
    }

    /// One round of handshakes, described per address (for messages).
    async fn served_serials(&self, target: &Target) -> Vec<String> {
        let mut out = Vec::new();
        for addr in &target.verify {
            let seen = served::observe(self.observer.clone(), *addr, HANDSHAKE_TIMEOUT).await;
            out.push(format!("{addr}: {}", describe(&seen)));
        }
        out
    }

    /// Retries until every verify address presents `leaf_der`, or the grace window ends.
    async fn verify(&self, target: &Target, leaf_der: &[u8]) -> Result<(), AgentFailure> {
        if target.verify.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + target.verify_grace;
        let mut good_rounds = 0;
        let mut pending: Vec<SocketAddr>;
        let mut last: BTreeMap<SocketAddr, Seen> = BTreeMap::new();
        loop {
            let checks = target.verify.iter().map(|addr| {
                let cfg = self.observer.clone();
                let addr = *addr;
                async move { (addr, served::observe(cfg, addr, HANDSHAKE_TIMEOUT).await) }
            });
            pending = Vec::new();
            for (addr, seen) in futures::future::join_all(checks).await {
                if seen != Seen::Leaf(leaf_der.to_vec()) {
                    pending.push(addr);
                }
                last.insert(addr, seen);
            }
            if pending.is_empty() {
                good_rounds += 1;
                if good_rounds >= STABLE_ROUNDS {
                    tracing::info!(target = %target.name, addresses = ?target.verify, "new certificate is served");
                    return Ok(());
                }
            } else {
                good_rounds = 0;
            }
            if Instant::now() + VERIFY_EVERY > deadline {
                if pending.is_empty() {
                    // Served in the last round, just not for long yet: good enough.
                    return Ok(());
                }
                let detail: Vec<String> = pending
                    .iter()
                    .map(|a| {
                        format!(
                            "{a} {}",
                            last.get(a)
                                .map(describe)
                                .unwrap_or_else(|| "was not checked".into())
                        )
                    })
                    .collect();
                return Err(AgentFailure::new(
                    "not_served",
                    format!(
                        "target {}: the new certificate is not served after {} s: {}",
                        target.name,
                        target.verify_grace.as_secs(),
                        detail.join("; ")
                    ),
                ));
            }
            tokio::time::sleep(VERIFY_EVERY).await;
        }
    }
}

fn describe(seen: &Seen) -> String {
    match seen {
        Seen::Leaf(der) => match CertInfo::from_der(der) {
            Ok(info) => format!("serves serial {}", info.serial_hex),
            Err(_) => "serves an unparsable certificate".into(),
        },
        Seen::Unreachable(why) => why.clone(),
    }
}

/// What goes where: plain content, or (certbot layout) an archive file plus a symlink.
enum Staged {
    Content(Vec<u8>),
    Link {
        archive: PathBuf,
        link: PathBuf,
        content: Vec<u8>,
    },
}

fn link_bytes(s: &Staged) -> &[u8] {
    match s {
        Staged::Content(b) | Staged::Link { content: b, .. } => b,
    }
}

impl Staged {
    fn new(archive: Option<PathBuf>, link: Option<PathBuf>, content: Vec<u8>) -> Self {
        match (archive, link) {
            (Some(archive), Some(link)) => Staged::Link {
                archive,
                link,
                content,
            },
            _ => Staged::Content(content),
        }
    }
}

/// The bytes of every file of `target`.
fn contents(
    target: &Target,
    chain: &[rustls_pki_types::CertificateDer<'static>],
    key_pem: &str,
    leaf: &CertInfo,
) -> Result<Vec<(TargetFile, Staged)>, AgentFailure> {
    let leaf_pem = chain_to_pem(&chain[..1]);
    let issuers_pem = chain_to_pem(&chain[1..]);
    let full_pem = chain_to_pem(chain);
    let version = target.archive_dir.as_deref().map(next_archive_version);
    let mut out = Vec::new();
    for f in &target.files {
        let content = match f.role {
            FileRole::Cert => leaf_pem.clone().into_bytes(),
            FileRole::Chain => issuers_pem.clone().into_bytes(),
            FileRole::Fullchain => full_pem.clone().into_bytes(),
            FileRole::Key => key_pem.as_bytes().to_vec(),
            FileRole::Combined => format!("{full_pem}{key_pem}").into_bytes(),
            FileRole::Meta => lego_meta(leaf)?,
        };
        let (archive, link) = match (&target.archive_dir, version) {
            (Some(dir), Some(n)) => {
                let stem = f
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let archive = dir.join(format!("{stem}{n}.pem"));
                let link = relative_link(&f.path, &archive);
                (Some(archive), Some(link))
            }
            _ => (None, None),
        };
        out.push((f.clone(), Staged::new(archive, link, content)));
    }
    Ok(out)
}

/// lego's resource file: what lego's `certificates/<name>.json` holds that we know.
fn lego_meta(leaf: &CertInfo) -> Result<Vec<u8>, AgentFailure> {
    let domains: Vec<String> = leaf.ips.iter().map(|i| i.to_string()).collect();
    let meta = serde_json::json!({
        "domain": domains.first().cloned().unwrap_or_default(),
        "domains": domains,
        "certUrl": "",
        "certStableUrl": "",
        "serial": leaf.serial_hex,
        "notAfter": leaf.not_after,
    });
    serde_json::to_vec_pretty(&meta)
        .map_err(|e| AgentFailure::new("internal", format!("lego metadata: {e}")))
}

/// certbot numbers archive files 1, 2, …: the next number not used by any file.
fn next_archive_version(dir: &Path) -> u32 {
    let mut max = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".pem") {
                let digits: String = stem
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                let digits: String = digits.chars().rev().collect();
                if let Ok(n) = digits.parse::<u32>() {
                    max = max.max(n);
                }
            }
        }
    }
    max + 1
}

/// `live/<name>/cert.pem` → `../../archive/<name>/cert3.pem`, as certbot writes it.
fn relative_link(link: &Path, archive: &Path) -> PathBuf {
    let from: Vec<_> = link
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let to: Vec<_> = archive.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    rel
}

/// File name of a role inside a version directory of the store.
fn version_file_name(role: FileRole) -> &'static str {
    match role {
        FileRole::Cert => "cert.pem",
        FileRole::Chain => "chain.pem",
        FileRole::Fullchain => "fullchain.pem",
        FileRole::Key => "key.pem",
        FileRole::Combined => "combined.pem",
        FileRole::Meta => "meta.json",
    }
}

/// The version `<store>/current` points at.
fn current_version(store: &Path) -> Option<String> {
    std::fs::read_link(store.join("current"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Points `<store>/current` at `version` in one rename.
fn point_current(store: &Path, version: &str) -> Result<(), AgentFailure> {
    let tmp = store.join(".current.tmp");
    make_symlink(Path::new(version), &tmp)?;
    let current = store.join("current");
    std::fs::rename(&tmp, &current).map_err(|e| write_failed(&current, e))?;
    sync_dir(store).map_err(|e| write_failed(store, e))
}

/// Makes every configured path a symlink to `<store>/current/<file>`, without changing
/// what any of them holds at any instant: the first time, the files in place become the
/// `initial` version and `current` points at it before any path is turned into a link.
/// Returns the version `current` points at (the one to roll back to).
fn ensure_links(
    target: &Target,
    store: &Path,
    mut prev: Option<String>,
) -> Result<Option<String>, AgentFailure> {
    let link_to = |f: &TargetFile| store.join("current").join(version_file_name(f.role));
    let unlinked: Vec<&TargetFile> = target
        .files
        .iter()
        .filter(|f| std::fs::read_link(&f.path).ok() != Some(link_to(f)))
        .collect();
    if unlinked.is_empty() {
        return Ok(prev);
    }
    let anything_there = unlinked.iter().any(|f| std::fs::metadata(&f.path).is_ok());
    let keep_in = match &prev {
        Some(v) => store.join(v),
        // Nothing installed before: nothing to keep, nothing to roll back to.
        None if !anything_there => store.to_path_buf(),
        None => {
            let initial = store.join("initial");
            let _ = std::fs::remove_dir_all(&initial);
            certfleet_shared::fsutil::create_dir_with_mode(&initial, 0o755)
                .map_err(|e| write_failed(&initial, e))?;
            initial
        }
    };
    // What each unlinked path holds now is kept in the version `current` will show.
    for f in &unlinked {
        if std::fs::metadata(&f.path).is_ok() {
            copy_entry(&f.path, &keep_in.join(version_file_name(f.role)), true)?;
        }
    }
    sync_dir(&keep_in).map_err(|e| write_failed(&keep_in, e))?;
    if prev.is_none() && anything_there {
        point_current(store, "initial")?;
        prev = Some("initial".into());
    }
    for f in &unlinked {
        let tmp = staged_path(&f.path);
        if let Some(dir) = f.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| write_failed(dir, e))?;
        }
        make_symlink(&link_to(f), &tmp)?;
        promote(&f.path)?;
    }
    Ok(prev)
}

/// Keeps the store small: the current and previous versions stay, older ones go.
fn prune_versions(store: &Path, current: &str, prev: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(store) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "current" || name == current || Some(name.as_str()) == prev {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn staged_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.cf-new"))
}

fn prev_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".prev");
    PathBuf::from(s)
}

fn parents(files: &[(PathBuf, bool)]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|(p, _)| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Renames the staged file over `path` and makes the rename durable.
fn promote(path: &Path) -> Result<(), AgentFailure> {
    std::fs::rename(staged_path(path), path).map_err(|e| write_failed(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(|e| write_failed(dir, e))?;
    }
    Ok(())
}

/// Writes a whole file (replacing any leftover), fsynced, with the file's mode and owner
/// set before any content is in it.
fn write_file(path: &Path, bytes: &[u8], f: &TargetFile) -> Result<(), AgentFailure> {
    let _ = std::fs::remove_file(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
        if f.uid.is_some() || f.gid.is_some() {
            std::os::unix::fs::fchown(&file, f.uid, f.gid)?;
        }
        file.write_all(bytes)?;
        file.sync_all()
    })();
    result.map_err(|e| write_failed(path, e))
}

fn make_symlink(to: &Path, at: &Path) -> Result<(), AgentFailure> {
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(to, at).map_err(|e| write_failed(at, e))
}

/// Makes `dst` a copy of `src`, keeping mode and owner. A symlink stays a symlink, or
/// with `follow` is copied as the file it points at.
fn copy_entry(src: &Path, dst: &Path, follow: bool) -> Result<(), AgentFailure> {
    use std::os::unix::fs::MetadataExt;
    let meta = if follow {
        std::fs::metadata(src)
    } else {
        std::fs::symlink_metadata(src)
    }
    .map_err(|e| write_failed(src, e))?;
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(src).map_err(|e| write_failed(src, e))?;
        return make_symlink(&to, dst);
    }
    let bytes = read_limited(src, 1024 * 1024).map_err(|e| write_failed(src, e))?;
    let f = TargetFile {
        role: FileRole::Key,
        path: dst.to_path_buf(),
        mode: meta.mode() & 0o777,
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
    };
    write_file(dst, &bytes, &f)
}

fn write_failed(path: &Path, e: std::io::Error) -> AgentFailure {
    AgentFailure::new(
        "write_failed",
        format!("cannot write {}: {e}", path.display()),
    )
}

/// Runs an argv with a timeout; `Ok(output)` on exit 0.
async fn run(argv: &[String], timeout: Duration) -> Result<Result<String, String>, String> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(Ok(String::new()));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "{program} did not finish within {} s",
                timeout.as_secs()
            ))
        }
        Ok(Err(e)) => return Err(format!("cannot run {program:?}: {e}")),
        Ok(Ok(out)) => out,
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text: String = text.trim().chars().take(OUTPUT_LIMIT).collect();
    Ok(if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{} ({}): {text}", program, out.status))
    })
}

/// The target's config test, if it has one.
async fn run_check(target: &Target) -> Result<(), AgentFailure> {
    if target.check.is_empty() {
        return Ok(());
    }
    match run(&target.check, target.reload_timeout).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) | Err(e) => Err(AgentFailure::new(
            "config_test_failed",
            format!(
                "config test of target {} failed, not reloading: {e}",
                target.name
            ),
        )),
    }
}

/// Reloads the target's web server: its command, or its signal to the pid file.
async fn reload(target: &Target) -> Result<String, AgentFailure> {
    let name = &target.name;
    let failed = |m: String| {
        AgentFailure::new(
            "reload_failed",
            format!("reload of target {name} failed: {m}"),
        )
    };
    match &target.reload {
        Reload::None => Ok(String::new()),
        Reload::Command(argv) => match run(argv, target.reload_timeout).await {
            Ok(Ok(out)) => {
                tracing::info!(target = %name, "reload command succeeded");
                Ok(out)
            }
            Ok(Err(e)) | Err(e) => Err(failed(e)),
        },
        Reload::Signal { signal, pid_file } => {
            let text = read_limited(pid_file, 64)
                .map_err(|e| failed(format!("cannot read {}: {e}", pid_file.display())))?;
            let pid: i32 = String::from_utf8_lossy(&text)
                .trim()
                .parse()
                .ok()
                .filter(|p| *p > 1)
                .ok_or_else(|| {
                    failed(format!("{} does not hold a process id", pid_file.display()))
                })?;
            let sig: nix::sys::signal::Signal = format!("SIG{signal}")
                .parse()
                .map_err(|_| failed(format!("unknown signal {signal}")))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| failed(format!("cannot signal pid {pid}: {e}")))?;
            tracing::info!(target = %name, pid, signal = %signal, "reload signal sent");
            Ok(String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::TargetConfig;
    use certfleet_proto::v1::KeyType;
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
    use rustls_pki_types::CertificateSigningRequestDer;

    /// Signs the agent's CSR with a throwaway CA: a real chain for the install logic.
    fn sign(csr_der: &[u8]) -> String {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let csr = rcgen::CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr_der),
        )
        .unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        let leaf = params.signed_by(&csr.public_key, &issuer).unwrap();
        format!("{}{}", leaf.pem(), ca_cert.pem())
    }

    fn target(toml_text: &str) -> Target {
        let cfg: TargetConfig = toml::from_str(toml_text).unwrap();
        cfg.resolve("web", &["127.0.0.1".parse().unwrap()]).unwrap()
    }

    fn ips() -> Vec<IpAddr> {
        vec!["127.0.0.1".parse().unwrap()]
    }

    /// A temp dir with the agent's state (pending keys, journal) under `state/`.
    fn fixture() -> (tempfile::TempDir, PendingKeys, Installer) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state).unwrap();
        (dir, pending, inst)
    }

    async fn issue_and_install(
        inst: &Installer,
        t: &Target,
        pending: &PendingKeys,
    ) -> Result<InstallOutcome, AgentFailure> {
        let csr = pending
            .create_csr(&ips(), KeyType::EcdsaP256, None)
            .unwrap();
        inst.install(t, &sign(&csr), &ips(), pending).await
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn install_writes_files_keeps_previous_and_reloads() {
        let (dir, pending, inst) = fixture();
        let d = dir.path().display();
        let log = dir.path().join("reload.log");
        let t = target(&format!(
            "cert = \"{d}/tls/cert.pem\"\nchain = \"{d}/tls/chain.pem\"\nfullchain = \"{d}/tls/fullchain.pem\"\nkey = \"{d}/tls/key.pem\"\nverify = []\nreload = [\"/bin/sh\", \"-c\", \"echo reloaded >> {}\"]\n",
            log.display()
        ));
        let mut serials = Vec::new();
        for _ in 0..2 {
            let out = issue_and_install(&inst, &t, &pending).await.unwrap();
            assert!(out.verify_disabled);
            assert_eq!(inspect(&t).map(|i| i.serial), Some(out.serial.clone()));
            serials.push(out.serial);
        }
        let key = t.key_source().unwrap().path.clone();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
        // The paths are links into the store's current version; the previous one is kept.
        let store = t.store_dir.clone().unwrap();
        assert_eq!(store, dir.path().join("tls/.certfleet-web"));
        for f in &t.files {
            assert_eq!(
                std::fs::read_link(&f.path).unwrap(),
                store.join("current").join(version_file_name(f.role))
            );
        }
        assert_eq!(
            current_version(&store).as_deref(),
            Some(serials[1].as_str())
        );
        let prev = std::fs::read_to_string(store.join(&serials[0]).join("cert.pem")).unwrap();
        let prev_leaf = CertInfo::from_der(&parse_pem_chain(&prev).unwrap()[0]).unwrap();
        assert_eq!(
            prev_leaf.serial_hex, serials[0],
            "previous certificate kept"
        );
        assert_eq!(mode(&store.join(&serials[0]).join("key.pem")), 0o600);
        assert!(!inst.journal_path("web").exists(), "journal removed");
        // A third install prunes the oldest version.
        let third = issue_and_install(&inst, &t, &pending).await.unwrap();
        assert!(!store.join(&serials[0]).exists());
        assert!(store.join(&serials[1]).exists() && store.join(&third.serial).exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tls"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("cf-new"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn failed_config_test_restores_previous_without_reload() {
        let (dir, pending, inst) = fixture();
        let d = dir.path().display();
        let flag = dir.path().join("broken");
        let log = dir.path().join("reload.log");
        let t = target(&format!(
            "fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = []\ncheck = [\"/bin/sh\", \"-c\", \"! test -e {}\"]\nreload = [\"/bin/sh\", \"-c\", \"echo r >> {}\"]\n",
            flag.display(),
            log.display()
        ));
        let first = issue_and_install(&inst, &t, &pending).await.unwrap();
        std::fs::write(&flag, "").unwrap();
        let err = issue_and_install(&inst, &t, &pending).await.unwrap_err();
        assert_eq!(err.code, "config_test_failed");
        assert!(err.rolled_back);
        assert_eq!(err.current_serial.as_deref(), Some(first.serial.as_str()));
        assert_eq!(inspect(&t).unwrap().serial, first.serial, "old pair back");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap().lines().count(),
            1,
            "no reload"
        );
    }

    #[tokio::test]
    async fn presets_write_their_layouts() {
        let (dir, pending, inst) = fixture();
        let d = dir.path().display();
        // haproxy: one combined file, 0600, that inspect() reads back.
        let t = target(&format!(
            "preset = \"haproxy\"\ndir = \"{d}/haproxy\"\ncheck = []\nreload = []\nverify = []"
        ));
        let out = issue_and_install(&inst, &t, &pending).await.unwrap();
        let combined = dir.path().join("haproxy/web.pem");
        let text = std::fs::read_to_string(&combined).unwrap();
        assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(text.contains("BEGIN PRIVATE KEY"));
        assert_eq!(mode(&combined), 0o600);
        assert_eq!(inspect(&t).unwrap().serial, out.serial);
        // lego: .crt (bundle), .issuer.crt, .key, .json.
        let t = target(&format!(
            "preset = \"lego\"\ndir = \"{d}/lego\"\nverify = []"
        ));
        let out = issue_and_install(&inst, &t, &pending).await.unwrap();
        let base = dir.path().join("lego/certificates");
        for f in ["web.crt", "web.issuer.crt", "web.key", "web.json"] {
            assert!(base.join(f).exists(), "{f}");
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(base.join("web.json")).unwrap()).unwrap();
        assert_eq!(meta["domain"], "127.0.0.1");
        assert_eq!(meta["serial"], out.serial.as_str());
        // certbot: live/ symlinks into a versioned archive/.
        let t = target(&format!(
            "preset = \"certbot\"\ndir = \"{d}/le\"\nverify = []"
        ));
        let a = issue_and_install(&inst, &t, &pending).await.unwrap();
        let b = issue_and_install(&inst, &t, &pending).await.unwrap();
        let live = dir.path().join("le/live/web");
        let link = std::fs::read_link(live.join("fullchain.pem")).unwrap();
        assert_eq!(link, Path::new("../../archive/web/fullchain2.pem"));
        assert!(dir.path().join("le/archive/web/privkey1.pem").exists());
        assert_eq!(mode(&dir.path().join("le/archive/web/privkey2.pem")), 0o600);
        assert_eq!(inspect(&t).unwrap().serial, b.serial);
        assert_ne!(a.serial, b.serial);
    }

    #[tokio::test]
    async fn versioned_recovery_finishes_a_switch_and_drops_an_unswitched_version() {
        let (dir, pending, inst) = fixture();
        let d = dir.path().display();
        let t = target(&format!(
            "fullchain = \"{d}/tls/f.pem\"\nkey = \"{d}/tls/k.pem\"\nverify = []"
        ));
        let old = issue_and_install(&inst, &t, &pending).await.unwrap();
        let targets: BTreeMap<String, Target> = [("web".to_owned(), t.clone())].into();
        let store = t.store_dir.clone().unwrap();
        for switched in [false, true] {
            let csr = pending
                .create_csr(&ips(), KeyType::EcdsaP256, None)
                .unwrap();
            let chain = parse_pem_chain(&sign(&csr)).unwrap();
            let leaf = CertInfo::from_der(&chain[0]).unwrap();
            let key = pending.find(&leaf.spki_der).unwrap();
            let contents = contents(&t, &chain, &key.0, &leaf).unwrap();
            if switched {
                // Crash right after `current` moved (journal says swapped).
                inst.swap_version(&t, &leaf.serial_hex, &contents)
                    .await
                    .unwrap();
            } else {
                // Crash after staging, before the switch.
                inst.write_journal(&Journal {
                    target: "web".into(),
                    serial: leaf.serial_hex.clone(),
                    phase: Phase::Committed,
                    files: Vec::new(),
                    store: Some(store.clone()),
                    version: Some(leaf.serial_hex.clone()),
                    prev: current_version(&store),
                })
                .unwrap();
                inst.stage_version(&store, &leaf.serial_hex, &contents)
                    .await
                    .unwrap();
            }
            inst.recover(&targets).await;
            let now = inspect(&t).expect("a matching pair after recovery");
            let want = if switched {
                &leaf.serial_hex
            } else {
                &old.serial
            };
            assert_eq!(&now.serial, want, "switched = {switched}");
            assert!(!inst.journal_path("web").exists());
            assert_eq!(store.join(&leaf.serial_hex).exists(), switched);
        }
    }

    #[tokio::test]
    async fn certbot_recovery_rolls_forward_a_committed_install_and_drops_a_staged_one() {
        let (dir, pending, inst) = fixture();
        let d = dir.path().display();
        let t = target(&format!(
            "preset = \"certbot\"\ndir = \"{d}/le\"\nverify = []"
        ));
        let old = issue_and_install(&inst, &t, &pending).await.unwrap();
        let targets: BTreeMap<String, Target> = [("web".to_owned(), t.clone())].into();

        for (phase, expect_new) in [(Phase::Staging, false), (Phase::Committed, true)] {
            let csr = pending
                .create_csr(&ips(), KeyType::EcdsaP256, None)
                .unwrap();
            let chain_pem = sign(&csr);
            let chain = parse_pem_chain(&chain_pem).unwrap();
            let leaf = CertInfo::from_der(&chain[0]).unwrap();
            let key = pending.find(&leaf.spki_der).unwrap();
            let contents = contents(&t, &chain, &key.0, &leaf).unwrap();
            let files = inst.stage(&t, &leaf.serial_hex, &contents).await.unwrap();
            // Crash after the first rename of a committed install / before commit.
            if phase == Phase::Committed {
                promote(&files[0].0).unwrap();
            } else {
                inst.write_journal(&Journal {
                    target: "web".into(),
                    serial: leaf.serial_hex.clone(),
                    phase: Phase::Staging,
                    files: files.clone(),
                    store: None,
                    version: None,
                    prev: None,
                })
                .unwrap();
            }
            inst.recover(&targets).await;
            let now = inspect(&t).expect("a matching pair after recovery");
            if expect_new {
                assert_eq!(now.serial, leaf.serial_hex);
            } else {
                assert_eq!(now.serial, old.serial);
            }
            assert!(!inst.journal_path("web").exists());
            assert!(files.iter().all(|(p, _)| !exists(&staged_path(p))));
        }
    }

    #[tokio::test]
    async fn not_served_rolls_back() {
        // Nothing listens on the verify address: the served check fails within its grace
        // window and the previous certificate comes back.
        let (dir, pending, inst) = fixture();
        let d = dir.path().display();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let off = target(&format!(
            "fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = []"
        ));
        let first = issue_and_install(&inst, &off, &pending).await.unwrap();
        let on = target(&format!(
            "fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = [\"127.0.0.1:{port}\"]\nverify_grace_secs = 1"
        ));
        let err = issue_and_install(&inst, &on, &pending).await.unwrap_err();
        assert_eq!(err.code, "not_served");
        assert!(err.rolled_back, "{}", err.message);
        assert!(err.message.contains("cannot connect"), "{}", err.message);
        assert_eq!(inspect(&on).unwrap().serial, first.serial);
    }

    #[tokio::test]
    async fn refusals() {
        let (dir, pending, inst) = fixture();
        let d = dir.path().display();
        let t = target(&format!(
            "cert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\nverify = []\nreload = [\"/bin/false\"]"
        ));
        // A certificate whose key this host never made.
        let other = PendingKeys::new(&dir.path().join("elsewhere"));
        let chain = sign(&other.create_csr(&ips(), KeyType::EcdsaP256, None).unwrap());
        let err = inst
            .install(&t, &chain, &ips(), &pending)
            .await
            .unwrap_err();
        assert_eq!(err.code, "no_matching_key");
        assert!(!t.key_source().unwrap().path.exists(), "nothing written");
        let err = inst
            .install(&t, &chain, &["10.0.0.1".parse().unwrap()], &pending)
            .await
            .unwrap_err();
        assert_eq!(err.code, "not_my_ip");
        assert_eq!(
            inst.install(&t, "garbage", &ips(), &pending)
                .await
                .unwrap_err()
                .code,
            "bad_request"
        );
        // A failing reload with nothing to roll back to is reported.
        let err = issue_and_install(&inst, &t, &pending).await.unwrap_err();
        assert_eq!(err.code, "reload_failed");
        assert!(
            err.message.contains("no previous certificate"),
            "{}",
            err.message
        );
    }
}
