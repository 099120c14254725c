//! When work happens: the scheduler wakes for the soonest next action (or a `Notify`), pops
//! what is due from the store's index, and runs one task per certificate, leased and
//! bounded by a semaphore. `recover()` at start resumes interrupted orders.
//!
//! The lease is the store's ([`crate::store::Lease`]): taken before a task starts (another
//! holder: not started), kept alive every [`LEASE_SECS`]/3 while it runs (lost: the task
//! stops), given back at the end; every write of the task's certificate is fenced by it
//! ([`Engine::save`]), so a coordinator whose lease ran out cannot overwrite what the
//! next holder did. A coordinator that dies leaves its leases to expire: another one
//! (with a shared store) takes the work over after at most [`LEASE_SECS`].

use super::{decide, lock, Decision, Engine, IssueError};
use crate::model::{CertRecord, HostRecord};
use crate::sessions::SessionError;
use crate::store::{Lease, StoreError};
use certfleet_shared::ids::CertId;
use std::sync::Arc;
use std::time::Duration;

/// How long a lease lasts without being kept alive (and so how soon another coordinator
/// takes over the work of one that died).
pub(super) const LEASE_SECS: i64 = 20;
/// A holder that could not renew its lease stops this long before it would run out (the
/// store's clock and this machine's may differ a little, and a call takes time).
const LEASE_MARGIN: i64 = 4;
/// With a store shared by several coordinators, the scheduler looks at the schedule at
/// least this often (others may have made work due, or left it behind when they died).
const SHARED_POLL_SECS: i64 = 3;

tokio::task_local! {
    /// The lease of the certificate the current task works on.
    static LEASE: Lease;
}
const TICK_BATCH: usize = 512;
/// How many times one task follows an agent whose session moved to another node.
const MAX_REROUTES: u32 = 2;

impl Engine {
    /// After a restart: an order in flight is resumed now, and any certificate without a
    /// next action gets one.
    pub(super) fn recover(&self) -> Result<(), StoreError> {
        let now = self.clock.now_unix();
        let mut fix = Vec::new();
        self.store.scan_certs(&mut |rec| {
            if rec.observed.order.is_some() || rec.schedule.next_action.is_none() {
                fix.push(rec.id);
            }
            Ok(())
        })?;
        for id in fix {
            let Some(mut rec) = self.store.cert(&id)? else {
                continue;
            };
            let reason = if rec.observed.order.is_some() {
                "resume the order interrupted by a restart"
            } else {
                "restart: no next action was scheduled"
            };
            tracing::info!(cert = %rec.id, reason, "recovering");
            rec.schedule.next_action = Some(now);
            rec.schedule.next_reason = Some(reason.into());
            self.save(&rec)?;
        }
        Ok(())
    }

