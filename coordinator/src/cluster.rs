//! Several coordinators on one shared store (PostgreSQL): each process is a *node* with a
//! random id. This module keeps the node's heartbeat, passes on the commands other nodes
//! post for the agents whose sessions this node holds, sends this node's commands to
//! agents connected elsewhere ([`Remote`]), and watches the store: a node that cannot
//! reach it for [`CUT_OFF_AFTER`] ends its sessions and refuses new ones, so its agents
//! move to a node that can work for them (and its leases lapse: it stops working on
//! certificates within the lease time).
//!
//! The relay is the store's `relay` table (see [`crate::store::cluster`]): the sender
//! posts the `CoordinatorMessage` under its own request id, the node holding the session
//! passes it on unchanged and posts the agent's reply, and the sender collects it. The
//! agent sees one command with one id, as if the sender held the session, and the
//! sender's checks of the reply (right kind, right id) are the same as for a local one.
//! Both sides poll ([`RELAY_POLL`]); the cost is that delay per relayed command.

use crate::sessions::{SessionError, Sessions};
use crate::store::cluster::RelayRequest;
use crate::store::Store;
use certfleet_proto::v1::{self as pb, reply, CoordinatorMessage, Reply};
use certfleet_shared::ids::HostId;
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the heartbeat is written (and the store's reachability checked).
pub const BEAT: Duration = Duration::from_secs(3);
/// A shared store out of reach this long cuts the node off (sessions ended, refused).
pub const CUT_OFF_AFTER: Duration = Duration::from_secs(10);
/// How often each side of the relay looks for work or an answer.
pub const RELAY_POLL: Duration = Duration::from_millis(50);
/// Added to a relayed command's timeout for the two hops through the store.
const RELAY_GRACE: Duration = Duration::from_secs(3);
/// A live node takes a relayed command within one poll; one not taken by then is
/// withdrawn and the agent counts as not connected. This is what a node restarted under
/// a new id meets while its previous incarnation's heartbeat is still fresh: the old
/// session rows name a node nobody serves, and the agent is on its way back.
const RELAY_TAKE_WITHIN: Duration = Duration::from_secs(2);
/// Relayed commands taken per poll.
const INBOX_BATCH: usize = 64;

/// What the node holding a session answers for a relayed command, as stored in the relay:
/// a tag byte, then for [`TAG_REPLY`] the agent's `Reply` (protobuf).
const TAG_REPLY: u8 = 0;
const TAG_NOT_CONNECTED: u8 = 1;
const TAG_ENDED: u8 = 2;
const TAG_TIMEOUT: u8 = 3;

/// The way to an agent whose session another node holds.
pub struct Remote {
    store: Arc<dyn Store>,
    from: String,
    to: String,
}

impl Remote {
    pub fn new(store: Arc<dyn Store>, from: String, to: String) -> Self {
        Self { store, from, to }
    }

    pub fn to_node(&self) -> &str {
        &self.to
    }

    /// Posts `cmd` under `request_id` for the node holding `host`'s session and waits
    /// for the agent's answer.
    pub async fn ask(
        &self,
        host: &HostId,
        request_id: &str,
        cmd: certfleet_proto::v1::coordinator_message::Cmd,
        what: &'static str,
        timeout: Duration,
    ) -> Result<reply::Result, SessionError> {
        let ended = || SessionError::Ended {
            host: host.clone(),
            what,
        };
        let message = CoordinatorMessage {
            request_id: request_id.to_owned(),
            cmd: Some(cmd),
        }
        .encode_to_vec();
        let req = RelayRequest {
            id: request_id.to_owned(),
            host: host.clone(),
            from_node: self.from.clone(),
            to_node: self.to.clone(),
            message,
            timeout_ms: timeout.as_millis() as u64,
        };
        if let Err(e) = self.store.relay_send(&req) {
            tracing::warn!(host = %host, node = %self.to, error = %e, "cannot post a command for the coordinator holding the agent's session");
            return Err(ended());
        }
        let posted = Instant::now();
        let deadline = posted + timeout + RELAY_GRACE;
        let mut taken = false;
        loop {
            tokio::time::sleep(RELAY_POLL).await;
            match self.store.relay_reply(request_id) {
                Ok(Some(bytes)) => return decode_answer(&bytes, host, what, timeout),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(host = %host, error = %e, "cannot read the relay; trying again")
                }
            }
            if !taken && posted.elapsed() >= RELAY_TAKE_WITHIN {
                match self.store.relay_withdraw(request_id) {
                    Ok(true) => {
                        tracing::info!(host = %host, node = %self.to, "the coordinator named by the agent's session did not take the command; the agent counts as not connected");
                        return Err(SessionError::NotConnected(host.clone()));
                    }
                    Ok(false) => taken = true,
                    Err(e) => {
                        tracing::debug!(host = %host, error = %e, "cannot withdraw a relayed command; trying again")
                    }
                }
            }
            if Instant::now() >= deadline {
                let _ = self.store.relay_cancel(request_id);
                return Err(SessionError::Timeout {
                    host: host.clone(),
                    what,
                    secs: timeout.as_secs(),
                });
            }
        }
    }
}

