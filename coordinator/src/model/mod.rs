//! The coordinator's model: hosts and their certificates — desired (the [`CertSpec`]),
//! observed (the certificate we have, what the host installed and serves, the order in
//! flight, the CA's renewal window) and scheduled (next action, attempts). Plain data: the
//! store persists it, the spec and the engine compute it; this module depends on neither.

use crate::config::{ChallengeKind, KeyTypeName, DEFAULT_CERT};
use certfleet_shared::identifier::Identifier;
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::renewal::{self, RenewReason, Validity};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

mod legacy;
mod operator;

pub use operator::{OperatorRecord, Role};

/// What the certificate should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSpec {
    /// Policy that produced it (`None`: the default spec).
    pub policy: Option<String>,
    /// The certificate's name in the policy (`default` when the policy lists none); one
    /// record per host and name.
    #[serde(default = "default_cert_name")]
    pub name: String,
    /// IP addresses and DNS names, canonical and sorted.
    pub identifiers: Vec<Identifier>,
    /// Challenge types in the order they are tried (empty: HTTP-01, then TLS-ALPN-01).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<ChallengeKind>,
    pub issuer: String,
    /// Issuers to fall back to, in order, when `issuer` fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_issuers: Vec<String>,
    /// A profile the certificate must have; `None` means the issuer's default
    /// (`ip_profile` when the CA offers it, else none).
    pub required_profile: Option<String>,
    pub key_type: KeyTypeName,
    /// Agent targets it is installed into, in order (records from before several targets
    /// were possible stored one, as `target`).
    #[serde(alias = "target", deserialize_with = "one_or_many")]
    pub targets: Vec<String>,
    /// The key group (`key_group` in the policy's certificate): every host given this
    /// certificate serves one certificate and one key, made by one member and sealed to
    /// each other member's identity key. `None`: the host's own key (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_group: Option<String>,
}

fn default_cert_name() -> String {
    DEFAULT_CERT.to_owned()
}

/// A list, or (as older records stored it) a single string.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl CertSpec {
    /// Challenge types in the order they are tried.
    pub fn challenge_order(&self) -> Vec<ChallengeKind> {
        if self.challenges.is_empty() {
            ChallengeKind::default_order()
        } else {
            self.challenges.clone()
        }
    }

    /// The IP addresses among the identifiers.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.identifiers
            .iter()
            .filter_map(Identifier::as_ip)
            .collect()
    }

    /// Every issuer this certificate may come from, preferred first.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.issuer.as_str())
            .chain(self.fallback_issuers.iter().map(String::as_str))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstalledRecord {
    pub target: String,
    pub serial: String,
    pub not_after: i64,
    pub identifiers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: HostId,
    pub hostname: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub enrolled: i64,
    #[serde(default)]
    pub enrolled_from: String,
    /// Serial of the host's current identity certificate (enrollment, then rotations).
    pub identity_serial: String,
    /// SubjectPublicKeyInfo (DER, hex) of the host's current identity certificate: set at
    /// enrollment and rotation, and from the certificate each session presents. Key groups
    /// seal the group's key to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_spki: Option<String>,
    #[serde(default)]
    pub identity_not_after: Option<i64>,
    #[serde(default)]
    pub identity_rotated: Option<i64>,
    /// Addresses from the agent's last Hello.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub last_seen: Option<i64>,
    #[serde(default)]
    pub inventory: Vec<InstalledRecord>,
    /// Names the agent asks for (its own config); the policy's `allowed_names` decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requested_names: Vec<String>,
    /// Key groups the agent's own config lets it take part in (Hello).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_groups: Vec<String>,
    /// Challenge modes the agent offers, e.g. "http-01/standalone", "tls-alpn-01/loopback".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenge_modes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// Wanted, nothing ordered yet (or waiting for the agent).
    Pending,
    /// An order is in flight.
    Ordering,
    /// The CA issued it; not yet confirmed installed.
    Issued,
    /// The agent installed it and ran the reload (not seen served: no check configured,
    /// or not checked yet).
    Installed,
    /// The agent saw the new certificate presented on every verify address.
    Served,
    /// The last attempt failed; see `last_error` and `next_attempt`.
    Failed,
    /// An address of the host is held by another enrolled host: nothing is ordered until
    /// it is released (see `blocked`).
    Conflict,
    /// The host claims an address its policy does not allow (`allowed_ips`).
    Refused,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Pending => "pending",
            CertState::Ordering => "ordering",
            CertState::Issued => "issued",
            CertState::Installed => "installed",
            CertState::Served => "served",
            CertState::Failed => "failed",
            CertState::Conflict => "conflict",
            CertState::Refused => "refused",
        }
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IssuedCert {
    pub identifiers: Vec<Identifier>,
    pub issuer: String,
    pub profile: Option<String>,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Leaf first, PEM. Public material only.
    pub chain_pem: String,
    /// RFC 9773 certificate identifier (`base64url(AKI).base64url(serial)`).
    pub ari_id: Option<String>,
    /// Random draw fixed at issuance for the lifetime-based renewal jitter.
    pub renew_unit: f64,
    pub issued_at: i64,
    /// Which challenge type proved each identifier (empty for certificates issued before
    /// this was recorded).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub validated_by: BTreeMap<String, ChallengeKind>,
}

