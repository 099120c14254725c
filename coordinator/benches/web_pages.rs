//! Web view benchmark: every page of the read-only web view (`coordinator/src/web/`) timed
//! through its real router (auth, store reads, templates; no TLS) over a sled store filled
//! with N hosts (one certificate each, mixed states and expiries, a realistic chain) and M
//! audit records. The baseline (100 hosts, 1,000 records) and the target (10,000 hosts,
//! 1,000,000 records) are filled and measured in the same run and printed side by side:
//! the first request of each page (cold caches) and the median of the following ones.
//! Prints figures; asserts only that every page answered 200.
//!
//!   cargo bench -p certfleet-coordinator --bench web_pages
//! Env: BENCH_BASE_HOSTS (100), BENCH_BASE_RECORDS (1000), BENCH_HOSTS (10000),
//!      BENCH_RECORDS (1000000), BENCH_RUNS (9).
//!
//! Trail shape: the records span the same 30 days whatever M is, one host in a hundred
//! records is about one chosen host, one in 100,000 is a `certificate_revoked` (the rare
//! kind searched for), the rest are `certificate_served` from other hosts.

use axum::body::Body;
use axum::http::{header, Request};
use certfleet_coordinator::audit::{AuditLog, Entry, Kind};
use certfleet_coordinator::fleet_ca::StateDir;
use certfleet_coordinator::model::{
    CertRecord, CertSpec, CertState, HostRecord, IssuedCert, OperatorRecord, Role,
};
use certfleet_coordinator::sessions::Sessions;
use certfleet_coordinator::store::{SledStore, Store};
use certfleet_coordinator::web::{self, auth, Web};
use certfleet_shared::clock::{ManualClock, SharedClock};
use certfleet_shared::ids::{CertId, HostId};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

mod common;
use common::{env, rss_kib, walk};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;
/// How far back the trail reaches, whatever its length.
const TRAIL_SECS: i64 = 30 * DAY;

/// A filled store behind the web view's router, and what the pages ask about.
struct Fleet {
    _tmp: tempfile::TempDir,
    web: Arc<Web>,
    router: axum::Router,
    cookie: String,
    some_host: HostId,
    hosts: usize,
    records: usize,
    fill_secs: f64,
}

fn host(i: usize) -> HostRecord {
    HostRecord {
        id: HostId::generate(),
        hostname: format!("host-{i:05}"),
        labels: BTreeMap::from([("role".to_owned(), ["web", "db", "cache"][i % 3].to_owned())]),
        enrolled: NOW - 40 * DAY,
        enrolled_from: "192.0.2.1:5000".into(),
        identity_serial: "01".into(),
        identity_spki: None,
        identity_not_after: Some(NOW + DAY),
        identity_rotated: None,
        ips: vec![format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256)
            .parse()
            .expect("an IPv4 address")],
        targets: vec!["nginx".into()],
        last_seen: Some(NOW - 60),
        inventory: vec![],
        requested_names: vec![],
        key_groups: vec![],
        challenge_modes: vec!["http-01/standalone".into()],
    }
}

/// About the size of a real leaf + intermediate in PEM: what every stored record carries.
fn chain_pem() -> String {
    let line = "MIIFazCCA1OgAwIBAgIRAIIQz7DSQONZRGPgu2OCiwAwDQYJKoZIhvcNAQELBQAw\n";
    format!(
        "-----BEGIN CERTIFICATE-----\n{}-----END CERTIFICATE-----\n",
        line.repeat(45)
    )
}

