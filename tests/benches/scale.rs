//! Scale benchmark: N simulated agents (`certfleet_tests::loadgen`, one process, each with
//! its own enrolled identity and mTLS session) against one coordinator on sled and against
//! two coordinators on one PostgreSQL, with pebble (`PEBBLE_VA_ALWAYS_VALID=1`) issuing one
//! IP certificate per agent.
//!
//! Printed per setup and N: enrollment time; time until all sessions are up; issuance
//! throughput (certificates per second from the first session to the last install) and
//! peak coordinator CPU meanwhile; `certs --json` / `hosts --json` time (or their error);
//! coordinator RSS and CPU at idle (`/proc/PID/status` VmRSS, `/proc/PID/stat` utime+stime
//! over 10 s); the reconnect storm after a SIGKILL + restart of the first coordinator: time
//! from the kill until every agent has a session again, the restarted node's start time,
//! peak CPU, installs repeated after it (should be 0: Hello carries the inventory). The
//! first N of a setup is the baseline the others are compared with (RSS per agent).
//! Targets (issue #13): 10,000 agents on one 2-core coordinator under 1 GiB RSS, idle under
//! 5% of one core, all reconnected within 60 s of a restart. Nothing is asserted.
//!
//! The load generator shares the machine (and this process's 2 tokio threads) with the
//! coordinators and pebble: its own CPU is printed too.
//!
//!   tests/bench.sh scale                          # N = 1000,10000 (long: not in CI)
//!   SCALE_SIZES=1000 SCALE_SETUPS=sled tests/bench.sh scale
//! Env: SCALE_SIZES (default "1000,10000"), SCALE_SETUPS (default "sled,postgres").
//! Needs root (pebble, PostgreSQL via the harness) and the release binaries.

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use certfleet_tests::coordinator::{CoordinatorOptions, PgChoice};
use certfleet_tests::loadgen::{cpu_percent_over, enroll_all, proc_sample, SimFleet, Stats};
use certfleet_tests::{require_root, Coordinator, Pebble, PebbleOptions, RestartMode};

const TARGET_RSS_KIB: u64 = 1024 * 1024;
const TARGET_IDLE_PCT: f64 = 5.0;
const TARGET_RECONNECT: Duration = Duration::from_secs(60);
const IDLE_SETTLE: Duration = Duration::from_secs(5);
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How often a long wait prints where it is (on stderr).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: skipped (run with `cargo bench -p certfleet-tests --bench scale`)");
        return ExitCode::SUCCESS;
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn run() -> anyhow::Result<()> {
    require_root()?;
    certfleet_tests::install_crypto_provider();
    let sizes: Vec<usize> = env_list("SCALE_SIZES", "1000,10000")
        .iter()
        .map(|s| s.parse().with_context(|| format!("SCALE_SIZES: {s:?}")))
        .collect::<anyhow::Result<_>>()?;
    for setup in env_list("SCALE_SETUPS", "sled,postgres") {
        let nodes = match setup.as_str() {
            "sled" => 1,
            "postgres" => 2,
            other => anyhow::bail!("SCALE_SETUPS: {other:?} is neither sled nor postgres"),
        };
        let mut baseline_rss_per_agent: Option<f64> = None;
        for &n in &sizes {
            let f = one_run(&setup, nodes, n)
                .await
                .with_context(|| format!("{setup}, {n} agents"))?;
            f.print(baseline_rss_per_agent);
            baseline_rss_per_agent.get_or_insert(f.rss_per_agent_kib());
        }
    }
    Ok(())
}

struct Figures {
    setup: String,
    nodes: usize,
    n: usize,
    enroll: Duration,
    sessions_up: Duration,
    all_installed: Duration,
    rollout_peak_cpu: Vec<f64>,
    certs_list: Result<(Duration, usize), String>,
    hosts_list: Result<(Duration, usize), String>,
    idle: Vec<(u64, f64)>,
    storm_back: Duration,
    storm_restart: Duration,
    storm_peak_cpu: Vec<f64>,
    storm_reinstalls: u64,
    storm_lost: u64,
    loadgen_cpu: Duration,
    loadgen_rss_kib: u64,
    failures: u64,
}

impl Figures {
    fn rss_per_agent_kib(&self) -> f64 {
        self.idle.iter().map(|(r, _)| *r as f64).sum::<f64>() / self.n as f64
    }

