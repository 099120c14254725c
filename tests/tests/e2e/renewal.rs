//! The renewal engine against real ACME servers — pebble and acme2certifier: certificates
//! renew on their own at the right moment (and only then), an operator can force a renewal,
//! an order interrupted by a crash is resumed rather than replaced, a CA outage is retried
//! with growing delays and survived (pebble forgets every account when it restarts,
//! acme2certifier keeps them in its database), badNonce storms are survived, and a host
//! whose HTTP-01 responder is unreachable stops being ordered for once the
//! failed-validations budget is spent (pebble) or has its stuck order given up on and
//! retried (acme2certifier, which leaves such orders pending).
//!
//! The bodies are generic over [`RenewalCa`]; `mod pebble` and `mod a2c` at the bottom
//! instantiate them, each with the server knobs that make the scenario happen. What runs on
//! one server only says why there.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certfleet_shared::clock::{Clock as _, SystemClock};
use certfleet_tests::acme2certifier::A2c;
use certfleet_tests::coordinator::{AcmeServer, CoordinatorOptions};
use certfleet_tests::pki::{self, normalize_serial, LeafInfo};
use certfleet_tests::{net, Agent, CertRow, Coordinator, Pebble, PebbleOptions, RestartMode};
use rustls_pki_types::CertificateDer;

use crate::support::{
    check_installed, error_parts_for, pebble_and_coordinator_with, stderr_of, ISSUE_TIMEOUT,
    QUIET_PERIOD,
};

/// What the renewal suite needs from an ACME server on top of [`AcmeServer`].
trait RenewalCa: AcmeServer {
    /// The port the server's HTTP-01 validator connects to on every identifier.
    fn http01_port(&self) -> u16;
    /// The root issued chains must verify to (for pebble: of the current run).
    async fn issuing_root(&self) -> CertificateDer<'static>;
    /// Kills the server (a CA outage), keeping its port and directory.
    async fn stop(&mut self);
    /// Serves again on the same port and directory.
    async fn restart(&mut self);
    /// Whether ACME accounts survive [`RenewalCa::restart`].
    const KEEPS_ACCOUNTS: bool;
}

impl RenewalCa for Pebble {
    fn http01_port(&self) -> u16 {
        Pebble::http_port(self)
    }
    async fn issuing_root(&self) -> CertificateDer<'static> {
        self.issuing_root_der()
            .await
            .expect("pebble's issuing root")
    }
    async fn stop(&mut self) {
        Pebble::stop(self).await.expect("stop pebble");
    }
    async fn restart(&mut self) {
        Pebble::restart(self).await.expect("restart pebble");
    }
    /// Pebble keeps nothing between runs.
    const KEEPS_ACCOUNTS: bool = false;
}

impl RenewalCa for A2c {
    fn http01_port(&self) -> u16 {
        A2c::HTTP01_PORT
    }
    async fn issuing_root(&self) -> CertificateDer<'static> {
        self.issuing_ca_der().clone()
    }
    async fn stop(&mut self) {
        A2c::stop(self).await.expect("stop acme2certifier");
    }
    async fn restart(&mut self) {
        A2c::restart(self).await.expect("restart acme2certifier");
    }
    /// Its SQLite database outlives the process.
    const KEEPS_ACCOUNTS: bool = true;
}

const CONNECTION_PROBLEM: &str = "urn:ietf:params:acme:error:connection";

fn now_unix() -> i64 {
    SystemClock.now_unix()
}

fn unix(s: Option<&str>, what: &str, row: &CertRow) -> i64 {
    let s = s.unwrap_or_else(|| panic!("no {what} in {row:?}"));
    pki::rfc3339_unix(s).unwrap_or_else(|e| panic!("{what} {s:?}: {e:#}"))
}

/// The leaf in the agent's fullchain, when it exists and parses.
fn fullchain_leaf(agent: &Agent) -> Option<LeafInfo> {
    pki::leaf_info_from_file(&agent.fullchain_path()).ok()
}

/// Whether key.pem holds the key of `leaf`.
fn key_matches(agent: &Agent, leaf: &LeafInfo) -> bool {
    std::fs::read_to_string(agent.key_path())
        .ok()
        .and_then(|pem| pki::key_spki_from_pem(&pem).ok())
        .is_some_and(|spki| spki == leaf.spki_der)
}

/// Enrolls and starts a host and waits for its first certificate.
async fn installed_host(ca: &impl RenewalCa, coord: &Coordinator, name: &str) -> (Agent, CertRow) {
    let mut agent = Agent::new(name, ca.http01_port()).expect("agent");
    agent.enroll_with(coord).await.expect("enroll");
    agent.start().expect("start agent");
    let row = agent
        .wait_installed(coord, ISSUE_TIMEOUT)
        .await
        .expect("first certificate installed");
    let root = ca.issuing_root().await;
    check_installed(&agent, &row, &root);
    (agent, row)
}

