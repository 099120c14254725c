//! [`PgSyncStore`]: the synchronous [`Store`] and [`AuditStore`] traits over [`PgStore`]'s
//! async methods, until the traits become async (then this file goes). See the module
//! doc of `store::pg` for the trade-off.

use super::audit::{SeqCursor, SeqIndex};
use super::records::SCAN_PAGE;
use super::{PgOptions, PgStore};
use crate::model::{CertRecord, HostRecord, OperatorRecord};
use crate::store::cluster::{NodeRow, RelayRequest};
use crate::store::{
    AccountRecord, AuditRecordIter, AuditRow, AuditStore, EnrollError, Enrolled, Lease,
    RenewalRequest, SeqIter, Store, StoreError, StoredAuditRecord, TokenRecord,
};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::ratelimit::Budget;
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Rows per page of the lazy audit iterators.
const AUDIT_PAGE: i64 = 256;

type Job = Box<dyn FnOnce(PgStore) -> BoxFuture<'static, ()> + Send>;

fn stopped() -> StoreError {
    StoreError::Io(
        "the PostgreSQL store's thread has stopped (the coordinator is shutting down)".into(),
    )
}

/// [`PgStore`] behind the synchronous store traits: its own thread runs a tokio runtime
/// holding the pool and its connections; each call is sent there and waited for.
pub struct PgSyncStore {
    store: PgStore,
    /// A call with no answer by then is an error (a database that accepts connections but
    /// never answers must not hang the engine): a few statements' worth.
    call_timeout: Duration,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for PgSyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSyncStore")
            .field("store", &self.store)
            .finish()
    }
}

