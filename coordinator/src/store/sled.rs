//! [`SledStore`]: the [`Store`] and [`AuditStore`] traits on sled, one database directory
//! with a tree per kind of record.
//!
//! Trees: `accounts`, `tokens`, `hosts`, `certs`, `host_certs`, `group_certs`, `leases`, `schedule`, `budgets`,
//! `ip_holders`, `operators` (name → record, `sled/operators.rs`), `meta` (schema version), and the audit trail's `audit` (seq, 8 bytes
//! big-endian → record JSON), `audit_by_host` (`host id ++ 0 ++ seq`), `audit_by_serial`
//! (`serial ++ 0 ++ seq`) and `audit_by_ip` (16-byte address key `++ seq`), all → ().

use super::{
    AccountRecord, EnrollError, EnrollRefusal, Enrolled, Lease, RenewalRequest, Store, StoreError,
    TokenRecord,
};
use crate::model::{CertRecord, HostRecord, OperatorRecord};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::ratelimit::Budget;
use serde::{de::DeserializeOwned, Serialize};
use std::net::IpAddr;
use std::path::Path;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(Box::new(e))
    }
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
    /// `key group / cert id` → (): the members of each key group.
    group_certs: sled::Tree,
    /// cert id → [`Lease`] JSON: who works on the certificate, until when.
    leases: sled::Tree,
    /// `next_action (i64 BE, sign flipped) ++ cert id` → ()
    schedule: sled::Tree,
    budgets: sled::Tree,
    /// canonical IP → id of the enrolled host holding it (one IP, one live host).
    ip_holders: sled::Tree,
    /// The audit trail: seq (u64 BE) → record JSON, and its three indexes (keys → ()).
    audit: sled::Tree,
    audit_by_host: sled::Tree,
    audit_by_ip: sled::Tree,
    audit_by_serial: sled::Tree,
    /// Nodes and sessions: this process only (see [`super::cluster`]).
    cluster: super::cluster::MemCluster,
    path: std::path::PathBuf,
    /// Held shared by every write of the records a backup holds (not leases, not the
    /// append-only audit trail), exclusively while a backup reads them (`sled/backup.rs`):
    /// sled has no snapshot across trees, so a backup pauses those writes instead.
    gate: std::sync::RwLock<()>,
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

fn group_cert_key(group: &str, cert: &CertId) -> Vec<u8> {
    format!("{group}/{}", cert.as_str()).into_bytes()
}

const SCHEMA_KEY: &[u8] = b"schema_version";
const SCHEMA_VERSION: &[u8] = b"1";

