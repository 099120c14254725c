//! Issuance benchmark: how long a brand-new host waits for its certificate through
//! certfleet, against the floor — a minimal direct instant-acme client doing the same
//! issuance against the same pebble in the same run. Three cases:
//!
//! * IP: one IPv4 + one IPv6 identifier, HTTP-01 (no policy: the `[issuance]` default).
//! * name via HTTP-01: one DNS name (`<host>.example.test`, from a `{hostname}` template),
//!   published in a real knot server that pebble resolves through, pointing at the host's
//!   loopback addresses.
//! * name via TLS-ALPN-01: the same, validated by TLS-ALPN-01 — the agent answers
//!   `acme-tls/1` standalone on pebble's `tlsPort` of its addresses.
//! * wildcard + apex by DNS-01 (`*.<host>.example.test` + `<host>.example.test`): the
//!   coordinator writes both TXT values into knot through its rfc2136 provider (TSIG),
//!   waits until knot serves them, then asks pebble; the direct client writes them into
//!   knot in one update. Target: ≤ 3 s end to end to installed.
//!
//! For each case:
//! * full: from "`certfleet-agent enroll` returned" to "the fullchain file holds a
//!   certificate" (agent start, session, challenge, order, CSR on the host, install,
//!   reload). A new host with a fresh IPv4 + IPv6 address (and a fresh name) every
//!   iteration. Afterwards, untimed: the coordinator says installed, validated by the
//!   case's challenge type.
//! * direct (default retry policy: 250 ms, x2) and direct (fast: 20 ms, x1.5): new order
//!   for fresh identifiers, own HTTP-01 or TLS-ALPN-01 responder, key + CN-less CSR,
//!   finalize, download. Account created once.
//!
//! Iterations are interleaved (every case's full, direct-default, direct-fast) so drift in
//! machine load hits all alike. Figures go to stdout; nothing is asserted on time.
//!
//! Needs root, knot (`knotd`, `knsupdate`, `kdig`) and the release binaries:
//!   cargo build --release --workspace --bins && cargo bench -p certfleet-tests --bench issuance
//! (tests/bench.sh does both). Env: BENCH_WARMUP (2), BENCH_ITERS (10).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::direct::DirectClient;
use certfleet_tests::dns::{KnotServer, Record, ZONE};
use certfleet_tests::net::HostAddrs;
use certfleet_tests::{require_root, Agent, Coordinator, Pebble, PebbleOptions};
use instant_acme::{Identifier, RetryPolicy};

const TARGET_RATIO: f64 = 1.3;
/// Wildcard + apex by DNS-01, enrolled → installed (issue #12).
const WILDCARD_TARGET: Duration = Duration::from_secs(3);

const WILDCARD_POLICY: &str = r#"
[[policy]]
name = "bench-wildcard"
match_labels = { bench = "wildcard" }

[[policy.certificate]]
name = "wild"
names = ["*.{hostname}.example.test", "{hostname}.example.test"]
challenges = ["dns-01"]
"#;

/// Hosts labelled `bench=<Case::label_value>` get one name certificate validated by the
/// case's challenge type; unlabelled hosts get the `[issuance]` default (their IPs).
const POLICIES: &str = r#"
[[policy]]
name = "bench-name-http01"
match_labels = { bench = "name-http-01" }

[[policy.certificate]]
name = "site"
names = ["{hostname}.example.test"]
ips = "none"
challenges = ["http-01"]

[[policy]]
name = "bench-name-tls-alpn01"
match_labels = { bench = "name-tls-alpn-01" }

[[policy.certificate]]
name = "site"
names = ["{hostname}.example.test"]
ips = "none"
challenges = ["tls-alpn-01"]
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Ip,
    NameHttp01,
    NameTlsAlpn01,
    Wildcard,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::Ip,
        Case::NameHttp01,
        Case::NameTlsAlpn01,
        Case::Wildcard,
    ];

    fn title(self) -> &'static str {
        match self {
            Case::Ip => "IP",
            Case::NameHttp01 => "name, HTTP-01",
            Case::NameTlsAlpn01 => "name, TLS-ALPN-01",
            Case::Wildcard => "wildcard, DNS-01",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Case::Ip => "IP certificate (IPv4 + IPv6), HTTP-01",
            Case::NameHttp01 => "name certificate, HTTP-01",
            Case::NameTlsAlpn01 => "name certificate, TLS-ALPN-01 (agent standalone)",
            Case::Wildcard => "wildcard + apex, DNS-01 (coordinator's rfc2136 provider → knot)",
        }
    }

    /// The challenge type the certificate must have been validated by.
    fn challenge(self) -> &'static str {
        match self {
            Case::Ip | Case::NameHttp01 => "http-01",
            Case::NameTlsAlpn01 => "tls-alpn-01",
            Case::Wildcard => "dns-01",
        }
    }

    /// The `bench` label selecting the case's policy (none: the default IP certificate).
    fn label_value(self) -> Option<&'static str> {
        match self {
            Case::Ip => None,
            Case::NameHttp01 => Some("name-http-01"),
            Case::NameTlsAlpn01 => Some("name-tls-alpn-01"),
            Case::Wildcard => Some("wildcard"),
        }
    }

    fn host_prefix(self) -> &'static str {
        match self {
            Case::Ip => "bench",
            Case::NameHttp01 => "bench-http",
            Case::NameTlsAlpn01 => "bench-alpn",
            Case::Wildcard => "bench-wild",
        }
    }
}

