//! Durable state behind the [`Store`] and [`AuditStore`] traits; [`SledStore`] is the
//! default engine and implements both.
//!
//! Every write is flushed before the call returns (durable before acknowledged), except the
//! calls named `*_unflushed`. Records are JSON so that the store stays readable with a hex
//! dump and survives field additions (`#[serde(default)]` on new fields).
//!
//! The traits name no engine type: a second backend (PostgreSQL) implements the same
//! primitives, and everything above them — the engine's decisions, the audit log's hash
//! chain, its query matching and `verify()` — stays backend-independent.
//!
//! This module owns *what is stored*; it never talks to a CA or an agent.

pub mod backup;
pub mod cluster;
pub mod migrate;
pub mod pg;
mod sled;

pub use self::pg::{PgOptions, PgStore, PgSyncStore, PgTls};
pub use self::sled::SledStore;

use crate::model::{CertRecord, HostRecord, OperatorRecord};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::ratelimit::Budget;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, a transaction it could not run).
    #[error("store I/O failed: {0}")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored record {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
    /// A fenced write by a worker whose lease on the certificate expired or was taken
    /// over: nothing was written.
    #[error("the lease on certificate {cert} is no longer held by {holder} (it expired or another coordinator took it); nothing was written")]
    LeaseLost { cert: String, holder: String },
    /// Another writer stored audit record `seq` first (or the record no longer extends the
    /// head): the audit log re-reads the head and seals the record again.
    #[error("audit record {seq} was appended by another writer first")]
    AuditConflict { seq: u64 },
    /// The database was migrated by a newer coordinator.
    #[error(
        "the database schema is version {found}, newer than this coordinator knows \
         (version {known}): a newer certfleet-coordinator migrated it; run that version or a \
         later one"
    )]
    SchemaTooNew { found: i64, known: i64 },
}

/// An operator's "renew now" for one certificate, kept apart from the certificate's record:
/// a task that finishes with its older copy of the record cannot lose it (it did: a forced
/// renewal made while the first issuance's task was ending was overwritten). The engine
/// moves it into the record (`schedule.forced_by`) when it starts work on the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRequest {
    pub cert: CertId,
    /// Who asked (`operator:NAME`).
    pub by: String,
    /// When (unix seconds).
    pub at: i64,
    /// Tells this request from a later one for the same certificate.
    pub nonce: String,
}

/// The right to work on one certificate, until `until` (unix seconds on the store's
/// clock). `token` grows with every new lease on the certificate, so a holder whose lease
/// was taken over is told apart from the new one (fencing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub cert: CertId,
    /// Who holds it: a coordinator process (`Engine::node`).
    pub holder: String,
    pub token: u64,
    pub until: i64,
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
    #[error("join token was revoked; create a new one with `certfleet-coordinator token create`")]
    Revoked,
    /// This identity key enrolled with the token before, and that host has been removed
    /// since; carries its id, for the coordinator's log only.
    #[error(
        "this key already enrolled with this join token, and that host has since been \
         removed from the fleet; enroll again with a new token (`certfleet-coordinator token create`)"
    )]
    HostRemoved(String),
    /// The connection came from outside the token's `--cidr` blocks.
    #[error(
        "join token may only be used from {allowed}, and this enrollment came from {from}: \
         enroll from an allowed address, or create a token whose --cidr covers {from}"
    )]
    SourceNotAllowed { from: String, allowed: String },
    /// The agent asked for a label the token does not fix (or another value).
    #[error(
        "join token fixes this host's labels to {fixed}, and the agent asked for {key}={asked}: \
         enroll without that --label (the host gets the token's labels), or create a token \
         with --label {key}={asked}"
    )]
    LabelNotAllowed {
        key: String,
        asked: String,
        fixed: String,
    },
}

