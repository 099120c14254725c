//! What the pages show: rows of hosts and certificates (made once per [`Snapshot`], see
//! [`super::fleet`]), the overview's counts and top rows, and lists cut into pages from
//! the snapshot — filtering and slicing in memory, never a store read per request, never
//! a whole list rendered. Read only: nothing here writes.

use super::fleet::{CertEntry, HostEntry, Snapshot};
use crate::model::{CertRecord, CertState, HostRecord};
use certfleet_shared::timefmt::{relative, rfc3339};
use std::collections::HashMap;

/// Rows on a list page at most (`?limit=` is clamped to this).
pub const MAX_PAGE: usize = 200;
/// Rows on a list page unless asked.
pub const DEFAULT_PAGE: usize = 50;
/// How many certificates the overview lists as soonest to expire / needing attention.
pub const OVERVIEW_ROWS: usize = 20;

/// `when` as RFC 3339 and relative to `now`, or "—".
pub fn when(unix: i64, now: i64) -> String {
    if unix == 0 {
        "—".into()
    } else {
        format!("{} ({})", rfc3339(unix), relative(unix, now))
    }
}

/// One certificate in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    pub id: String,
    pub host_id: String,
    pub hostname: String,
    pub name: String,
    pub identifiers: String,
    pub state: String,
    pub not_after: i64,
    pub expires: String,
    /// Why it needs attention ("" when it does not).
    pub problem: String,
}

/// Why a certificate needs an operator's eye, if it does.
pub fn problem(c: &CertRecord, now: i64) -> Option<String> {
    let expired = c
        .observed
        .current
        .as_ref()
        .is_some_and(|x| x.not_after <= now);
    let error = c.schedule.last_error.clone().unwrap_or_default();
    let why = if expired {
        "expired".to_owned()
    } else {
        match c.state {
            CertState::Failed => "failed".into(),
            CertState::Conflict => "address conflict".into(),
            CertState::Refused => "refused by policy".into(),
            _ if c.schedule.at_risk => "at risk".into(),
            _ => return None,
        }
    };
    let detail = c
        .observed
        .blocked
        .as_ref()
        .map(|b| b.reason.clone())
        .unwrap_or(error);
    Some(if detail.is_empty() {
        why
    } else {
        format!("{why}: {detail}")
    })
}

/// `expires_at`: the time the "expires" text is relative to (`None`: left empty).
pub fn cert_row(c: &CertRecord, hostname: &str, expires_at: Option<i64>, now: i64) -> CertRow {
    let cur = c.observed.current.as_ref();
    let not_after = cur.map(|x| x.not_after).unwrap_or(0);
    CertRow {
        id: c.id.to_string(),
        host_id: c.host_id.to_string(),
        hostname: hostname.to_owned(),
        name: c.spec.name.clone(),
        identifiers: cur
            .map(|x| &x.identifiers)
            .unwrap_or(&c.spec.identifiers)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        state: c.state.as_str().to_owned(),
        not_after,
        expires: expires_at.map(|t| when(not_after, t)).unwrap_or_default(),
        problem: problem(c, now).unwrap_or_default(),
    }
}

/// The fleet in numbers, and the certificates to look at first.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    pub hosts: usize,
    pub connected: usize,
    pub certs: usize,
    /// Every state with its count (zeros included, in the state's order).
    pub by_state: Vec<(String, usize)>,
    /// At risk, failing, blocked or expired: soonest expiry first, at most
    /// [`OVERVIEW_ROWS`]; `attention_total` counts them all.
    pub attention: Vec<CertRow>,
    pub attention_total: usize,
    /// The soonest to expire of those with a certificate.
    pub soonest: Vec<CertRow>,
}

const STATES: [CertState; 8] = [
    CertState::Pending,
    CertState::Ordering,
    CertState::Issued,
    CertState::Installed,
    CertState::Served,
    CertState::Failed,
    CertState::Conflict,
    CertState::Refused,
];

/// A row as shown at `now` (the relative expiry is of the request, not the snapshot).
fn at(row: &CertRow, now: i64) -> CertRow {
    CertRow {
        expires: when(row.not_after, now),
        ..row.clone()
    }
}

/// Counts and the top of each list, from the snapshot's certificates (already in expiry
/// order, so the top rows are the first ones that qualify).
pub fn overview(snap: &Snapshot, now: i64) -> Overview {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut attention_total = 0;
    for c in &snap.certs {
        *counts.entry(c.row.state.as_str()).or_default() += 1;
        attention_total += usize::from(!c.row.problem.is_empty());
    }
    let top = |keep: &dyn Fn(&CertRow) -> bool| -> Vec<CertRow> {
        snap.certs
            .iter()
            .map(|c| &c.row)
            .filter(|r| keep(r))
            .take(OVERVIEW_ROWS)
            .map(|r| at(r, now))
            .collect()
    };
    Overview {
        hosts: snap.hosts.len(),
        connected: snap.connected.len(),
        certs: snap.certs.len(),
        by_state: STATES
            .iter()
            .map(|s| {
                (
                    s.as_str().to_owned(),
                    counts.get(s.as_str()).copied().unwrap_or(0),
                )
            })
            .collect(),
        attention: top(&|r| !r.problem.is_empty()),
        attention_total,
        soonest: top(&|r| r.not_after != 0),
    }
}

