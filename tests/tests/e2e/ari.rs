//! Against a second, independent ACME server — acme2certifier (`certfleet_tests::acme2certifier`)
//! — which has what pebble lacks: profiles (`meta.profiles`) and ARI (`renewalInfo`).
//!
//! Each test has its own acme2certifier (own local CA with a `classic` and a `shortlived`
//! handler, own listener CA and port), its own coordinator and agents. acme2certifier
//! validates HTTP-01 on port 80 only, so the agents serve it on port 80 of their own
//! `127.X.Y.Z` / `fdcf:…` addresses.

use std::time::{Duration, Instant};

use certfleet_shared::clock::{Clock as _, SystemClock};
use certfleet_tests::acme2certifier::{A2c, A2cOptions};
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::pki::{self, normalize_serial};
use certfleet_tests::{require_root, Agent, CertRow, Coordinator, RestartMode};
use serde_json::Value;

use crate::support::{check_installed, ISSUE_TIMEOUT, QUIET_PERIOD};

const DAY: i64 = 86_400;

/// acme2certifier + a coordinator whose only issuer is it, with `extra_config` (e.g.
/// `[[policy]]` tables) appended. Prints how long acme2certifier took to come up.
async fn a2c_and_coordinator(test: &str, extra_config: &str) -> (A2c, Coordinator) {
    require_root().expect("root");
    certfleet_tests::install_crypto_provider();
    let a2c = A2c::start(A2cOptions::default())
        .await
        .expect("start acme2certifier");
    eprintln!(
        "[{test}] acme2certifier {} up in {:?}{}",
        a2c.directory_url(),
        a2c.startup(),
        a2c.venv_created_in()
            .map(|d| format!(" (venv created in {d:?})"))
            .unwrap_or_default()
    );
    let coord = Coordinator::start_with(
        &a2c,
        CoordinatorOptions {
            extra_config: extra_config.to_owned(),
            ..CoordinatorOptions::default()
        },
    )
    .await
    .expect("start coordinator");
    (a2c, coord)
}

/// A host that answers HTTP-01 on port 80 (where acme2certifier validates), enrolled with
/// `labels` and running.
async fn start_agent(name: &str, coord: &Coordinator, labels: &[(&str, &str)]) -> Agent {
    let mut agent = Agent::new(name, A2c::HTTP01_PORT).expect("agent");
    agent
        .enroll_with_labels(coord, labels)
        .await
        .expect("enroll");
    agent.start().expect("start agent");
    agent
}

/// This host's row in `certs --json`, raw (for the fields `CertRow` does not carry).
async fn cert_json(coord: &Coordinator, cert_id: &str) -> Value {
    let all = coord.certs_json().await.expect("certs --json");
    all.as_array()
        .expect("certs --json is an array")
        .iter()
        .find(|c| c["cert_id"] == cert_id)
        .unwrap_or_else(|| panic!("certificate {cert_id} not in certs --json: {all}"))
        .clone()
}

fn unix_now() -> i64 {
    SystemClock.now_unix()
}

fn int(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} is not an integer in {v}"))
}

/// Installed, chain to acme2certifier's local CA, and the row's lifetime is `days` days.
fn check_issued(agent: &Agent, a2c: &A2c, row: &CertRow, days: i64) {
    check_installed(agent, row, a2c.issuing_ca_der());
    let leaf = pki::leaf_info_from_file(&agent.cert_path()).expect("leaf");
    let leaf_lifetime = leaf.not_after_unix - leaf.not_before_unix;
    let lifetime = row
        .lifetime_secs
        .unwrap_or_else(|| panic!("{}: no lifetime_secs in {row:?}", agent.name()));
    assert_eq!(
        lifetime,
        leaf_lifetime,
        "{}: lifetime_secs != the leaf's notAfter - notBefore",
        agent.name()
    );
    // acme2certifier's openssl handler: notBefore = now, notAfter = now + N days (allow
    // a few minutes either way for backdating).
    assert!(
        (lifetime - days * DAY).abs() <= 600,
        "{}: lifetime {lifetime} s ({:.2} days), want {days} days",
        agent.name(),
        lifetime as f64 / DAY as f64
    );
}

/// How long after issuance (or a restart) the ARI window may take to show.
const ARI_WAIT: Duration = Duration::from_secs(20);

