//! [`ClusterStore`](crate::store::cluster::ClusterStore) on PostgreSQL: the `nodes`,
//! `sessions` and `relay` tables, every time measured by the database's `now()` so that
//! nodes whose clocks disagree still agree on who is alive.

use super::PgStore;
use crate::store::cluster::{NodeRow, RelayRequest, NODE_TTL_SECS};
use crate::store::{Lease, StoreError};
use certfleet_shared::ids::{CertId, HostId};

/// A dead node's row is kept this long (so `status` can say it died), then dropped.
const DEAD_NODE_KEPT_SECS: i64 = 3600;
/// A relayed command nobody took or collected is dropped after this long.
const RELAY_KEPT_SECS: i64 = 600;

/// `now() - beat` in seconds, as a SQL expression on `nodes`.
const AGE: &str = "extract(epoch FROM now() - beat)";

impl PgStore {
    pub async fn node_beat(
        &self,
        node: &str,
        name: &str,
        started: i64,
        sessions: u64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO nodes (node, name, started, beat, sessions)
                 VALUES ($1, $2, $3, now(), $4)
                 ON CONFLICT (node) DO UPDATE SET name = EXCLUDED.name, beat = now(),
                     sessions = EXCLUDED.sessions",
                &[&node, &name, &started, &(sessions as i64)],
            )
            .await
            .map_err(|e| super::db_error("recording this node's heartbeat", e))?;
        // Housekeeping rides on the heartbeat: long-dead nodes, their sessions, and
        // relayed commands nobody collected.
        client
            .batch_execute(&format!(
                "DELETE FROM sessions WHERE node IN
                     (SELECT node FROM nodes WHERE {AGE} > {DEAD_NODE_KEPT_SECS});
                 DELETE FROM nodes WHERE {AGE} > {DEAD_NODE_KEPT_SECS};
                 DELETE FROM relay WHERE posted < now() - make_interval(secs => {RELAY_KEPT_SECS});"
            ))
            .await
            .map_err(|e| super::db_error("removing dead nodes and stale relayed commands", e))?;
        Ok(())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let rows = self
            .rows(
                "listing the coordinator nodes",
                &format!(
                    "SELECT node, name, started, floor(extract(epoch FROM beat))::bigint,
                            sessions, {AGE} < {NODE_TTL_SECS}
                     FROM nodes ORDER BY name, node"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NodeRow {
                node: r.get(0),
                name: r.get(1),
                started: r.get(2),
                beat: r.get(3),
                sessions: r.get::<_, i64>(4).max(0) as u64,
                alive: r.get(5),
            })
            .collect())
    }

    pub async fn remove_node(&self, node: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| super::db_error("removing this node", e))?;
        for sql in [
            "DELETE FROM sessions WHERE node = $1",
            "DELETE FROM relay WHERE to_node = $1 AND NOT taken",
            "DELETE FROM nodes WHERE node = $1",
        ] {
            tx.execute(sql, &[&node])
                .await
                .map_err(|e| super::db_error("removing this node", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| super::db_error("removing this node", e))
    }

    pub async fn put_session(
        &self,
        host: &HostId,
        node: &str,
        session: u64,
    ) -> Result<(), StoreError> {
        self.exec(
            "recording an agent's session",
            "INSERT INTO sessions (host_id, node, session, since) VALUES ($1, $2, $3, now())
             ON CONFLICT (host_id) DO UPDATE SET node = EXCLUDED.node,
                 session = EXCLUDED.session, since = now()",
            &[&host.as_str(), &node, &(session as i64)],
        )
        .await
        .map(drop)
    }

    pub async fn end_session(
        &self,
        host: &HostId,
        node: &str,
        session: u64,
    ) -> Result<(), StoreError> {
        self.exec(
            "ending an agent's session",
            "DELETE FROM sessions WHERE host_id = $1 AND node = $2 AND session = $3",
            &[&host.as_str(), &node, &(session as i64)],
        )
        .await
        .map(drop)
    }

    pub async fn session_node(&self, host: &HostId) -> Result<Option<String>, StoreError> {
        let rows = self
            .rows(
                "finding the node that holds an agent's session",
                &format!(
                    "SELECT s.node FROM sessions s JOIN nodes n ON n.node = s.node
                     WHERE s.host_id = $1 AND {AGE} < {NODE_TTL_SECS}"
                ),
                &[&host.as_str()],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub async fn sessions(&self) -> Result<Vec<(HostId, String)>, StoreError> {
        let rows = self
            .rows(
                "listing agent sessions",
                &format!(
                    "SELECT s.host_id, s.node FROM sessions s JOIN nodes n ON n.node = s.node
                     WHERE {AGE} < {NODE_TTL_SECS} ORDER BY s.host_id"
                ),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                let host = HostId::parse(&id).map_err(|e| StoreError::Corrupt {
                    key: format!("sessions/{id}"),
                    detail: e.to_string(),
                })?;
                Ok((host, r.get(1)))
            })
            .collect()
    }

    pub async fn live_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = self
            .rows(
                "listing leases",
                "SELECT cert_id, holder, token, floor(extract(epoch FROM until))::bigint
                 FROM leases WHERE until > now() ORDER BY cert_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                let cert = CertId::parse(&id).map_err(|e| StoreError::Corrupt {
                    key: format!("leases/{id}"),
                    detail: e.to_string(),
                })?;
                Ok(Lease {
                    cert,
                    holder: r.get(1),
                    token: r.get::<_, i64>(2) as u64,
                    until: r.get(3),
                })
            })
            .collect()
    }

    pub async fn relay_send(&self, req: &RelayRequest) -> Result<(), StoreError> {
        self.exec(
            "posting a command for another coordinator",
            "INSERT INTO relay (id, host_id, from_node, to_node, message, timeout_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &req.id,
                &req.host.as_str(),
                &req.from_node,
                &req.to_node,
                &req.message,
                &(req.timeout_ms as i64),
            ],
        )
        .await
        .map(drop)
    }

    pub async fn relay_inbox(
        &self,
        node: &str,
        limit: usize,
    ) -> Result<Vec<RelayRequest>, StoreError> {
        let rows = self
            .rows(
                "taking commands other coordinators posted",
                "UPDATE relay SET taken = true WHERE id IN (
                     SELECT id FROM relay WHERE to_node = $1 AND NOT taken
                     ORDER BY posted LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, host_id, from_node, to_node, message, timeout_ms",
                &[&node, &(limit as i64)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.get(0);
            let host: String = r.get(1);
            let Ok(host) = HostId::parse(&host) else {
                tracing::warn!(id = %id, host = %host, "a relayed command names no valid host; dropped");
                continue;
            };
            out.push(RelayRequest {
                id,
                host,
                from_node: r.get(2),
                to_node: r.get(3),
                message: r.get(4),
                timeout_ms: r.get::<_, i64>(5).max(0) as u64,
            });
        }
        Ok(out)
    }

    pub async fn relay_answer(&self, id: &str, reply: &[u8]) -> Result<(), StoreError> {
        self.exec(
            "answering a relayed command",
            "UPDATE relay SET reply = $2 WHERE id = $1",
            &[&id, &reply],
        )
        .await
        .map(drop)
    }

    pub async fn relay_reply(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self
            .rows(
                "collecting the answer to a relayed command",
                "DELETE FROM relay WHERE id = $1 AND reply IS NOT NULL RETURNING reply",
                &[&id],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub async fn relay_cancel(&self, id: &str) -> Result<(), StoreError> {
        self.exec(
            "dropping a relayed command",
            "DELETE FROM relay WHERE id = $1",
            &[&id],
        )
        .await
        .map(drop)
    }

    pub async fn relay_withdraw(&self, id: &str) -> Result<bool, StoreError> {
        self.exec(
            "withdrawing a relayed command",
            "DELETE FROM relay WHERE id = $1 AND NOT taken",
            &[&id],
        )
        .await
        .map(|n| n == 1)
    }
}
