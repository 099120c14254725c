//! Live agent sessions: one bidirectional stream per host. [`AgentHandle::request`] sends a
//! command with a fresh request id and waits for the reply with the same id; a session
//! that ends fails every request still waiting on it.
//!
//! This module moves messages; it decides nothing about issuance.

use certfleet_proto::v1::{coordinator_message::Cmd, reply, CoordinatorMessage, Reply};
use certfleet_shared::ids::HostId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentHandle {
    /// Sends `cmd` and waits for its reply. `Failure` replies become [`SessionError::Failed`].
    pub async fn request(
        &self,
        cmd: Cmd,
        what: &'static str,
        timeout: Duration,
    ) -> Result<reply::Result, SessionError> {
        let request_id = format!(
            "r{}-{}",
            self.session_id,
            NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)
        );
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
        match result {
            reply::Result::Failure(f) => Err(SessionError::Failed {
                host: self.host.clone(),
                what,
                code: f.code,
                message: f.message,
                rolled_back: f.rolled_back,
                current_serial: f.current_serial,
            }),
            other => Ok(other),
        }
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
