//! A failed HTTP-01 validation reaches the operator per identifier, and the challenges are
//! cleaned up afterwards. The agent serves HTTP-01 on a port other than the one pebble
//! validates on, so every validation connection is refused (or, in one test, held and
//! then reset).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use certfleet_tests::{net, Agent};

use crate::support::{
    assert_still_serving, error_parts_for, pebble_and_coordinator, ISSUE_TIMEOUT,
};

const CONNECTION_PROBLEM: &str = "urn:ietf:params:acme:error:connection";

/// Binds `addr` within `timeout` (retrying), i.e. nobody listens there any more.
fn bind_within(addr: SocketAddr, timeout: Duration) -> Result<(), std::io::Error> {
    let start = Instant::now();
    loop {
        match TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() >= timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_validation_is_reported_per_identifier_and_cleaned_up() {
    let (pebble, mut coord) = pebble_and_coordinator().await;
    let wrong_port = loop {
        let p = net::free_port().expect("free port");
        if p != pebble.http_port() {
            break p;
        }
    };
    let mut agent =
        Agent::new_with_port("wrongport", pebble.http_port(), wrong_port).expect("agent");
    assert_eq!(agent.http01_port(), wrong_port);
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start agent");

    let row = agent
        .wait_cert_state(&coord, "failed", ISSUE_TIMEOUT)
        .await
        .expect("validation should fail");
    eprintln!("validation failure last_error: {:?}", row.last_error);
    let err = row
        .last_error
        .as_deref()
        .unwrap_or_else(|| panic!("failed row without last_error: {row:?}"));
    assert!(
        err.contains("validation failed"),
        "last_error should say validation failed: {err:?}"
    );
    let ips = agent.ips();
    assert!(
        ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6),
        "the host has an IPv4 and an IPv6 address: {ips:?}"
    );
    for ip in &ips {
        let parts = error_parts_for(err, ip);
        assert!(
            !parts.is_empty(),
            "last_error should report {ip} on its own (\"{ip}: ...\"): {err:?}"
        );
        assert!(
            parts.iter().any(|p| p.contains(CONNECTION_PROBLEM)),
            "the CA's problem type {CONNECTION_PROBLEM} should be reported for {ip}: {parts:?} in {err:?}"
        );
    }
    assert!(
        row.order_url.is_some(),
        "an order was made at the CA, its URL should be recorded: {row:?}"
    );
    assert!(
        !agent.fullchain_path().exists(),
        "nothing may be installed after a failed validation"
    );

    // The challenges were cleared: the agent no longer listens on its HTTP-01 port.
    for ip in &ips {
        let addr = SocketAddr::new(*ip, wrong_port);
        bind_within(addr, Duration::from_secs(3)).unwrap_or_else(|e| {
            panic!(
                "{addr} is still in use after the failure (challenge responder not stopped): {e}"
            )
        });
    }
    assert!(
        agent.child().expect("agent running").is_running(),
        "the agent keeps running after a failed validation"
    );
    assert_still_serving(&mut coord).await;
}

/// The CA marks an order invalid as soon as one authorization fails, while it is still
/// validating the others. Here the IPv6 address refuses at once and the IPv4 address
/// holds the CA's connection for two seconds before closing it: the failure reported (and
/// counted against the failed-validation budget) must still name both identifiers, not
/// only the one that failed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_failing_identifier_is_reported_with_the_first() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let wrong_port = loop {
        let p = net::free_port().expect("free port");
        if p != pebble.http_port() {
            break p;
        }
    };
    let mut agent =
        Agent::new_with_port("slowfail", pebble.http_port(), wrong_port).expect("agent");
    let ips = agent.ips();
    let v4 = *ips.iter().find(|ip| ip.is_ipv4()).expect("an IPv4 address");
    assert!(ips.iter().any(IpAddr::is_ipv6), "an IPv6 address: {ips:?}");
    // Where pebble validates the IPv4 address: a listener that takes the connection,
    // says nothing for two seconds, then closes it.
    let slow = tokio::net::TcpListener::bind(SocketAddr::new(v4, pebble.http_port()))
        .await
        .expect("bind the slow listener");
    let held = tokio::spawn(async move {
        let mut taken = 0u32;
        while let Ok((conn, _)) = slow.accept().await {
            taken += 1;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(conn);
            });
            if taken >= 8 {
                break;
            }
        }
    });
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start agent");

    let row = agent
        .wait_cert_state(&coord, "failed", ISSUE_TIMEOUT)
        .await
        .expect("validation should fail");
    held.abort();
    let err = row.last_error.as_deref().unwrap_or_default();
    eprintln!("validation failure last_error: {err:?}");
    assert!(err.contains("validation failed"), "{err:?}");
    for ip in &ips {
        assert!(
            !error_parts_for(err, ip).is_empty(),
            "the failure should report {ip} too (\"{ip}: ...\"), its validation finished after the other's: {err:?}"
        );
    }
    let v6 = ips.iter().find(|ip| ip.is_ipv6()).expect("v6");
    assert!(
        error_parts_for(err, v6)
            .iter()
            .any(|p| p.contains(CONNECTION_PROBLEM)),
        "{v6} refused the CA's connection: {err:?}"
    );
}
