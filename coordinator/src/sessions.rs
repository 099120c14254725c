//! Live agent sessions: one bidirectional stream per host. [`AgentHandle::request`] sends a
//! command with a fresh random request id (unique across coordinator runs, so an agent's
//! reply cache can never answer it with a reply to something else) and waits for the reply
//! with the same id; a reply of the wrong kind for the command is discarded and the command
//! asked again under a new id. A session that ends fails every request still waiting on it.
//!
//! This module moves messages; it decides nothing about issuance.

use crate::store::Store;
use certfleet_proto::v1::{
    coordinator_message::Cmd, reply, CoordinatorMessage, Failure, FailureCode, Reply,
};
use certfleet_shared::clock::{Clock, SystemClock};
use certfleet_shared::ids::HostId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How often a command is asked again after a reply of the wrong kind.
const WRONG_KIND_RETRIES: u32 = 2;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
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

/// Sending side of one agent's session: on this coordinator, or on another node sharing
/// the store (then each command goes through the store's relay to that node).
#[derive(Clone)]
pub struct AgentHandle {
    pub host: HostId,
    pub session_id: u64,
    route: Route,
}

#[derive(Clone)]
enum Route {
    Local {
        tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
        pending: Pending,
        /// Cancelled when the coordinator ends the session (host removed, cut off from
        /// the store): the session's task then closes the stream.
        ended: CancellationToken,
    },
    Remote(Arc<crate::cluster::Remote>),
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
        let started = std::time::Instant::now();
        let result = match &self.route {
            Route::Local { .. } => self.ask_with_id(&request_id, cmd, what, timeout).await?,
            Route::Remote(remote) => {
                remote
                    .ask(&self.host, &request_id, cmd, what, timeout)
                    .await?
            }
        };
        let failed = matches!(result, reply::Result::Failure(_));
        tracing::info!(host = %self.host, request_id = %request_id, what, failed,
            via = self.via(), elapsed_ms = started.elapsed().as_millis() as u64, "agent answered");
        Ok((request_id, result))
    }

    /// Whether the session is on another node (each command goes through the relay).
    pub fn is_remote(&self) -> bool {
        matches!(self.route, Route::Remote(_))
    }

    /// Where the session is: "local", or the node that holds it.
    pub fn via(&self) -> &str {
        match &self.route {
            Route::Local { .. } => "local",
            Route::Remote(r) => r.to_node(),
        }
    }

    /// One round trip on this coordinator's own session under `request_id` (a relayed
    /// command keeps the id its sender gave it).
    pub(crate) async fn ask_with_id(
        &self,
        request_id: &str,
        cmd: Cmd,
        what: &'static str,
        timeout: Duration,
    ) -> Result<reply::Result, SessionError> {
        let Route::Local {
            tx: sender,
            pending,
            ..
        } = &self.route
        else {
            return Err(SessionError::NotConnected(self.host.clone()));
        };
        let (tx, rx) = oneshot::channel();
        lock(pending).insert(request_id.to_owned(), tx);
        let msg = CoordinatorMessage {
            request_id: request_id.to_owned(),
            cmd: Some(cmd),
        };
        let ended = || SessionError::Ended {
            host: self.host.clone(),
            what,
        };
        if sender.send(Ok(msg)).await.is_err() {
            lock(pending).remove(request_id);
            return Err(ended());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ended()),
            Err(_) => {
                lock(pending).remove(request_id);
                Err(SessionError::Timeout {
                    host: self.host.clone(),
                    what,
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    /// Fails every request waiting on this session and tells its task to close it.
    fn clear_pending(&self) {
        if let Route::Local { pending, ended, .. } = &self.route {
            lock(pending).clear();
            ended.cancel();
        }
    }

    /// Resolves once the coordinator has ended this session (never for a remote one).
    pub async fn ended(&self) {
        match &self.route {
            Route::Local { ended, .. } => ended.cancelled().await,
            Route::Remote(_) => std::future::pending().await,
        }
    }

    /// Routes a reply from the agent to whoever waits for it. Unknown ids (late replies
    /// after a timeout, or garbage) are logged and dropped.
    pub fn deliver(&self, reply: Reply) {
        let Some(result) = reply.result else {
            tracing::warn!(host = %self.host, request_id = %reply.request_id, "reply without a result; ignored");
            return;
        };
        let Route::Local { pending, .. } = &self.route else {
            return;
        };
        match lock(pending).remove(&reply.request_id) {
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

/// All live sessions of this coordinator, and — when the store is shared by several
/// coordinators — the way to the sessions other nodes hold.
pub struct Sessions {
    map: Mutex<HashMap<HostId, AgentHandle>>,
    next_session: AtomicU64,
    /// This process, as holder of leases and sessions in the store.
    node: String,
    store: Option<Arc<dyn Store>>,
    /// Set while this node cannot reach a shared store: no session is accepted (agents go
    /// to a node that can work for them).
    cut_off: AtomicBool,
    clock: Arc<dyn Clock>,
}

impl Default for Sessions {
    /// Sessions of a coordinator on its own (tests): nothing is recorded in a store.
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            next_session: AtomicU64::default(),
            node: new_node_id(),
            store: None,
            cut_off: AtomicBool::new(false),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A random id for this coordinator process.
pub fn new_node_id() -> String {
    format!("coordinator-{}", certfleet_shared::ids::request_id())
}

impl Sessions {
    /// Sessions recorded in `store` under `node`, so other coordinators sharing the store
    /// can route commands to them.
    pub fn new(store: Arc<dyn Store>, node: String, clock: Arc<dyn Clock>) -> Self {
        Self {
            node,
            store: Some(store),
            clock,
            ..Self::default()
        }
    }

    /// Now, by this coordinator's clock (a shared store measures with its own).
    pub fn now(&self) -> i64 {
        self.clock.now_unix()
    }

    /// This process's node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// Whether new sessions are accepted (false while a shared store is out of reach).
    pub fn accepting(&self) -> bool {
        !self.cut_off.load(Ordering::SeqCst)
    }

    /// Cut off from the shared store (every session is ended: its agents move to another
    /// node), or back.
    pub(crate) fn set_cut_off(&self, cut: bool) {
        let was = self.cut_off.swap(cut, Ordering::SeqCst);
        if cut && !was {
            let n = lock(&self.map).len();
            tracing::error!(sessions = n, "this coordinator cannot reach its database: ending its agent sessions so the agents move to another coordinator");
            self.close_all();
        } else if !cut && was {
            tracing::info!("the database is reachable again: agent sessions are accepted");
        }
    }

    /// Registers a new session for `host`, replacing (and so ending) an older one.
    pub fn open(
        &self,
        host: HostId,
        tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    ) -> AgentHandle {
        let handle = AgentHandle {
            host: host.clone(),
            session_id: self.next_session.fetch_add(1, Ordering::Relaxed) + 1,
            route: Route::Local {
                tx,
                pending: Arc::default(),
                ended: CancellationToken::new(),
            },
        };
        if let Some(old) = lock(&self.map).insert(host.clone(), handle.clone()) {
            old.clear_pending();
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.put_session(&host, &self.node, handle.session_id, self.now()) {
                tracing::warn!(host = %host, error = %e, "cannot record the session in the store; other coordinators cannot send this agent commands until it reconnects");
            }
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
        drop(map);
        handle.clear_pending();
        self.forget(&handle.host, handle.session_id);
    }

    fn forget(&self, host: &HostId, session: u64) {
        if let Some(store) = &self.store {
            if let Err(e) = store.end_session(host, &self.node, session) {
                tracing::debug!(host = %host, error = %e, "cannot remove the session from the store; it lapses with this node's heartbeat");
            }
        }
    }

    /// The agent's session: this coordinator's, or (shared store) the live node's that
    /// holds it.
    pub fn get(&self, host: &HostId) -> Option<AgentHandle> {
        if let Some(h) = lock(&self.map).get(host).cloned() {
            return Some(h);
        }
        let store = self.store.as_ref().filter(|s| s.shared())?;
        match store.session_node(host, self.now()) {
            Ok(Some(node)) if node != self.node => Some(AgentHandle {
                host: host.clone(),
                session_id: 0,
                route: Route::Remote(Arc::new(crate::cluster::Remote::new(
                    store.clone(),
                    self.node.clone(),
                    node,
                ))),
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "cannot look up which coordinator holds the agent's session");
                None
            }
        }
    }

    /// This coordinator's own session for `host`.
    pub(crate) fn local(&self, host: &HostId) -> Option<AgentHandle> {
        lock(&self.map).get(host).cloned()
    }

    /// Whether this coordinator holds `host`'s session.
    pub fn is_connected(&self, host: &HostId) -> bool {
        lock(&self.map).contains_key(host)
    }

    /// Sessions this coordinator holds.
    pub fn local_count(&self) -> usize {
        lock(&self.map).len()
    }

    /// Every connected host with the node holding its session (`node()` for this one's):
    /// from the store when it is shared, else this coordinator's own.
    /// A store that cannot be read gives this coordinator's own (logged).
    pub fn connected(&self) -> HashMap<HostId, String> {
        self.connected_checked().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the sessions of other coordinators");
            lock(&self.map)
                .keys()
                .map(|h| (h.clone(), self.node.clone()))
                .collect()
        })
    }

    /// [`Sessions::connected`], or the store's error (for decisions that must not take a
    /// host connected elsewhere for a lost one).
    pub fn connected_checked(&self) -> Result<HashMap<HostId, String>, crate::store::StoreError> {
        let mut all: HashMap<HostId, String> = HashMap::new();
        if let Some(store) = self.store.as_ref().filter(|s| s.shared()) {
            all.extend(store.sessions(self.now())?);
        }
        for host in lock(&self.map).keys() {
            all.insert(host.clone(), self.node.clone());
        }
        Ok(all)
    }
    /// Forgets a host's session (it was removed): nothing more is sent to it.
    pub fn disconnect(&self, host: &HostId) {
        let removed = lock(&self.map).remove(host);
        if let Some(h) = removed {
            h.clear_pending();
            self.forget(host, h.session_id);
        }
    }

    /// Ends every session (shutdown, or cut off from the store): their outbound streams
    /// finish once the handles drop.
    pub fn close_all(&self) {
        let all: Vec<AgentHandle> = lock(&self.map).drain().map(|(_, h)| h).collect();
        for h in all {
            h.clear_pending();
            self.forget(&h.host, h.session_id);
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
