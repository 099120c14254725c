//! Revocation: an operator revokes a certificate (the CA confirms it, a replacement is
//! installed); removing a host revokes its certificates with cessationOfOperation, forgets
//! it, and refuses its identity afterwards. All of it is in the audit trail.

use std::time::Duration;

use certfleet_tests::Agent;
use serde_json::Value;

use crate::support::{pebble_and_coordinator, ISSUE_TIMEOUT};

async fn revoked_at_pebble(pebble: &certfleet_tests::Pebble, serial: &str) -> Value {
    let status = pebble
        .cert_status(serial)
        .await
        .expect("pebble cert status");
    assert_eq!(
        status["Status"].as_str(),
        Some("Revoked"),
        "pebble says: {status}"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_then_remove_host() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let mut agent = Agent::new("revoked", pebble.http_port()).expect("agent");
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    let row = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed");
    let host = agent.id().expect("host").to_owned();
    let first = row.serial.clone().expect("serial");
    let before = pebble.cert_status(&first).await.expect("status");
    assert_eq!(before["Status"].as_str(), Some("Valid"), "{before}");

    let bad = coord
        .cli(&["certs", "revoke", &row.cert_id, "--reason", "boredom"])
        .await
        .unwrap();
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown reason")
    );

    let out = coord
        .cli_ok(&["certs", "revoke", &row.cert_id, "--reason", "keyCompromise"])
        .await
        .expect("certs revoke");
    assert!(out.contains(&first), "{out}");
    revoked_at_pebble(&pebble, &first).await;

    // A replacement arrives on its own.
    let deadline = std::time::Instant::now() + ISSUE_TIMEOUT;
    let second = loop {
        let c = coord
            .certs()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.host_id == host)
            .expect("row");
        if c.state == "installed" && c.serial.as_deref().is_some_and(|s| s != first) {
            break c.serial.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replacement after revocation: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Removing the host revokes what it has, with cessationOfOperation.
    let out = coord
        .cli_ok(&["hosts", "remove", &host])
        .await
        .expect("hosts remove");
    assert!(out.contains(&second), "{out}");
    revoked_at_pebble(&pebble, &second).await;
    assert!(
        coord
            .hosts()
            .await
            .unwrap()
            .iter()
            .all(|h| h.host_id != host),
        "host forgotten"
    );
    assert!(
        coord
            .certs()
            .await
            .unwrap()
            .iter()
            .all(|c| c.host_id != host),
        "its certificates forgotten"
    );

    // Its identity is refused from now on.
    agent.kill().await.expect("kill agent");
    agent.start().expect("restart agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !agent.logs().contains("is not enrolled") {
        assert!(
            std::time::Instant::now() < deadline,
            "removed host was not refused:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let audit = coord
        .cli_ok(&["audit", "--json", "--host", &host])
        .await
        .expect("audit");
    let recs: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let revocations: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "certificate_revoked")
        .collect();
    assert_eq!(revocations.len(), 2, "{audit}");
    assert_eq!(revocations[0]["details"]["reason"], "keyCompromise");
    assert_eq!(revocations[1]["details"]["reason"], "cessationOfOperation");
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "host_removed" && r["actor"] == "operator:operator"),
        "{audit}"
    );
    assert!(coord
        .cli_ok(&["audit", "verify"])
        .await
        .unwrap()
        .contains("intact"));

    let gone = coord.cli(&["hosts", "remove", &host]).await.unwrap();
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("no such host")
    );
}
