//! Identity rotation: with short identity certificates, the agent gets a new one for a new
//! key over its authenticated session when a third of the lifetime is left, reconnects
//! with it, and keeps working after the first certificate has expired. The rotation is in
//! the audit trail (host, source address, previous and new serial) and in `hosts`.

use std::time::{Duration, Instant};

use certfleet_shared::clock::{Clock as _, SystemClock};
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::{pki, Agent, PebbleOptions};

use crate::support::{pebble_and_coordinator_with, ISSUE_TIMEOUT};

const LIFETIME_SECS: u64 = 30;

fn identity(agent: &Agent) -> pki::LeafInfo {
    pki::leaf_info_from_file(&agent.identity_cert_path()).expect("identity.pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_identities_are_rotated_over_the_session() {
    let (pebble, coord) = pebble_and_coordinator_with(
        PebbleOptions::default(),
        CoordinatorOptions {
            identity_lifetime_secs: Some(LIFETIME_SECS),
            ..Default::default()
        },
    )
    .await;
    let mut agent = Agent::new("rotating", pebble.http_port()).expect("agent");
    let host = agent.enroll_with(&coord).await.expect("enroll");
    let first = identity(&agent);
    let lifetime = first.not_after_unix - first.not_before_unix;
    assert!(
        lifetime <= LIFETIME_SECS as i64 + 5,
        "identity lifetime {lifetime} s"
    );
    agent.start().expect("start");
    agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed with the first identity");

    // Rotation: due when a third of the lifetime is left.
    let deadline = Instant::now() + Duration::from_secs(LIFETIME_SECS * 2);
    let record = loop {
        let out = coord
            .cli_ok(&[
                "audit",
                "--host",
                &host,
                "--kind",
                "identity_rotated",
                "--json",
            ])
            .await
            .expect("audit");
        if let Some(line) = out.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).expect("JSON");
        }
        assert!(
            Instant::now() < deadline,
            "no rotation; agent log:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The coordinator records the rotation before it answers; the agent writes the new
    // files a moment later: give it that moment.
    let written = Instant::now() + Duration::from_secs(10);
    let mut second = identity(&agent);
    while second.serial_hex == first.serial_hex && Instant::now() < written {
        tokio::time::sleep(Duration::from_millis(100)).await;
        second = identity(&agent);
    }
    assert_ne!(second.serial_hex, first.serial_hex, "identity.pem replaced");
    let key = std::fs::read_to_string(agent.identity_key_path()).expect("key");
    assert_eq!(
        pki::key_spki_from_pem(&key).expect("key"),
        second.spki_der,
        "identity.key matches the new certificate"
    );
    assert_ne!(second.spki_der, first.spki_der, "a new key was made");
    assert_eq!(
        pki::file_mode(&agent.identity_key_path()).expect("mode"),
        0o600
    );
    let details = &record["details"];
    assert_eq!(
        details["previous_identity_serial"]
            .as_str()
            .map(pki::normalize_serial),
        Some(first.serial_hex.clone()),
        "{record}"
    );
    assert_eq!(
        details["identity_serial"]
            .as_str()
            .map(pki::normalize_serial),
        Some(second.serial_hex.clone()),
        "{record}"
    );
    assert!(
        details["from"].as_str().is_some_and(|f| !f.is_empty()),
        "{record}"
    );

    // Past the first identity's expiry the host still reconnects and gets certificates.
    let now = SystemClock.now_unix();
    if first.not_after_unix + 1 > now {
        tokio::time::sleep(Duration::from_secs((first.not_after_unix + 1 - now) as u64)).await;
    }
    agent.kill().await.expect("kill");
    agent.start().expect("restart");
    coord
        .wait_connected(&host, true, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; agent log:\n{}", agent.logs()));
    let hosts = coord.hosts_json().await.expect("hosts");
    let row = hosts
        .as_array()
        .and_then(|a| a.iter().find(|h| h["host_id"] == host.as_str()))
        .expect("host row")
        .clone();
    let shown = row["identity_serial"].as_str().map(pki::normalize_serial);
    assert!(
        shown.as_deref() == Some(second.serial_hex.as_str())
            || shown.as_deref() == Some(identity(&agent).serial_hex.as_str()),
        "hosts shows the current identity: {row}"
    );
    let before = coord.certs().await.expect("certs");
    let serial = before
        .iter()
        .find(|c| c.host_id == host)
        .and_then(|c| c.serial.clone())
        .expect("serial");
    let out = coord.renew(&["--host", &host]).await.expect("renew");
    assert!(out.status.success());
    let deadline = Instant::now() + ISSUE_TIMEOUT;
    loop {
        let rows = coord.certs().await.expect("certs");
        let r = rows.iter().find(|c| c.host_id == host).expect("row");
        if r.state == "installed" && r.serial.as_deref() != Some(serial.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal after rotation: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
