//! Durable state behind the [`Store`] trait; [`SledStore`] is the default engine.
//!
//! Every write is flushed before the call returns (durable before acknowledged). Records
//! are JSON so that the store stays readable with a hex dump and survives field additions
//! (`#[serde(default)]` on new fields).
//!
//! This module owns *what is stored*; it never talks to a CA or an agent.

use crate::model::{CertRecord, HostRecord};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::ratelimit::Budget;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Why an enrollment was refused. Shown to the agent's operator as is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EnrollRefusal {
    #[error("join token is unknown: check it was copied whole, or create a new one with `certfleet-coordinator token create`")]
    UnknownToken,
    #[error(
        "join token expired at {0}; create a new one with `certfleet-coordinator token create`"
    )]
    Expired(String),
    /// Carries the host that used it, for the coordinator's log only.
    #[error("join token was already used; tokens are single-use unless created with --uses")]
    AlreadyUsed(String),
    #[error("join token was revoked")]
    Revoked,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Refused(#[from] EnrollRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// ACME account credentials for one issuer (contains the account key: the store
/// directory is 0700).
#[derive(Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    pub directory: String,
    pub account_id: String,
    pub created: i64,
    /// `instant_acme::AccountCredentials`, as JSON.
    pub credentials: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub created: i64,
    pub expires: i64,
    pub uses_left: u32,
    #[serde(default)]
    pub used_by: Vec<HostId>,
    #[serde(default)]
    pub revoked: bool,
}

