//! What can go wrong talking to a CA, classified once where the CA's answer is read.

use crate::store::StoreError;

pub(super) const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
pub(super) const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";
pub(super) const ACCOUNT_GONE: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
pub(super) const UNAUTHORIZED: &str = "urn:ietf:params:acme:error:unauthorized";
pub(super) const ALREADY_REVOKED: &str = "urn:ietf:params:acme:error:alreadyRevoked";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("CA {issuer}: {detail}")]
    Ca {
        issuer: String,
        detail: String,
        problem_type: Option<String>,
        /// What the problem means for us, classified once where the CA's answer is read.
        problem: Problem,
    },
    #[error("CA {issuer} did not answer within {secs} s ({what})")]
    Timeout {
        issuer: String,
        secs: u64,
        what: &'static str,
    },
    #[error("CA {issuer} does not offer profile {wanted:?} (it offers: {offered}); change the policy's profile or its issuer")]
    ProfileUnavailable {
        issuer: String,
        wanted: String,
        offered: String,
    },
    #[error("validation failed: {}", render_problems(.0))]
    Validation(Vec<(String, String)>),
    #[error("CA {issuer} offers no {kind} challenge for {identifier}; list another type in the policy's challenges, or use an issuer that offers {kind}")]
    NoChallenge {
        issuer: String,
        identifier: String,
        kind: &'static str,
    },
    #[error("stored ACME account for {issuer} is unreadable: {detail}")]
    BadStoredAccount { issuer: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An ACME problem, classified where it is received (callers branch on this, never on text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No problem document: the CA was unreachable, slow, or answered outside ACME.
    Unreachable,
    BadNonce,
    /// `rateLimited`; `retry_after` is the moment (unix seconds) the CA names in its detail.
    RateLimited {
        retry_after: Option<i64>,
    },
    /// The CA no longer knows our account (`accountDoesNotExist`, `unauthorized`).
    AccountGone,
    Other,
}

impl Problem {
    pub(super) fn classify(problem_type: Option<&str>, detail: &str) -> Self {
        match problem_type {
            None => Problem::Unreachable,
            Some(BAD_NONCE) => Problem::BadNonce,
            Some(RATE_LIMITED) => Problem::RateLimited {
                retry_after: retry_after_in(detail),
            },
            Some(ACCOUNT_GONE) | Some(UNAUTHORIZED) => Problem::AccountGone,
            Some(_) => Problem::Other,
        }
    }
}

/// "retry after 2026-11-22T17:00:00Z" in a rateLimited problem's detail, as Let's Encrypt
/// words it.
pub(super) fn retry_after_in(text: &str) -> Option<i64> {
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
    Some(t.unix_timestamp())
}

fn render_problems(p: &[(String, String)]) -> String {
    p.iter()
        .map(|(id, problem)| {
            if id.is_empty() {
                problem.clone()
            } else {
                format!("{id}: {problem}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl AcmeError {
    /// The ACME problem type, when the CA sent one.
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            AcmeError::Ca { problem_type, .. } => problem_type.as_deref(),
            _ => None,
        }
    }
    /// The classified problem; `Unreachable` for errors that are not the CA's answer.
    pub fn problem(&self) -> &Problem {
        match self {
            AcmeError::Ca { problem, .. } => problem,
            _ => &Problem::Unreachable,
        }
    }
    pub fn is_bad_nonce(&self) -> bool {
        matches!(
            self,
            AcmeError::Ca {
                problem: Problem::BadNonce,
                ..
            }
        )
    }
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            AcmeError::Ca {
                problem: Problem::RateLimited { .. },
                ..
            }
        )
    }
    /// When a rate-limited CA says to come back (unix seconds), if it said.
    pub fn retry_after(&self) -> Option<i64> {
        match self {
            AcmeError::Ca {
                problem: Problem::RateLimited { retry_after },
                ..
            } => *retry_after,
            _ => None,
        }
    }
    /// The CA no longer knows our account; a new one is made on the next call.
    pub fn is_account_gone(&self) -> bool {
        matches!(
            self,
            AcmeError::Ca {
                problem: Problem::AccountGone,
                ..
            }
        )
    }
    /// The CA says the certificate is revoked already (`alreadyRevoked`, RFC 8555 §7.6): the
    /// state a revocation asks for, reached earlier (an operator's `certs revoke` before the
    /// host's removal, or a revocation whose answer was lost).
    pub fn is_already_revoked(&self) -> bool {
        matches!(
            self,
            AcmeError::Ca { problem_type: Some(t), .. } if t == ALREADY_REVOKED
        )
    }
    /// Worth retrying soon, with the same order: bad nonce, rate limit, a CA that is down or
    /// slow (no problem document at all).
    pub fn is_transient(&self) -> bool {
        match self {
            AcmeError::Ca {
                problem_type: None, ..
            }
            | AcmeError::Timeout { .. } => true,
            AcmeError::Ca { .. } => self.is_bad_nonce() || self.is_rate_limited(),
            _ => false,
        }
    }
    /// True when retrying later cannot help without a config change.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            AcmeError::ProfileUnavailable { .. } | AcmeError::BadStoredAccount { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_problems_carry_the_retry_after_of_their_detail() {
        let t = "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-11-23T10:00:00Z: see https://letsencrypt.org/docs/rate-limits/";
        assert_eq!(retry_after_in(t), Some(1_795_428_000));
        assert_eq!(retry_after_in("no hint"), None);
        assert_eq!(
            Problem::classify(Some(RATE_LIMITED), t),
            Problem::RateLimited {
                retry_after: Some(1_795_428_000)
            }
        );
        assert_eq!(
            Problem::classify(Some(UNAUTHORIZED), t),
            Problem::AccountGone
        );
        assert_eq!(Problem::classify(None, t), Problem::Unreachable);
    }

    #[test]
    fn only_the_alreadyrevoked_problem_counts_as_revoked_already() {
        let ca = |t: Option<&str>| AcmeError::Ca {
            issuer: "le".into(),
            detail: "Certificate already revoked".into(),
            problem_type: t.map(str::to_owned),
            problem: Problem::classify(t, ""),
        };
        assert!(ca(Some(ALREADY_REVOKED)).is_already_revoked());
        assert!(!ca(Some("urn:ietf:params:acme:error:malformed")).is_already_revoked());
        assert!(!ca(None).is_already_revoked());
    }
}
