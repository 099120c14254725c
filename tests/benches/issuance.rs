//! Issuance benchmark: how long a brand-new host waits for its certificate through
//! certfleet, against the floor — a minimal direct instant-acme client doing the same
//! issuance against the same pebble in the same run.
//!
//! * full: from "`certfleet-agent enroll` returned" to "the fullchain file holds a
//!   certificate" (agent start, session, challenge, order, CSR on the host, install,
//!   reload). A new host with a fresh IPv4 + IPv6 address every iteration.
//! * direct (default retry policy: 250 ms, x2) and direct (fast: 20 ms, x1.5): new order
//!   for a fresh IPv4 + IPv6 pair, own HTTP-01 responder, key + CN-less CSR, finalize,
//!   download. Account created once.
//!
//! Iterations are interleaved (full, direct-default, direct-fast) so drift in machine
//! load hits all three alike. Figures go to stdout; nothing is asserted on time.
//!
//! Needs root and the release binaries:
//!   cargo build --release --workspace --bins && cargo bench -p certfleet-tests --bench issuance
//! (tests/bench.sh does both). Env: BENCH_WARMUP (2), BENCH_ITERS (10).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use certfleet_tests::direct::DirectClient;
use certfleet_tests::net::HostAddrs;
use certfleet_tests::{require_root, Agent, Coordinator, Pebble};
use instant_acme::RetryPolicy;

const TARGET_RATIO: f64 = 1.3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Only
    // run the (slow, root-only) measurement when invoked as a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("issuance: skipped (run with `cargo bench -p certfleet-tests --bench issuance`)");
        return ExitCode::SUCCESS;
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("issuance benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() -> anyhow::Result<()> {
    require_root()?;
    certfleet_tests::install_crypto_provider();
    let warmup = env_usize("BENCH_WARMUP", 2);
    let iters = env_usize("BENCH_ITERS", 10);

    let pebble = Pebble::start().await?;
    let coord = Coordinator::start(&pebble).await?;
    let direct = DirectClient::new(&pebble).await?;
    let default_policy = RetryPolicy::default();
    let fast_policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(20))
        .backoff(1.5);

    let mut full = Vec::new();
    let mut d_default = Vec::new();
    let mut d_fast = Vec::new();
    println!(
        "issuance benchmark: {warmup} warm-up + {iters} measured iterations each, interleaved \
         (one IPv4 + one IPv6 identifier per certificate)"
    );
    for i in 0..warmup + iters {
        let measured = i >= warmup;
        let tag = if measured {
            format!("iter {}", i - warmup + 1)
        } else {
            format!("warm-up {}", i + 1)
        };

        let t = full_issuance(&pebble, &coord, i)
            .await
            .context("full issuance")?;
        let a = direct_issuance(&pebble, &direct, &default_policy)
            .await
            .context("direct issuance (default policy)")?;
        let b = direct_issuance(&pebble, &direct, &fast_policy)
            .await
            .context("direct issuance (fast policy)")?;
        println!(
            "  {tag:>10}: full {:>7.1} ms   direct-default {:>7.1} ms   direct-fast {:>7.1} ms",
            ms(t),
            ms(a),
            ms(b)
        );
        if measured {
            full.push(t);
            d_default.push(a);
            d_fast.push(b);
        }
    }

    let sf = Stats::of(&full);
    let sd = Stats::of(&d_default);
    let sx = Stats::of(&d_fast);
    println!();
    println!("{:<38} {:>9} {:>9} {:>9}", "", "median", "min", "max");
    sf.print("certfleet full (enrolled->installed)");
    sd.print("direct instant-acme, default retry");
    sx.print("direct instant-acme, fast retry");
    println!();
    let r_default = sf.median / sd.median;
    let r_fast = sf.median / sx.median;
    println!("ratio full/direct-default (median): {r_default:.2}x");
    println!("ratio full/direct-fast    (median): {r_fast:.2}x");
    println!(
        "target: full <= {TARGET_RATIO}x direct — {} against the default policy, {} against the fast policy",
        verdict(r_default),
        verdict(r_fast)
    );
    Ok(())
}

fn verdict(r: f64) -> &'static str {
    if r <= TARGET_RATIO {
        "met"
    } else {
        "NOT met"
    }
}

/// One new host through certfleet; returns enrolled → fullchain present.
async fn full_issuance(pebble: &Pebble, coord: &Coordinator, i: usize) -> anyhow::Result<Duration> {
    let mut agent = Agent::new(&format!("bench-{i}"), pebble.http_port())?;
    agent.enroll_with(coord).await?;
    let t0 = Instant::now();
    agent.start()?;
    let res = agent
        .wait_fullchain(Duration::from_secs(60), Duration::from_millis(2))
        .await;
    let elapsed = t0.elapsed();
    if let Err(e) = res {
        agent.dump_logs();
        coord.dump_logs();
        return Err(e);
    }
    // Untimed: the coordinator agrees it is installed.
    agent.wait_installed(coord, Duration::from_secs(30)).await?;
    agent.stop(Duration::from_secs(10)).await?;
    Ok(elapsed)
}

/// One direct issuance for a fresh IPv4 + IPv6 pair.
async fn direct_issuance(
    pebble: &Pebble,
    client: &DirectClient,
    policy: &RetryPolicy,
) -> anyhow::Result<Duration> {
    let addrs = HostAddrs::allocate(pebble.http_port())?;
    let ips = addrs.ips();
    let t0 = Instant::now();
    let issued = client.issue(&ips, policy).await?;
    let elapsed = t0.elapsed();
    anyhow::ensure!(
        issued.chain_pem.contains("BEGIN CERTIFICATE"),
        "no certificate"
    );
    Ok(elapsed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[Duration]) -> Self {
        let mut v: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<38} {:>6.1} ms {:>6.1} ms {:>6.1} ms",
            self.median, self.min, self.max
        );
    }
}