/// The coordinator's durable state.
pub trait Store: Send + Sync + 'static {
    fn account(&self, issuer: &str) -> Result<Option<AccountRecord>, StoreError>;
    fn put_account(&self, issuer: &str, rec: &AccountRecord) -> Result<(), StoreError>;
    fn delete_account(&self, issuer: &str) -> Result<(), StoreError>;

    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError>;
    /// Every token record with its hash.
    fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError>;
    /// Atomically: check the token, consume one use, and record the host.
    fn enroll(&self, token_hash: &str, now: i64, host: &HostRecord) -> Result<(), EnrollError>;

    fn host(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError>;
    fn put_host(&self, rec: &HostRecord) -> Result<(), StoreError>;
    fn delete_host(&self, id: &HostId) -> Result<(), StoreError>;
    /// Removes a certificate record with its index entries.
    fn delete_cert(&self, rec: &CertRecord) -> Result<(), StoreError>;
    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;

    fn cert(&self, id: &CertId) -> Result<Option<CertRecord>, StoreError>;
    /// Writes the record and moves its entry in the next-action index, atomically.
    fn put_cert(&self, rec: &CertRecord) -> Result<(), StoreError>;
    /// [`Store::put_cert`] without the flush, for leases whose loss a restart repairs.
    fn put_cert_unflushed(&self, rec: &CertRecord) -> Result<(), StoreError>;
    fn certs(&self) -> Result<Vec<CertRecord>, StoreError>;
    /// Visits every certificate without holding them all in memory.
    fn scan_certs(
        &self,
        f: &mut dyn FnMut(CertRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    fn certs_for_host(&self, host: &HostId) -> Result<Vec<CertRecord>, StoreError>;
    /// Certificates whose next action is at or before `now`, soonest first (at most `limit`).
    fn due(&self, now: i64, limit: usize) -> Result<Vec<CertId>, StoreError>;
    /// The soonest next action of all certificates.
    fn next_due(&self) -> Result<Option<i64>, StoreError>;

    /// Rate-limit bookkeeping of one issuer, as stored by the engine.
    /// The enrolled host holding `ip`, if any.
    fn ip_holder(&self, ip: IpAddr) -> Result<Option<HostId>, StoreError>;
    /// Takes `ip` for `host` when nobody holds it, or when `expected` (a holder that is
    /// gone) still does; atomic. Returns the holder after the call.
    fn claim_ip(
        &self,
        ip: IpAddr,
        host: &HostId,
        expected: Option<&HostId>,
    ) -> Result<HostId, StoreError>;
    /// Frees `ip` if `host` holds it; returns whether it did.
    fn release_ip(&self, ip: IpAddr, host: &HostId) -> Result<bool, StoreError>;
    /// Every address `host` holds.
    fn ips_held_by(&self, host: &HostId) -> Result<Vec<IpAddr>, StoreError>;

    fn budget(&self, issuer: &str) -> Result<Option<Budget>, StoreError>;
    fn put_budget(&self, issuer: &str, budget: &Budget) -> Result<(), StoreError>;
}

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    accounts: sled::Tree,
    tokens: sled::Tree,
    hosts: sled::Tree,
    certs: sled::Tree,
    /// `host id / cert id` → ()
    host_certs: sled::Tree,
    /// `next_action (i64 BE, sign flipped) ++ cert id` → ()
    schedule: sled::Tree,
    budgets: sled::Tree,
    /// canonical IP → id of the enrolled host holding it (one IP, one live host).
    ip_holders: sled::Tree,
}

/// Index key: big-endian with the sign bit flipped, so byte order is numeric order.
fn schedule_key(at: i64, id: &CertId) -> Vec<u8> {
    let mut k = ((at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

fn schedule_time(key: &[u8]) -> Option<i64> {
    let b: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

fn host_cert_key(host: &HostId, cert: &CertId) -> Vec<u8> {
    format!("{}/{}", host.as_str(), cert.as_str()).into_bytes()
}

const SCHEMA_KEY: &[u8] = b"schema_version";
const SCHEMA_VERSION: &[u8] = b"1";

impl SledStore {
    /// Default page cache: enough for the working set of a large fleet, small enough for a
    /// small VM (sled's own default is 1 GiB).
    pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, Self::DEFAULT_CACHE_BYTES)
    }

    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .cache_capacity(cache_bytes)
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let meta = db.open_tree("meta")?;
        match meta.get(SCHEMA_KEY)? {
            None => {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                db.flush()?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(StoreError::Corrupt {
                    key: "meta/schema_version".into(),
                    detail: format!(
                        "store schema {} is not supported by this coordinator",
                        String::from_utf8_lossy(&v)
                    ),
                })
            }
        }
        Ok(Self {
            accounts: db.open_tree("accounts")?,
            tokens: db.open_tree("tokens")?,
            hosts: db.open_tree("hosts")?,
            certs: db.open_tree("certs")?,
            host_certs: db.open_tree("host_certs")?,
            schedule: db.open_tree("schedule")?,
            budgets: db.open_tree("budgets")?,
            ip_holders: db.open_tree("ip_holders")?,
            db,
        })
    }

    /// The underlying database, for components that keep their own trees (the audit log).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
        tree.get(key.as_bytes())?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &str, rec: &T) -> Result<(), StoreError> {
        tree.insert(key.as_bytes(), serde_json::to_vec(rec)?)?;
        self.flush()
    }

    fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }
}