fn decode_answer(
    bytes: &[u8],
    host: &HostId,
    what: &'static str,
    timeout: Duration,
) -> Result<reply::Result, SessionError> {
    match bytes.split_first() {
        Some((&TAG_REPLY, rest)) => match Reply::decode(rest) {
            Ok(Reply {
                result: Some(r), ..
            }) => Ok(r),
            _ => Err(SessionError::Unexpected {
                host: host.clone(),
                what,
            }),
        },
        Some((&TAG_NOT_CONNECTED, _)) => Err(SessionError::NotConnected(host.clone())),
        Some((&TAG_TIMEOUT, _)) => Err(SessionError::Timeout {
            host: host.clone(),
            what,
            secs: timeout.as_secs(),
        }),
        _ => Err(SessionError::Ended {
            host: host.clone(),
            what,
        }),
    }
}

fn encode_answer(result: Result<reply::Result, SessionError>, request_id: &str) -> Vec<u8> {
    match result {
        Ok(r) => {
            let mut out = vec![TAG_REPLY];
            out.extend(
                Reply {
                    request_id: request_id.to_owned(),
                    result: Some(r),
                }
                .encode_to_vec(),
            );
            out
        }
        Err(SessionError::NotConnected(_)) => vec![TAG_NOT_CONNECTED],
        Err(SessionError::Timeout { .. }) => vec![TAG_TIMEOUT],
        Err(_) => vec![TAG_ENDED],
    }
}

/// Passes one relayed command to the local session and posts the answer.
async fn pass_on(sessions: Arc<Sessions>, store: Arc<dyn Store>, req: RelayRequest) {
    let answer = match CoordinatorMessage::decode(req.message.as_slice()) {
        Ok(CoordinatorMessage {
            request_id,
            cmd: Some(cmd),
        }) if request_id == req.id => match sessions.local(&req.host) {
            Some(handle) => {
                let timeout = Duration::from_millis(req.timeout_ms.clamp(1_000, 600_000));
                let r = handle
                    .ask_with_id(&request_id, cmd, "relayed command", timeout)
                    .await;
                tracing::info!(host = %req.host, request_id = %request_id, from = %req.from_node,
                    ok = r.is_ok(), "relayed a command to the agent");
                encode_answer(r, &request_id)
            }
            None => vec![TAG_NOT_CONNECTED],
        },
        _ => {
            tracing::warn!(id = %req.id, from = %req.from_node, "a relayed command does not decode (or its id differs); answered as ended");
            vec![TAG_ENDED]
        }
    };
    if let Err(e) = store.relay_answer(&req.id, &answer) {
        tracing::warn!(id = %req.id, error = %e, "cannot post the answer to a relayed command");
    }
}

