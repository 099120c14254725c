//! The audit search: the page's filters (host, IP or CIDR, name, serial, kind, time range)
//! read from the query string into an `audit::Query`, with an error per filter that does
//! not parse; and the rows a page shows. Pages go backwards from the newest record with a
//! `before` cursor ([`crate::audit::Page`]), reading at most [`SCAN`] records; a page the
//! budget stopped says how far back it searched and links on. `/audit.jsonl` writes the
//! same matches oldest first (as the CLI's `audit --json`).

use crate::audit::{Kind, Query, Record};
use crate::model::HostRecord;
use certfleet_shared::identifier::NamePattern;
use certfleet_shared::ids::HostId;
use certfleet_shared::timefmt::rfc3339;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

/// Records per audit page unless asked, and at most.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 500;
/// Records a page reads at most before it stops and offers "older" (rare filters over a
/// long trail).
pub const SCAN: usize = 20_000;

/// The search form, as sent.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AuditParams {
    pub host: String,
    pub ip: String,
    pub name: String,
    pub serial: String,
    pub kind: String,
    pub since: String,
    pub until: String,
    pub before: String,
    pub limit: String,
}

/// A parsed search.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub query: Query,
    pub before: Option<u64>,
    pub limit: usize,
}

/// A time as RFC 3339, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DD` (UTC), or a duration ago
/// (`24h`, `7d`, `1h30m`).
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let minute = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    if let Ok(t) = PrimitiveDateTime::parse(s, &minute) {
        return Ok(t.assume_utc().unix_timestamp());
    }
    let day = format_description!("[year]-[month]-[day]");
    if let Ok(d) = Date::parse(s, &day) {
        return Ok(d.midnight().assume_utc().unix_timestamp());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        return Ok(now.saturating_sub(secs));
    }
    Err(format!(
        "{s:?} is not a time: write 2026-12-01, 2026-12-01T08:00 (UTC), RFC 3339, or how long ago (24h, 7d)"
    ))
}

impl AuditParams {
    /// The search, or an error per filter that does not parse. `hosts` resolves a
    /// hostname (the host filter takes a host id or an exact hostname).
    pub fn search(
        &self,
        hosts: &dyn Fn() -> Vec<HostRecord>,
        now: i64,
    ) -> Result<Search, Vec<String>> {
        let mut errors = Vec::new();
        let mut q = Query::default();
        let host = self.host.trim();
        if !host.is_empty() {
            match HostId::parse(host) {
                Ok(id) => q.host_id = Some(id.to_string()),
                Err(_) => {
                    let found: Vec<String> = hosts()
                        .into_iter()
                        .filter(|h| h.hostname.eq_ignore_ascii_case(host))
                        .map(|h| h.id.to_string())
                        .collect();
                    match found.as_slice() {
                        [one] => q.host_id = Some(one.clone()),
                        [] => errors.push(format!("host: no host has the id or hostname {host:?}")),
                        many => errors.push(format!(
                            "host: {} hosts are named {host:?}; use one of their ids: {}",
                            many.len(),
                            many.join(", ")
                        )),
                    }
                }
            }
        }
        if !self.ip.trim().is_empty() {
            match crate::audit::parse_network(self.ip.trim()) {
                Ok(n) => q.network = Some(n),
                Err(e) => errors.push(format!("IP or CIDR: {e}")),
            }
        }
        if !self.name.trim().is_empty() {
            match NamePattern::parse(self.name.trim()) {
                Ok(p) => q.name = Some(p),
                Err(e) => errors.push(format!(
                    "name: {e} (a DNS name, or *.zone for every name below it)"
                )),
            }
        }
        let serial = self.serial.trim().replace(':', "").to_ascii_lowercase();
        if !serial.is_empty() {
            if serial.bytes().all(|b| b.is_ascii_hexdigit()) {
                q.serial = Some(serial);
            } else {
                errors.push(format!(
                    "serial: {:?} is not hexadecimal",
                    self.serial.trim()
                ));
            }
        }
        for k in self
            .kind
            .split([',', ' '])
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            match Kind::parse(k) {
                Some(kind) => q.kinds.push(kind),
                None => errors.push(format!(
                    "kind: {k:?} is not an event kind (like certificate_issued, host_enrolled)"
                )),
            }
        }
        for (field, text, slot) in [
            ("since", &self.since, &mut q.since),
            ("until", &self.until, &mut q.until),
        ] {
            if !text.trim().is_empty() {
                match parse_time(text, now) {
                    Ok(t) => *slot = Some(t),
                    Err(e) => errors.push(format!("{field}: {e}")),
                }
            }
        }
        let before = match self.before.trim() {
            "" => None,
            b => match b.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(format!("before: {b:?} is not a record number"));
                    None
                }
            },
        };
        let limit = match self.limit.trim() {
            "" => DEFAULT_LIMIT,
            l => match l.parse::<usize>() {
                Ok(n) => n.clamp(1, MAX_LIMIT),
                Err(_) => {
                    errors.push(format!("limit: {l:?} is not a number"));
                    DEFAULT_LIMIT
                }
            },
        };
        if errors.is_empty() {
            Ok(Search {
                query: q,
                before,
                limit,
            })
        } else {
            Err(errors)
        }
    }

    /// The same search as `key=value&…` (empty fields left out), with `before` replaced.
    pub fn with_before(&self, before: Option<u64>) -> String {
        let before = before.map(|b| b.to_string()).unwrap_or_default();
        super::query_string(&[
            ("host", &self.host),
            ("ip", &self.ip),
            ("name", &self.name),
            ("serial", &self.serial),
            ("kind", &self.kind),
            ("since", &self.since),
            ("until", &self.until),
            ("limit", &self.limit),
            ("before", &before),
        ])
    }
}

/// One record as a table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub actor: String,
    pub host_id: String,
    pub cert_id: String,
    pub identifiers: String,
    pub serial: String,
    pub details: String,
}

pub fn row(r: &Record) -> AuditRow {
    let e = &r.entry;
    let mut ids: Vec<String> = e.identifiers.iter().map(ToString::to_string).collect();
    ids.extend(e.names.iter().cloned());
    AuditRow {
        seq: r.seq,
        time: rfc3339(r.time),
        kind: r.kind.as_str(),
        actor: e.actor.clone(),
        host_id: e.host_id.clone().unwrap_or_default(),
        cert_id: e.cert_id.clone().unwrap_or_default(),
        identifiers: ids.join(", "),
        serial: e.serial.clone().unwrap_or_default(),
        details: e
            .details
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