    pub(super) async fn scheduler(self: Arc<Self>) {
        loop {
            let now = self.clock.now_unix();
            let mut busy = false;
            match self.store.due(now, TICK_BATCH) {
                Ok(ids) => {
                    for id in ids {
                        // A task starts only with a free slot, and takes its lease then:
                        // a lease taken while the task queued for a slot would run out
                        // before its work began (seen with 1,000 certificates due at once).
                        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                            busy = true;
                            break;
                        };
                        busy |= !self.run_cert(id, permit);
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the schedule failed"),
            }
            // Operators' renewal requests, whatever the records' next actions say (a task
            // may have written its older copy over the forced next action). One whose
            // certificate is being worked on waits for that task's end (which wakes us).
            match self.store.renewal_requests() {
                Ok(requests) => {
                    for r in requests {
                        if lock(&self.running).contains(&r.cert) {
                            continue;
                        }
                        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                            busy = true;
                            break;
                        };
                        self.run_cert(r.cert, permit);
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading renewal requests failed"),
            }
            let longest = if self.store.shared() {
                SHARED_POLL_SECS
            } else {
                60
            };
            let wait = match self.store.next_due() {
                Ok(Some(at)) if at > now => Duration::from_secs((at - now).min(longest) as u64),
                Ok(Some(_)) if busy => Duration::from_millis(200),
                Ok(Some(_)) => Duration::from_millis(20),
                Ok(None) => Duration::from_secs(longest as u64),
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
    /// was already running, here or (its lease held) on another coordinator.
    pub(super) fn run_cert(
        self: &Arc<Self>,
        id: CertId,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> bool {
        if self.shutdown.is_cancelled() || !lock(&self.running).insert(id.clone()) {
            return false;
        }
        let now = self.clock.now_unix();
        let lease = match self.store.take_lease(&id, &self.node, now, LEASE_SECS) {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                // Another coordinator works on it (and normally has moved its next action
                // on; a Hello here may have made it due again meanwhile): busy, so the
                // scheduler looks again in a while rather than at once.
                lock(&self.running).remove(&id);
                return false;
            }
            Err(e) => {
                tracing::error!(cert = %id, error = %e, "cannot take the certificate's lease; trying again later");
                lock(&self.running).remove(&id);
                return true;
            }
        };
        // The scheduler (here and elsewhere) does not pick it again while it runs; a
        // crash leaves this, and the lease expires.
        if let Ok(Some(mut rec)) = self.store.cert(&id) {
            rec.schedule.next_action = Some(now + LEASE_SECS);
            let _ = self.store.put_cert_fenced(&rec, &lease, now);
        }
        let engine = self.clone();
        self.tracker.spawn(async move {
            let token = engine.shutdown.clone();
            let work = async {
                tokio::select! {
                    r = engine.reconcile(&id) => r,
                    lost = engine.keep_lease(&lease) => Err(lost.into()),
                    _ = token.cancelled() => Ok(()),
                }
            };
            let result = LEASE.scope(lease.clone(), engine.with_snapshot(work)).await;
            if let Err(e) = engine.store.release_lease(&lease) {
                tracing::warn!(cert = %id, error = %e, "cannot give the lease back; it expires by itself");
            }
            drop(permit);
            lock(&engine.running).remove(&id);
            if let Err(e) = result {
                tracing::error!(cert = %id, error = %e, "reconcile failed");
            }
            engine.wake.notify_one();
        });
        true
    }

    /// Keeps `lease` alive while the task runs; returns when it is lost (taken over after
    /// it expired). A store that fails is retried at the next beat: the fenced writes
    /// protect the record meanwhile.
    pub(super) async fn keep_lease(&self, lease: &Lease) -> StoreError {
        // Measured on this machine's monotonic clock from the last renewal the store
        // confirmed: past this, the lease may have expired on the store's clock and another
        // coordinator may have taken the work, so this one stops (it cannot even ask).
        let mut held_until =
            std::time::Instant::now() + Duration::from_secs((LEASE_SECS - LEASE_MARGIN) as u64);
        loop {
            tokio::time::sleep(std::time::Duration::from_secs((LEASE_SECS / 3) as u64)).await;
            let now = self.clock.now_unix();
            let asked = std::time::Instant::now();
            match self
                .store
                .take_lease(&lease.cert, &lease.holder, now, LEASE_SECS)
            {
                Ok(Some(l)) if l.token == lease.token => {
                    held_until = asked + Duration::from_secs((LEASE_SECS - LEASE_MARGIN) as u64);
                }
                Ok(_) => {
                    tracing::error!(cert = %lease.cert, holder = %lease.holder, "lease lost (another coordinator took the certificate over); stopping this work");
                    return StoreError::LeaseLost {
                        cert: lease.cert.to_string(),
                        holder: lease.holder.clone(),
                    };
                }
                Err(e) if std::time::Instant::now() >= held_until => {
                    tracing::error!(cert = %lease.cert, error = %e, "the lease could not be renewed before it ran out; stopping this work (another coordinator may take it)");
                    return StoreError::LeaseLost {
                        cert: lease.cert.to_string(),
                        holder: lease.holder.clone(),
                    };
                }
                Err(e) => {
                    tracing::warn!(cert = %lease.cert, error = %e, "cannot renew the lease; trying again")
                }
            }
        }
    }

    /// Writes a certificate: fenced by the current task's lease when the task works on
    /// that certificate, otherwise as is (a Hello, an operator, another key-group member).
    pub(crate) fn save(&self, rec: &CertRecord) -> Result<(), StoreError> {
        match LEASE.try_with(Lease::clone) {
            Ok(lease) if lease.cert == rec.id => {
                self.store
                    .put_cert_fenced(rec, &lease, self.clock.now_unix())
            }
            _ => self.store.put_cert(rec),
        }
    }

    pub(super) async fn reconcile(&self, id: &CertId) -> Result<(), IssueError> {
        let request = self.store.renewal_request(id)?;
        let Some(mut rec) = self.store.cert(id)? else {
            // Removed with its host: a request for it has nothing left to renew.
            if let Some(r) = &request {
                self.store.clear_renewal_request(r)?;
            }
            return Ok(());
        };
        let Some(host) = self.store.host(&rec.host_id)? else {
            rec.schedule.next_action = None;
            self.save(&rec)?;
            return Ok(());
        };
        if let Some(r) = request {
            // Into the record under this task's lease, then out of the requests: a crash
            // in between takes it again (the same renewal), never loses it.
            rec.schedule.forced_by = Some(r.by.clone());
            rec.schedule.attempts = 0;
            rec.schedule.next_reason = Some(format!("renewal forced by {}", r.by));
            self.save(&rec)?;
            self.store.clear_renewal_request(&r)?;
        }
        let now = self.clock.now_unix();
        self.refresh_ari(&mut rec, now).await;
        let outcome = match rec.spec.key_group.clone() {
            Some(group) => self.act_in_group(&group, &mut rec, &host, now).await,
            None => self.act(&mut rec, &host, now).await,
        };
        self.finish(rec, outcome)
    }

    pub(super) async fn act(
        &self,
        rec: &mut CertRecord,
        host: &HostRecord,
        now: i64,
    ) -> Result<(), IssueError> {
        if rec
            .observed
            .deferred_clear
            .as_ref()
            .is_some_and(|d| d.at <= now)
        {
            if let Some(agent) = self.sessions.get(&host.id) {
                if let Some(d) = rec.observed.deferred_clear.take() {
                    crate::engine::challenge::clear_tokens(&agent, d.tokens).await;
                }
            }
        }
        if !rec.observed.dns_cleanup.is_empty() {
            self.retry_dns_cleanup(rec).await;
        }
        let mut decision = decide(rec, now);
        if decision == Decision::Idle {
            return Ok(());
        }
        let mut agent = self
            .sessions
            .get(&host.id)
            .ok_or(IssueError::WaitingForAgent)?;
        let mut rerouted = 0;
        let outcome = loop {
            let outcome = match decision {
                Decision::Idle => Ok(()),
                Decision::Install => self.install(&agent, rec).await,
                Decision::Resume => self.resume(&agent, rec).await,
                Decision::Issue(reason) => self.issue(&agent, rec, host, reason).await,
            };
            // The session this task found was on another node that no longer serves it
            // (a node restarted under a new id, its old rows still fresh): the agent may
            // have reconnected meanwhile, here or elsewhere; go on through its new session.
            // What was done is in the record (an order is resumed by its URL).
            if let Err(IssueError::Agent(SessionError::NotConnected(_))) = &outcome {
                if rerouted < MAX_REROUTES && agent.is_remote() {
                    if let Some(next) = self.sessions.get(&host.id) {
                        if next.via() != agent.via() {
                            tracing::info!(host = %host.id, cert = %rec.id, from = agent.via(), to = next.via(), "the agent's session moved; going on through the new one");
                            rerouted += 1;
                            agent = next;
                            decision = decide(rec, self.clock.now_unix());
                            continue;
                        }
                    }
                }
            }
            break outcome;
        };
        if rec.observed.order.is_none() && !matches!(outcome, Err(IssueError::Agent(_))) {
            self.discard_pending_keys(&agent, rec).await;
        }
        outcome
    }
}