/// Runs the node: heartbeat and store watch, and (shared store) the relay's receiving
/// side. `name` is for people (`status`). Ends at shutdown, removing the node's row.
pub fn start(
    sessions: Arc<Sessions>,
    name: String,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let Some(store) = sessions.store().cloned() else {
        return;
    };
    let started = sessions.now();
    let (s, st, stop) = (sessions.clone(), store.clone(), shutdown.clone());
    tracker.spawn(async move {
        let mut last_ok = Instant::now();
        loop {
            let beat = {
                let (st, node, name, n, now) = (
                    st.clone(),
                    s.node().to_owned(),
                    name.clone(),
                    s.local_count() as u64,
                    s.now(),
                );
                tokio::task::spawn_blocking(move || st.node_beat(&node, &name, started, n, now))
                    .await
            };
            match beat {
                Ok(Ok(())) => {
                    last_ok = Instant::now();
                    s.set_cut_off(false);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot write this node's heartbeat to the store");
                    if st.shared() && last_ok.elapsed() >= CUT_OFF_AFTER {
                        s.set_cut_off(true);
                    }
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(BEAT) => {}
                _ = stop.cancelled() => break,
            }
        }
        let node = s.node().to_owned();
        let _ = tokio::task::spawn_blocking(move || st.remove_node(&node)).await;
    });
    if !store.shared() {
        return;
    }
    let tasks = tracker.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELAY_POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            let inbox = {
                let (st, node) = (store.clone(), sessions.node().to_owned());
                tokio::task::spawn_blocking(move || st.relay_inbox(&node, INBOX_BATCH)).await
            };
            match inbox {
                Ok(Ok(reqs)) => {
                    for req in reqs {
                        tasks.spawn(pass_on(sessions.clone(), store.clone(), req));
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot read relayed commands; trying again")
                }
                Err(_) => {}
            }
        }
    });
}

/// `status`'s view of the cluster: the store's health (a timed read), the nodes, and
/// the live leases. A store that cannot be read is reported, not an error.
pub fn status(sessions: &Sessions, store: &dyn Store) -> pb::ClusterStatusResponse {
    let now = sessions.now();
    let started = Instant::now();
    let read = store.nodes(now);
    let latency = started.elapsed().as_millis().min(u32::MAX as u128) as u32;
    let leases = store.live_leases(now).unwrap_or_default();
    let (nodes, store_ok, store_error) = match read {
        Ok(rows) => (rows, true, String::new()),
        Err(e) => (Vec::new(), false, e.to_string()),
    };
    pb::ClusterStatusResponse {
        backend: store.backend(),
        store_ok,
        store_latency_ms: latency,
        store_error,
        nodes: nodes
            .into_iter()
            .map(|n| pb::NodeView {
                leases: leases.iter().filter(|l| l.holder == n.node).count() as u64,
                this_node: n.node == sessions.node(),
                name: n.name,
                alive: n.alive,
                beat_unix: n.beat,
                started_unix: n.started,
                sessions: n.sessions,
                node: n.node,
            })
            .collect(),
        leases: leases
            .into_iter()
            .map(|l| pb::LeaseView {
                cert_id: l.cert.to_string(),
                holder: l.holder,
                until_unix: l.until,
            })
            .collect(),
    }
}

/// Every connected host with the name of the node holding its session.
pub fn connected_by_name(
    sessions: &Sessions,
    store: &dyn Store,
) -> std::collections::HashMap<HostId, String> {
    let names: std::collections::HashMap<String, String> = store
        .nodes(sessions.now())
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n.node, n.name))
        .collect();
    sessions
        .connected()
        .into_iter()
        .map(|(host, node)| {
            let name = names.get(&node).cloned().unwrap_or(node);
            (host, name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_proto::v1 as pb;

    #[test]
    fn answers_survive_the_relay_encoding() {
        let host = HostId::generate();
        let t = Duration::from_secs(5);
        let csr = reply::Result::Csr(pb::Csr {
            csr_der: vec![7, 8],
        });
        let back = decode_answer(&encode_answer(Ok(csr.clone()), "r1"), &host, "x", t);
        assert_eq!(back, Ok(csr));
        for e in [
            SessionError::NotConnected(host.clone()),
            SessionError::Timeout {
                host: host.clone(),
                what: "x",
                secs: 5,
            },
            SessionError::Ended {
                host: host.clone(),
                what: "x",
            },
        ] {
            let back = decode_answer(&encode_answer(Err(e.clone()), "r1"), &host, "x", t);
            assert_eq!(back, Err(e));
        }
        // Garbage from the table is an ended session, not a panic.
        assert!(matches!(
            decode_answer(&[], &host, "x", t),
            Err(SessionError::Ended { .. })
        ));
        assert!(matches!(
            decode_answer(&[TAG_REPLY, 0xff, 0xff], &host, "x", t),
            Err(SessionError::Unexpected { .. })
        ));
    }
}
