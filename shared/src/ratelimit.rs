//! Let's Encrypt's rate limits as a budget the coordinator counts itself, so it can refuse
//! or delay an order with a clear message instead of spending a limit (or learning about it
//! from a `rateLimited` error).
//!
//! This module owns the counting: limit definitions, the keys they are counted under, and a
//! serialisable [`Budget`] of event timestamps. It does no I/O and reads no clock: `now` is a
//! parameter, and persisting the budget is the caller's job.
//!
//! One `Budget` counts one ACME account. The certificate limits are global at the CA, so a
//! coordinator using several accounts at one CA must check those against all of them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::identifier::{canonical_identifiers, Identifier};

use serde::{Deserialize, Serialize};

/// A sliding-window limit: at most `max` events per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub name: &'static str,
    pub max: u32,
    pub window_secs: i64,
}

/// The limits the coordinator enforces before asking the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub certs_per_identifier_set: Limit,
    pub certs_per_ip_block: Limit,
    /// Names count under their registered domain (public suffix + one label).
    pub certs_per_registered_domain: Limit,
    pub new_orders_per_account: Limit,
    pub failed_validations_per_identifier: Limit,
}

const HOUR: i64 = 3600;
const WEEK: i64 = 7 * 24 * HOUR;

impl Limit {
    pub const fn new(name: &'static str, max: u32, window_secs: i64) -> Self {
        Limit {
            name,
            max,
            window_secs,
        }
    }
}

impl Limits {
    /// Let's Encrypt's published limits.
    pub fn lets_encrypt() -> Self {
        Limits {
            certs_per_identifier_set: Limit::new("certificates_per_identifier_set", 5, WEEK),
            certs_per_ip_block: Limit::new("certificates_per_ip_block", 50, WEEK),
            certs_per_registered_domain: Limit::new("certificates_per_registered_domain", 50, WEEK),
            new_orders_per_account: Limit::new("new_orders_per_account", 300, 3 * HOUR),
            failed_validations_per_identifier: Limit::new(
                "failed_validations_per_identifier",
                5,
                HOUR,
            ),
        }
    }

    pub fn all(&self) -> [Limit; 5] {
        [
            self.certs_per_identifier_set,
            self.certs_per_ip_block,
            self.certs_per_registered_domain,
            self.new_orders_per_account,
            self.failed_validations_per_identifier,
        ]
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::lets_encrypt()
    }
}

/// The canonical key of an identifier set: sorted (addresses first, as before names were
/// counted, so stored budgets keep their keys), de-duplicated, comma-joined.
pub fn identifier_set_key(ids: &[Identifier]) -> String {
    let ids = canonical_identifiers(
        ids.iter()
            .map(|i| match i {
                Identifier::Ip(ip) => Identifier::Ip(ip.to_canonical()),
                other => other.clone(),
            })
            .collect(),
    );
    ids.iter()
        .map(Identifier::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Where an identifier counts against the per-certificate volume limits: an address in its
/// block, a name (or wildcard) under its registered domain — the name itself when it is a
/// suffix on the list's private section (nothing registered above it).
fn volume_key<'l>(limits: &'l Limits, id: &Identifier) -> (&'l Limit, String) {
    match id {
        Identifier::Ip(ip) => (&limits.certs_per_ip_block, ip_block_key(*ip)),
        other => {
            let key = other
                .registered_domain()
                .map(|d| d.to_string())
                .or_else(|| other.dns_name().map(|n| n.to_string()))
                .unwrap_or_else(|| other.to_string());
            (&limits.certs_per_registered_domain, key)
        }
    }
}

/// The key an identifier's failed validations count under.
fn identifier_key(id: &Identifier) -> String {
    match id {
        Identifier::Ip(ip) => ip.to_canonical().to_string(),
        other => other.to_string(),
    }
}

/// The block an address is counted in: an IPv4 address itself, an IPv6 address's /64.
pub fn ip_block_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        // A /64 always holds (64 <= 128).
        IpAddr::V6(v6) => ipnet::Ipv6Net::new_assert(v6, 64).trunc().to_string(),
    }
}

/// Something that spends a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    CertIssued { identifiers: Vec<Identifier> },
    OrderCreated,
    ValidationFailed { identifier: Identifier },
}

