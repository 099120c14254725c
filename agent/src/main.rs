//! `certfleet-agent`: thin binary. Parses arguments, loads config, starts tracing, then
//! calls the library.

use anyhow::Context;
use certfleet_agent::coordinators::SessionStatus;
use certfleet_agent::{config::AgentConfig, identity, install};
use certfleet_shared::clock::{Clock, SharedClock, SystemClock};
use certfleet_shared::timefmt::{relative, rfc3339};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "certfleet-agent",
    version,
    about = "certfleet agent: HTTP-01, host keys, install and reload"
)]
struct Args {
    /// Config file (TOML).
    #[arg(
        long,
        global = true,
        env = "CERTFLEET_AGENT_CONFIG",
        default_value = "/etc/certfleet/agent.toml"
    )]
    config: PathBuf,
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        env = "CERTFLEET_AGENT_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: String,
    /// Print JSON instead of text (`enroll`, `leave`, `status`), before or after the
    /// subcommand.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll with a coordinator using a join token.
    Enroll {
        /// Coordinator URL, https://HOST:PORT; repeat it (or give a comma list) for several
        /// coordinators of one fleet. Default: the config's `coordinators`.
        #[arg(long = "coordinator", value_delimiter = ',')]
        coordinators: Vec<String>,
        /// Join token from `certfleet-coordinator token create` (not needed when the host
        /// is already enrolled: then nothing is asked of the coordinator).
        #[arg(long, env = "CERTFLEET_JOIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// SHA-256 of the coordinator's fleet CA (`certfleet-coordinator ca-fingerprint`).
        #[arg(long)]
        ca_sha256: String,
        /// Host name shown to operators (default: this machine's hostname).
        #[arg(long)]
        name: Option<String>,
        /// Labels, key=value (repeatable). A token that fixes labels gives the host its
        /// own; asking for any other is refused.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Then wait until the running agent daemon has installed the host's first
        /// certificate and proved it served (exit 0), e.g. to hold a VM's service.
        #[arg(long)]
        wait: bool,
        /// Give up after this long (e.g. 90s, 5m, 1h30m): retries while no coordinator is
        /// reachable, and with --wait the wait for the first certificate.
        #[arg(long, default_value = "5m", value_parser = certfleet_shared::timefmt::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run the agent.
    Run,
    /// Leave the fleet now: the coordinator revokes this host's certificates and removes
    /// it, then the local identity is deleted (installed certificate files stay). For a
    /// VM's shutdown: deploy/systemd/certfleet-agent-leave.service.
    Leave {
        /// Give up after this long, e.g. 30s, 2m (nothing is deleted then).
        #[arg(long, default_value = "30s", value_parser = certfleet_shared::timefmt::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show enrollment and installed certificates.
    Status,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: use key=value"))
}

fn main() -> std::process::ExitCode {
    // `Args::parse()`, plus the hidden `generate-assets` (completions, man pages).
    let args = certfleet_shared::cli_assets::parse::<Args>();
    if let Err(e) = certfleet_shared::daemon::init_tracing(
        &args.log_format,
        "info,h2=warn,hyper=warn,tower=warn",
    ) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::from(2);
    }
    // Two worker threads are plenty for an agent; keeps idle memory small.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: {}",
                certfleet_shared::daemon::error_message(e.chain())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args.config)?;
    match args.cmd {
        Cmd::Enroll {
            coordinators,
            token,
            ca_sha256,
            name,
            labels,
            wait,
            timeout,
        } => {
            let started = std::time::Instant::now();
            let hostname = match name {
                Some(n) => n,
                None => std::fs::read_to_string("/etc/hostname")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "unnamed".into()),
            };
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let coordinators = if coordinators.is_empty() {
                config.coordinators.clone()
            } else {
                coordinators
            };
            let enrolled = identity::Files::new(&config.state_dir).load().is_ok();
            if !enrolled {
                anyhow::ensure!(
                    !coordinators.is_empty(),
                    "give --coordinator https://HOST:PORT (repeatable), or list `coordinators = [...]` in {}",
                    args.config.display()
                );
            }
            let token = token.unwrap_or_default();
            anyhow::ensure!(
                enrolled || !token.trim().is_empty(),
                "give the join token: --token T or CERTFLEET_JOIN_TOKEN (from `certfleet-coordinator token create`)"
            );
            let params = identity::EnrollParams {
                urls: coordinators,
                token,
                ca_sha256,
                hostname,
                labels,
                timeout,
            };
            let e = identity::enroll(&config.state_dir, &params, SystemClock.now_unix()).await?;
            let mut doc = serde_json::json!({
                "host_id": e.enrollment().host_id.to_string(),
                "already_enrolled": matches!(e, identity::Enrolled::Already(_)),
                "coordinators": e.enrollment().coordinator_urls(),
            });
            if !args.json {
                match &e {
                    identity::Enrolled::New(e) => println!("enrolled as host {}", e.host_id),
                    identity::Enrolled::Already(e) => println!(
                        "already enrolled as host {}\n(same fleet CA, with {}; the token was not used)",
                        e.host_id,
                        e.coordinator_urls().join(", ")
                    ),
                }
            }
            if wait {
                let host_id = e.enrollment().host_id.to_string();
                let first = certfleet_agent::bootstrap::wait_first_certificate(
                    &config,
                    &host_id,
                    started,
                    started + timeout,
                )
                .await?;
                let t = &first.install;
                doc["first_certificate"] = serde_json::json!({
                    "serial": t.serial, "target": first.target,
                    "served_on": t.served_on, "verify_disabled": t.verify_disabled,
                    "seconds": started.elapsed().as_secs_f64(),
                });
                if !args.json {
                    println!(
                        "certificate {} installed in target {} and {} after {:.2} s",
                        t.serial,
                        first.target,
                        if t.verify_disabled {
                            "its reload done (the target has no served check)".to_owned()
                        } else {
                            format!("served on {}", t.served_on.join(", "))
                        },
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
        }
        Cmd::Run => {
            // From here on a SIGHUP asks for a reload instead of ending the process.
            let hangups = certfleet_shared::daemon::Hangups::new();
            let clock: SharedClock = Arc::new(SystemClock);
            let shutdown = CancellationToken::new();
            let run = certfleet_agent::reload::run(
                config,
                args.config.clone(),
                clock,
                hangups,
                shutdown.clone(),
            );
            tokio::pin!(run);
            // No task for the signal: it is awaited here, beside the daemon.
            tokio::select! {
                r = &mut run => return r,
                _ = certfleet_shared::daemon::wait_for_signal() => {
                    certfleet_shared::daemon::notify_systemd(certfleet_shared::daemon::Notify::Stopping);
                    shutdown.cancel();
                }
            }
            run.await?;
        }
        Cmd::Leave { timeout } => {
            use certfleet_agent::leave::Left;
            let left = certfleet_agent::leave::leave(&config, timeout).await?;
            if args.json {
                let v = match &left {
                    Left::Removed {
                        host,
                        revoked_serials,
                    } => serde_json::json!({"left": true, "host_id": host.to_string(),
                        "already_removed": false, "revoked_serials": revoked_serials}),
                    Left::AlreadyRemoved { host } => serde_json::json!({"left": true,
                        "host_id": host.to_string(), "already_removed": true, "revoked_serials": []}),
                    Left::NotEnrolled => serde_json::json!({"left": false, "host_id": null,
                        "already_removed": false, "revoked_serials": []}),
                };
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            match left {
                Left::Removed {
                    host,
                    revoked_serials,
                } => println!(
                    "host {host} left the fleet; revoked: {}; identity deleted (installed certificate files are left in place)",
                    if revoked_serials.is_empty() { "none".to_owned() } else { revoked_serials.join(", ") }
                ),
                Left::AlreadyRemoved { host } => println!(
                    "host {host} was already removed by the coordinator; identity deleted"
                ),
                Left::NotEnrolled => println!("not enrolled; nothing to leave"),
            }
        }
        Cmd::Status => status(&config, args.json).context("status")?,
    }
    Ok(())
}

fn status(config: &AgentConfig, json: bool) -> anyhow::Result<()> {
    let enrollment = identity::Files::new(&config.state_dir).load().ok();
    let coordinators = match (&enrollment, config.coordinators.is_empty()) {
        (_, false) => config.coordinators.clone(),
        (Some(e), true) => e.coordinator_urls(),
        (None, true) => Vec::new(),
    };
    let session = SessionStatus::read(&config.state_dir)?;
    let running = session.as_ref().is_some_and(SessionStatus::writer_running);
    let now = SystemClock.now_unix();
    let resolved = config
        .resolve_targets()
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let targets: Vec<serde_json::Value> = resolved
        .iter()
        .map(|(name, t)| match install::inspect(t) {
            Some(i) => serde_json::json!({"name": name, "serial": i.serial, "not_after": rfc3339(i.not_after),
                "identifiers": i.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>()}),
            None => serde_json::json!({"name": name, "serial": null, "not_after": null, "identifiers": []}),
        })
        .collect();
    if json {
        let v = serde_json::json!({
            "enrolled": enrollment.is_some(),
            "host_id": enrollment.as_ref().map(|e| e.host_id.to_string()),
            "coordinator": enrollment.as_ref().map(|e| e.coordinator.clone()),
            "coordinators": coordinators,
            "session": session.as_ref().map(|s| serde_json::json!({
                "agent_running": running,
                "connected": s.connected && running,
                "coordinator": s.coordinator,
                "address": s.address,
                "since": rfc3339(s.since),
                "last_error": s.last_error,
            })),
            "targets": targets,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match &enrollment {
        Some(e) => println!(
            "enrolled as host {} with {}",
            e.host_id,
            coordinators.join(", ")
        ),
        None => println!("not enrolled"),
    }
    match &session {
        None => println!("session: none yet (the agent has not run)"),
        Some(s) if !running => println!(
            "session: the agent is not running (last: {} at {})",
            if s.connected {
                "connected"
            } else {
                "not connected"
            },
            rfc3339(s.since)
        ),
        Some(s) if s.connected => println!(
            "session: connected to {} ({}) since {}",
            s.coordinator.as_deref().unwrap_or("?"),
            s.address.as_deref().unwrap_or("?"),
            rfc3339(s.since)
        ),
        Some(s) => println!(
            "session: not connected since {}{}",
            rfc3339(s.since),
            s.last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
    }
    for (name, t) in &resolved {
        match install::inspect(t) {
            Some(i) => println!(
                "target {name}: serial {} expires {} ({})",
                i.serial,
                rfc3339(i.not_after),
                relative(i.not_after, now)
            ),
            None => println!("target {name}: nothing installed"),
        }
    }
    Ok(())
}
