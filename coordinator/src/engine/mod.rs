//! The issuance engine. Each certificate record holds its desired spec (from [`crate::spec`])
//! and what is observed (the certificate we have, what the agent has installed, the
//! order in flight). The [`scheduler`] pops certificates whose next action is due from the
//! store's index — a tick costs what is due, not the fleet — and runs one task per
//! certificate that decides ([`decide`], pure, in [`reconcile`]) and acts: order, validate
//! through the agent, finalize with the agent's CSR, install through the agent
//! ([`order`], [`challenge`], [`csr`], [`install`]), or nothing. Every outcome writes the
//! next action back ([`reconcile`]'s `finish`), so no certificate is ever left unscheduled.
//!
//! Every state change is flushed to the store before the next step acts on it.
//!
//! ## Layout
//! - `mod.rs` — [`Engine`] (wiring: store, audit, sessions, clock, tasks) and
//!   [`IssueError`].
//! - [`live`] — the configuration, issuers and DNS providers in force, swapped whole at a
//!   reload; one snapshot per certificate task.
//! - [`scheduler`] — the next-action loop, leases, wake-ups, `recover()` at start.
//! - [`reconcile`] — pure `decide` / `state_of` / `next_reason` / `planned_at` /
//!   `retry_at`, and `finish` / `planned` (the outcome and the next action).
//! - `simulation_tests` (test only) — the scheduling logic over 60 simulated days.
//! - [`ari`] — fetching the CA's renewal window (ARI).
//! - [`order`] — the ACME order driver: issue / resume / drive, the leaf check.
//! - [`challenge`] — announcing challenges and waiting for the CA; one module per
//!   challenge kind ([`challenge::http01`]).
//! - [`csr`] — what the agent's CSR must be, and asking for it.
//! - [`install`] — asking the agent to install, and what its answer means.
//! - [`keygroup`] — one certificate and key for a group of hosts: one order per renewal,
//!   the others take it; the key sealed by a member to each other member.
//! - [`hosts`] — a host's facts changed: IP ownership, its desired certificate.
//! - [`budget`] — the rate-limit budget per issuer (cached, persisted in the store).
//!
//! Operator actions (revoke, remove a host, force a renewal, release an address) live in
//! [`crate::admin`], outside the engine.

pub mod ari;
pub mod budget;
pub mod challenge;
pub mod csr;
pub mod hosts;
pub mod install;
pub mod keygroup;
pub mod live;
pub mod order;
pub mod reconcile;
pub mod scheduler;
#[cfg(test)]
mod simulation_tests;

pub use csr::check_csr;
pub use reconcile::{decide, Decision};

use crate::acme::{AcmeError, AcmeIssuer};
use crate::audit::{AuditLog, Entry, Kind};
use crate::config::Config;
use crate::model::CertRecord;
use crate::sessions::{SessionError, Sessions};
use crate::store::{Store, StoreError};
use certfleet_shared::clock::SharedClock;
use certfleet_shared::ids::CertId;
use certfleet_shared::ratelimit::{Budget, Refusal};
pub use live::Live;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const AGENT_QUICK: Duration = Duration::from_secs(30);
const AGENT_INSTALL: Duration = Duration::from_secs(180);
const MAX_PARALLEL: usize = 32;

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
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    /// A key-group member waits for its group (another member ordering, a key holder to
    /// connect) or must order anew (the group's key is lost): looked at again shortly.
    #[error("{0}")]
    KeyGroup(String),
}

pub struct Engine {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub(crate) audit: Arc<AuditLog>,
    pub sessions: Arc<Sessions>,
    /// The configuration, issuers and DNS providers in force ([`live`]); read through
    /// [`Engine::live`], replaced whole by [`Engine::swap_config`].
    live: RwLock<Arc<Live>>,
    budgets: Mutex<HashMap<String, Budget>>,
    pub(crate) clock: SharedClock,
    running: Mutex<HashSet<CertId>>,
    /// This coordinator process, as the holder of certificate leases (random per start).
    pub(crate) node: String,
    /// One lock per key group: one member decides at a time (see [`keygroup`]).
    group_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) wake: Notify,
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
        dns: Arc<crate::dns::DnsProviders>,
    ) -> Arc<Self> {
        let (live, _) = Live::build(config, dns, None, |c| {
            AcmeIssuer::new(c.clone(), store.clone(), clock.clone(), metrics.clone())
        });
        let node = sessions.node().to_owned();
        Arc::new(Self {
            store,
            metrics,
            audit,
            sessions,
            live: RwLock::new(Arc::new(live)),
            budgets: Mutex::default(),
            clock,
            running: Mutex::default(),
            node,
            group_locks: Mutex::default(),
            wake: Notify::new(),
            permits: Arc::new(Semaphore::new(MAX_PARALLEL)),
            shutdown,
            tracker,
        })
    }

    /// Warms up the ACME accounts, reschedules what a crash interrupted, starts the
    /// scheduler.
    pub fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        for issuer in self.live().issuers.values().cloned() {
            self.warm_up(issuer);
        }
        self.recover()?;
        let engine = self.clone();
        self.tracker.spawn(async move { engine.scheduler().await });
        Ok(())
    }

    /// Loads (or creates) the issuer's ACME account in the background.
    fn warm_up(&self, issuer: Arc<AcmeIssuer>) {
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

    /// `[fleet] decommission_after` in seconds, when set (for the metrics).
    pub fn decommission_after_secs(&self) -> Option<i64> {
        self.live()
            .config
            .fleet
            .decommission_after()
            .map(|d| d.as_secs() as i64)
    }

    /// Appends to the audit trail (durable when it returns).
    pub(crate) fn record(
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

    pub(crate) fn issuer(&self, name: &str) -> Result<Arc<AcmeIssuer>, IssueError> {
        self.live()
            .issuers
            .get(name)
            .cloned()
            .ok_or_else(|| IssueError::Policy(format!("issuer {name:?} is not configured")))
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::config::KeyTypeName;
    use crate::model::CertSpec;
    use crate::model::{CertRecord, HostRecord, IssuedCert};
    use certfleet_shared::ids::HostId;

    pub fn host() -> HostRecord {
        HostRecord {
            requested_names: Default::default(),
            challenge_modes: Default::default(),
            key_groups: Default::default(),
            id: HostId::generate(),
            hostname: "h".into(),
            labels: Default::default(),
            enrolled: 0,
            enrolled_from: String::new(),
            identity_serial: String::new(),
            identity_spki: None,
            identity_not_after: None,
            identity_rotated: None,
            ips: vec![],
            targets: vec![],
            last_seen: None,
            inventory: vec![],
        }
    }

    pub fn spec() -> CertSpec {
        CertSpec {
            name: Default::default(),
            challenges: Default::default(),
            policy: None,
            identifiers: vec!["8.8.8.8".parse().unwrap()],
            issuer: "le".into(),
            fallback_issuers: vec![],
            required_profile: None,
            key_type: KeyTypeName::EcdsaP256,
            targets: vec!["t".into()],
            key_group: None,
        }
    }

    pub fn rec(not_before: i64, not_after: i64) -> CertRecord {
        let spec = spec();
        let mut r = super::reconcile::new_record(&host(), spec.clone(), 0);
        r.observed.current = Some(IssuedCert {
            validated_by: Default::default(),
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
        r.observed.installed_serial = Some("01".into());
        r.observed.served_serial = Some("01".into());
        r
    }
}
