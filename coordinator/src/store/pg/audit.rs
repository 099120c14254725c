//! The [`AuditStore`](crate::store::AuditStore) half of [`PgStore`], async. Reads that the
//! trait returns as lazy iterators are pages here (`*_page`: at most `limit` after a
//! position); the bridge chains them into iterators.

use super::{db_error, schema::AUDIT_NOT_HEAD, sqlstate, PgStore};
use crate::store::{AuditRow, StoreError, StoredAuditRecord};
use tokio_postgres::error::SqlState;

/// Which index a page of sequence numbers comes from.
#[derive(Debug, Clone)]
pub enum SeqIndex {
    Host(String),
    Serial(String),
    /// 16-byte address keys, inclusive.
    Ip([u8; 16], [u8; 16]),
}

/// Where the next page of an index starts: after this `(ip key, seq)` for the address
/// index (ordered by address, then sequence), after this seq for the others.
#[derive(Debug, Clone, Default)]
pub struct SeqCursor {
    pub ip: Option<Vec<u8>>,
    pub seq: Option<i64>,
}

fn seq_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn seq_i64(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt {
        key: format!("audit/{seq}"),
        detail: "sequence number beyond PostgreSQL's bigint".into(),
    })
}

impl PgStore {
    /// Inserts the record and its address index rows in one transaction. A record that
    /// does not extend the stored head (another coordinator appended first) is refused by
    /// the schema: [`StoreError::AuditConflict`].
    pub async fn append_audit(&self, row: &AuditRow<'_>) -> Result<(), StoreError> {
        let seq = seq_i64(row.seq)?;
        let ips: Vec<&[u8]> = row.ips.iter().map(|k| &k[..]).collect();
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("starting an audit append", e))?;
        let conflict = |e: tokio_postgres::Error| match sqlstate(&e) {
            Some(code) if code == SqlState::UNIQUE_VIOLATION.code() || code == AUDIT_NOT_HEAD => {
                StoreError::AuditConflict { seq: row.seq }
            }
            _ => db_error("appending an audit record", e),
        };
        tx.execute(
            "INSERT INTO audit (seq, prev, hash, host_id, serial, record)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &seq,
                &row.prev,
                &row.hash,
                &row.host_id,
                &row.serial,
                &row.json.as_bytes(),
            ],
        )
        .await
        .map_err(conflict)?;
        if !ips.is_empty() {
            tx.execute(
                "INSERT INTO audit_ips (ip, seq) SELECT DISTINCT unnest($1::bytea[]), $2::bigint
                 ON CONFLICT DO NOTHING",
                &[&ips, &seq],
            )
            .await
            .map_err(|e| db_error("indexing an audit record", e))?;
        }
        tx.commit().await.map_err(conflict)?;
        Ok(())
    }

    /// The same commit as [`PgStore::append_audit`].
    pub async fn append_audit_unflushed(&self, row: &AuditRow<'_>) -> Result<(), StoreError> {
        self.append_audit(row).await
    }

    /// Every append has committed already.
    pub async fn flush_audit(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub async fn audit_record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(None);
        };
        let rows = self
            .rows(
                "reading an audit record",
                "SELECT record FROM audit WHERE seq = $1",
                &[&seq],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, Vec<u8>>(0)))
    }

    pub async fn last_audit_record(&self) -> Result<Option<StoredAuditRecord>, StoreError> {
        let rows = self
            .rows(
                "reading the last audit record",
                "SELECT seq, record FROM audit ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .await?;
        Ok(rows.first().map(|r| StoredAuditRecord {
            seq: seq_u64(r.get(0)),
            json: r.get(1),
        }))
    }

    /// Up to `limit` records from `from` on, ascending.
    pub async fn audit_records_from(
        &self,
        from: u64,
        limit: i64,
    ) -> Result<Vec<StoredAuditRecord>, StoreError> {
        let Ok(from) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        let rows = self
            .rows(
                "reading audit records",
                "SELECT seq, record FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[&from, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredAuditRecord {
                seq: seq_u64(r.get(0)),
                json: r.get(1),
            })
            .collect())
    }

    /// Up to `limit` records below `before`, newest first.
    pub async fn audit_records_before(
        &self,
        before: u64,
        limit: i64,
    ) -> Result<Vec<StoredAuditRecord>, StoreError> {
        // Above every stored seq (those fit an i64): the newest records.
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "reading audit records backwards",
                "SELECT seq, record FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                &[&before, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredAuditRecord {
                seq: seq_u64(r.get(0)),
                json: r.get(1),
            })
            .collect())
    }

    /// Up to `limit` sequence numbers of an index after `cursor`, and the cursor after
    /// them. Host and serial pages are ascending; address pages are in (address, seq)
    /// order, as the trait allows.
    pub async fn audit_seqs_page(
        &self,
        index: &SeqIndex,
        cursor: &SeqCursor,
        limit: i64,
    ) -> Result<(Vec<u64>, SeqCursor), StoreError> {
        let after = cursor.seq.unwrap_or(-1);
        let rows = match index {
            SeqIndex::Host(h) => {
                self.rows(
                    "reading the audit index by host",
                    "SELECT seq FROM audit WHERE host_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[h, &after, &limit],
                )
                .await?
            }
            SeqIndex::Serial(s) => {
                self.rows(
                    "reading the audit index by serial",
                    "SELECT seq FROM audit WHERE serial = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[s, &after, &limit],
                )
                .await?
            }
            SeqIndex::Ip(lo, hi) => {
                let start = cursor.ip.clone().unwrap_or_else(|| lo.to_vec());
                self.rows(
                    "reading the audit index by address",
                    "SELECT seq, ip FROM audit_ips WHERE (ip, seq) > ($1, $2) AND ip <= $3
                     ORDER BY ip, seq LIMIT $4",
                    &[&start, &after, &&hi[..], &limit],
                )
                .await?
            }
        };
        let mut next = cursor.clone();
        let mut seqs = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = r.get(0);
            next.seq = Some(seq);
            if matches!(index, SeqIndex::Ip(..)) {
                next.ip = Some(r.get(1));
            }
            seqs.push(seq_u64(seq));
        }
        Ok((seqs, next))
    }

    /// Test only: replaces a record's stored bytes, leaving its columns and index alone.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn overwrite_audit_record_for_test(
        &self,
        seq: u64,
        json: &[u8],
    ) -> Result<(), StoreError> {
        self.exec(
            "overwriting an audit record (test)",
            "UPDATE audit SET record = $2 WHERE seq = $1",
            &[&seq_i64(seq)?, &json],
        )
        .await
        .map(drop)
    }

    /// Test only: removes a record, leaving the index alone.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn remove_audit_record_for_test(&self, seq: u64) -> Result<(), StoreError> {
        self.exec(
            "removing an audit record (test)",
            "DELETE FROM audit WHERE seq = $1",
            &[&seq_i64(seq)?],
        )
        .await
        .map(drop)
    }
}
