//! Installing the current certificate through the agent, and what its answer means (served,
//! rolled back, key lost on the host).

use super::{Engine, IssueError, AGENT_INSTALL};
use crate::audit::{Entry, Kind};
use crate::model::{CertRecord, IssuedCert};
use crate::sessions::{AgentHandle, SessionError};
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};

impl Engine {
    /// Installs the current certificate into every target of the spec that does not have
    /// it in place (and seen served, where the target checks), one after the other; the
    /// first failure stops the round (the next attempt goes on from there).
    pub(super) async fn install(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
    ) -> Result<(), IssueError> {
        let Some(cur) = rec.observed.current.clone() else {
            return Ok(());
        };
        if rec.spec.key_group.is_some() {
            self.ensure_group_key(agent, rec).await?;
        }
        let targets = rec.spec.targets.clone();
        for target in &targets {
            if rec.observed.done_in(target, &cur.serial) {
                continue;
            }
            let outcome = self.install_into(agent, rec, &cur, target).await;
            rec.observed.summarise(&targets);
            outcome?;
        }
        Ok(())
    }

    async fn install_into(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
        cur: &IssuedCert,
        target: &str,
    ) -> Result<(), IssueError> {
        let cmd = Cmd::Install(pb::InstallCertificate {
            target: target.to_owned(),
            chain_pem: cur.chain_pem.clone(),
        });
        match agent.request(cmd, "install", AGENT_INSTALL).await {
            Ok(reply::Result::Installed(report)) if report.serial == cur.serial => {
                let mut installed = Entry::by(format!("host:{}", rec.host_id))
                    .ids(&cur.identifiers)
                    .serial(report.serial.clone())
                    .detail("target", &report.target);
                // An install is asked again only when its answer never arrived, so the
                // hook result a repeat carries (the agent's record of the one run) is
                // audited here once.
                if let Some(hook) = &report.deploy_hook {
                    installed =
                        installed.detail("deploy_hook", if hook.ok { "ok" } else { "failed" });
                }
                self.record(Kind::CertificateInstalled, rec, installed)?;
                if let Some(hook) = report.deploy_hook.as_ref().filter(|h| !h.ok) {
                    self.deploy_hook_failed(rec, cur, target, hook)?;
                }
                rec.observed
                    .installed_in
                    .insert(target.to_owned(), report.serial.clone());
                if report.verify_disabled {
                    // Installed is as far as this target checks.
                    rec.observed.unverified.insert(target.to_owned());
                } else {
                    rec.observed.unverified.remove(target);
                }
                tracing::info!(host = %rec.host_id, cert = %rec.id, serial = %report.serial, target = %report.target, "certificate installed");
                if !report.verify_disabled && !report.served_on.is_empty() {
                    self.record(
                        Kind::CertificateServed,
                        rec,
                        Entry::by(format!("host:{}", rec.host_id))
                            .ids(&cur.identifiers)
                            .serial(report.serial.clone())
                            .detail("target", &report.target)
                            .detail("served_on", &report.served_on),
                    )?;
                    rec.observed
                        .served_in
                        .insert(target.to_owned(), report.serial.clone());
                    rec.observed.served_on = report.served_on.clone();
                    rec.observed.served_at = Some(self.clock.now_unix());
                    tracing::info!(host = %rec.host_id, cert = %rec.id, serial = %report.serial, served_on = ?report.served_on, "new certificate is served");
                }
                if !report.warnings.is_empty() {
                    tracing::warn!(host = %rec.host_id, cert = %rec.id, warnings = ?report.warnings, "agent warnings");
                }
                Ok(())
            }
            Ok(_) => Err(SessionError::Unexpected {
                host: agent.host.clone(),
                what: "install",
            }
            .into()),
            Err(e @ SessionError::Failed { .. }) => {
                let SessionError::Failed {
                    code,
                    kind,
                    message,
                    rolled_back,
                    current_serial,
                    ..
                } = &e
                else {
                    return Err(e.into());
                };
                if *kind == pb::FailureCode::NoMatchingKey && rec.spec.key_group.is_some() {
                    // A key-group member without the key: it is fetched from a member
                    // again before the next attempt (the certificate stays the group's).
                    tracing::warn!(host = %rec.host_id, cert = %rec.id, error = %message, "host lacks the key group's key; fetching it again");
                    rec.observed.group_key = None;
                } else if *kind == pb::FailureCode::NoMatchingKey {
                    // The key for this certificate is gone from the host: the certificate
                    // is useless there, so the next attempt issues a new one.
                    tracing::warn!(host = %rec.host_id, cert = %rec.id, error = %message, "host lost the key; re-issuing");
                    rec.observed.current = None;
                    rec.observed.ari = None;
                } else if *rolled_back {
                    // The config test, reload or served check failed and the host put the
                    // previous certificate back: record what is there now.
                    let now_serial = (!current_serial.is_empty()).then(|| current_serial.clone());
                    self.record(
                        Kind::CertificateRolledBack,
                        rec,
                        Entry::by(format!("host:{}", rec.host_id))
                            .ids(&cur.identifiers)
                            .serial(cur.serial.clone())
                            .detail("target", target)
                            .detail("code", code)
                            .detail("error", message)
                            .detail("restored_serial", &now_serial),
                    )?;
                    tracing::error!(host = %rec.host_id, cert = %rec.id, serial = %cur.serial, code = %code, error = %message, "install rolled back on the host");
                    let obs = &mut rec.observed;
                    match &now_serial {
                        Some(s) => obs.installed_in.insert(target.to_owned(), s.clone()),
                        None => obs.installed_in.remove(target),
                    };
                    if obs.served_in.get(target) != now_serial.as_ref() {
                        obs.served_in.remove(target);
                    }
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Audits a deploy hook that failed after an install. The certificate is installed
    /// (and served) all the same: nothing is rolled back or retried.
    fn deploy_hook_failed(
        &self,
        rec: &CertRecord,
        cur: &IssuedCert,
        target: &str,
        hook: &pb::DeployHookReport,
    ) -> Result<(), IssueError> {
        // The agent bounds these; an agent that does not is cut here.
        let status: String = hook.status.chars().take(256).collect();
        let stderr = tail_chars(&hook.stderr_tail, HOOK_STDERR_CHARS);
        self.record(
            Kind::DeployHookFailed,
            rec,
            Entry::by(format!("host:{}", rec.host_id))
                .ids(&cur.identifiers)
                .serial(cur.serial.clone())
                .detail("target", target)
                .detail("cert_name", &rec.spec.name)
                .detail("status", &status)
                .detail("exit_code", hook.exit_code)
                .detail("stderr", &stderr),
        )?;
        tracing::warn!(host = %rec.host_id, cert = %rec.id, serial = %cur.serial, target, status = %status, stderr = %stderr, "deploy hook failed on the host; the certificate stays installed");
        Ok(())
    }
}

/// Characters of a failed deploy hook's stderr kept in the audit record.
const HOOK_STDERR_CHARS: usize = 2048;

/// The last `n` characters of `s`.
fn tail_chars(s: &str, n: usize) -> String {
    let skip = s.chars().count().saturating_sub(n);
    s.chars().skip(skip).collect()
}
