//! Challenges: which type an order answers and what a failure of one means ([`choice`]),
//! handing them to the agent, announcing them to the CA once the agent serves them, waiting
//! for its verdict, clearing them on every path (by token, whatever the type), recording
//! what happened. One module per challenge kind says what the agent is handed
//! ([`http01`], [`tlsalpn01`]).

pub mod choice;
pub mod dns01;
pub mod http01;
pub mod tlsalpn01;

use super::{Engine, IssueError, AGENT_QUICK};
use crate::acme::{AcmeError, AcmeIssuer, PendingChallenge};
use crate::audit::{Entry, Kind};
use crate::config::ChallengeKind;
use crate::model::{CertRecord, DeferredClear};
use crate::sessions::{AgentHandle, SessionError};
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};
use certfleet_shared::identifier::Identifier;
use certfleet_shared::ratelimit::Event;
use std::time::Duration;

/// Asks the agent to serve `challenges` (one command, all or nothing on the agent's side),
/// each in its kind's form. DNS-01 is the coordinator's ([`dns01`]): nothing for the agent.
pub(crate) async fn present(
    agent: &AgentHandle,
    challenges: &[PendingChallenge],
) -> Result<(), SessionError> {
    let mut cmd = pb::PresentChallenges::default();
    for c in challenges {
        match c.kind {
            ChallengeKind::Http01 => cmd.challenges.push(http01::wire(c)),
            ChallengeKind::TlsAlpn01 => cmd.tls_alpn01.push(tlsalpn01::wire(c)),
            ChallengeKind::Dns01 => {}
        }
    }
    if cmd.challenges.is_empty() && cmd.tls_alpn01.is_empty() {
        return Ok(());
    }
    let reply = agent
        .request(
            Cmd::PresentChallenges(cmd),
            "present challenges",
            AGENT_QUICK,
        )
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
pub(crate) async fn clear(agent: &AgentHandle, challenges: &[PendingChallenge]) {
    clear_tokens(agent, challenges.iter().map(|c| c.token.clone()).collect()).await
}

/// Stops the agent serving these tokens, of either type. Best effort, as [`clear`].
pub(crate) async fn clear_tokens(agent: &AgentHandle, tokens: Vec<String>) {
    if tokens.is_empty() {
        return;
    }
    let cmd = Cmd::ClearChallenges(pb::ClearChallenges { tokens });
    if let Err(e) = agent.request(cmd, "clear challenges", AGENT_QUICK).await {
        tracing::warn!(host = %agent.host, error = %e, "could not clear challenges; the agent expires them itself");
    }
}

/// The identifiers of `challenges` (those that parse; they came from the CA).
fn identifiers(challenges: &[PendingChallenge]) -> Vec<Identifier> {
    challenges
        .iter()
        .filter_map(|c| Identifier::parse(&c.identifier).ok())
        .collect()
}

/// The type of `challenges` (all of an order's are of one type).
fn kind_of(challenges: &[PendingChallenge]) -> ChallengeKind {
    challenges
        .first()
        .map(|c| c.kind)
        .unwrap_or(ChallengeKind::Http01)
}

/// How long a resumed order's challenges stay served after validation (a validation
/// announced before the crash may still be running at the CA).
const RESUMED_CLEAR_GRACE: Duration = Duration::from_secs(30);

impl Engine {
    /// Has the agent serve `challenges`. A refusal that concerns only this challenge type
    /// (not configured on the host, its port held) is audited as a `challenge_failed` of
    /// that type, so the fallback to the next type shows in the trail.
    /// DNS-01 records are written by the coordinator and waited for ([`dns01`]).
    pub(super) async fn present(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
        challenges: &[PendingChallenge],
    ) -> Result<(), IssueError> {
        let r = if kind_of(challenges) == ChallengeKind::Dns01 {
            self.present_dns(rec, challenges).await
        } else {
            match present(agent, challenges).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    clear(agent, challenges).await;
                    Err(IssueError::from(e))
                }
            }
        };
        let Err(e) = r else {
            return Ok(());
        };
        if choice::is_challenge_failure(&e) {
            let order_url = rec.observed.order.as_ref().map(|o| o.url.clone());
            self.record(
                Kind::ChallengeFailed,
                rec,
                Entry::by(format!("host:{}", rec.host_id))
                    .ids(&identifiers(challenges))
                    .detail("type", kind_of(challenges).as_str())
                    .detail("order_url", order_url)
                    .detail("problem", e.to_string()),
            )?;
        }
        Err(e)
    }

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
        let ids = identifiers(challenges);
        let kind = kind_of(challenges);
        let presented = self.record(
            Kind::ChallengePresented,
            rec,
            Entry::by(format!("host:{}", rec.host_id))
                .ids(&ids)
                .detail("type", kind.as_str())
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
                self.save(rec).map_err(IssueError::from)
            }
            Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        };
        let r = match stored {
            Ok(()) => driver.validate(timeout).await.map_err(IssueError::from),
            Err(e) => Err(e),
        };
        if kind == ChallengeKind::Dns01 {
            // Nothing on the host to keep serving; the CA has what it needs (or failed).
            self.remove_dns(rec).await;
        } else if announced_before {
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
                    o.validated_by.insert(id.to_string(), kind);
                }
            }
        }
        match &r {
            Ok(()) => self.record(
                Kind::ChallengeValidated,
                rec,
                Entry::by("coordinator")
                    .ids(&ids)
                    .detail("type", kind.as_str())
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
                            .detail("type", kind.as_str())
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
