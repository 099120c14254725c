//! Audit log benchmark: 1,000,000 records from ~10,000 hosts, appended to the coordinator's
//! store (same sled settings as the coordinator). Prints append throughput (bulk via
//! `append_unflushed` + one flush, and durable `append` with a flush per record), query
//! time by host, by IPv4 /24 and /16, by IPv6 /64 and by serial, `verify()` time, RSS and
//! the store's size on disk.
//!
//! Baseline in the same run: each query answered by a full scan (every record read,
//! decoded and filtered, i.e. what `query()` does when no index applies), to show what the
//! indexes buy. Prints figures; asserts nothing.
//!
//!   cargo bench -p certfleet-coordinator --bench audit
//! Env: BENCH_RECORDS (1000000), BENCH_HOSTS (10000), BENCH_DURABLE (2000),
//!      BENCH_QUERY_RUNS (9), BENCH_SCAN_RUNS (3).
//!
//! Traffic shape: hosts sit 40 to an IPv4 /24 (and an IPv6 /64), ten /24s to a /16, spread
//! over 11.0.0.0/8 (and 2001:db8::/32). Each host enrolls once, then cycles through
//! order_created → challenge_presented → challenge_validated (3% challenge_failed and a
//! retry) → certificate_issued → certificate_installed → renewal_scheduled, with a sprinkle
//! of operator_action, at_risk and rate_limit_refused. Records come from hosts picked at
//! random, so each host has ~BENCH_RECORDS/BENCH_HOSTS records spread over the whole log.

use certfleet_coordinator::audit::{parse_network, AuditLog, Entry, Kind, Query, Record};
use certfleet_coordinator::store::{AuditStore, SledStore};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

mod common;
use common::{env, rss_kib, walk};

/// splitmix64: deterministic, so every run writes the same log.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// An id shaped like the coordinator's ("h-" / "c-" + 16 of the id alphabet).
fn id(prefix: &str, n: u64) -> String {
    let mut z = mix(n ^ 0x5eed);
    let mut s = String::from(prefix);
    for _ in 0..16 {
        s.push(ALPHABET[(z % 32) as usize] as char);
        z /= 32;
    }
    s
}

fn hex(n: u64, words: u64) -> String {
    (0..words)
        .map(|w| format!("{:016x}", mix(n.wrapping_mul(31).wrapping_add(w))))
        .collect()
}

const HOSTS_PER_24: usize = 40;
const NETS_PER_16: usize = 10;

/// Host `i`'s /24 (and /64) index and its /16 (and /48) index.
fn subnet(i: usize) -> (usize, usize) {
    let s = i / HOSTS_PER_24;
    (s, s / NETS_PER_16)
}

fn v4(i: usize) -> Ipv4Addr {
    let (s, g) = subnet(i);
    Ipv4Addr::new(
        11,
        ((g * 7 + 1) % 256) as u8,
        ((s % NETS_PER_16) * 23 + 4) as u8,
        ((i % HOSTS_PER_24) * 6 + 10) as u8,
    )
}

fn v6(i: usize) -> Ipv6Addr {
    let (s, g) = subnet(i);
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        g as u16,
        (s % NETS_PER_16) as u16,
        0,
        0,
        0,
        (i % HOSTS_PER_24) as u16 + 1,
    )
}

/// The serial of host `i`'s `cycle`-th certificate (16 bytes, lower-case hex).
fn serial(i: usize, cycle: u32) -> String {
    hex(((i as u64) << 20) | u64::from(cycle), 2)
}

struct Host {
    id: String,
    cert: String,
    ips: [IpAddr; 2],
    enrolled: u8,
    step: u8,
    cycle: u32,
    order: u64,
}

const ACCOUNT: &str = "https://acme-v02.api.letsencrypt.org/acme/acct/2147483647";

fn order_url(order: u64) -> String {
    format!(
        "https://acme-v02.api.letsencrypt.org/acme/order/2147483647/{}",
        300_000_000_000 + order
    )
}

