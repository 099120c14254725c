//! Live agent sessions: one bidirectional stream per host. [`AgentHandle::request`] sends a
//! command with a fresh random request id (unique across coordinator runs, so an agent's
//! reply cache can never answer it with a reply to something else) and waits for the reply
//! with the same id; a reply of the wrong kind for the command is discarded and the command
//! asked again under a new id. A session that ends fails every request still waiting on it.
//!
//! This module moves messages; it decides nothing about issuance.

use certfleet_proto::v1::{
    coordinator_message::Cmd, reply, CoordinatorMessage, Failure, FailureCode, Reply,
};
use certfleet_shared::ids::HostId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// How often a command is asked again after a reply of the wrong kind.
const WRONG_KIND_RETRIES: u32 = 2;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error("host {0} is not connected")]
    NotConnected(HostId),
    #[error("host {host}: the session ended before the agent answered {what}")]
    Ended { host: HostId, what: &'static str },
    #[error("host {host} did not answer {what} within {secs} s")]
    Timeout {
        host: HostId,
        what: &'static str,
        secs: u64,
    },
    #[error("host {host} refused {what}: {message}")]
    Failed {
        host: HostId,
        what: &'static str,
        code: String,
        /// `code`, typed (what the coordinator branches on).
        kind: FailureCode,
        message: String,
        /// The agent put the previous certificate back.
        rolled_back: bool,
        /// Serial in the target after the failure ("" when unknown).
        current_serial: String,
    },
    #[error("host {host} answered {what} with an unexpected reply")]
    Unexpected { host: HostId, what: &'static str },
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<reply::Result>>>>;

/// Sending side of one agent's session.
#[derive(Clone)]
pub struct AgentHandle {
    pub host: HostId,
    pub session_id: u64,
    tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    pending: Pending,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentHandle {
    /// Sends `cmd` and waits for its reply. `Failure` replies become [`SessionError::Failed`].
    /// A reply of another kind than the command asks for (never expected from a correct
    /// agent) is logged, discarded, and the command is asked again under a new id, up to
    /// [`WRONG_KIND_RETRIES`] times; then [`SessionError::Unexpected`].
    pub async fn request(
        &self,
        cmd: Cmd,
        what: &'static str,
        timeout: Duration,
    ) -> Result<reply::Result, SessionError> {
        let mut wrong = 0;
        loop {
            let (request_id, result) = self.ask_once(cmd.clone(), what, timeout).await?;
            if let reply::Result::Failure(f) = result {
                return Err(SessionError::Failed {
                    host: self.host.clone(),
                    what,
                    kind: failure_kind(&f),
                    code: f.code,
                    message: f.message,
                    rolled_back: f.rolled_back,
                    current_serial: f.current_serial,
                });
            }
            if answers(&cmd, &result) {
                return Ok(result);
            }
            wrong += 1;
            tracing::warn!(host = %self.host, request_id = %request_id, what, got = reply_kind(&result),
                attempt = wrong, "agent answered with a reply of the wrong kind; discarded");
            if wrong > WRONG_KIND_RETRIES {
                return Err(SessionError::Unexpected {
                    host: self.host.clone(),
                    what,
                });
            }
        }
    }

    /// One round trip under a fresh request id.
    async fn ask_once(
        &self,
        cmd: Cmd,
        what: &'static str,
        timeout: Duration,
    ) -> Result<(String, reply::Result), SessionError> {
        let request_id = certfleet_shared::ids::request_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(request_id.clone(), tx);
        let msg = CoordinatorMessage {
            request_id: request_id.clone(),
            cmd: Some(cmd),
        };
        let ended = || SessionError::Ended {
            host: self.host.clone(),
            what,
        };
        if self.tx.send(Ok(msg)).await.is_err() {
            lock(&self.pending).remove(&request_id);
            return Err(ended());
        }
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(ended()),
            Err(_) => {
                lock(&self.pending).remove(&request_id);
                return Err(SessionError::Timeout {
                    host: self.host.clone(),
                    what,
                    secs: timeout.as_secs(),
                });
            }
        };
        let failed = matches!(result, reply::Result::Failure(_));
        tracing::info!(host = %self.host, request_id = %request_id, what, failed,
            elapsed_ms = started.elapsed().as_millis() as u64, "agent answered");
        Ok((request_id, result))
    }

    /// Routes a reply from the agent to whoever waits for it. Unknown ids (late replies
    /// after a timeout, or garbage) are logged and dropped.
    pub fn deliver(&self, reply: Reply) {
        let Some(result) = reply.result else {
            tracing::warn!(host = %self.host, request_id = %reply.request_id, "reply without a result; ignored");
            return;
        };
        match lock(&self.pending).remove(&reply.request_id) {
            Some(waiter) => {
                let _ = waiter.send(result);
            }
            None => {
                tracing::debug!(host = %self.host, request_id = %reply.request_id, "reply for no pending request")
            }
        }
    }
}

/// Whether `result` is the kind of reply `cmd` asks for (failures are handled apart).
pub fn answers(cmd: &Cmd, result: &reply::Result) -> bool {
    matches!(
        (cmd, result),
        (Cmd::PresentChallenges(_), reply::Result::Done(_))
            | (Cmd::ClearChallenges(_), reply::Result::Done(_))
            | (Cmd::DiscardPendingKeys(_), reply::Result::Done(_))
            | (Cmd::CreateCsr(_), reply::Result::Csr(_))
            | (Cmd::Install(_), reply::Result::Installed(_))
            | (Cmd::SealKey(_), reply::Result::SealedKey(_))
            | (Cmd::ImportKey(_), reply::Result::Done(_))
    )
}

fn reply_kind(result: &reply::Result) -> &'static str {
    match result {
        reply::Result::Done(_) => "done",
        reply::Result::Failure(_) => "failure",
        reply::Result::Csr(_) => "csr",
        reply::Result::Installed(_) => "installed",
        reply::Result::SealedKey(_) => "sealed_key",
    }
}

/// All live sessions.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<HostId, AgentHandle>>,
    next_session: AtomicU64,
}

