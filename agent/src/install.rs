//! Installing a certificate into a named target from the agent's own config, crash-safe
//! and verified.
//!
//! One install, step by step (each step durable before the next):
//! 1. **stage** — a journal (`state_dir/installs/<target>.json`, phase `staging`) names
//!    the files; each new file is written beside its destination as `.<file>.cf-new`
//!    (fsync, mode, owner) and the current one is copied to `<file>.prev`;
//! 2. **commit** — the journal moves to `committed`: from here a restart rolls forward;
//! 3. **swap** — each staged file is renamed over its destination (directory fsync), then
//!    the journal moves to `swapped`;
//! 4. **config test** (`nginx -t` …): on failure the previous files come back, no reload;
//! 5. **reload** (command, or signal to a pid file): on failure, previous files + reload;
//! 6. **served check**: TLS handshakes with each verify address until every one presents
//!    the new leaf, within a grace window; otherwise the previous files come back, the web
//!    server is reloaded again, and the failure is reported as rolled back.
//!
//! A kill at any instant leaves every file whole (old or new: atomic renames) and the
//! journal says which way to go: [`Installer::recover`] runs at start, before the session,
//! and finishes the swap (committed) or drops the staged files (staging). The web server is
//! never reloaded on a half-swapped target.
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
    /// Destinations, and whether each had a previous version (kept as `.prev`).
    files: Vec<(PathBuf, bool)>,
}

/// Installs certificates and repairs interrupted installs.
pub struct Installer {
    journal_dir: PathBuf,
    pause_at: Option<String>,
    observer: std::sync::Arc<rustls::ClientConfig>,
}

impl Installer {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            journal_dir: state_dir.join("installs"),
            pause_at: std::env::var(PAUSE_ENV).ok().filter(|s| !s.is_empty()),
            observer: served::observer_config(),
        }
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
            self.restore(&j.files)?;
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
            let files = match self.stage(target, &leaf.serial_hex, &contents).await {
                Ok(f) => f,
                Err(e) => {
                    for (f, _) in &contents {
                        let _ = std::fs::remove_file(staged_path(&f.path));
                    }
                    self.remove_journal(name);
                    return Err(e);
                }
            };
            self.pause("committed").await;
            for (i, (path, _)) in files.iter().enumerate() {
                promote(path)?;
                self.pause(&format!("renamed:{i}")).await;
            }
            self.write_journal(&Journal {
                target: name.to_owned(),
                serial: leaf.serial_hex.clone(),
                phase: Phase::Swapped,
                files: files.clone(),
            })?;
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
                copy_entry(&file.path, &prev_path(&file.path))?;
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

    /// Puts the `.prev` versions back (files that had none keep the new content).
    fn restore(&self, files: &[(PathBuf, bool)]) -> Result<(), AgentFailure> {
        for (path, had_prev) in files {
            if *had_prev {
                copy_entry(&prev_path(path), &staged_path(path))?;
                promote(path)?;
            }
        }
        Ok(())
    }

    /// Rolls back after `cause`; reloads again when the web server may have seen the new
    /// files. Returns the failure to report.
    async fn roll_back(
        &self,
        target: &Target,
        files: &[(PathBuf, bool)],
        cause: AgentFailure,
        reload_again: bool,
    ) -> AgentFailure {
        let name = target.name.as_str();
        if !files.iter().any(|(_, had)| *had) {
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

/// Makes `dst` a copy of `src`: a symlink stays a symlink, a file keeps mode and owner.
fn copy_entry(src: &Path, dst: &Path) -> Result<(), AgentFailure> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| write_failed(src, e))?;
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(src).map_err(|e| write_failed(src, e))?;
        return make_symlink(&to, dst);
    }
    use std::os::unix::fs::MetadataExt;
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

    async fn issue_and_install(
        inst: &Installer,
        t: &Target,
        pending: &PendingKeys,
    ) -> Result<InstallOutcome, AgentFailure> {
        let csr = pending.create_csr(&ips(), KeyType::EcdsaP256).unwrap();
        inst.install(t, &sign(&csr), &ips(), pending).await
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn install_writes_files_keeps_previous_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let pending = PendingKeys::new(&dir.path().join("state"));
        let inst = Installer::new(&dir.path().join("state"));
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
        assert_eq!(mode(&prev_path(&key)), 0o600);
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
        let prev = std::fs::read_to_string(prev_path(&t.leaf_source().unwrap().path)).unwrap();
        let prev_leaf = CertInfo::from_der(&parse_pem_chain(&prev).unwrap()[0]).unwrap();
        assert_eq!(
            prev_leaf.serial_hex, serials[0],
            "previous certificate kept"
        );
        assert!(!inst.journal_path("web").exists(), "journal removed");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tls"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("cf-new"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn failed_config_test_restores_previous_without_reload() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let state = dir.path().join("state");
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state);
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
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let state = dir.path().join("state");
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state);
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
    async fn recovery_rolls_forward_a_committed_install_and_drops_a_staged_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let state = dir.path().join("state");
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state);
        let t = target(&format!(
            "fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = []"
        ));
        let old = issue_and_install(&inst, &t, &pending).await.unwrap();
        let targets: BTreeMap<String, Target> = [("web".to_owned(), t.clone())].into();

        for (phase, expect_new) in [(Phase::Staging, false), (Phase::Committed, true)] {
            let csr = pending.create_csr(&ips(), KeyType::EcdsaP256).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let state = dir.path().join("state");
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state);
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
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let state = dir.path().join("state");
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state);
        let t = target(&format!(
            "cert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\nverify = []\nreload = [\"/bin/false\"]"
        ));
        // A certificate whose key this host never made.
        let other = PendingKeys::new(&dir.path().join("elsewhere"));
        let chain = sign(&other.create_csr(&ips(), KeyType::EcdsaP256).unwrap());
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