impl PgSyncStore {
    /// Starts the store's thread, connects and migrates there. Blocks the calling thread
    /// (call it from `spawn_blocking` or outside a runtime when that matters).
    pub fn open(opts: PgOptions) -> Result<Self, StoreError> {
        let call_timeout = opts.statement_timeout * 3 + Duration::from_secs(5);
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (opened_tx, opened_rx) = std_mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("certfleet-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = opened_tx.send(Err(StoreError::Io(
                            format!("cannot start the PostgreSQL store's runtime: {e}").into(),
                        )));
                        return;
                    }
                };
                rt.block_on(async move {
                    let store = match PgStore::open(&opts).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = opened_tx.send(Ok(store.clone()));
                    // Every call is its own task, so calls from several threads overlap
                    // on the pool's connections; all are finished before the thread ends.
                    let tasks = tokio_util::task::TaskTracker::new();
                    while let Some(job) = rx.recv().await {
                        tasks.spawn(job(store.clone()));
                    }
                    tasks.close();
                    tasks.wait().await;
                    store.pool.close();
                });
            })
            .map_err(|e| {
                StoreError::Io(format!("cannot start the PostgreSQL store's thread: {e}").into())
            })?;
        let store = opened_rx.recv().map_err(|_| stopped())??;
        Ok(Self {
            store,
            call_timeout,
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// `host:port/database` of the store, for logs (no user, no password).
    pub fn target(&self) -> &str {
        self.store.target()
    }

    /// Runs `f` on the store's runtime and waits for its answer.
    fn call<T, F>(&self, f: impl FnOnce(PgStore) -> F + Send + 'static) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.call_any(f)?
    }

    fn call_any<T, F>(&self, f: impl FnOnce(PgStore) -> F + Send + 'static) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = std_mpsc::sync_channel(1);
        let limit = self.call_timeout;
        let job: Job = Box::new(move |store| {
            Box::pin(async move {
                let target = store.target().to_owned();
                let answer = tokio::time::timeout(limit, f(store)).await.map_err(|_| {
                    StoreError::Io(
                        format!(
                            "PostgreSQL at {target} did not answer within {limit:?} \
                             (statement_timeout x3 + 5s); is it overloaded or unreachable?"
                        )
                        .into(),
                    )
                });
                let _ = tx.send(answer);
            })
        });
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    /// A lazy iterator over pages fetched on the store's runtime.
    fn paged<T: Send + 'static, C: Clone + Send + 'static>(
        &self,
        start: C,
        fetch: impl Fn(PgStore, C) -> BoxFuture<'static, Result<(Vec<T>, C, bool), StoreError>>
            + Send
            + Sync
            + Clone
            + 'static,
    ) -> Box<dyn Iterator<Item = Result<T, StoreError>> + '_> {
        let mut buf: VecDeque<T> = VecDeque::new();
        let mut cursor = Some(start);
        Box::new(std::iter::from_fn(move || loop {
            if let Some(item) = buf.pop_front() {
                return Some(Ok(item));
            }
            let at = cursor.take()?;
            let fetch = fetch.clone();
            match self.call(move |s| fetch(s, at)) {
                Ok((items, next, more)) => {
                    buf.extend(items);
                    if more {
                        cursor = Some(next);
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }))
    }

    fn seqs(&self, index: SeqIndex) -> SeqIter<'_> {
        self.paged(SeqCursor::default(), move |s, cursor: SeqCursor| {
            let index = index.clone();
            Box::pin(async move {
                let (seqs, next) = s.audit_seqs_page(&index, &cursor, AUDIT_PAGE).await?;
                let more = seqs.len() as i64 == AUDIT_PAGE;
                Ok((seqs, next, more))
            })
        })
    }
}

impl Drop for PgSyncStore {
    fn drop(&mut self) {
        // Closing the job channel ends the thread once running calls have finished.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A page size as SQL's `LIMIT` (a bigint).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store for PgSyncStore {
    fn account(&self, issuer: &str) -> Result<Option<AccountRecord>, StoreError> {
        let issuer = issuer.to_owned();
        self.call(move |s| async move { s.account(&issuer).await })
    }

    fn put_account(&self, issuer: &str, rec: &AccountRecord) -> Result<(), StoreError> {
        let (issuer, rec) = (issuer.to_owned(), rec.clone());
        self.call(move |s| async move { s.put_account(&issuer, &rec).await })
    }

    fn delete_account(&self, issuer: &str) -> Result<(), StoreError> {
        let issuer = issuer.to_owned();
        self.call(move |s| async move { s.delete_account(&issuer).await })
    }

    fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        let (hash, rec) = (token_hash.to_owned(), rec.clone());
        self.call(move |s| async move { s.put_token(&hash, &rec).await })
    }

    fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.call(move |s| async move { s.tokens().await })
    }

    fn tokens_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        let (after, limit) = (after.map(str::to_owned), sql_limit(limit));
        self.call(move |s| async move { s.tokens_page(after.as_deref(), limit).await })
    }

    fn enroll(
        &self,
        token_hash: &str,
        now: i64,
        source: Option<IpAddr>,
        host: &HostRecord,
    ) -> Result<Enrolled, EnrollError> {
        let (hash, host) = (token_hash.to_owned(), host.clone());
        self.call_any(move |s| async move { s.enroll(&hash, now, source, &host).await })?
    }

    fn host(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        let id = id.clone();
        self.call(move |s| async move { s.host(&id).await })
    }

    fn put_host(&self, rec: &HostRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.call(move |s| async move { s.put_host(&rec).await })
    }

    fn delete_host(&self, id: &HostId) -> Result<(), StoreError> {
        let id = id.clone();
        self.call(move |s| async move { s.delete_host(&id).await })
    }

    fn delete_cert(&self, rec: &CertRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.call(move |s| async move { s.delete_cert(&rec).await })
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.call(move |s| async move { s.hosts().await })
    }

    fn hosts_page(
        &self,
        after: Option<&HostId>,
        limit: usize,
    ) -> Result<Vec<HostRecord>, StoreError> {
        let (after, limit) = (after.map(HostId::to_string), sql_limit(limit));
        self.call(move |s| async move { s.hosts_page(after.as_deref(), limit).await })
    }

    fn cert(&self, id: &CertId) -> Result<Option<CertRecord>, StoreError> {
        let id = id.clone();
        self.call(move |s| async move { s.cert(&id).await })
    }

    fn put_cert(&self, rec: &CertRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.call(move |s| async move { s.put_cert(&rec).await })
    }

    fn put_cert_unflushed(&self, rec: &CertRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.call(move |s| async move { s.put_cert_unflushed(&rec).await })
    }

    fn take_lease(
        &self,
        cert: &CertId,
        holder: &str,
        _now: i64,
        secs: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let (cert, holder) = (cert.clone(), holder.to_owned());
        self.call(move |s| async move { s.take_lease(&cert, &holder, secs).await })
    }

    fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.call(move |s| async move { s.release_lease(&lease).await })
    }

    fn put_cert_fenced(
        &self,
        rec: &CertRecord,
        lease: &Lease,
        _now: i64,
    ) -> Result<(), StoreError> {
        let (rec, lease) = (rec.clone(), lease.clone());
        self.call(move |s| async move { s.put_cert_fenced(&rec, &lease).await })
    }

    fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        self.call(move |s| async move { s.certs().await })
    }

    fn certs_page(
        &self,
        after: Option<&CertId>,
        limit: usize,
    ) -> Result<Vec<CertRecord>, StoreError> {
        let (after, limit) = (after.map(CertId::to_string), sql_limit(limit));
        self.call(move |s| async move { s.certs_page(after.as_deref(), limit).await })
    }

    fn scan_certs(
        &self,
        f: &mut dyn FnMut(CertRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut after: Option<String> = None;
        loop {
            let at = after.clone();
            let page =
                self.call(move |s| async move { s.certs_page(at.as_deref(), SCAN_PAGE).await })?;
            let full = page.len() as i64 == SCAN_PAGE;
            for rec in page {
                after = Some(rec.id.to_string());
                f(rec)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn certs_for_host(&self, host: &HostId) -> Result<Vec<CertRecord>, StoreError> {
        let host = host.clone();
        self.call(move |s| async move { s.certs_for_host(&host).await })
    }

    fn certs_in_group(&self, group: &str) -> Result<Vec<CertRecord>, StoreError> {
        let group = group.to_owned();
        self.call(move |s| async move { s.certs_in_group(&group).await })
    }

    fn due(&self, now: i64, limit: usize) -> Result<Vec<CertId>, StoreError> {
        self.call(move |s| async move { s.due(now, limit).await })
    }

    fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.call(move |s| async move { s.next_due().await })
    }

    fn ip_holder(&self, ip: IpAddr) -> Result<Option<HostId>, StoreError> {
        self.call(move |s| async move { s.ip_holder(ip).await })
    }

    fn claim_ip(
        &self,
        ip: IpAddr,
        host: &HostId,
        expected: Option<&HostId>,
    ) -> Result<HostId, StoreError> {
        let (host, expected) = (host.clone(), expected.cloned());
        self.call(move |s| async move { s.claim_ip(ip, &host, expected.as_ref()).await })
    }

    fn release_ip(&self, ip: IpAddr, host: &HostId) -> Result<bool, StoreError> {
        let host = host.clone();
        self.call(move |s| async move { s.release_ip(ip, &host).await })
    }

    fn ips_held_by(&self, host: &HostId) -> Result<Vec<IpAddr>, StoreError> {
        let host = host.clone();
        self.call(move |s| async move { s.ips_held_by(&host).await })
    }

    fn budget(&self, issuer: &str) -> Result<Option<Budget>, StoreError> {
        let issuer = issuer.to_owned();
        self.call(move |s| async move { s.budget(&issuer).await })
    }

    fn put_budget(&self, issuer: &str, budget: &Budget) -> Result<(), StoreError> {
        let (issuer, budget) = (issuer.to_owned(), budget.clone());
        self.call(move |s| async move { s.put_budget(&issuer, &budget).await })
    }

    fn request_renewal(&self, req: &RenewalRequest) -> Result<(), StoreError> {
        let req = req.clone();
        self.call(move |s| async move { s.request_renewal(&req).await })
    }

    fn renewal_request(&self, cert: &CertId) -> Result<Option<RenewalRequest>, StoreError> {
        let cert = cert.clone();
        self.call(move |s| async move { s.renewal_request(&cert).await })
    }

    fn renewal_requests(&self) -> Result<Vec<RenewalRequest>, StoreError> {
        self.call(move |s| async move { s.renewal_requests().await })
    }

    fn clear_renewal_request(&self, req: &RenewalRequest) -> Result<(), StoreError> {
        let req = req.clone();
        self.call(move |s| async move { s.clear_renewal_request(&req).await })
    }

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let name = name.to_owned();
        self.call(move |s| async move { s.operator(&name).await })
    }

    fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.call(move |s| async move { s.operators().await })
    }

    fn put_operator(
        &self,
        rec: &OperatorRecord,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        let rec = rec.clone();
        self.call(move |s| async move { s.put_operator(&rec, expected).await })
    }
}

