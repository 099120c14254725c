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
    pub network: Option<(IpAddr, u8)>,
    pub serial: Option<String>,
    /// A name, or every name below a zone (`*.zone`).
    pub name: Option<NamePattern>,
    pub kinds: Vec<Kind>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<usize>,
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
            && self.network.is_none_or(|(net, len)| {
                r.entry
                    .identifiers
                    .iter()
                    .any(|ip| in_network(*ip, net, len))
            })
    }
}

/// Parses "203.0.113.7", "203.0.113.0/24", "2001:db8::/32".
pub fn parse_network(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        None => max,
    };
    Ok((ip, len))
}

fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    if ip.is_ipv4() != net.is_ipv4() {
        return false;
    }
    let mask = prefix_mask(net, len);
    (u128::from_be_bytes(ip_key(ip)) & mask) == (u128::from_be_bytes(ip_key(net)) & mask)
}

/// The mask of a block over the 16-byte key of [`ip_key`].
fn prefix_mask(net: IpAddr, len: u8) -> u128 {
    let bits = if net.is_ipv4() {
        len as u32 + 96
    } else {
        len as u32
    };
    if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    }
}

/// The first and last 16-byte keys of a block, for the IP index's range scan.
fn ip_block(net: IpAddr, len: u8) -> ([u8; 16], [u8; 16]) {
    let mask = prefix_mask(net, len);
    let lo = u128::from_be_bytes(ip_key(net)) & mask;
    (lo.to_be_bytes(), (lo | !mask).to_be_bytes())
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

impl AuditLog {
    pub fn open(store: Arc<dyn AuditStore>) -> Result<Self, AuditError> {
        let head = match store.last_audit_record()? {
            Some(last) => {
                let r = parse_record(u64::MAX, &last.json)?;
                (r.seq + 1, r.hash)
            }
            None => (0, String::new()),
        };
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

    fn seal_and_store(
        &self,
        kind: Kind,
        time: i64,
        entry: Entry,
        durable: bool,
    ) -> Result<Record, AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let seq = head.0;
        let hash = seal(seq, time, kind, &entry, &head.1);
        let rec = Record {
            seq,
            time,
            kind,
            entry,
            prev: head.1.clone(),
            hash: hash.clone(),
        };
        let json = serde_json::to_string(&rec).map_err(|e| AuditError::Corrupt {
            seq,
            detail: e.to_string(),
        })?;
        let ips: Vec<[u8; 16]> = rec.entry.identifiers.iter().map(|ip| ip_key(*ip)).collect();
        let row = AuditRow {
            seq,
            json: &json,
            host_id: rec.entry.host_id.as_deref(),
            ips: &ips,
            serial: rec.entry.serial.as_deref(),
        };
        // The store writes the record and its index entries together or not at all, so an
        // indexed query never misses a record.
        if durable {
            self.store.append_audit(&row)?;
        } else {
            self.store.append_audit_unflushed(&row)?;
        }
        *head = (seq + 1, hash);
        Ok(rec)
    }

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
        let (net, len) = q.network?;
        let (lo, hi) = ip_block(net, len);
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
        let mut out = Vec::new();
        match self.candidates(q) {
            Some(seqs) => {
                for seq in seqs {
                    let seq = seq?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn open(dir: &tempfile::TempDir) -> (Arc<SledStore>, AuditLog) {
        let store = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let log = AuditLog::open(store.clone()).unwrap();
        (store, log)
    }

    fn log() -> (tempfile::TempDir, Arc<SledStore>, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = open(&dir);
        (dir, store, log)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Names go into their own field (absent when none, so IP-only records hash as before)
    /// and are found by exact name or by zone.
    #[test]
    fn names_are_recorded_and_found_by_name_or_zone() {
        let (_d, _s, log) = log();
        let ids = |v: &[&str]| {
            v.iter()
                .map(|s| Identifier::parse(s).unwrap())
                .collect::<Vec<_>>()
        };
        let only_ip = log
            .append(
                Kind::OrderCreated,
                1,
                Entry::by("c").ids(&ids(&["192.0.2.1"])),
            )
            .unwrap();
        assert!(!serde_json::to_string(&only_ip).unwrap().contains("names"));
        log.append(
            Kind::OrderCreated,
            2,
            Entry::by("c").ids(&ids(&["192.0.2.1", "api.example.net"])),
        )
        .unwrap();
        log.append(
            Kind::OrderCreated,
            3,
            Entry::by("c").ids(&ids(&["a.b.example.net"])),
        )
        .unwrap();
        log.append(
            Kind::OrderCreated,
            4,
            Entry::by("c").ids(&ids(&["example.org"])),
        )
        .unwrap();
        let find = |n: &str| -> Vec<u64> {
            let q = Query {
                name: Some(NamePattern::parse(n).unwrap()),
                ..Query::default()
            };
            log.query(&q).unwrap().iter().map(|r| r.seq).collect()
        };
        assert_eq!(find("api.example.net"), vec![1]);
        assert_eq!(find("*.example.net"), vec![1, 2]);
        assert_eq!(find("*.b.example.net"), vec![2]);
        assert_eq!(find("example.org"), vec![3]);
        assert_eq!(log.verify().unwrap(), None);
    }

    #[test]
    fn chain_verifies_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_store, log) = open(&dir);
            log.append(Kind::TokenCreated, 1, Entry::by("operator:ops"))
                .unwrap();
            log.append(Kind::HostEnrolled, 2, Entry::by("host:h-1").host("h-1"))
                .unwrap();
        }
        let (_store, log) = open(&dir);
        let r = log
            .append(
                Kind::CertificateIssued,
                3,
                Entry::by("coordinator").host("h-1").serial("0a"),
            )
            .unwrap();
        assert_eq!(r.seq, 2);
        assert_eq!(log.verify().unwrap(), None);
    }

    #[test]
    fn edits_removals_and_reorders_are_caught() {
        let (_d, store, log) = log();
        for i in 0..5 {
            log.append(
                Kind::OrderCreated,
                i,
                Entry::by("coordinator").detail("n", i),
            )
            .unwrap();
        }
        // Edit record 2's content, keeping its hash.
        let mut r = log.get(2).unwrap().unwrap();
        r.entry.actor = "someone-else".into();
        store
            .overwrite_audit_record_for_test(2, &serde_json::to_vec(&r).unwrap())
            .unwrap();
        assert_eq!(log.verify().unwrap().map(|b| b.seq), Some(2));
        // Re-seal the edited record: the next link breaks instead.
        r.hash = seal(r.seq, r.time, r.kind, &r.entry, &r.prev);
        store
            .overwrite_audit_record_for_test(2, &serde_json::to_vec(&r).unwrap())
            .unwrap();
        assert_eq!(log.verify().unwrap().map(|b| b.seq), Some(3));
        // Remove a record.
        let (_d2, store2, log2) = self::log();
        for i in 0..3 {
            log2.append(Kind::OrderCreated, i, Entry::by("c")).unwrap();
        }
        store2.remove_audit_record_for_test(1).unwrap();
        assert_eq!(log2.verify().unwrap().map(|b| b.seq), Some(1));
    }

    #[test]
    fn unreadable_and_misplaced_records_are_named() {
        let (_d, store, log) = log();
        for i in 0..4 {
            log.append(Kind::OrderCreated, i, Entry::by("c")).unwrap();
        }
        let third = store.audit_record(3).unwrap().unwrap();
        // Record 3's bytes under key 1: in the wrong place.
        store.overwrite_audit_record_for_test(1, &third).unwrap();
        let broken = log.verify().unwrap().unwrap();
        assert_eq!(broken.seq, 1);
        assert!(
            broken.reason.contains("out of place (found 3)"),
            "{broken:?}"
        );
        // Garbage under key 0: unreadable, and a query over it says which record.
        store
            .overwrite_audit_record_for_test(0, b"\xffnot json")
            .unwrap();
        let broken = log.verify().unwrap().unwrap();
        assert_eq!(broken.seq, 0);
        assert!(broken.reason.starts_with("unreadable"), "{broken:?}");
        assert!(matches!(
            log.query(&Query::default()),
            Err(AuditError::Corrupt { seq: 0, .. })
        ));
    }

    #[test]
    fn time_range_queries_bisect_and_keep_exact_bounds() {
        let (_d, _store, log) = log();
        for t in 0..500i64 {
            log.append_unflushed(Kind::OrderCreated, t * 100, Entry::by("c"))
                .unwrap();
        }
        let q = |since, until| {
            log.query(&Query {
                since,
                until,
                ..Default::default()
            })
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>()
        };
        assert_eq!(q(Some(10_000), Some(10_300)), vec![100, 101, 102]);
        assert_eq!(q(Some(0), Some(250)), vec![0, 1, 2]);
        assert_eq!(q(None, None).len(), 500);
        assert!(q(Some(1_000_000), None).is_empty());
        // A query stops at its limit.
        let limited = log
            .query(&Query {
                kinds: vec![Kind::OrderCreated],
                limit: Some(3),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            limited.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn extreme_time_bounds_neither_overflow_nor_hide_records() {
        // Found by the coordinator_admin fuzz target: `since - slack` and `until + slack`
        // overflowed (a panic with overflow checks, wrong results without).
        let (_d, _store, log) = log();
        for t in [i64::MIN, 0, i64::MAX] {
            log.append_unflushed(Kind::OrderCreated, t, Entry::by("c"))
                .unwrap();
        }
        let q = |since, until| {
            log.query(&Query {
                since,
                until,
                ..Default::default()
            })
            .unwrap()
            .len()
        };
        assert_eq!(q(Some(i64::MIN), None), 3);
        assert_eq!(q(None, Some(i64::MAX)), 2);
        assert_eq!(q(Some(i64::MIN), Some(i64::MAX)), 2);
        assert_eq!(q(Some(i64::MAX), None), 1);
        assert_eq!(q(None, Some(i64::MIN)), 0);
    }

    #[test]
    fn queries_use_host_cidr_serial_kind_and_time() {
        let (_d, _store, log) = log();
        log.append(
            Kind::CertificateIssued,
            10,
            Entry::by("c")
                .host("h-a")
                .ips(&[ip("203.0.113.5")])
                .serial("01"),
        )
        .unwrap();
        log.append(
            Kind::CertificateIssued,
            20,
            Entry::by("c")
                .host("h-b")
                .ips(&[ip("198.51.100.9"), ip("2001:db8::9")])
                .serial("02"),
        )
        .unwrap();
        log.append(
            Kind::CertificateInstalled,
            30,
            Entry::by("c")
                .host("h-a")
                .ips(&[ip("203.0.113.5")])
                .serial("01"),
        )
        .unwrap();
        let q = |q: Query| {
            log.query(&q)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            q(Query {
                host_id: Some("h-a".into()),
                ..Default::default()
            }),
            vec![0, 2]
        );
        assert_eq!(
            q(Query {
                network: Some(parse_network("203.0.113.0/24").unwrap()),
                ..Default::default()
            }),
            vec![0, 2]
        );
        assert_eq!(
            q(Query {
                network: Some(parse_network("2001:db8::/32").unwrap()),
                ..Default::default()
            }),
            vec![1]
        );
        assert_eq!(
            q(Query {
                network: Some(parse_network("198.51.100.9").unwrap()),
                ..Default::default()
            }),
            vec![1]
        );
        assert_eq!(
            q(Query {
                serial: Some("01".into()),
                kinds: vec![Kind::CertificateInstalled],
                ..Default::default()
            }),
            vec![2]
        );
        assert_eq!(
            q(Query {
                since: Some(15),
                until: Some(30),
                ..Default::default()
            }),
            vec![1]
        );
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("nope").is_err());
    }
}
