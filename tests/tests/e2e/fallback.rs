//! Issuer fallback: a policy lists issuers in order; when the first CA cannot be reached the
//! certificate comes from the next one, without waiting for the retry backoff.

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::Agent;

use crate::support::{pebble_and_coordinator_with, ISSUE_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_first_issuer_falls_back_to_the_next() {
    // "down" points at a port nothing listens on.
    let extra = "\n[[issuer]]\nname = \"down\"\ndirectory = \"https://127.0.0.1:1/dir\"\nallow_private_ips = true\n\n\
                 [[policy]]\nname = \"with-fallback\"\nissuers = [\"down\", \"pebble\"]\n";
    let copts = CoordinatorOptions {
        extra_config: extra.to_owned(),
        ..Default::default()
    };
    let (pebble, coord) = pebble_and_coordinator_with(Default::default(), copts).await;
    let mut agent = Agent::new("fallback", pebble.http_port()).expect("agent");
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    let row = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed via the fallback issuer");
    assert_eq!(
        row.issuer, "pebble",
        "the certificate comes from the fallback: {row:?}"
    );
    let logs = coord.logs();
    assert!(
        logs.contains("falling back to the next one"),
        "the fallback is logged"
    );
    let audit = coord
        .cli_ok(&["audit", "--json", "--kind", "order_created"])
        .await
        .expect("audit");
    assert!(
        audit.lines().all(|l| l.contains("\"issuer\":\"pebble\"")),
        "no order reached the dead CA: {audit}"
    );
}
