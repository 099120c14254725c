//! `certfleet-demo`: a whole fleet on one machine, in about ten seconds.
//!
//! Starts knot (an authoritative DNS server for `demo.test`), pebble resolving names
//! through it, a coordinator and two agents (each with its own IPv4 and IPv6 address).
//! web-1 gets its IP certificate; web-2, labelled `role=site`, also gets a name
//! certificate for `web-2.demo.test` (a `{hostname}.demo.test` template in the
//! coordinator's policy, the name published in knot) into a second target, and a wildcard
//! certificate `*.demo.test` + `demo.test` by DNS-01 into a third: the coordinator alone
//! writes the TXT records into knot (`[[dns_provider]]` rfc2136, its TSIG secret in a 0600
//! file), the agent installs it, and a TLS listener presenting that target's files shows it
//! served for a name under the wildcard. Prints the operator's view (`hosts`, `certs`) and
//! where each certificate landed, then stops everything. Needs root, knot and the binaries
//! built (`tests/demo.sh` does both).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::dns::{KnotOptions, KnotServer, Record};
use certfleet_tests::file_tls::FileTlsServer;
use certfleet_tests::workdir::WorkDir;
use certfleet_tests::{
    pki, require_root, Agent, CertRow, Coordinator, Pebble, PebbleOptions, RestartMode,
};

const ZONE: &str = "demo.test";
/// The agent target web-2's name certificate goes into.
const SITE_TARGET: &str = "site";
/// The agent target web-2's wildcard certificate (by DNS-01) goes into.
const WILD_TARGET: &str = "wild";
/// The SNI the wildcard is checked with: a name only the wildcard covers.
const WILD_SNI: &str = "www.demo.test";

/// Hosts labelled `role=site` get three certificates: their addresses into `default`,
/// their name into `site`, the zone's wildcard and apex (by DNS-01) into `wild`. Other
/// hosts get the `[issuance]` default (their addresses).
const POLICY: &str = r#"
[[policy]]
name = "site"
match_labels = { role = "site" }

[[policy.certificate]]
name = "ip"
ips = "all"
targets = ["default"]

[[policy.certificate]]
name = "site"
names = ["{hostname}.demo.test"]
targets = ["site"]

[[policy.certificate]]
name = "wildcard"
names = ["*.demo.test", "demo.test"]
challenges = ["dns-01"]
targets = ["wild"]
"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One demo host: its agent, the DNS name it gets a certificate for (if any), and the
/// listener serving its wildcard target (if it has one).
struct DemoHost {
    agent: Agent,
    name: Option<String>,
    wild: Option<FileTlsServer>,
}

impl DemoHost {
    fn certs_expected(&self) -> usize {
        1 + usize::from(self.name.is_some()) + usize::from(self.wild.is_some())
    }
}

