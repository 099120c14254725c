//! The audit trail: append-only, hash-chained, in the coordinator's store.
//!
//! Every record carries the SHA-256 of its predecessor and its own hash over a canonical
//! encoding, so editing, removing or reordering any record breaks the chain at that point,
//! which [`AuditLog::verify`] reports. [`AuditLog::append`] flushes before it returns:
//! callers append *before* they report an action as done (design invariant 7).
//!
//! Secondary indexes (by host, by IP identifier, by serial) make the common questions —
//! "everything about this host", "everything for 203.0.113.0/24", "this serial" — cost the
//! matching records, not the whole log.
//!
//! This module seals, queries and checks; the records themselves live behind
//! [`AuditStore`], whose primitives (append a row with its index entries, read by sequence
//! number, scan the indexes) are all a backend implements. It does not decide what is worth
//! recording.

use crate::store::{AuditRow, AuditStore, SeqIter, StoreError};
use certfleet_shared::identifier::{Identifier, NamePattern};
use certfleet_shared::x509::sha256_hex;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// How far the wall clock may have stepped backwards between two appends without a time
/// query missing a record.
const CLOCK_SLACK_SECS: i64 = 3600;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    TokenCreated,
    TokenUsed,
    TokenRevoked,
    EnrollmentRefused,
    HostEnrolled,
    /// An Enroll with a token and an identity key that enrolled together before (a retry
    /// whose reply was lost): the same host again, its identity certificate issued anew
    /// for that key (`identity_serial`, `previous_identity_serial`), no use taken.
    EnrollmentRepeated,
    HostRemoved,
    IdentityRotated,
    OrderCreated,
    ChallengePresented,
    ChallengeValidated,
    ChallengeFailed,
    CertificateIssued,
    CertificateInstalled,
    CertificateServed,
    CertificateRolledBack,
    RenewalScheduled,
    RenewalForced,
    CertificateRevoked,
    RateLimitRefused,
    AtRisk,
    OperatorAction,
    /// A host claims an address another enrolled host holds: its certificate waits.
    IpConflict,
    /// A host claims an address its policy's `allowed_ips` does not cover.
    IpRefused,
    /// An address was freed (host removed, or `hosts release-ip`).
    IpReleased,
    /// A certificate holds a name its policy's `allowed_names` does not cover.
    NameRefused,
    /// The policy no longer gives a host this certificate: it is no longer renewed.
    CertificateRetired,
    /// A challenge type failed for a certificate and the next one in its order is tried.
    ChallengeFallback,
    /// DNS-01 TXT records could not be removed (kept, and tried again).
    DnsCleanupFailed,
    /// A target's deploy hook failed after an install (exit status, stderr tail); the
    /// certificate stays installed. A hook that succeeded is `deploy_hook: "ok"` in the
    /// `certificate_installed` record.
    DeployHookFailed,
    /// A key group's key was sealed by one member to another member's identity key and
    /// imported there (`key_group`, `key_sha256`, `from_host`, `recipient_identity_sha256`;
    /// the record's host is the one that received it). The coordinator relayed ciphertext.
    KeyShared,
    /// The configuration file was read again (SIGHUP) and put in force: `summary` (one
    /// line) and `changes` (policies, issuers, DNS providers added, removed, changed).
    ConfigReloaded,
    /// A reload was refused (the file does not parse or validate, a DNS credential cannot
    /// be read, or a setting that needs a restart changed): `error`; the previous
    /// configuration keeps running.
    ConfigReloadFailed,
    /// A host not seen for `[fleet] decommission_after` was removed by the coordinator
    /// (its certificates revoked, cessationOfOperation); `last_seen`, `revoked_serials`.
    HostDecommissioned,
    /// A host asked to leave (`certfleet-agent leave`) and was removed, its certificates
    /// revoked; by `host:<id>`.
    HostLeft,
    /// A host no longer reports addresses it had (`ips = "auto"`, or a changed list);
    /// certificates covering them are revoked when `[fleet] revoke_on_address_loss`.
    AddressesLost,
    /// An operator was added (`name`, `role`, `serial`, `not_after`); by the admin who
    /// added it, or `coordinator:state-dir` for the credential `init` / `node join` wrote.
    OperatorAdded,
    /// An operator renewed its own credential (`previous_serial`, `serial`, `not_after`).
    OperatorRenewed,
    /// An operator was revoked: its credential is refused from now on.
    OperatorRevoked,
    /// The coordinator replaced its own TLS server certificate (`previous_serial`,
    /// `serial`, `not_after`), without a restart.
    ServerCertificateRenewed,
    /// A backup of the store was taken (`store backup`, by the operator); the snapshot
    /// includes this record.
    StoreBackedUp,
    /// An operator opened a web view session with a one-time login link (`session_secs`);
    /// by the operator.
    WebLogin,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
    pub fn as_str(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// The fields an event carries before it is sealed into the chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Who: "operator:NAME", "host:ID", "coordinator".
    pub actor: String,
    pub host_id: Option<String>,
    pub cert_id: Option<String>,
    /// The IP identifiers concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<IpAddr>,
    /// The DNS names concerned (absent, not empty, when there are none, so records from
    /// before names keep their hashes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub serial: Option<String>,
    pub issuer: Option<String>,
    /// Everything else (order URL, profile, replaces, reason, problem text, address…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    pub fn by(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            ..Self::default()
        }
    }
    pub fn host(mut self, h: impl ToString) -> Self {
        self.host_id = Some(h.to_string());
        self
    }
    pub fn cert(mut self, c: impl ToString) -> Self {
        self.cert_id = Some(c.to_string());
        self
    }
    pub fn ips(mut self, ips: &[IpAddr]) -> Self {
        self.identifiers = ips.to_vec();
        self
    }
    /// A certificate's identifiers: addresses into `identifiers`, names into `names`.
    pub fn ids(mut self, ids: &[Identifier]) -> Self {
        self.identifiers = ids.iter().filter_map(Identifier::as_ip).collect();
        self.names = ids
            .iter()
            .filter(|i| !i.is_ip())
            .map(|i| i.to_string())
            .collect();
        self
    }
    pub fn serial(mut self, s: impl Into<String>) -> Self {
        self.serial = Some(s.into());
        self
    }
    pub fn issuer(mut self, i: impl Into<String>) -> Self {
        self.issuer = Some(i.into());
        self
    }
    pub fn detail(mut self, k: &str, v: impl Serialize) -> Self {
        if let Ok(v) = serde_json::to_value(v) {
            self.details.insert(k.to_owned(), v);
        }
        self
    }
}

