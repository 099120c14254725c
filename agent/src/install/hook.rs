//! A target's deploy hook: a program from the agent's own config (argv, no shell) run
//! after a certificate was installed, the web server reloaded and the new certificate seen
//! served — the place for what lego's `--renew-hook` and certbot's `--deploy-hook` do
//! today (copy to a mail server, restart a service nobody reloads, notify).
//!
//! Its environment names what was installed, in certfleet's words and in certbot's and
//! lego's, so existing hooks run unchanged (see [`hook_env`]). Variables for files the
//! target does not write are left unset, and every inherited `CERTFLEET_*`, `RENEWED_*`
//! and `LEGO_*` variable is removed first, so an unset name really means "no such file".
//!
//! It runs once per serial and target: `state_dir/installs/<target>.hook` records the
//! serial it last ran for and how that run ended (written when it finishes, whatever its
//! result), so a repeated install command does not run it twice, and one cut off by a
//! crash runs again when the coordinator repeats the install. A repeat of an install that
//! is complete (the coordinator lost the answer and asks again) reports the recorded
//! result again: it is the only answer with the result that reaches the coordinator, which
//! audits it then. A certificate switched in again later (something else had replaced it)
//! does not run the hook again and reports none.
//!
//! When the agent is stopping, a hook that is running is waited for up to its own timeout
//! ([`HookRuns::running_until`], used by the session's shutdown drain), and no hook is
//! started any more ([`HookRuns::stop_starting`]): an install finishing then leaves the
//! hook to the repeat of the install after the restart (its answer cannot reach the
//! coordinator anyway, the stream is gone).
//!
//! A hook that fails — exits non-zero, is killed, runs past its timeout (its whole process
//! group is then killed) or cannot be started — is reported with its status and the tail
//! of its standard error; the certificate stays installed (it is already served).
//! The coordinator never names a hook: only `[targets.*] deploy_hook` runs (design
//! invariant 3).

