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
//!    back, the web server is reloaded again, and the failure is reported as rolled back;
//! 7. **deploy hook** (if the target has one, once per serial): its result is reported
//!    with the install, which it never undoes, and recorded, so a repeated install
//!    command reports it again.
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
//!
//! ## Layout
//! - this module — the [`Installer`] flow: refusals, config test, reload, served check,
//!   rollback, and recovery's dispatch by layout; [`inspect`] for the inventory.
//! - [`versioned`] — the versioned store (stage a version, link, switch `current`).
//! - [`certbot`] — certbot's `live/` → `archive/` layout, file by file.
//! - [`journal`] — the journal, one enum variant per layout (JSON shape kept from the
//!   flat journal older agents wrote).
//! - [`hook`] — the target's deploy hook, run after a successful install.
//! - `files` — file operations both layouts use; `commands` — config test and reload.

mod certbot;
mod commands;
mod files;
pub mod hook;
mod journal;
mod versioned;

use crate::error::AgentFailure;
use crate::keys::{KeyPem, PendingKeys};
use crate::served::{self, Seen};
use crate::target::{FileRole, Target, TargetFile};
use certfleet_shared::envelope::key_fingerprint;
use certfleet_shared::fsutil::{read_limited, sync_dir, write_atomic};
use certfleet_shared::x509::{chain_to_pem, parse_pem_chain, sha256_hex, CertInfo};
use commands::{reload, run_check};
use files::write_failed;
use journal::Journal;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// dNSName SANs of the leaf, as the certificate holds them.
    pub dns_names: Vec<String>,
}

impl Installed {
    /// The leaf's identifiers as Hello's inventory lists them: IPs, then names.
    pub fn identifiers(&self) -> Vec<String> {
        let ips = self.ips.iter().map(|ip| ip.to_string());
        ips.chain(self.dns_names.iter().cloned()).collect()
    }
}

/// Reads the target's current leaf, and reports it only if the key file matches it.
pub fn inspect(target: &Target) -> Option<Installed> {
    let leaf_file = target.leaf_source()?;
    let pem = String::from_utf8(read_limited(&leaf_file.path, 256 * 1024).ok()?).ok()?;
    let chain = parse_pem_chain(&pem).ok()?;
    let leaf = CertInfo::from_der(chain.first()?).ok()?;
    installed_key(target, &sha256_hex(&leaf.spki_der))?;
    Some(Installed {
        serial: leaf.serial_hex,
        not_after: leaf.not_after,
        ips: leaf.ips,
        dns_names: leaf.dns_names,
    })
}

/// The private key `target` holds now (the PKCS#8 block of its key file), whatever it is.
pub(crate) fn held_key(target: &Target) -> Option<KeyPem> {
    let key_file = target.key_source()?;
    let key = String::from_utf8(read_limited(&key_file.path, 256 * 1024).ok()?).ok()?;
    Some(KeyPem(certfleet_shared::x509::pkcs8_key_pem(&key)?))
}

/// The key `target` holds now, if it is the private key whose public key has SHA-256
/// (hex) `spki_sha256`.
fn installed_key(target: &Target, spki_sha256: &str) -> Option<KeyPem> {
    held_key(target).filter(|k| key_fingerprint(&k.0).as_deref() == Some(spki_sha256))
}

/// The key this host holds for the public key whose SHA-256 (hex) is `spki_sha256`: the
/// pending key made (or imported) for it, or (the same certificate going into one more
/// target, also after a restart, when the pending key was removed by the first install)
/// the key a target other than `except` holds for the same public key. Either way the
/// key stays on this host; a key group's `SealKey` looks here too (`except` = none).
pub(crate) fn find_key(
    spki_sha256: &str,
    pending: &PendingKeys,
    targets: &BTreeMap<String, Target>,
    except: Option<&str>,
) -> Option<KeyPem> {
    pending.find_sha256(spki_sha256).or_else(|| {
        targets
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != except)
            .find_map(|(name, t)| {
                let key = installed_key(t, spki_sha256)?;
                tracing::info!(target = except.unwrap_or(""), from = %name, "key for this certificate taken from a target that holds it");
                Some(key)
            })
    })
}

#[derive(Debug)]
pub struct InstallOutcome {
    pub serial: String,
    pub not_after: i64,
    pub reload_output: String,
    /// Verify addresses that presented the new leaf.
    pub served_on: Vec<SocketAddr>,
    pub verify_disabled: bool,
    /// The deploy hook's run (none: no hook, it already ran for this serial and this
    /// install switched the certificate in again, or the agent is stopping). A repeated
    /// install of a certificate in place carries the recorded result of its run.
    pub deploy_hook: Option<hook::HookReport>,
}