/// A sealed record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: i64,
    pub kind: Kind,
    #[serde(flatten)]
    pub entry: Entry,
    /// Hash of the previous record ("" for the first).
    pub prev: String,
    /// SHA-256 over `prev`, `seq`, `time`, `kind` and the entry's canonical JSON.
    pub hash: String,
}

fn seal(seq: u64, time: i64, kind: Kind, entry: &Entry, prev: &str) -> String {
    // serde_json writes struct fields in declaration order and Map keys sorted
    // (no preserve_order feature), so this encoding is canonical.
    let body = serde_json::to_string(entry).unwrap_or_default();
    sha256_hex(format!("{prev}\n{seq}\n{time}\n{}\n{body}", kind.as_str()).as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(#[from] StoreError),
    #[error("audit record {seq} is unreadable: {detail}")]
    Corrupt { seq: u64, detail: String },
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub seq: u64,
    pub reason: String,
}

/// What to look for. Empty filter = everything.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub host_id: Option<String>,
    /// An address or a CIDR block.
    pub network: Option<IpNet>,
    pub serial: Option<String>,
    /// A name, or every name below a zone (`*.zone`).
    pub name: Option<NamePattern>,
    pub kinds: Vec<Kind>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<usize>,
    /// Only records after this sequence number (the cursor of a paged query).
    pub after: Option<u64>,
    /// Only records before this sequence number (the web view's export of what an audit
    /// page at this cursor and older shows); [`AuditLog::query`] stops reading there.
    pub before: Option<u64>,
}

impl Query {
    fn matches(&self, r: &Record) -> bool {
        self.host_id
            .as_ref()
            .is_none_or(|h| r.entry.host_id.as_ref() == Some(h))
            && self
                .serial
                .as_ref()
                .is_none_or(|s| r.entry.serial.as_ref() == Some(s))
            && (self.kinds.is_empty() || self.kinds.contains(&r.kind))
            && self.name.as_ref().is_none_or(|p| {
                r.entry
                    .names
                    .iter()
                    .filter_map(|n| Identifier::parse(n).ok())
                    .any(|id| p.matches(&id))
            })
            && self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time < t)
            && self
                .network
                .is_none_or(|net| r.entry.identifiers.iter().any(|ip| net.contains(ip)))
    }
}

