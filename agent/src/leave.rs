//! `certfleet-agent leave`: the host leaves the fleet now — for an ephemeral VM's shutdown
//! (`deploy/systemd/certfleet-agent-leave.service`). The coordinator is asked over the
//! agent's own mutual-TLS identity (`AgentSession/Leave`): it revokes the host's
//! certificates (cessationOfOperation), forgets the host and frees its addresses. Then the
//! local identity is deleted (`enrollment.json` first, so a cut leaves the agent not
//! enrolled rather than half), and the pending keys of orders that will never finish.
//!
//! Installed certificate and key files stay where the targets put them: the web server's
//! configuration names them, and removing them would make its next start or reload fail
//! on a machine that may keep running (the certificate is revoked either way; on an
//! ephemeral VM the disk goes with it).

use crate::config::AgentConfig;
use crate::identity::Files;
use anyhow::Context;
use certfleet_proto::v1::{agent_session_client::AgentSessionClient, LeaveRequest};
use certfleet_proto::MAX_MESSAGE_BYTES;
use std::path::PathBuf;
use std::time::Duration;

/// What `leave` did.
#[derive(Debug)]
pub enum Left {
    /// Removed by the coordinator now; these serials were revoked.
    Removed {
        host: String,
        revoked_serials: Vec<String>,
    },
    /// The coordinator no longer knew the host (removed or decommissioned before).
    AlreadyRemoved { host: String },
    /// Not enrolled: nothing to do.
    NotEnrolled,
}

/// Asks a coordinator (the config's `coordinators`, else the enrolled ones, the first that
/// answers) to remove this host, then deletes the local identity. Bounded by `timeout`;
/// on any failure before the coordinator's answer nothing local is deleted (run it again).
pub async fn leave(config: &AgentConfig, timeout: Duration) -> anyhow::Result<Left> {
    let files = Files::new(&config.state_dir);
    if !files.enrollment().exists() {
        return Ok(Left::NotEnrolled);
    }
    let enrollment = files.load()?;
    let host = enrollment.host_id.to_string();
    let urls = if config.coordinators.is_empty() {
        enrollment.coordinator_urls()
    } else {
        config.coordinators.clone()
    };
    let ask = async {
        let tls = files.session_tls()?;
        let (endpoints, unresolved) = crate::coordinators::resolve_all(&urls).await;
        if endpoints.is_empty() {
            anyhow::bail!("no coordinator address: {}", unresolved.join("; "));
        }
        let (channel, at) =
            crate::coordinators::first_reachable(&endpoints, tls, |_| false).await?;
        let mut client =
            AgentSessionClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        match client.leave(LeaveRequest {}).await {
            Ok(r) => Ok(Some(r.into_inner().revoked_serials)),
            // The identity is valid but names no enrolled host: removed already.
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                tracing::info!(coordinator = %at, answer = s.message(), "the coordinator no longer knows this host");
                Ok(None)
            }
            Err(s) => Err(anyhow::anyhow!(
                "{at} did not remove the host: {} ({:?}); nothing was deleted here, run `certfleet-agent leave` again",
                s.message(),
                s.code()
            )),
        }
    };
    let answer = tokio::time::timeout(timeout, ask).await.map_err(|_| {
        anyhow::anyhow!(
            "no coordinator answered within {}; nothing was deleted here, run `certfleet-agent leave` again (or remove the host with `certfleet-coordinator hosts remove {host}`)",
            humantime::format_duration(timeout)
        )
    })??;
    delete_identity(&files).context("the host was removed, but deleting its identity failed")?;
    Ok(match answer {
        Some(revoked_serials) => Left::Removed {
            host,
            revoked_serials,
        },
        None => Left::AlreadyRemoved { host },
    })
}

/// Removes the identity (enrollment record first), the staged rotation files, the session
/// status and the pending keys. Missing files are fine (a second run).
pub fn delete_identity(files: &Files) -> std::io::Result<()> {
    let dir = &files.dir;
    let mut paths: Vec<PathBuf> = vec![files.enrollment()];
    paths.extend(
        [
            "identity.key",
            "identity.pem",
            "identity.key.new",
            "identity.pem.new",
            "ca.pem",
            "session.json",
        ]
        .map(|f| dir.join(f)),
    );
    for p in paths {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", p.display()),
                ))
            }
        }
        if p == files.enrollment() {
            certfleet_shared::fsutil::sync_dir(dir)?;
        }
    }
    match std::fs::remove_dir_all(dir.join("pending")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => certfleet_shared::fsutil::sync_dir(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_identity_removes_identity_and_pending_keys_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        for f in [
            "enrollment.json",
            "identity.key",
            "identity.pem",
            "ca.pem",
            "session.json",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("pending")).unwrap();
        std::fs::write(dir.path().join("pending/abc.key"), "k").unwrap();
        std::fs::create_dir_all(dir.path().join("installs")).unwrap();
        std::fs::write(dir.path().join("installs/web.json"), "{}").unwrap();
        delete_identity(&files).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["installs"]);
        // Again: nothing left to delete is fine.
        delete_identity(&files).unwrap();
        assert!(files.load().is_err(), "not enrolled any more");
    }
}