/// Waits until the row of `cert_id` has an `ari_window`; returns the row, or the last row
/// seen when `timeout` passes without one.
async fn wait_ari_window(
    coord: &Coordinator,
    cert_id: &str,
    timeout: Duration,
) -> Result<Value, Value> {
    let start = Instant::now();
    loop {
        // A CLI call may fail while the coordinator restarts.
        let row = match coord.certs_json().await {
            Ok(all) => all
                .as_array()
                .and_then(|a| a.iter().find(|c| c["cert_id"] == cert_id).cloned())
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if !row.is_null() && !row["ari_window"].is_null() {
            return Ok(row);
        }
        if start.elapsed() >= timeout {
            return Err(row);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PROFILE_POLICIES: &str = r#"
[[policy]]
name = "short"
match_labels = { role = "short" }
profile = "shortlived"

[[policy]]
name = "classic"
match_labels = { role = "classic" }
profile = "classic"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles() {
    let t0 = Instant::now();
    let (a2c, coord) = a2c_and_coordinator("profiles", PROFILE_POLICIES).await;
    let opts = a2c.options().clone();
    let mut short = start_agent("short", &coord, &[("role", "short")]).await;
    let mut classic = start_agent("classic", &coord, &[("role", "classic")]).await;

    for (agent, profile, policy, days) in [
        (
            &mut short,
            "shortlived",
            "short",
            i64::from(opts.shortlived_validity_days),
        ),
        (
            &mut classic,
            "classic",
            "classic",
            i64::from(opts.classic_validity_days),
        ),
    ] {
        let row = agent
            .wait_installed(&coord, ISSUE_TIMEOUT)
            .await
            .expect("certificate installed");
        check_issued(agent, &a2c, &row, days);
        assert_eq!(
            row.profile.as_deref(),
            Some(profile),
            "{}: certs --json profile",
            agent.name()
        );
        let raw = cert_json(&coord, &row.cert_id).await;
        assert_eq!(
            raw["required_profile"],
            profile,
            "{}: required_profile in {raw:#}",
            agent.name()
        );
        assert_eq!(raw["policy"], policy, "{}: policy in {raw:#}", agent.name());
    }
    eprintln!("[profiles] done in {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_profile_is_an_error_state() {
    let t0 = Instant::now();
    let policy = r#"
[[policy]]
name = "everyone"
profile = "nope"
"#;
    let (a2c, coord) = a2c_and_coordinator("unknown_profile", policy).await;
    let mut agent = start_agent("nope", &coord, &[]).await;

    let row = agent
        .wait_cert_state(&coord, "failed", ISSUE_TIMEOUT)
        .await
        .expect("the certificate should fail: the CA does not offer the profile");
    let err = row
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("failed row without last_error: {row:?}"));
    eprintln!("[unknown_profile] last_error: {err}");
    assert!(
        err.contains(r#"does not offer profile "nope""#),
        "last_error should say the CA does not offer profile \"nope\": {err:?}"
    );
    for offered in ["classic", "shortlived"] {
        assert!(
            err.contains(offered),
            "last_error should list the offered profile {offered:?}: {err:?}"
        );
    }
    let raw = cert_json(&coord, &row.cert_id).await;
    eprintln!(
        "[unknown_profile] next_action {} ({}), next_reason {}",
        raw["next_action"], raw["next_action_unix"], raw["next_reason"]
    );
    assert_eq!(raw["required_profile"], "nope", "{raw:#}");
    assert!(raw["serial"].is_null(), "nothing was issued: {raw:#}");
    let next = int(&raw, "next_action_unix");
    let now = unix_now();
    assert!(
        next - now >= 3600,
        "a configuration error must not be retried hot: next_action is {} s away: {raw:#}",
        next - now
    );

    // Nothing gets installed, and the coordinator does not keep asking the CA.
    let neworders = |logs: &str| logs.matches("/acme/neworders").count();
    let before = neworders(&a2c.logs());
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(
        !agent.fullchain_path().exists(),
        "no certificate may be installed ({})",
        agent.fullchain_path().display()
    );
    assert_eq!(agent.reload_count(), 0, "no reload");
    assert_eq!(
        neworders(&a2c.logs()),
        before,
        "the coordinator kept ordering from the CA after the profile error"
    );
    assert_eq!(
        before, 0,
        "no order should reach the CA for a profile it does not offer"
    );
    let again = coord.cert(&row.cert_id).await.expect("cert row");
    assert_eq!(again.state, "failed", "still failed: {again:?}");
    eprintln!("[unknown_profile] done in {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_is_scheduled_inside_the_ari_window() {
    let t0 = Instant::now();
    let (a2c, mut coord) = a2c_and_coordinator("ari_window", "").await;
    let pctg = i64::from(a2c.options().renewal_threshold_pctg);
    let mut agent = start_agent("windowed", &coord, &[]).await;
    let row = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("certificate installed");
    // No policy: the issuer's default ip_profile, "shortlived".
    check_issued(
        &agent,
        &a2c,
        &row,
        i64::from(a2c.options().shortlived_validity_days),
    );
    assert_eq!(row.profile.as_deref(), Some("shortlived"), "{row:?}");

    // Right after issuance the certificate's renewal must already be planned inside the
    // CA's ARI window (ARCHITECTURE.md: "its next action is the renewal time: inside the
    // CA's ARI window when the CA has ARI").
    let first_look = cert_json(&coord, &row.cert_id).await;
    let missing_after_issuance = match wait_ari_window(&coord, &row.cert_id, ARI_WAIT).await {
        Ok(_) => None,
        Err(raw) => {
            eprintln!(
                "[ari_window] BUG: no ari_window {ARI_WAIT:?} after issuance; renew_at {} next_action {} ({})",
                raw["renew_at"], raw["next_action"], raw["next_reason"]
            );
            // Check the rest of the ARI scheduling anyway: a restart makes the
            // coordinator look at the certificate again (the agent says Hello).
            coord
                .restart(RestartMode::Term)
                .await
                .expect("restart coordinator");
            Some(raw)
        }
    };
    let raw = wait_ari_window(&coord, &row.cert_id, ARI_WAIT)
        .await
        .unwrap_or_else(|raw| panic!("no ari_window from a CA with renewalInfo: {raw:#}"));
    eprintln!(
        "[ari_window] right after issuance: ari_window {} renew_at {} next_action {} ({})",
        first_look["ari_window"],
        first_look["renew_at"],
        first_look["next_action"],
        first_look["next_reason"]
    );
    eprintln!(
        "[ari_window] with the window: ari_window {} renew_at {} next_action {} ({})",
        raw["ari_window"], raw["renew_at"], raw["next_action"], raw["next_reason"]
    );
    let leaf = pki::leaf_info_from_file(&agent.cert_path()).expect("leaf");
    let lifetime = leaf.not_after_unix - leaf.not_before_unix;
    let start = int(&raw["ari_window"], "start_unix");
    let end = int(&raw["ari_window"], "end_unix");
    // acme2certifier: the window runs from `renewalthreshold_pctg` of the lifetime to the
    // expiry (give or take the minutes between its own timestamps and the leaf's).
    let want_start = leaf.not_before_unix + lifetime * pctg / 100;
    assert!(
        (start - want_start).abs() <= 900,
        "ARI window start {start} should be {pctg}% into the lifetime ({want_start}): {raw:#}"
    );
    assert!(
        (end - leaf.not_after_unix).abs() <= 900,
        "ARI window end {end} should be the expiry {}: {raw:#}",
        leaf.not_after_unix
    );
    let renew_at = pki::rfc3339_unix(raw["renew_at"].as_str().expect("renew_at set"))
        .expect("renew_at is RFC 3339");
    assert!(
        start <= renew_at && renew_at < end,
        "renew_at {renew_at} must lie inside the ARI window [{start}, {end}): {raw:#}"
    );
    let next = int(&raw, "next_action_unix");
    assert!(
        next <= renew_at,
        "next_action {next} must not be after renew_at {renew_at}: {raw:#}"
    );
    assert!(
        next > unix_now(),
        "nothing is due right after issuance: {raw:#}"
    );
    assert_eq!(raw["state"], "installed", "{raw:#}");
    assert_eq!(raw["renewals"], 0, "{raw:#}");
    eprintln!("[ari_window] done in {:?}", t0.elapsed());
    if let Some(raw) = missing_after_issuance {
        panic!(
            "the coordinator did not fetch the ARI window after issuance (it did after a \
             restart, and scheduled correctly then): {ARI_WAIT:?} after issuance the row \
             had no ari_window and renew_at outside the later window: {raw:#}"
        );
    }
}

/// Forces a renewal of the host's certificate and waits until a new serial is installed.
async fn force_renewal(coord: &Coordinator, agent: &mut Agent, row: &CertRow) -> CertRow {
    let old_serial = normalize_serial(row.serial.as_deref().expect("serial"));
    let out = coord.renew(&[&row.cert_id]).await.expect("certs renew");
    assert!(
        out.status.success(),
        "certs renew {} failed: {}",
        row.cert_id,
        certfleet_tests::process::describe_output(&out)
    );
    let start = Instant::now();
    loop {
        let now = coord.cert(&row.cert_id).await.expect("cert row");
        let serial = now.serial.as_deref().map(normalize_serial);
        if now.state == "installed"
            && serial.as_deref().is_some_and(|s| s != old_serial)
            && now.installed_serial.as_deref().map(normalize_serial) == serial
        {
            let leaf = pki::leaf_info_from_file(&agent.cert_path()).expect("leaf");
            if leaf.serial_hex == serial.clone().unwrap_or_default() {
                return now;
            }
        }
        if let Some(c) = agent.child() {
            assert!(c.is_running(), "agent {} exited", agent.name());
        }
        assert!(
            start.elapsed() < ISSUE_TIMEOUT,
            "no renewed certificate installed {ISSUE_TIMEOUT:?} after `certs renew`: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_replaces_does_not_stop_renewal() {
    let t0 = Instant::now();
    let (a2c, coord) = a2c_and_coordinator("ignored_replaces", "").await;
    let mut agent = start_agent("replacer", &coord, &[]).await;
    let first = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("certificate installed");
    assert!(
        !coord.logs().contains("ordering again without it"),
        "no retry without `replaces` before any renewal"
    );

    let renewed = force_renewal(&coord, &mut agent, &first).await;
    check_installed(&agent, &renewed, a2c.issuing_ca_der());
    assert_eq!(renewed.renewals, Some(1), "{renewed:?}");
    assert!(
        renewed
            .last_renewal_reason
            .as_deref()
            .is_some_and(|r| r.contains("forced")),
        "last_renewal_reason should say the renewal was forced: {renewed:?}"
    );

    let logs = coord.logs();
    let retried: Vec<&str> = logs.lines().filter(|l| l.contains("replaces")).collect();
    eprintln!(
        "[ignored_replaces] coordinator lines about `replaces`:\n{}",
        retried.join("\n")
    );
    assert!(
        logs.contains("order with `replaces` failed; ordering again without it"),
        "the coordinator log should say the order was retried without `replaces`:\n{}",
        retried.join("\n")
    );
    assert!(
        logs.contains("renewing without it"),
        "the coordinator log should say the renewal went ahead without `replaces`:\n{}",
        retried.join("\n")
    );
    // acme2certifier saw two new orders for the renewal: with `replaces`, then without.
    let neworders = a2c.logs().matches("POST /acme/neworders").count();
    assert!(
        neworders >= 3,
        "acme2certifier should have seen 3 new orders (issue, renewal with and without \
         `replaces`), saw {neworders}"
    );
    eprintln!("[ignored_replaces] done in {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_and_forced_renewal() {
    let t0 = Instant::now();
    let (a2c, coord) = a2c_and_coordinator("issuance_and_forced_renewal", "").await;
    let mut agent = start_agent("plain", &coord, &[]).await;
    let first = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("certificate installed");
    let issued_in = t0.elapsed();
    check_issued(
        &agent,
        &a2c,
        &first,
        i64::from(a2c.options().shortlived_validity_days),
    );
    assert_eq!(first.renewals, Some(0), "{first:?}");
    let reloads = agent.reload_count();

    let t1 = Instant::now();
    let renewed = force_renewal(&coord, &mut agent, &first).await;
    let renewed_in = t1.elapsed();
    check_issued(
        &agent,
        &a2c,
        &renewed,
        i64::from(a2c.options().shortlived_validity_days),
    );
    assert_eq!(renewed.renewals, Some(1), "{renewed:?}");
    assert!(
        agent.reload_count() > reloads,
        "the renewed certificate was installed without a reload"
    );
    assert_eq!(
        renewed.cert_id, first.cert_id,
        "same certificate, new serial"
    );
    let certs = coord.certs().await.expect("certs --json");
    assert_eq!(certs.len(), 1, "one certificate for the host: {certs:?}");
    eprintln!(
        "[issuance_and_forced_renewal] first issuance after {issued_in:?} (incl. start-up), \
         forced renewal in {renewed_in:?}, total {:?}",
        t0.elapsed()
    );
}
