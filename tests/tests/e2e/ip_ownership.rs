//! One IP, one live host. An address a host holds cannot get into another host's
//! certificate: the newcomer's certificate waits in `conflict`, naming the holder, with an
//! audit record, a metric and a WARN line; releasing the address (`hosts release-ip`) or
//! removing the old host lets the newcomer's certificate through without restarting
//! anything. A policy's `allowed_ips` refuses addresses outside it the same way.

use std::net::IpAddr;

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::{pki, Agent, Coordinator, PebbleOptions};

use crate::metrics::scrape;
use crate::support::{pebble_and_coordinator_with, ISSUE_TIMEOUT, QUIET_PERIOD};

async fn audit_kind(coord: &Coordinator, kind: &str) -> Vec<serde_json::Value> {
    coord
        .cli_ok(&["audit", "--kind", kind, "--json"])
        .await
        .expect("audit --json")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn leaf_ips(a: &Agent) -> Vec<IpAddr> {
    pki::leaf_info_from_file(&a.cert_path())
        .expect("installed leaf")
        .ip_sans
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_held_by_one_host_waits_for_release_or_removal() {
    let metrics_port = certfleet_tests::net::free_port().expect("port");
    let (pebble, coord) = pebble_and_coordinator_with(
        PebbleOptions::default(),
        CoordinatorOptions {
            extra_config: format!("\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
            ..CoordinatorOptions::default()
        },
    )
    .await;
    let mut old = Agent::new("old", pebble.http_port()).expect("agent");
    let old_id = old
        .enroll_with(&coord)
        .await
        .expect("enroll old")
        .to_owned();
    old.start().expect("start old");
    old.wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("old host issued");
    let (v4, v6) = (old.ips()[0], old.ips()[1]);

    // A new VM got the old one's IPv4 address; another its IPv6 address.
    let mut new = Agent::new("new", pebble.http_port()).expect("agent");
    new.claim_ips(&[v4]).expect("claim v4");
    let new_id = new
        .enroll_with(&coord)
        .await
        .expect("enroll new")
        .to_owned();
    new.start().expect("start new");
    let mut third = Agent::new("third", pebble.http_port()).expect("agent");
    third.claim_ips(&[v6]).expect("claim v6");
    let third_id = third
        .enroll_with(&coord)
        .await
        .expect("enroll third")
        .to_owned();
    third.start().expect("start third");

    let row = new
        .wait_cert_state(&coord, "conflict", ISSUE_TIMEOUT)
        .await
        .expect("the newcomer's certificate waits in conflict");
    let err = row.last_error.clone().unwrap_or_default();
    assert!(
        err.contains(&v4.to_string()) && err.contains(&old_id) && err.contains("release-ip"),
        "conflict names the address, the holder and the fix: {err:?}"
    );
    assert_eq!(
        row.order_url, None,
        "no order for a conflicting address: {row:?}"
    );
    third
        .wait_cert_state(&coord, "conflict", ISSUE_TIMEOUT)
        .await
        .expect("third waits too");

    let records = audit_kind(&coord, "ip_conflict").await;
    assert_eq!(
        records.len(),
        2,
        "one ip_conflict record per newcomer: {records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.to_string().contains(&new_id) && r.to_string().contains(&old_id)),
        "the record names both hosts: {records:?}"
    );
    let text = scrape(metrics_port).await;
    assert!(
        text.contains("certfleet_ip_blocked_total{kind=\"ip_conflict\"} 2"),
        "conflict metric: {}",
        text.lines()
            .filter(|l| l.contains("ip_blocked") || l.contains("certfleet_certificates{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        text.contains("certfleet_certificates{state=\"conflict\"} 2"),
        "certificates by state"
    );
    let logs = coord.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("held by host") && l.contains(&new_id)),
        "a WARN line names the conflict"
    );
    // It stays that way: nothing is ordered for the newcomer meanwhile.
    tokio::time::sleep(QUIET_PERIOD).await;
    let still = coord.certs().await.expect("certs");
    let new_row = still.iter().find(|c| c.host_id == new_id).expect("row");
    assert_eq!(new_row.state, "conflict");
    assert!(
        !new.fullchain_path().exists(),
        "nothing installed on the newcomer"
    );

    // The operator says the IPv4 address moved: the newcomer gets it, no restart.
    let out = coord
        .cli_ok(&["hosts", "release-ip", &old_id, &v4.to_string()])
        .await
        .expect("release-ip");
    assert!(
        out.contains(&new_id),
        "release-ip names who was looked at: {out}"
    );
    new.wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("newcomer issued after the release");
    let mut want = new.ips();
    want.sort();
    assert_eq!(
        leaf_ips(&new),
        want,
        "the newcomer's certificate has the released address"
    );
    let old_row = coord
        .certs()
        .await
        .expect("certs")
        .into_iter()
        .find(|c| c.host_id == old_id)
        .expect("old row");
    assert_eq!(
        old_row.state, "conflict",
        "the old host now waits for the address it lost: {old_row:?}"
    );
    assert_eq!(audit_kind(&coord, "ip_released").await.len(), 1);

    // A bad release is refused with the reason.
    let bad = coord
        .cli(&["hosts", "release-ip", &third_id, &v4.to_string()])
        .await
        .expect("run cli");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains(&format!("{v4} is held by host {new_id}")),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Removing the old host frees its IPv6 address for the third host.
    old.stop(std::time::Duration::from_secs(5))
        .await
        .expect("stop old");
    coord
        .cli_ok(&["hosts", "remove", &old_id])
        .await
        .expect("remove old host");
    third
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("third issued after the old host's removal");
    let mut want = third.ips();
    want.sort();
    assert_eq!(leaf_ips(&third), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refuses_addresses_outside_allowed_ips() {
    let (pebble, coord) = pebble_and_coordinator_with(
        PebbleOptions::default(),
        CoordinatorOptions {
            // Only the documentation range: every loopback address of the test is outside.
            extra_config:
                "\n[[policy]]\nname = \"web\"\nips = \"all\"\nallowed_ips = [\"192.0.2.0/24\"]\n"
                    .into(),
            ..CoordinatorOptions::default()
        },
    )
    .await;
    let mut a = Agent::new("outside", pebble.http_port()).expect("agent");
    a.enroll_with(&coord).await.expect("enroll");
    a.start().expect("start");
    let row = a
        .wait_cert_state(&coord, "refused", ISSUE_TIMEOUT)
        .await
        .expect("refused by policy");
    let err = row.last_error.clone().unwrap_or_default();
    assert!(
        err.contains(&a.ips()[0].to_string())
            && err.contains("\"web\"")
            && err.contains("192.0.2.0/24"),
        "names the address, the policy and its list: {err:?}"
    );
    assert_eq!(row.order_url, None);
    assert_eq!(audit_kind(&coord, "ip_refused").await.len(), 1);
}
