//! Bootstrapping a new host: what the running agent has installed and proved served
//! (`state_dir/installed.json`, written by the daemon after every successful install), and
//! `certfleet-agent enroll --wait`, which blocks until that file shows a certificate for
//! this host's identity that is still in its target — so a VM's own service can be held
//! until its first certificate is served.

use crate::config::AgentConfig;
use crate::coordinators::SessionStatus;
use anyhow::Context;
use certfleet_shared::fsutil::{read_limited, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often `--wait` looks at the daemon's files.
const POLL: Duration = Duration::from_millis(100);
/// After this long without a running daemon, `--wait` says so (once).
const DAEMON_HINT_AFTER: Duration = Duration::from_secs(10);

/// The last certificate the daemon installed into each target, with its served check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallStatus {
    /// The host identity the daemon ran with (an install under an older identity does not
    /// count for a new enrollment).
    pub host_id: Option<String>,
    pub targets: BTreeMap<String, TargetInstall>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetInstall {
    pub serial: String,
    pub not_after: i64,
    /// The verify addresses that presented the certificate (empty: the target has no
    /// served check, see `verify_disabled`).
    pub served_on: Vec<String>,
    pub verify_disabled: bool,
    /// Unix time the install (and its served check) finished.
    pub at: i64,
}

impl InstallStatus {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("installed.json")
    }

    /// The status written so far (none yet: empty).
    pub fn read(state_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(state_dir);
        if !path.exists() {
            return Ok(Self::default());
        }
        let bytes = read_limited(&path, 256 * 1024)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is corrupt (the agent rewrites it)", path.display()))
    }

    /// Records a finished install (the caller serialises installs). A failure is only
    /// logged: the install itself stands, `--wait` then sees it late or not at all.
    pub fn record(state_dir: &Path, host_id: Option<String>, target: &str, t: TargetInstall) {
        let mut status = Self::read(state_dir).unwrap_or_default();
        if status.host_id != host_id {
            status = Self {
                host_id,
                targets: BTreeMap::new(),
            };
        }
        status.targets.insert(target.to_owned(), t);
        let written = serde_json::to_vec_pretty(&status)
            .map_err(std::io::Error::other)
            .and_then(|json| write_atomic(&Self::path(state_dir), &json, 0o644));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write installed.json (`enroll --wait` will not see this install)");
        }
    }
}

/// A certificate the daemon installed and proved served, found by [`wait_first_certificate`].
#[derive(Debug, Clone)]
pub struct FirstCertificate {
    pub target: String,
    pub install: TargetInstall,
}

