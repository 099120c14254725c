//! Boot-to-certificate benchmark (issue #14): a new namespace host with nginx runs the
//! shipped cloud-init script (`deploy/cloud-init/certfleet-bootstrap.sh`, through
//! `certfleet_tests::bootstrap`, the agent daemon started before enrollment as on a VM);
//! measured is `certfleet-agent enroll --wait` from its start until it returns, i.e. the
//! host's first certificate installed into nginx and seen served — as the command itself
//! reports it. BOOT_RUNS hosts (default 10), one after the other, each a fresh namespace.
//!
//! Printed: median, min and max (target: median ≤ 2 s on pebble with
//! `PEBBLE_VA_NOSLEEP=1`), the whole script's time, and the median of each phase, from the
//! coordinator's and the agent daemon's log timestamps — enrollment, the daemon noticing
//! its identity, the session, scheduling, the ACME order (challenge, validation,
//! finalize), install + reload + served check, and `--wait` noticing — with the largest
//! named. Baseline, same pebble, same run: a direct instant-acme client issuing one
//! certificate for an IPv4 + IPv6 pair over HTTP-01 (what the CA round trips alone take).
//!
//! Needs root, network namespaces, nginx and the release binaries (tests/bench.sh):
//!   cargo bench -p certfleet-tests --bench bootstrap
//! Env: BOOT_RUNS (default 10; e.g. 3 for a short run).

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use certfleet_tests::bootstrap::{Bootstrap, BootstrapInput};
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::direct::DirectClient;
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::net::HostAddrs;
use certfleet_tests::netns::Lan;
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{require_root, Coordinator, Pebble, PebbleOptions};
use instant_acme::RetryPolicy;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const TARGET: Duration = Duration::from_secs(2);

/// The phases of one boot, in order.
const PHASES: [&str; 8] = [
    "enrollment (token check, identity signed)",
    "agent daemon notices its identity",
    "session established (TLS, Hello)",
    "certificate scheduled (order created)",
    "ACME order: challenge, validation, finalize",
    "install: chain to the agent, files switched",
    "nginx config test, reload, served check (3 rounds)",
    "`--wait` notices the install",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "bootstrap: skipped (run with `cargo bench -p certfleet-tests --bench bootstrap`)"
        );
        return ExitCode::SUCCESS;
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootstrap benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Boot {
    /// `enroll --wait`, start to return, as the command reports it.
    wait: Duration,
    /// The whole script.
    script: Duration,
    /// Each of [`PHASES`].
    phases: Vec<Duration>,
}

async fn run() -> anyhow::Result<()> {
    require_root()?;
    certfleet_tests::install_crypto_provider();
    let runs: usize = std::env::var("BOOT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(10);
    let lan = Lan::new()?;
    let pebble = Pebble::start_with(PebbleOptions {
        validation_ports: Some((80, 443)),
        ..Default::default()
    })
    .await?;
    let coord = Coordinator::start_with(
        &pebble,
        CoordinatorOptions {
            server_ips: vec![IpAddr::V4(lan.gateway_v4())],
            ..Default::default()
        },
    )
    .await?;
    let url = coord.url_at(IpAddr::V4(lan.gateway_v4()));
    println!(
        "bootstrap benchmark: {runs} new namespace hosts with nginx, one after the other, \
         each running deploy/cloud-init/certfleet-bootstrap.sh; pebble NOSLEEP; binaries from {}",
        certfleet_tests::bins::bin_dir()?.display()
    );

    // Baseline: the CA's own round trips, by a direct client, same pebble.
    let direct = DirectClient::new(&pebble).await?;
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(20))
        .backoff(1.5);
    let mut baseline = Vec::with_capacity(runs);
    for _ in 0..runs {
        let addrs = HostAddrs::allocate_ports(&[pebble.http_port()])?;
        let t0 = std::time::Instant::now();
        let issued = direct.issue(&addrs.ips(), &retry).await?;
        baseline.push(t0.elapsed());
        anyhow::ensure!(issued.chain_pem.contains("BEGIN CERTIFICATE"));
    }

    let mut boots = Vec::with_capacity(runs);
    for i in 0..runs {
        let boot = one_boot(&lan, &coord, &url, i)
            .await
            .with_context(|| format!("boot {i}"))?;
        println!(
            "  host {i}: enroll --wait {:.2} s (script {:.2} s)",
            boot.wait.as_secs_f64(),
            boot.script.as_secs_f64()
        );
        boots.push(boot);
    }

    let waits: Vec<Duration> = boots.iter().map(|b| b.wait).collect();
    let scripts: Vec<Duration> = boots.iter().map(|b| b.script).collect();
    let (med, min, max) = stats(&waits);
    println!(
        "boot to certificate (enroll --wait start → certificate served), {runs} hosts: \
         median {:.2} s, min {:.2} s, max {:.2} s — target ≤ {} s: {}",
        med.as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64(),
        TARGET.as_secs(),
        if med <= TARGET { "met" } else { "NOT met" }
    );
    let (smed, _, _) = stats(&scripts);
    let (bmed, bmin, bmax) = stats(&baseline);
    println!(
        "  whole script (install, web server, agent start, enroll --wait, service): median {:.2} s",
        smed.as_secs_f64()
    );
    println!(
        "  baseline, direct ACME client (IPv4 + IPv6 over HTTP-01, same pebble): median {:.2} s, \
         min {:.2} s, max {:.2} s; boot to certificate is {:.1}x it",
        bmed.as_secs_f64(),
        bmin.as_secs_f64(),
        bmax.as_secs_f64(),
        med.as_secs_f64() / bmed.as_secs_f64().max(1e-6)
    );
    println!("  phases (median over hosts):");
    let mut medians = Vec::new();
    for (p, name) in PHASES.iter().enumerate() {
        let d: Vec<Duration> = boots.iter().map(|b| b.phases[p]).collect();
        let (m, _, _) = stats(&d);
        println!("    {:<52} {:>6.3} s", name, m.as_secs_f64());
        medians.push((m, *name));
    }
    if let Some((m, name)) = medians.iter().max_by_key(|(m, _)| *m) {
        println!(
            "  dominated by: {name} ({:.0}% of the median boot)",
            100.0 * m.as_secs_f64() / med.as_secs_f64().max(1e-6)
        );
    }
    Ok(())
}

