//! Failures the agent reports to the coordinator: a code the coordinator may branch on and
//! a message for the operator.

use certfleet_proto::v1::Failure;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentFailure {
    pub code: &'static str,
    pub message: String,
}

impl AgentFailure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
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
        }
    }
}
