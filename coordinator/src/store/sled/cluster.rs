//! [`ClusterStore`] for sled: one process, so nodes and sessions are [`MemCluster`]'s, and
//! there is never another node to relay a command to.

use super::SledStore;
use crate::store::cluster::{no_relay, ClusterStore, NodeRow, RelayRequest};
use crate::store::{Lease, StoreError};
use certfleet_shared::ids::HostId;

impl ClusterStore for SledStore {
    fn shared(&self) -> bool {
        false
    }

    fn backend(&self) -> String {
        format!("sled ({})", self.path.display())
    }

    fn node_beat(
        &self,
        node: &str,
        name: &str,
        started: i64,
        sessions: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.cluster.node_beat(node, name, started, sessions, now);
        Ok(())
    }

    fn nodes(&self, now: i64) -> Result<Vec<NodeRow>, StoreError> {
        Ok(self.cluster.nodes(now))
    }

    fn remove_node(&self, node: &str) -> Result<(), StoreError> {
        self.cluster.remove_node(node);
        Ok(())
    }

    fn put_session(
        &self,
        host: &HostId,
        node: &str,
        session: u64,
        _now: i64,
    ) -> Result<(), StoreError> {
        self.cluster.put_session(host, node, session);
        Ok(())
    }

    fn end_session(&self, host: &HostId, node: &str, session: u64) -> Result<(), StoreError> {
        self.cluster.end_session(host, node, session);
        Ok(())
    }

    fn session_node(&self, host: &HostId, now: i64) -> Result<Option<String>, StoreError> {
        Ok(self.cluster.session_node(host, now))
    }

    fn sessions(&self, now: i64) -> Result<Vec<(HostId, String)>, StoreError> {
        Ok(self.cluster.sessions(now))
    }

    fn live_leases(&self, now: i64) -> Result<Vec<Lease>, StoreError> {
        let mut out = Vec::new();
        for item in self.leases.iter() {
            let (key, value) = item?;
            let lease: Lease = serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                key: format!("leases/{}", String::from_utf8_lossy(&key)),
                detail: e.to_string(),
            })?;
            if lease.until > now {
                out.push(lease);
            }
        }
        Ok(out)
    }

    fn relay_send(&self, _req: &RelayRequest) -> Result<(), StoreError> {
        Err(no_relay())
    }

    fn relay_inbox(&self, _node: &str, _limit: usize) -> Result<Vec<RelayRequest>, StoreError> {
        Ok(Vec::new())
    }

    fn relay_answer(&self, _id: &str, _reply: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    fn relay_reply(&self, _id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    fn relay_cancel(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn relay_withdraw(&self, _id: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
}
