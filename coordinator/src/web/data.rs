//! What the pages show, read from the same store and views the admin API uses
//! (`Store::{hosts, host, scan_certs, certs_for_host, cert}`, `server::cert_view`,
//! `cluster::connected_by_name`, the audit log). Read only: nothing here writes. Lists are
//! cut into pages here; the whole fleet is scanned for counts and the top of each list,
//! never rendered whole.

use crate::model::{CertRecord, CertState, HostRecord};
use crate::store::{Store, StoreError};
use certfleet_shared::timefmt::{relative, rfc3339};
use std::collections::{BinaryHeap, HashMap};

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

pub fn cert_row(c: &CertRecord, hostname: &str, now: i64) -> CertRow {
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
        expires: when(not_after, now),
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

/// A certificate ordered by (expiry, id) only.
struct Keyed(i64, String, CertRecord);

impl PartialEq for Keyed {
    fn eq(&self, o: &Self) -> bool {
        (self.0, &self.1) == (o.0, &o.1)
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Keyed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, &self.1).cmp(&(o.0, &o.1))
    }
}

/// Keeps the `n` smallest items seen (a max-heap of the kept ones).
struct Smallest<T: Ord> {
    n: usize,
    heap: BinaryHeap<T>,
}

impl<T: Ord> Smallest<T> {
    fn new(n: usize) -> Self {
        Self {
            n,
            heap: BinaryHeap::with_capacity(n + 1),
        }
    }
    fn offer(&mut self, item: T) {
        if self.heap.len() < self.n {
            self.heap.push(item);
        } else if self.heap.peek().is_some_and(|top| item < *top) {
            self.heap.pop();
            self.heap.push(item);
        }
    }
    fn sorted(self) -> Vec<T> {
        self.heap.into_sorted_vec()
    }
}

/// Host id → hostname, for lists of certificates.
pub fn hostnames(hosts: &[HostRecord]) -> HashMap<String, String> {
    hosts
        .iter()
        .map(|h| (h.id.to_string(), h.hostname.clone()))
        .collect()
}

/// One pass over hosts and certificates.
pub fn overview(store: &dyn Store, connected: usize, now: i64) -> Result<Overview, StoreError> {
    let hosts = store.hosts()?;
    let names = hostnames(&hosts);
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let (mut attention, mut soonest) = (Smallest::new(OVERVIEW_ROWS), Smallest::new(OVERVIEW_ROWS));
    let mut attention_total = 0;
    let mut total = 0;
    // Ordered by (expiry, never issued last, id); rows are made for the kept ones only.
    store.scan_certs(&mut |c| {
        total += 1;
        *counts.entry(c.state.as_str()).or_default() += 1;
        let not_after = c.observed.current.as_ref().map(|x| x.not_after);
        let (at, id) = (not_after.unwrap_or(i64::MAX), c.id.to_string());
        if problem(&c, now).is_some() {
            attention_total += 1;
            attention.offer(Keyed(at, id.clone(), c.clone()));
        }
        if not_after.is_some() {
            soonest.offer(Keyed(at, id, c));
        }
        Ok(())
    })?;
    let rows = |kept: Smallest<Keyed>| -> Vec<CertRow> {
        kept.sorted()
            .into_iter()
            .map(|Keyed(_, _, c)| {
                let name = names
                    .get(&c.host_id.to_string())
                    .cloned()
                    .unwrap_or_default();
                cert_row(&c, &name, now)
            })
            .collect()
    };
    Ok(Overview {
        hosts: hosts.len(),
        connected,
        certs: total,
        by_state: STATES
            .iter()
            .map(|s| {
                (
                    s.as_str().to_owned(),
                    counts.get(s.as_str()).copied().unwrap_or(0),
                )
            })
            .collect(),
        attention: rows(attention),
        attention_total,
        soonest: rows(soonest),
    })
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
    mut hosts: Vec<HostRecord>,
    connected: &HashMap<certfleet_shared::ids::HostId, String>,
    filter: &str,
    offset: usize,
    limit: usize,
    now: i64,
) -> Paged<HostRow> {
    let f = filter.trim().to_lowercase();
    hosts.retain(|h| {
        f.is_empty()
            || h.hostname.to_lowercase().contains(&f)
            || h.id.to_string().contains(&f)
            || h.ips.iter().any(|i| i.to_string().contains(&f))
            || labels_text(h).to_lowercase().contains(&f)
    });
    hosts.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    let page = Paged::of(hosts, offset, limit);
    Paged {
        rows: page
            .rows
            .iter()
            .map(|h| HostRow {
                id: h.id.to_string(),
                hostname: h.hostname.clone(),
                ips: h
                    .ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                labels: labels_text(h),
                connected: connected
                    .get(&h.id)
                    .map(|n| format!("yes ({n})"))
                    .unwrap_or_else(|| "no".into()),
                last_seen: if connected.contains_key(&h.id) {
                    "now".into()
                } else {
                    when(h.last_seen.unwrap_or(0), now)
                },
            })
            .collect(),
        total: page.total,
        offset: page.offset,
        limit: page.limit,
    }
}

/// Certificates in `state` (any when empty) whose name, identifiers or host contain
/// `filter`, soonest expiry first.
pub fn cert_list(
    store: &dyn Store,
    state: &str,
    filter: &str,
    offset: usize,
    limit: usize,
    now: i64,
) -> Result<Paged<CertRow>, StoreError> {
    let names = hostnames(&store.hosts()?);
    let f = filter.trim().to_lowercase();
    let mut rows = Vec::new();
    store.scan_certs(&mut |c| {
        if !state.is_empty() && c.state.as_str() != state {
            return Ok(());
        }
        let hostname = names
            .get(&c.host_id.to_string())
            .map(String::as_str)
            .unwrap_or("");
        let row = cert_row(&c, hostname, now);
        if f.is_empty()
            || row.name.to_lowercase().contains(&f)
            || row.identifiers.to_lowercase().contains(&f)
            || row.hostname.to_lowercase().contains(&f)
            || row.id.contains(&f)
        {
            rows.push(row);
        }
        Ok(())
    })?;
    rows.sort_by(|a, b| {
        (a.not_after == 0, a.not_after, &a.id).cmp(&(b.not_after == 0, b.not_after, &b.id))
    });
    Ok(Paged::of(rows, offset, limit))
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
