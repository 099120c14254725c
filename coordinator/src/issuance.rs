//! The reconciler. Each certificate record holds its desired spec (from [`crate::spec`])
//! and what is observed (the certificate we have, what the agent has installed, the
//! order in flight). A scheduler pops certificates whose next action is due from the
//! store's index — a tick costs what is due, not the fleet — and runs one task per
//! certificate that decides ([`decide`], pure) and acts: order, validate through the agent,
//! finalize with the agent's CSR, install through the agent, or nothing. Every outcome
//! writes the next action back, so no certificate is ever left unscheduled.
//!
//! Every state change is flushed to the store before the next step acts on it.

use crate::acme::{AcmeError, AcmeIssuer, PendingChallenge};
use crate::audit::{AuditLog, Entry, Kind};
use crate::config::{Config, KeyTypeName, RateLimits};
use crate::sessions::{AgentHandle, SessionError, Sessions};
use crate::spec::{self, CertSpec};
use crate::store::{
    AriState, Blocked, BlockedState, CertRecord, CertState, HostRecord, IssuedCert, OrderInFlight,
    Store, StoreError,
};
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};
use certfleet_shared::clock::SharedClock;
use certfleet_shared::identifier::{canonical_set, check_issuable};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::ratelimit::{Budget, Event, Refusal};
use certfleet_shared::renewal::{self, RenewReason, Validity};
use certfleet_shared::x509::{parse_pem_chain, CertInfo, CsrInfo};
use instant_acme::OrderStatus;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const AGENT_QUICK: Duration = Duration::from_secs(30);
const AGENT_INSTALL: Duration = Duration::from_secs(180);
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
/// A certificate being worked on is re-looked at after this if the coordinator dies.
const LEASE_SECS: i64 = 15 * 60;
/// Safety net while waiting for a disconnected host (its Hello also wakes us).
const WAIT_FOR_AGENT_SECS: i64 = 10 * 60;
/// How often a certificate in a configuration error state is looked at again.
const RECHECK_SECS: i64 = 6 * 3600;
/// Immediate retries for badNonce (beyond the ACME library's own) and for a CA that forgot
/// our account (the retry makes a new one).
const QUICK_RETRIES: u32 = 30;
const MAX_PARALLEL: usize = 32;
/// How long a resumed order's challenges stay served after validation (a validation
/// announced before the crash may still be running at the CA).
const RESUMED_CLEAR_GRACE: Duration = Duration::from_secs(30);
/// An order older than this is abandoned rather than resumed (CAs expire them within days).
const ORDER_MAX_AGE_SECS: i64 = 24 * 3600;
const TICK_BATCH: usize = 512;

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
    #[error("rate-limit budget: {0}")]
    Budget(Refusal),
    #[error("waiting for the host to connect")]
    WaitingForAgent,
    #[error("the agent's CSR is unacceptable: {0}")]
    BadCsr(String),
    #[error("the CA returned an unacceptable certificate: {0}")]
    BadCert(String),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// What to do for a certificate now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Idle,
    Resume,
    Issue(RenewReason),
    Install,
}

/// When the current certificate should be renewed, and why.
pub fn renew_time(rec: &CertRecord, now: i64) -> Option<(i64, RenewReason)> {
    let cur = rec.current.as_ref()?;
    let v = Validity {
        not_before: cur.not_before,
        not_after: cur.not_after,
    };
    Some(if now >= cur.not_after {
        (cur.not_after, RenewReason::Expired)
    } else if let Some(a) = &rec.ari {
        (a.renew_at, RenewReason::AriWindow)
    } else {
        (
            renewal::lifetime_renew_at(&v, cur.renew_unit),
            RenewReason::LifetimeFraction,
        )
    })
}

/// From when the current certificate counts as *at risk*: half of its renewal margin left
/// (the lifetime fraction), or — when the CA's ARI window asks for a later renewal — half of
/// the time between the window's start and expiry.
pub fn at_risk_at(rec: &CertRecord) -> Option<i64> {
    let c = rec.current.as_ref()?;
    let v = Validity {
        not_before: c.not_before,
        not_after: c.not_after,
    };
    let (num, den) = renewal::renewal_fraction(&v);
    let by_fraction = c.not_after - v.lifetime_secs() * num / den / 2;
    Some(match &rec.ari {
        Some(a) if a.start < c.not_after => by_fraction.max(a.start + (c.not_after - a.start) / 2),
        _ => by_fraction,
    })
}

/// Why a new certificate is needed now, if it is.
fn issue_reason(rec: &CertRecord, now: i64) -> Option<RenewReason> {
    let Some(cur) = &rec.current else {
        return Some(RenewReason::Missing);
    };
    if cur.identifiers != rec.spec.identifiers {
        return Some(RenewReason::IdentifiersChanged);
    }
    if !rec.spec.issuers().any(|i| i == cur.issuer)
        || (rec.spec.required_profile.is_some() && cur.profile != rec.spec.required_profile)
    {
        return Some(RenewReason::SpecChanged);
    }
    if rec.forced_by.is_some() {
        return Some(RenewReason::Forced);
    }
    match renew_time(rec, now) {
        Some((at, reason)) if now >= at => Some(reason),
        _ => None,
    }
}

/// Desired against observed. Pure.
pub fn decide(rec: &CertRecord, now: i64) -> Decision {
    if rec.order.is_some() {
        return Decision::Resume;
    }
    if let Some(reason) = issue_reason(rec, now) {
        // An address conflict or refusal holds any new order back; what is issued may
        // still be installed.
        if rec.blocked.is_none() {
            return Decision::Issue(reason);
        }
    }
    let Some(cur) = &rec.current else {
        return Decision::Idle;
    };
    if rec.installed_serial.as_ref() != Some(&cur.serial)
        || (!rec.verify_disabled && rec.served_serial.as_ref() != Some(&cur.serial))
    {
        return Decision::Install;
    }
    Decision::Idle
}

