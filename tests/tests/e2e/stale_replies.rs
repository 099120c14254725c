//! Issue 9, part 1: commands stay correct across coordinator restarts.
//!
//! The deterministic reproduction: one agent, issue once, restart the coordinator cleanly
//! (SIGTERM) and again as a crash (SIGKILL) — the agent process lives on through both, and
//! reconnects — then `certs renew --host H`. Every command of that renewal must be answered
//! by its own execution, never by a reply the agent cached for a command of an earlier
//! coordinator run: a new key is made on the host, the HTTP-01 listener is up while the CA
//! validates (when it validates) and closed afterwards, no validation fails, and the new
//! certificate is installed at the first attempt (one issuance, one install, no
//! "unexpected reply").
//!
//! Two variants, by what the CA asks for on renewal:
//! - `PEBBLE_AUTHZREUSE=100` (as Let's Encrypt, which reuses valid authorizations for 30
//!   days): the renewal's order is ready at once; the only commands are "create CSR" and
//!   "install".
//! - `PEBBLE_AUTHZREUSE=0`: the renewal is validated again, so "present challenges" and
//!   "clear challenges" run too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::{net, pki, Agent, PebbleOptions, RestartMode};
use serde_json::Value;

use crate::support::{check_installed, pebble_and_coordinator_with, ISSUE_TIMEOUT};