#[derive(Default)]
struct Samples {
    full: Vec<Duration>,
    direct_default: Vec<Duration>,
    direct_fast: Vec<Duration>,
}

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

/// Everything one run shares.
struct World {
    _secrets: tempfile::TempDir,
    knot: KnotServer,
    pebble: Pebble,
    coord: Coordinator,
    direct: DirectClient,
}

async fn run() -> anyhow::Result<()> {
    require_root()?;
    certfleet_tests::install_crypto_provider();
    let warmup = env_usize("BENCH_WARMUP", 2);
    let iters = env_usize("BENCH_ITERS", 10);

    let knot = KnotServer::start().await.context("starting knot")?;
    let pebble = Pebble::start_with(PebbleOptions {
        dns_server: Some(knot.addr()),
        ..Default::default()
    })
    .await?;
    // The coordinator's DNS provider: knot, by TSIG-signed updates.
    let secrets = tempfile::tempdir()?;
    let secret_file = secrets.path().join("tsig.secret");
    std::fs::write(&secret_file, format!("{}\n", knot.tsig_key().secret))?;
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let provider = format!(
        "\n[[dns_provider]]\nname = \"knot\"\nzones = [\"{ZONE}\"]\nkind = \"rfc2136\"\n\
         server = \"{addr}\"\ntsig_key_name = \"{key}\"\ntsig_algorithm = \"{alg}\"\n\
         tsig_secret_file = \"{file}\"\ncheck_nameservers = [\"{addr}\"]\n\
         poll_interval = \"20ms\"\n",
        addr = knot.addr(),
        key = knot.tsig_key().name,
        alg = knot.tsig_key().algorithm,
        file = secret_file.display(),
    );
    let coord = Coordinator::start_with(
        &pebble,
        CoordinatorOptions {
            extra_config: format!("{POLICIES}{WILDCARD_POLICY}{provider}"),
            ..Default::default()
        },
    )
    .await?;
    let direct = DirectClient::new(&pebble).await?;
    let w = World {
        _secrets: secrets,
        knot,
        pebble,
        coord,
        direct,
    };
    let default_policy = RetryPolicy::default();
    let fast_policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(20))
        .backoff(1.5);

    let mut samples: Vec<Samples> = Case::ALL.iter().map(|_| Samples::default()).collect();
    println!(
        "issuance benchmark: {warmup} warm-up + {iters} measured iterations each, interleaved \
         (IP: one IPv4 + one IPv6 identifier per certificate; name: one DNS name, resolved \
         by pebble through knot to the host's loopback addresses)"
    );
    let mut seq = 0usize;
    for i in 0..warmup + iters {
        let measured = i >= warmup;
        let tag = if measured {
            format!("iter {}", i - warmup + 1)
        } else {
            format!("warm-up {}", i + 1)
        };
        for (case, s) in Case::ALL.iter().zip(samples.iter_mut()) {
            let t = full_issuance(&w, *case, i)
                .await
                .with_context(|| format!("full issuance ({})", case.title()))?;
            seq += 1;
            let a = direct_issuance(&w, *case, &default_policy, seq)
                .await
                .with_context(|| format!("direct issuance ({}, default policy)", case.title()))?;
            seq += 1;
            let b = direct_issuance(&w, *case, &fast_policy, seq)
                .await
                .with_context(|| format!("direct issuance ({}, fast policy)", case.title()))?;
            let (tag, sep) = if *case == Case::Ip {
                (tag.as_str(), ':')
            } else {
                ("", ' ')
            };
            println!(
                "  {tag:>10}{sep} {:<17} full {:>7.1} ms   direct-default {:>7.1} ms   direct-fast {:>7.1} ms",
                case.title(),
                ms(t),
                ms(a),
                ms(b)
            );
            if measured {
                s.full.push(t);
                s.direct_default.push(a);
                s.direct_fast.push(b);
            }
        }
    }

    for (case, s) in Case::ALL.iter().zip(&samples) {
        let sf = Stats::of(&s.full);
        let sd = Stats::of(&s.direct_default);
        let sx = Stats::of(&s.direct_fast);
        println!();
        println!("{}:", case.heading());
        println!("{:<38} {:>9} {:>9} {:>9}", "", "median", "min", "max");
        sf.print("certfleet full (enrolled->installed)");
        sd.print("direct instant-acme, default retry");
        sx.print("direct instant-acme, fast retry");
        let r_default = sf.median / sd.median;
        let r_fast = sf.median / sx.median;
        println!("ratio full/direct-default (median): {r_default:.2}x");
        println!("ratio full/direct-fast    (median): {r_fast:.2}x");
        println!(
            "target: full <= {TARGET_RATIO}x direct — {} against the default policy, {} against the fast policy",
            verdict(r_default),
            verdict(r_fast)
        );
        if *case == Case::Wildcard {
            println!(
                "target: wildcard + apex full <= {} s — {}",
                WILDCARD_TARGET.as_secs(),
                if sf.median <= ms(WILDCARD_TARGET) {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
    Ok(())
}

fn verdict(r: f64) -> &'static str {
    if r <= TARGET_RATIO {
        "met"
    } else {
        "NOT met"
    }
}

/// One new host through certfleet; returns enrolled → fullchain present. A name case's
/// name is published in knot before the clock starts.
async fn full_issuance(w: &World, case: Case, i: usize) -> anyhow::Result<Duration> {
    let hostname = format!("{}-{i}", case.host_prefix());
    let (http_port, tls_port) = (w.pebble.http_port(), w.pebble.tls_port());
    let mut agent = match case {
        Case::Ip | Case::NameHttp01 | Case::Wildcard => Agent::new(&hostname, http_port)?,
        Case::NameTlsAlpn01 => {
            let agent = Agent::new_with_free_ports(&hostname, http_port, &[tls_port])?;
            agent.append_config(&format!(
                "\n[tls_alpn01]\nmode = \"standalone\"\nport = {tls_port}\n"
            ))?;
            agent
        }
    };
    let name = format!("{hostname}.{ZONE}");
    match case.label_value() {
        None => {
            agent.enroll_with(&w.coord).await?;
        }
        // DNS-01: the host needs no address record.
        Some(value) if case == Case::Wildcard => {
            agent
                .enroll_with_labels(&w.coord, &[("bench", value)])
                .await?;
        }
        Some(value) => {
            w.knot
                .add_records(&Record::addresses(&name, &agent.ips()))
                .await
                .with_context(|| format!("publishing {name}"))?;
            agent
                .enroll_with_labels(&w.coord, &[("bench", value)])
                .await?;
        }
    }
    let t0 = Instant::now();
    agent.start()?;
    let res = agent
        .wait_fullchain(Duration::from_secs(60), Duration::from_millis(2))
        .await;
    let elapsed = t0.elapsed();
    if let Err(e) = res {
        agent.dump_logs();
        w.coord.dump_logs();
        return Err(e);
    }
    // Untimed: the coordinator agrees it is installed, for the identifiers and by the
    // challenge type the case is about.
    let row = agent
        .wait_installed(&w.coord, Duration::from_secs(30))
        .await?;
    let want_ids: Vec<String> = match case {
        Case::Ip => {
            let mut ips: Vec<String> = agent.ips().iter().map(ToString::to_string).collect();
            ips.sort();
            ips
        }
        Case::NameHttp01 | Case::NameTlsAlpn01 => vec![name],
        Case::Wildcard => vec![format!("*.{name}"), name],
    };
    let mut got_ids = row.identifiers.clone();
    got_ids.sort();
    anyhow::ensure!(
        got_ids == want_ids
            && !row.validated_by.is_empty()
            && row.validated_by.values().all(|t| t == case.challenge()),
        "{}: expected {want_ids:?} validated by {}, got {row:?}",
        case.title(),
        case.challenge()
    );
    agent.stop(Duration::from_secs(10)).await?;
    Ok(elapsed)
}

/// One direct issuance for the case: a fresh IPv4 + IPv6 pair, or a fresh name published
/// in knot (before the clock starts) pointing at a fresh pair.
async fn direct_issuance(
    w: &World,
    case: Case,
    policy: &RetryPolicy,
    seq: usize,
) -> anyhow::Result<Duration> {
    if case == Case::Wildcard {
        let base = format!("direct-{seq}.{ZONE}");
        let names = vec![format!("*.{base}"), base];
        let t0 = Instant::now();
        let issued = w.direct.issue_dns01_via(&w.knot, &names, policy).await?;
        let elapsed = t0.elapsed();
        anyhow::ensure!(
            issued.chain_pem.contains("BEGIN CERTIFICATE"),
            "no certificate"
        );
        return Ok(elapsed);
    }
    let addrs = HostAddrs::allocate_ports(&[w.pebble.http_port(), w.pebble.tls_port()])?;
    let ips = addrs.ips();
    let identifiers: Vec<Identifier> = match case {
        Case::Ip => ips.iter().map(|ip| Identifier::Ip(*ip)).collect(),
        // Names (the wildcard case returned above).
        _ => {
            let name = format!("direct-{seq}.{ZONE}");
            w.knot
                .add_records(&Record::addresses(&name, &ips))
                .await
                .with_context(|| format!("publishing {name}"))?;
            vec![Identifier::Dns(name)]
        }
    };
    let t0 = Instant::now();
    let issued = match case {
        Case::NameTlsAlpn01 => {
            w.direct
                .issue_tls_alpn01_on(&identifiers, &ips, policy)
                .await?
        }
        _ => w.direct.issue_http01_on(&identifiers, &ips, policy).await?,
    };
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
