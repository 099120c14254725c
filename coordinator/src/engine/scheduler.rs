//! When work happens: the scheduler wakes for the soonest next action (or a `Notify`), pops
//! what is due from the store's index, and runs one task per certificate, leased and
//! bounded by a semaphore. `recover()` at start resumes interrupted orders.

use super::{decide, lock, Decision, Engine, IssueError};
use crate::model::{CertRecord, HostRecord};
use crate::store::StoreError;
use certfleet_shared::ids::CertId;
use std::sync::Arc;
use std::time::Duration;

/// A certificate being worked on is re-looked at after this if the coordinator dies.
const LEASE_SECS: i64 = 15 * 60;
const TICK_BATCH: usize = 512;

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
            self.store.put_cert(&rec)?;
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
    pub(super) fn run_cert(self: &Arc<Self>, id: CertId) -> bool {
        if self.shutdown.is_cancelled() || !lock(&self.running).insert(id.clone()) {
            return false;
        }
        // Lease it so the scheduler does not pick it again while it runs; a crash leaves the
        // lease, which expires and retries. Not flushed: recovery at start covers a lost lease.
        if let Ok(Some(mut rec)) = self.store.cert(&id) {
            rec.schedule.next_action = Some(self.clock.now_unix() + LEASE_SECS);
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

    pub(super) async fn reconcile(&self, id: &CertId) -> Result<(), IssueError> {
        let Some(mut rec) = self.store.cert(id)? else {
            return Ok(());
        };
        let Some(host) = self.store.host(&rec.host_id)? else {
            rec.schedule.next_action = None;
            self.store.put_cert(&rec)?;
            return Ok(());
        };
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
            Decision::Issue(reason) => self.issue(&agent, rec, host, reason).await,
        };
        if rec.observed.order.is_none() && !matches!(outcome, Err(IssueError::Agent(_))) {
            self.discard_pending_keys(&agent, rec).await;
        }
        outcome
    }
}