impl EnrollRefusal {
    /// The constraint that refused, as one word for the audit trail.
    pub fn constraint(&self) -> &'static str {
        match self {
            EnrollRefusal::UnknownToken => "unknown_token",
            EnrollRefusal::Expired(_) => "expiry",
            EnrollRefusal::AlreadyUsed(_) => "uses",
            EnrollRefusal::Revoked => "revoked",
            EnrollRefusal::HostRemoved(_) => "removed",
            EnrollRefusal::SourceNotAllowed { .. } => "cidr",
            EnrollRefusal::LabelNotAllowed { .. } => "labels",
        }
    }
}

/// What [`Store::enroll`] did.
#[derive(Debug, Clone)]
pub enum Enrolled {
    /// A new host, recorded; one use of the token taken.
    New(HostRecord),
    /// The same identity key enrolled with this token before (a retry whose reply was
    /// lost): the host as stored; nothing written, no use taken.
    Repeat(HostRecord),
}

impl Enrolled {
    pub fn host(&self) -> &HostRecord {
        match self {
            Enrolled::New(h) | Enrolled::Repeat(h) => h,
        }
    }
    pub fn into_host(self) -> HostRecord {
        match self {
            Enrolled::New(h) | Enrolled::Repeat(h) => h,
        }
    }
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
    /// Source addresses allowed to enroll with it (none: any). Absent from records
    /// written before tokens had constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<ipnet::IpNet>,
    /// The labels a host enrolled with it gets, exactly; an agent asking for any other
    /// label (or value) is refused. `None`: the agent's own labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// The identity keys enrolled with it (SHA-256 of the SPKI, [`crate::tokens::key_sha256`])
    /// and the host each became: the same key again is that host again, not a new use.
    /// Absent from records written before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, HostId>,
}

