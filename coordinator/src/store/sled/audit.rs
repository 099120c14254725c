//! The audit trail on sled: `audit` (seq → record JSON) and its three index trees.

use super::SledStore;
use crate::store::{AuditRecordIter, AuditRow, AuditStore, SeqIter, StoreError, StoredAuditRecord};

impl AuditStore for SledStore {
    fn append_audit(&self, row: &AuditRow<'_>) -> Result<(), StoreError> {
        self.append_audit_unflushed(row)?;
        self.flush()
    }

    fn append_audit_unflushed(&self, row: &AuditRow<'_>) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
        let key = row.seq.to_be_bytes();
        let host_key = row.host_id.map(|h| prefixed_key(h, &key));
        let serial_key = row.serial.map(|s| prefixed_key(s, &key));
        let ip_keys: Vec<Vec<u8>> = row
            .ips
            .iter()
            .map(|ip| {
                let mut k = ip.to_vec();
                k.extend_from_slice(&key);
                k
            })
            .collect();
        (
            &self.audit,
            &self.audit_by_host,
            &self.audit_by_ip,
            &self.audit_by_serial,
        )
            .transaction(|(records, by_host, by_ip, by_serial)| {
                // Never replace a record: another log on this store got there first.
                if records.get(key)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(true));
                }
                records.insert(&key, row.json.as_bytes())?;
                if let Some(k) = &host_key {
                    by_host.insert(k.as_slice(), &[])?;
                }
                for k in &ip_keys {
                    by_ip.insert(k.as_slice(), &[])?;
                }
                if let Some(k) = &serial_key {
                    by_serial.insert(k.as_slice(), &[])?;
                }
                Ok::<(), ConflictableTransactionError<bool>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::from(e),
                TransactionError::Abort(true) => StoreError::AuditConflict { seq: row.seq },
                TransactionError::Abort(false) => StoreError::Corrupt {
                    key: format!("audit/{}", row.seq),
                    detail: "append aborted".into(),
                },
            })
    }

    fn flush_audit(&self) -> Result<(), StoreError> {
        self.flush()
    }

    fn audit_record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.audit.get(seq.to_be_bytes())?.map(|v| v.to_vec()))
    }

    fn last_audit_record(&self) -> Result<Option<StoredAuditRecord>, StoreError> {
        Ok(self.audit.last()?.map(stored_audit_record))
    }

    fn audit_records_from(&self, from: u64) -> AuditRecordIter<'_> {
        Box::new(
            self.audit
                .range(from.to_be_bytes()..)
                .map(|kv| Ok(stored_audit_record(kv?))),
        )
    }

    fn audit_records_before(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredAuditRecord>, StoreError> {
        self.audit
            .range(..before.to_be_bytes())
            .rev()
            .take(limit)
            .map(|kv| Ok(stored_audit_record(kv?)))
            .collect()
    }

    fn audit_seqs_by_host(&self, host_id: &str) -> SeqIter<'_> {
        let mut p = host_id.as_bytes().to_vec();
        p.push(0);
        index_seqs(self.audit_by_host.scan_prefix(p).keys())
    }

    fn audit_seqs_by_serial(&self, serial: &str) -> SeqIter<'_> {
        let mut p = serial.as_bytes().to_vec();
        p.push(0);
        index_seqs(self.audit_by_serial.scan_prefix(p).keys())
    }

    fn audit_seqs_by_ip(&self, lo: [u8; 16], hi: [u8; 16]) -> SeqIter<'_> {
        let mut start = lo.to_vec();
        start.extend_from_slice(&[0; 8]);
        let mut end = hi.to_vec();
        end.extend_from_slice(&[0xff; 8]);
        index_seqs(self.audit_by_ip.range(start..=end).keys())
    }

    #[cfg(any(test, feature = "test-support"))]
    fn overwrite_audit_record_for_test(&self, seq: u64, json: &[u8]) -> Result<(), StoreError> {
        self.audit.insert(seq.to_be_bytes(), json)?;
        self.flush()
    }

    #[cfg(any(test, feature = "test-support"))]
    fn remove_audit_record_for_test(&self, seq: u64) -> Result<(), StoreError> {
        self.audit.remove(seq.to_be_bytes())?;
        self.flush()
    }
}

/// `value ++ 0 ++ seq`: the key of the host and serial indexes.
pub(super) fn prefixed_key(value: &str, seq: &[u8; 8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 9);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k.extend_from_slice(seq);
    k
}

/// The sequence number at the end of an index key.
pub(super) fn seq_of_index_key(k: &[u8]) -> Option<u64> {
    k.get(k.len().checked_sub(8)?..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

pub(super) fn index_seqs<'a>(
    keys: impl Iterator<Item = sled::Result<sled::IVec>> + 'a,
) -> SeqIter<'a> {
    Box::new(keys.filter_map(|k| match k {
        Ok(k) => seq_of_index_key(&k).map(Ok),
        Err(e) => Some(Err(StoreError::from(e))),
    }))
}

pub(super) fn stored_audit_record((k, v): (sled::IVec, sled::IVec)) -> StoredAuditRecord {
    StoredAuditRecord {
        seq: k
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(u64::MAX),
        json: v.to_vec(),
    }
}
