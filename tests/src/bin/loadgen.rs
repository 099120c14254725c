//! `certfleet-loadgen`: N simulated agents in one process against running coordinators
//! (see `certfleet_tests::loadgen`). Enrolls N hosts with one multi-use join token, opens
//! their sessions, answers commands, prints the counters every 5 s until Ctrl-C.
//!
//!   certfleet-coordinator token create --uses 1000
//!   certfleet-loadgen --coordinator https://127.0.0.1:7443 --ca-sha256 HEX \
//!       --token TOKEN --agents 1000 [--parallel 16] [--threads 2]
//!
//! The coordinator's issuer must accept the agents' addresses (10.64.0.0/10:
//! `allow_private_ips = true`) and not fetch challenges (pebble with
//! `PEBBLE_VA_ALWAYS_VALID=1`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use certfleet_tests::loadgen::{enroll_all, SimFleet};

struct Args {
    urls: Vec<String>,
    ca_sha256: String,
    token: String,
    agents: usize,
    parallel: usize,
    threads: usize,
}

const USAGE: &str = "usage: certfleet-loadgen --coordinator URL [--coordinator URL…] \
                     --ca-sha256 HEX --token TOKEN --agents N [--parallel 16] [--threads 2]";

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        urls: Vec::new(),
        ca_sha256: String::new(),
        token: String::new(),
        agents: 0,
        parallel: 16,
        threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--coordinator" => a.urls.push(value()?),
            "--ca-sha256" => a.ca_sha256 = value()?,
            "--token" => a.token = value()?,
            "--agents" => a.agents = value()?.parse().context("--agents: a number")?,
            "--parallel" => a.parallel = value()?.parse().context("--parallel: a number")?,
            "--threads" => a.threads = value()?.parse().context("--threads: a number")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    anyhow::ensure!(
        !a.urls.is_empty() && !a.ca_sha256.is_empty() && !a.token.is_empty() && a.agents > 0,
        "--coordinator, --ca-sha256, --token and --agents are required\n{USAGE}"
    );
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("certfleet-loadgen: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certfleet-loadgen: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certfleet-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    certfleet_tests::install_crypto_provider();
    let started = Instant::now();
    let ids = enroll_all(
        &args.urls,
        &args.ca_sha256,
        &args.token,
        args.agents,
        args.parallel,
    )
    .await?;
    println!(
        "enrolled {} hosts in {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let fleet = SimFleet::start(ids, &args.urls);
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = &fleet.stats;
                println!(
                    "{:>6.1}s connected {} sessions {} installed {} installs {} failures {} connect-failures {}",
                    t0.elapsed().as_secs_f64(),
                    s.connected(),
                    s.sessions(),
                    s.agents_installed(),
                    s.installs(),
                    s.failures(),
                    s.connect_failures()
                );
            }
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                break;
            }
        }
    }
    fleet.stop().await;
    Ok(())
}