pub struct Engine {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    audit: Arc<AuditLog>,
    pub sessions: Arc<Sessions>,
    issuers: HashMap<String, Arc<AcmeIssuer>>,
    budgets: Mutex<HashMap<String, Budget>>,
    config: Config,
    clock: SharedClock,
    running: Mutex<HashSet<CertId>>,
    wake: Notify,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    // Every argument is a distinct shared service the engine is wired to at start-up.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        metrics: Arc<crate::metrics::Metrics>,
        store: Arc<dyn Store>,
        audit: Arc<AuditLog>,
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
                    Arc::new(AcmeIssuer::new(
                        c.clone(),
                        store.clone(),
                        clock.clone(),
                        metrics.clone(),
                    )),
                )
            })
            .collect();
        Arc::new(Self {
            store,
            metrics,
            audit,
            sessions,
            issuers,
            budgets: Mutex::default(),
            config,
            clock,
            running: Mutex::default(),
            wake: Notify::new(),
            permits: Arc::new(Semaphore::new(MAX_PARALLEL)),
            shutdown,
            tracker,
        })
    }

    /// Warms up the ACME accounts, reschedules what a crash interrupted, starts the
    /// scheduler.
    pub fn start(self: &Arc<Self>) -> Result<(), StoreError> {
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
        self.recover()?;
        let engine = self.clone();
        self.tracker.spawn(async move { engine.scheduler().await });
        Ok(())
    }

    /// After a restart: an order in flight is resumed now, and any certificate without a
    /// next action gets one.
    fn recover(&self) -> Result<(), StoreError> {
        let now = self.clock.now_unix();
        let mut fix = Vec::new();
        self.store.scan_certs(&mut |rec| {
            if rec.order.is_some() || rec.next_action.is_none() {
                fix.push(rec.id);
            }
            Ok(())
        })?;
        for id in fix {
            let Some(mut rec) = self.store.cert(&id)? else {
                continue;
            };
            let reason = if rec.order.is_some() {
                "resume the order interrupted by a restart"
            } else {
                "restart: no next action was scheduled"
            };
            tracing::info!(cert = %rec.id, reason, "recovering");
            rec.next_action = Some(now);
            rec.next_reason = Some(reason.into());
            self.store.put_cert(&rec)?;
        }
        Ok(())
    }

    async fn scheduler(self: Arc<Self>) {
        loop {
            let now = self.clock.now_unix();
            let mut busy = false;
            match self.store.due(now, TICK_BATCH) {
                Ok(ids) => {
                    for id in ids {
                        busy |= !self.run_cert(id);
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the schedule failed"),
            }
            let wait = match self.store.next_due() {
                Ok(Some(at)) if at > now => Duration::from_secs((at - now).min(60) as u64),
                Ok(Some(_)) if busy => Duration::from_millis(200),
                Ok(Some(_)) => Duration::from_millis(20),
                Ok(None) => Duration::from_secs(60),
                Err(_) => Duration::from_secs(5),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Starts the task for one certificate unless one runs already. Returns false when it
    /// was already running.
    fn run_cert(self: &Arc<Self>, id: CertId) -> bool {
        if self.shutdown.is_cancelled() || !lock(&self.running).insert(id.clone()) {
            return false;
        }
        // Lease it so the scheduler does not pick it again while it runs; a crash leaves the
        // lease, which expires and retries. Not flushed: recovery at start covers a lost lease.
        if let Ok(Some(mut rec)) = self.store.cert(&id) {
            rec.next_action = Some(self.clock.now_unix() + LEASE_SECS);
            let _ = self.store.put_cert_unflushed(&rec);
        }
        let engine = self.clone();
        self.tracker.spawn(async move {
            let permit = engine.permits.clone().acquire_owned().await;
            let token = engine.shutdown.clone();
            let result = tokio::select! {
                r = engine.reconcile(&id) => r,
                _ = token.cancelled() => Ok(()),
            };
            drop(permit);
            lock(&engine.running).remove(&id);
            if let Err(e) = result {
                tracing::error!(cert = %id, error = %e, "reconcile failed");
            }
            engine.wake.notify_one();
        });
        true
    }

    /// The host's facts changed (it said Hello): claim its addresses, recompute its desired
    /// certificate and look at it now.
    pub fn host_changed(&self, host_id: &HostId) -> Result<(), StoreError> {
        let Some(host) = self.store.host(host_id)? else {
            return Ok(());
        };
        let now = self.clock.now_unix();
        let disallowed = spec::disallowed(&self.config, &host);
        let conflicts = self.claim_addresses(&host, disallowed.as_ref())?;
        let existing = self.store.certs_for_host(host_id)?;
        match spec::desired(&self.config, &host) {
            Ok(spec) => {
                let mut rec = existing
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| new_record(&host, spec.clone(), now));
                rec.installed_serial = host
                    .inventory
                    .iter()
                    .find(|i| i.target == spec.target)
                    .map(|i| i.serial.clone());
                if rec.served_serial != rec.installed_serial {
                    // What the host serves is only known again after its next served check.
                    rec.served_serial = None;
                }
                let blocked = blocked_by(&spec, disallowed.as_ref(), &conflicts, &host, now);
                rec.spec = spec;
                self.set_blocked(&mut rec, blocked)?;
                rec.state = state_of(&rec, now);
                rec.next_action = Some(now);
                rec.next_reason = Some("host connected".into());
                rec.updated = now;
                self.store.put_cert(&rec)?;
            }
            Err(e) => {
                tracing::warn!(host = %host_id, error = %e, "no certificate for this host");
                for mut rec in existing {
                    rec.last_error = Some(e.to_string());
                    rec.next_action = Some(now + RECHECK_SECS);
                    rec.next_reason = Some("configuration error".into());
                    self.store.put_cert(&rec)?;
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Claims the host's allowed addresses for it (first come; a holder that is no longer
    /// enrolled is taken over) and frees those it no longer reports. Returns the addresses
    /// another enrolled host holds, with that host.
    fn claim_addresses(
        &self,
        host: &HostRecord,
        disallowed: Option<&spec::Disallowed>,
    ) -> Result<Vec<(IpAddr, HostId)>, StoreError> {
        let mut conflicts = Vec::new();
        for ip in &host.ips {
            if disallowed.is_some_and(|d| d.ips.contains(ip)) {
                continue;
            }
            let mut holder = self.store.claim_ip(*ip, &host.id, None)?;
            if holder != host.id && self.store.host(&holder)?.is_none() {
                holder = self.store.claim_ip(*ip, &host.id, Some(&holder))?;
            }
            if holder != host.id {
                conflicts.push((*ip, holder));
            }
        }
        for ip in self.store.ips_held_by(&host.id)? {
            if !host.ips.contains(&ip) || disallowed.is_some_and(|d| d.ips.contains(&ip)) {
                self.release_address(ip, &host.id, "host:no longer reports it", false)?;
            }
        }
        Ok(conflicts)
    }

    /// Records a change of `blocked` (audit, metric, WARN once per new reason).
    fn set_blocked(
        &self,
        rec: &mut CertRecord,
        blocked: Option<Blocked>,
    ) -> Result<(), StoreError> {
        let same = match (&rec.blocked, &blocked) {
            (Some(a), Some(b)) => a.state == b.state && a.ips == b.ips && a.held_by == b.held_by,
            (None, None) => true,
            _ => false,
        };
        if same {
            return Ok(());
        }
        match &blocked {
            Some(b) => {
                let kind = match b.state {
                    BlockedState::Conflict => Kind::IpConflict,
                    BlockedState::Refused => Kind::IpRefused,
                };
                let mut entry = Entry::by("coordinator")
                    .ips(&b.ips)
                    .detail("reason", &b.reason);
                if let Some(h) = &b.held_by {
                    entry = entry.detail("held_by", h.as_str());
                }
                if let Err(e) = self.record(kind, rec, entry) {
                    tracing::error!(error = %e, "audit append failed");
                }
                self.metrics
                    .ip_blocked
                    .get_or_create(&crate::metrics::BlockLabel {
                        kind: kind.as_str(),
                    })
                    .inc();
                tracing::warn!(host = %rec.host_id, cert = %rec.id, ips = ?b.ips, held_by = ?b.held_by,
                    state = ?b.state, "{}", b.reason);
                rec.last_error = Some(b.reason.clone());
            }
            None => {
                tracing::info!(host = %rec.host_id, cert = %rec.id, "address conflict resolved; the certificate can be ordered");
                rec.last_error = None;
            }
        }
        rec.blocked = blocked;
        Ok(())
    }

    /// Frees `ip` if `host` holds it, audits it, and lets any host waiting for it claim it
    /// now (its certificate then proceeds without a restart). Returns the hosts looked at.
    pub fn release_address(
        &self,
        ip: IpAddr,
        host: &HostId,
        by: &str,
        audit: bool,
    ) -> Result<Vec<HostId>, StoreError> {
        if !self.store.release_ip(ip, host)? {
            return Ok(Vec::new());
        }
        if audit {
            if let Err(e) = self.audit.append(
                Kind::IpReleased,
                self.clock.now_unix(),
                Entry::by(by).host(host).ips(&[ip]),
            ) {
                tracing::error!(error = %e, "audit append failed");
            }
        }
        tracing::info!(ip = %ip, host = %host, by, "address released");
        let mut waiting = Vec::new();
        for other in self.store.hosts()? {
            if other.id != *host && other.ips.contains(&ip) {
                waiting.push(other.id);
            }
        }
        for h in &waiting {
            self.host_changed(h)?;
        }
        // The host that had it now sees the conflict itself (when someone took the address).
        if !waiting.is_empty() && self.store.host(host)?.is_some() {
            self.host_changed(host)?;
        }
        Ok(waiting)
    }

    /// Appends to the audit trail (durable when it returns).
    fn record(
        &self,
        kind: Kind,
        rec: &CertRecord,
        entry: Entry,
    ) -> Result<(), crate::audit::AuditError> {
        self.audit
            .append(
                kind,
                self.clock.now_unix(),
                entry.host(&rec.host_id).cert(&rec.id),
            )
            .map(|_| ())
    }

    /// Revokes the current certificate at its CA and records it. With `reissue`, the
    /// reconciler then issues a replacement at once.
    pub async fn revoke(
        &self,
        id: &CertId,
        reason: instant_acme::RevocationReason,
        reason_name: &str,
        by: &str,
        reissue: bool,
    ) -> Result<Option<String>, IssueError> {
        let Some(mut rec) = self.store.cert(id)? else {
            return Err(IssueError::Policy(format!("no such certificate: {id}")));
        };
        let Some(cur) = rec.current.clone() else {
            return Ok(None);
        };
        let issuer = self.issuer(&cur.issuer)?;
        let chain =
            parse_pem_chain(&cur.chain_pem).map_err(|e| IssueError::BadCert(e.to_string()))?;
        issuer.revoke(&chain[0], reason).await?;
        self.record(
            Kind::CertificateRevoked,
            &rec,
            Entry::by(by)
                .ips(&cur.identifiers)
                .serial(cur.serial.clone())
                .issuer(cur.issuer.clone())
                .detail("reason", reason_name),
        )?;
        tracing::warn!(cert = %id, serial = %cur.serial, reason = reason_name, by, "certificate revoked");
        if reissue {
            rec.current = None;
            rec.ari = None;
            rec.ari_retry_at = None;
            rec.last_renewal_reason = Some(format!("revoked ({reason_name}) by {by}"));
            rec.next_action = Some(self.clock.now_unix());
            rec.next_reason = Some("replace the revoked certificate".into());
            rec.state = state_of(&rec, self.clock.now_unix());
            self.store.put_cert(&rec)?;
            self.wake.notify_one();
        }
        Ok(Some(cur.serial))
    }

    /// Removes a host: revokes its certificates (cessationOfOperation) unless told not to,
    /// forgets them and the host; its identity is refused from then on.
    pub async fn remove_host(
        &self,
        host: &HostId,
        by: &str,
        revoke: bool,
    ) -> Result<Vec<String>, IssueError> {
        let mut revoked = Vec::new();
        for rec in self.store.certs_for_host(host)? {
            if revoke
                && rec
                    .current
                    .as_ref()
                    .is_some_and(|c| c.not_after > self.clock.now_unix())
            {
                if let Some(serial) = self
                    .revoke(
                        &rec.id,
                        instant_acme::RevocationReason::CessationOfOperation,
                        "cessationOfOperation",
                        by,
                        false,
                    )
                    .await?
                {
                    revoked.push(serial);
                }
            }
            self.store.delete_cert(&rec)?;
        }
        self.audit.append(
            Kind::HostRemoved,
            self.clock.now_unix(),
            Entry::by(by)
                .host(host)
                .detail("revoked_serials", &revoked)
                .detail("revoked", revoke),
        )?;
        self.store.delete_host(host)?;
        self.sessions.disconnect(host);
        tracing::warn!(host = %host, by, revoked = ?revoked, "host removed");
        // Its addresses are free now: a host waiting for one gets its certificate.
        for ip in self.store.ips_held_by(host)? {
            self.release_address(ip, host, by, true)?;
        }
        Ok(revoked)
    }

    /// Forces a renewal of these certificates now (operator command).
    pub fn force_renew(&self, ids: &[CertId], by: &str) -> Result<Vec<CertId>, StoreError> {
        let now = self.clock.now_unix();
        for id in ids {
            if self.store.cert(id)?.is_none() {
                return Ok(Vec::new());
            }
        }
        let mut done = Vec::new();
        for id in ids {
            if let Some(mut rec) = self.store.cert(id)? {
                if let Err(e) = self.record(
                    Kind::RenewalForced,
                    &rec,
                    Entry::by(format!("operator:{by}")),
                ) {
                    tracing::error!(error = %e, "audit append failed; renewal not forced");
                    continue;
                }
                rec.forced_by = Some(by.to_owned());
                // The operator takes charge: the next attempt is not held back by earlier failures.
                rec.attempts = 0;
                rec.next_action = Some(now);
                rec.next_reason = Some(format!("renewal forced by {by}"));
                self.store.put_cert(&rec)?;
                done.push(id.clone());
            }
        }
        self.wake.notify_one();
        Ok(done)
    }

    async fn reconcile(&self, id: &CertId) -> Result<(), IssueError> {
        let Some(mut rec) = self.store.cert(id)? else {
            return Ok(());
        };
        let Some(host) = self.store.host(&rec.host_id)? else {
            rec.next_action = None;
            self.store.put_cert(&rec)?;
            return Ok(());
        };
        let now = self.clock.now_unix();
        self.refresh_ari(&mut rec, now).await;
        let outcome = self.act(&mut rec, &host, now).await;
        self.finish(rec, outcome)
    }

    async fn act(
        &self,
        rec: &mut CertRecord,
        host: &HostRecord,
        now: i64,
    ) -> Result<(), IssueError> {
        let decision = decide(rec, now);
        if decision == Decision::Idle {
            return Ok(());
        }
        let agent = self
            .sessions
            .get(&host.id)
            .ok_or(IssueError::WaitingForAgent)?;
        let outcome = match decision {
            Decision::Idle => Ok(()),
            Decision::Install => self.install(&agent, rec).await,
            Decision::Resume => self.resume(&agent, rec).await,
            Decision::Issue(reason) => self.issue(&agent, rec, reason).await,
        };
        if rec.order.is_none() && !matches!(outcome, Err(IssueError::Agent(_))) {
            self.discard_pending_keys(&agent, rec).await;
        }
        outcome
    }

    /// Writes the outcome and the next action.
    fn finish(
        &self,
        mut rec: CertRecord,
        outcome: Result<(), IssueError>,
    ) -> Result<(), IssueError> {
        let now = self.clock.now_unix();
        // A Hello or an operator may have changed the record while this task ran: their
        // fields win, and the certificate is looked at again right away.
        let mut changed_meanwhile = false;
        let Some(fresh) = self.store.cert(&rec.id)? else {
            // Removed (host removal) while this task ran: it stays removed.
            return Ok(());
        };
        {
            if fresh.spec != rec.spec {
                rec.spec = fresh.spec;
                changed_meanwhile = true;
            }
            if fresh.blocked != rec.blocked {
                rec.blocked = fresh.blocked;
                changed_meanwhile = true;
            }
            if fresh.forced_by.is_some() && rec.forced_by.is_none() {
                rec.forced_by = fresh.forced_by;
                changed_meanwhile = true;
            }
            // Revoked by an operator meanwhile: do not bring the revoked certificate back.
            if fresh.current.is_none()
                && rec.current.is_some()
                && fresh
                    .last_renewal_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("revoked"))
            {
                rec.current = None;
                rec.ari = None;
                rec.last_renewal_reason = fresh.last_renewal_reason;
                changed_meanwhile = true;
            }
        }
        let mut next = if changed_meanwhile {
            now
        } else {
            self.planned(&rec, now)
        };
        match &outcome {
            Ok(()) => {
                rec.attempts = 0;
                rec.quick_retries = 0;
                rec.issuer_index = 0;
                rec.last_error = None;
            }
            Err(IssueError::Store(_)) => {}
            Err(IssueError::WaitingForAgent) => {
                rec.last_error = Some("waiting for the host to connect".into());
                next = next.min(now + WAIT_FOR_AGENT_SECS);
            }
            Err(IssueError::Budget(refusal)) => {
                let _ = self.record(
                    Kind::RateLimitRefused,
                    &rec,
                    Entry::by("coordinator")
                        .ips(&rec.spec.identifiers)
                        .issuer(rec.spec.issuer.clone())
                        .detail("limit", refusal.limit)
                        .detail("key", &refusal.key)
                        .detail("frees_at", refusal.frees_at),
                );
                rec.last_error = Some(format!("{refusal} ({})", refusal.frees_in(now)));
                next = refusal.frees_at;
            }
            Err(IssueError::Acme(e))
                if (e.is_bad_nonce() || e.is_account_gone())
                    && rec.quick_retries < QUICK_RETRIES =>
            {
                rec.quick_retries += 1;
                rec.last_error = Some(e.to_string());
                next = now + 1;
            }
            Err(IssueError::Policy(_))
            | Err(IssueError::Acme(AcmeError::ProfileUnavailable { .. })) => {
                rec.last_error = outcome.as_ref().err().map(|e| e.to_string());
                next = now + RECHECK_SECS;
            }
            Err(IssueError::Acme(e))
                if !e.is_permanent()
                    && !matches!(e, AcmeError::Validation(_))
                    && rec.order.is_none()
                    && rec.issuer_index + 1 < rec.spec.issuers().count() =>
            {
                rec.issuer_index += 1;
                let next_issuer = rec
                    .spec
                    .issuers()
                    .nth(rec.issuer_index)
                    .unwrap_or_default()
                    .to_owned();
                tracing::warn!(cert = %rec.id, error = %e, next_issuer = %next_issuer, "issuer failed; falling back to the next one");
                rec.last_error = Some(format!("{e}; trying issuer {next_issuer} next"));
                next = now + 1;
            }
            Err(e) => {
                rec.issuer_index = 0;
                let backoff = self
                    .config
                    .issuance
                    .retry_backoff()
                    .delay_random(rec.attempts)
                    .as_secs() as i64;
                rec.attempts += 1;
                rec.last_error = Some(e.to_string());
                let ca_says = match e {
                    IssueError::Acme(a) if a.is_rate_limited() => {
                        retry_after_in(&a.to_string(), now)
                    }
                    _ => None,
                };
                next = ca_says.unwrap_or(now + backoff).max(now + 1);
            }
        }
        if let Err(e) = &outcome {
            if !matches!(e, IssueError::WaitingForAgent | IssueError::Store(_)) {
                self.metrics
                    .failures
                    .get_or_create(&crate::metrics::IssuerReason {
                        issuer: rec.spec.issuer.clone(),
                        reason: failure_reason(e).into(),
                    })
                    .inc();
            }
            if !matches!(e, IssueError::WaitingForAgent) {
                tracing::warn!(cert = %rec.id, host = %rec.host_id, error = %e, next_action = next, "certificate not reconciled");
            }
        }
        if let Some(b) = &rec.blocked {
            if outcome.is_ok() {
                rec.last_error = Some(b.reason.clone());
            }
        }
        rec.state = state_of(&rec, now);
        let was = rec.at_risk;
        rec.at_risk = rec.current.is_some() && at_risk_at(&rec).is_some_and(|at| now >= at);
        if rec.at_risk && !was {
            let _ = self.record(
                Kind::AtRisk,
                &rec,
                Entry::by("coordinator")
                    .ips(&rec.spec.identifiers)
                    .serial(
                        rec.current
                            .as_ref()
                            .map(|c| c.serial.clone())
                            .unwrap_or_default(),
                    )
                    .detail("last_error", &rec.last_error),
            );
            tracing::error!(cert = %rec.id, host = %rec.host_id, not_after = rec.current.as_ref().map(|c| c.not_after),
                last_error = ?rec.last_error, "certificate AT RISK: its remaining lifetime is below the safety margin");
        }
        rec.next_reason = Some(next_reason(&rec, next, now, outcome.is_err()));
        rec.next_action = Some(next.max(now));
        rec.updated = now;
        self.store.put_cert(&rec)?;
        match outcome {
            Err(IssueError::Store(e)) => Err(IssueError::Store(e)),
            _ => Ok(()),
        }
    }

    /// The next planned action when nothing failed: renewal, ARI re-check, the at-risk
    /// moment, whichever is first.
    fn planned(&self, rec: &CertRecord, now: i64) -> i64 {
        if rec.blocked.is_some() && rec.order.is_none() && decide(rec, now) == Decision::Idle {
            // Released addresses and policy changes wake it; this is the safety net.
            return now + RECHECK_SECS;
        }
        if rec.order.is_some() || rec.current.is_none() || decide(rec, now) != Decision::Idle {
            return now;
        }
        let mut next = renew_time(rec, now).map(|(at, _)| at).unwrap_or(now);
        if let Some(a) = &rec.ari {
            next = next.min(a.next_check);
        } else if self.ari_pending(rec) {
            next = next.min(rec.ari_retry_at.unwrap_or(now));
        }
        if let Some(at) = at_risk_at(rec).filter(|_| !rec.at_risk) {
            next = next.min(at);
        }
        next.max(now + 1)
    }

    /// The CA may have an ARI window for the current certificate that we have not fetched.
    fn ari_pending(&self, rec: &CertRecord) -> bool {
        rec.ari.is_none()
            && rec
                .current
                .as_ref()
                .is_some_and(|c| c.ari_id.is_some() && self.issuer_has_ari(&c.issuer))
    }

    fn issuer_has_ari(&self, name: &str) -> bool {
        self.issuers.get(name).is_some_and(|i| i.has_ari())
    }

    /// Fetches the ARI window when it is time to (at least twice a day).
    async fn refresh_ari(&self, rec: &mut CertRecord, now: i64) {
        let Some(cur) = &rec.current else { return };
        let Some(ari_id) = cur.ari_id.clone() else {
            return;
        };
        if rec.ari.as_ref().is_some_and(|a| a.next_check > now)
            || rec.ari_retry_at.is_some_and(|t| t > now)
        {
            return;
        }
        let Some(issuer) = self.issuers.get(&cur.issuer) else {
            return;
        };
        if !issuer.has_ari() {
            return;
        }
        match issuer.renewal_window(&ari_id).await {
            Ok(Some(w)) => {
                // Keep the last tenth of the lifetime for retries, even when the CA's window
                // runs up to expiry.
                let (nb, na) = (cur.not_before, cur.not_after);
                let end = w.end.min(na - (na - nb) / 10).max(w.start + 1);
                let renew_at = match &rec.ari {
                    Some(old) if old.start == w.start && old.end == w.end => old.renew_at,
                    _ => renewal::ari_renew_at(
                        &renewal::AriWindow {
                            start: w.start,
                            end,
                        },
                        now,
                        rand::random(),
                    ),
                };
                rec.ari_retry_at = None;
                tracing::info!(cert = %rec.id, start = w.start, end = w.end, renew_at, "ARI window");
                rec.ari = Some(AriState {
                    start: w.start,
                    end: w.end,
                    renew_at,
                    next_check: renewal::next_ari_check(now, Some(w.retry_after_secs)),
                    explanation_url: w.explanation_url,
                });
            }
            Ok(None) => {
                rec.ari = None;
                rec.ari_retry_at = None;
            }
            Err(e) => {
                tracing::warn!(cert = %rec.id, error = %e, "ARI fetch failed; keeping the previous plan");
                match &mut rec.ari {
                    Some(a) => a.next_check = now + 3600,
                    None => rec.ari_retry_at = Some(now + 3600),
                }
            }
        }
    }

    fn issuer(&self, name: &str) -> Result<Arc<AcmeIssuer>, IssueError> {
        self.issuers
            .get(name)
            .cloned()
            .ok_or_else(|| IssueError::Policy(format!("issuer {name:?} is not configured")))
    }

    /// New orders left per issuer that counts Let's Encrypt's limits (for metrics).
    pub fn budget_remaining(&self) -> Vec<(String, u32)> {
        let now = self.clock.now_unix();
        self.issuers
            .values()
            .filter(|i| i.cfg.rate_limits() == RateLimits::Letsencrypt)
            .filter_map(|i| {
                self.budget(&i.cfg.name)
                    .ok()
                    .map(|b| (i.cfg.name.clone(), b.remaining_new_orders(now)))
            })
            .collect()
    }

    fn budget_check(
        &self,
        issuer: &AcmeIssuer,
        ids: &[IpAddr],
        now: i64,
        exempt: bool,
    ) -> Result<(), IssueError> {
        if issuer.cfg.rate_limits() != RateLimits::Letsencrypt {
            return Ok(());
        }
        let budget = self.budget(&issuer.cfg.name)?;
        budget
            .check_order(ids, now, exempt)
            .map_err(IssueError::Budget)
    }

    fn budget(&self, issuer: &str) -> Result<Budget, StoreError> {
        if let Some(b) = lock(&self.budgets).get(issuer) {
            return Ok(b.clone());
        }
        let b = self
            .store
            .budget(issuer)?
            .and_then(|v| serde_json::from_value::<Budget>(v).ok())
            .unwrap_or_default();
        lock(&self.budgets).insert(issuer.to_owned(), b.clone());
        Ok(b)
    }

    fn budget_record(&self, issuer: &AcmeIssuer, events: &[Event]) -> Result<(), StoreError> {
        if issuer.cfg.rate_limits() != RateLimits::Letsencrypt || events.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_unix();
        let mut b = self.budget(&issuer.cfg.name)?;
        for e in events {
            b.record(e, now);
        }
        b.prune(now);
        self.store
            .put_budget(&issuer.cfg.name, &serde_json::to_value(&b)?)?;
        lock(&self.budgets).insert(issuer.cfg.name.clone(), b);
        Ok(())
    }

    async fn issue(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
        reason: RenewReason,
    ) -> Result<(), IssueError> {
        let now = self.clock.now_unix();
        let spec = rec.spec.clone();
        let names: Vec<&str> = spec.issuers().collect();
        let issuer = self.issuer(names[rec.issuer_index % names.len()])?;
        for ip in &spec.identifiers {
            check_issuable(*ip, issuer.cfg.allow_private_ips).map_err(|e| {
                IssueError::Policy(format!("cannot ask {} for {ip}: {e}", issuer.cfg.name))
            })?;
        }
        let profile = issuer
            .choose_profile(spec.required_profile.as_deref(), true)
            .await?;
        // ARI: a renewal names the certificate it replaces; inside the CA's window it is exempt
        // from the per-certificate limits.
        let replaces = match reason {
            RenewReason::AriWindow
            | RenewReason::LifetimeFraction
            | RenewReason::Forced
            | RenewReason::Expired
                if rec
                    .current
                    .as_ref()
                    .is_some_and(|c| c.identifiers == spec.identifiers)
                    && issuer.has_ari() =>
            {
                rec.current.as_ref().and_then(|c| c.ari_id.clone())
            }
            _ => None,
        };
        let exempt = replaces.is_some()
            && rec
                .ari
                .as_ref()
                .is_some_and(|a| now >= a.start && now < a.end);
        self.budget_check(&issuer, &spec.identifiers, now, exempt)?;

        let (driver, kept, orders_created) = issuer
            .new_order(&spec.identifiers, profile.as_deref(), replaces.as_deref())
            .await?;
        self.budget_record(&issuer, &vec![Event::OrderCreated; orders_created])?;
        if replaces.is_some() && !kept {
            tracing::warn!(cert = %rec.id, "the CA did not accept `replaces`; renewing without it");
        }
        let account = issuer.account_url().await.unwrap_or_default();
        self.record(
            Kind::OrderCreated,
            rec,
            Entry::by("coordinator")
                .ips(&spec.identifiers)
                .issuer(issuer.cfg.name.clone())
                .detail("account", account)
                .detail("order_url", driver.url())
                .detail("profile", &profile)
                .detail("replaces", if kept { &replaces } else { &None })
                .detail("replaces_ignored_by_ca", replaces.is_some() && !kept)
                .detail("reason", reason.to_string()),
        )?;
        rec.last_order_url = Some(driver.url().to_owned());
        rec.order = Some(OrderInFlight {
            url: driver.url().to_owned(),
            issuer: issuer.cfg.name.clone(),
            identifiers: spec.identifiers.clone(),
            profile: profile.clone(),
            replaces: if kept { replaces } else { None },
            reason: reason.to_string(),
            started: now,
            challenges_announced: false,
            presented: Vec::new(),
        });
        rec.state = CertState::Ordering;
        rec.updated = now;
        self.store.put_cert(rec)?;
        tracing::info!(host = %rec.host_id, cert = %rec.id, order = %driver.url(), ids = ?spec.identifiers,
            profile = ?profile, reason = %reason, "order created");
        self.drive(agent, rec, &issuer, driver).await
    }

    /// Continues the order in flight after a restart, or abandons it when the CA says it is
    /// dead (the next attempt orders anew).
    async fn resume(&self, agent: &AgentHandle, rec: &mut CertRecord) -> Result<(), IssueError> {
        let Some(order) = rec.order.clone() else {
            return Ok(());
        };
        let issuer = self.issuer(&order.issuer)?;
        match issuer
            .resume_order(&order.url)
            .await
            .map(|mut d| (d.status(), d))
        {
            Ok((status, driver)) if status != OrderStatus::Invalid => {
                tracing::info!(cert = %rec.id, order = %order.url, status = ?status, "resuming order");
                self.drive(agent, rec, &issuer, driver).await
            }
            Ok(_) => {
                tracing::info!(cert = %rec.id, order = %order.url, "order in flight is invalid; abandoning it");
                clear_tokens(agent, order.presented.clone()).await;
                rec.order = None;
                Err(IssueError::Acme(AcmeError::Validation(vec![(
                    String::new(),
                    "the interrupted order became invalid".into(),
                )])))
            }
            Err(e)
                if e.is_transient()
                    && self.clock.now_unix() - order.started < ORDER_MAX_AGE_SECS =>
            {
                tracing::info!(cert = %rec.id, order = %order.url, error = %e, "cannot reach the order now; will resume it later");
                Err(e.into())
            }
            Err(e) => {
                tracing::info!(cert = %rec.id, order = %order.url, error = %e, "cannot resume order; abandoning it");
                clear_tokens(agent, order.presented.clone()).await;
                rec.order = None;
                Err(e.into())
            }
        }
    }

    /// Validates, finalizes, downloads, stores, installs.
    async fn drive(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
        issuer: &AcmeIssuer,
        mut driver: crate::acme::OrderDriver<'_>,
    ) -> Result<(), IssueError> {
        let Some(order) = rec.order.clone() else {
            return Ok(());
        };
        let status = driver.status();
        let needs_csr = matches!(status, OrderStatus::Pending | OrderStatus::Ready);
        let timeout = Duration::from_secs(self.config.issuance.validation_timeout_secs);
        let want = needs_csr.then(|| CsrWant::new(rec, &order));
        let challenges = if status == OrderStatus::Pending {
            driver.challenges()
        } else {
            Vec::new()
        };
        // Served before a crash, and the CA is done with them: stop serving them now.
        let leftover: Vec<String> = order
            .presented
            .iter()
            .filter(|t| !challenges.iter().any(|c| &c.token == *t))
            .cloned()
            .collect();
        if !leftover.is_empty() {
            clear_tokens(agent, leftover).await;
        }
        if !challenges.is_empty() {
            // Durable before the agent serves them, so a crash cannot leave them behind.
            if let Some(o) = rec.order.as_mut() {
                for c in &challenges {
                    if !o.presented.contains(&c.token) {
                        o.presented.push(c.token.clone());
                    }
                }
            }
            self.store.put_cert(rec)?;
        }
        let csr = if challenges.is_empty() {
            match want {
                Some(w) => Some(w.fetch(agent).await?),
                None => None,
            }
        } else {
            if let Err(e) = present(agent, &challenges).await {
                clear(agent, &challenges).await;
                return Err(e.into());
            }
            // The key is made only once the challenges are served, while the CA validates.
            let csr = async {
                match want {
                    Some(w) => w.fetch(agent).await.map(Some),
                    None => Ok(None),
                }
            };
            let (validated, csr) = tokio::join!(
                self.validate(agent, rec, issuer, &mut driver, &challenges, timeout),
                csr
            );
            validated?;
            csr?
        };
        if let Some(c) = &csr {
            rec.remember_key(&c.spki_sha256);
        }
        let (csr_der, spki) = match csr {
            Some(c) => (Some(c.der), Some(c.spki_der)),
            None => (None, None),
        };
        let chain_pem = driver
            .finalize(csr_der.as_deref(), timeout)
            .await
            .inspect_err(|_| {
                // An order that fails at finalize is not resumable in any useful way.
            })?;
        let chain = parse_pem_chain(&chain_pem).map_err(|e| IssueError::BadCert(e.to_string()))?;
        let leaf = check_leaf(&chain[0], &order.identifiers, spki.as_deref())?;
        let now = self.clock.now_unix();
        let renewed = rec.current.is_some();
        rec.current = Some(IssuedCert {
            identifiers: order.identifiers.clone(),
            issuer: issuer.cfg.name.clone(),
            profile: driver.profile().or(order.profile.clone()),
            serial: leaf.serial_hex.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            chain_pem,
            ari_id: AcmeIssuer::ari_id(&chain[0]),
            renew_unit: rand::random(),
            issued_at: now,
        });
        rec.order = None;
        rec.ari = None;
        rec.ari_retry_at = None;
        rec.forced_by = None;
        if renewed {
            rec.renewals += 1;
            self.metrics
                .renewals
                .get_or_create(&crate::metrics::IssuerReason {
                    issuer: issuer.cfg.name.clone(),
                    reason: order.reason.clone(),
                })
                .inc();
        }
        rec.last_renewal_reason = Some(order.reason.clone());
        rec.state = CertState::Issued;
        rec.updated = now;
        let issuer_chain_sha256: Vec<String> = chain[1..]
            .iter()
            .map(|c| certfleet_shared::x509::sha256_hex(c))
            .collect();
        self.record(
            Kind::CertificateIssued,
            rec,
            Entry::by("coordinator")
                .ips(&order.identifiers)
                .serial(leaf.serial_hex.clone())
                .issuer(issuer.cfg.name.clone())
                .detail("not_before", leaf.not_before)
                .detail("not_after", leaf.not_after)
                .detail(
                    "sans",
                    leaf.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                )
                .detail("issuer_chain_sha256", issuer_chain_sha256)
                .detail("order_url", &order.url)
                .detail(
                    "profile",
                    rec.current.as_ref().and_then(|c| c.profile.clone()),
                )
                .detail("reason", &order.reason),
        )?;
        // Durable before the install is asked for.
        self.store.put_cert(rec)?;
        self.budget_record(
            issuer,
            &[Event::CertIssued {
                identifiers: order.identifiers.clone(),
            }],
        )?;
        tracing::info!(host = %rec.host_id, cert = %rec.id, serial = %leaf.serial_hex, not_after = leaf.not_after,
            lifetime_h = (leaf.not_after - leaf.not_before) / 3600, reason = %order.reason, "certificate issued");
        self.install(agent, rec).await
    }

    /// The challenges are served: announce them to the CA, wait for its verdict, clear them
    /// (every path), record what happened. A failed validation ends the order.
    async fn validate(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
        issuer: &AcmeIssuer,
        driver: &mut crate::acme::OrderDriver<'_>,
        challenges: &[PendingChallenge],
        timeout: Duration,
    ) -> Result<(), IssueError> {
        let Some(order) = rec.order.clone() else {
            return Ok(());
        };
        let ids: Vec<IpAddr> = challenges
            .iter()
            .filter_map(|c| c.identifier.parse().ok())
            .collect();
        let presented = self.record(
            Kind::ChallengePresented,
            rec,
            Entry::by(format!("host:{}", rec.host_id))
                .ips(&ids)
                .detail("type", "http-01")
                .detail("order_url", &order.url),
        );
        // Announced before a crash? The CA may still be validating from then (some keep
        // such challenges "pending", so we cannot tell): announce what is pending again, and
        // keep serving for a grace period afterwards so a second validation still finds the
        // responder.
        let announced_before = order.challenges_announced;
        let stored = match presented {
            Ok(()) if !announced_before => {
                if let Some(o) = rec.order.as_mut() {
                    o.challenges_announced = true;
                }
                self.store.put_cert(rec).map_err(IssueError::from)
            }
            Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        };
        let r = match stored {
            Ok(()) => driver.validate(timeout).await.map_err(IssueError::from),
            Err(e) => Err(e),
        };
        // Once every authorization is valid the CA validates nothing more: stop serving at
        // once (a delayed clear would be lost to another crash). Only a failed resumed
        // validation keeps serving a while, for a validation of the earlier announcement
        // the CA may still run.
        if announced_before && r.is_err() {
            let (agent, challenges) = (agent.clone(), challenges.to_vec());
            self.tracker.spawn(async move {
                tokio::time::sleep(RESUMED_CLEAR_GRACE).await;
                clear(&agent, &challenges).await;
            });
        } else {
            clear(agent, challenges).await;
        }
        match &r {
            Ok(()) => self.record(
                Kind::ChallengeValidated,
                rec,
                Entry::by("coordinator")
                    .ips(&ids)
                    .detail("order_url", &order.url),
            )?,
            Err(IssueError::Acme(AcmeError::Validation(problems))) => {
                for (id, problem) in problems {
                    // A problem not tied to one identifier (a timeout) concerns them all.
                    let ips: Vec<IpAddr> = match id.parse() {
                        Ok(ip) => vec![ip],
                        Err(_) => ids.clone(),
                    };
                    self.record(
                        Kind::ChallengeFailed,
                        rec,
                        Entry::by("coordinator")
                            .ips(&ips)
                            .detail("order_url", &order.url)
                            .detail("problem", problem),
                    )?;
                }
                let failed: Vec<Event> = problems
                    .iter()
                    .filter_map(|(id, _)| id.parse::<IpAddr>().ok())
                    .map(|identifier| Event::ValidationFailed { identifier })
                    .collect();
                self.budget_record(issuer, &failed)?;
                rec.order = None; // a failed order is dead
            }
            Err(_) => {}
        }
        r
    }

    /// The order ended (or none is in flight): the agent removes the pending keys it made
    /// for this certificate, except the key of a certificate issued but not yet installed.
    /// Best effort: the agent's age limit is the safety net.
    async fn discard_pending_keys(&self, agent: &AgentHandle, rec: &CertRecord) {
        let keep = rec
            .current
            .as_ref()
            .filter(|c| rec.installed_serial.as_ref() != Some(&c.serial))
            .and_then(|c| parse_pem_chain(&c.chain_pem).ok())
            .and_then(|chain| CertInfo::from_der(&chain[0]).ok())
            .map(|leaf| vec![certfleet_shared::x509::sha256_hex(&leaf.spki_der)])
            .unwrap_or_default();
        let cmd = Cmd::DiscardPendingKeys(pb::DiscardPendingKeys {
            cert_id: rec.id.to_string(),
            keep_spki_sha256: keep,
        });
        match agent
            .request(cmd, "discard pending keys", AGENT_QUICK)
            .await
        {
            Ok(reply::Result::Done(d)) if d.discarded > 0 => {
                tracing::info!(host = %rec.host_id, cert = %rec.id, discarded = d.discarded, "pending keys of the ended order removed on the host")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(host = %rec.host_id, cert = %rec.id, error = %e, "could not have the host remove pending keys; its age limit will")
            }
        }
    }

    async fn install(&self, agent: &AgentHandle, rec: &mut CertRecord) -> Result<(), IssueError> {
        let Some(cur) = rec.current.clone() else {
            return Ok(());
        };
        let cmd = Cmd::Install(pb::InstallCertificate {
            target: rec.spec.target.clone(),
            chain_pem: cur.chain_pem.clone(),
        });
        match agent.request(cmd, "install", AGENT_INSTALL).await {
            Ok(reply::Result::Installed(report)) if report.serial == cur.serial => {
                self.record(
                    Kind::CertificateInstalled,
                    rec,
                    Entry::by(format!("host:{}", rec.host_id))
                        .ips(&cur.identifiers)
                        .serial(report.serial.clone())
                        .detail("target", &report.target),
                )?;
                rec.installed_serial = Some(report.serial.clone());
                rec.verify_disabled = report.verify_disabled;
                tracing::info!(host = %rec.host_id, cert = %rec.id, serial = %report.serial, target = %report.target, "certificate installed");
                if !report.verify_disabled && !report.served_on.is_empty() {
                    self.record(
                        Kind::CertificateServed,
                        rec,
                        Entry::by(format!("host:{}", rec.host_id))
                            .ips(&cur.identifiers)
                            .serial(report.serial.clone())
                            .detail("target", &report.target)
                            .detail("served_on", &report.served_on),
                    )?;
                    rec.served_serial = Some(report.serial.clone());
                    rec.served_on = report.served_on.clone();
                    rec.served_at = Some(self.clock.now_unix());
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
                    message,
                    rolled_back,
                    current_serial,
                    ..
                } = &e
                else {
                    return Err(e.into());
                };
                if code == "no_matching_key" {
                    // The key for this certificate is gone from the host: the certificate
                    // is useless there, so the next attempt issues a new one.
                    tracing::warn!(host = %rec.host_id, cert = %rec.id, error = %message, "host lost the key; re-issuing");
                    rec.current = None;
                    rec.ari = None;
                } else if *rolled_back {
                    // The config test, reload or served check failed and the host put the
                    // previous certificate back: record what is there now.
                    let now_serial = (!current_serial.is_empty()).then(|| current_serial.clone());
                    self.record(
                        Kind::CertificateRolledBack,
                        rec,
                        Entry::by(format!("host:{}", rec.host_id))
                            .ips(&cur.identifiers)
                            .serial(cur.serial.clone())
                            .detail("target", &rec.spec.target)
                            .detail("code", code)
                            .detail("error", message)
                            .detail("restored_serial", &now_serial),
                    )?;
                    tracing::error!(host = %rec.host_id, cert = %rec.id, serial = %cur.serial, code = %code, error = %message, "install rolled back on the host");
                    if rec.served_serial != now_serial {
                        rec.served_serial = None;
                    }
                    rec.installed_serial = now_serial;
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A short, bounded label for a failure (metrics).
fn failure_reason(e: &IssueError) -> &'static str {
    match e {
        IssueError::Acme(AcmeError::Validation(_)) => "validation",
        IssueError::Acme(AcmeError::Timeout { .. }) => "ca_timeout",
        IssueError::Acme(AcmeError::ProfileUnavailable { .. }) => "profile_unavailable",
        IssueError::Acme(a) if a.is_bad_nonce() => "bad_nonce",
        IssueError::Acme(a) if a.is_rate_limited() => "rate_limited",
        IssueError::Acme(a) if a.is_account_gone() => "account_gone",
        IssueError::Acme(a) if a.problem_type().is_none() => "ca_unreachable",
        IssueError::Acme(_) => "ca_error",
        IssueError::Agent(_) => "agent",
        IssueError::Budget(_) => "rate_limit_budget",
        IssueError::Policy(_) => "policy",
        IssueError::BadCsr(_) => "bad_csr",
        IssueError::BadCert(_) => "bad_certificate",
        IssueError::WaitingForAgent => "waiting_for_agent",
        IssueError::Store(_) => "store",
        IssueError::Audit(_) => "audit",
    }
}

/// What keeps `spec` from being ordered: addresses outside the policy (refused first), or
/// addresses of the spec that another host holds.
fn blocked_by(
    spec: &CertSpec,
    disallowed: Option<&spec::Disallowed>,
    conflicts: &[(IpAddr, HostId)],
    host: &HostRecord,
    now: i64,
) -> Option<Blocked> {
    if let Some(d) = disallowed {
        return Some(Blocked {
            state: BlockedState::Refused,
            ips: d.ips.clone(),
            held_by: None,
            reason: d.reason(),
            since: now,
        });
    }
    let mine: Vec<&(IpAddr, HostId)> = conflicts
        .iter()
        .filter(|(ip, _)| spec.identifiers.contains(ip))
        .collect();
    let (_, holder) = mine.first()?;
    let ips: Vec<IpAddr> = mine.iter().map(|(ip, _)| *ip).collect();
    let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    Some(Blocked {
        state: BlockedState::Conflict,
        held_by: Some(holder.clone()),
        reason: format!(
            "{} held by host {holder}; host {} gets no certificate with it until that host is removed (`hosts remove {holder}`) or the address is released (`hosts release-ip {holder} {}`)",
            list.join(", "),
            host.id,
            list[0]
        ),
        ips,
        since: now,
    })
}

fn new_record(host: &HostRecord, spec: CertSpec, now: i64) -> CertRecord {
    CertRecord {
        id: CertId::generate(),
        host_id: host.id.clone(),
        spec,
        state: CertState::Pending,
        current: None,
        order: None,
        last_order_url: None,
        installed_serial: None,
        served_serial: None,
        served_on: Vec::new(),
        served_at: None,
        verify_disabled: false,
        last_error: None,
        attempts: 0,
        quick_retries: 0,
        issuer_index: 0,
        next_action: Some(now),
        next_reason: None,
        ari: None,
        ari_retry_at: None,
        at_risk: false,
        forced_by: None,
        renewals: 0,
        last_renewal_reason: None,
        updated: now,
        key_history: Vec::new(),
        blocked: None,
    }
}

fn state_of(rec: &CertRecord, now: i64) -> CertState {
    if rec.order.is_some() {
        return CertState::Ordering;
    }
    match rec.blocked.as_ref().map(|b| b.state) {
        Some(BlockedState::Conflict) => return CertState::Conflict,
        Some(BlockedState::Refused) => return CertState::Refused,
        None => {}
    }
    match &rec.current {
        Some(c) if c.not_after > now && rec.served_serial.as_ref() == Some(&c.serial) => {
            CertState::Served
        }
        Some(c) if c.not_after > now && rec.installed_serial.as_ref() == Some(&c.serial) => {
            CertState::Installed
        }
        Some(c) if c.not_after > now => CertState::Issued,
        _ if rec.last_error.is_some() => CertState::Failed,
        _ => CertState::Pending,
    }
}

fn next_reason(rec: &CertRecord, next: i64, now: i64, failed: bool) -> String {
    if failed {
        return match &rec.last_error {
            Some(e) if e.starts_with("rate limit") => "rate limit frees".into(),
            Some(e) if e.starts_with("waiting for the host") => "host reconnects".into(),
            _ => "retry".into(),
        };
    }
    if next <= now + 1 && decide(rec, now) != Decision::Idle {
        return "act now".into();
    }
    match renew_time(rec, now) {
        Some((at, reason)) if at <= next => format!("renew ({reason})"),
        _ if rec.ari.as_ref().is_some_and(|a| a.next_check <= next) => "check ARI window".into(),
        _ if rec.ari.is_none()
            && rec.current.as_ref().is_some_and(|c| c.ari_id.is_some())
            && rec.ari_retry_at.unwrap_or(now) <= next =>
        {
            "fetch ARI window".into()
        }
        _ => "check at-risk margin".into(),
    }
}

/// "retry after 2026-11-22T17:00:00Z" in a rateLimited problem's detail, as Let's Encrypt
/// words it.
fn retry_after_in(text: &str, now: i64) -> Option<i64> {
    let lower = text.to_ascii_lowercase();
    let idx = lower.find("retry after ")? + "retry after ".len();
    let stamp: String = text[idx..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ';' && *c != ')')
        .collect();
    let t = time::OffsetDateTime::parse(
        stamp.trim_end_matches(':'),
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some(t.unix_timestamp().max(now + 1))
}

fn key_type_pb(k: KeyTypeName) -> pb::KeyType {
    match k {
        KeyTypeName::EcdsaP256 => pb::KeyType::EcdsaP256,
        KeyTypeName::EcdsaP384 => pb::KeyType::EcdsaP384,
    }
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
    let reply = agent
        .request(cmd, "present challenges", AGENT_QUICK)
        .await?;
    if let reply::Result::Done(done) = reply {
        if !done.warnings.is_empty() {
            // The agent's self-check (webroot/proxy) saw something the CA may trip over,
            // e.g. a redirect in front of the challenge path.
            tracing::warn!(host = %agent.host, warnings = ?done.warnings, "agent self-check warnings");
        }
    }
    Ok(())
}

/// Best effort: a failure here is logged; the agent also expires challenges on its own.
async fn clear(agent: &AgentHandle, challenges: &[PendingChallenge]) {
    clear_tokens(agent, challenges.iter().map(|c| c.token.clone()).collect()).await
}

async fn clear_tokens(agent: &AgentHandle, tokens: Vec<String>) {
    if tokens.is_empty() {
        return;
    }
    let cmd = Cmd::ClearChallenges(pb::ClearChallenges { tokens });
    if let Err(e) = agent.request(cmd, "clear challenges", AGENT_QUICK).await {
        tracing::warn!(host = %agent.host, error = %e, "could not clear challenges; the agent expires them itself");
    }
}

/// What the agent's CSR for an order must be, gathered before asking (owned, so the request
/// runs alongside validation).
struct CsrWant {
    cmd: pb::CreateCsr,
    identifiers: Vec<IpAddr>,
    key_type: KeyTypeName,
    /// SHA-256 (hex) of every public key seen before for this certificate.
    seen: HashSet<String>,
    cert: CertId,
}

/// A CSR that passed every check.
struct AcceptedCsr {
    der: Vec<u8>,
    spki_der: Vec<u8>,
    spki_sha256: String,
}

/// How often a CSR that fails a check is asked for again before the attempt fails.
const CSR_ATTEMPTS: u32 = 3;

impl CsrWant {
    fn new(rec: &CertRecord, order: &OrderInFlight) -> Self {
        let mut seen: HashSet<String> = rec.key_history.iter().cloned().collect();
        if let Some(leaf) = rec
            .current
            .as_ref()
            .and_then(|c| parse_pem_chain(&c.chain_pem).ok())
            .and_then(|chain| CertInfo::from_der(&chain[0]).ok())
        {
            seen.insert(key_digest(&leaf.spki_der));
        }
        Self {
            cmd: pb::CreateCsr {
                identifiers: order.identifiers.iter().map(|ip| ip.to_string()).collect(),
                key_type: key_type_pb(rec.spec.key_type) as i32,
                target: rec.spec.target.clone(),
                cert_id: rec.id.to_string(),
            },
            identifiers: order.identifiers.clone(),
            key_type: rec.spec.key_type,
            seen,
            cert: rec.id.clone(),
        }
    }

    /// Asks the agent for a CSR until one is acceptable: exactly the order's identifiers, the
    /// key type asked for, and a public key never seen before for this certificate. A CSR
    /// that fails is discarded and asked for again (no ACME call is spent on it).
    async fn fetch(self, agent: &AgentHandle) -> Result<AcceptedCsr, IssueError> {
        let mut last = String::new();
        for attempt in 1..=CSR_ATTEMPTS {
            let reply = agent
                .request(Cmd::CreateCsr(self.cmd.clone()), "create CSR", AGENT_QUICK)
                .await?;
            let reply::Result::Csr(c) = reply else {
                return Err(SessionError::Unexpected {
                    host: agent.host.clone(),
                    what: "create CSR",
                }
                .into());
            };
            let problem = match check_csr(&c.csr_der, &self.identifiers, self.key_type) {
                Ok(info) => {
                    let digest = key_digest(&info.spki_der);
                    if !self.seen.contains(&digest) {
                        return Ok(AcceptedCsr {
                            der: c.csr_der,
                            spki_der: info.spki_der,
                            spki_sha256: digest,
                        });
                    }
                    "its public key was seen before for this certificate (a stale or replayed CSR)"
                        .to_owned()
                }
                Err(e) => e.to_string(),
            };
            tracing::warn!(host = %agent.host, cert = %self.cert, attempt, problem = %problem,
                "CSR from the agent discarded; asking for a new one");
            last = problem;
        }
        Err(IssueError::BadCsr(format!(
            "{CSR_ATTEMPTS} CSRs in a row were unacceptable; the last: {last}"
        )))
    }
}

/// How a public key is remembered: the SHA-256 of its SubjectPublicKeyInfo, hex.
fn key_digest(spki_der: &[u8]) -> String {
    certfleet_shared::x509::sha256_hex(spki_der)
}

/// The CSR must be signed by its key, name exactly `ids` as IP SANs, have no CN and no DNS
/// names, and use an EC key as asked. `pub` for the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub fn check_csr(der: &[u8], ids: &[IpAddr], key_type: KeyTypeName) -> Result<CsrInfo, IssueError> {
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

/// The leaf must cover exactly `ids` and, when we made the CSR, carry its public key.
fn check_leaf(der: &[u8], ids: &[IpAddr], spki: Option<&[u8]>) -> Result<CertInfo, IssueError> {
    let leaf = CertInfo::from_der(der).map_err(|e| IssueError::BadCert(e.to_string()))?;
    if canonical_set(leaf.ips.clone()) != ids {
        return Err(IssueError::BadCert(format!(
            "it names {:?}, expected {:?}",
            leaf.ips, ids
        )));
    }
    if spki.is_some_and(|s| s != leaf.spki_der) {
        return Err(IssueError::BadCert(
            "its public key is not the one in our CSR".into(),
        ));
    }
    Ok(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(not_before: i64, not_after: i64) -> CertRecord {
        let host = HostRecord {
            id: HostId::generate(),
            hostname: "h".into(),
            labels: Default::default(),
            enrolled: 0,
            enrolled_from: String::new(),
            identity_serial: String::new(),
            identity_not_after: None,
            identity_rotated: None,
            ips: vec![],
            targets: vec![],
            last_seen: None,
            inventory: vec![],
        };
        let spec = CertSpec {
            policy: None,
            identifiers: vec!["8.8.8.8".parse().unwrap()],
            issuer: "le".into(),
            fallback_issuers: vec![],
            required_profile: None,
            key_type: KeyTypeName::EcdsaP256,
            target: "t".into(),
        };
        let mut r = new_record(&host, spec.clone(), 0);
        r.current = Some(IssuedCert {
            identifiers: spec.identifiers.clone(),
            issuer: "le".into(),
            profile: None,
            serial: "01".into(),
            not_before,
            not_after,
            chain_pem: String::new(),
            ari_id: None,
            renew_unit: 0.0,
            issued_at: not_before,
        });
        r.installed_serial = Some("01".into());
        r.served_serial = Some("01".into());
        r
    }

    const H: i64 = 3600;

    #[test]
    fn shortlived_renews_at_half_life_not_every_day() {
        let r = rec(0, 160 * H);
        assert_eq!(
            decide(&r, 0),
            Decision::Idle,
            "a fresh certificate is not due"
        );
        assert_eq!(
            decide(&r, 24 * H),
            Decision::Idle,
            "a day later it is still not due"
        );
        assert_eq!(decide(&r, 80 * H - 1), Decision::Idle);
        assert_eq!(
            decide(&r, 80 * H),
            Decision::Issue(RenewReason::LifetimeFraction)
        );
        assert_eq!(decide(&r, 160 * H), Decision::Issue(RenewReason::Expired));
    }

    #[test]
    fn long_lived_renews_with_a_third_left() {
        let r = rec(0, 90 * 24 * H);
        assert_eq!(decide(&r, 60 * 24 * H - 1), Decision::Idle);
        assert_eq!(
            decide(&r, 60 * 24 * H),
            Decision::Issue(RenewReason::LifetimeFraction)
        );
        let r = rec(0, 45 * 24 * H);
        assert_eq!(
            decide(&r, 30 * 24 * H),
            Decision::Issue(RenewReason::LifetimeFraction)
        );
    }

    #[test]
    fn ari_window_overrides_the_fraction() {
        let mut r = rec(0, 160 * H);
        r.ari = Some(AriState {
            start: 10 * H,
            end: 20 * H,
            renew_at: 15 * H,
            next_check: 12 * H,
            explanation_url: None,
        });
        assert_eq!(decide(&r, 14 * H), Decision::Idle);
        assert_eq!(decide(&r, 15 * H), Decision::Issue(RenewReason::AriWindow));
    }

    #[test]
    fn spec_changes_orders_and_installs() {
        let mut r = rec(0, 160 * H);
        r.spec.identifiers.push("1.1.1.1".parse().unwrap());
        assert_eq!(
            decide(&r, 1),
            Decision::Issue(RenewReason::IdentifiersChanged)
        );
        let mut r = rec(0, 160 * H);
        r.spec.required_profile = Some("shortlived".into());
        assert_eq!(decide(&r, 1), Decision::Issue(RenewReason::SpecChanged));
        let mut r = rec(0, 160 * H);
        r.installed_serial = None;
        assert_eq!(decide(&r, 1), Decision::Install);
        // Installed but not seen served: install again (the agent only re-checks).
        let mut r = rec(0, 160 * H);
        r.served_serial = Some("00".into());
        assert_eq!(decide(&r, 1), Decision::Install);
        // …unless the host checks nothing after install.
        r.verify_disabled = true;
        assert_eq!(decide(&r, 1), Decision::Idle);
        let mut r = rec(0, 160 * H);
        r.forced_by = Some("operator".into());
        assert_eq!(decide(&r, 1), Decision::Issue(RenewReason::Forced));
        let mut r = rec(0, 160 * H);
        r.order = Some(OrderInFlight {
            url: "u".into(),
            issuer: "le".into(),
            identifiers: vec![],
            profile: None,
            replaces: None,
            reason: "x".into(),
            started: 0,
            challenges_announced: false,
            presented: Vec::new(),
        });
        assert_eq!(decide(&r, 1), Decision::Resume);
        r.current = None;
        r.order = None;
        assert_eq!(decide(&r, 1), Decision::Issue(RenewReason::Missing));
    }

    #[test]
    fn at_risk_moment_follows_the_fraction_or_a_later_ari_window() {
        let mut r = rec(0, 160 * H);
        // Short-lived: renew with half left, at risk with a quarter left.
        assert_eq!(at_risk_at(&r), Some(120 * H));
        // A CA window opening at 85% of the lifetime moves the alarm to halfway from there.
        r.ari = Some(AriState {
            start: 136 * H,
            end: 160 * H,
            renew_at: 140 * H,
            next_check: 0,
            explanation_url: None,
        });
        assert_eq!(at_risk_at(&r), Some(148 * H));
        // An early window never makes it earlier than the fraction.
        r.ari = Some(AriState {
            start: 10 * H,
            end: 20 * H,
            renew_at: 15 * H,
            next_check: 0,
            explanation_url: None,
        });
        assert_eq!(at_risk_at(&r), Some(120 * H));
        let long = rec(0, 90 * 24 * H);
        assert_eq!(
            at_risk_at(&long),
            Some(75 * 24 * H),
            "a third left renews, a sixth left is at risk"
        );
    }

    #[test]
    fn retry_after_is_read_from_rate_limit_detail() {
        let t = "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-11-23T10:00:00Z: see https://letsencrypt.org/docs/rate-limits/";
        assert_eq!(retry_after_in(t, 0), Some(1_795_428_000));
        assert_eq!(retry_after_in("no hint", 0), None);
    }

    /// A CSR for `ips` from `key` (as an agent makes it).
    fn csr_for(key: &rcgen::KeyPair, ips: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = ips
            .iter()
            .map(|ip| rcgen::SanType::IpAddress(ip.parse().unwrap()))
            .collect();
        p.serialize_request(key).unwrap().der().to_vec()
    }

    #[tokio::test]
    async fn stale_or_foreign_csrs_are_discarded_and_asked_again() {
        use rcgen::PublicKeyData;
        let old_key = rcgen::KeyPair::generate().unwrap();
        let mut r = rec(0, 100);
        r.remember_key(&key_digest(&old_key.subject_public_key_info()));
        let order = OrderInFlight {
            url: "https://ca/order/1".into(),
            issuer: "le".into(),
            identifiers: r.spec.identifiers.clone(),
            profile: None,
            replaces: None,
            reason: "forced".into(),
            started: 0,
            challenges_announced: false,
            presented: Vec::new(),
        };
        let want = CsrWant::new(&r, &order);
        assert_eq!(
            want.cmd.cert_id,
            r.id.to_string(),
            "the key is filed under the cert"
        );

        // The agent answers: an old CSR (a key seen before), then one for other
        // identifiers, then a good one.
        let new_key = rcgen::KeyPair::generate().unwrap();
        let answers = [
            csr_for(&old_key, &["8.8.8.8"]),
            csr_for(&new_key, &["8.8.4.4"]),
            csr_for(&new_key, &["8.8.8.8"]),
        ];
        let sessions = Sessions::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let agent = sessions.open(HostId::generate(), tx);
        let deliver = agent.clone();
        let asked = Arc::new(Mutex::new(0usize));
        let counter = asked.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.recv().await {
                let n = {
                    let mut c = lock(&counter);
                    *c += 1;
                    *c - 1
                };
                deliver.deliver(pb::Reply {
                    request_id: msg.request_id,
                    result: Some(reply::Result::Csr(pb::Csr {
                        csr_der: answers[n.min(2)].clone(),
                    })),
                });
            }
        });
        let got = want.fetch(&agent).await.expect("the third CSR is accepted");
        assert_eq!(*lock(&asked), 3);
        assert_eq!(got.spki_der, new_key.subject_public_key_info());

        // Three bad ones in a row: the attempt fails (before any ACME call).
        let want = CsrWant::new(&r, &order);
        let sessions = Sessions::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let agent = sessions.open(HostId::generate(), tx);
        let deliver = agent.clone();
        let stale = csr_for(&old_key, &["8.8.8.8"]);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.recv().await {
                deliver.deliver(pb::Reply {
                    request_id: msg.request_id,
                    result: Some(reply::Result::Csr(pb::Csr {
                        csr_der: stale.clone(),
                    })),
                });
            }
        });
        match want.fetch(&agent).await {
            Err(IssueError::BadCsr(m)) => assert!(m.contains("seen before"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a stale CSR was accepted"),
        }
    }

    #[test]
    fn key_history_is_bounded_and_deduplicated() {
        let mut r = rec(0, 100);
        for i in 0..(crate::store::KEY_HISTORY + 10) {
            r.remember_key(&format!("{i:064x}"));
            r.remember_key(&format!("{i:064x}"));
        }
        assert_eq!(r.key_history.len(), crate::store::KEY_HISTORY);
        assert_eq!(
            r.key_history.last(),
            Some(&format!("{:064x}", crate::store::KEY_HISTORY + 9))
        );
    }

    #[test]
    fn a_blocked_certificate_orders_nothing_but_may_install_what_it_has() {
        let mut r = rec(0, 1_000_000);
        r.blocked = Some(Blocked {
            state: BlockedState::Conflict,
            ips: r.spec.identifiers.clone(),
            held_by: Some(HostId::generate()),
            reason: "held".into(),
            since: 0,
        });
        r.forced_by = Some("ops".into());
        r.installed_serial = None;
        r.served_serial = None;
        assert_eq!(state_of(&r, 10), CertState::Conflict);
        // Issued but not installed: installing is still fine.
        assert_eq!(decide(&r, 10), Decision::Install);
        let serial = r.current.as_ref().unwrap().serial.clone();
        r.installed_serial = Some(serial.clone());
        r.served_serial = Some(serial);
        assert_eq!(decide(&r, 10), Decision::Idle, "forced renewal held back");
        r.current = None;
        assert_eq!(decide(&r, 10), Decision::Idle, "no first order either");
        r.blocked = None;
        assert_eq!(decide(&r, 10), Decision::Issue(RenewReason::Missing));
    }
}
