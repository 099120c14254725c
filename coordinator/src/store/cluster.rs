//! What several coordinators sharing one store know of each other: the live nodes, which
//! node holds each agent's session, the certificate leases, and a mailbox through which a
//! node asks another to send a command to an agent whose session it holds (and gets the
//! reply back). [`ClusterStore`] is part of every [`Store`](super::Store).
//!
//! On PostgreSQL these are tables every node reads and writes; a node is alive while its
//! heartbeat (measured by the database's clock) is younger than [`NODE_TTL_SECS`], and a
//! session row counts only while its node is alive, so a node that dies stops receiving
//! commands as soon as its heartbeat goes stale. sled cannot be opened by two processes,
//! so a sled store is one node: [`MemCluster`] keeps the same facts in memory (nothing in
//! it outlives the process, as nothing would be true after a restart).

use super::{Lease, StoreError};
use certfleet_shared::ids::HostId;
use std::collections::HashMap;
use std::sync::Mutex;

/// A node whose last heartbeat is older than this is dead: its sessions no longer route
/// commands, and it is shown as such in `status`.
pub const NODE_TTL_SECS: i64 = 15;

/// A coordinator process as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// The process's random node id (also the holder of its leases).
    pub node: String,
    /// Its configured name (or host name), for people.
    pub name: String,
    pub started: i64,
    /// Its last heartbeat (store clock).
    pub beat: i64,
    /// Agent sessions it held at that heartbeat.
    pub sessions: u64,
    /// Heartbeat younger than [`NODE_TTL_SECS`].
    pub alive: bool,
}

/// A command for an agent, sent by node `from_node` to node `to_node`, which holds the
/// agent's session: `message` is the `CoordinatorMessage` (protobuf) to pass on as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRequest {
    /// The command's request id (unique across coordinators).
    pub id: String,
    pub host: HostId,
    pub from_node: String,
    pub to_node: String,
    pub message: Vec<u8>,
    /// How long the sender waits for the agent's answer.
    pub timeout_ms: u64,
}

/// Nodes, sessions, leases and the command relay. `now` is the caller's clock; a backend
/// shared by several coordinators measures with its own instead.
pub trait ClusterStore: Send + Sync + 'static {
    /// Whether other coordinators may share this store (then the engine must look for
    /// work others left, and route commands through the relay).
    fn shared(&self) -> bool;
    /// The backend and where it is, for `status` ("sled (path)", "postgres (host/db)").
    fn backend(&self) -> String;
    /// Records `node` as alive now, with its session count.
    fn node_beat(
        &self,
        node: &str,
        name: &str,
        started: i64,
        sessions: u64,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Every node that has beaten recently enough to be listed (dead ones for a while,
    /// marked so), by name.
    fn nodes(&self, now: i64) -> Result<Vec<NodeRow>, StoreError>;
    /// A node that stops cleanly: its row, sessions and mailbox go at once.
    fn remove_node(&self, node: &str) -> Result<(), StoreError>;
    /// `node` holds `host`'s session (replacing any other node's).
    fn put_session(
        &self,
        host: &HostId,
        node: &str,
        session: u64,
        now: i64,
    ) -> Result<(), StoreError>;
    /// The session ended (nothing when it is no longer that node's session).
    fn end_session(&self, host: &HostId, node: &str, session: u64) -> Result<(), StoreError>;
    /// The live node holding `host`'s session.
    fn session_node(&self, host: &HostId, now: i64) -> Result<Option<String>, StoreError>;
    /// Every host with a session on a live node, with that node.
    fn sessions(&self, now: i64) -> Result<Vec<(HostId, String)>, StoreError>;
    /// Leases not yet expired: who works on what.
    fn live_leases(&self, now: i64) -> Result<Vec<Lease>, StoreError>;
    /// Posts a command for `req.to_node` to pass on.
    fn relay_send(&self, req: &RelayRequest) -> Result<(), StoreError>;
    /// Takes up to `limit` commands posted for `node` (each is handed out once).
    fn relay_inbox(&self, node: &str, limit: usize) -> Result<Vec<RelayRequest>, StoreError>;
    /// Stores the answer to relayed command `id` (nothing when the sender gave up).
    fn relay_answer(&self, id: &str, reply: &[u8]) -> Result<(), StoreError>;
    /// Takes the answer to relayed command `id`, once it is there.
    fn relay_reply(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The sender gave up on `id`: it is forgotten.
    fn relay_cancel(&self, id: &str) -> Result<(), StoreError>;
    /// Withdraws command `id` if no node has taken it yet: true when withdrawn (it will
    /// never be handed out), false when a node already took it (its answer will come).
    fn relay_withdraw(&self, id: &str) -> Result<bool, StoreError>;
}

#[derive(Default)]
struct MemState {
    nodes: HashMap<String, NodeRow>,
    /// host → (node, session)
    sessions: HashMap<HostId, (String, u64)>,
}

/// [`ClusterStore`]'s facts for a store only one process can open (sled): in memory.
/// Leases are the store's own (they are fenced with the records).
#[derive(Default)]
pub struct MemCluster {
    state: Mutex<MemState>,
}

impl MemCluster {
    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alive(row: &NodeRow, now: i64) -> bool {
        now - row.beat < NODE_TTL_SECS
    }

    pub fn node_beat(&self, node: &str, name: &str, started: i64, sessions: u64, now: i64) {
        self.state().nodes.insert(
            node.to_owned(),
            NodeRow {
                node: node.to_owned(),
                name: name.to_owned(),
                started,
                beat: now,
                sessions,
                alive: true,
            },
        );
    }

    pub fn nodes(&self, now: i64) -> Vec<NodeRow> {
        let mut rows: Vec<NodeRow> = self
            .state()
            .nodes
            .values()
            .map(|r| NodeRow {
                alive: Self::alive(r, now),
                ..r.clone()
            })
            .collect();
        rows.sort_by(|a, b| (&a.name, &a.node).cmp(&(&b.name, &b.node)));
        rows
    }

    pub fn remove_node(&self, node: &str) {
        let mut s = self.state();
        s.nodes.remove(node);
        s.sessions.retain(|_, (n, _)| n != node);
    }

    pub fn put_session(&self, host: &HostId, node: &str, session: u64) {
        self.state()
            .sessions
            .insert(host.clone(), (node.to_owned(), session));
    }

    pub fn end_session(&self, host: &HostId, node: &str, session: u64) {
        let mut s = self.state();
        if s.sessions
            .get(host)
            .is_some_and(|(n, id)| n == node && *id == session)
        {
            s.sessions.remove(host);
        }
    }

    pub fn session_node(&self, host: &HostId, now: i64) -> Option<String> {
        let s = self.state();
        let (node, _) = s.sessions.get(host)?;
        s.nodes
            .get(node)
            .filter(|r| Self::alive(r, now))
            .map(|_| node.clone())
    }

    pub fn sessions(&self, now: i64) -> Vec<(HostId, String)> {
        let s = self.state();
        let mut v: Vec<(HostId, String)> = s
            .sessions
            .iter()
            .filter(|(_, (n, _))| s.nodes.get(n).is_some_and(|r| Self::alive(r, now)))
            .map(|(h, (n, _))| (h.clone(), n.clone()))
            .collect();
        v.sort();
        v
    }
}

/// The one error a relay on a single-process store gives: no other node can exist.
pub fn no_relay() -> StoreError {
    StoreError::Io(
        "this store is not shared by several coordinators: there is no other node to relay a command through"
            .into(),
    )
}