/// The coordinator's durable state.
pub trait Store: cluster::ClusterStore + Send + Sync + 'static {
    /// The sled store itself, for what only sled needs (`store backup`: PostgreSQL is
    /// backed up by pg_dump).
    fn as_sled(&self) -> Option<&SledStore> {
        None
    }

    fn account(&self, issuer: &str) -> Result<Option<AccountRecord>, StoreError>;
    fn put_account(&self, issuer: &str, rec: &AccountRecord) -> Result<(), StoreError>;
    fn delete_account(&self, issuer: &str) -> Result<(), StoreError>;

    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError>;
    /// Every token record with its hash.
    fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError>;
    /// Up to `limit` token records whose hash sorts after `after` (byte order), in that
    /// order: one page of a listing, the cursor being the last hash of the page before.
    fn tokens_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError>;
    /// Atomically: check the token ([`TokenRecord::admit`]: uses, expiry, revocation,
    /// `source` against its CIDRs, the host's labels against the ones it fixes), consume
    /// one use, and record the host with the labels the token gives it
    /// ([`Enrolled::New`], the host as recorded). When the host's identity key enrolled
    /// with this token before: that host as stored ([`Enrolled::Repeat`], nothing
    /// written), refused when it was removed or has another key since
    /// ([`crate::tokens::resolve_repeat`]).
    fn enroll(
        &self,
        token_hash: &str,
        now: i64,
        source: Option<IpAddr>,
        host: &HostRecord,
    ) -> Result<Enrolled, EnrollError>;

    fn host(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError>;
    fn put_host(&self, rec: &HostRecord) -> Result<(), StoreError>;
    /// [`Store::put_host`] without waiting for the disk, for what the host's next Hello
    /// says again (addresses, targets, inventory, last seen): a crash loses at most the
    /// last half second of them, and the agent's reconnect rewrites them. A flush per
    /// Hello made a reconnect storm of 10,000 agents wait on 10,000 fsyncs in a row.
    fn put_host_unflushed(&self, rec: &HostRecord) -> Result<(), StoreError> {
        self.put_host(rec)
    }
    fn delete_host(&self, id: &HostId) -> Result<(), StoreError>;
    /// Removes a certificate record with its index entries.
    fn delete_cert(&self, rec: &CertRecord) -> Result<(), StoreError>;
    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    /// Up to `limit` hosts whose id sorts after `after` (byte order), in that order. Reads
    /// only that range, so pages stay stable (nothing skipped or repeated) while hosts are
    /// added or removed elsewhere in the range.
    fn hosts_page(
        &self,
        after: Option<&HostId>,
        limit: usize,
    ) -> Result<Vec<HostRecord>, StoreError>;

    fn cert(&self, id: &CertId) -> Result<Option<CertRecord>, StoreError>;
    /// Writes the record and moves its entry in the next-action index, atomically.
    fn put_cert(&self, rec: &CertRecord) -> Result<(), StoreError>;
    /// [`Store::put_cert`] without the flush, for leases whose loss a restart repairs.
    fn put_cert_unflushed(&self, rec: &CertRecord) -> Result<(), StoreError>;
    fn certs(&self) -> Result<Vec<CertRecord>, StoreError>;
    /// Up to `limit` certificates whose id sorts after `after` (byte order), in that order
    /// (as [`Store::hosts_page`]).
    fn certs_page(
        &self,
        after: Option<&CertId>,
        limit: usize,
    ) -> Result<Vec<CertRecord>, StoreError>;
    /// Visits every certificate without holding them all in memory.
    fn scan_certs(
        &self,
        f: &mut dyn FnMut(CertRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    fn certs_for_host(&self, host: &HostId) -> Result<Vec<CertRecord>, StoreError>;
    /// The certificates (one per member host) of a key group, kept in step by `put_cert`
    /// in the same transaction.
    fn certs_in_group(&self, group: &str) -> Result<Vec<CertRecord>, StoreError>;
    /// Takes the lease on `cert` for `holder` for `secs` seconds when it is free, expired,
    /// or `holder`'s already (then it is extended, same token). `now` is the caller's
    /// clock; a backend with a clock of its own (a database shared by several
    /// coordinators) measures with that instead. `None`: someone else holds it.
    fn take_lease(
        &self,
        cert: &CertId,
        holder: &str,
        now: i64,
        secs: i64,
    ) -> Result<Option<Lease>, StoreError>;
    /// Gives the lease back (nothing when it is no longer `lease`'s).
    fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    /// [`Store::put_cert`] only while `lease` is still held at `now` (same holder and
    /// token, not expired), checked in the same transaction: otherwise
    /// [`StoreError::LeaseLost`] and nothing is written.
    fn put_cert_fenced(&self, rec: &CertRecord, lease: &Lease, now: i64) -> Result<(), StoreError>;
    /// Records `req`, replacing an earlier request for the same certificate.
    fn request_renewal(&self, req: &RenewalRequest) -> Result<(), StoreError>;
    /// The pending renewal request for `cert`.
    fn renewal_request(&self, cert: &CertId) -> Result<Option<RenewalRequest>, StoreError>;
    /// Every pending renewal request (few: operators make them), oldest first.
    fn renewal_requests(&self) -> Result<Vec<RenewalRequest>, StoreError>;
    /// Removes `req` if it is still the pending one: a request made since stays.
    fn clear_renewal_request(&self, req: &RenewalRequest) -> Result<(), StoreError>;
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

    /// The named operator, if any (revoked ones included).
    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError>;
    /// Every operator, by name.
    fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError>;
    /// Stores `rec` only while the stored record of `rec.name` is at generation `expected`
    /// (`None`: there is none), atomically; `false` and nothing written otherwise (another
    /// writer came first: read again and decide again).
    fn put_operator(&self, rec: &OperatorRecord, expected: Option<u64>)
        -> Result<bool, StoreError>;
}

/// One sealed audit record as handed to [`AuditStore::append_audit`]: the record's JSON
/// and the values it is indexed by. The store neither parses nor checks the JSON; sealing
/// and the chain are `crate::audit`'s.
#[derive(Debug, Clone, Copy)]
pub struct AuditRow<'a> {
    /// The record's sequence number: the key (a SQL backend's primary key).
    pub seq: u64,
    /// The sealed record, as JSON text.
    pub json: &'a str,
    /// The hash of the record it extends ("" for the first): a backend may refuse a row
    /// that does not extend its current head ([`StoreError::AuditConflict`]).
    pub prev: &'a str,
    /// This record's hash.
    pub hash: &'a str,
    /// Index by host (exact match).
    pub host_id: Option<&'a str>,
    /// Index by address: each identifier as 16 bytes (IPv4 as IPv4-mapped IPv6), so an
    /// address block is one range of keys.
    pub ips: &'a [[u8; 16]],
    /// Index by certificate serial (exact match).
    pub serial: Option<&'a str>,
}

/// An audit record as read back: raw, so that `verify()` can report one that no longer
/// parses, or one stored under another sequence number than it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuditRecord {
    /// The key it is stored under; `u64::MAX` (never a real sequence number) when the key
    /// itself is not a sequence number.
    pub seq: u64,
    /// The JSON as stored (not checked to be UTF-8 or JSON).
    pub json: Vec<u8>,
}