/// An [`AuditRow`] with owned fields, to cross to the store's thread.
struct OwnedRow {
    seq: u64,
    json: String,
    prev: String,
    hash: String,
    host_id: Option<String>,
    ips: Vec<[u8; 16]>,
    serial: Option<String>,
}

impl OwnedRow {
    fn of(row: &AuditRow<'_>) -> Self {
        Self {
            seq: row.seq,
            json: row.json.to_owned(),
            prev: row.prev.to_owned(),
            hash: row.hash.to_owned(),
            host_id: row.host_id.map(str::to_owned),
            ips: row.ips.to_vec(),
            serial: row.serial.map(str::to_owned),
        }
    }
    fn row(&self) -> AuditRow<'_> {
        AuditRow {
            seq: self.seq,
            json: &self.json,
            prev: &self.prev,
            hash: &self.hash,
            host_id: self.host_id.as_deref(),
            ips: &self.ips,
            serial: self.serial.as_deref(),
        }
    }
}

impl AuditStore for PgSyncStore {
    fn append_audit(&self, row: &AuditRow<'_>) -> Result<(), StoreError> {
        let row = OwnedRow::of(row);
        self.call(move |s| async move { s.append_audit(&row.row()).await })
    }

    fn append_audit_unflushed(&self, row: &AuditRow<'_>) -> Result<(), StoreError> {
        let row = OwnedRow::of(row);
        self.call(move |s| async move { s.append_audit_unflushed(&row.row()).await })
    }

    fn flush_audit(&self) -> Result<(), StoreError> {
        self.call(move |s| async move { s.flush_audit().await })
    }