/// Installs certificates and repairs interrupted installs.
pub struct Installer {
    journal_dir: PathBuf,
    pause_at: Option<String>,
    observer: std::sync::Arc<rustls::ClientConfig>,
    /// Deploy hooks running now; stopped from starting at shutdown.
    pub hooks: hook::HookRuns,
}

impl Installer {
    pub fn new(state_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            journal_dir: state_dir.join("installs"),
            pause_at: std::env::var(PAUSE_ENV).ok().filter(|s| !s.is_empty()),
            observer: certfleet_shared::tls::observer_client_config()?,
            hooks: hook::HookRuns::default(),
        })
    }

    fn journal_path(&self, target: &str) -> PathBuf {
        self.journal_dir.join(format!("{target}.json"))
    }

    fn write_journal(&self, j: &Journal) -> Result<(), AgentFailure> {
        std::fs::create_dir_all(&self.journal_dir)
            .map_err(|e| write_failed(&self.journal_dir, e))?;
        let path = self.journal_path(j.target());
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
        let dropped = match &mut j {
            Journal::Versioned(v) => self.settle_versioned(v),
            Journal::Certbot(c) => self.settle_certbot(c)?,
        };
        if let Some(message) = dropped {
            self.remove_journal(&target.name);
            return Ok(message);
        }
        // The paths show the new files; the web server may not have loaded them.
        if let Err(e) = run_check(target).await {
            self.restore(&j)?;
            self.remove_journal(&target.name);
            return Err(e.rolled_back(inspect(target).map(|i| i.serial)));
        }
        let reloaded = reload(target).await;
        self.remove_journal(&target.name);
        reloaded.map(|_| match &j {
            Journal::Versioned(_) => format!(
                "serial {} was switched in; the web server was reloaded, the served check follows when the coordinator asks",
                j.serial()
            ),
            Journal::Certbot(_) => format!(
                "serial {} finished installing and the web server was reloaded; the served check follows when the coordinator asks",
                j.serial()
            ),
        })
    }

    /// Installs `chain_pem` into `target`: stage, swap, config test, reload, served check,
    /// with rollback on failure. Idempotent: a certificate already in place is only checked.
    /// The key is the pending key of the leaf's public key or, when the same certificate
    /// is already in another of `targets`, the key that target holds.
    pub async fn install(
        &self,
        target: &Target,
        chain_pem: &str,
        own_ips: &[IpAddr],
        pending: &PendingKeys,
        targets: &BTreeMap<String, Target>,
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
        let sni = served::sni_name(&leaf.dns_names);
        let mut reload_output = String::new();
        if previous
            .as_ref()
            .is_some_and(|i| i.serial == leaf.serial_hex)
        {
            tracing::info!(target = name, serial = %leaf.serial_hex, "certificate already installed; checking it is served");
        } else {
            let key = find_key(&sha256_hex(&leaf.spki_der), pending, targets, Some(name)).ok_or_else(|| {
                AgentFailure::new(
                    "no_matching_key",
                    "no key on this host matches the certificate's public key (no pending key, and no other target holds it: pending key lost?); a new certificate is needed",
                )
            })?;
            let contents = contents(target, &chain, &key.0, &leaf)?;
            let journal = if target.archive_dir.is_some() {
                self.swap_files(target, &leaf.serial_hex, &contents).await?
            } else {
                self.swap_version(target, &leaf.serial_hex, &contents)
                    .await?
            };
            tracing::info!(target = name, serial = %leaf.serial_hex, "certificate files in place");
            self.pause("swapped").await;

            if let Err(e) = run_check(target).await {
                return Err(self.roll_back(target, &journal, e, false).await);
            }
            match reload(target).await {
                Ok(out) => reload_output = out,
                Err(e) => return Err(self.roll_back(target, &journal, e, true).await),
            }
            self.pause("reloaded").await;
            if let Err(e) = self.verify(target, leaf_der.as_ref(), &sni).await {
                return Err(self.roll_back(target, &journal, e, true).await);
            }
            self.remove_journal(name);
            if let Journal::Versioned(v) = &journal {
                versioned::prune_versions(&v.store, &v.version, v.prev.as_deref());
            }
            pending.remove(&leaf.spki_der);
            let deploy_hook = self.deploy_hook(target, &leaf, false).await;
            return Ok(InstallOutcome {
                serial: leaf.serial_hex,
                not_after: leaf.not_after,
                reload_output,
                served_on: target.verify.clone(),
                verify_disabled: target.verify.is_empty(),
                deploy_hook,
            });
        }
        // Already in place (a replayed command, or after a restart): prove it is served,
        // reloading once if the web server still presents something else.
        if self.verify(target, leaf_der.as_ref(), &sni).await.is_err() {
            tracing::info!(target = name, "new certificate not served yet; reloading");
            reload_output = reload(target).await?;
            self.verify(target, leaf_der.as_ref(), &sni).await?;
        }
        pending.remove(&leaf.spki_der);
        let deploy_hook = self.deploy_hook(target, &leaf, true).await;
        Ok(InstallOutcome {
            serial: leaf.serial_hex,
            not_after: leaf.not_after,
            reload_output,
            served_on: target.verify.clone(),
            verify_disabled: target.verify.is_empty(),
            deploy_hook,
        })
    }

    /// Puts the previous version back: `current` to the previous version in one rename,
    /// or (certbot layout) the `.prev` copies (files that had none keep the new content).
    fn restore(&self, journal: &Journal) -> Result<(), AgentFailure> {
        match journal {
            Journal::Versioned(j) => versioned::restore_version(j),
            Journal::Certbot(j) => certbot::restore_files(j),
        }
    }

    /// Rolls back after `cause`; reloads again when the web server may have seen the new
    /// files. Returns the failure to report.
    async fn roll_back(
        &self,
        target: &Target,
        journal: &Journal,
        cause: AgentFailure,
        reload_again: bool,
    ) -> AgentFailure {
        let name = target.name.as_str();
        if !journal.has_previous() {
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
        if let Err(e) = self.restore(journal) {
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
                        let served = self.served_serials(target, &prev).await;
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

    /// One round of handshakes (SNI as for `installed`), described per address (for
    /// messages).
    async fn served_serials(&self, target: &Target, installed: &Installed) -> Vec<String> {
        let sni = served::sni_name(&installed.dns_names);
        let mut out = Vec::new();
        for addr in &target.verify {
            let seen = served::observe(
                self.observer.clone(),
                *addr,
                sni.as_deref(),
                HANDSHAKE_TIMEOUT,
            )
            .await;
            out.push(format!("{addr}: {}", describe(&seen)));
        }
        out
    }

    /// Retries until every verify address presents `leaf_der` (asked for with SNI `sni`,
    /// see [`served::sni_name`]), or the grace window ends.
    async fn verify(
        &self,
        target: &Target,
        leaf_der: &[u8],
        sni: &Option<String>,
    ) -> Result<(), AgentFailure> {
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
                let sni = sni.as_deref();
                async move {
                    (
                        addr,
                        served::observe(cfg, addr, sni, HANDSHAKE_TIMEOUT).await,
                    )
                }
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
                    tracing::info!(target = %target.name, addresses = ?target.verify, sni = sni.as_deref().unwrap_or("(none)"), "new certificate is served");
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
                let asked = match sni {
                    Some(n) => format!(" (asked with SNI {n})"),
                    None => String::new(),
                };
                return Err(AgentFailure::new(
                    "not_served",
                    format!(
                        "target {}: the new certificate is not served{asked} after {} s: {}",
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
pub(super) enum Staged {
    Content(Vec<u8>),
    Link {
        archive: PathBuf,
        link: PathBuf,
        content: Vec<u8>,
    },
}

impl Staged {
    /// The file's content (for a link: what the archive file holds).
    fn bytes(&self) -> &[u8] {
        match self {
            Staged::Content(b) | Staged::Link { content: b, .. } => b,
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
    let version = target
        .archive_dir
        .as_deref()
        .map(certbot::next_archive_version);
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
        let staged = match (&target.archive_dir, version) {
            (Some(dir), Some(n)) => {
                let (archive, link) = certbot::archive_entry(dir, n, f);
                Staged::Link {
                    archive,
                    link,
                    content,
                }
            }
            _ => Staged::Content(content),
        };
        out.push((f.clone(), staged));
    }
    Ok(out)
}

/// lego's resource file: what lego's `certificates/<name>.json` holds that we know.
fn lego_meta(leaf: &CertInfo) -> Result<Vec<u8>, AgentFailure> {
    let domains: Vec<String> = (leaf.ips.iter().map(|i| i.to_string()))
        .chain(leaf.dns_names.iter().cloned())
        .collect();
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

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
pub(crate) mod tests_names;