/// The certificate row is stable on a serial other than `old`: installed by the agent
/// (installed_serial == serial) and that leaf is what the fullchain holds, with its key.
async fn wait_new_installed(
    coord: &Coordinator,
    agent: &Agent,
    cert_id: &str,
    old: &str,
    timeout: Duration,
) -> anyhow::Result<CertRow> {
    certfleet_tests::wait_for(
        &format!("a certificate other than serial {old} installed for {cert_id}"),
        timeout,
        Duration::from_millis(200),
        || async move {
            let row = coord.cert(cert_id).await?;
            let Some(serial) = row.serial.as_deref() else {
                return Ok(None);
            };
            if serial == old
                || row.state != "installed"
                || row.installed_serial.as_deref() != Some(serial)
            {
                anyhow::bail!("not yet: {row:?}");
            }
            let Some(leaf) = fullchain_leaf(agent) else {
                return Ok(None);
            };
            if leaf.serial_hex != normalize_serial(serial) || !key_matches(agent, &leaf) {
                return Ok(None);
            }
            Ok(Some(row))
        },
    )
    .await
}

/// One certificate as seen while sampling.
#[derive(Debug, Clone)]
struct Seen {
    serial: String,
    not_before: i64,
    not_after: i64,
    renew_at: i64,
    /// Unix time (fractional) of the first sample that showed it.
    first_seen: f64,
    /// Unix time of the last sample that showed the previous certificate.
    prev_last_seen: f64,
    /// Checked once: installed, in the fullchain, with the matching key.
    installed_checked: bool,
}

fn now_f64() -> f64 {
    SystemClock.now_unix_f64()
}

