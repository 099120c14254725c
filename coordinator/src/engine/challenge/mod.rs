//! Challenges: announcing them to the CA once the agent serves them, waiting for its verdict,
//! clearing them on every path, recording what happened. One module per challenge kind
//! presents and clears them through the agent ([`http01`] today).

pub mod http01;

use super::{Engine, IssueError};
use crate::acme::{AcmeError, AcmeIssuer, PendingChallenge};
use crate::audit::{Entry, Kind};
use crate::config::ChallengeKind;
use crate::model::{CertRecord, DeferredClear};
use crate::sessions::AgentHandle;
use certfleet_shared::identifier::Identifier;
use certfleet_shared::ratelimit::Event;
use http01::clear;
use std::time::Duration;

/// How long a resumed order's challenges stay served after validation (a validation
/// announced before the crash may still be running at the CA).
const RESUMED_CLEAR_GRACE: Duration = Duration::from_secs(30);

impl Engine {
    /// The challenges are served: announce them to the CA, wait for its verdict, clear them
    /// (every path), record what happened. A failed validation ends the order.
    pub(super) async fn validate(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
        issuer: &AcmeIssuer,
        driver: &mut crate::acme::OrderDriver<'_>,
        challenges: &[PendingChallenge],
        timeout: Duration,
    ) -> Result<(), IssueError> {
        let Some(order) = rec.observed.order.clone() else {
            return Ok(());
        };
        let ids: Vec<Identifier> = challenges
            .iter()
            .filter_map(|c| Identifier::parse(&c.identifier).ok())
            .collect();
        let presented = self.record(
            Kind::ChallengePresented,
            rec,
            Entry::by(format!("host:{}", rec.host_id))
                .ids(&ids)
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
                if let Some(o) = rec.observed.order.as_mut() {
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
        if announced_before {
            // Kept served a while after a resumed validation (success or not: a CA may
            // still run a validation of the earlier announcement, and fail the order if
            // nobody answers); the clear is stored and done by the scheduler, so another
            // crash cannot leave the listener bound.
            let at = self.clock.now_unix() + RESUMED_CLEAR_GRACE.as_secs() as i64;
            let mut tokens: Vec<String> = challenges.iter().map(|c| c.token.clone()).collect();
            if let Some(d) = rec.observed.deferred_clear.take() {
                tokens.extend(
                    d.tokens
                        .into_iter()
                        .filter(|t| !tokens.contains(t))
                        .collect::<Vec<_>>(),
                );
            }
            rec.observed.deferred_clear = Some(DeferredClear { at, tokens });
        } else {
            clear(agent, challenges).await;
        }
        if r.is_ok() {
            if let Some(o) = rec.observed.order.as_mut() {
                for id in &ids {
                    o.validated_by.insert(id.to_string(), ChallengeKind::Http01);
                }
            }
        }
        match &r {
            Ok(()) => self.record(
                Kind::ChallengeValidated,
                rec,
                Entry::by("coordinator")
                    .ids(&ids)
                    .detail("order_url", &order.url),
            )?,
            Err(IssueError::Acme(AcmeError::Validation(problems))) => {
                for (id, problem) in problems {
                    // A problem not tied to one identifier (a timeout) concerns them all.
                    let which: Vec<Identifier> = match Identifier::parse(id) {
                        Ok(one) => vec![one],
                        Err(_) => ids.clone(),
                    };
                    self.record(
                        Kind::ChallengeFailed,
                        rec,
                        Entry::by("coordinator")
                            .ids(&which)
                            .detail("order_url", &order.url)
                            .detail("problem", problem),
                    )?;
                }
                let failed: Vec<Event> = problems
                    .iter()
                    .filter_map(|(id, _)| Identifier::parse(id).ok())
                    .map(|identifier| Event::ValidationFailed { identifier })
                    .collect();
                self.budget_record(issuer, &failed)?;
                rec.observed.order = None; // a failed order is dead
            }
            Err(_) => {}
        }
        r
    }
}
