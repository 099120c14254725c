//! Let's Encrypt's rate limits as a budget per issuer: checked before an order, recorded
//! after, cached in memory and persisted in the store.

use super::{lock, Engine, IssueError};
use crate::acme::AcmeIssuer;
use crate::config::RateLimits;
use crate::store::StoreError;
use certfleet_shared::identifier::Identifier;
use certfleet_shared::ratelimit::{Budget, Event};

impl Engine {
    /// New orders left per issuer that counts Let's Encrypt's limits (for metrics).
    pub fn budget_remaining(&self) -> Vec<(String, u32)> {
        let now = self.clock.now_unix();
        self.live()
            .issuers
            .values()
            .filter(|i| i.cfg.rate_limits() == RateLimits::Letsencrypt)
            .filter_map(|i| {
                self.budget(&i.cfg.name)
                    .ok()
                    .map(|b| (i.cfg.name.clone(), b.remaining_new_orders(now)))
            })
            .collect()
    }

    pub(super) fn budget_check(
        &self,
        issuer: &AcmeIssuer,
        ids: &[Identifier],
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

    pub(super) fn budget(&self, issuer: &str) -> Result<Budget, StoreError> {
        if let Some(b) = lock(&self.budgets).get(issuer) {
            return Ok(b.clone());
        }
        let b = self.store.budget(issuer)?.unwrap_or_default();
        lock(&self.budgets).insert(issuer.to_owned(), b.clone());
        Ok(b)
    }

    pub(super) fn budget_record(
        &self,
        issuer: &AcmeIssuer,
        events: &[Event],
    ) -> Result<(), StoreError> {
        if issuer.cfg.rate_limits() != RateLimits::Letsencrypt || events.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_unix();
        let mut b = self.budget(&issuer.cfg.name)?;
        for e in events {
            b.record(e, now);
        }
        b.prune(now);
        self.store.put_budget(&issuer.cfg.name, &b)?;
        lock(&self.budgets).insert(issuer.cfg.name.clone(), b);
        Ok(())
    }
}