/// Pebble only: the scenario needs certificates that live for seconds, and
/// acme2certifier's openssl CA handler only knows whole days (`cert_validity_days` is
/// parsed with `int()`, notAfter = now + N days). Its one other knob,
/// `cert_validity_adjust`, caps notAfter at the issuing CA's notAfter: with a CA expiring
/// in seconds every leaf would end at that same instant (no renewal could ever extend the
/// lifetime) and the chain would stop verifying once it passed.
async fn renews_on_its_own_body() {
    const VALIDITY: u64 = 40;
    const OBSERVE: Duration = Duration::from_secs(70);
    const SLACK: f64 = 2.0;
    let popts = PebbleOptions {
        certificate_validity_secs: Some(VALIDITY),
        ..PebbleOptions::default()
    };
    let (pebble, coord) = pebble_and_coordinator_with(popts, CoordinatorOptions::default()).await;
    let (agent, first) = installed_host(&pebble, &coord, "renewer").await;
    let id = first.cert_id.clone();
    assert_eq!(
        first.renewals,
        Some(0),
        "a first issuance is no renewal: {first:?}"
    );

    let mut seen: Vec<Seen> = Vec::new();
    let mut file_serials: Vec<String> = Vec::new();
    let mut last_seen_at = 0.0_f64;
    let mut samples = 0u32;
    let start = Instant::now();
    let final_row = loop {
        let row = coord.cert(&id).await.expect("certs --json");
        let t = now_f64();
        samples += 1;
        let serial = row.serial.clone().expect("serial once installed");
        if seen.last().map(|s| &s.serial) != Some(&serial) {
            assert!(
                !seen.iter().any(|s| s.serial == serial),
                "serial {serial} came back: {seen:?}"
            );
            let nb = unix(row.not_before.as_deref(), "not_before", &row);
            let na = unix(row.not_after.as_deref(), "not_after", &row);
            let renew_at = unix(row.renew_at.as_deref(), "renew_at", &row);
            assert_eq!(
                row.lifetime_secs,
                Some(na - nb),
                "lifetime_secs must be not_after - not_before: {row:?}"
            );
            eprintln!(
                "[{:>5.1}s] serial {serial}: not_before {nb} not_after {na} renew_at {renew_at} (nb+{}) renewals {:?} reason {:?}",
                start.elapsed().as_secs_f64(),
                renew_at - nb,
                row.renewals,
                row.last_renewal_reason
            );
            seen.push(Seen {
                serial: serial.clone(),
                not_before: nb,
                not_after: na,
                renew_at,
                first_seen: t,
                prev_last_seen: last_seen_at,
                installed_checked: false,
            });
        }
        last_seen_at = t;
        // The counter moves with the serial, in the same write: any issuance between two
        // samples would show as renewals running ahead of the serials seen.
        assert_eq!(
            row.renewals,
            Some(seen.len() as u64 - 1),
            "renewals must count exactly the certificates after the first (serials seen: {:?}): {row:?}",
            seen.iter().map(|s| &s.serial).collect::<Vec<_>>()
        );
        assert_eq!(
            row.at_risk,
            Some(false),
            "no certificate may get at risk: {row:?}"
        );
        if seen.len() > 1 {
            let reason = row.last_renewal_reason.as_deref().unwrap_or_default();
            assert!(
                reason.contains("lifetime"),
                "an unforced renewal of a short-lived certificate is for its lifetime fraction: {row:?}"
            );
        }
        let leaf = fullchain_leaf(&agent);
        if let Some(leaf) = &leaf {
            if file_serials.last() != Some(&leaf.serial_hex) {
                assert!(
                    seen.iter()
                        .any(|s| normalize_serial(&s.serial) == leaf.serial_hex),
                    "the fullchain holds serial {} the coordinator never showed: {seen:?}",
                    leaf.serial_hex
                );
                file_serials.push(leaf.serial_hex.clone());
            }
        }
        // Installed, in the files, key matching: once per certificate.
        let stable = row.state == "installed"
            && row.installed_serial.as_deref() == Some(serial.as_str())
            && leaf
                .as_ref()
                .is_some_and(|l| l.serial_hex == normalize_serial(&serial));
        if stable {
            let cur = seen.last_mut().expect("seen");
            if !cur.installed_checked {
                let leaf = leaf.as_ref().expect("leaf");
                let mut ok = key_matches(&agent, leaf);
                for _ in 0..5 {
                    if ok {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ok = key_matches(&agent, leaf);
                }
                assert!(ok, "key.pem does not match installed serial {serial}");
                cur.installed_checked = true;
            }
        }
        if start.elapsed() >= OBSERVE && stable {
            break row;
        }
        assert!(
            start.elapsed() < OBSERVE + Duration::from_secs(20),
            "the certificate did not settle (installed, in the files) after the observation: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "{samples} samples over {:?}; serials {:?}; fullchain serials {file_serials:?}",
        start.elapsed(),
        seen.iter().map(|s| &s.serial).collect::<Vec<_>>()
    );

    assert!(
        seen.len() >= 3,
        "the certificate should have renewed itself at least twice in {OBSERVE:?} with {VALIDITY} s certificates: {seen:?}"
    );
    assert_eq!(
        final_row.renewals,
        Some(seen.len() as u64 - 1),
        "distinct serials seen == renewals + 1 (no extra issuance): {final_row:?}"
    );
    assert!(
        seen.iter().all(|s| s.installed_checked),
        "every certificate should have been installed with its key: {seen:?}"
    );
    assert_eq!(
        file_serials,
        seen.iter()
            .map(|s| normalize_serial(&s.serial))
            .collect::<Vec<_>>(),
        "the fullchain should have held every certificate, in order"
    );
    for s in &seen {
        let lifetime = s.not_after - s.not_before;
        assert!(
            lifetime > 0 && lifetime <= VALIDITY as i64 + 1,
            "lifetime {lifetime}: {s:?}"
        );
        // Half the lifetime, moved earlier by up to 5% (rounded generously).
        let half = s.not_after - (lifetime + 1) / 2;
        assert!(
            s.renew_at <= half && s.renew_at >= half - (lifetime as f64 * 0.05).ceil() as i64 - 1,
            "renew_at should be at half the lifetime minus up to 5%: {s:?}"
        );
    }
    for pair in seen.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let lifetime = (prev.not_after - prev.not_before) as f64;
        let earliest = prev.not_before as f64 + 0.45 * lifetime;
        // The new certificate was issued after the last sample that still showed the old
        // one, and before the first that showed the new one; its notBefore is its issuance.
        eprintln!(
            "renewal {} -> {}: issued (notBefore) at prev.nb+{}s, seen at prev.nb+{:.1}s, \
             old last seen at prev.nb+{:.1}s; renew_at prev.nb+{}s",
            prev.serial,
            next.serial,
            next.not_before - prev.not_before,
            next.first_seen - prev.not_before as f64,
            next.prev_last_seen - prev.not_before as f64,
            prev.renew_at - prev.not_before
        );
        assert!(
            next.first_seen >= earliest - SLACK && (next.not_before as f64) >= earliest - SLACK,
            "renewed too early: not before 45% of the previous lifetime ({earliest}): {prev:?} -> {next:?}"
        );
        assert!(
            next.first_seen <= prev.renew_at as f64 + 10.0,
            "renewed too late: more than 10 s after renew_at: {prev:?} -> {next:?}"
        );
        assert!(
            next.first_seen < prev.not_after as f64,
            "the previous certificate expired before its successor was there: {prev:?} -> {next:?}"
        );
    }
    assert_eq!(
        agent.reload_count(),
        seen.len(),
        "reload.log should have one line per certificate"
    );
    let log = coord.logs();
    let issued = log.matches("certificate issued").count();
    assert_eq!(
        issued,
        seen.len(),
        "the coordinator log should show one issuance per certificate seen"
    );
}

async fn forced_renewal(ca: impl RenewalCa, coord: Coordinator) {
    let (agent, row0) = installed_host(&ca, &coord, "forced").await;
    let id = row0.cert_id.clone();
    let host_id = agent.id().expect("host id").to_owned();
    let s0 = row0.serial.clone().expect("serial");

    let out = coord.renew(&[&id]).await.expect("certs renew");
    assert!(
        out.status.success(),
        "certs renew {id}: {}",
        stderr_of(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("certs renew {id}: {stdout:?}");
    assert!(
        stdout.contains(&id),
        "certs renew should name the certificate it scheduled: {stdout:?}"
    );
    let t = Instant::now();
    let row1 = wait_new_installed(&coord, &agent, &id, &s0, Duration::from_secs(15))
        .await
        .expect("forced renewal by id installs a new certificate");
    eprintln!("forced renewal by id installed in {:?}", t.elapsed());
    let s1 = row1.serial.clone().expect("serial");
    assert_eq!(row1.renewals, Some(1), "{row1:?}");
    let reason = row1.last_renewal_reason.clone().unwrap_or_default();
    assert!(reason.contains("forced"), "last_renewal_reason: {row1:?}");

    let out = coord
        .renew(&["--host", &host_id])
        .await
        .expect("certs renew --host");
    assert!(
        out.status.success(),
        "certs renew --host {host_id}: {}",
        stderr_of(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&id),
        "certs renew --host should name the host's certificate: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let t = Instant::now();
    let row2 = wait_new_installed(&coord, &agent, &id, &s1, Duration::from_secs(15))
        .await
        .expect("forced renewal by host installs a new certificate");
    eprintln!("forced renewal by host installed in {:?}", t.elapsed());
    let s2 = row2.serial.clone().expect("serial");
    assert_ne!(s2, s0);
    assert_eq!(row2.renewals, Some(2), "{row2:?}");
    let root = ca.issuing_root().await;
    check_installed(&agent, &row2, &root);

    // Unknown (well-formed) id: a clear error, non-zero exit.
    let unknown = "c-nosuchcertificate";
    let out = coord.renew(&[unknown]).await.expect("certs renew unknown");
    let err = stderr_of(&out);
    eprintln!("certs renew {unknown}: exit {} stderr {err:?}", out.status);
    assert!(!out.status.success(), "renewing an unknown id must fail");
    assert!(
        err.contains("no such certificate") && err.contains(unknown),
        "the error should say which certificate does not exist: {err:?}"
    );
    // Malformed id.
    let out = coord.renew(&["bogus!"]).await.expect("certs renew bogus");
    let err = stderr_of(&out);
    eprintln!("certs renew bogus!: exit {} stderr {err:?}", out.status);
    assert!(!out.status.success(), "renewing a malformed id must fail");
    assert!(
        err.contains("bogus!"),
        "the error should name the bad id: {err:?}"
    );
    // Unknown host.
    let out = coord
        .renew(&["--host", "h-nosuchhost"])
        .await
        .expect("certs renew --host unknown");
    let err = stderr_of(&out);
    eprintln!(
        "certs renew --host h-nosuchhost: exit {} stderr {err:?}",
        out.status
    );
    assert!(
        !out.status.success(),
        "renewing for an unknown host must fail"
    );

    // None of the failed commands renewed anything.
    tokio::time::sleep(QUIET_PERIOD).await;
    let row = coord.cert(&id).await.expect("row");
    assert_eq!(row.serial.as_deref(), Some(s2.as_str()), "{row:?}");
    assert_eq!(row.renewals, Some(2), "{row:?}");
    assert_eq!(agent.reload_count(), 3, "one reload per certificate");
}

/// Kills the coordinator while `agent`'s first order is in flight (the server must make
/// validation slow enough for that) and checks the restarted coordinator resumes the order.
async fn kill_during_order_resumes(ca: &impl RenewalCa, mut coord: Coordinator, mut agent: Agent) {
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start agent");
    let host_id = agent.id().expect("id").to_owned();

    let ordering = certfleet_tests::wait_for(
        "the certificate in state ordering with an order_url",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let (coord, host_id) = (&coord, &host_id);
            async move {
                Ok(coord.certs().await?.into_iter().find(|c| {
                    &c.host_id == host_id && c.state == "ordering" && c.order_url.is_some()
                }))
            }
        },
    )
    .await
    .expect("ordering");
    let order_url = ordering.order_url.clone().expect("order_url");
    eprintln!("killing the coordinator while ordering {order_url}");
    let t = Instant::now();
    coord
        .restart(RestartMode::Kill)
        .await
        .expect("kill -9 and restart");
    let row = agent
        .wait_installed(&coord, Duration::from_secs(60))
        .await
        .expect("installed after the restart");
    eprintln!("installed {:?} after the restart: {row:?}", t.elapsed());
    assert_eq!(
        row.order_url.as_deref(),
        Some(order_url.as_str()),
        "the interrupted order should have been resumed, not replaced"
    );
    let root = ca.issuing_root().await;
    check_installed(&agent, &row, &root);
    assert_eq!(row.renewals, Some(0), "{row:?}");
    let log2 = coord.run_log(2);
    assert!(
        log2.contains("resuming order"),
        "the second run should say it resumes the order; log:\n{log2}"
    );
    assert!(
        !log2.contains("order created"),
        "the second run must not create another order; log:\n{log2}"
    );
    assert_eq!(agent.reload_count(), 1, "one certificate, one reload");
}

/// A failure written by the engine: (updated, next_action_unix, last_error).
fn failure_of(row: &CertRow) -> Option<(i64, i64, String)> {
    let err = row.last_error.clone()?;
    let updated = pki::rfc3339_unix(&row.updated).ok()?;
    let next = row.next_action_unix?;
    // While a task runs the row carries a 15 min lease as next action; skip that.
    (row.next_reason.as_deref() == Some("retry") && next - updated < 600)
        .then_some((updated, next, err))
}

/// Coordinator options for [`ca_outage_backoff_then_recovery`].
fn outage_coordinator_options() -> CoordinatorOptions {
    CoordinatorOptions {
        retry_base_secs: Some(2),
        ..CoordinatorOptions::default()
    }
}

async fn ca_outage_backoff_then_recovery<S: RenewalCa>(mut ca: S, coord: Coordinator) {
    let (agent, row0) = installed_host(&ca, &coord, "outage").await;
    let id = row0.cert_id.clone();
    let s0 = row0.serial.clone().expect("serial");

    ca.stop().await;
    let log_mark = coord.run_log(1).len();
    let out = coord.renew(&[&id]).await.expect("certs renew");
    assert!(out.status.success(), "certs renew: {}", stderr_of(&out));

    // Two consecutive failures, each with its retry delay.
    let mut failures: Vec<(i64, i64, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while failures.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "expected two failed attempts while the CA is down; got {failures:?}"
        );
        let row = coord.cert(&id).await.expect("row");
        if let Some(f) = failure_of(&row) {
            if failures.last().map(|l| (l.0, l.1)) != Some((f.0, f.1)) {
                eprintln!(
                    "failure: updated {} next_action +{}s state {} last_error {:?}",
                    f.0,
                    f.1 - f.0,
                    row.state,
                    f.2
                );
                failures.push(f);
            }
        }
        assert_eq!(row.serial.as_deref(), Some(s0.as_str()), "{row:?}");
        assert_eq!(
            row.state, "installed",
            "the installed certificate stays installed during the outage: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ca_name = format!("CA {}", ca.issuer_name());
    for (_, _, err) in &failures {
        assert!(
            err.contains(&ca_name) && (err.contains("onnect") || err.contains("refused")),
            "last_error should say the CA is unreachable: {err:?}"
        );
    }
    let gap1 = failures[0].1 - failures[0].0;
    let gap2 = failures[1].1 - failures[1].0;
    assert!(gap1 >= 1, "a failure is not retried at once: {failures:?}");
    assert!(
        gap2 > gap1,
        "the retry delay should grow: {gap1}s then {gap2}s ({failures:?})"
    );

    let t = Instant::now();
    ca.restart().await;
    let row = wait_new_installed(&coord, &agent, &id, &s0, Duration::from_secs(60))
        .await
        .expect("a new certificate after the CA came back");
    eprintln!(
        "recovered {:?} after {} restarted (retry was due {}s after the second failure)",
        t.elapsed(),
        ca.issuer_name(),
        gap2
    );
    let root = ca.issuing_root().await;
    check_installed(&agent, &row, &root);
    assert_eq!(row.last_error, None, "a success clears last_error: {row:?}");
    let log = coord.run_log(1);
    let after = &log[log_mark.min(log.len())..];
    if S::KEEPS_ACCOUNTS {
        assert!(
            !after.contains("ACME account created"),
            "{} kept the account across its restart: no new one should have been created; log since the outage:\n{after}",
            ca.issuer_name()
        );
    } else {
        assert!(
            after.contains("ACME account created"),
            "a new ACME account should have been created after {} forgot the old one; log since the outage:\n{after}",
            ca.issuer_name()
        );
    }
}

/// Pebble only: the storm comes from pebble's `PEBBLE_WFE_NONCEREJECT` (reject that
/// percentage of valid nonces). acme2certifier has no equivalent — its `[Nonce]` section
/// only has `nonce_check_disable`, and it rejects a nonce only when it is unknown or
/// already used, which a correct client never sends.
async fn bad_nonce_is_survived_body() {
    let mut popts = PebbleOptions::default();
    popts
        .env
        .insert("PEBBLE_WFE_NONCEREJECT".into(), "60".into());
    let (pebble, coord) = pebble_and_coordinator_with(popts, CoordinatorOptions::default()).await;
    let root = pebble.issuing_root_der().await.expect("root");
    let mut agents = Vec::new();
    for name in ["nonce-a", "nonce-b"] {
        let mut a = Agent::new(name, pebble.http_port()).expect("agent");
        a.enroll_with(&coord).await.expect("enroll");
        a.start().expect("start");
        agents.push(a);
    }
    let t = Instant::now();
    for a in &mut agents {
        let row = a
            .wait_installed(&coord, Duration::from_secs(60))
            .await
            .expect("installed despite badNonce");
        check_installed(a, &row, &root);
    }
    let log = coord.logs();
    let bad_nonce_lines: Vec<&str> = log.lines().filter(|l| l.contains("badNonce")).collect();
    eprintln!(
        "both installed in {:?}; {} log lines mention badNonce{}",
        t.elapsed(),
        bad_nonce_lines.len(),
        bad_nonce_lines
            .first()
            .map(|l| format!(", e.g. {l}"))
            .unwrap_or_default()
    );
}

/// Pebble only as written: pebble marks the challenge invalid with a
/// `connection` problem per identifier, and each such order spends the failed-validations
/// budget. acme2certifier never fails these orders (they stay pending); see
/// [`unreachable_responder_is_given_up_on_and_retried`].
async fn unreachable_responder_respects_budget_body() {
    const LIMIT: &str = "failed_validations_per_identifier";
    let copts = CoordinatorOptions {
        retry_base_secs: Some(1),
        rate_limits: Some("letsencrypt".into()),
        ..CoordinatorOptions::default()
    };
    let (pebble, coord) = pebble_and_coordinator_with(PebbleOptions::default(), copts).await;
    let wrong_port = loop {
        let p = net::free_port().expect("free port");
        if p != pebble.http_port() {
            break p;
        }
    };
    let mut agent =
        Agent::new_with_port("unreachable", pebble.http_port(), wrong_port).expect("agent");
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    let host_id = agent.id().expect("id").to_owned();
    let ips = agent.ips();

    // Each failed order is one failed validation per identifier. The engine backs off
    // tenfold per failure (1 s, ~10 s, ~100 s with retry_base_secs = 1), so after a failure
    // whose retry is more than a few seconds away the operator forces the next attempt: a
    // forced renewal must still respect the budget.
    let mut orders: Vec<String> = Vec::new();
    let mut forced = 0u32;
    // A failure is told apart by its message, which names the order's own challenge tokens
    // (two can fall in one second, and the delay to the retry can be anything from 1 s to
    // hours here). While the next attempt runs, the row keeps the previous message.
    let mut last_failure: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    let refusal = loop {
        assert!(
            Instant::now() < deadline,
            "no budget refusal after {} failed orders: {orders:?}",
            orders.len()
        );
        let row = coord
            .certs()
            .await
            .expect("certs")
            .into_iter()
            .find(|c| c.host_id == host_id);
        let Some(row) = row else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if let Some(url) = &row.order_url {
            if orders.last() != Some(url) {
                assert!(!orders.contains(url), "order {url} came back: {orders:?}");
                orders.push(url.clone());
            }
        }
        let err = row.last_error.clone().unwrap_or_default();
        if err.contains(LIMIT) {
            break row;
        }
        let failed = row.next_reason.as_deref() == Some("retry") && !err.is_empty();
        if let (true, Some(next)) = (failed, row.next_action_unix) {
            let updated = pki::rfc3339_unix(&row.updated).expect("updated");
            if last_failure.as_ref() != Some(&err) {
                last_failure = Some(err.clone());
                eprintln!(
                    "failed order #{} ({}): next_action +{}s: {err}",
                    orders.len(),
                    row.order_url.as_deref().unwrap_or("-"),
                    next - updated
                );
                assert!(
                    err.contains("validation failed"),
                    "before the budget is spent, failures are validation failures: {err:?}"
                );
                for ip in &ips {
                    let parts = error_parts_for(&err, ip);
                    assert!(
                        parts.iter().any(|p| p.contains(CONNECTION_PROBLEM)),
                        "{ip}: the CA's {CONNECTION_PROBLEM} should be reported: {err:?}"
                    );
                }
                if next - now_unix() > 3 {
                    let out = coord.renew(&[&row.cert_id]).await.expect("certs renew");
                    assert!(out.status.success(), "certs renew: {}", stderr_of(&out));
                    forced += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let err = refusal.last_error.clone().expect("last_error");
    let now = now_unix();
    eprintln!(
        "refused after {} orders ({forced} forced): next_action {:?} (+{}s) reason {:?}: {err}",
        orders.len(),
        refusal.next_action,
        refusal.next_action_unix.unwrap_or(0) - now,
        refusal.next_reason
    );
    assert_eq!(
        orders.len(),
        5,
        "exactly 5 failed orders (5 failed validations per identifier) before the refusal: {orders:?}"
    );
    assert!(
        err.contains("frees"),
        "the refusal should say when the budget frees: {err:?}"
    );
    let next = refusal.next_action_unix.expect("next_action_unix");
    assert!(
        next > now + 50 * 60,
        "the next attempt should wait for the budget (~1 h), is +{}s: {refusal:?}",
        next - now
    );
    assert_eq!(
        refusal.order_url.as_ref(),
        orders.last(),
        "no order was made for the refused attempt"
    );

    // Forcing does not spend the budget either; the order count stays put.
    let out = coord.renew(&[&refusal.cert_id]).await.expect("certs renew");
    assert!(out.status.success(), "certs renew: {}", stderr_of(&out));
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let row = coord.cert(&refusal.cert_id).await.expect("row");
        assert_eq!(
            row.order_url.as_ref(),
            orders.last(),
            "no new order may be created once the budget is spent: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let row = coord.cert(&refusal.cert_id).await.expect("row");
    let err = row.last_error.clone().unwrap_or_default();
    assert!(err.contains(LIMIT), "still refused after forcing: {row:?}");
    assert!(
        row.next_action_unix.unwrap_or(0) > now_unix() + 50 * 60,
        "still ~1 h away after forcing: {row:?}"
    );
    assert!(!agent.fullchain_path().exists(), "nothing installed");
    let distinct: BTreeSet<&String> = orders.iter().collect();
    assert_eq!(distinct.len(), orders.len());
}

/// `validation_timeout_secs` for [`unreachable_responder_is_given_up_on_and_retried`].
const STUCK_VALIDATION_TIMEOUT_SECS: u64 = 5;

/// For a CA that leaves an order *pending* when the HTTP-01 responder is unreachable
/// (acme2certifier: its validator gets "connection refused", the challenge never turns
/// invalid): the coordinator gives the order up after `validation_timeout_secs`, records
/// the failure (state `failed`, `last_error`, a `retry` with a growing delay) and the next
/// attempt is a new order — the stuck one is never resumed.
///
/// The failed-validations budget does not apply here, and the test pins that down: the
/// CA reported no failed validation (a pending order is none, as at Let's Encrypt, whose
/// limit counts invalid authorizations) and the timeout names no identifier, so nothing is
/// counted against `failed_validations_per_identifier`. Forced attempts go past the
/// budget pebble's variant spends after 5 failed orders; what bounds the retries is the
/// backoff.
async fn unreachable_responder_is_given_up_on_and_retried(ca: &impl RenewalCa, coord: Coordinator) {
    const LIMIT: &str = "failed_validations_per_identifier";
    /// One more failed order than pebble's variant sees before the refusal.
    const ORDERS: usize = 6;
    let timeout = STUCK_VALIDATION_TIMEOUT_SECS as i64;
    let wrong_port = other_free_port(ca.http01_port());
    let mut agent =
        Agent::new_with_port("unreachable", ca.http01_port(), wrong_port).expect("agent");
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    let host_id = agent.id().expect("id").to_owned();

    let mut orders: Vec<String> = Vec::new();
    // Per failure: (order_url, updated, next_action_unix, whether the retry was forced).
    let mut failures: Vec<(String, i64, i64, bool)> = Vec::new();
    // Order created (first seen ordering) per order, unix seconds.
    let mut ordering_since: Vec<i64> = Vec::new();
    let mut last_state = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while failures.len() < ORDERS {
        assert!(
            Instant::now() < deadline,
            "expected {ORDERS} given-up orders; orders {orders:?}, failures {failures:?}"
        );
        let row = coord
            .certs()
            .await
            .expect("certs")
            .into_iter()
            .find(|c| c.host_id == host_id);
        let Some(row) = row else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let err = row.last_error.clone().unwrap_or_default();
        assert!(
            !err.contains(LIMIT),
            "a validation that timed out spent no failed-validations budget, yet after {} \
             orders the coordinator refuses: {row:?}",
            orders.len()
        );
        assert!(
            row.serial.is_none() && row.state != "installed",
            "nothing can be issued: {row:?}"
        );
        if row.state == "ordering" {
            if let Some(url) = &row.order_url {
                if orders.last() != Some(url) {
                    assert!(
                        !orders.contains(url),
                        "given-up order {url} was resumed: {orders:?}"
                    );
                    orders.push(url.clone());
                    ordering_since.push(pki::rfc3339_unix(&row.updated).expect("updated"));
                }
            }
        }
        if row.state == "failed" && last_state != "failed" {
            let url = row.order_url.clone().expect("the given-up order's url");
            assert_eq!(
                orders.last(),
                Some(&url),
                "the failure is that of the order in flight: {row:?}"
            );
            assert!(
                failures.last().map(|f| &f.0) != Some(&url),
                "one failure per order: {failures:?} {row:?}"
            );
            assert_eq!(row.next_reason.as_deref(), Some("retry"), "{row:?}");
            assert!(
                err.starts_with("validation failed")
                    && err.contains(&format!(
                        "did not finish validating in time (about {timeout} s)"
                    )),
                "last_error should say the CA did not finish validating in time: {row:?}"
            );
            let updated = pki::rfc3339_unix(&row.updated).expect("updated");
            let next = row.next_action_unix.expect("next_action_unix");
            let created = *ordering_since.last().expect("ordering seen");
            // instant-acme's poll stops when its next (growing) delay would end past the
            // timeout, so the order is given up a little before it; whole seconds too.
            assert!(
                updated - created >= timeout - 2,
                "given up after {}s, well before the {timeout} s validation timeout: {row:?}",
                updated - created
            );
            assert!(next > updated, "a failure is not retried at once: {row:?}");
            eprintln!(
                "order #{} {url} given up {}s after it was created; retry +{}s: {err}",
                orders.len(),
                updated - created,
                next - updated
            );
            // Retry delays grow tenfold from 1 s; past a few seconds the operator forces
            // the next attempt (which the budget, had it been spent, would refuse).
            // (Not after the last one: its retry would be one order too many.)
            let forced = next - now_unix() > 3 && failures.len() + 1 < ORDERS;
            if forced {
                let out = coord.renew(&[&row.cert_id]).await.expect("certs renew");
                assert!(out.status.success(), "certs renew: {}", stderr_of(&out));
            }
            failures.push((url, updated, next, forced));
        }
        last_state = row.state.clone();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{} orders given up: {failures:?}", failures.len());
    assert_eq!(orders.len(), ORDERS, "one order per attempt: {orders:?}");
    let distinct: BTreeSet<&String> = orders.iter().collect();
    assert_eq!(distinct.len(), orders.len());
    // Unforced retries wait longer after each failure.
    let unforced: Vec<i64> = failures
        .iter()
        .take_while(|f| !f.3)
        .map(|f| f.2 - f.1)
        .collect();
    let first_forced = failures.iter().find(|f| f.3).map(|f| f.2 - f.1);
    eprintln!("retry delays before forcing: {unforced:?}, then {first_forced:?}");
    let mut delays = unforced.clone();
    delays.extend(first_forced);
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]) && delays.len() >= 2,
        "the retry delay should grow from one failure to the next: {delays:?}"
    );
    assert!(!agent.fullchain_path().exists(), "nothing installed");
    let log = coord.logs();
    assert_eq!(
        log.matches("order created").count(),
        ORDERS,
        "one order created per attempt, none resumed"
    );
    assert!(
        !log.contains("resuming order"),
        "a given-up order is not resumed"
    );
}

/// A TCP forwarder on port 80 of a host's addresses that holds every connection for
/// `delay` before passing it to the agent's real HTTP-01 port: a responder that is slow to
/// answer, so a validation stays in flight for that long. Stops when dropped.
struct SlowResponder {
    connections: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SlowResponder {
    async fn start(ips: &[IpAddr], port: u16, agent_port: u16, delay: Duration) -> Self {
        let connections = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for ip in ips {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(*ip, port))
                .await
                .unwrap_or_else(|e| panic!("binding {ip} port {port}: {e}"));
            let (ip, connections) = (*ip, connections.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(SocketAddr::new(ip, agent_port)).await
                        else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                }
            }));
        }
        Self { connections, tasks }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for SlowResponder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A port other than `avoid` that is free now.
fn other_free_port(avoid: u16) -> u16 {
    loop {
        let p = net::free_port().expect("free port");
        if p != avoid {
            break p;
        }
    }
}

mod pebble {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renews_on_its_own() {
        renews_on_its_own_body().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forced_renewal() {
        let (pebble, coord) =
            pebble_and_coordinator_with(PebbleOptions::default(), CoordinatorOptions::default())
                .await;
        super::forced_renewal(pebble, coord).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_during_order_resumes() {
        let mut popts = PebbleOptions::default();
        // Pebble then sleeps up to 15 s before each validation: a kill lands mid-order.
        popts.env.remove("PEBBLE_VA_NOSLEEP");
        let copts = CoordinatorOptions {
            validation_timeout_secs: Some(60),
            ..CoordinatorOptions::default()
        };
        let (pebble, coord) = pebble_and_coordinator_with(popts, copts).await;
        let agent = Agent::new("resumer", pebble.http_port()).expect("agent");
        super::kill_during_order_resumes(&pebble, coord, agent).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ca_outage_backoff_then_recovery() {
        let (pebble, coord) =
            pebble_and_coordinator_with(PebbleOptions::default(), outage_coordinator_options())
                .await;
        super::ca_outage_backoff_then_recovery(pebble, coord).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_nonce_is_survived() {
        bad_nonce_is_survived_body().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_responder_respects_budget() {
        unreachable_responder_respects_budget_body().await;
    }
}

mod a2c {
    use super::*;
    use crate::support::a2c_and_coordinator_with;
    use certfleet_tests::acme2certifier::A2cOptions;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forced_renewal() {
        let (a2c, coord) =
            a2c_and_coordinator_with(A2cOptions::default(), CoordinatorOptions::default()).await;
        super::forced_renewal(a2c, coord).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ca_outage_backoff_then_recovery() {
        let (a2c, coord) =
            a2c_and_coordinator_with(A2cOptions::default(), outage_coordinator_options()).await;
        super::ca_outage_backoff_then_recovery(a2c, coord).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_during_order_resumes() {
        let copts = CoordinatorOptions {
            validation_timeout_secs: Some(60),
            ..CoordinatorOptions::default()
        };
        let (a2c, coord) = a2c_and_coordinator_with(A2cOptions::default(), copts).await;
        let agent_port = other_free_port(A2c::HTTP01_PORT);
        let agent = Agent::new_with_port("resumer", A2c::HTTP01_PORT, agent_port).expect("agent");
        let slow = SlowResponder::start(
            &agent.ips(),
            A2c::HTTP01_PORT,
            agent_port,
            Duration::from_secs(5),
        )
        .await;
        super::kill_during_order_resumes(&a2c, coord, agent).await;
        eprintln!("the slow responder saw {} connections", slow.connections());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_responder_is_given_up_on_and_retried() {
        let copts = CoordinatorOptions {
            validation_timeout_secs: Some(STUCK_VALIDATION_TIMEOUT_SECS),
            retry_base_secs: Some(1),
            rate_limits: Some("letsencrypt".into()),
            ..CoordinatorOptions::default()
        };
        let (a2c, coord) = a2c_and_coordinator_with(A2cOptions::default(), copts).await;
        super::unreachable_responder_is_given_up_on_and_retried(&a2c, coord).await;
    }
}
