//! The coordinator crashes (SIGKILL) and comes back on the same state: agents reconnect
//! by themselves, nothing is re-issued, new hosts still enroll, the ACME account is
//! loaded rather than created.

use std::time::Duration;

use certfleet_shared::clock::{Clock as _, SystemClock};
use certfleet_tests::{pki, Agent, RestartMode};

use crate::support::{check_installed, pebble_and_coordinator, ISSUE_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_and_restart_keeps_the_fleet() {
    let (pebble, mut coord) = pebble_and_coordinator().await;
    let root = pebble.issuing_root_der().await.expect("issuing root");

    let mut a = Agent::new("first", pebble.http_port()).expect("agent");
    let a_id = a.enroll_with(&coord).await.expect("enroll first");
    a.start().expect("start first");
    let row = a
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("first installed");
    check_installed(&a, &row, &root);
    let serial = row.serial.clone().expect("serial");
    let reloads = a.reload_count();

    let log1 = coord.run_log(1);
    assert!(
        log1.contains("ACME account created"),
        "first run should create the ACME account; log:\n{log1}"
    );

    let restarted_unix = SystemClock.now_unix();
    coord
        .restart(RestartMode::Kill)
        .await
        .expect("restart coordinator");
    let started = std::time::Instant::now();
    let host = coord
        .wait_connected(&a_id, true, Duration::from_secs(45))
        .await
        .expect("agent reconnects by itself after the coordinator restart");
    // The connection is new, not remembered: the host was heard from after the restart.
    let last_seen = host
        .last_seen
        .as_deref()
        .expect("last_seen after reconnect");
    assert!(
        pki::rfc3339_unix(last_seen).expect("last_seen") >= restarted_unix,
        "last_seen {last_seen} predates the restart: {host:?}"
    );
    eprintln!(
        "agent reconnected {:?} after the restart",
        started.elapsed()
    );

    let log2 = coord.run_log(2);
    assert!(
        log2.contains("ACME account loaded"),
        "second run should load the ACME account; log:\n{log2}"
    );
    assert!(
        !log2.contains("ACME account created"),
        "second run must not create another ACME account; log:\n{log2}"
    );

    // A second host enrolls and gets its certificate from the restarted coordinator.
    let mut b = Agent::new("second", pebble.http_port()).expect("agent");
    b.enroll_with(&coord)
        .await
        .expect("enroll second after restart");
    b.start().expect("start second");
    let row_b = b
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("second installed");
    check_installed(&b, &row_b, &root);

    // No re-issuance for the first host: same serial on disk and in the store, one row.
    let certs = coord.certs().await.expect("certs");
    let mine: Vec<_> = certs.iter().filter(|c| c.host_id == a_id).collect();
    assert_eq!(
        mine.len(),
        1,
        "first host should still have exactly one certificate: {mine:?}"
    );
    assert_eq!(
        mine[0].serial.as_deref(),
        Some(serial.as_str()),
        "first host was re-issued: {mine:?}"
    );
    assert_eq!(mine[0].state, "installed");
    let leaf = pki::leaf_info_from_file(&a.fullchain_path()).expect("leaf");
    assert_eq!(
        leaf.serial_hex,
        pki::normalize_serial(&serial),
        "installed leaf changed"
    );
    assert_eq!(a.reload_count(), reloads, "first host was reloaded again");
    let hosts = coord.hosts().await.expect("hosts");
    assert!(
        hosts.iter().all(|h| h.connected),
        "all hosts connected: {hosts:?}"
    );
}