fn holder_of(key: &str, bytes: &[u8]) -> Result<HostId, StoreError> {
    HostId::parse(&String::from_utf8_lossy(bytes)).map_err(|e| StoreError::Corrupt {
        key: format!("ip_holders/{key}"),
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

impl Store for SledStore {
    fn account(&self, issuer: &str) -> Result<Option<AccountRecord>, StoreError> {
        Self::get(&self.accounts, issuer)
    }

    fn put_account(&self, issuer: &str, rec: &AccountRecord) -> Result<(), StoreError> {
        self.put(&self.accounts, issuer, rec)
    }

    fn delete_account(&self, issuer: &str) -> Result<(), StoreError> {
        self.accounts.remove(issuer.as_bytes())?;
        self.flush()
    }

    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        self.put(&self.tokens, token_hash, rec)
    }

    fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let rec = decode(&key, &v)?;
                Ok((key, rec))
            })
            .collect()
    }

    fn enroll(&self, token_hash: &str, now: i64, host: &HostRecord) -> Result<(), EnrollError> {
        use sled::transaction::{
            ConflictableTransactionError as Cte, TransactionError, Transactional,
        };
        let host_bytes = serde_json::to_vec(host).map_err(StoreError::from)?;
        let result = (&self.tokens, &self.hosts).transaction(|(tokens, hosts)| {
            let raw = tokens
                .get(token_hash.as_bytes())?
                .ok_or(Cte::Abort(EnrollRefusal::UnknownToken))?;
            let mut tok: TokenRecord = serde_json::from_slice(&raw)
                .map_err(|_| Cte::Abort(EnrollRefusal::UnknownToken))?;
            if tok.revoked {
                return Err(Cte::Abort(EnrollRefusal::Revoked));
            }
            if tok.uses_left == 0 {
                let by = tok
                    .used_by
                    .last()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                return Err(Cte::Abort(EnrollRefusal::AlreadyUsed(by)));
            }
            if now >= tok.expires {
                return Err(Cte::Abort(EnrollRefusal::Expired(
                    certfleet_shared::timefmt::rfc3339(tok.expires),
                )));
            }
            tok.uses_left -= 1;
            tok.used_by.push(host.id.clone());
            let tok_bytes =
                serde_json::to_vec(&tok).map_err(|_| Cte::Abort(EnrollRefusal::UnknownToken))?;
            tokens.insert(token_hash.as_bytes(), tok_bytes)?;
            hosts.insert(host.id.as_str().as_bytes(), host_bytes.clone())?;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.flush()?;
                Ok(())
            }
            Err(TransactionError::Abort(refusal)) => Err(EnrollError::Refused(refusal)),
            Err(TransactionError::Storage(e)) => Err(EnrollError::Store(StoreError::Sled(e))),
        }
    }

    fn host(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        Self::get(&self.hosts, id.as_str())
    }

    fn put_host(&self, rec: &HostRecord) -> Result<(), StoreError> {
        self.put(&self.hosts, rec.id.as_str(), rec)
    }

    fn delete_host(&self, id: &HostId) -> Result<(), StoreError> {
        self.hosts.remove(id.as_str().as_bytes())?;
        self.flush()
    }

    fn delete_cert(&self, rec: &CertRecord) -> Result<(), StoreError> {
        if let Some(stored) = self.cert(&rec.id)? {
            if let Some(at) = stored.schedule.next_action {
                self.schedule.remove(schedule_key(at, &stored.id))?;
            }
        }
        self.certs.remove(rec.id.as_str().as_bytes())?;
        self.host_certs
            .remove(host_cert_key(&rec.host_id, &rec.id))?;
        self.flush()
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        Self::all(&self.hosts)
    }

    fn cert(&self, id: &CertId) -> Result<Option<CertRecord>, StoreError> {
        Self::get(&self.certs, id.as_str())
    }

    fn put_cert(&self, rec: &CertRecord) -> Result<(), StoreError> {
        self.put_cert_unflushed(rec)?;
        self.flush()
    }

    fn put_cert_unflushed(&self, rec: &CertRecord) -> Result<(), StoreError> {
        use sled::transaction::{
            ConflictableTransactionError as Cte, TransactionError, Transactional,
        };
        let bytes = serde_json::to_vec(rec)?;
        let key = rec.id.as_str().as_bytes();
        let result = (&self.certs, &self.schedule, &self.host_certs).transaction(
            |(certs, schedule, host_certs)| {
                if let Some(old) = certs.get(key)? {
                    let old: CertRecord =
                        serde_json::from_slice(&old).map_err(|e| Cte::Abort(e.to_string()))?;
                    if let Some(at) = old.schedule.next_action {
                        schedule.remove(schedule_key(at, &old.id))?;
                    }
                }
                certs.insert(key, bytes.clone())?;
                if let Some(at) = rec.schedule.next_action {
                    schedule.insert(schedule_key(at, &rec.id), &[])?;
                }
                host_certs.insert(host_cert_key(&rec.host_id, &rec.id), &[])?;
                Ok(())
            },
        );
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(detail)) => Err(StoreError::Corrupt {
                key: rec.id.to_string(),
                detail,
            }),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        }
    }

    fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        Self::all(&self.certs)
    }

    fn scan_certs(
        &self,
        f: &mut dyn FnMut(CertRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for kv in self.certs.iter() {
            let (k, v) = kv?;
            f(decode(&String::from_utf8_lossy(&k), &v)?)?;
        }
        Ok(())
    }

    fn certs_for_host(&self, host: &HostId) -> Result<Vec<CertRecord>, StoreError> {
        let prefix = format!("{}/", host.as_str());
        let mut out = Vec::new();
        for kv in self.host_certs.scan_prefix(prefix.as_bytes()) {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(rec) = Self::get::<CertRecord>(&self.certs, &id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn due(&self, now: i64, limit: usize) -> Result<Vec<CertId>, StoreError> {
        let end = ((now as u64) ^ (1 << 63)).wrapping_add(1).to_be_bytes();
        let mut out = Vec::new();
        for kv in self.schedule.range(..end.to_vec()).take(limit) {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k[8..]).into_owned();
            out.push(CertId::parse(&id).map_err(|e| StoreError::Corrupt {
                key: "schedule".into(),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.schedule.first()?.and_then(|(k, _)| schedule_time(&k)))
    }

    fn ip_holder(&self, ip: IpAddr) -> Result<Option<HostId>, StoreError> {
        let key = ip.to_string();
        self.ip_holders
            .get(key.as_bytes())?
            .map(|v| holder_of(&key, &v))
            .transpose()
    }

    fn claim_ip(
        &self,
        ip: IpAddr,
        host: &HostId,
        expected: Option<&HostId>,
    ) -> Result<HostId, StoreError> {
        let key = ip.to_string();
        let old = expected.map(|h| h.as_str().as_bytes().to_vec());
        match self.ip_holders.compare_and_swap(
            key.as_bytes(),
            old,
            Some(host.as_str().as_bytes()),
        )? {
            Ok(()) => {
                self.flush()?;
                Ok(host.clone())
            }
            Err(e) => match e.current {
                Some(v) => holder_of(&key, &v),
                // Freed meanwhile: try once more from nobody.
                None => self.claim_ip(ip, host, None),
            },
        }
    }

    fn release_ip(&self, ip: IpAddr, host: &HostId) -> Result<bool, StoreError> {
        let key = ip.to_string();
        let released = self
            .ip_holders
            .compare_and_swap(
                key.as_bytes(),
                Some(host.as_str().as_bytes()),
                None as Option<&[u8]>,
            )?
            .is_ok();
        if released {
            self.flush()?;
        }
        Ok(released)
    }

    fn ips_held_by(&self, host: &HostId) -> Result<Vec<IpAddr>, StoreError> {
        let mut out = Vec::new();
        for kv in self.ip_holders.iter() {
            let (k, v) = kv?;
            if v.as_ref() == host.as_str().as_bytes() {
                if let Ok(ip) = String::from_utf8_lossy(&k).parse() {
                    out.push(ip);
                }
            }
        }
        Ok(out)
    }

    fn budget(&self, issuer: &str) -> Result<Option<Budget>, StoreError> {
        // A stored budget of another shape starts afresh (it only delays, never allows more).
        Ok(Self::get::<serde_json::Value>(&self.budgets, issuer)?
            .and_then(|v| serde_json::from_value(v).ok()))
    }

    fn put_budget(&self, issuer: &str, budget: &Budget) -> Result<(), StoreError> {
        self.put(&self.budgets, issuer, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn host(id: &HostId) -> HostRecord {
        HostRecord {
            id: id.clone(),
            hostname: "web-1".into(),
            labels: BTreeMap::new(),
            enrolled: 10,
            enrolled_from: "127.0.0.1:5000".into(),
            identity_serial: "01".into(),
            identity_not_after: None,
            identity_rotated: None,
            ips: vec![],
            targets: vec![],
            last_seen: None,
            inventory: vec![],
        }
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        store
            .put_token(
                "t1",
                &TokenRecord {
                    created: 0,
                    expires: 100,
                    uses_left: 1,
                    used_by: vec![],
                    revoked: false,
                },
            )
            .unwrap();
        let (a, b) = (HostId::generate(), HostId::generate());
        store.enroll("t1", 50, &host(&a)).unwrap();
        assert!(
            matches!(store.enroll("t1", 50, &host(&b)), Err(EnrollError::Refused(EnrollRefusal::AlreadyUsed(h))) if h == a.as_str())
        );
        assert!(
            store.host(&b).unwrap().is_none(),
            "refused enrollment records nothing"
        );
        assert!(matches!(
            store.enroll("nope", 50, &host(&b)),
            Err(EnrollError::Refused(EnrollRefusal::UnknownToken))
        ));
        store
            .put_token(
                "t2",
                &TokenRecord {
                    created: 0,
                    expires: 100,
                    uses_left: 1,
                    used_by: vec![],
                    revoked: false,
                },
            )
            .unwrap();
        assert!(matches!(
            store.enroll("t2", 100, &host(&b)),
            Err(EnrollError::Refused(EnrollRefusal::Expired(_)))
        ));
        assert!(store.host(&a).unwrap().is_some());
    }

    fn cert(host: &HostId, next: Option<i64>) -> CertRecord {
        let spec = crate::model::CertSpec {
            policy: None,
            identifiers: vec!["8.8.8.8".parse().unwrap()],
            issuer: "le".into(),
            fallback_issuers: vec![],
            required_profile: None,
            key_type: Default::default(),
            target: "t".into(),
        };
        let mut rec = CertRecord::new(CertId::generate(), host.clone(), spec, 1);
        rec.schedule.next_action = next;
        rec
    }

    #[test]
    fn an_ip_has_one_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (a, b) = (HostId::generate(), HostId::generate());
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(store.ip_holder(ip).unwrap(), None);
        assert_eq!(store.claim_ip(ip, &a, None).unwrap(), a);
        assert_eq!(store.claim_ip(ip, &a, None).unwrap(), a, "idempotent");
        assert_eq!(store.claim_ip(ip, &b, None).unwrap(), a, "held by a");
        assert!(
            !store.release_ip(ip, &b).unwrap(),
            "b cannot free a's address"
        );
        assert_eq!(store.ips_held_by(&a).unwrap(), vec![ip]);
        // a is gone: b takes it over by naming the old holder.
        assert_eq!(store.claim_ip(ip, &b, Some(&a)).unwrap(), b);
        assert!(store.release_ip(ip, &b).unwrap());
        assert_eq!(store.ip_holder(ip).unwrap(), None);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.claim_ip(ip, &a, None).unwrap(), a);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.ip_holder(ip).unwrap(), Some(a), "durable");
    }

    #[test]
    fn records_and_schedule_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = HostId::generate();
        let (early, late);
        {
            let store = SledStore::open(&dir.path().join("db")).unwrap();
            store.put_host(&host(&id)).unwrap();
            early = cert(&id, Some(-5));
            late = cert(&id, Some(1_000));
            store.put_cert(&early).unwrap();
            store.put_cert(&late).unwrap();
            store.put_cert(&cert(&HostId::generate(), None)).unwrap();
        }
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.hosts().unwrap().len(), 1);
        assert_eq!(store.certs_for_host(&id).unwrap().len(), 2);
        assert_eq!(store.next_due().unwrap(), Some(-5));
        assert_eq!(store.due(0, 10).unwrap(), vec![early.id.clone()]);
        assert_eq!(
            store.due(1_000, 10).unwrap(),
            vec![early.id.clone(), late.id.clone()]
        );
        // Moving an entry removes the old index key.
        let mut moved = early.clone();
        moved.schedule.next_action = Some(2_000);
        store.put_cert(&moved).unwrap();
        assert_eq!(store.due(1_999, 10).unwrap(), vec![late.id.clone()]);
        assert_eq!(store.next_due().unwrap(), Some(1_000));
        moved.schedule.next_action = None;
        store.put_cert(&moved).unwrap();
        assert_eq!(store.due(i64::MAX - 1, 10).unwrap(), vec![late.id]);
    }
}