fn cert(h: &HostRecord, i: usize, chain: &str) -> CertRecord {
    let states = [
        CertState::Served,
        CertState::Served,
        CertState::Served,
        CertState::Installed,
        CertState::Pending,
        CertState::Failed,
    ];
    let state = states[i % states.len()];
    let spec = CertSpec {
        name: "default".into(),
        challenges: Default::default(),
        policy: Some("web".into()),
        identifiers: h
            .ips
            .iter()
            .map(|ip| ip.to_string().parse().expect("an identifier"))
            .collect(),
        issuer: "letsencrypt".into(),
        fallback_issuers: vec![],
        required_profile: Some("shortlived".into()),
        key_type: Default::default(),
        targets: vec!["nginx".into()],
        key_group: None,
    };
    let mut c = CertRecord::new(CertId::generate(), h.id.clone(), spec.clone(), NOW - DAY);
    c.state = state;
    if state != CertState::Pending {
        // Expiries spread over the next ~6.6 days, a few already past.
        let expires_in = (i as i64 * 7919) % (160 * 3600) - 3600;
        c.observed.current = Some(IssuedCert {
            identifiers: spec.identifiers,
            issuer: "letsencrypt".into(),
            profile: Some("shortlived".into()),
            serial: format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
            not_before: NOW + expires_in - 160 * 3600,
            not_after: NOW + expires_in,
            chain_pem: chain.to_owned(),
            ari_id: None,
            renew_unit: 0.5,
            issued_at: NOW + expires_in - 160 * 3600,
            validated_by: BTreeMap::new(),
        });
        c.schedule.next_action = Some(NOW + expires_in / 2);
    }
    if state == CertState::Failed {
        c.schedule.last_error = Some("urn:ietf:params:acme:error:connection: timeout".into());
    }
    c
}

fn operator() -> OperatorRecord {
    OperatorRecord {
        name: "ann".into(),
        role: Role::Viewer,
        serial: "0a".into(),
        issued: NOW - 10,
        not_after: NOW + DAY,
        lifetime_secs: DAY,
        added_by: "coordinator:state-dir".into(),
        added: NOW - 10,
        revoked_at: None,
        revoked_by: None,
        generation: 0,
    }
}

/// Fills a new store: hosts and certificates unflushed (one flush at the end), then the
/// audit trail by `append_unflushed` (each record sealed onto the chain as the daemon
/// does, without a flush per record).
fn fill(hosts: usize, records: usize) -> anyhow::Result<Fleet> {
    let t = Instant::now();
    let tmp = tempfile::tempdir()?;
    let store = Arc::new(SledStore::open(&tmp.path().join("store"))?);
    store.put_operator(&operator(), None)?;
    let chain = chain_pem();
    let mut ids = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let h = host(i);
        store.put_host(&h)?;
        store.put_cert_unflushed(&cert(&h, i, &chain))?;
        ids.push(h.id);
    }
    let audit = Arc::new(AuditLog::open(store.clone())?);
    let some_host = ids[ids.len() / 2].clone();
    for i in 0..records {
        let time = NOW - TRAIL_SECS + (i as i64 * TRAIL_SECS) / records as i64;
        let (kind, e) = if i % 100_000 == 99_999 {
            (Kind::CertificateRevoked, Entry::by("operator:ann"))
        } else if i % 100 == 0 {
            (
                Kind::CertificateServed,
                Entry::by("coordinator").host(&some_host),
            )
        } else {
            let h = &ids[i % ids.len()];
            (Kind::CertificateServed, Entry::by("coordinator").host(h))
        };
        let e = e.serial(format!("{:032x}", i)).detail("target", "nginx");
        audit.append_unflushed(kind, time, e)?;
    }
    audit.flush()?;
    let clock = ManualClock::new(NOW);
    let shared: SharedClock = Arc::new(clock);
    let sessions = Arc::new(Sessions::new(
        store.clone(),
        "node-bench".into(),
        shared.clone(),
    ));
    let logins = auth::WebSessions::new(3600);
    let cookie = format!("{}={}", auth::COOKIE, logins.open("ann", NOW));
    let tasks = TaskTracker::new();
    let fleet = web::fleet::FleetCache::new(
        store.clone(),
        sessions.clone(),
        shared.clone(),
        tasks.clone(),
    );
    let w = Arc::new(Web {
        store,
        audit,
        sessions,
        clock: shared,
        dir: StateDir::new(tmp.path()),
        logins,
        tasks,
        fleet,
    });
    Ok(Fleet {
        _tmp: tmp,
        router: web::router(w.clone()),
        web: w,
        cookie,
        some_host,
        hosts,
        records,
        fill_secs: t.elapsed().as_secs_f64(),
    })
}