/// An order that was created and not yet finished: resumed after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderInFlight {
    pub url: String,
    pub issuer: String,
    pub identifiers: Vec<Identifier>,
    pub profile: Option<String>,
    pub replaces: Option<String>,
    pub reason: String,
    pub started: i64,
    /// The challenges were announced to the CA (stored before announcing). A resumed order
    /// that was announced before keeps its challenges served for a grace period after
    /// validation, in case the CA runs a second validation.
    #[serde(default)]
    pub challenges_announced: bool,
    /// Tokens of every challenge handed to the agent for this order (stored before it is
    /// asked to serve them): whatever a crash interrupted is cleared when the order goes
    /// on or ends, so no listener is left bound.
    #[serde(default)]
    pub presented: Vec<String>,
    /// Which challenge type proved each identifier, as validations succeed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub validated_by: BTreeMap<String, ChallengeKind>,
    /// The challenge type this order answers (`None`: stored before the type was
    /// recorded, when every order was HTTP-01). A resumed order keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<ChallengeKind>,
    /// DNS-01: the TXT records written for this order (stored before they are written),
    /// so they are removed on every path, after a crash too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_records: Option<crate::dns::PresentedSet>,
    /// The order is in the audit (`order_created`) and the rate-limit budget. Stored false
    /// with the URL right after the CA answered (so a crash resumes the order rather than
    /// ordering again), true once recorded; a resumed order not recorded yet is recorded
    /// then (unless the audit already has it). Records from before the field: recorded.
    #[serde(default = "yes")]
    pub recorded: bool,
}

fn yes() -> bool {
    true
}

impl OrderInFlight {
    /// The challenge type the order answers.
    pub fn challenge_kind(&self) -> ChallengeKind {
        self.challenge.unwrap_or(ChallengeKind::Http01)
    }
}

/// Why nothing may be ordered for a certificate until something changes on the
/// coordinator's side (an address is released, the policy changes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Blocked {
    pub state: BlockedState,
    /// The addresses concerned.
    pub ips: Vec<IpAddr>,
    /// The names concerned (a name the policy does not allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The host holding them (conflict).
    pub held_by: Option<HostId>,
    /// For the operator: what is wrong and how to fix it.
    pub reason: String,
    pub since: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockedState {
    Conflict,
    Refused,
}

/// The CA's suggested renewal window (RFC 9773) and our draw inside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AriState {
    pub start: i64,
    pub end: i64,
    /// When we renew: drawn uniformly inside the window once per window.
    pub renew_at: i64,
    pub next_check: i64,
    pub explanation_url: Option<String>,
}