/// Why an order must wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit {limit} reached for {key} ({used}/{max}); it frees at {} (unix {frees_at})",
    crate::timefmt::rfc3339(*frees_at)
)]
pub struct Refusal {
    pub limit: &'static str,
    pub key: String,
    pub used: u32,
    pub max: u32,
    pub frees_at: i64,
}

impl Refusal {
    /// "frees in 3h 07m" relative to `now` (rounded up to the minute).
    pub fn frees_in(&self, now: i64) -> String {
        let mins = ((self.frees_at - now).max(0) + 59) / 60;
        format!("frees in {}h {:02}m", mins / 60, mins % 60)
    }
}

const ACCOUNT_KEY: &str = "account";

/// Counted events for one ACME account. Serialisable so the coordinator can persist it; the
/// limits themselves are not stored (re-apply custom ones with [`Budget::with_limits`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(skip)]
    limits: Limits,
    /// Limit name → key → timestamps: ascending, in the window, and at most `max` (the
    /// newest), which is all a check needs.
    counts: BTreeMap<String, BTreeMap<String, Vec<i64>>>,
}

fn in_window(limit: &Limit, t: i64, now: i64) -> bool {
    t.saturating_add(limit.window_secs) > now
}

impl Budget {
    /// An empty budget with Let's Encrypt's limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same counts under other limits (a private CA, tests).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many more orders the account may create now (for the operator's metrics).
    pub fn remaining_new_orders(&self, now: i64) -> u32 {
        let l = self.limits.new_orders_per_account;
        let used = self
            .counts
            .get(l.name)
            .and_then(|keys| keys.get(ACCOUNT_KEY))
            .map(|ts| ts.iter().filter(|t| in_window(&l, **t, now)).count() as u32)
            .unwrap_or(0);
        l.max.saturating_sub(used)
    }

