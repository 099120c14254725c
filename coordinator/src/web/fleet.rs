//! The fleet as the overview and the host and certificate lists see it: one pass over
//! every host and certificate made into sorted rows and counts (a [`Snapshot`]), kept by
//! [`FleetCache`] so that a page costs filtering and slicing rows in memory, not reading
//! and decoding 10,000 records from the store.
//!
//! Staleness is bounded and stated on the pages: a snapshot younger than [`FRESH_SECS`] is
//! shown as is; an older one (up to [`STALE_SECS`]) is shown while one background task
//! makes the next; anything older, or none yet, is waited for. One snapshot is made at a
//! time (single flight), however many requests find it stale. The pages about one host or
//! one certificate read the store directly and are never stale.

use super::data::{cert_row, labels_text, CertRow};
use crate::model::HostRecord;
use crate::sessions::Sessions;
use crate::store::{Store, StoreError};
use certfleet_shared::clock::SharedClock;
use certfleet_shared::ids::HostId;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;
use tokio_util::task::TaskTracker;

/// A snapshot this young (seconds) is shown without a new one being made.
pub const FRESH_SECS: i64 = 5;
/// A snapshot up to this old is shown while the next is made in the background; an older
/// one is not shown (the request waits for the new one). So a page is at most this old,
/// plus the time one snapshot takes.
pub const STALE_SECS: i64 = 15;

/// One host in the snapshot, with what the filter looks at.
#[derive(Debug, Clone)]
pub struct HostEntry {
    pub id: HostId,
    pub hostname: String,
    pub ips: String,
    pub labels: String,
    pub last_seen: i64,
    /// Hostname, id, addresses and labels, lower case: what `?q=` searches.
    pub search: String,
}

/// One certificate in the snapshot, with what the filter looks at.
#[derive(Debug, Clone)]
pub struct CertEntry {
    pub row: CertRow,
    /// Name, identifiers, hostname and id, lower case.
    pub search: String,
}

/// Every host and certificate as rows, sorted as the lists show them, and the sessions.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was made (the daemon's clock, unix seconds).
    pub taken: i64,
    /// How long making it took.
    pub build_ms: u64,
    /// By hostname, then id.
    pub hosts: Vec<HostEntry>,
    /// Soonest expiry first, never issued last, then id.
    pub certs: Vec<CertEntry>,
    /// Connected hosts and the node holding each session.
    pub connected: HashMap<HostId, String>,
}

fn host_entry(h: &HostRecord) -> HostEntry {
    let ips = h
        .ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let labels = labels_text(h);
    HostEntry {
        search: format!("{}\n{}\n{ips}\n{labels}", h.hostname, h.id).to_lowercase(),
        id: h.id.clone(),
        hostname: h.hostname.clone(),
        ips,
        labels,
        last_seen: h.last_seen.unwrap_or(0),
    }
}

/// Reads every host and certificate once (certificates streamed, never all decoded
/// records in memory at once) and the sessions.
pub fn build(store: &dyn Store, sessions: &Sessions, now: i64) -> Result<Snapshot, StoreError> {
    let t = Instant::now();
    let mut hosts: Vec<HostEntry> = store.hosts()?.iter().map(host_entry).collect();
    hosts.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    let names: HashMap<&HostId, &str> =
        hosts.iter().map(|h| (&h.id, h.hostname.as_str())).collect();
    let mut certs = Vec::new();
    store.scan_certs(&mut |c| {
        let hostname = names.get(&c.host_id).copied().unwrap_or("");
        // The relative expiry is written when a page shows the row (`data::at`).
        let row = cert_row(&c, hostname, None, now);
        let search = format!(
            "{}\n{}\n{}\n{}",
            row.name, row.identifiers, row.hostname, row.id
        )
        .to_lowercase();
        certs.push(CertEntry { row, search });
        Ok(())
    })?;
    certs.sort_unstable_by(|a, b| {
        let (a, b) = (&a.row, &b.row);
        (a.not_after == 0, a.not_after)
            .cmp(&(b.not_after == 0, b.not_after))
            .then_with(|| a.id.cmp(&b.id))
    });
    let connected = crate::cluster::connected_by_name(sessions, store);
    Ok(Snapshot {
        taken: now,
        build_ms: u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
        hosts,
        certs,
        connected,
    })
}

#[derive(Default)]
struct State {
    snap: Option<Arc<Snapshot>>,
    /// A snapshot is being made (by a request or the background task).
    loading: bool,
}

/// The current [`Snapshot`], made again when stale, one at a time.
pub struct FleetCache {
    store: Arc<dyn Store>,
    sessions: Arc<Sessions>,
    clock: SharedClock,
    tasks: TaskTracker,
    state: Mutex<State>,
    made: Condvar,
}

impl FleetCache {
    pub fn new(
        store: Arc<dyn Store>,
        sessions: Arc<Sessions>,
        clock: SharedClock,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            sessions,
            clock,
            tasks,
            state: Mutex::default(),
            made: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot to show now (blocking: call it off the async threads).
    pub fn get(self: &Arc<Self>) -> Result<Arc<Snapshot>, StoreError> {
        let mut st = self.lock();
        loop {
            let now = self.clock.now_unix();
            // A snapshot "from the future" (the clock stepped back) counts as too old.
            let age = st.snap.as_ref().map(|s| now - s.taken).filter(|a| *a >= 0);
            match (age, &st.snap) {
                (Some(a), Some(s)) if a < FRESH_SECS => return Ok(s.clone()),
                (Some(a), Some(s)) if a < STALE_SECS => {
                    let s = s.clone();
                    if !st.loading {
                        st.loading = true;
                        drop(st);
                        self.refresh_in_background();
                    }
                    return Ok(s);
                }
                _ => {}
            }
            if !st.loading {
                st.loading = true;
                drop(st);
                return self.make();
            }
            st = self.made.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Makes a snapshot now (the caller set `loading`), keeps it, wakes the waiters.
    fn make(&self) -> Result<Arc<Snapshot>, StoreError> {
        let made = build(self.store.as_ref(), &self.sessions, self.clock.now_unix()).map(Arc::new);
        let mut st = self.lock();
        st.loading = false;
        match &made {
            Ok(s) => {
                tracing::debug!(
                    ms = s.build_ms,
                    hosts = s.hosts.len(),
                    certs = s.certs.len(),
                    "web: fleet snapshot made"
                );
                st.snap = Some(s.clone());
            }
            Err(e) => tracing::warn!(error = %e, "web: the fleet snapshot could not be made"),
        }
        self.made.notify_all();
        made
    }

    /// Makes the next snapshot on a blocking task of the daemon's tracker (inline when
    /// there is no runtime), so the request that found it stale is not kept waiting.
    fn refresh_in_background(self: &Arc<Self>) {
        let me = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                self.tasks.spawn_blocking_on(
                    move || {
                        let _ = me.make();
                    },
                    &rt,
                );
            }
            Err(_) => {
                let _ = me.make();
            }
        }
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
