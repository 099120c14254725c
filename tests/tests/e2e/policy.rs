//! The public-IP policy: an issuer with `allow_private_ips = false` must not be asked for
//! loopback / ULA addresses. The coordinator refuses before spending an order at the CA,
//! says why (naming the setting and the address) and keeps serving.

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::{Agent, PebbleOptions};

use crate::support::{
    assert_still_serving, pebble_and_coordinator_with, ISSUE_TIMEOUT, QUIET_PERIOD,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ips_are_refused_before_ordering() {
    let (pebble, mut coord) = pebble_and_coordinator_with(
        PebbleOptions::default(),
        CoordinatorOptions {
            allow_private_ips: Some(false),
            ..CoordinatorOptions::default()
        },
    )
    .await;
    let mut agent = Agent::new("private", pebble.http_port()).expect("agent");
    let host_id = agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start agent");

    let row = agent
        .wait_cert_state(&coord, "failed", ISSUE_TIMEOUT)
        .await
        .expect("the certificate should fail on policy");
    eprintln!("policy refusal last_error: {:?}", row.last_error);
    let err = row
        .last_error
        .as_deref()
        .unwrap_or_else(|| panic!("failed row without last_error: {row:?}"));
    assert!(
        err.contains("allow_private_ips"),
        "last_error should name the setting allow_private_ips: {err:?}"
    );
    let ips = agent.ips();
    assert!(
        ips.iter().any(|ip| err.contains(&ip.to_string())),
        "last_error should name one of the host's IPs {ips:?}: {err:?}"
    );
    assert_eq!(
        row.order_url, None,
        "no order may be spent at the CA for refused addresses: {row:?}"
    );
    assert_eq!(row.serial, None, "nothing was issued: {row:?}");

    // Nothing gets installed, however long we wait.
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(
        !agent.fullchain_path().exists(),
        "a refused certificate must never be installed ({})",
        agent.fullchain_path().display()
    );
    assert_eq!(
        agent.reload_count(),
        0,
        "no reload for a refused certificate"
    );
    let certs = coord.certs().await.expect("certs --json");
    let mine: Vec<_> = certs.iter().filter(|c| c.host_id == host_id).collect();
    assert_eq!(mine.len(), 1, "one certificate row for the host: {certs:?}");
    assert_eq!(mine[0].state, "failed", "still failed: {:?}", mine[0]);
    assert_eq!(mine[0].order_url, None, "still no order: {:?}", mine[0]);

    let hosts = assert_still_serving(&mut coord).await;
    let h = hosts
        .iter()
        .find(|h| h.host_id == host_id)
        .unwrap_or_else(|| panic!("host {host_id} missing from {hosts:?}"));
    assert!(h.connected, "the agent stays connected: {h:?}");
    assert!(
        agent.child().expect("agent running").is_running(),
        "the agent keeps running after a policy refusal"
    );
}