/// Parses "203.0.113.7", "203.0.113.0/24", "2001:db8::/32" (host bits are ignored: a
/// query for 203.0.113.7/24 is one for 203.0.113.0/24).
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|_| {
        format!("{s:?} is not an address or CIDR block (like 203.0.113.0/24, prefix length 0..=32 for IPv4, 0..=128 for IPv6)")
    })?;
    Ok(net.trunc())
}

/// An address as the IP index keys it: 16 bytes, IPv4 as IPv4-mapped IPv6.
fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The first and last keys of a block, for the IP index's range scan.
fn ip_block(net: IpNet) -> ([u8; 16], [u8; 16]) {
    (ip_key(net.network()), ip_key(net.broadcast()))
}

/// Appends a record read from another store (or a backup) byte for byte, with the index
/// entries made from its own fields, without flushing (`flush_audit` once at the end).
/// A record that does not parse is refused (`verify()` on the source says where).
pub fn append_copy(target: &dyn AuditStore, seq: u64, json: &[u8]) -> Result<(), AuditError> {
    let rec = parse_record(seq, json)?;
    let text = std::str::from_utf8(json).map_err(|e| AuditError::Corrupt {
        seq,
        detail: e.to_string(),
    })?;
    let ips: Vec<[u8; 16]> = rec.entry.identifiers.iter().map(|ip| ip_key(*ip)).collect();
    target.append_audit_unflushed(&AuditRow {
        seq: rec.seq,
        json: text,
        prev: &rec.prev,
        hash: &rec.hash,
        host_id: rec.entry.host_id.as_deref(),
        ips: &ips,
        serial: rec.entry.serial.as_deref(),
    })?;
    Ok(())
}

fn parse_record(seq: u64, json: &[u8]) -> Result<Record, AuditError> {
    serde_json::from_slice(json).map_err(|e| AuditError::Corrupt {
        seq,
        detail: e.to_string(),
    })
}

/// The audit trail over an [`AuditStore`]. The store is a trait object, not a type
/// parameter: the log is shared by the engine, the servers and the admin actions, which
/// then need not carry the backend's type, and a virtual call is nothing next to the
/// flush each append makes.
pub struct AuditLog {
    store: Arc<dyn AuditStore>,
    /// (next seq, hash of the last record). One writer at a time keeps the chain linear.
    head: Mutex<(u64, String)>,
}

/// How often an append re-reads the head after another writer appended first before it
/// gives up (each retry means another writer succeeded, so the log moves on meanwhile).
const APPEND_RETRIES: usize = 64;

/// (next seq, hash of the last record) as stored now.
fn read_head(store: &dyn AuditStore) -> Result<(u64, String), AuditError> {
    Ok(match store.last_audit_record()? {
        Some(last) => {
            let r = parse_record(u64::MAX, &last.json)?;
            (r.seq + 1, r.hash)
        }
        None => (0, String::new()),
    })
}