/// How long the renewal may take before the test gives up on it (one issuance with NOSLEEP
/// takes about a second; this is for a loaded machine).
const RENEWAL_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_after_coordinator_restarts_with_authz_reuse() {
    renewal_after_coordinator_restarts(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_after_coordinator_restarts_with_fresh_validation() {
    renewal_after_coordinator_restarts(0).await;
}

/// Connects to the agent's HTTP-01 addresses again and again in the background and counts
/// the connections that were accepted: whether the listener was up at some point.
struct ListenerProbe {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    tries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ListenerProbe {
    fn start(addrs: Vec<SocketAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let tries = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, accepted, tries) = (stop.clone(), accepted.clone(), tries.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    for addr in &addrs {
                        tries.fetch_add(1, Ordering::SeqCst);
                        if net::tcp_accepts(*addr, Duration::from_millis(500)).await {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Self {
            stop,
            accepted,
            tries,
            task,
        }
    }

    /// Stops probing: (connections accepted, connections tried).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        (
            self.accepted.load(Ordering::SeqCst),
            self.tries.load(Ordering::SeqCst),
        )
    }
}

fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or("")
}

fn key_spki(agent: &Agent) -> Vec<u8> {
    let pem = std::fs::read_to_string(agent.key_path()).expect("read key.pem");
    pki::key_spki_from_pem(&pem).expect("parse key.pem")
}

async fn renewal_after_coordinator_restarts(authz_reuse: u8) {
    let popts = PebbleOptions::default().with_authz_reuse(authz_reuse);
    let (pebble, mut coord) =
        pebble_and_coordinator_with(popts, CoordinatorOptions::default()).await;
    let mut agent = Agent::new("stale", pebble.http_port()).expect("agent");
    let host = agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start agent");
    let row0 = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("first certificate installed");
    let root = pebble.issuing_root_der().await.expect("issuing root");
    check_installed(&agent, &row0, &root);
    let cert_id = row0.cert_id.clone();
    let serial0 = pki::normalize_serial(row0.serial.as_deref().expect("serial"));
    let key0 = key_spki(&agent);
    let http01: Vec<SocketAddr> = agent
        .ips()
        .into_iter()
        .map(|ip| SocketAddr::new(ip, agent.http01_port()))
        .collect();
    for addr in &http01 {
        assert!(
            !net::tcp_accepts(*addr, Duration::from_secs(2)).await,
            "the HTTP-01 listener on {addr} should be closed once the first certificate is installed"
        );
    }

    // The agent process lives on through both restarts; only its session is new.
    let agent_runs = agent.runs();
    for mode in [RestartMode::Term, RestartMode::Kill] {
        coord.restart(mode).await.expect("restart the coordinator");
        coord
            .wait_connected(&host, true, Duration::from_secs(45))
            .await
            .unwrap_or_else(|e| panic!("agent did not reconnect after a {mode:?} restart: {e:#}"));
        eprintln!("coordinator restarted ({mode:?}); the agent reconnected");
    }
    assert_eq!(agent.runs(), agent_runs, "the agent was not restarted");
    let audit_before = coord.audit_records().await.expect("audit").len();

    let probe = ListenerProbe::start(http01.clone());
    let started = Instant::now();
    let out = coord.renew(&["--host", &host]).await.expect("certs renew");
    assert!(
        out.status.success(),
        "certs renew --host {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Wait for the outcome: the new certificate installed, or the first sign of failure
    // (an error on the row, or an "unexpected reply" in the coordinator's log). No retry
    // is waited for: the install must succeed at the first attempt.
    let outcome = loop {
        let row = coord.cert(&cert_id).await.expect("certs --json");
        let serial = row.serial.as_deref().map(pki::normalize_serial);
        let installed = row.installed_serial.as_deref().map(pki::normalize_serial);
        if row.state == "installed"
            && serial.is_some()
            && serial != Some(serial0.clone())
            && installed == serial
        {
            break Ok(row);
        }
        if row.last_error.is_some() {
            break Err(format!("the renewal failed: {row:?}"));
        }
        if !coord.log_lines_containing("unexpected reply").is_empty() {
            break Err(format!(
                "the coordinator logged an unexpected reply; row: {row:?}"
            ));
        }
        if started.elapsed() > RENEWAL_TIMEOUT {
            break Err(format!(
                "no new certificate installed {RENEWAL_TIMEOUT:?} after certs renew: {row:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    let (accepted, tries) = probe.finish().await;

    // Gather everything, then judge all of it at once.
    let mut failures: Vec<String> = Vec::new();
    let row = match outcome {
        Ok(row) => Some(row),
        Err(e) => {
            failures.push(e);
            None
        }
    };
    let audit = coord.audit_records().await.expect("audit");
    let new: &[Value] = &audit[audit_before.min(audit.len())..];
    let kinds: Vec<&str> = new.iter().map(kind).collect();
    let count = |k: &str| new.iter().filter(|r| kind(r) == k).count();
    let unexpected = coord.log_lines_containing("unexpected reply");
    let lost_key = coord.log_lines_containing("lost the key");

    // A new key on the host, matching the new certificate the coordinator lists.
    let pair = agent.installed_pair();
    match (&pair, &row) {
        (Ok(pair), Some(row)) => {
            let serial = pki::normalize_serial(row.serial.as_deref().unwrap_or_default());
            if pair.serial != serial {
                failures.push(format!(
                    "the target holds serial {} but the coordinator lists {serial}",
                    pair.serial
                ));
            }
            if pair.key_spki == key0 {
                failures.push(
                    "the renewed certificate is for the old key: no new key was made on the host"
                        .into(),
                );
            }
        }
        (Ok(pair), None) => {
            if pair.key_spki == key0 {
                failures.push(format!(
                    "the host still holds the old key (serial {})",
                    pair.serial
                ));
            }
        }
        (Err(e), _) => failures.push(format!("the installed pair is not whole: {e}")),
    }

    // The CA validated whatever it asked to validate, so the listener was up then; nothing
    // failed.
    let presented = count("challenge_presented");
    let validated = count("challenge_validated");
    let failed: Vec<&Value> = new
        .iter()
        .filter(|r| kind(r) == "challenge_failed")
        .collect();
    if !failed.is_empty() {
        let problems: Vec<&Value> = failed.iter().map(|r| &r["details"]["problem"]).collect();
        failures.push(format!(
            "{} challenge_failed record(s) (the listener was not up when the CA validated): {problems:#?}",
            failed.len()
        ));
    }
    if presented > 0 && validated == 0 {
        failures.push(format!(
            "challenges were presented ({presented}) but the CA validated none"
        ));
    }
    if authz_reuse == 0 && presented == 0 {
        failures.push("with PEBBLE_AUTHZREUSE=0 the renewal should have been validated".into());
    }

    // Installed at the first attempt: one issuance, one install of that serial, nothing
    // rolled back, no "unexpected reply".
    let issued: Vec<&Value> = new
        .iter()
        .filter(|r| kind(r) == "certificate_issued")
        .collect();
    let installed: Vec<&Value> = new
        .iter()
        .filter(|r| kind(r) == "certificate_installed")
        .collect();
    if issued.len() != 1 || installed.len() != 1 || issued[0]["serial"] != installed[0]["serial"] {
        failures.push(format!(
            "want exactly one certificate_issued and one certificate_installed of the same serial, got issued {:?} installed {:?}",
            issued.iter().map(|r| &r["serial"]).collect::<Vec<_>>(),
            installed.iter().map(|r| &r["serial"]).collect::<Vec<_>>()
        ));
    }
    if count("certificate_rolled_back") > 0 {
        failures.push("an install was rolled back".into());
    }
    if !unexpected.is_empty() {
        failures.push(format!(
            "{} \"unexpected reply\" line(s) in the coordinator's logs: {unexpected:#?}",
            unexpected.len()
        ));
    }
    if !lost_key.is_empty() {
        failures.push(format!(
            "the coordinator found the host without the key for the new certificate: {lost_key:#?}"
        ));
    }

    // The listener is closed after the renewal (a few seconds of slack for the clear).
    let mut still_open = Vec::new();
    for addr in &http01 {
        let closed =
            certfleet_tests::wait_for(
                &format!("the HTTP-01 listener on {addr} to close"),
                Duration::from_secs(10),
                Duration::from_millis(100),
                || async move {
                    Ok((!net::tcp_accepts(*addr, Duration::from_secs(1)).await).then_some(()))
                },
            )
            .await;
        if closed.is_err() {
            still_open.push(*addr);
        }
    }
    if !still_open.is_empty() {
        failures.push(format!(
            "the HTTP-01 listener is still bound on {still_open:?} 10 s after the renewal"
        ));
    }
    let verify = coord
        .audit_verify()
        .await
        .unwrap_or_else(|e| format!("{e:#}"));
    if !verify.contains("intact") {
        failures.push(format!("audit verify: {verify}"));
    }

    eprintln!(
        "STALE-REPLIES authz_reuse={authz_reuse}: renewal {} in {took:?}; audit since: {kinds:?}; \
         listener accepted {accepted}/{tries} probes during the renewal; \
         unexpected replies {}; challenge_failed {}; new key {}",
        if row.is_some() {
            "installed"
        } else {
            "NOT installed"
        },
        unexpected.len(),
        failed.len(),
        pair.as_ref().is_ok_and(|p| p.key_spki != key0),
    );
    if !failures.is_empty() {
        // (Every process's log tail is printed by its guard as the panic unwinds.)
        panic!(
            "renewal after coordinator restarts (PEBBLE_AUTHZREUSE={authz_reuse}):\n- {}",
            failures.join("\n- ")
        );
    }
    if let Some(row) = row {
        check_installed(&agent, &row, &root);
    }
}