/// (what, path) of every page measured.
fn pages(f: &Fleet) -> Vec<(&'static str, String)> {
    let last = f.hosts.saturating_sub(50);
    let day = NOW - 14 * DAY;
    let (since, until) = (
        certfleet_shared::timefmt::rfc3339(day),
        certfleet_shared::timefmt::rfc3339(day + 3600),
    );
    vec![
        ("overview", "/".into()),
        ("hosts, first page", "/hosts".into()),
        ("hosts, last page", format!("/hosts?offset={last}")),
        ("hosts, filter", "/hosts?q=host-0004".into()),
        ("certs, state=failed", "/certs?state=failed".into()),
        ("one host", format!("/hosts/{}", f.some_host)),
        ("audit, first page", "/audit".into()),
        ("audit, rare kind", "/audit?kind=certificate_revoked".into()),
        ("audit, by host", format!("/audit?host={}", f.some_host)),
        (
            "audit, 1 h two weeks ago",
            format!("/audit?since={since}&until={until}"),
        ),
        ("audit.jsonl, 100", "/audit.jsonl?limit=100".into()),
    ]
}

/// One request, body read whole: (status, bytes, milliseconds).
async fn get(f: &Fleet, path: &str) -> anyhow::Result<(u16, usize, f64)> {
    let t = Instant::now();
    let resp = f
        .router
        .clone()
        .oneshot(
            Request::get(path)
                .header(header::COOKIE, &f.cookie)
                .body(Body::empty())?,
        )
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body.len(), t.elapsed().as_secs_f64() * 1000.0))
}

/// Per page: (first request ms, median of the next `runs` ms, bytes).
async fn measure(f: &Fleet, runs: usize) -> anyhow::Result<Vec<(f64, f64, usize)>> {
    let mut out = Vec::new();
    for (what, path) in pages(f) {
        let (status, bytes, first) = get(f, &path).await?;
        anyhow::ensure!(status == 200, "{what} ({path}) answered {status}");
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            times.push(get(f, &path).await?.2);
        }
        times.sort_by(f64::total_cmp);
        out.push((first, times[times.len() / 2], bytes));
    }
    Ok(out)
}

/// What making the overview's and lists' snapshot costs (first, median of `runs`): the
/// work a page view starts at most every few seconds, off the request.
fn snapshot_ms(f: &Fleet, runs: usize) -> anyhow::Result<(f64, f64, usize)> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.clamp(1, 5) {
        let t = Instant::now();
        let snap = web::fleet::build(f.web.store.as_ref(), &f.web.sessions, NOW)?;
        anyhow::ensure!(snap.hosts.len() == f.hosts, "a snapshot of every host");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let first = times[0];
    times.sort_by(f64::total_cmp);
    Ok((first, times[times.len() / 2], 0))
}

fn main() -> anyhow::Result<()> {
    let runs = env("BENCH_RUNS", 9).max(1);
    let sizes = [
        (
            env("BENCH_BASE_HOSTS", 100),
            env("BENCH_BASE_RECORDS", 1000),
        ),
        (env("BENCH_HOSTS", 10_000), env("BENCH_RECORDS", 1_000_000)),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for (hosts, records) in sizes {
        let fleet = fill(hosts.max(1), records.max(1))?;
        println!(
            "web_pages: filled {} hosts + certificates and {} audit records in {:.1} s ({} MiB on disk)",
            fleet.hosts,
            fleet.records,
            fleet.fill_secs,
            walk(fleet._tmp.path()) >> 20
        );
        let figures = rt.block_on(measure(&fleet, runs))?;
        println!(
            "web_pages: RSS after the pages {} MiB (peak {} MiB)",
            rss_kib("VmRSS:") >> 10,
            rss_kib("VmHWM:") >> 10
        );
        let mut figures = figures;
        figures.push(snapshot_ms(&fleet, runs)?);
        let mut names: Vec<&str> = pages(&fleet).iter().map(|(w, _)| *w).collect();
        names.push("(snapshot, background)");
        results.push((fleet.hosts, fleet.records, names, figures));
    }
    print_table(&results, runs);
    Ok(())
}

type Sized = (usize, usize, Vec<&'static str>, Vec<(f64, f64, usize)>);

fn print_table(results: &[Sized], runs: usize) {
    println!();
    print!("{:<26}", "page (ms: first / median)");
    for (h, r, _, _) in results {
        print!(" | {:>30}", format!("{h} hosts, {r} records"));
    }
    println!();
    let Some((_, _, names, _)) = results.first() else {
        return;
    };
    for (i, name) in names.iter().enumerate() {
        print!("{name:<26}");
        for (_, _, _, figs) in results {
            let (first, median, bytes) = figs[i];
            print!(" | {:>8.1} / {:>7.1} {:>9} B", first, median, bytes);
        }
        println!();
    }
    println!("(median of {runs} requests after the first; release build; no TLS)");
}