/// One certificate of one host, in three parts (the shape neon's storage controller uses):
/// what it should be ([`CertSpec`], the intent), what we know of it ([`Observed`]) and when
/// the reconciler looks at it next ([`Schedule`]). `state` summarises the three for people.
///
/// Stored as JSON with the three parts nested; records written before the split (one flat
/// object) still load (see `legacy.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "legacy::StoredCertRecord")]
pub struct CertRecord {
    pub id: CertId,
    pub host_id: HostId,
    /// Desired: what the certificate should be.
    pub spec: CertSpec,
    pub state: CertState,
    pub observed: Observed,
    pub schedule: Schedule,
    pub updated: i64,
}

/// What we know: the certificate we have, what the host installed and serves, the order in
/// flight, the CA's renewal window, the keys seen, what blocks ordering.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observed {
    /// The certificate we have.
    pub current: Option<IssuedCert>,
    pub order: Option<OrderInFlight>,
    /// URL of the most recent order, finished or not (for the operator and the audit trail).
    #[serde(default)]
    pub last_order_url: Option<String>,
    /// The serial the agent reports installed in every target of the spec.
    pub installed_serial: Option<String>,
    /// Per target: the serial the agent reports installed there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub installed_in: BTreeMap<String, String>,
    /// The serial the host's served check saw on every verify address of every target.
    #[serde(default)]
    pub served_serial: Option<String>,
    /// Per target: the serial its served check saw.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub served_in: BTreeMap<String, String>,
    /// Targets that have no verify addresses (installed is as far as they are checked).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unverified: BTreeSet<String>,
    #[serde(default)]
    pub served_on: Vec<String>,
    #[serde(default)]
    pub served_at: Option<i64>,
    /// The host's target has no verify addresses: installed is as far as anyone checks.
    #[serde(default)]
    pub verify_disabled: bool,
    /// The CA's renewal window, when it has one.
    pub ari: Option<AriState>,
    /// Serial of the certificate an operator revoked, until its replacement is issued: a
    /// task that ran meanwhile must not bring the revoked certificate back.
    #[serde(default)]
    pub revoked_serial: Option<String>,
    /// SHA-256 (hex) of the public keys of the CSRs accepted for this certificate, newest
    /// last (at most [`KEY_HISTORY`]): a CSR whose key is here is stale and refused.
    #[serde(default)]
    pub key_history: Vec<String>,
    /// Set while an address conflict or a policy refusal keeps this certificate from being
    /// ordered.
    #[serde(default)]
    pub blocked: Option<Blocked>,
    /// Challenge tokens still served on the host, to clear once their time has passed: a
    /// resumed order whose challenges were announced before a crash keeps them served a
    /// while, in case the CA runs a second validation of the earlier announcement. Stored,
    /// so another crash cannot leave the listener bound.
    #[serde(default)]
    pub deferred_clear: Option<DeferredClear>,
    /// DNS-01 records whose removal failed (the provider erred or was unreachable): tried
    /// again at every run of this certificate, which comes back soon while any are left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_cleanup: Vec<crate::dns::PresentedSet>,
    /// Key groups: SHA-256 (hex) of the public key of the group key this host holds —
    /// made here for an order, or sealed to it by another member and imported. A member
    /// whose value differs from the current certificate's key gets the key before installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_key: Option<String>,
    /// Key groups: a serial of the group whose key no member holds any more; this member
    /// never takes it again (it orders a new certificate for the group instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_key_lost: Option<String>,
}

impl Observed {
    /// Whether `target` has `serial` in place and, where it checks, served.
    pub fn done_in(&self, target: &str, serial: &str) -> bool {
        let has = |m: &BTreeMap<String, String>| m.get(target).is_some_and(|s| s == serial);
        has(&self.installed_in) && (self.unverified.contains(target) || has(&self.served_in))
    }

    /// Recomputes the summary (`installed_serial`, `served_serial`, `verify_disabled`) from
    /// the per-target facts: installed when every target has the serial, served when every
    /// target that checks saw it, verify disabled when no target checks.
    pub fn summarise(&mut self, targets: &[String]) {
        self.installed_serial = same_everywhere(targets.iter(), &self.installed_in);
        let verified: Vec<&String> = targets
            .iter()
            .filter(|t| !self.unverified.contains(*t))
            .collect();
        self.verify_disabled = !targets.is_empty() && verified.is_empty();
        self.served_serial = same_everywhere(verified.into_iter(), &self.served_in);
    }
}

