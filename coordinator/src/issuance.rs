//! The issuance engine: for each host, the certificate it should have (desired: one
//! certificate for all its IPs, from the default issuer, into the configured target)
//! against what it has (stored record, agent inventory). When they differ it runs one
//! cancellable task per host that orders, validates through the agent, finalizes with the
//! agent's CSR and installs through the agent.
//!
//! Every state change is flushed to the store before the next step acts on it.

use crate::acme::{AcmeError, AcmeIssuer, PendingChallenge};
use crate::config::{Config, KeyTypeName};
use crate::sessions::{AgentHandle, SessionError, Sessions};
use crate::store::{CertRecord, CertState, HostRecord, Store, StoreError};
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};
use certfleet_shared::backoff::Backoff;
use certfleet_shared::clock::SharedClock;
use certfleet_shared::identifier::{canonical_set, check_issuable};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::x509::{parse_pem_chain, CertInfo, CsrInfo};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const AGENT_QUICK: Duration = Duration::from_secs(30);
const AGENT_INSTALL: Duration = Duration::from_secs(180);
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Acme(#[from] AcmeError),
    #[error(transparent)]
    Agent(#[from] SessionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Policy(String),
    #[error("the agent's CSR is unacceptable: {0}")]
    BadCsr(String),
    #[error("the CA returned an unacceptable certificate: {0}")]
    BadCert(String),
}

pub struct Engine {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    issuers: HashMap<String, Arc<AcmeIssuer>>,
    config: Config,
    clock: SharedClock,
    running: Mutex<HashSet<HostId>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        sessions: Arc<Sessions>,
        clock: SharedClock,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        let issuers = config
            .issuers
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(AcmeIssuer::new(c.clone(), store.clone(), clock.clone())),
                )
            })
            .collect();
        Arc::new(Self {
            store,
            sessions,
            issuers,
            config,
            clock,
            running: Mutex::default(),
            shutdown,
            tracker,
        })
    }

    /// Loads or creates every issuer's ACME account now, so the first issuance does not
    /// pay for it and a broken issuer shows up in the log at start. Failures are retried
    /// lazily at first use.
    pub fn warm_up(self: &Arc<Self>) {
        for issuer in self.issuers.values().cloned() {
            let shutdown = self.shutdown.clone();
            self.tracker.spawn(async move {
                tokio::select! {
                    r = issuer.account() => if let Err(e) = r {
                        tracing::error!(issuer = %issuer.cfg.name, error = %e, "ACME account not ready; will retry at first issuance");
                    },
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    }

    /// Looks at one host and starts work if its certificate is missing, stale or not
    /// installed. Cheap and idempotent: call it whenever something about the host changes.
    pub fn reconcile(self: &Arc<Self>, host: HostId) {
        if self.shutdown.is_cancelled() || !lock(&self.running).insert(host.clone()) {
            return;
        }
        let engine = self.clone();
        self.tracker.spawn(async move {
            let token = engine.shutdown.clone();
            let outcome = tokio::select! {
                r = engine.reconcile_once(&host) => r,
                _ = token.cancelled() => Ok(Next::Idle),
            };
            lock(&engine.running).remove(&host);
            match outcome {
                Ok(Next::Idle) => {}
                Ok(Next::RetryAt(at)) => engine.retry_at(host, at),
                Err(e) => tracing::error!(host = %host, error = %e, "reconcile failed"),
            }
        });
    }

    fn retry_at(self: &Arc<Self>, host: HostId, at: i64) {
        let engine = self.clone();
        let wait = Duration::from_secs((at - self.clock.now_unix()).max(0) as u64);
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => engine.reconcile(host),
                _ = engine.shutdown.cancelled() => {}
            }
        });
    }

    async fn reconcile_once(self: &Arc<Self>, host_id: &HostId) -> Result<Next, IssueError> {
        let Some(host) = self.store.host(host_id)? else {
            return Ok(Next::Idle);
        };
        let Some(agent) = self.sessions.get(host_id) else {
            return Ok(Next::Idle);
        };
        let existing = self.store.cert_for_host(host_id)?;
        let now = self.clock.now_unix();
        let wanted = canonical_set(host.ips.clone());
        if wanted.is_empty() {
            tracing::warn!(host = %host_id, "agent reports no IP addresses; nothing to issue");
            return Ok(Next::Idle);
        }
        let target = match self.choose_target(&host) {
            Ok(t) => t,
            Err(msg) => {
                self.record_failure(existing, &host, &wanted, "", msg, now, false)?;
                return Ok(Next::Idle);
            }
        };

        if let Some(rec) = &existing {
            let same_spec = rec.identifiers == wanted && rec.target == target;
            let still_valid = rec.chain_pem.is_some() && rec.not_after.is_some_and(|na| na > now);
            if same_spec && still_valid {
                match rec.state {
                    CertState::Installed if inventory_has(&host, rec) => return Ok(Next::Idle),
                    // Issued but not (or no longer) installed: install what we have.
                    CertState::Installed | CertState::Issued => {
                        return self.install(&agent, rec.clone()).await
                    }
                    _ => {}
                }
            }
            if same_spec && rec.state == CertState::Failed {
                if let Some(at) = rec.next_attempt.filter(|at| *at > now) {
                    return Ok(Next::RetryAt(at));
                }
            }
        }
        self.issue(&agent, &host, existing, wanted, target).await
    }

    fn choose_target(&self, host: &HostRecord) -> Result<String, String> {
        match &self.config.issuance.target {
            Some(t) if host.targets.contains(t) => Ok(t.clone()),
            Some(t) => Err(format!(
                "host has no install target named {t:?} (it has: {}); add [targets.{t}] to the agent's config",
                host.targets.join(", ")
            )),
            None => match host.targets.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err("host has no install targets; add a [targets.NAME] section to the agent's config".into()),
                many => Err(format!(
                    "host has several targets ({}); set [issuance] target in the coordinator config",
                    many.join(", ")
                )),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_failure(
        &self,
        existing: Option<CertRecord>,
        host: &HostRecord,
        wanted: &[IpAddr],
        target: &str,
        error: String,
        now: i64,
        retry: bool,
    ) -> Result<Option<i64>, StoreError> {
        let mut rec = existing.unwrap_or_else(|| self.new_record(host, wanted, target, now));
        let next =
            retry.then(|| now + Backoff::ISSUANCE.delay_random(rec.attempts).as_secs() as i64);
        rec.attempts += 1;
        rec.state = CertState::Failed;
        tracing::warn!(host = %host.id, cert = %rec.id, error = %error, next_attempt = ?next, "issuance failed");
        rec.last_error = Some(error);
        rec.next_attempt = next;
        rec.updated = now;
        self.store.put_cert(&rec)?;
        Ok(next)
    }

    fn new_record(
        &self,
        host: &HostRecord,
        wanted: &[IpAddr],
        target: &str,
        now: i64,
    ) -> CertRecord {
        CertRecord {
            id: CertId::generate(),
            host_id: host.id.clone(),
            identifiers: wanted.to_vec(),
            issuer: self
                .config
                .default_issuer_name()
                .unwrap_or_default()
                .to_owned(),
            profile: None,
            target: target.to_owned(),
            state: CertState::Pending,
            serial: None,
            not_before: None,
            not_after: None,
            chain_pem: None,
            order_url: None,
            last_error: None,
            attempts: 0,
            next_attempt: None,
            updated: now,
        }
    }

    async fn issue(
        self: &Arc<Self>,
        agent: &AgentHandle,
        host: &HostRecord,
        existing: Option<CertRecord>,
        wanted: Vec<IpAddr>,
        target: String,
    ) -> Result<Next, IssueError> {
        let now = self.clock.now_unix();
        let mut rec = existing
            .clone()
            .unwrap_or_else(|| self.new_record(host, &wanted, &target, now));
        rec.identifiers = wanted.clone();
        rec.target = target.clone();
        rec.issuer = self
            .config
            .default_issuer_name()
            .unwrap_or_default()
            .to_owned();
        match self.order_and_fetch(agent, &mut rec).await {
            Ok(()) => {
                rec.attempts = 0;
                rec.next_attempt = None;
                rec.last_error = None;
                self.install(agent, rec).await
            }
            Err(IssueError::Store(e)) => Err(IssueError::Store(e)),
            Err(IssueError::Agent(SessionError::NotConnected(_) | SessionError::Ended { .. }))
                if !self.sessions.is_connected(&host.id) =>
            {
                // The agent went away mid-issuance; it will be reconciled when it returns.
                let mut rec = rec;
                rec.state = if rec.serial.is_some() {
                    CertState::Issued
                } else {
                    CertState::Pending
                };
                rec.last_error =
                    Some("agent disconnected during issuance; resumes when it reconnects".into());
                rec.updated = self.clock.now_unix();
                self.store.put_cert(&rec)?;
                Ok(Next::Idle)
            }
            Err(e) => {
                let retry = !matches!(
                    &e,
                    IssueError::Policy(_) | IssueError::Acme(AcmeError::ProfileUnavailable { .. })
                );
                let next = self.record_failure(
                    Some(rec),
                    host,
                    &wanted,
                    &target,
                    e.to_string(),
                    self.clock.now_unix(),
                    retry,
                )?;
                Ok(next.map(Next::RetryAt).unwrap_or(Next::Idle))
            }
        }
    }

    /// Orders, validates, finalizes; leaves `rec` in state Issued (stored) on success.
    async fn order_and_fetch(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
    ) -> Result<(), IssueError> {
        let issuer = self.issuers.get(&rec.issuer).cloned().ok_or_else(|| {
            IssueError::Policy(format!("issuer {:?} is not configured", rec.issuer))
        })?;
        for ip in &rec.identifiers {
            check_issuable(*ip, issuer.cfg.allow_private_ips).map_err(|e| {
                IssueError::Policy(format!("cannot ask {} for {ip}: {e}", issuer.cfg.name))
            })?;
        }
        let profile = issuer.profile_for(true).await?;
        rec.profile = profile.clone();
        rec.state = CertState::Ordering;
        rec.order_url = None;
        rec.updated = self.clock.now_unix();
        self.store.put_cert(rec)?;

        let mut order = issuer
            .new_order(&rec.identifiers, profile.as_deref())
            .await?;
        rec.order_url = Some(order.url().to_owned());
        self.store.put_cert(rec)?;
        tracing::info!(host = %rec.host_id, cert = %rec.id, order = %order.url(), ids = ?rec.identifiers, profile = ?profile, "order created");

        // The agent makes its key and CSR while the CA validates.
        let csr_agent = agent.clone();
        let csr_cmd = Cmd::CreateCsr(pb::CreateCsr {
            identifiers: rec.identifiers.iter().map(|ip| ip.to_string()).collect(),
            key_type: match self.config.issuance.key_type {
                KeyTypeName::EcdsaP256 => pb::KeyType::EcdsaP256,
                KeyTypeName::EcdsaP384 => pb::KeyType::EcdsaP384,
            } as i32,
            target: rec.target.clone(),
        });
        let csr_task =
            tokio::spawn(
                async move { csr_agent.request(csr_cmd, "create CSR", AGENT_QUICK).await },
            );

        let challenges = order.challenges();
        let timeout = Duration::from_secs(self.config.issuance.validation_timeout_secs);
        let validated = if challenges.is_empty() {
            Ok(()) // every authorization was already valid
        } else {
            match present(agent, &challenges).await {
                Ok(()) => {
                    let r = order.validate(timeout).await;
                    clear(agent, &challenges).await;
                    r.map_err(IssueError::from)
                }
                Err(e) => {
                    clear(agent, &challenges).await;
                    Err(e.into())
                }
            }
        };
        if let Err(e) = validated {
            csr_task.abort();
            return Err(e);
        }

        let csr_der = match csr_task.await {
            Ok(Ok(reply::Result::Csr(c))) => c.csr_der,
            Ok(Ok(_)) => {
                return Err(SessionError::Unexpected {
                    host: agent.host.clone(),
                    what: "create CSR",
                }
                .into())
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(SessionError::Ended {
                    host: agent.host.clone(),
                    what: "create CSR",
                }
                .into())
            }
        };
        let csr = check_csr(&csr_der, &rec.identifiers, self.config.issuance.key_type)?;
        let chain_pem = order.finalize(&csr_der, timeout).await?;
        let leaf = check_chain(&chain_pem, &rec.identifiers, &csr.spki_der)?;

        rec.state = CertState::Issued;
        rec.serial = Some(leaf.serial_hex.clone());
        rec.not_before = Some(leaf.not_before);
        rec.not_after = Some(leaf.not_after);
        rec.chain_pem = Some(chain_pem);
        rec.updated = self.clock.now_unix();
        self.store.put_cert(rec)?;
        tracing::info!(host = %rec.host_id, cert = %rec.id, serial = %leaf.serial_hex, not_after = leaf.not_after, "certificate issued");
        Ok(())
    }

    /// Sends the stored chain to the agent's target and records the result.
    async fn install(&self, agent: &AgentHandle, mut rec: CertRecord) -> Result<Next, IssueError> {
        let Some(chain_pem) = rec.chain_pem.clone() else {
            return Ok(Next::Idle);
        };
        let cmd = Cmd::Install(pb::InstallCertificate {
            target: rec.target.clone(),
            chain_pem,
        });
        let now = self.clock.now_unix();
        match agent.request(cmd, "install", AGENT_INSTALL).await {
            Ok(reply::Result::Installed(report)) if Some(&report.serial) == rec.serial.as_ref() => {
                rec.state = CertState::Installed;
                rec.last_error = None;
                rec.updated = now;
                self.store.put_cert(&rec)?;
                if let Some(mut host) = self.store.host(&rec.host_id)? {
                    host.inventory.retain(|i| i.target != report.target);
                    host.inventory.push(crate::store::InstalledRecord {
                        target: report.target.clone(),
                        serial: report.serial.clone(),
                        not_after: report.not_after_unix,
                        identifiers: rec.identifiers.iter().map(|i| i.to_string()).collect(),
                    });
                    self.store.put_host(&host)?;
                }
                tracing::info!(host = %rec.host_id, cert = %rec.id, serial = %report.serial, target = %report.target, "certificate installed");
                Ok(Next::Idle)
            }
            Ok(_) => {
                rec.state = CertState::Issued;
                rec.last_error = Some("agent reported a different serial after install".into());
                rec.updated = now;
                self.store.put_cert(&rec)?;
                Ok(Next::Idle)
            }
            Err(SessionError::Failed { code, message, .. }) if code == "no_matching_key" => {
                // The key for this certificate is gone from the host (e.g. its disk was
                // wiped): the certificate is useless there, so issue a new one.
                tracing::warn!(host = %rec.host_id, cert = %rec.id, error = %message, "host lost the key; re-issuing");
                rec.state = CertState::Pending;
                rec.chain_pem = None;
                rec.last_error = Some(format!(
                    "install failed: {message}; issuing a new certificate"
                ));
                rec.updated = now;
                self.store.put_cert(&rec)?;
                Ok(Next::RetryAt(now))
            }
            Err(e) => {
                tracing::warn!(host = %rec.host_id, cert = %rec.id, error = %e, "install failed");
                let retry = !matches!(
                    e,
                    SessionError::NotConnected(_) | SessionError::Ended { .. }
                );
                rec.state = CertState::Issued;
                rec.attempts += 1;
                rec.last_error = Some(format!("install failed: {e}"));
                rec.next_attempt = retry.then(|| {
                    now + Backoff::ISSUANCE.delay_random(rec.attempts - 1).as_secs() as i64
                });
                rec.updated = now;
                self.store.put_cert(&rec)?;
                Ok(rec.next_attempt.map(Next::RetryAt).unwrap_or(Next::Idle))
            }
        }
    }
}

enum Next {
    Idle,
    RetryAt(i64),
}

fn inventory_has(host: &HostRecord, rec: &CertRecord) -> bool {
    host.inventory
        .iter()
        .any(|i| i.target == rec.target && Some(&i.serial) == rec.serial.as_ref())
}

async fn present(agent: &AgentHandle, challenges: &[PendingChallenge]) -> Result<(), SessionError> {
    let cmd = Cmd::PresentChallenges(pb::PresentChallenges {
        challenges: challenges
            .iter()
            .map(|c| pb::Http01Challenge {
                identifier: c.identifier.clone(),
                token: c.token.clone(),
                key_authorization: c.key_authorization.clone(),
            })
            .collect(),
    });
    agent
        .request(cmd, "present challenges", AGENT_QUICK)
        .await
        .map(|_| ())
}

/// Best effort: a failure here is logged; the agent also expires challenges on its own.
async fn clear(agent: &AgentHandle, challenges: &[PendingChallenge]) {
    let cmd = Cmd::ClearChallenges(pb::ClearChallenges {
        tokens: challenges.iter().map(|c| c.token.clone()).collect(),
    });
    if let Err(e) = agent.request(cmd, "clear challenges", AGENT_QUICK).await {
        tracing::warn!(host = %agent.host, error = %e, "could not clear challenges; the agent expires them itself");
    }
}

/// The CSR must be signed by its key, name exactly `ids` as IP SANs, have no CN and no DNS
/// names, and use the key type asked for.
fn check_csr(der: &[u8], ids: &[IpAddr], key_type: KeyTypeName) -> Result<CsrInfo, IssueError> {
    let csr = CsrInfo::from_der(der).map_err(|e| IssueError::BadCsr(e.to_string()))?;
    if canonical_set(csr.ips.clone()) != ids {
        return Err(IssueError::BadCsr(format!(
            "it names {:?}, expected {:?}",
            csr.ips, ids
        )));
    }
    if !csr.dns_names.is_empty() || csr.subject_cn.is_some() {
        return Err(IssueError::BadCsr(
            "it carries DNS names or a CN; IP certificates have neither".into(),
        ));
    }
    if csr.key_algorithm != OID_EC_PUBLIC_KEY {
        return Err(IssueError::BadCsr(format!(
            "key algorithm {} is not the {key_type:?} asked for",
            csr.key_algorithm
        )));
    }
    Ok(csr)
}

/// The leaf must cover exactly `ids` and carry the CSR's public key.
fn check_chain(chain_pem: &str, ids: &[IpAddr], spki: &[u8]) -> Result<CertInfo, IssueError> {
    let chain = parse_pem_chain(chain_pem).map_err(|e| IssueError::BadCert(e.to_string()))?;
    let leaf = CertInfo::from_der(&chain[0]).map_err(|e| IssueError::BadCert(e.to_string()))?;
    if canonical_set(leaf.ips.clone()) != ids {
        return Err(IssueError::BadCert(format!(
            "it names {:?}, expected {:?}",
            leaf.ips, ids
        )));
    }
    if leaf.spki_der != spki {
        return Err(IssueError::BadCert(
            "its public key is not the one in our CSR".into(),
        ));
    }
    Ok(leaf)
}
