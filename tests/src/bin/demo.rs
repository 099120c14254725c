//! `certfleet-demo`: a whole fleet on one machine, in about ten seconds.
//!
//! Starts pebble, a coordinator and two agents (each with its own IPv4 and IPv6
//! address), lets the agents get their IP certificates, prints the operator's view
//! (`hosts`, `certs`) and where each certificate landed, then stops everything.
//! Needs root and the binaries built (`tests/demo.sh` does both).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use certfleet_tests::{pki, require_root, Agent, Coordinator, Pebble, RestartMode};

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

async fn run() -> anyhow::Result<()> {
    require_root()?;
    certfleet_tests::install_crypto_provider();

    step("starting pebble (ACME test CA)");
    let pebble = Pebble::start().await?;
    println!("  directory: {}", pebble.directory_url());

    step("initialising and starting the coordinator");
    let mut coord = Coordinator::start(&pebble).await?;
    println!("  listening: {}", coord.url());
    println!("  fleet CA sha256: {}", coord.ca_sha256());

    let mut agents = Vec::new();
    for name in ["web-1", "web-2"] {
        step(&format!("enrolling host {name}"));
        let mut agent = Agent::new(name, pebble.http_port())?;
        let ips: Vec<String> = agent.ips().iter().map(ToString::to_string).collect();
        let id = agent.enroll_with(&coord).await?;
        println!("  {name}: host {id}, addresses {}", ips.join(", "));
        agent.start()?;
        agents.push(agent);
    }

    step("waiting for certificates");
    let root = pebble.issuing_root_der().await?;
    for agent in &mut agents {
        let row = agent
            .wait_installed(&coord, Duration::from_secs(90))
            .await
            .inspect_err(|_| {
                agent.dump_logs();
                coord.dump_logs();
            })?;
        let chain = certfleet_tests::tlsutil::certs_from_file(&agent.fullchain_path())?;
        for ip in agent.ips() {
            pki::verify_chain_for_ip(&chain, &root, ip)
                .with_context(|| format!("{}'s certificate", agent.name()))?;
        }
        println!(
            "  {}: installed serial {} (verified against pebble's root for every IP)",
            agent.name(),
            row.serial.as_deref().unwrap_or("?")
        );
    }

    step("fleet view: certfleet-coordinator hosts");
    print!("{}", coord.cli_ok(&["hosts"]).await?);
    step("fleet view: certfleet-coordinator certs");
    print!("{}", coord.cli_ok(&["certs"]).await?);

    step("where the certificates are");
    for agent in &agents {
        let leaf = pki::leaf_info_from_file(&agent.fullchain_path())?;
        println!("  {} ({}):", agent.name(), agent.id()?);
        println!("    fullchain  {}", agent.fullchain_path().display());
        println!("    cert       {}", agent.cert_path().display());
        println!("    chain      {}", agent.chain_path().display());
        println!(
            "    key (0600) {}  — made on the host, never sent",
            agent.key_path().display()
        );
        let sans: Vec<String> = leaf.ip_sans.iter().map(ToString::to_string).collect();
        println!("    IP SANs    {}", sans.join(", "));
        println!("    reloads    {}", agent.reload_count());
    }

    println!("  (host directories are temp dirs, removed when the demo stops)");

    step("stopping");
    for agent in &mut agents {
        agent.stop(Duration::from_secs(10)).await?;
    }
    coord.stop_current(RestartMode::Term).await?;
    drop(agents);
    drop(coord);
    drop(pebble);
    println!("done.");
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}