use super::Installer;
use crate::target::{FileRole, Target};
use certfleet_shared::fsutil::{read_limited, write_atomic};
use certfleet_shared::x509::CertInfo;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Default of `deploy_hook_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `deploy_hook_timeout`: the coordinator waits 180 s for the answer to an install,
/// which also covers the reload and served check.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of standard error reported (the end of it).
pub const STDERR_TAIL: usize = 2048;
/// How long, after the hook exited, its output pipes may stay open (a background child
/// holding them) before reading stops.
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// Prefixes of the variables the hook gets from us and never from the agent's environment.
const OWN_PREFIXES: [&str; 3] = ["CERTFLEET_", "RENEWED_", "LEGO_"];
/// How long a hook killed at its timeout may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// What a run may take beyond its timeout: killing and reaping it, recording its result.
pub const PAST_TIMEOUT: Duration = Duration::from_secs(KILL_WAIT.as_secs() + 2);

/// `deploy_hook` + `deploy_hook_timeout` of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployHook {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

impl DeployHook {
    /// From the target's config. `deploy_hook = []` (or none) means no hook.
    pub fn resolve(
        argv: Option<&[String]>,
        timeout: Option<&str>,
    ) -> Result<Option<DeployHook>, String> {
        let argv = argv.unwrap_or_default();
        let Some(program) = argv.first() else {
            return match timeout {
                Some(_) => Err("deploy_hook_timeout is set but there is no deploy_hook".into()),
                None => Ok(None),
            };
        };
        if !Path::new(program).is_absolute() {
            return Err(format!(
                "deploy_hook program {program:?} must be an absolute path (argv, no shell, no PATH lookup)"
            ));
        }
        let timeout = match timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => humantime::parse_duration(t).map_err(|e| {
                format!("deploy_hook_timeout = {t:?}: {e} (write e.g. \"60s\" or \"2m\")")
            })?,
        };
        if timeout < Duration::from_secs(1) || timeout > MAX_TIMEOUT {
            return Err(format!(
                "deploy_hook_timeout must be between 1s and {}s (the coordinator waits 180 s for a whole install)",
                MAX_TIMEOUT.as_secs()
            ));
        }
        Ok(Some(DeployHook {
            argv: argv.to_vec(),
            timeout,
        }))
    }
}

/// How a hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    pub ok: bool,
    pub status: String,
    pub exit_code: Option<i32>,
    pub stderr_tail: String,
    pub duration: Duration,
}

/// `installs/<target>.hook`: the serial the hook last ran for and how that run ended.
/// (Agents before this kept only the serial, as plain text; such a marker still counts as
/// "ran", with no result to report again.)
#[derive(Debug, Serialize, Deserialize)]
struct HookRecord {
    serial: String,
    ok: bool,
    status: String,
    exit_code: Option<i32>,
    stderr_tail: String,
    duration_ms: u64,
}

impl HookRecord {
    fn new(serial: &str, r: &HookReport) -> Self {
        HookRecord {
            serial: serial.to_owned(),
            ok: r.ok,
            status: r.status.clone(),
            exit_code: r.exit_code,
            stderr_tail: r.stderr_tail.clone(),
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn report(self) -> HookReport {
        HookReport {
            ok: self.ok,
            status: self.status,
            exit_code: self.exit_code,
            stderr_tail: self.stderr_tail,
            duration: Duration::from_millis(self.duration_ms),
        }
    }
}

/// What the marker says about `serial`: not run for it (`None`), run with the recorded
/// result, or run by an older agent that kept no result (`Some(None)`).
fn recorded_run(marker: &[u8], serial: &str) -> Option<Option<HookReport>> {
    match serde_json::from_slice::<HookRecord>(marker) {
        Ok(r) if r.serial == serial => Some(Some(r.report())),
        Ok(_) => None,
        Err(_) => (String::from_utf8_lossy(marker).trim() == serial).then_some(None),
    }
}

/// The deploy hooks running now (by when each will have ended, timeout and kill
/// included), and whether new ones may start.
#[derive(Debug, Default)]
pub struct HookRuns {
    running: Mutex<Vec<(u64, Instant)>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

impl HookRuns {
    /// No hook starts from now on (the agent is stopping); running ones go on.
    pub fn stop_starting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// When the last running hook will have ended at the latest; `None` when none runs.
    pub fn running_until(&self) -> Option<Instant> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.iter().map(|(_, until)| *until).max()
    }

    /// Registers a run of `hook` until the returned guard is dropped; `None` when the
    /// agent is stopping.
    fn start(&self, hook: &DeployHook) -> Option<RunGuard<'_>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock: a stop either sees this run or prevents it.
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        running.push((id, Instant::now() + hook.timeout + PAST_TIMEOUT));
        Some(RunGuard { runs: self, id })
    }
}

struct RunGuard<'a> {
    runs: &'a HookRuns,
    id: u64,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        let mut running = self.runs.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|(id, _)| *id != self.id);
    }
}

/// The hook's environment for `leaf` installed into `target`: name → value, only for
/// what the target has.
///
/// - `CERTFLEET_TARGET`, `CERTFLEET_SERIAL` (hex), `CERTFLEET_IDENTIFIERS` (canonical,
///   comma-separated), and one `CERTFLEET_<ROLE>_PATH` per file the target writes:
///   `CERT` (leaf), `CHAIN` (intermediates), `FULLCHAIN`, `KEY`, `COMBINED` (haproxy's
///   leaf + chain + key).
/// - certbot's `RENEWED_LINEAGE` (the directory of the certificate file) and
///   `RENEWED_DOMAINS` (the identifiers, space-separated).
/// - lego's `LEGO_CERT_PATH` (the full chain, else the leaf: lego's `.crt` is the bundle),
///   `LEGO_CERT_KEY_PATH` (the key file) and `LEGO_CERT_DOMAIN` (the first identifier).
pub fn hook_env(target: &Target, leaf: &CertInfo) -> Vec<(&'static str, String)> {
    let path = |role: FileRole| {
        target
            .files
            .iter()
            .find(|f| f.role == role)
            .map(|f| f.path.to_string_lossy().into_owned())
    };
    let ids = identifiers(leaf);
    let mut env = vec![
        ("CERTFLEET_TARGET", target.name.clone()),
        ("CERTFLEET_SERIAL", leaf.serial_hex.clone()),
        ("CERTFLEET_IDENTIFIERS", ids.join(",")),
        ("RENEWED_DOMAINS", ids.join(" ")),
    ];
    for (name, role) in [
        ("CERTFLEET_CERT_PATH", FileRole::Cert),
        ("CERTFLEET_CHAIN_PATH", FileRole::Chain),
        ("CERTFLEET_FULLCHAIN_PATH", FileRole::Fullchain),
        ("CERTFLEET_KEY_PATH", FileRole::Key),
        ("CERTFLEET_COMBINED_PATH", FileRole::Combined),
        ("LEGO_CERT_KEY_PATH", FileRole::Key),
    ] {
        if let Some(p) = path(role) {
            env.push((name, p));
        }
    }
    if let Some(p) = path(FileRole::Fullchain).or_else(|| path(FileRole::Cert)) {
        env.push(("LEGO_CERT_PATH", p));
    }
    if let Some(first) = ids.first() {
        env.push(("LEGO_CERT_DOMAIN", first.clone()));
    }
    if let Some(dir) = target.leaf_source().and_then(|f| f.path.parent()) {
        env.push(("RENEWED_LINEAGE", dir.to_string_lossy().into_owned()));
    }
    env
}

/// The leaf's identifiers in canonical form and order (as SANs that are not valid
/// identifiers cannot come from our CSR, such a leaf keeps its SANs as they are).
fn identifiers(leaf: &CertInfo) -> Vec<String> {
    match certfleet_shared::identifier::from_sans(&leaf.ips, &leaf.dns_names) {
        Ok(ids) => ids.iter().map(|i| i.to_canonical()).collect(),
        Err(_) => (leaf.ips.iter().map(|ip| ip.to_string()))
            .chain(leaf.dns_names.iter().cloned())
            .collect(),
    }
}

impl Installer {
    /// Runs `target`'s deploy hook for `leaf` unless it already ran for this serial.
    /// `repeat`: the install found the certificate in place and did nothing (a repeated
    /// command) — then the recorded result of the run is reported again.
    pub(super) async fn deploy_hook(
        &self,
        target: &Target,
        leaf: &CertInfo,
        repeat: bool,
    ) -> Option<HookReport> {
        let hook = target.deploy_hook.as_ref()?;
        let marker = self.journal_dir.join(format!("{}.hook", target.name));
        let name = target.name.as_str();
        let serial = leaf.serial_hex.as_str();
        let earlier = read_limited(&marker, 16 * 1024)
            .ok()
            .and_then(|b| recorded_run(&b, serial));
        if let Some(earlier) = earlier {
            return match earlier {
                Some(report) if repeat => {
                    tracing::info!(target = name, serial, status = %report.status, "deploy hook already ran for this certificate; reporting that run again");
                    Some(report)
                }
                _ => {
                    tracing::info!(
                        target = name,
                        serial,
                        "deploy hook already ran for this certificate"
                    );
                    None
                }
            };
        }
        let Some(_running) = self.hooks.start(hook) else {
            tracing::warn!(target = name, serial, "the agent is stopping: the deploy hook runs when the coordinator repeats the install after the restart");
            return None;
        };
        let report = run(hook, &hook_env(target, leaf)).await;
        if report.ok {
            tracing::info!(target = name, serial, status = %report.status, ms = report.duration.as_millis() as u64, "deploy hook succeeded");
        } else {
            tracing::warn!(target = name, serial, status = %report.status, stderr = %report.stderr_tail, "deploy hook failed; the certificate stays installed");
        }
        let record = serde_json::to_vec(&HookRecord::new(serial, &report))
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                std::fs::create_dir_all(&self.journal_dir)?;
                write_atomic(&marker, &bytes, 0o600).map_err(std::io::Error::other)
            });
        if let Err(e) = record {
            tracing::warn!(target = name, path = %marker.display(), error = %e, "cannot record that the deploy hook ran; a repeated install will run it again");
        }
        Some(report)
    }
}

/// Runs `hook` with `env` (argv, no shell, stdin from /dev/null, cwd `/`, its own process
/// group), within its timeout.
pub async fn run(hook: &DeployHook, env: &[(&'static str, String)]) -> HookReport {
    let started = Instant::now();
    let program = &hook.argv[0];
    let failed = |status: String, stderr_tail: String| HookReport {
        ok: false,
        status,
        exit_code: None,
        stderr_tail,
        duration: started.elapsed(),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&hook.argv[1..])
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        let own = name
            .to_str()
            .is_some_and(|n| OWN_PREFIXES.iter().any(|p| n.starts_with(p)));
        if own {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run {program:?}: {e}"), String::new()),
    };
    let pgid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut err_tail = Vec::new();
    let mut out_tail = Vec::new();
    let finished = tokio::time::timeout(hook.timeout, async {
        let drains = async {
            tokio::join!(drain(stdout, &mut out_tail), drain(stderr, &mut err_tail));
        };
        tokio::pin!(drains);
        let wait = child.wait();
        tokio::pin!(wait);
        tokio::select! {
            status = &mut wait => {
                let _ = tokio::time::timeout(PIPE_GRACE, drains).await;
                status
            }
            () = &mut drains => wait.await,
        }
    })
    .await;
    let status = match finished {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return failed(format!("waiting for {program:?}: {e}"), tail(&err_tail)),
        Err(_) => {
            if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = tokio::time::timeout(KILL_WAIT, child.wait()).await;
            return failed(
                format!(
                    "timed out after {} s; its process group was killed",
                    hook.timeout.as_secs_f64()
                ),
                tail(&err_tail),
            );
        }
    };
    if !out_tail.is_empty() {
        tracing::debug!(program = %program, stdout = %tail(&out_tail), "deploy hook output");
    }
    let status_text = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    };
    HookReport {
        ok: status.success(),
        status: status_text,
        exit_code: status.code(),
        stderr_tail: tail(&err_tail),
        duration: started.elapsed(),
    }
}

/// Reads `pipe` to its end, keeping the last [`STDERR_TAIL`] bytes in `keep`.
async fn drain<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, keep: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > 2 * STDERR_TAIL {
                    keep.drain(..keep.len() - STDERR_TAIL);
                }
            }
        }
    }
}

/// The last [`STDERR_TAIL`] bytes as text (lossy; a character cut at the start is dropped).
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..])
        .trim_start_matches('\u{fffd}')
        .trim()
        .to_owned()
}

#[cfg(test)]
#[path = "hook_tests.rs"]
mod tests;