async fn run() -> anyhow::Result<()> {
    require_root()?;
    certfleet_tests::install_crypto_provider();

    step(&format!("starting knot (authoritative DNS for {ZONE})"));
    let knot = KnotServer::start_with(KnotOptions {
        zones: vec![ZONE.to_owned()],
        ..Default::default()
    })
    .await?;
    println!("  listening: {}", knot.addr());
    // The coordinator's DNS credential: the TSIG secret, in a file only it may read.
    let secrets = WorkDir::new("demo-dns")?;
    let secret_file = secrets.join("tsig.secret");
    std::fs::write(&secret_file, format!("{}\n", knot.tsig_key().secret))?;
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let key = knot.tsig_key();
    let provider = format!(
        "\n[[dns_provider]]\nname = \"knot\"\nzones = [\"{ZONE}\"]\nkind = \"rfc2136\"\n\
         server = \"{addr}\"\ntsig_key_name = \"{name}\"\ntsig_algorithm = \"{alg}\"\n\
         tsig_secret_file = \"{file}\"\ncheck_nameservers = [\"{addr}\"]\n\
         propagation_timeout = \"20s\"\npoll_interval = \"200ms\"\n",
        addr = knot.addr(),
        name = key.name,
        alg = key.algorithm,
        file = secret_file.display(),
    );

    step("starting pebble (ACME test CA, resolving names through knot)");
    let pebble = Pebble::start_with(PebbleOptions {
        dns_server: Some(knot.addr()),
        ..Default::default()
    })
    .await?;
    println!("  directory: {}", pebble.directory_url());

    step("initialising and starting the coordinator");
    let mut coord = Coordinator::start_with(
        &pebble,
        CoordinatorOptions {
            extra_config: format!("{provider}{POLICY}"),
            ..Default::default()
        },
    )
    .await?;
    println!("  listening: {}", coord.url());
    println!("  fleet CA sha256: {}", coord.ca_sha256());
    println!("  policy: hosts labelled role=site also get {{hostname}}.{ZONE}");
    println!(
        "  policy: ... and *.{ZONE} + {ZONE} by DNS-01 (TSIG key in {}, mode 0600)",
        secret_file.display()
    );

    let mut hosts = Vec::new();
    for (host, site) in [("web-1", false), ("web-2", true)] {
        step(&format!("enrolling host {host}"));
        let mut agent = Agent::new(host, pebble.http_port())?;
        let ips: Vec<String> = agent.ips().iter().map(ToString::to_string).collect();
        let name = if site {
            let name = format!("{host}.{ZONE}");
            knot.add_records(&Record::addresses(&name, &agent.ips()))
                .await?;
            println!("  {name}: A/AAAA {} (in knot)", ips.join(", "));
            std::fs::create_dir_all(site_dir(&agent))?;
            agent.append_config(&site_target(&agent))?;
            Some(name)
        } else {
            None
        };
        let wild = if site {
            let listener = tokio::net::TcpListener::bind((agent.ips()[0], 0)).await?;
            let dir = agent.tls_dir().join(WILD_TARGET);
            std::fs::create_dir_all(&dir)?;
            let server =
                FileTlsServer::start(listener, dir.join("fullchain.pem"), dir.join("key.pem"))?;
            agent.append_config(&file_target(&agent, WILD_TARGET, Some(server.addr())))?;
            println!(
                "  {host}: target {WILD_TARGET} served by a TLS listener on {}",
                server.addr()
            );
            Some(server)
        } else {
            None
        };
        let id = if site {
            agent
                .enroll_with_labels(&coord, &[("role", "site")])
                .await?
        } else {
            agent.enroll_with(&coord).await?
        };
        let labels = if site { ", label role=site" } else { "" };
        println!("  {host}: host {id}, addresses {}{labels}", ips.join(", "));
        agent.start()?;
        hosts.push(DemoHost { agent, name, wild });
    }

    step("waiting for certificates");
    let root = pebble.issuing_root_der().await?;
    for host in &mut hosts {
        let mut rows = wait_installed(&coord, host, Duration::from_secs(90))
            .await
            .inspect_err(|_| {
                host.agent.dump_logs();
                coord.dump_logs();
            })?;
        rows.sort_by_key(|r| {
            (
                r.target != "default",
                r.target != SITE_TARGET,
                r.target.clone(),
            )
        });
        let agent = &host.agent;
        let chain = certfleet_tests::tlsutil::certs_from_file(&agent.fullchain_path())?;
        for ip in agent.ips() {
            pki::verify_chain_for_ip(&chain, &root, ip)
                .with_context(|| format!("{}'s IP certificate", agent.name()))?;
        }
        for row in &rows {
            let what = match (&host.name, row.target.as_str()) {
                (_, WILD_TARGET) => {
                    let server = host.wild.as_ref().context("no wildcard listener")?;
                    let chain = certfleet_tests::tlsutil::served_chain_for_name(
                        server.addr(),
                        WILD_SNI,
                        &root,
                    )
                    .await?;
                    let leaf = pki::leaf_info(&chain[0])?;
                    anyhow::ensure!(
                        Some(leaf.serial_hex.as_str())
                            == row.serial.as_deref().map(pki::normalize_serial).as_deref(),
                        "{} serves serial {} for {WILD_SNI}, not the installed one",
                        server.addr(),
                        leaf.serial_hex
                    );
                    let by: Vec<String> = row
                        .validated_by
                        .iter()
                        .map(|(id, how)| format!("{id} by {how}"))
                        .collect();
                    format!(
                        "{}; served on {} for SNI {WILD_SNI}, verified against pebble's root",
                        by.join(", "),
                        server.addr()
                    )
                }
                (Some(name), SITE_TARGET) => {
                    let path = site_dir(agent).join("fullchain.pem");
                    let chain = certfleet_tests::tlsutil::certs_from_file(&path)?;
                    pki::verify_chain_for_name(&chain, &root, name)
                        .with_context(|| format!("{}'s name certificate", agent.name()))?;
                    format!("{name}, verified against pebble's root for the name")
                }
                _ => "its IPs, verified against pebble's root for every IP".to_owned(),
            };
            println!(
                "  {}: installed serial {} into {} ({what})",
                agent.name(),
                row.serial.as_deref().unwrap_or("?"),
                row.target
            );
        }
    }

    step("fleet view: certfleet-coordinator hosts");
    print!("{}", coord.cli_ok(&["hosts"]).await?);
    step("fleet view: certfleet-coordinator certs");
    print!("{}", coord.cli_ok(&["certs"]).await?);

    step("where the certificates are");
    for host in &hosts {
        let agent = &host.agent;
        println!("  {} ({}):", agent.name(), agent.id()?);
        print_target(
            "default",
            &agent.fullchain_path(),
            &agent.cert_path(),
            &agent.chain_path(),
            &agent.key_path(),
        )?;
        let mut more = Vec::new();
        if host.name.is_some() {
            more.push(SITE_TARGET);
        }
        if host.wild.is_some() {
            more.push(WILD_TARGET);
        }
        for target in more {
            let dir = agent.tls_dir().join(target);
            print_target(
                target,
                &dir.join("fullchain.pem"),
                &dir.join("cert.pem"),
                &dir.join("chain.pem"),
                &dir.join("key.pem"),
            )?;
        }
        println!("    reloads    {}", agent.reload_count());
    }

    let left = knot
        .resolve(&format!("_acme-challenge.{ZONE}"), "TXT")
        .await?;
    anyhow::ensure!(
        left.values.is_empty(),
        "DNS-01 TXT records left in knot: {:?}",
        left.values
    );
    println!("  _acme-challenge.{ZONE}: no TXT record left in knot (removed after validation)");
    println!("  (host directories are temp dirs, removed when the demo stops)");

    step("stopping");
    for host in &mut hosts {
        host.agent.stop(Duration::from_secs(10)).await?;
    }
    coord.stop_current(RestartMode::Term).await?;
    drop(hosts);
    drop(coord);
    drop(pebble);
    drop(knot);
    drop(secrets);
    println!("done.");
    Ok(())
}