/// How long `open` waits for the directory lock another holder is about to release.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl SledStore {
    /// Default page cache: enough for the working set of a large fleet, small enough for a
    /// small VM (sled's own default is 1 GiB).
    pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, Self::DEFAULT_CACHE_BYTES)
    }

    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .cache_capacity(cache_bytes)
            .path(path)
            .mode(sled::Mode::HighThroughput);
        // A database this process just closed stays locked until sled's flusher thread
        // lets go of it (up to its flush interval, longer on a loaded machine), and one a
        // process has just exited from is the same: wait a little before saying "locked".
        let give_up = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
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
        // sled lets one process open the database at a time (it locks the directory), so
        // every lease in it belongs to a process that is gone: none holds any more.
        let leases = db.open_tree("leases")?;
        leases.clear()?;
        Ok(Self {
            accounts: db.open_tree("accounts")?,
            tokens: db.open_tree("tokens")?,
            hosts: db.open_tree("hosts")?,
            certs: db.open_tree("certs")?,
            host_certs: db.open_tree("host_certs")?,
            group_certs: db.open_tree("group_certs")?,
            leases,
            schedule: db.open_tree("schedule")?,
            budgets: db.open_tree("budgets")?,
            ip_holders: db.open_tree("ip_holders")?,
            audit: db.open_tree("audit")?,
            audit_by_host: db.open_tree("audit_by_host")?,
            audit_by_ip: db.open_tree("audit_by_ip")?,
            audit_by_serial: db.open_tree("audit_by_serial")?,
            cluster: Default::default(),
            path: path.to_owned(),
            gate: std::sync::RwLock::new(()),
            db,
        })
    }

    /// Writes a certificate with its index entries in one transaction; with a fence, only
    /// while that lease is held (checked in the same transaction).
    fn write_cert(&self, rec: &CertRecord, fence: Option<(&Lease, i64)>) -> Result<(), StoreError> {
        let _w = self.writing();
        use sled::transaction::{
            ConflictableTransactionError as Cte, TransactionError, Transactional,
        };
        enum Abort {
            Corrupt(String),
            LeaseLost,
        }
        let bytes = serde_json::to_vec(rec)?;
        let key = rec.id.as_str().as_bytes();
        let trees = (
            &self.certs,
            &self.schedule,
            &self.host_certs,
            &self.group_certs,
            &self.leases,
        );
        let result = trees.transaction(|(certs, schedule, host_certs, group_certs, leases)| {
            if let Some((lease, now)) = fence {
                let held: Option<Lease> = leases
                    .get(key)?
                    .and_then(|v| serde_json::from_slice(&v).ok());
                let ok = held.is_some_and(|l| {
                    l.holder == lease.holder && l.token == lease.token && l.until > now
                });
                if !ok {
                    return Err(Cte::Abort(Abort::LeaseLost));
                }
            }
            if let Some(old) = certs.get(key)? {
                let old: CertRecord = serde_json::from_slice(&old)
                    .map_err(|e| Cte::Abort(Abort::Corrupt(e.to_string())))?;
                if let Some(at) = old.schedule.next_action {
                    schedule.remove(schedule_key(at, &old.id))?;
                }
                if let Some(g) = old.spec.key_group.as_ref() {
                    if rec.spec.key_group.as_ref() != Some(g) {
                        group_certs.remove(group_cert_key(g, &old.id))?;
                    }
                }
            }
            certs.insert(key, bytes.clone())?;
            if let Some(at) = rec.schedule.next_action {
                schedule.insert(schedule_key(at, &rec.id), &[])?;
            }
            host_certs.insert(host_cert_key(&rec.host_id, &rec.id), &[])?;
            if let Some(g) = &rec.spec.key_group {
                group_certs.insert(group_cert_key(g, &rec.id), &[])?;
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(Abort::Corrupt(detail))) => Err(StoreError::Corrupt {
                key: rec.id.to_string(),
                detail,
            }),
            Err(TransactionError::Abort(Abort::LeaseLost)) => Err(StoreError::LeaseLost {
                cert: rec.id.to_string(),
                holder: fence.map(|(l, _)| l.holder.clone()).unwrap_or_default(),
            }),
            Err(TransactionError::Storage(e)) => Err(StoreError::from(e)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Every issuer with a stored ACME account, and every issuer with a stored budget
    /// (the traits look them up by name only; `store migrate` needs them all).
    pub fn issuers(&self) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let keys = |tree: &sled::Tree| -> Result<Vec<String>, StoreError> {
            tree.iter()
                .keys()
                .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
                .collect()
        };
        Ok((keys(&self.accounts)?, keys(&self.budgets)?))
    }

    /// Every address with its holder, for `store migrate`.
    pub fn ip_holders(&self) -> Result<Vec<(IpAddr, HostId)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.ip_holders.iter() {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let ip = key.parse().map_err(|_| StoreError::Corrupt {
                key: format!("ip_holders/{key}"),
                detail: "not an address".into(),
            })?;
            out.push((ip, holder_of(&key, &v)?));
        }
        Ok(out)
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
        tree.get(key.as_bytes())?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &str, rec: &T) -> Result<(), StoreError> {
        let _w = self.writing();
        tree.insert(key.as_bytes(), serde_json::to_vec(rec)?)?;
        self.flush()
    }

    /// Up to `limit` records with their keys, after key `after`: one range read.
    fn page<T: DeserializeOwned>(
        tree: &sled::Tree,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.as_bytes()));
        tree.range::<&[u8], _>((from, Bound::Unbounded))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let rec = decode(&key, &v)?;
                Ok((key, rec))
            })
            .collect()
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
    fn as_sled(&self) -> Option<&SledStore> {
        Some(self)
    }

    fn account(&self, issuer: &str) -> Result<Option<AccountRecord>, StoreError> {
        Self::get(&self.accounts, issuer)
    }

    fn put_account(&self, issuer: &str, rec: &AccountRecord) -> Result<(), StoreError> {
        self.put(&self.accounts, issuer, rec)
    }

    fn delete_account(&self, issuer: &str) -> Result<(), StoreError> {
        let _w = self.writing();
        self.accounts.remove(issuer.as_bytes())?;
        self.flush()
    }

    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        self.put(&self.tokens, token_hash, rec)
    }

    fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        Self::page(&self.tokens, None, usize::MAX)
    }

    fn tokens_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        Self::page(&self.tokens, after, limit)
    }

    fn enroll(
        &self,
        token_hash: &str,
        now: i64,
        source: Option<IpAddr>,
        host: &HostRecord,
    ) -> Result<Enrolled, EnrollError> {
        use crate::tokens::{resolve_repeat, Admission};
        use sled::transaction::{
            ConflictableTransactionError as Cte, TransactionError, Transactional,
        };
        let _w = self.writing();
        let refuse = |r: EnrollRefusal| Cte::Abort(EnrollError::Refused(r));
        let broken = |e: StoreError| Cte::Abort(EnrollError::Store(e));
        let result = (&self.tokens, &self.hosts).transaction(|(tokens, hosts)| {
            let raw = tokens
                .get(token_hash.as_bytes())?
                .ok_or_else(|| refuse(EnrollRefusal::UnknownToken))?;
            let mut tok: TokenRecord =
                serde_json::from_slice(&raw).map_err(|_| refuse(EnrollRefusal::UnknownToken))?;
            match tok.admit(now, source, host).map_err(refuse)? {
                Admission::New(admitted) => {
                    let tok_bytes =
                        serde_json::to_vec(&tok).map_err(|e| broken(StoreError::from(e)))?;
                    let host_bytes =
                        serde_json::to_vec(&admitted).map_err(|e| broken(StoreError::from(e)))?;
                    tokens.insert(token_hash.as_bytes(), tok_bytes)?;
                    hosts.insert(admitted.id.as_str().as_bytes(), host_bytes)?;
                    Ok(Enrolled::New(*admitted))
                }
                Admission::Repeat(id) => {
                    let stored = match hosts.get(id.as_str().as_bytes())? {
                        Some(raw) => Some(decode(id.as_str(), &raw).map_err(broken)?),
                        None => None,
                    };
                    let h = resolve_repeat(&id, stored, host).map_err(refuse)?;
                    Ok(Enrolled::Repeat(h))
                }
            }
        });
        match result {
            Ok(enrolled) => {
                if matches!(enrolled, Enrolled::New(_)) {
                    self.flush()?;
                }
                Ok(enrolled)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(EnrollError::Store(StoreError::from(e))),
        }
    }

    fn host(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        Self::get(&self.hosts, id.as_str())
    }

    fn put_host(&self, rec: &HostRecord) -> Result<(), StoreError> {
        self.put(&self.hosts, rec.id.as_str(), rec)
    }

    fn put_host_unflushed(&self, rec: &HostRecord) -> Result<(), StoreError> {
        let _w = self.writing();
        self.hosts
            .insert(rec.id.as_str().as_bytes(), serde_json::to_vec(rec)?)?;
        Ok(())
    }

    fn delete_host(&self, id: &HostId) -> Result<(), StoreError> {
        let _w = self.writing();
        self.hosts.remove(id.as_str().as_bytes())?;
        self.flush()
    }

    fn delete_cert(&self, rec: &CertRecord) -> Result<(), StoreError> {
        let _w = self.writing();
        if let Some(stored) = self.cert(&rec.id)? {
            if let Some(at) = stored.schedule.next_action {
                self.schedule.remove(schedule_key(at, &stored.id))?;
            }
        }
        self.certs.remove(rec.id.as_str().as_bytes())?;
        self.host_certs
            .remove(host_cert_key(&rec.host_id, &rec.id))?;
        if let Some(g) = &rec.spec.key_group {
            self.group_certs.remove(group_cert_key(g, &rec.id))?;
        }
        self.leases.remove(rec.id.as_str().as_bytes())?;
        self.flush()
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        Self::all(&self.hosts)
    }

    fn hosts_page(
        &self,
        after: Option<&HostId>,
        limit: usize,
    ) -> Result<Vec<HostRecord>, StoreError> {
        let page = Self::page(&self.hosts, after.map(HostId::as_str), limit)?;
        Ok(page.into_iter().map(|(_, h)| h).collect())
    }

    fn cert(&self, id: &CertId) -> Result<Option<CertRecord>, StoreError> {
        Self::get(&self.certs, id.as_str())
    }

    fn put_cert(&self, rec: &CertRecord) -> Result<(), StoreError> {
        self.put_cert_unflushed(rec)?;
        self.flush()
    }

    fn put_cert_unflushed(&self, rec: &CertRecord) -> Result<(), StoreError> {
        self.write_cert(rec, None)
    }

    fn take_lease(
        &self,
        cert: &CertId,
        holder: &str,
        now: i64,
        secs: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let key = cert.as_str().as_bytes();
        loop {
            let old = self.leases.get(key)?;
            let current: Option<Lease> = old
                .as_ref()
                .map(|v| serde_json::from_slice(v))
                .transpose()
                .map_err(|e| StoreError::Corrupt {
                    key: format!("leases/{cert}"),
                    detail: e.to_string(),
                })?;
            let token = match &current {
                Some(l) if l.holder == holder && l.until > now => l.token,
                Some(l) if l.until > now => return Ok(None),
                Some(l) => l.token + 1,
                None => 1,
            };
            let lease = Lease {
                cert: cert.clone(),
                holder: holder.to_owned(),
                token,
                until: now + secs,
            };
            let new = serde_json::to_vec(&lease)?;
            if self.leases.compare_and_swap(key, old, Some(new))?.is_ok() {
                // Not flushed: a crash ends every lease of this process anyway.
                return Ok(Some(lease));
            }
        }
    }

    fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let key = lease.cert.as_str().as_bytes();
        let Some(old) = self.leases.get(key)? else {
            return Ok(());
        };
        let held: Option<Lease> = serde_json::from_slice(&old).ok();
        if held
            .as_ref()
            .is_some_and(|l| l.holder == lease.holder && l.token == lease.token)
        {
            // Expired at once, token kept (the next lease gets a higher one).
            let done = Lease {
                until: i64::MIN,
                ..lease.clone()
            };
            let _ =
                self.leases
                    .compare_and_swap(key, Some(old), Some(serde_json::to_vec(&done)?))?;
        }
        Ok(())
    }

    fn put_cert_fenced(&self, rec: &CertRecord, lease: &Lease, now: i64) -> Result<(), StoreError> {
        self.write_cert(rec, Some((lease, now)))?;
        self.flush()
    }

    fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        Self::all(&self.certs)
    }

    fn certs_page(
        &self,
        after: Option<&CertId>,
        limit: usize,
    ) -> Result<Vec<CertRecord>, StoreError> {
        let page = Self::page(&self.certs, after.map(CertId::as_str), limit)?;
        Ok(page.into_iter().map(|(_, c)| c).collect())
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

    fn certs_in_group(&self, group: &str) -> Result<Vec<CertRecord>, StoreError> {
        let prefix = format!("{group}/");
        let mut out = Vec::new();
        for kv in self.group_certs.scan_prefix(prefix.as_bytes()) {
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
        let w = self.writing();
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
                None => {
                    drop(w);
                    self.claim_ip(ip, host, None)
                }
            },
        }
    }

    fn release_ip(&self, ip: IpAddr, host: &HostId) -> Result<bool, StoreError> {
        let key = ip.to_string();
        let _w = self.writing();
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

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        self.operator_record(name)
    }

    fn request_renewal(&self, req: &RenewalRequest) -> Result<(), StoreError> {
        self.put_renewal_request(req)
    }

    fn renewal_request(&self, cert: &CertId) -> Result<Option<RenewalRequest>, StoreError> {
        self.renewal_request_of(cert)
    }

    fn renewal_requests(&self) -> Result<Vec<RenewalRequest>, StoreError> {
        self.all_renewal_requests()
    }

    fn clear_renewal_request(&self, req: &RenewalRequest) -> Result<(), StoreError> {
        self.remove_renewal_request(req)
    }

    fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        Self::all(&self.db.open_tree(operators::TREE)?)
    }

    fn put_operator(
        &self,
        rec: &OperatorRecord,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.swap_operator(rec, expected)
    }
}

mod audit;
mod backup;
mod cluster;
mod operators;
mod requests;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod audit_layout_tests;