/// The host's next event (and its state advanced past it).
fn event(h: &mut Host, i: usize, now: i64, rng: &mut Rng, orders: &mut u64) -> (Kind, Entry) {
    let coord = || Entry::by("coordinator");
    let by_host = |h: &Host| Entry::by(format!("host:{}", h.id));
    // The occasional event outside the issuance cycle.
    let roll = rng.below(1000);
    if h.enrolled == 2 && roll < 5 {
        return (
            Kind::OperatorAction,
            Entry::by("operator:alice")
                .host(&h.id)
                .detail("action", "renew --force")
                .detail("reason", "key compromise drill"),
        );
    }
    if h.enrolled == 2 && roll < 8 {
        return (
            Kind::AtRisk,
            coord()
                .host(&h.id)
                .cert(&h.cert)
                .ips(&h.ips)
                .serial(serial(i, h.cycle.saturating_sub(1)))
                .detail(
                    "last_error",
                    "agent did not answer the install request within 60 s",
                ),
        );
    }
    if h.enrolled == 2 && roll < 10 {
        return (
            Kind::RateLimitRefused,
            coord()
                .host(&h.id)
                .cert(&h.cert)
                .ips(&h.ips)
                .issuer("le")
                .detail("limit", "new_orders_per_account")
                .detail("retry_after", now + 3 * 3600),
        );
    }
    match h.enrolled {
        0 => {
            h.enrolled = 1;
            return (
                Kind::TokenUsed,
                Entry::by(format!("host:{}", h.id))
                    .host(&h.id)
                    .detail("token_sha256_prefix", &hex(i as u64, 1)[..12])
                    .detail("from", format!("{}:{}", h.ips[0], 40_000 + i % 20_000)),
            );
        }
        1 => {
            h.enrolled = 2;
            let labels: serde_json::Map<String, serde_json::Value> = [
                ("env", "prod"),
                ("role", if i.is_multiple_of(3) { "db" } else { "web" }),
                ("dc", "fra1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
            return (
                Kind::HostEnrolled,
                Entry::by(format!("host:{}", h.id))
                    .host(&h.id)
                    .detail("from", format!("{}:{}", h.ips[0], 40_000 + i % 20_000))
                    .detail("hostname", format!("node-{i:05}.fra1.example.net"))
                    .detail("labels", labels)
                    .detail("identity_serial", hex(i as u64 + 7, 2))
                    .detail("token_sha256_prefix", &hex(i as u64, 1)[..12]),
            );
        }
        _ => {}
    }
    let step = h.step;
    h.step = (h.step + 1) % 6;
    match step {
        0 => {
            *orders += 1;
            h.order = *orders;
            let replaces =
                (h.cycle > 0).then(|| format!("aki{}.{}", &hex(9, 1), serial(i, h.cycle - 1)));
            (
                Kind::OrderCreated,
                coord()
                    .host(&h.id)
                    .cert(&h.cert)
                    .ips(&h.ips)
                    .issuer("le")
                    .detail("account", ACCOUNT)
                    .detail("order_url", order_url(h.order))
                    .detail("profile", Some("shortlived"))
                    .detail("replaces", replaces)
                    .detail("replaces_ignored_by_ca", false)
                    .detail(
                        "reason",
                        if h.cycle == 0 {
                            "no certificate yet"
                        } else {
                            "inside the ARI renewal window"
                        },
                    ),
            )
        }
        1 => (
            Kind::ChallengePresented,
            by_host(h)
                .host(&h.id)
                .cert(&h.cert)
                .ips(&h.ips)
                .detail("type", "http-01")
                .detail("order_url", order_url(h.order)),
        ),
        2 if rng.below(100) < 3 => {
            h.step = 1; // presented again, then validated
            (
                Kind::ChallengeFailed,
                coord()
                    .host(&h.id)
                    .cert(&h.cert)
                    .ips(&h.ips[..1])
                    .detail("order_url", order_url(h.order))
                    .detail(
                        "problem",
                        format!(
                            "urn:ietf:params:acme:error:connection: {}: Fetching \
                             http://{}/.well-known/acme-challenge/{}: Timeout during connect \
                             (likely firewall problem)",
                            h.ips[0],
                            h.ips[0],
                            hex(h.order, 2)
                        ),
                    ),
            )
        }
        2 => (
            Kind::ChallengeValidated,
            coord()
                .host(&h.id)
                .cert(&h.cert)
                .ips(&h.ips)
                .detail("order_url", order_url(h.order)),
        ),
        3 => (
            Kind::CertificateIssued,
            coord()
                .host(&h.id)
                .cert(&h.cert)
                .ips(&h.ips)
                .serial(serial(i, h.cycle))
                .issuer("le")
                .detail("not_before", now - 60)
                .detail("not_after", now - 60 + 160 * 3600)
                .detail(
                    "sans",
                    h.ips.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                )
                .detail("issuer_chain_sha256", vec![hex(42, 4)])
                .detail("order_url", order_url(h.order))
                .detail("profile", Some("shortlived"))
                .detail("reason", "inside the ARI renewal window"),
        ),
        4 => (
            Kind::CertificateInstalled,
            by_host(h)
                .host(&h.id)
                .cert(&h.cert)
                .ips(&h.ips)
                .serial(serial(i, h.cycle))
                .detail("target", "nginx:/etc/nginx/tls/fleet.pem"),
        ),
        _ => {
            h.cycle += 1;
            (
                Kind::RenewalScheduled,
                coord()
                    .host(&h.id)
                    .cert(&h.cert)
                    .detail("at", now + 80 * 3600)
                    .detail("source", "ari")
                    .detail("window_start", now + 78 * 3600)
                    .detail("window_end", now + 82 * 3600),
            )
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(0.0)
}

/// Baseline: every record read, decoded and filtered (what `query()` does without an index).
fn full_scan(store: &dyn AuditStore, pred: &dyn Fn(&Record) -> bool) -> usize {
    store
        .audit_records_from(0)
        .filter_map(|r| r.ok())
        .filter_map(|r| serde_json::from_slice::<Record>(&r.json).ok())
        .filter(|r| pred(r))
        .count()
}

/// Index entries a record adds: (by host, by IP, by serial).
#[derive(Default)]
struct IndexEntries(usize, usize, usize);

impl IndexEntries {
    fn add(&mut self, e: &Entry) {
        let mut ips = e.identifiers.clone();
        ips.sort_unstable();
        ips.dedup();
        self.0 += usize::from(e.host_id.is_some());
        self.1 += ips.len();
        self.2 += usize::from(e.serial.is_some());
    }
}

struct Row {
    name: String,
    matched: usize,
    times: Vec<f64>,
}

impl Row {
    fn print(&mut self) {
        let mut t = self.times.clone();
        let m = median(&mut t);
        println!(
            "{:<48} {:>7} {:>11.2} ms {:>9.2} ms {:>9.2} ms",
            self.name,
            self.matched,
            m,
            t.first().copied().unwrap_or(0.0),
            t.last().copied().unwrap_or(0.0)
        );
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("audit: skipped (run with `cargo bench -p certfleet-coordinator --bench audit`)");
        return;
    }
    let total = env("BENCH_RECORDS", 1_000_000);
    let nhosts = env("BENCH_HOSTS", 10_000).max(1);
    let durable = env("BENCH_DURABLE", 2_000);
    let qruns = env("BENCH_QUERY_RUNS", 9).max(1);
    let sruns = env("BENCH_SCAN_RUNS", 3).max(1);
    let started = Instant::now();

    let dir = tempfile::tempdir().expect("temp dir");
    let rss_before = rss_kib("VmRSS:");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    let log = AuditLog::open(store.clone()).expect("audit log");
    let mut index = IndexEntries::default();

    let mut hosts: Vec<Host> = (0..nhosts)
        .map(|i| Host {
            id: id("h-", i as u64),
            cert: id("c-", (i + nhosts) as u64),
            ips: [v4(i).into(), v6(i).into()],
            enrolled: 0,
            step: 0,
            cycle: 0,
            order: 0,
        })
        .collect();
    let mut rng = Rng(2024);
    let mut orders = 0u64;
    let mut now = 1_750_000_000i64;
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();

    // (a) Bulk load: append_unflushed, one flush at the end. Entries are generated in chunks
    // outside the timed region so the figure is the log's cost, not the generator's.
    const CHUNK: usize = 10_000;
    let mut appended = 0usize;
    let mut append_s = 0.0f64;
    let mut record_bytes = 0usize;
    let mut next_report = 250_000;
    while appended < total {
        let n = CHUNK.min(total - appended);
        let batch: Vec<(Kind, i64, Entry)> = (0..n)
            .map(|_| {
                let i = rng.below(nhosts as u64) as usize;
                now += 2 + rng.below(3) as i64;
                let (k, e) = event(&mut hosts[i], i, now, &mut rng, &mut orders);
                *kinds.entry(k.as_str()).or_default() += 1;
                index.add(&e);
                (k, now, e)
            })
            .collect();
        let t = Instant::now();
        for (k, time, e) in batch {
            let r = log.append_unflushed(k, time, e).expect("append_unflushed");
            if appended < 1000 {
                record_bytes += serde_json::to_vec(&r).map(|b| b.len()).unwrap_or(0);
            }
            appended += 1;
        }
        append_s += t.elapsed().as_secs_f64();
        if appended >= next_report && appended < total {
            eprintln!(
                "  … {appended} appended ({:.0} s elapsed)",
                started.elapsed().as_secs_f64()
            );
            next_report += 250_000;
        }
    }
    let t = Instant::now();
    log.flush().expect("flush");
    let flush_s = t.elapsed().as_secs_f64();
    let (rss_loaded, hwm_loaded) = (rss_kib("VmRSS:"), rss_kib("VmHWM:"));
    let disk_loaded = walk(dir.path());

    // (b) Durable appends, one flush each, onto the loaded log (the coordinator's path).
    let mut lat = Vec::with_capacity(durable);
    let t_all = Instant::now();
    for _ in 0..durable {
        let i = rng.below(nhosts as u64) as usize;
        now += 2 + rng.below(3) as i64;
        let (k, e) = event(&mut hosts[i], i, now, &mut rng, &mut orders);
        index.add(&e);
        let t = Instant::now();
        log.append(k, now, e).expect("append");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let durable_s = t_all.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));

    println!(
        "audit benchmark: {total} records from {nhosts} hosts (~{} per host), {} record kinds, \
         mean record {} bytes as stored JSON (first 1000)",
        total / nhosts,
        kinds.len(),
        record_bytes / appended.clamp(1, 1000)
    );
    println!(
        "kinds: {}",
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "bulk append (append_unflushed, one flush at the end): {:.1} s for {total} records \
         = {:.0} records/s ({:.1} µs/record); final flush {:.2} s",
        append_s,
        total as f64 / append_s.max(1e-9),
        append_s * 1e6 / total.max(1) as f64,
        flush_s
    );
    println!(
        "durable append (append = flush per record), {durable} records onto the loaded log: \
         {:.1} s = {:.0} records/s; latency median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        durable_s,
        durable as f64 / durable_s.max(1e-9),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );

    // Queries. Each run asks about a different host / network / serial (spread over the
    // fleet); the baseline asks the first `sruns` of the same questions by full scan.
    let pick = |run: usize, n: usize| (run * 7919 + 13) % n.max(1);
    let n24 = nhosts.div_ceil(HOSTS_PER_24);
    let n16 = n24.div_ceil(NETS_PER_16);
    let net24 = |run: usize| {
        let h = pick(run, n24) * HOSTS_PER_24;
        let a = v4(h).octets();
        parse_network(&format!("{}.{}.{}.0/24", a[0], a[1], a[2])).expect("cidr")
    };
    let net16 = |run: usize| {
        let h = pick(run, n16) * HOSTS_PER_24 * NETS_PER_16;
        let a = v4(h).octets();
        parse_network(&format!("{}.{}.0.0/16", a[0], a[1])).expect("cidr")
    };
    let net64 = |run: usize| {
        let h = pick(run, n24) * HOSTS_PER_24;
        let s = v6(h).segments();
        parse_network(&format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])).expect("cidr")
    };
    type Questions<'a> = Vec<(String, Box<dyn Fn(usize) -> Query + 'a>)>;
    let questions: Questions = vec![
        (
            "by host".into(),
            Box::new(|run| Query {
                host_id: Some(hosts[pick(run, nhosts)].id.clone()),
                ..Default::default()
            }),
        ),
        (
            "by IPv4 /24".into(),
            Box::new(|run| Query {
                network: Some(net24(run)),
                ..Default::default()
            }),
        ),
        (
            "by IPv4 /16".into(),
            Box::new(|run| Query {
                network: Some(net16(run)),
                ..Default::default()
            }),
        ),
        (
            "by IPv6 /64".into(),
            Box::new(|run| Query {
                network: Some(net64(run)),
                ..Default::default()
            }),
        ),
        (
            "by serial".into(),
            Box::new(|run| Query {
                serial: Some(serial(pick(run, nhosts), 0)),
                ..Default::default()
            }),
        ),
        (
            "11.0.0.0/8 limit 10001 (server cap)".into(),
            Box::new(|_| Query {
                network: parse_network("11.0.0.0/8").ok(),
                limit: Some(10_001),
                ..Default::default()
            }),
        ),
    ];
    println!();
    println!(
        "queries over {} records (query(); each run a different host/network/serial):",
        log.len()
    );
    println!(
        "{:<48} {:>7} {:>14} {:>12} {:>12}",
        "", "matched", "median", "min", "max"
    );
    let mut indexed_medians = Vec::new();
    for (name, q) in &questions {
        let mut row = Row {
            name: format!("{name} (index)"),
            matched: 0,
            times: Vec::new(),
        };
        let mut counts = Vec::new();
        for run in 0..qruns {
            let q = q(run);
            let t = Instant::now();
            let n = log.query(&q).map(|v| v.len()).expect("query");
            row.times.push(t.elapsed().as_secs_f64() * 1000.0);
            counts.push(n as f64);
        }
        row.matched = median(&mut counts) as usize;
        let mut t = row.times.clone();
        indexed_medians.push(median(&mut t));
        row.print();
    }
    let hwm_queries = rss_kib("VmHWM:");

    // Baseline: the same questions (the first `sruns` of each) answered by a full scan.
    println!("baseline: full scan (every record read + decoded + filtered):");
    let mut speedups = Vec::new();
    for (qi, (name, q)) in questions.iter().enumerate().take(5) {
        let mut row = Row {
            name: format!("{name} (full scan)"),
            matched: 0,
            times: Vec::new(),
        };
        let mut counts = Vec::new();
        for run in 0..sruns {
            let q = q(run);
            let pred = move |r: &Record| {
                q.host_id
                    .as_ref()
                    .is_none_or(|h| r.entry.host_id.as_ref() == Some(h))
                    && q.serial
                        .as_ref()
                        .is_none_or(|s| r.entry.serial.as_ref() == Some(s))
                    && q.network
                        .is_none_or(|n| r.entry.identifiers.iter().any(|ip| n.contains(ip)))
            };
            let t = Instant::now();
            let n = full_scan(store.as_ref(), &pred);
            row.times.push(t.elapsed().as_secs_f64() * 1000.0);
            counts.push(n as f64);
        }
        row.matched = median(&mut counts) as usize;
        let mut t = row.times.clone();
        speedups.push((
            name.clone(),
            median(&mut t) / indexed_medians.get(qi).copied().unwrap_or(1.0).max(1e-9),
        ));
        row.print();
    }
    // And query() itself when no index applies (kinds only): the same full scan, in the
    // library, plus building the result.
    let mut row = Row {
        name: "query() kinds=[operator_action] (no index)".into(),
        matched: 0,
        times: Vec::new(),
    };
    for _ in 0..sruns {
        let q = Query {
            kinds: vec![Kind::OperatorAction],
            ..Default::default()
        };
        let t = Instant::now();
        row.matched = log.query(&q).map(|v| v.len()).expect("query");
        row.times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    row.print();
    println!(
        "speed-up of the index over the full scan: {}",
        speedups
            .iter()
            .map(|(n, s)| format!("{n} {s:.0}x"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let t = Instant::now();
    let broken = log.verify().expect("verify");
    let verify_s = t.elapsed().as_secs_f64();
    println!();
    println!(
        "verify(): {} records in {:.2} s = {:.0} records/s; result: {}",
        log.len(),
        verify_s,
        log.len() as f64 / verify_s.max(1e-9),
        match broken {
            None => "chain intact".to_string(),
            Some(b) => format!("BROKEN at {}: {}", b.seq, b.reason),
        }
    );

    println!(
        "index entries (counted as appended): by_host {}, by_ip {}, by_serial {}",
        index.0, index.1, index.2
    );
    let disk = walk(dir.path());
    println!(
        "store on disk: {} MiB after the bulk load + flush ({} bytes/record), {} MiB at the end",
        disk_loaded / (1024 * 1024),
        disk_loaded / total.max(1) as u64,
        disk / (1024 * 1024)
    );
    println!(
        "memory: RSS {} MiB after the bulk load (peak {} MiB; {} MiB before opening the store); \
         peak {} MiB after the indexed queries, {} MiB at the end (full scans and verify done); \
         sled cache {} MiB",
        rss_loaded / 1024,
        hwm_loaded / 1024,
        rss_before / 1024,
        hwm_queries / 1024,
        rss_kib("VmHWM:") / 1024,
        SledStore::DEFAULT_CACHE_BYTES / (1024 * 1024)
    );
    println!("total run time {:.0} s", started.elapsed().as_secs_f64());
}