/// A slice of a list and where the neighbouring slices start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    pub rows: Vec<T>,
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

impl<T> Paged<T> {
    pub fn of(all: Vec<T>, offset: usize, limit: usize) -> Self {
        let limit = limit.clamp(1, MAX_PAGE);
        let total = all.len();
        let offset = offset.min(total.saturating_sub(1) / limit * limit);
        let rows = all.into_iter().skip(offset).take(limit).collect();
        Self {
            rows,
            total,
            offset,
            limit,
        }
    }
    pub fn prev(&self) -> Option<usize> {
        (self.offset > 0).then(|| self.offset.saturating_sub(self.limit))
    }
    pub fn next(&self) -> Option<usize> {
        (self.offset + self.limit < self.total).then_some(self.offset + self.limit)
    }
    /// "51–100 of 10000".
    pub fn range(&self) -> String {
        if self.total == 0 {
            "none".into()
        } else {
            format!(
                "{}–{} of {}",
                self.offset + 1,
                self.offset + self.rows.len(),
                self.total
            )
        }
    }
}

/// One host in the host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub id: String,
    pub hostname: String,
    pub ips: String,
    pub labels: String,
    pub connected: String,
    pub last_seen: String,
}

pub fn labels_text(h: &HostRecord) -> String {
    h.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hosts whose hostname, id, address or label contains `filter`, by hostname.
pub fn host_list(
    snap: &Snapshot,
    filter: &str,
    offset: usize,
    limit: usize,
    now: i64,
) -> Paged<HostRow> {
    let f = filter.trim().to_lowercase();
    let matching: Vec<&HostEntry> = snap
        .hosts
        .iter()
        .filter(|h| f.is_empty() || h.search.contains(&f))
        .collect();
    let page = Paged::of(matching, offset, limit);
    let row = |h: &HostEntry| {
        let node = snap.connected.get(&h.id);
        HostRow {
            id: h.id.to_string(),
            hostname: h.hostname.clone(),
            ips: h.ips.clone(),
            labels: h.labels.clone(),
            connected: node
                .map(|n| format!("yes ({n})"))
                .unwrap_or_else(|| "no".into()),
            last_seen: if node.is_some() {
                "now".into()
            } else {
                when(h.last_seen, now)
            },
        }
    };
    Paged {
        rows: page.rows.iter().map(|h| row(h)).collect(),
        total: page.total,
        offset: page.offset,
        limit: page.limit,
    }
}

/// Certificates in `state` (any when empty) whose name, identifiers or host contain
/// `filter`, soonest expiry first.
pub fn cert_list(
    snap: &Snapshot,
    state: &str,
    filter: &str,
    offset: usize,
    limit: usize,
    now: i64,
) -> Paged<CertRow> {
    let f = filter.trim().to_lowercase();
    let matching: Vec<&CertEntry> = snap
        .certs
        .iter()
        .filter(|c| state.is_empty() || c.row.state == state)
        .filter(|c| f.is_empty() || c.search.contains(&f))
        .collect();
    let page = Paged::of(matching, offset, limit);
    Paged {
        rows: page.rows.iter().map(|c| at(&c.row, now)).collect(),
        total: page.total,
        offset: page.offset,
        limit: page.limit,
    }
}

/// "as of 2027-01-15T08:00:00Z (3 s ago; lists are remade at most every 5 s)".
pub fn as_of(snap: &Snapshot, now: i64) -> String {
    format!(
        "as of {} ({} s ago; counts and lists are remade at most every {} s, in {} ms)",
        rfc3339(snap.taken),
        (now - snap.taken).max(0),
        super::fleet::FRESH_SECS,
        snap.build_ms
    )
}

/// One certificate of a chain, as read from its PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub validity: String,
}

pub fn chain_summary(chain_pem: &str, now: i64) -> Vec<ChainEntry> {
    let Ok(ders) = certfleet_shared::x509::parse_pem_chain(chain_pem) else {
        return Vec::new();
    };
    ders.iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, c)| ChainEntry {
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            serial: c.raw_serial_as_string().replace(':', ""),
            validity: format!(
                "{} → {}",
                rfc3339(c.validity().not_before.timestamp()),
                when(c.validity().not_after.timestamp(), now)
            ),
        })
        .collect()
}

#[cfg(test)]
#[path = "data_tests.rs"]
mod tests;