impl Sessions {
    /// Registers a new session for `host`, replacing (and so ending) an older one.
    pub fn open(
        &self,
        host: HostId,
        tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    ) -> AgentHandle {
        let handle = AgentHandle {
            host: host.clone(),
            session_id: self.next_session.fetch_add(1, Ordering::Relaxed) + 1,
            tx,
            pending: Arc::default(),
        };
        if let Some(old) = lock(&self.map).insert(host, handle.clone()) {
            lock(&old.pending).clear();
        }
        handle
    }

    /// Removes the session if it is still the current one for its host.
    pub fn close(&self, handle: &AgentHandle) {
        let mut map = lock(&self.map);
        if map
            .get(&handle.host)
            .is_some_and(|h| h.session_id == handle.session_id)
        {
            map.remove(&handle.host);
        }
        lock(&handle.pending).clear();
    }

    pub fn get(&self, host: &HostId) -> Option<AgentHandle> {
        lock(&self.map).get(host).cloned()
    }

    pub fn is_connected(&self, host: &HostId) -> bool {
        lock(&self.map).contains_key(host)
    }

    /// Forgets a host's session (it was removed): nothing more is sent to it.
    pub fn disconnect(&self, host: &HostId) {
        if let Some(h) = lock(&self.map).remove(host) {
            lock(&h.pending).clear();
        }
    }

    /// Ends every session (shutdown): their outbound streams finish once the handles drop.
    pub fn close_all(&self) {
        for (_, h) in lock(&self.map).drain() {
            lock(&h.pending).clear();
        }
    }
}

/// The failure's typed code; from its code word when the agent predates the enum.
fn failure_kind(f: &Failure) -> FailureCode {
    match f.kind() {
        FailureCode::Unspecified => {
            FailureCode::from_str_name(&format!("FAILURE_CODE_{}", f.code.to_ascii_uppercase()))
                .unwrap_or(FailureCode::Unspecified)
        }
        kind => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_proto::v1 as pb;

    /// An "agent" that answers every command with `answer(n, cmd)` (n counts commands).
    fn fake_agent(
        answer: impl Fn(usize, &Cmd) -> reply::Result + Send + 'static,
    ) -> (AgentHandle, Arc<Mutex<Vec<String>>>) {
        let sessions = Sessions::default();
        let (tx, mut rx) = mpsc::channel(8);
        let handle = sessions.open(HostId::generate(), tx);
        let ids = Arc::new(Mutex::new(Vec::new()));
        let (h, seen) = (handle.clone(), ids.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(Ok(msg)) = rx.recv().await {
                let msg: CoordinatorMessage = msg;
                lock(&seen).push(msg.request_id.clone());
                let result = answer(n, msg.cmd.as_ref().expect("cmd"));
                n += 1;
                h.deliver(Reply {
                    request_id: msg.request_id,
                    result: Some(result),
                });
            }
        });
        (handle, ids)
    }

    fn csr_cmd() -> Cmd {
        Cmd::CreateCsr(pb::CreateCsr::default())
    }

    #[tokio::test]
    async fn a_reply_of_the_wrong_kind_is_discarded_and_asked_again() {
        let (agent, ids) = fake_agent(|n, _| {
            if n == 0 {
                reply::Result::Done(pb::Done::default())
            } else {
                reply::Result::Csr(pb::Csr {
                    csr_der: vec![1, 2, 3],
                })
            }
        });
        let r = agent
            .request(csr_cmd(), "create CSR", Duration::from_secs(5))
            .await
            .expect("asked again and answered");
        assert!(matches!(r, reply::Result::Csr(c) if c.csr_der == vec![1, 2, 3]));
        let ids = lock(&ids).clone();
        assert_eq!(ids.len(), 2, "asked twice");
        assert_ne!(ids[0], ids[1], "under a new id");
    }

    #[tokio::test]
    async fn an_agent_that_keeps_answering_the_wrong_kind_is_an_error() {
        let (agent, ids) = fake_agent(|_, _| reply::Result::Done(pb::Done::default()));
        let r = agent
            .request(csr_cmd(), "create CSR", Duration::from_secs(5))
            .await;
        assert!(matches!(r, Err(SessionError::Unexpected { .. })), "{r:?}");
        assert_eq!(lock(&ids).len(), 1 + WRONG_KIND_RETRIES as usize);
    }

    #[test]
    fn every_command_has_exactly_one_answer_kind() {
        let done = reply::Result::Done(pb::Done::default());
        let csr = reply::Result::Csr(pb::Csr::default());
        let installed = reply::Result::Installed(pb::InstallReport::default());
        let cases = [
            (Cmd::PresentChallenges(Default::default()), 0),
            (Cmd::ClearChallenges(Default::default()), 0),
            (Cmd::DiscardPendingKeys(Default::default()), 0),
            (Cmd::CreateCsr(Default::default()), 1),
            (Cmd::Install(Default::default()), 2),
        ];
        for (cmd, right) in cases {
            for (i, r) in [&done, &csr, &installed].into_iter().enumerate() {
                assert_eq!(answers(&cmd, r), i == right, "{cmd:?} / {r:?}");
            }
        }
    }
}
