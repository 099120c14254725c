//! Fleet benchmark: N namespace hosts, each with its own nginx, from enrollment to
//! "served" on every host (the agent saw the new certificate presented on each of the
//! host's IPv4 and IPv6 addresses), for N = 1 (the baseline, in the same run), 10, 50, 100.
//!
//! Two runs per N, in the same invocation:
//! * IP only: each host gets one certificate for its addresses (the `[issuance]` default).
//! * IP + name: each host gets two certificates from two `[[policy.certificate]]` entries —
//!   its addresses into nginx on 443, and `<host>.example.test` (a `{hostname}` template,
//!   published as A + AAAA in a real knot server that pebble resolves through) into a
//!   second nginx on 8443 — and "served" means both are.
//!
//! Printed per N and run: wall time from the first enrollment and from the *last*
//! enrollment to the last certificate served, coordinator CPU time (user + system) and
//! peak RSS over the run, and agent peak and idle RSS (idle: after everything is served
//! and quiet); for IP + name also its ratio to the IP-only run of the same N. Targets from
//! the issue: 100 hosts served within 5 s of the last enrollment (pebble with
//! `PEBBLE_VA_NOSLEEP=1`); agent idle RSS under 10 MB. Nothing is asserted on time.
//!
//! Hosts mix the three HTTP-01 modes (webroot, proxy, standalone). Agents start right
//! after their own enrollment, as on freshly booted VMs; enrollments run 8 at a time with
//! one multi-use join token.
//!
//! Needs root, network namespaces, knot (`knotd`, `knsupdate`, `kdig`) and the release
//! binaries (tests/bench.sh installs and builds them):
//!   cargo bench -p certfleet-tests --bench fleet
//! Env: FLEET_SIZES (default "10,50,100").

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::dns::{KnotServer, ZONE};
use certfleet_tests::fleet::{wait_all_served_n, Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::Lan;
use certfleet_tests::webserver::{ServerKind, WebServer};
use certfleet_tests::{require_root, Coordinator, Pebble, PebbleOptions};

const TARGET_AFTER_LAST_ENROLL: Duration = Duration::from_secs(5);
const TARGET_AGENT_IDLE_KIB: u64 = 10 * 1024;
const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// The second nginx of an IP + name host, serving the name certificate.
const SITE_PORT: u16 = 8443;

/// Every host: its addresses into `default` (nginx on 443), its name into `site`.
const IP_AND_NAME_POLICY: &str = r#"
[[policy]]
name = "ip-and-name"

[[policy.certificate]]
name = "ip"
ips = "all"
targets = ["default"]

[[policy.certificate]]
name = "site"
names = ["{hostname}.example.test"]
ips = "none"
targets = ["site"]
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    IpOnly,
    IpAndName,
}

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::IpOnly => "IP certificate only (1 per host)",
            Mode::IpAndName => "IP + name certificates (2 per host)",
        }
    }

    fn certs_per_host(self) -> usize {
        match self {
            Mode::IpOnly => 1,
            Mode::IpAndName => 2,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet: skipped (run with `cargo bench -p certfleet-tests --bench fleet`)");
        return ExitCode::SUCCESS;
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Figures {
    n: usize,
    mode: Mode,
    from_first: Duration,
    from_last: Duration,
    enroll_span: Duration,
    coord_cpu: Duration,
    coord_peak_kib: u64,
    agent_peak_kib: u64,
    agent_idle_max_kib: u64,
    agent_idle_median_kib: u64,
    enroll_retries: u32,
}

async fn run() -> anyhow::Result<()> {
    require_root()?;
    certfleet_tests::install_crypto_provider();
    let sizes: Vec<usize> = std::env::var("FLEET_SIZES")
        .unwrap_or_else(|_| "10,50,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "fleet benchmark: namespace hosts with nginx, pebble NOSLEEP, release binaries; \
         names in knot"
    );
    let baseline_ip = one_run(1, Mode::IpOnly)
        .await
        .context("baseline (N = 1, IP only)")?;
    print(&baseline_ip, None);
    let baseline_names = one_run(1, Mode::IpAndName)
        .await
        .context("baseline (N = 1, IP + name)")?;
    print(&baseline_names, None);
    for n in sizes {
        let ip = one_run(n, Mode::IpOnly)
            .await
            .with_context(|| format!("N = {n}, IP only"))?;
        print(&ip, Some(&baseline_ip));
        let names = one_run(n, Mode::IpAndName)
            .await
            .with_context(|| format!("N = {n}, IP + name"))?;
        print(&names, Some(&baseline_names));
        println!(
            "  IP + name vs IP only (N = {n}): {:.2}x the time after the last enrollment, \
             {:.2}x the coordinator CPU, {:.2}x its peak RSS, {:.2}x the agents' peak RSS",
            names.from_last.as_secs_f64() / ip.from_last.as_secs_f64().max(1e-6),
            names.coord_cpu.as_secs_f64() / ip.coord_cpu.as_secs_f64().max(1e-6),
            names.coord_peak_kib as f64 / (ip.coord_peak_kib as f64).max(1.0),
            names.agent_peak_kib as f64 / (ip.agent_peak_kib as f64).max(1.0),
        );
    }
    Ok(())
}

fn print(f: &Figures, baseline: Option<&Figures>) {
    let ratio = baseline
        .map(|b| {
            format!(
                " ({:.1}x the single-host time for {}x the hosts)",
                f.from_last.as_secs_f64() / b.from_last.as_secs_f64().max(1e-6),
                f.n
            )
        })
        .unwrap_or_else(|| " (baseline)".into());
    println!("N = {}, {}", f.n, f.mode.title());
    println!(
        "  served on every host (every certificate): {:.2} s after the last enrollment{ratio}; {:.2} s after the first (enrollments took {:.2} s)",
        f.from_last.as_secs_f64(),
        f.from_first.as_secs_f64(),
        f.enroll_span.as_secs_f64()
    );
    if f.enroll_retries > 0 {
        println!(
            "  enrollment connections retried: {} (counted in the times above)",
            f.enroll_retries
        );
    }
    if f.n >= 100 {
        let ok = f.from_last <= TARGET_AFTER_LAST_ENROLL;
        println!(
            "  target: 100 hosts within {} s of the last enrollment: {}",
            TARGET_AFTER_LAST_ENROLL.as_secs(),
            if ok { "met" } else { "NOT met" }
        );
    }
    println!(
        "  coordinator: CPU {:.2} s (user+system), peak RSS {:.1} MiB",
        f.coord_cpu.as_secs_f64(),
        f.coord_peak_kib as f64 / 1024.0
    );
    println!(
        "  agents: peak RSS {:.1} MiB (max over hosts); idle RSS max {:.1} MiB, median {:.1} MiB (target < {} MiB: {})",
        f.agent_peak_kib as f64 / 1024.0,
        f.agent_idle_max_kib as f64 / 1024.0,
        f.agent_idle_median_kib as f64 / 1024.0,
        TARGET_AGENT_IDLE_KIB / 1024,
        if f.agent_idle_max_kib < TARGET_AGENT_IDLE_KIB { "met" } else { "NOT met" }
    );
}

async fn one_run(n: usize, mode: Mode) -> anyhow::Result<Figures> {
    let lan = Lan::new()?;
    // Declared first, dropped last: pebble resolves the hosts' names through it.
    let knot = match mode {
        Mode::IpOnly => None,
        Mode::IpAndName => Some(KnotServer::start().await.context("starting knot")?),
    };
    let pebble = Pebble::start_with(PebbleOptions {
        validation_ports: Some((80, 443)),
        dns_server: knot.as_ref().map(KnotServer::addr),
        ..Default::default()
    })
    .await?;
    let mut coord = Coordinator::start_with(
        &pebble,
        CoordinatorOptions {
            server_ips: vec![std::net::IpAddr::V4(lan.gateway_v4())],
            extra_config: match mode {
                Mode::IpOnly => String::new(),
                Mode::IpAndName => IP_AND_NAME_POLICY.to_owned(),
            },
            ..Default::default()
        },
    )
    .await?;
    let coord_pid = coord.child().context("coordinator running")?.pid();

    // Set-up, not timed: namespaces, web servers, agent configs, DNS records.
    let mut hosts = Vec::with_capacity(n);
    // The IP + name hosts' second nginx (the name certificate's target); dropped before
    // the hosts, whose namespaces they run in.
    let mut site_servers: Vec<WebServer> = Vec::new();
    for i in 0..n {
        let challenge = match i % 3 {
            0 => Challenge::Webroot,
            1 => Challenge::Proxy,
            _ => Challenge::Standalone,
        };
        let name = format!("b{i}");
        let spec = HostSpec::new(&name, ServerKind::Nginx, challenge);
        let host = match &knot {
            None => FleetHost::new(&lan, spec).await?,
            Some(knot) => {
                let spec = spec.with_names(&[format!("{name}.{ZONE}")]);
                let mut host = FleetHost::new_with_dns(&lan, spec, knot).await?;
                site_servers.push(host.add_second_target("site", SITE_PORT).await?);
                host
            }
        };
        hosts.push(host);
    }
    let token = coord
        .cli_ok(&["token", "create", "--uses", &n.to_string(), "--ttl", "1h"])
        .await?
        .trim()
        .to_owned();
    let cpu_before = cpu_time(coord_pid)?;

    let first = Instant::now();
    let mut last_enrolled = first;
    let mut retries = 0u32;
    for chunk in hosts.chunks_mut(8) {
        let results = futures::future::join_all(chunk.iter_mut().map(|h| {
            let (coord, lan, token) = (&coord, &lan, token.as_str());
            async move {
                // A connection that times out is retried (twice) and reported: seen twice
                // in many runs, a namespace host's first connection to the gateway address
                // went unanswered for the 10 s connect timeout.
                let mut tries = 0;
                loop {
                    tries += 1;
                    match h.enroll_with_token(coord, lan, token).await {
                        Ok(_) => break,
                        Err(e) if tries < 3 && format!("{e:#}").contains("cannot connect") => {
                            eprintln!(
                                "  (enroll {} attempt {tries} failed, retrying: {e:#})",
                                h.spec.name
                            );
                        }
                        Err(e) => return Err(e),
                    }
                }
                h.agent.start()?;
                anyhow::Ok((Instant::now(), tries - 1))
            }
        }))
        .await;
        for r in results {
            let (at, retried) = r?;
            last_enrolled = last_enrolled.max(at);
            retries += retried;
        }
    }
    let enroll_span = last_enrolled - first;
    {
        let mut refs: Vec<&mut FleetHost> = hosts.iter_mut().collect();
        wait_all_served_n(
            &coord,
            &mut refs,
            mode.certs_per_host(),
            Duration::from_secs(600),
        )
        .await?;
    }
    let done = Instant::now();
    let coord_cpu = cpu_time(coord_pid)? - cpu_before;

    // Idle: everything served, sessions open, nothing to do (let the last installs'
    // buffers and tasks go before reading RSS).
    tokio::time::sleep(IDLE_SETTLE).await;
    let mut idle = Vec::new();
    let mut agent_peak = 0;
    for h in hosts.iter_mut() {
        let pid = h.agent.child().context("agent running")?.pid();
        idle.push(status_kib(pid, "VmRSS:")?);
        agent_peak = agent_peak.max(status_kib(pid, "VmHWM:")?);
    }
    idle.sort_unstable();
    let coord_peak = status_kib(coord_pid, "VmHWM:")?;
    drop(site_servers);
    drop(hosts);
    coord
        .stop_current(certfleet_tests::RestartMode::Term)
        .await?;
    Ok(Figures {
        n,
        mode,
        from_first: done - first,
        from_last: done - last_enrolled,
        enroll_span,
        coord_cpu,
        coord_peak_kib: coord_peak,
        agent_peak_kib: agent_peak,
        agent_idle_max_kib: idle.last().copied().unwrap_or(0),
        agent_idle_median_kib: idle.get(idle.len() / 2).copied().unwrap_or(0),
        enroll_retries: retries,
    })
}

/// user + system CPU time of a process (`/proc/PID/stat` fields 14 and 15, in ticks).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields are counted after its closing ')'.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// A `kB` line of `/proc/PID/status` (VmRSS, VmHWM).
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{key} of pid {pid}"))
}