impl AuditLog {
    pub fn open(store: Arc<dyn AuditStore>) -> Result<Self, AuditError> {
        let head = read_head(store.as_ref())?;
        Ok(Self {
            store,
            head: Mutex::new(head),
        })
    }

    /// Seals and stores an event; durable when it returns.
    pub fn append(&self, kind: Kind, time: i64, entry: Entry) -> Result<Record, AuditError> {
        self.seal_and_store(kind, time, entry, true)
    }

    /// [`AuditLog::append`] without the flush, for bulk loads that call
    /// [`AuditLog::flush`] once at the end.
    pub fn append_unflushed(
        &self,
        kind: Kind,
        time: i64,
        entry: Entry,
    ) -> Result<Record, AuditError> {
        self.seal_and_store(kind, time, entry, false)
    }

    /// Makes every record appended so far durable.
    pub fn flush(&self) -> Result<(), AuditError> {
        Ok(self.store.flush_audit()?)
    }

    /// Seals the entry onto the cached head and stores it. The cache is only a guess when
    /// other processes append to the same store (several coordinators on one database):
    /// the store refuses a record that does not extend its head
    /// ([`StoreError::AuditConflict`]), and the entry is sealed again onto the head read
    /// back — so every writer's records join one chain in one total order.
    fn seal_and_store(
        &self,
        kind: Kind,
        time: i64,
        entry: Entry,
        durable: bool,
    ) -> Result<Record, AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let ips: Vec<[u8; 16]> = entry.identifiers.iter().map(|ip| ip_key(*ip)).collect();
        let mut attempt = 0;
        loop {
            let seq = head.0;
            let hash = seal(seq, time, kind, &entry, &head.1);
            let rec = Record {
                seq,
                time,
                kind,
                entry: entry.clone(),
                prev: head.1.clone(),
                hash: hash.clone(),
            };
            let json = serde_json::to_string(&rec).map_err(|e| AuditError::Corrupt {
                seq,
                detail: e.to_string(),
            })?;
            let row = AuditRow {
                seq,
                json: &json,
                prev: &rec.prev,
                hash: &rec.hash,
                host_id: rec.entry.host_id.as_deref(),
                ips: &ips,
                serial: rec.entry.serial.as_deref(),
            };
            // The store writes the record and its index entries together or not at all, so
            // an indexed query never misses a record.
            let stored = if durable {
                self.store.append_audit(&row)
            } else {
                self.store.append_audit_unflushed(&row)
            };
            match stored {
                Ok(()) => {
                    *head = (seq + 1, hash);
                    return Ok(rec);
                }
                Err(StoreError::AuditConflict { .. }) if attempt < APPEND_RETRIES => {
                    attempt += 1;
                    *head = read_head(self.store.as_ref())?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The number of records as this log last saw them (other writers on the same store
    /// may have appended since).
    pub fn len(&self) -> u64 {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, seq: u64) -> Result<Option<Record>, AuditError> {
        self.store
            .audit_record(seq)?
            .map(|v| parse_record(seq, &v))
            .transpose()
    }

    /// Sequence numbers a query can be narrowed to by an index, if any applies, in
    /// ascending order. Host and serial scans are lazy, so a limit stops them early.
    fn candidates(&self, q: &Query) -> Option<SeqIter<'_>> {
        if let Some(h) = &q.host_id {
            return Some(self.store.audit_seqs_by_host(h));
        }
        if let Some(s) = &q.serial {
            return Some(self.store.audit_seqs_by_serial(s));
        }
        let (lo, hi) = ip_block(q.network?);
        // Keys are ordered by address, then sequence: a block needs sorting.
        let seqs: Result<Vec<u64>, StoreError> = self.store.audit_seqs_by_ip(lo, hi).collect();
        Some(match seqs {
            Ok(mut seqs) => {
                seqs.sort_unstable();
                seqs.dedup();
                Box::new(seqs.into_iter().map(Ok))
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        })
    }

    /// The first sequence number whose record is at or after `time`, by bisection (records
    /// are appended in time order), moved back by a margin so that a clock that stepped
    /// backwards cannot hide a record; `matches()` then applies the exact bound.
    fn first_seq_from(&self, time: i64) -> Result<u64, AuditError> {
        let (mut lo, mut hi) = (0u64, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid)? {
                // Saturating: `time` comes from a query (any i64).
                Some(r) if r.time < time.saturating_sub(CLOCK_SLACK_SECS) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Records matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, AuditError> {
        let limit = q.limit.unwrap_or(usize::MAX);
        let start = match q.since {
            Some(t) => self.first_seq_from(t)?,
            None => 0,
        };
        let start = match q.after {
            Some(after) => start.max(after.saturating_add(1)),
            None => start,
        };
        let end = q.before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        match self.candidates(q) {
            Some(seqs) => {
                for seq in seqs {
                    let seq = seq?;
                    if seq >= end {
                        break;
                    }
                    if seq < start {
                        continue;
                    }
                    if let Some(r) = self.get(seq)? {
                        if q.matches(&r) {
                            out.push(r);
                            if out.len() >= limit {
                                break;
                            }
                        }
                    }
                }
            }
            None => {
                for stored in self.store.audit_records_from(start) {
                    let stored = stored?;
                    if stored.seq >= end {
                        break;
                    }
                    let r = parse_record(stored.seq, &stored.json)?;
                    if q.until
                        .is_some_and(|u| r.time >= u.saturating_add(CLOCK_SLACK_SECS))
                    {
                        break;
                    }
                    if q.matches(&r) {
                        out.push(r);
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Copies every record, byte for byte and with its index entries, into `target` (an
    /// empty store: `store migrate`); returns how many. The records are re-indexed from
    /// their own fields, so the copy answers the same queries. A record that no longer
    /// parses stops the copy (`verify()` first says where).
    pub fn copy_to(&self, target: &dyn AuditStore) -> Result<u64, AuditError> {
        let mut n = 0;
        for stored in self.store.audit_records_from(0) {
            let stored = stored?;
            append_copy(target, stored.seq, &stored.json)?;
            n += 1;
        }
        target.flush_audit()?;
        Ok(n)
    }

    /// The hash of the newest record ("" when empty), as this log last saw it.
    pub fn head_hash(&self) -> String {
        self.head
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Walks the whole chain; `Ok(None)` when every link holds.
    pub fn verify(&self) -> Result<Option<BrokenLink>, AuditError> {
        let mut prev = String::new();
        for (expected, stored) in (0u64..).zip(self.store.audit_records_from(0)) {
            let stored = stored?;
            let key_seq = stored.seq;
            let r: Record = match serde_json::from_slice(&stored.json) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Some(BrokenLink {
                        seq: key_seq,
                        reason: format!("unreadable: {e}"),
                    }))
                }
            };
            if key_seq != expected || r.seq != expected {
                return Ok(Some(BrokenLink {
                    seq: expected,
                    reason: format!(
                        "record {expected} is missing or out of place (found {})",
                        r.seq
                    ),
                }));
            }
            if r.prev != prev {
                return Ok(Some(BrokenLink {
                    seq: r.seq,
                    reason: "does not link to the previous record".into(),
                }));
            }
            if seal(r.seq, r.time, r.kind, &r.entry, &r.prev) != r.hash {
                return Ok(Some(BrokenLink {
                    seq: r.seq,
                    reason: "content does not match its hash (edited)".into(),
                }));
            }
            prev = r.hash;
        }
        Ok(None)
    }
}

mod page;
pub use page::Page;

#[cfg(test)]
mod tests;