/// The serial every one of `targets` has (none when they differ, one lacks it, or there
/// are no targets).
fn same_everywhere<'a>(
    mut targets: impl Iterator<Item = &'a String>,
    serials: &BTreeMap<String, String>,
) -> Option<String> {
    let first = serials.get(targets.next()?)?;
    targets
        .all(|t| serials.get(t) == Some(first))
        .then(|| first.clone())
}

/// When and why the reconciler looks at the certificate next, and what the attempts so far
/// taught it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Schedule {
    /// When the reconciler looks at this certificate next (the schedule index key).
    pub next_action: Option<i64>,
    pub next_reason: Option<String>,
    pub last_error: Option<String>,
    /// Failed attempts in a row; drives the backoff.
    #[serde(default)]
    pub attempts: u32,
    /// Immediate retries spent on transient protocol hiccups (badNonce, a forgotten
    /// account); kept apart from `attempts`, which drives the backoff.
    #[serde(default)]
    pub quick_retries: u32,
    /// Which of the spec's issuers the next order goes to (0 = the preferred one).
    #[serde(default)]
    pub issuer_index: usize,
    /// Which of the spec's challenge types the next order uses (0 = the first listed the
    /// agent offers); moves on when a validation fails.
    #[serde(default)]
    pub challenge_index: usize,
    /// When the CA's renewal window is unknown: the next time to ask for it.
    #[serde(default)]
    pub ari_retry_at: Option<i64>,
    /// The at-risk moment has been reported (audited once per certificate).
    #[serde(default)]
    pub at_risk: bool,
    /// Operator who forced a renewal that has not happened yet.
    pub forced_by: Option<String>,
    #[serde(default)]
    pub renewals: u32,
    pub last_renewal_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeferredClear {
    pub at: i64,
    pub tokens: Vec<String>,
}

/// How many accepted CSR keys a certificate remembers (32 hex bytes each: a few KiB).
pub const KEY_HISTORY: usize = 128;

impl IssuedCert {
    pub fn validity(&self) -> Validity {
        Validity {
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl CertRecord {
    /// A certificate wanted for `host_id`, nothing issued or observed yet, to be looked at
    /// `now`.
    pub fn new(id: CertId, host_id: HostId, spec: CertSpec, now: i64) -> Self {
        CertRecord {
            id,
            host_id,
            spec,
            state: CertState::Pending,
            observed: Observed::default(),
            schedule: Schedule {
                next_action: Some(now),
                ..Schedule::default()
            },
            updated: now,
        }
    }

    /// When the current certificate should be renewed, and why
    /// ([`renewal::renew_at`] with this record's ARI draw and jitter).
    pub fn renew_time(&self, now: i64) -> Option<(i64, RenewReason)> {
        let cur = self.observed.current.as_ref()?;
        Some(renewal::renew_at(
            &cur.validity(),
            self.observed.ari.as_ref().map(|a| a.renew_at),
            now,
            cur.renew_unit,
        ))
    }

    /// From when the current certificate counts as at risk ([`renewal::at_risk_at`]).
    pub fn at_risk_at(&self) -> Option<i64> {
        let cur = self.observed.current.as_ref()?;
        Some(renewal::at_risk_at(
            &cur.validity(),
            self.observed.ari.as_ref().map(|a| a.start),
        ))
    }

    /// Remembers the public key of an accepted CSR.
    pub fn remember_key(&mut self, spki_sha256: &str) {
        if !self.observed.key_history.iter().any(|k| k == spki_sha256) {
            self.observed.key_history.push(spki_sha256.to_owned());
        }
        let excess = self.observed.key_history.len().saturating_sub(KEY_HISTORY);
        self.observed.key_history.drain(..excess);
    }
}