    fn audit_record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(move |s| async move { s.audit_record(seq).await })
    }

    fn last_audit_record(&self) -> Result<Option<StoredAuditRecord>, StoreError> {
        self.call(move |s| async move { s.last_audit_record().await })
    }

    fn audit_records_from(&self, from: u64) -> AuditRecordIter<'_> {
        self.paged(from, |s, from: u64| {
            Box::pin(async move {
                let page = s.audit_records_from(from, AUDIT_PAGE).await?;
                let more = page.len() as i64 == AUDIT_PAGE;
                let next = page.last().map_or(from, |r| r.seq.saturating_add(1));
                Ok((page, next, more))
            })
        })
    }

    fn audit_records_before(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredAuditRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |s| async move { s.audit_records_before(before, limit).await })
    }

    fn audit_seqs_by_host(&self, host_id: &str) -> SeqIter<'_> {
        self.seqs(SeqIndex::Host(host_id.to_owned()))
    }

    fn audit_seqs_by_serial(&self, serial: &str) -> SeqIter<'_> {
        self.seqs(SeqIndex::Serial(serial.to_owned()))
    }

    fn audit_seqs_by_ip(&self, lo: [u8; 16], hi: [u8; 16]) -> SeqIter<'_> {
        self.seqs(SeqIndex::Ip(lo, hi))
    }

    #[cfg(any(test, feature = "test-support"))]
    fn overwrite_audit_record_for_test(&self, seq: u64, json: &[u8]) -> Result<(), StoreError> {
        let json = json.to_vec();
        self.call(move |s| async move { s.overwrite_audit_record_for_test(seq, &json).await })
    }

    #[cfg(any(test, feature = "test-support"))]
    fn remove_audit_record_for_test(&self, seq: u64) -> Result<(), StoreError> {
        self.call(move |s| async move { s.remove_audit_record_for_test(seq).await })
    }
}

impl crate::store::cluster::ClusterStore for PgSyncStore {
    fn shared(&self) -> bool {
        true
    }

    fn backend(&self) -> String {
        format!("postgres ({})", self.store.target())
    }

    fn node_beat(
        &self,
        node: &str,
        name: &str,
        started: i64,
        sessions: u64,
        _now: i64,
    ) -> Result<(), StoreError> {
        let (node, name) = (node.to_owned(), name.to_owned());
        self.call(move |s| async move { s.node_beat(&node, &name, started, sessions).await })
    }

    fn nodes(&self, _now: i64) -> Result<Vec<NodeRow>, StoreError> {
        self.call(move |s| async move { s.nodes().await })
    }

    fn remove_node(&self, node: &str) -> Result<(), StoreError> {
        let node = node.to_owned();
        self.call(move |s| async move { s.remove_node(&node).await })
    }

    fn put_session(
        &self,
        host: &HostId,
        node: &str,
        session: u64,
        _now: i64,
    ) -> Result<(), StoreError> {
        let (host, node) = (host.clone(), node.to_owned());
        self.call(move |s| async move { s.put_session(&host, &node, session).await })
    }

    fn end_session(&self, host: &HostId, node: &str, session: u64) -> Result<(), StoreError> {
        let (host, node) = (host.clone(), node.to_owned());
        self.call(move |s| async move { s.end_session(&host, &node, session).await })
    }

    fn session_node(&self, host: &HostId, _now: i64) -> Result<Option<String>, StoreError> {
        let host = host.clone();
        self.call(move |s| async move { s.session_node(&host).await })
    }

    fn sessions(&self, _now: i64) -> Result<Vec<(HostId, String)>, StoreError> {
        self.call(move |s| async move { s.sessions().await })
    }

    fn live_leases(&self, _now: i64) -> Result<Vec<Lease>, StoreError> {
        self.call(move |s| async move { s.live_leases().await })
    }

    fn relay_send(&self, req: &RelayRequest) -> Result<(), StoreError> {
        let req = req.clone();
        self.call(move |s| async move { s.relay_send(&req).await })
    }

    fn relay_inbox(&self, node: &str, limit: usize) -> Result<Vec<RelayRequest>, StoreError> {
        let node = node.to_owned();
        self.call(move |s| async move { s.relay_inbox(&node, limit).await })
    }

    fn relay_answer(&self, id: &str, reply: &[u8]) -> Result<(), StoreError> {
        let (id, reply) = (id.to_owned(), reply.to_vec());
        self.call(move |s| async move { s.relay_answer(&id, &reply).await })
    }

    fn relay_reply(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_owned();
        self.call(move |s| async move { s.relay_reply(&id).await })
    }

    fn relay_cancel(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |s| async move { s.relay_cancel(&id).await })
    }

    fn relay_withdraw(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |s| async move { s.relay_withdraw(&id).await })
    }
}