/// A lazy sequence of sequence numbers from an index.
pub type SeqIter<'a> = Box<dyn Iterator<Item = Result<u64, StoreError>> + 'a>;
/// A lazy sequence of stored audit records.
pub type AuditRecordIter<'a> = Box<dyn Iterator<Item = Result<StoredAuditRecord, StoreError>> + 'a>;

/// The persistence the audit log needs: append-only records keyed by sequence number, and
/// three secondary indexes. A row per record with the sequence number as primary key and
/// the JSON as text, plus one index table per lookup, is enough to implement it.
pub trait AuditStore: Send + Sync + 'static {
    /// Stores the record and its index entries atomically (all or nothing, so an indexed
    /// query never misses a record); durable when it returns. A record already stored
    /// under `row.seq` is never replaced: that is [`StoreError::AuditConflict`] (another
    /// writer got there first), as is, where the backend checks it, a `prev` that is not
    /// the hash of record `seq - 1`.
    fn append_audit(&self, row: &AuditRow<'_>) -> Result<(), StoreError>;
    /// [`AuditStore::append_audit`] without making it durable, for bulk loads that call
    /// [`AuditStore::flush_audit`] once at the end.
    fn append_audit_unflushed(&self, row: &AuditRow<'_>) -> Result<(), StoreError>;
    /// Makes every earlier append durable.
    fn flush_audit(&self) -> Result<(), StoreError>;

    /// The record stored under `seq`, raw.
    fn audit_record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// The record with the highest sequence number.
    fn last_audit_record(&self) -> Result<Option<StoredAuditRecord>, StoreError>;
    /// Every record from sequence number `from` on, in ascending order of sequence number.
    fn audit_records_from(&self, from: u64) -> AuditRecordIter<'_>;
    /// At most `limit` records with a sequence number below `before`, newest first: one
    /// bounded read for paging backwards through the trail (the web view's audit pages).
    fn audit_records_before(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredAuditRecord>, StoreError>;

    /// Sequence numbers of the records indexed under this host id, ascending, lazily (a
    /// query with a limit stops reading early).
    fn audit_seqs_by_host(&self, host_id: &str) -> SeqIter<'_>;
    /// Sequence numbers of the records indexed under this serial, ascending, lazily.
    fn audit_seqs_by_serial(&self, serial: &str) -> SeqIter<'_>;
    /// Sequence numbers of the records with an address whose 16-byte key (see
    /// [`AuditRow::ips`]) is in `lo..=hi`, in any order and possibly repeated.
    fn audit_seqs_by_ip(&self, lo: [u8; 16], hi: [u8; 16]) -> SeqIter<'_>;

    /// Replaces the stored bytes of record `seq` as they are, without touching the index
    /// or the chain: only tests use it, to prove that `verify()` catches tampering.
    #[cfg(any(test, feature = "test-support"))]
    fn overwrite_audit_record_for_test(&self, seq: u64, json: &[u8]) -> Result<(), StoreError>;
    /// Removes record `seq` without touching the index: test only, like the above.
    #[cfg(any(test, feature = "test-support"))]
    fn remove_audit_record_for_test(&self, seq: u64) -> Result<(), StoreError>;
}