/// Waits until the running agent has installed a certificate for `host_id` into one of the
/// config's targets and proved it served (or installed it into a target without a served
/// check), and that certificate is still the target's. Gives up at `deadline` with what
/// the daemon's files say (not running, no session and why, or nothing installed yet).
pub async fn wait_first_certificate(
    config: &AgentConfig,
    host_id: &str,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<FirstCertificate> {
    let targets = config
        .resolve_targets()
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    anyhow::ensure!(
        !targets.is_empty(),
        "the agent config has no [targets.*]: there is no certificate to wait for"
    );
    let mut hinted = false;
    loop {
        let status = InstallStatus::read(&config.state_dir)?;
        if status.host_id.as_deref() == Some(host_id) {
            let found = status.targets.iter().find(|(name, t)| {
                targets
                    .get(name.as_str())
                    .and_then(crate::install::inspect)
                    .is_some_and(|now| now.serial == t.serial)
            });
            if let Some((name, t)) = found {
                return Ok(FirstCertificate {
                    target: name.clone(),
                    install: t.clone(),
                });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!(
                "no certificate installed and served within {} s: {}",
                (now - started).as_secs(),
                diagnose(&config.state_dir)
            );
        }
        if !hinted && now - started >= DAEMON_HINT_AFTER && !daemon_running(&config.state_dir) {
            hinted = true;
            eprintln!(
                "waiting: the agent daemon does not seem to run; start it (`systemctl start certfleet-agent`)"
            );
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

fn daemon_running(state_dir: &Path) -> bool {
    SessionStatus::read(state_dir)
        .ok()
        .flatten()
        .is_some_and(|s| s.writer_running())
}

/// Why nothing is there yet, from the daemon's session status.
fn diagnose(state_dir: &Path) -> String {
    match SessionStatus::read(state_dir) {
        Err(e) => format!("{e:#}"),
        Ok(None) => "the agent daemon has not run (start it: `systemctl start certfleet-agent`)".into(),
        Ok(Some(s)) if !s.writer_running() => {
            "the agent daemon is not running (start it: `systemctl start certfleet-agent`; see its log: `journalctl -u certfleet-agent`)".into()
        }
        Ok(Some(s)) if !s.connected => format!(
            "the agent has no session with the coordinator ({}); see `certfleet-agent status` and its log",
            s.last_error.as_deref().unwrap_or("connecting")
        ),
        Ok(Some(s)) => format!(
            "the agent is connected to {} but nothing was installed yet: see `certfleet-coordinator certs` there for why (no policy giving this host a certificate, an address refused or held by another host, a failing challenge)",
            s.coordinator.as_deref().unwrap_or("the coordinator")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(serial: &str) -> TargetInstall {
        TargetInstall {
            serial: serial.into(),
            not_after: 2,
            served_on: vec!["192.0.2.1:443".into()],
            verify_disabled: false,
            at: 1,
        }
    }

    #[test]
    fn installs_are_recorded_per_target_and_per_identity() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            InstallStatus::read(dir.path()).unwrap(),
            InstallStatus::default()
        );
        InstallStatus::record(dir.path(), Some("h1".into()), "web", t("01"));
        InstallStatus::record(dir.path(), Some("h1".into()), "api", t("02"));
        InstallStatus::record(dir.path(), Some("h1".into()), "web", t("03"));
        let s = InstallStatus::read(dir.path()).unwrap();
        assert_eq!(s.host_id.as_deref(), Some("h1"));
        assert_eq!(
            s.targets
                .iter()
                .map(|(k, v)| (k.as_str(), v.serial.as_str()))
                .collect::<Vec<_>>(),
            [("api", "02"), ("web", "03")]
        );
        // A new identity starts afresh: the old host's installs do not count for it.
        InstallStatus::record(dir.path(), Some("h2".into()), "web", t("04"));
        let s = InstallStatus::read(dir.path()).unwrap();
        assert_eq!((s.host_id.as_deref(), s.targets.len()), (Some("h2"), 1));
        std::fs::write(InstallStatus::path(dir.path()), "{").unwrap();
        assert!(InstallStatus::read(dir.path()).is_err());
    }

    #[test]
    fn the_diagnosis_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(diagnose(dir.path()).contains("has not run"));
        let mut s = SessionStatus {
            pid: std::process::id(),
            connected: false,
            coordinator: Some("https://c:7443".into()),
            address: None,
            since: 1,
            last_error: Some("connection refused".into()),
        };
        s.write(dir.path());
        assert!(diagnose(dir.path()).contains("connection refused"));
        s.connected = true;
        s.write(dir.path());
        assert!(diagnose(dir.path()).contains("certfleet-coordinator certs"));
        // A pid that is not running (pid_max is below 2^22 on Linux).
        s.pid = 4_194_305;
        s.write(dir.path());
        assert!(diagnose(dir.path()).contains("not running"));
    }

    #[test]
    fn the_agent_config_in_the_cloud_init_user_data_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cloud-init/user-data.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        // The `content: |` block of the agent.toml entry, de-indented.
        let after = yaml
            .split_once("- path: /etc/certfleet/agent.toml")
            .unwrap()
            .1;
        let block = after.split_once("content: |\n").unwrap().1;
        let indent = "      ";
        let toml: String = block
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with(indent))
            .map(|l| format!("{}\n", l.strip_prefix(indent).unwrap_or("")))
            .collect();
        assert!(toml.contains("{{ ds.meta_data.public_ipv4 }}"), "{toml}");
        // cloud-init renders the jinja before the agent sees it.
        let toml = toml.replace("{{ ds.meta_data.public_ipv4 }}", "203.0.113.10");
        let cfg = AgentConfig::from_toml(&toml, &path, Vec::new()).unwrap();
        let targets = cfg.resolve_targets().unwrap();
        let web = targets.get("web").unwrap();
        assert_eq!(web.verify, ["203.0.113.10:443".parse().unwrap()]);
        // The script's default web server files are that target's files.
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/cloud-init/certfleet-bootstrap.sh"),
        )
        .unwrap();
        assert!(script.contains("/etc/ssl/certfleet/web/fullchain.pem"));
        assert!(script.contains("/etc/ssl/certfleet/web/privkey.pem"));
        assert!(yaml.contains("ssl_certificate /etc/ssl/certfleet/web/fullchain.pem;"));
    }
}