    /// Counts an event that happened at `now`.
    pub fn record(&mut self, event: &Event, now: i64) {
        let l = self.limits;
        match event {
            Event::OrderCreated => self.push(&l.new_orders_per_account, ACCOUNT_KEY.into(), now),
            Event::ValidationFailed { identifier } => {
                let key = identifier_key(identifier);
                self.push(&l.failed_validations_per_identifier, key, now);
            }
            Event::CertIssued { identifiers } => {
                self.push(
                    &l.certs_per_identifier_set,
                    identifier_set_key(identifiers),
                    now,
                );
                // A certificate counts once per block or registered domain, however many of
                // its identifiers share it.
                let keys: BTreeMap<(&'static str, String), Limit> = identifiers
                    .iter()
                    .map(|id| {
                        let (limit, key) = volume_key(&l, id);
                        ((limit.name, key), *limit)
                    })
                    .collect();
                for ((_, key), limit) in keys {
                    self.push(&limit, key, now);
                }
            }
        }
    }

    /// Whether an order for `identifiers` may be created at `now`. An ARI renewal with
    /// `replaces` inside the window (`exempt_renewal`) skips the per-set and per-block
    /// certificate limits, as Let's Encrypt does; orders and failed validations still count.
    /// When several limits are exhausted, the refusal is the one that frees last.
    pub fn check_order(
        &self,
        identifiers: &[Identifier],
        now: i64,
        exempt_renewal: bool,
    ) -> Result<(), Refusal> {
        let l = &self.limits;
        let mut checks = vec![(l.new_orders_per_account, ACCOUNT_KEY.to_owned())];
        let failed = l.failed_validations_per_identifier;
        checks.extend(identifiers.iter().map(|id| (failed, identifier_key(id))));
        if !exempt_renewal {
            checks.push((l.certs_per_identifier_set, identifier_set_key(identifiers)));
            checks.extend(identifiers.iter().map(|id| {
                let (limit, key) = volume_key(l, id);
                (*limit, key)
            }));
        }
        checks
            .iter()
            .filter_map(|(limit, key)| self.refusal(limit, key, now))
            .max_by_key(|r| r.frees_at)
            .map_or(Ok(()), Err)
    }

    /// Drops events that no longer count at `now`, and keys (and unknown limits) left empty.
    pub fn prune(&mut self, now: i64) {
        let limits = self.limits.all();
        self.counts.retain(|name, keys| {
            let Some(limit) = limits.iter().find(|l| l.name == name) else {
                return false;
            };
            keys.retain(|_, times| {
                times.retain(|&t| in_window(limit, t, now));
                !times.is_empty()
            });
            !keys.is_empty()
        });
    }

    /// How many timestamps are held in all: bounded by keys × max.
    pub fn len(&self) -> usize {
        self.counts
            .values()
            .flat_map(|keys| keys.values())
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, limit: &Limit, key: String, now: i64) {
        let times = self
            .counts
            .entry(limit.name.into())
            .or_default()
            .entry(key)
            .or_default();
        let at = times.partition_point(|&t| t <= now);
        times.insert(at, now);
        times.retain(|&t| in_window(limit, t, now));
        let excess = times.len().saturating_sub(limit.max as usize);
        times.drain(..excess);
    }

    /// `Some` if `key` has used up `limit` at `now`.
    fn refusal(&self, limit: &Limit, key: &str, now: i64) -> Option<Refusal> {
        let times = self.counts.get(limit.name).and_then(|keys| keys.get(key));
        let live: Vec<i64> = times
            .into_iter()
            .flatten()
            .copied()
            .filter(|&t| in_window(limit, t, now))
            .collect();
        let used = live.len() as u32;
        if used < limit.max {
            return None;
        }
        // Ascending: the order fits once all but max-1 of these have aged out. A limit of 0
        // never frees.
        let frees_at = live
            .len()
            .checked_sub(limit.max as usize)
            .filter(|_| limit.max > 0)
            .and_then(|i| live.get(i))
            .map_or(i64::MAX, |t| t.saturating_add(limit.window_secs));
        let (limit, max, key) = (limit.name, limit.max, key.to_owned());
        Some(Refusal {
            limit,
            key,
            used,
            max,
            frees_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    /// Addresses as given (also non-canonical spellings, to test key canonicalisation),
    /// names parsed.
    fn ips(list: &[&str]) -> Vec<Identifier> {
        list.iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Identifier::Ip(ip),
                Err(_) => Identifier::parse(s).unwrap(),
            })
            .collect()
    }

    fn issue(b: &mut Budget, list: &[&str], now: i64) {
        let identifiers = ips(list);
        b.record(&Event::CertIssued { identifiers }, now);
    }

    fn fail(b: &mut Budget, ip: &str, now: i64) {
        let identifier = ips(&[ip])[0].clone();
        b.record(&Event::ValidationFailed { identifier }, now);
    }

    fn allowed(b: &Budget, list: &[&str], now: i64, exempt: bool) -> bool {
        b.check_order(&ips(list), now, exempt).is_ok()
    }

    type Seen = (&'static str, String, u32, i64);

    /// (limit, key, used, frees_at) of the refusal.
    fn refused(b: &Budget, list: &[&str], now: i64, exempt: bool) -> Seen {
        let r = b.check_order(&ips(list), now, exempt).unwrap_err();
        (r.limit, r.key, r.used, r.frees_at)
    }

    #[test]
    fn keys_are_canonical() {
        let a = identifier_set_key(&ips(&["203.0.113.9", "2001:db8::1", "192.0.2.1"]));
        let b = identifier_set_key(&ips(&[
            "2001:db8::1",
            "192.0.2.1",
            "203.0.113.9",
            "192.0.2.1",
        ]));
        assert_eq!(a, b);
        assert_eq!(a, "192.0.2.1,203.0.113.9,2001:db8::1");
        let block = |s: &str| ip_block_key(s.parse().unwrap());
        assert_eq!(block("192.0.2.1"), "192.0.2.1");
        assert_eq!(block("2001:db8:1:2:aaaa::5"), "2001:db8:1:2::/64");
        assert_eq!(block("::ffff:192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn names_count_per_registered_domain_and_per_exact_set() {
        let mut b = Budget::new();
        // 50 certificates under example.co.uk, each a different set: the 51st is refused
        // under the registered domain, whatever the host part.
        for i in 0..50 {
            issue(&mut b, &[&format!("web-{i}.eu.example.co.uk")], T0 + i);
        }
        let (limit, key, used, _) = refused(&b, &["api.example.co.uk"], T0 + 60, false);
        assert_eq!(
            (limit, key.as_str(), used),
            ("certificates_per_registered_domain", "example.co.uk", 50)
        );
        // Another registered domain is untouched; an ARI renewal inside its window is exempt.
        assert!(allowed(&b, &["api.example.net"], T0 + 60, false));
        assert!(allowed(&b, &["api.example.co.uk"], T0 + 60, true));
        // A certificate with two names under one domain counts once there.
        let mut b = Budget::new();
        issue(&mut b, &["a.example.net", "b.example.net", "192.0.2.1"], T0);
        assert_eq!(
            b.counts["certificates_per_registered_domain"]["example.net"].len(),
            1
        );
        // The exact set: 5 per week, names and addresses together, in any order.
        for i in 1..5 {
            issue(
                &mut b,
                &["192.0.2.1", "b.example.net", "a.example.net"],
                T0 + i,
            );
        }
        let (limit, key, ..) = refused(
            &b,
            &["b.example.net", "192.0.2.1", "a.example.net"],
            T0 + 9,
            false,
        );
        assert_eq!(limit, "certificates_per_identifier_set");
        assert_eq!(key, "192.0.2.1,a.example.net,b.example.net");
    }

    #[test]
    fn identifier_set_limit_hits_at_max_and_frees_at_oldest_plus_window() {
        let mut b = Budget::new();
        let set = ["192.0.2.1", "192.0.2.2"];
        for i in 0..4 {
            issue(&mut b, &["192.0.2.2", "192.0.2.1"], T0 + i * HOUR);
            assert!(allowed(&b, &set, T0 + i * HOUR, false));
        }
        issue(&mut b, &set, T0 + 4 * HOUR);
        let key = "192.0.2.1,192.0.2.2".to_owned();
        let expect = ("certificates_per_identifier_set", key, 5, T0 + WEEK);
        assert_eq!(refused(&b, &set, T0 + 5 * HOUR, false), expect);
        assert_eq!(
            refused(&b, &["192.0.2.2", "192.0.2.1"], T0 + WEEK - 1, false),
            expect
        );
        assert!(allowed(&b, &set, T0 + WEEK, false));
        // A subset is a different set.
        assert!(allowed(&b, &set[..1], T0 + 5 * HOUR, false));
    }

    #[test]
    fn ip_block_limit_counts_each_block_once_and_shares_ipv6_64() {
        let mut b = Budget::new();
        for i in 0..50 {
            // 50 different sets, each with two addresses in one /64.
            let ip = format!("2001:db8:1:2::{:x}", i + 1);
            issue(&mut b, &[&ip, "2001:db8:1:2::ffff"], T0 + i);
        }
        let expect = (
            "certificates_per_ip_block",
            "2001:db8:1:2::/64".into(),
            50,
            T0 + WEEK,
        );
        assert_eq!(
            refused(&b, &["2001:db8:1:2:abcd::1"], T0 + 100, false),
            expect
        );
        assert_eq!(
            refused(&b, &["2001:db8:1:2::1"], T0 + WEEK - 1, false),
            expect
        );
        assert!(allowed(&b, &["2001:db8:1:3::1"], T0 + 100, false));
        assert!(allowed(&b, &["2001:db8:1:2::1"], T0 + WEEK, false));
    }

    #[test]
    fn ipv4_block_is_the_address() {
        let limits = Limits {
            certs_per_ip_block: Limit::new("certificates_per_ip_block", 2, WEEK),
            ..Limits::lets_encrypt()
        };
        let mut b = Budget::new().with_limits(limits);
        issue(&mut b, &["198.51.100.7"], T0);
        issue(&mut b, &["198.51.100.7", "198.51.100.8"], T0 + 10);
        let (_, key, used, frees_at) =
            refused(&b, &["198.51.100.9", "198.51.100.7"], T0 + 20, false);
        assert_eq!(
            (key.as_str(), used, frees_at),
            ("198.51.100.7", 2, T0 + WEEK)
        );
        assert!(allowed(&b, &["198.51.100.8"], T0 + 20, false));
    }

    #[test]
    fn new_orders_limit_hits_at_max_even_for_renewals() {
        let mut b = Budget::new();
        for i in 0..300 {
            assert!(allowed(&b, &["192.0.2.1"], T0 + i, false));
            b.record(&Event::OrderCreated, T0 + i);
        }
        let expect = (
            "new_orders_per_account",
            "account".into(),
            300,
            T0 + 3 * HOUR,
        );
        assert_eq!(refused(&b, &["192.0.2.1"], T0 + 300, true), expect);
        assert!(allowed(&b, &["192.0.2.1"], T0 + 3 * HOUR, true));
    }

    #[test]
    fn failed_validations_limit_is_per_identifier_and_not_exempt() {
        let mut b = Budget::new();
        for i in 0..5 {
            assert!(allowed(&b, &["192.0.2.1"], T0 + i * 60, true));
            fail(&mut b, "192.0.2.1", T0 + i * 60);
        }
        let expect = (
            "failed_validations_per_identifier",
            "192.0.2.1".into(),
            5,
            T0 + HOUR,
        );
        assert_eq!(
            refused(&b, &["192.0.2.2", "192.0.2.1"], T0 + 600, true),
            expect
        );
        assert!(allowed(&b, &["192.0.2.2"], T0 + 600, false));
        assert!(allowed(&b, &["192.0.2.1"], T0 + HOUR, false));
    }

    #[test]
    fn renewal_exemption_skips_certificate_limits_only() {
        let mut b = Budget::new();
        for i in 0..5 {
            issue(&mut b, &["192.0.2.1"], T0 + i);
        }
        assert!(!allowed(&b, &["192.0.2.1"], T0 + 10, false));
        assert!(allowed(&b, &["192.0.2.1"], T0 + 10, true));
    }

    #[test]
    fn reports_the_limit_that_frees_last() {
        let mut b = Budget::new();
        for i in 0..5 {
            issue(&mut b, &["192.0.2.1"], T0 + i);
            fail(&mut b, "192.0.2.1", T0 + 100 + i);
        }
        let (limit, _, _, frees_at) = refused(&b, &["192.0.2.1"], T0 + 200, false);
        assert_eq!(
            (limit, frees_at),
            ("certificates_per_identifier_set", T0 + WEEK)
        );
        let (limit, _, _, frees_at) = refused(&b, &["192.0.2.1"], T0 + 200, true);
        assert_eq!(
            (limit, frees_at),
            ("failed_validations_per_identifier", T0 + 100 + HOUR)
        );
    }

    #[test]
    fn zero_limit_never_frees() {
        let limits = Limits {
            new_orders_per_account: Limit::new("new_orders_per_account", 0, HOUR),
            ..Limits::lets_encrypt()
        };
        let b = Budget::new().with_limits(limits);
        assert_eq!(refused(&b, &["192.0.2.1"], T0, false).3, i64::MAX);
    }

    #[test]
    fn refusal_names_limit_key_and_time() {
        let frees_at = T0 + 3 * HOUR + 7 * 60;
        let r = Refusal {
            limit: "new_orders_per_account",
            key: "acct".into(),
            used: 3,
            max: 3,
            frees_at,
        };
        let text = r.to_string();
        assert!(
            text.contains("new_orders_per_account") && text.contains("acct"),
            "{text}"
        );
        assert!(text.contains(&frees_at.to_string()), "{text}");
        assert_eq!(r.frees_in(T0), "frees in 3h 07m");
        assert_eq!(r.frees_in(T0 + 4 * HOUR), "frees in 0h 00m");
    }

    #[test]
    fn storage_stays_bounded_and_prunes() {
        let mut b = Budget::new();
        for i in 0..1_000 {
            issue(&mut b, &["192.0.2.1"], T0 + i);
            b.record(&Event::OrderCreated, T0 + i);
        }
        // Only the newest `max` per key are kept: 5 (set) + 50 (block) + 300 (orders).
        assert_eq!(b.len(), 5 + 50 + 300);
        assert_eq!(
            refused(&b, &["192.0.2.1"], T0 + 1_000, false).3,
            T0 + 995 + WEEK
        );
        b.prune(T0 + 999 + 3 * HOUR);
        assert_eq!(b.len(), 5 + 50);
        b.prune(T0 + 999 + WEEK);
        assert!(b.is_empty());
        assert_eq!(b, Budget::new());
    }

    #[test]
    fn remaining_new_orders_counts_the_window() {
        let mut b = Budget::new();
        assert_eq!(b.remaining_new_orders(0), 300);
        b.record(&Event::OrderCreated, 0);
        b.record(&Event::OrderCreated, 10);
        assert_eq!(b.remaining_new_orders(10), 298);
        assert_eq!(
            b.remaining_new_orders(3 * 3600),
            299,
            "the first one left the window"
        );
    }

    #[test]
    fn serde_round_trip() {
        let mut b = Budget::new();
        issue(&mut b, &["192.0.2.1", "2001:db8::1"], T0);
        b.record(&Event::OrderCreated, T0);
        fail(&mut b, "2001:db8::1", T0 + 1);
        let text = toml::to_string(&b).unwrap();
        let back: Budget = toml::from_str(&text).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.limits(), &Limits::lets_encrypt());
    }
}
