//! HTTP-01: the agent that owns the IP serves the key authorization under
//! `/.well-known/acme-challenge/<token>`.

use crate::acme::PendingChallenge;
use crate::engine::AGENT_QUICK;
use crate::sessions::{AgentHandle, SessionError};
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};

pub(crate) async fn present(
    agent: &AgentHandle,
    challenges: &[PendingChallenge],
) -> Result<(), SessionError> {
    let cmd = Cmd::PresentChallenges(pb::PresentChallenges {
        challenges: challenges
            .iter()
            .map(|c| pb::Http01Challenge {
                identifier: c.identifier.clone(),
                token: c.token.clone(),
                key_authorization: c.key_authorization.clone(),
            })
            .collect(),
        tls_alpn01: Vec::new(),
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
pub(crate) async fn clear(agent: &AgentHandle, challenges: &[PendingChallenge]) {
    clear_tokens(agent, challenges.iter().map(|c| c.token.clone()).collect()).await
}

pub(crate) async fn clear_tokens(agent: &AgentHandle, tokens: Vec<String>) {
    if tokens.is_empty() {
        return;
    }
    let cmd = Cmd::ClearChallenges(pb::ClearChallenges { tokens });
    if let Err(e) = agent.request(cmd, "clear challenges", AGENT_QUICK).await {
        tracing::warn!(host = %agent.host, error = %e, "could not clear challenges; the agent expires them itself");
    }
}