    fn print(&self, baseline: Option<f64>) {
        let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
        let pct = |v: &[f64]| {
            v.iter()
                .map(|p| format!("{p:.0}%"))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        println!(
            "\n== {} agents, {} ({} coordinator{}) ==",
            self.n,
            self.setup,
            self.nodes,
            if self.nodes > 1 { "s" } else { "" }
        );
        println!(
            "  enrollment             {:>8.1} s",
            self.enroll.as_secs_f64()
        );
        println!(
            "  all sessions up        {:>8.1} s",
            self.sessions_up.as_secs_f64()
        );
        println!(
            "  all installed          {:>8.1} s  ({:.1} certificates/s; coordinator peak CPU {})",
            self.all_installed.as_secs_f64(),
            self.n as f64 / self.all_installed.as_secs_f64(),
            pct(&self.rollout_peak_cpu)
        );
        for (what, r) in [
            ("certs --json", &self.certs_list),
            ("hosts --json", &self.hosts_list),
        ] {
            match r {
                Ok((d, rows)) => println!(
                    "  {what:<22} {:>8.2} s  ({rows} rows, one response: no paging)",
                    d.as_secs_f64()
                ),
                Err(e) => println!("  {what:<22}   FAILED  {e}"),
            }
        }
        for (i, (rss, cpu)) in self.idle.iter().enumerate() {
            println!(
                "  node {} idle            RSS {:>6.1} MiB [{}]  CPU {:>5.2}% of a core [{}]",
                i + 1,
                *rss as f64 / 1024.0,
                verdict(*rss < TARGET_RSS_KIB),
                cpu,
                verdict(*cpu < TARGET_IDLE_PCT)
            );
        }
        let per = self.rss_per_agent_kib();
        match baseline {
            Some(b) => println!(
                "  RSS per agent          {per:>8.1} KiB  ({:.2}x the first N)",
                per / b
            ),
            None => println!("  RSS per agent          {per:>8.1} KiB  (baseline)"),
        }
        println!(
            "  restart storm          {:>8.1} s from SIGKILL to all back [{}] ({} sessions lost; node start {:.1} s; peak CPU {}; {} installs repeated)",
            self.storm_back.as_secs_f64(),
            verdict(self.storm_back < TARGET_RECONNECT),
            self.storm_lost,
            self.storm_restart.as_secs_f64(),
            pct(&self.storm_peak_cpu),
            self.storm_reinstalls
        );
        println!(
            "  load generator         CPU {:.1} s total, RSS {:.1} MiB; {} command failures",
            self.loadgen_cpu.as_secs_f64(),
            self.loadgen_rss_kib as f64 / 1024.0,
            self.failures
        );
    }
}

async fn wait_stats(
    stats: &Stats,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Stats) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut told = start;
    while !done(stats) {
        if told.elapsed() >= PROGRESS_EVERY {
            told = Instant::now();
            eprintln!(
                "  … {what}: {:.0} s, connected {}, installed {}, failures {}, connect failures {}",
                start.elapsed().as_secs_f64(),
                stats.connected(),
                stats.agents_installed(),
                stats.failures(),
                stats.connect_failures()
            );
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?} (connected {}, sessions {}, installed {}, failures {}, connect failures {})",
            stats.connected(),
            stats.sessions(),
            stats.agents_installed(),
            stats.failures(),
            stats.connect_failures()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(start.elapsed())
}

/// Runs `fut` while sampling the CPU of `pids` each second: its output and the peak
/// percentage of one core per pid.
async fn with_peak_cpu<T>(pids: &[u32], fut: impl Future<Output = T>) -> (T, Vec<f64>) {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pids = pids.to_vec();
    let sampler = tokio::spawn(async move {
        let mut peaks = vec![0.0f64; pids.len()];
        let mut last: Vec<Option<Duration>> = pids
            .iter()
            .map(|p| proc_sample(*p).ok().map(|s| s.cpu))
            .collect();
        let mut at = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let window = at.elapsed().as_secs_f64();
            at = Instant::now();
            for (i, pid) in pids.iter().enumerate() {
                let now = proc_sample(*pid).ok().map(|s| s.cpu);
                if let (Some(a), Some(b)) = (last[i], now) {
                    peaks[i] = peaks[i].max(b.saturating_sub(a).as_secs_f64() / window * 100.0);
                }
                last[i] = now;
            }
        }
        peaks
    });
    let out = fut.await;
    let _ = stop_tx.send(());
    (out, sampler.await.unwrap_or_default())
}

fn pids(coords: &mut [Coordinator]) -> anyhow::Result<Vec<u32>> {
    coords
        .iter_mut()
        .map(|c| {
            c.child()
                .map(|ch| ch.pid())
                .context("coordinator not running")
        })
        .collect()
}

