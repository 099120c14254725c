//! Scheduler benchmark: 100,000 stored certificates, 100 of them due. One "tick" is what
//! the reconciler's scheduler does per wake-up before any network work: find the due
//! certificates, load each, decide what to do (pure), and write its next action back.
//!
//! Baseline in the same run: the same tick done by scanning every record (what a
//! scheduler without the next-action index would do). Prints figures; asserts nothing.
//!
//!   cargo bench -p certfleet-coordinator --bench schedule
//! Env: BENCH_CERTS (100000), BENCH_DUE (100), BENCH_TICKS (20).

use certfleet_coordinator::config::KeyTypeName;
use certfleet_coordinator::engine::decide;
use certfleet_coordinator::model::CertSpec;
use certfleet_coordinator::model::{CertRecord, CertState, IssuedCert};
use certfleet_coordinator::store::{SledStore, Store};
use certfleet_shared::ids::{CertId, HostId};
use std::time::Instant;

mod common;
use common::{env, rss_kib, walk};

fn record(i: usize, now: i64, due: bool) -> CertRecord {
    let ip: std::net::IpAddr = std::net::Ipv4Addr::from(0x0b00_0000u32 + i as u32).into();
    let not_before = now - 3600;
    let not_after = not_before + 160 * 3600;
    let spec = CertSpec {
        name: Default::default(),
        challenges: Default::default(),
        policy: None,
        identifiers: vec![ip.into()],
        issuer: "le".into(),
        fallback_issuers: vec![],
        required_profile: None,
        key_type: KeyTypeName::EcdsaP256,
        targets: vec!["nginx".into()],
        key_group: None,
    };
    // Due ones now; the rest spread over the next 80 hours.
    let next = if due {
        now - 1
    } else {
        now + 60 + (i as i64 * 7919) % (80 * 3600)
    };
    let mut rec = CertRecord::new(CertId::generate(), HostId::generate(), spec, next);
    rec.state = CertState::Installed;
    rec.observed.current = Some(IssuedCert {
        validated_by: Default::default(),
        identifiers: vec![ip.into()],
        issuer: "le".into(),
        profile: Some("shortlived".into()),
        serial: format!("{i:032x}"),
        not_before,
        not_after,
        chain_pem: "-----BEGIN CERTIFICATE-----\n".to_string()
            + &"A".repeat(1400)
            + "\n-----END CERTIFICATE-----\n",
        ari_id: Some(format!("aki{i}.serial{i}")),
        renew_unit: 0.5,
        issued_at: not_before,
    });
    rec.observed.installed_serial = Some(format!("{i:032x}"));
    rec.observed.served_serial = Some(format!("{i:032x}"));
    rec.updated = now;
    rec
}

/// One tick: what is due → load → decide → write the next action.
fn tick_indexed(store: &SledStore, now: i64) -> usize {
    let due = store.due(now, 512).unwrap_or_default();
    for id in &due {
        if let Ok(Some(mut rec)) = store.cert(id) {
            let _ = decide(&rec, now);
            rec.schedule.next_action = Some(now + 3600);
            let _ = store.put_cert_unflushed(&rec);
        }
    }
    due.len()
}

/// Baseline: the same tick by scanning every certificate.
fn tick_full_scan(store: &SledStore, now: i64) -> usize {
    let all = store.certs().unwrap_or_default();
    let mut n = 0;
    for mut rec in all
        .into_iter()
        .filter(|r| r.schedule.next_action.is_some_and(|a| a <= now))
    {
        let _ = decide(&rec, now);
        rec.schedule.next_action = Some(now + 3600);
        let _ = store.put_cert_unflushed(&rec);
        n += 1;
    }
    n
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "schedule: skipped (run with `cargo bench -p certfleet-coordinator --bench schedule`)"
        );
        return;
    }
    let total = env("BENCH_CERTS", 100_000);
    let due = env("BENCH_DUE", 100);
    let ticks = env("BENCH_TICKS", 20);
    let dir = tempfile::tempdir().expect("temp dir");
    let rss_before = rss_kib("VmRSS:");
    let store = SledStore::open(&dir.path().join("store")).expect("store");
    let now = 1_800_000_000i64;

    let t = Instant::now();
    for i in 0..total {
        store
            .put_cert_unflushed(&record(i, now, false))
            .expect("put");
    }
    println!(
        "schedule benchmark: {total} certificates stored in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut indexed = Vec::new();
    let mut scanned = Vec::new();
    let mut seen = (0, 0);
    let mut next = total;
    for _ in 0..ticks {
        // Make `due` certificates due for this tick (fresh ones, like renewals coming up).
        for _ in 0..due {
            store
                .put_cert_unflushed(&record(next, now, true))
                .expect("put");
            next += 1;
        }
        let t = Instant::now();
        seen.0 += tick_indexed(&store, now);
        indexed.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The coordinator's side: store open, 100k records, ticks done through the index.
    let (rss_indexed, hwm_indexed) = (rss_kib("VmRSS:"), rss_kib("VmHWM:"));
    for _ in 0..ticks.min(5) {
        for _ in 0..due {
            store
                .put_cert_unflushed(&record(next, now, true))
                .expect("put");
            next += 1;
        }
        let t = Instant::now();
        seen.1 += tick_full_scan(&store, now);
        scanned.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (mi, ms) = (median(&mut indexed), median(&mut scanned));
    let disk: u64 = walk(dir.path());
    println!(
        "ticks: {ticks}, due per tick: {due} (indexed saw {}, full scan saw {})",
        seen.0, seen.1
    );
    println!("                                  median      min      max");
    println!(
        "tick via next-action index    {mi:>9.2} ms {:>7.2} ms {:>7.2} ms",
        indexed.first().copied().unwrap_or(0.0),
        indexed.last().copied().unwrap_or(0.0)
    );
    println!(
        "baseline: full scan           {ms:>9.2} ms {:>7.2} ms {:>7.2} ms",
        scanned.first().copied().unwrap_or(0.0),
        scanned.last().copied().unwrap_or(0.0)
    );
    println!("speed-up: {:.0}x", ms / mi.max(1e-9));
    println!(
        "memory with the index (store open, {total} certificates, ticks done): RSS {} MiB, peak {} MiB \
         ({} MiB before opening the store)",
        rss_indexed / 1024,
        hwm_indexed / 1024,
        rss_before / 1024
    );
    println!(
        "memory after the full-scan baseline (all records loaded at once): peak {} MiB; store on disk {} MiB",
        rss_kib("VmHWM:") / 1024,
        disk / (1024 * 1024)
    );
}