fn stats(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    };
    (median, s[0], s[n - 1])
}

async fn one_boot(lan: &Lan, coord: &Coordinator, url: &str, i: usize) -> anyhow::Result<Boot> {
    // Not timed: the namespace, nginx with its bootstrap certificate, the agent config.
    let host = FleetHost::new(
        lan,
        HostSpec::new(&format!("boot{i}"), ServerKind::Nginx, Challenge::Webroot),
    )
    .await?;
    let token = coord
        .cli_ok(&["token", "create", "--ttl", "10m"])
        .await?
        .trim()
        .to_owned();
    let boot = Bootstrap::new(&host, coord, url)?;
    let run = boot
        .run(&BootstrapInput {
            token: Some(token),
            timeout: Some("60s".into()),
            ..Default::default()
        })
        .await?;
    anyhow::ensure!(
        run.success(),
        "the script failed:\n{}\n{}\nagent log:\n{}",
        run.stdout(),
        run.stderr(),
        boot.agent_log()
    );
    let stdout = run.stdout();
    let wait = stdout
        .lines()
        .find_map(|l| l.rsplit_once(" after ")?.1.strip_suffix(" s")?.parse().ok())
        .map(Duration::from_secs_f64)
        .with_context(|| format!("no `after N s` in {stdout:?}"))?;
    let host_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("enrolled as host "))
        .context("no host id")?
        .trim()
        .to_owned();

    // Phase boundaries from the logs (UTC timestamps with microseconds).
    let script_err = run.stderr();
    let agent_log = boot.agent_log();
    let coord_log = coord.logs();
    // The enroll command's own log line, just after its key and CSR are made.
    let start = first_time(&script_err, &["INFO", "enrolling"])?;
    let marks = [
        first_time(&coord_log, &["agent enrolled", &host_id])?,
        first_time(&agent_log, &["agent starting"])?,
        first_time(&agent_log, &["session established"])?,
        first_time(&coord_log, &["order created", &host_id])?,
        first_time(&coord_log, &["certificate issued", &host_id])?,
        first_time(&agent_log, &["certificate files in place"])?,
        first_time(&agent_log, &["new certificate is served"])?,
    ];
    let mut phases = Vec::with_capacity(PHASES.len());
    let mut prev = start;
    for m in marks {
        phases.push(since(prev, m));
        prev = m;
    }
    // `--wait` returned `wait` after the command started (≈ `start`).
    let end = start + time::Duration::try_from(wait).unwrap_or_default();
    phases.push(since(prev, end));
    drop(boot);
    drop(host);
    Ok(Boot {
        wait,
        script: run.elapsed,
        phases,
    })
}

fn since(a: OffsetDateTime, b: OffsetDateTime) -> Duration {
    Duration::try_from(b - a).unwrap_or_default()
}

/// The timestamp of the first log line containing every one of `needles`.
fn first_time(log: &str, needles: &[&str]) -> anyhow::Result<OffsetDateTime> {
    let line = log
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .with_context(|| format!("no log line with {needles:?}"))?;
    let stamp = line.split_whitespace().next().unwrap_or_default();
    OffsetDateTime::parse(stamp, &Rfc3339).with_context(|| format!("timestamp of {line:?}"))
}
