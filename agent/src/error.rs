//! Failures the agent reports to the coordinator: a code the coordinator may branch on and
//! a message for the operator.

use certfleet_proto::v1::{Failure, FailureCode};

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentFailure {
    pub code: &'static str,
    pub message: String,
    /// The previous certificate was put back.
    pub rolled_back: bool,
    /// Serial in the target after the failure, when known.
    pub current_serial: Option<String>,
}

impl AgentFailure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            rolled_back: false,
            current_serial: None,
        }
    }

    /// Marks the failure as rolled back to `serial` (if any).
    pub fn rolled_back(mut self, serial: Option<String>) -> Self {
        self.rolled_back = true;
        self.current_serial = serial;
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad_request", message)
    }
}

impl From<AgentFailure> for Failure {
    fn from(f: AgentFailure) -> Self {
        Failure {
            message: f.message,
            code: f.code.to_owned(),
            rolled_back: f.rolled_back,
            current_serial: f.current_serial.unwrap_or_default(),
            kind: failure_code(f.code) as i32,
        }
    }
}

/// The typed code of a code word ("no_matching_key" → `FAILURE_CODE_NO_MATCHING_KEY`).
pub fn failure_code(code: &str) -> FailureCode {
    FailureCode::from_str_name(&format!("FAILURE_CODE_{}", code.to_ascii_uppercase()))
        .unwrap_or(FailureCode::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_word_has_its_typed_code() {
        for (word, kind) in [
            ("no_matching_key", FailureCode::NoMatchingKey),
            ("bad_request", FailureCode::BadRequest),
            ("request_id_reused", FailureCode::RequestIdReused),
            ("rollback_failed", FailureCode::RollbackFailed),
            ("internal", FailureCode::Internal),
            (
                "challenge_mode_unavailable",
                FailureCode::ChallengeModeUnavailable,
            ),
            ("key_group_not_allowed", FailureCode::KeyGroupNotAllowed),
            ("envelope_not_opened", FailureCode::EnvelopeNotOpened),
        ] {
            let f: Failure = AgentFailure::new(word, "m").into();
            assert_eq!((f.code.as_str(), f.kind()), (word, kind));
        }
        assert_eq!(failure_code("made_up"), FailureCode::Unspecified);
    }
}
