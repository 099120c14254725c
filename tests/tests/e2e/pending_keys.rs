//! Nothing left behind on the host: the agent makes a key only once presenting the
//! challenges succeeded, and the pending key of an order that ended — issued and
//! installed, or failed — is removed when the coordinator says so, not only by age.

use std::path::Path;
use std::time::Duration;

use certfleet_tests::Agent;

use crate::support::{pebble_and_coordinator, ISSUE_TIMEOUT, QUIET_PERIOD};

/// Pending key files on the host.
fn pending_keys(state_dir: &Path) -> Vec<String> {
    match std::fs::read_dir(state_dir.join("pending")) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Polls until the host holds no pending key (the discard is sent right after the
/// attempt ends).
async fn wait_no_pending(a: &Agent, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let keys = pending_keys(a.state_dir());
        if keys.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: pending keys left on the host: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_is_made_when_presenting_fails() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let mut a = Agent::new("busy-port", pebble.http_port()).expect("agent");
    // Something else holds the HTTP-01 port on the host's address: presenting fails.
    let _squatter =
        std::net::TcpListener::bind((a.ips()[0], pebble.http_port())).expect("hold the port");
    a.enroll_with(&coord).await.expect("enroll");
    a.start().expect("start");
    // The order stays open (the next attempt presents again); the attempt failed.
    let host = a.id().expect("enrolled").to_owned();
    let deadline = std::time::Instant::now() + ISSUE_TIMEOUT;
    loop {
        let certs = coord.certs().await.expect("certs");
        let row = certs.iter().find(|c| c.host_id == host);
        if row
            .and_then(|r| r.last_error.as_deref())
            .is_some_and(|e| e.contains("present challenges") && e.contains("already in use"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presenting should fail: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Absence can only be shown by waiting: a CSR request racing the failure (the old
    // behaviour) would have landed by now.
    tokio::time::sleep(QUIET_PERIOD).await;
    let keys = pending_keys(a.state_dir());
    assert!(
        keys.is_empty(),
        "a key was made although no challenge was served: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_keys_of_ended_orders_are_removed() {
    let (pebble, coord) = pebble_and_coordinator().await;

    // Issued and installed: nothing pending afterwards.
    let mut ok = Agent::new("ok", pebble.http_port()).expect("agent");
    ok.enroll_with(&coord).await.expect("enroll");
    ok.start().expect("start");
    ok.wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed");
    wait_no_pending(&ok, "after install").await;

    // Validation fails (the agent serves on another port than the CA asks): the key made
    // for the dead order is removed when the coordinator ends it.
    let other_port = certfleet_tests::net::free_port().expect("port");
    let mut bad = Agent::new_with_port("bad", pebble.http_port(), other_port).expect("agent");
    bad.enroll_with(&coord).await.expect("enroll");
    bad.start().expect("start");
    let row = bad
        .wait_cert_state(&coord, "failed", ISSUE_TIMEOUT)
        .await
        .expect("validation fails");
    assert!(row.order_url.is_some(), "an order was tried: {row:?}");
    wait_no_pending(&bad, "after a failed validation").await;
    let log = bad.logs();
    assert!(
        log.contains("pending keys of an ended order removed"),
        "the agent removed them on the coordinator's word, not by age"
    );
}