fn site_dir(agent: &Agent) -> PathBuf {
    agent.tls_dir().join(SITE_TARGET)
}

/// The agent's second target, `site`: its own files beside `default`'s, the same reload
/// log, nothing to check it is served (no web server on these loopback hosts).
fn site_target(agent: &Agent) -> String {
    file_target(agent, SITE_TARGET, None)
}

/// A target with its own files under `<tls dir>/<target>/` and the same reload log; seen
/// served at `verify` (the agent's served check), or not checked.
fn file_target(agent: &Agent, target: &str, verify: Option<std::net::SocketAddr>) -> String {
    let dir = agent.tls_dir().join(target);
    let q = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
    let reload = format!("echo reloaded >> {}", agent.reload_log_path().display());
    let verify = verify.map(|a| format!("\"{a}\"")).unwrap_or_default();
    format!(
        "\n[targets.{target}]\ncert = {}\nchain = {}\nfullchain = {}\nkey = {}\n\
         reload = [\"/bin/sh\", \"-c\", {}]\nverify = [{verify}]\n",
        q(&dir.join("cert.pem")),
        q(&dir.join("chain.pem")),
        q(&dir.join("fullchain.pem")),
        q(&dir.join("key.pem")),
        serde_json::Value::String(reload),
    )
}

/// Polls `certs` until every certificate the host should get is installed (and its
/// fullchain file is there); returns those rows.
async fn wait_installed(
    coord: &Coordinator,
    host: &mut DemoHost,
    timeout: Duration,
) -> anyhow::Result<Vec<CertRow>> {
    let id = host.agent.id()?.to_owned();
    let want = host.certs_expected();
    let start = Instant::now();
    loop {
        if let Some(child) = host.agent.child() {
            if let Some(st) = child.try_wait()? {
                anyhow::bail!("agent {} exited: {st}", host.agent.name());
            }
        }
        let rows: Vec<CertRow> = coord
            .certs()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.host_id == id)
            .collect();
        // The wildcard target has a listener: it must be seen served, not only installed.
        let installed: Vec<CertRow> = rows
            .iter()
            .filter(|r| r.state == "served" || (r.state == "installed" && r.target != WILD_TARGET))
            .cloned()
            .collect();
        let wild_file = host.agent.tls_dir().join(WILD_TARGET).join("fullchain.pem");
        let files = host.agent.fullchain_path().is_file()
            && (host.name.is_none() || site_dir(&host.agent).join("fullchain.pem").is_file())
            && (host.wild.is_none() || wild_file.is_file());
        if installed.len() >= want && files {
            return Ok(installed);
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "{}: {} of {want} certificates installed after {timeout:?}: {rows:#?}",
                host.agent.name(),
                installed.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_target(
    target: &str,
    fullchain: &Path,
    cert: &Path,
    chain: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let leaf = pki::leaf_info_from_file(fullchain)?;
    println!("    target {target}:");
    println!("      fullchain  {}", fullchain.display());
    println!("      cert       {}", cert.display());
    println!("      chain      {}", chain.display());
    println!(
        "      key (0600) {}  — made on the host, never sent",
        key.display()
    );
    if !leaf.ip_sans.is_empty() {
        let sans: Vec<String> = leaf.ip_sans.iter().map(ToString::to_string).collect();
        println!("      IP SANs    {}", sans.join(", "));
    }
    if !leaf.dns_sans.is_empty() {
        println!("      DNS SANs   {}", leaf.dns_sans.join(", "));
    }
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}