/// Times an admin list call and counts its rows (the CLI prints one JSON array).
async fn timed_list(c: &Coordinator, what: &str) -> Result<(Duration, usize), String> {
    let start = Instant::now();
    let out = c
        .cli(&[what, "--json"])
        .await
        .map_err(|e| format!("{e:#}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("").chars().take(200).collect());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
    Ok((took, v.as_array().map_or(0, Vec::len)))
}

async fn one_run(setup: &str, nodes: usize, n: usize) -> anyhow::Result<Figures> {
    let mut popts = PebbleOptions::default();
    popts
        .env
        .insert("PEBBLE_VA_ALWAYS_VALID".to_owned(), "1".to_owned());
    let pebble = Pebble::start_with(popts).await?;
    let mut opts = CoordinatorOptions {
        rate_limits: Some("none".to_owned()),
        ..Default::default()
    };
    // Info, as in production: the harness's debug default would measure logging.
    opts.env.insert("RUST_LOG".to_owned(), "info".to_owned());
    if nodes > 1 {
        opts.postgres = Some(
            tokio::task::spawn_blocking(PgChoice::start)
                .await?
                .context("PostgreSQL for the coordinators")?,
        );
    }
    let mut coords = vec![Coordinator::start_with(&pebble, opts.clone()).await?];
    if nodes > 1 {
        let bundle = coords[0].export_bundle().await?;
        for _ in 1..nodes {
            coords.push(Coordinator::join_with(&pebble, opts.clone(), &bundle).await?);
        }
    }
    let urls: Vec<String> = coords.iter().map(Coordinator::url).collect();
    let uses = n.to_string();
    let token = coords[0]
        .cli_ok(&["token", "create", "--uses", &uses, "--ttl", "2h"])
        .await?
        .trim()
        .to_owned();

    eprintln!("{setup}, {n} agents: coordinators up; enrolling");
    let t = Instant::now();
    let ids = enroll_all(&urls, coords[0].ca_sha256(), &token, n, 16).await?;
    let enroll = t.elapsed();

    eprintln!(
        "  enrolled in {:.1} s; starting the sessions",
        enroll.as_secs_f64()
    );
    let fleet = SimFleet::start(ids, &urls);
    let stats = fleet.stats.clone();
    let pid_list = pids(&mut coords)?;
    let slack = Duration::from_secs(120 + n as u64 / 10);
    let (rollout, rollout_peak_cpu) = with_peak_cpu(&pid_list, async {
        let up = wait_stats(&stats, "all sessions up", slack, |s| s.connected() == n).await?;
        let inst = up
            + wait_stats(&stats, "all installed", slack * 4, |s| {
                s.agents_installed() == n
            })
            .await?;
        anyhow::Ok((up, inst))
    })
    .await;
    let (sessions_up, all_installed) = rollout?;

    eprintln!("  all installed; list calls, then idle");
    let certs_list = timed_list(&coords[0], "certs").await;
    let hosts_list = timed_list(&coords[0], "hosts").await;

    tokio::time::sleep(IDLE_SETTLE).await;
    let me = std::process::id();
    let mut idle = Vec::new();
    let windows =
        futures::future::join_all(pid_list.iter().map(|p| cpu_percent_over(*p, IDLE_WINDOW))).await;
    for (pid, cpu) in pid_list.iter().zip(windows) {
        idle.push((proc_sample(*pid)?.rss_kib, cpu?));
    }

    eprintln!("  idle measured; the restart storm");
    // The storm: SIGKILL the first coordinator and serve again on the same port and store.
    let installs_before = stats.installs();
    let ends_before = stats.session_ends();
    let t_kill = Instant::now();
    coords[0].restart(RestartMode::Kill).await?;
    let storm_restart = t_kill.elapsed();
    // With two nodes the agents of the killed one may all be on the other node already.
    wait_stats(&stats, "sessions lost", Duration::from_secs(10), |s| {
        s.session_ends() > ends_before
    })
    .await?;
    let pid_list = pids(&mut coords)?;
    let (back, storm_peak_cpu) = with_peak_cpu(
        &pid_list,
        wait_stats(&stats, "all back", slack, |s| s.connected() == n),
    )
    .await;
    back?;
    let storm_back = t_kill.elapsed();
    let storm_lost = stats.session_ends() - ends_before;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let storm_reinstalls = stats.installs() - installs_before;

    let own = proc_sample(me)?;
    let failures = stats.failures();
    fleet.stop().await;
    Ok(Figures {
        setup: setup.to_owned(),
        nodes,
        n,
        enroll,
        sessions_up,
        all_installed,
        rollout_peak_cpu,
        certs_list,
        hosts_list,
        idle,
        storm_back,
        storm_restart,
        storm_peak_cpu,
        storm_reinstalls,
        storm_lost,
        loadgen_cpu: own.cpu,
        loadgen_rss_kib: own.rss_kib,
        failures,
    })
}
