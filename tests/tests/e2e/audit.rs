//! The audit trail: after a real enrollment, issuance and forced renewal, every event is in
//! the trail, in order, with its fields; filters work; the chain verifies; and an edit made
//! directly in the store is caught by `audit verify`.

use std::time::Duration;

use certfleet_coordinator::store::{AuditStore, SledStore};
use certfleet_tests::{Agent, RestartMode};
use serde_json::Value;

use crate::support::{pebble_and_coordinator, ISSUE_TIMEOUT};

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON Lines: {l:?}: {e}")))
        .collect()
}

fn kinds(recs: &[Value]) -> Vec<String> {
    recs.iter()
        .map(|r| r["kind"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trail_records_issuance_and_catches_tampering() {
    if certfleet_tests::coordinator::test_store_is_postgres() {
        eprintln!("SKIPPED under CERTFLEET_TEST_STORE=postgres: it tampers with the sled store files (tampering on PostgreSQL: store_conformance)");
        return;
    }
    let (pebble, mut coord) = pebble_and_coordinator().await;
    let mut agent = Agent::new("audited", pebble.http_port()).expect("agent");
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    let row = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed");
    let host = agent.id().expect("host id").to_owned();
    let first_serial = row.serial.clone().expect("serial");

    // Force a renewal so the trail has an operator action and a second certificate.
    coord
        .cli_ok(&["certs", "renew", &row.cert_id])
        .await
        .expect("certs renew");
    let deadline = std::time::Instant::now() + ISSUE_TIMEOUT;
    loop {
        let certs = coord.certs().await.expect("certs");
        let c = certs.iter().find(|c| c.host_id == host).expect("cert row");
        if c.state == "installed" && c.serial.as_deref() != Some(first_serial.as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "forced renewal never installed: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let all = records(
        &coord
            .cli_ok(&["audit", "--json"])
            .await
            .expect("audit --json"),
    );
    let k = kinds(&all);
    // Order of the first issuance.
    let want = [
        "token_created",
        "token_used",
        "host_enrolled",
        "order_created",
        "challenge_presented",
        "challenge_validated",
        "certificate_issued",
        "certificate_installed",
        "renewal_forced",
        "order_created",
        "certificate_issued",
        "certificate_installed",
    ];
    let mut pos = 0;
    for w in want {
        match k[pos..].iter().position(|x| x == w) {
            Some(p) => pos += p + 1,
            None => panic!("{w} missing or out of order in {k:?}"),
        }
    }
    for (i, r) in all.iter().enumerate() {
        assert_eq!(
            r["seq"].as_u64(),
            Some(i as u64),
            "sequence numbers run without gaps"
        );
        assert!(
            r["hash"].as_str().is_some_and(|h| h.len() == 64),
            "sealed: {r}"
        );
    }
    let issued: Vec<&Value> = all
        .iter()
        .filter(|r| r["kind"] == "certificate_issued")
        .collect();
    let first = issued[0];
    assert_eq!(first["serial"].as_str(), Some(first_serial.as_str()));
    assert_eq!(first["host_id"].as_str(), Some(host.as_str()));
    assert_eq!(first["issuer"].as_str(), Some("pebble"));
    for field in [
        "not_before",
        "not_after",
        "sans",
        "issuer_chain_sha256",
        "order_url",
    ] {
        assert!(
            !first["details"][field].is_null(),
            "certificate_issued lacks {field}: {first}"
        );
    }
    let sans: Vec<String> = first["details"]["sans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for ip in agent.ips() {
        assert!(
            sans.contains(&ip.to_string()),
            "{ip} not among SANs {sans:?}"
        );
    }
    let order = all.iter().find(|r| r["kind"] == "order_created").unwrap();
    assert!(
        order["details"]["order_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{order}"
    );
    assert!(
        order["details"]["account"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "{order}"
    );
    let forced = all.iter().find(|r| r["kind"] == "renewal_forced").unwrap();
    assert_eq!(forced["actor"].as_str(), Some("operator:operator"));
    let enrolled = all.iter().find(|r| r["kind"] == "host_enrolled").unwrap();
    assert!(
        enrolled["details"]["from"]
            .as_str()
            .is_some_and(|f| f.starts_with("127.0.0.1:")),
        "{enrolled}"
    );
    assert!(!coord.logs().contains("cfj_"), "no token in the logs");

    // Filters.
    let by_host = records(
        &coord
            .cli_ok(&["audit", "--json", "--host", &host])
            .await
            .unwrap(),
    );
    assert!(by_host.len() >= 8 && by_host.iter().all(|r| r["host_id"] == host.as_str()));
    let v4 = agent
        .ips()
        .into_iter()
        .find(|i| i.is_ipv4())
        .unwrap()
        .to_string();
    let cidr = format!("{}/8", v4);
    let by_ip = records(
        &coord
            .cli_ok(&["audit", "--json", "--ip", &cidr])
            .await
            .unwrap(),
    );
    assert!(
        !by_ip.is_empty()
            && by_ip.iter().all(|r| r["identifiers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == v4.as_str())))
    );
    let by_serial = records(
        &coord
            .cli_ok(&["audit", "--json", "--serial", &first_serial])
            .await
            .unwrap(),
    );
    assert_eq!(
        kinds(&by_serial),
        vec!["certificate_issued", "certificate_installed"]
    );
    let only = records(
        &coord
            .cli_ok(&["audit", "--json", "--kind", "certificate_issued"])
            .await
            .unwrap(),
    );
    assert_eq!(only.len(), 2);
    let none = records(
        &coord
            .cli_ok(&["audit", "--json", "--since", "2099-01-01T00:00:00Z"])
            .await
            .unwrap(),
    );
    assert!(none.is_empty());
    let bad = coord.cli(&["audit", "--ip", "10.0.0.0/99"]).await.unwrap();
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("prefix length")
    );

    let verified = coord
        .cli_ok(&["audit", "verify"])
        .await
        .expect("audit verify");
    assert!(verified.contains("intact"), "{verified}");

    // Tamper: stop the coordinator, edit record 3 in the store, start it again.
    coord.stop_current(RestartMode::Term).await.expect("stop");
    {
        let store = SledStore::open(&coord.state_dir().join("store")).expect("open store");
        let mut rec: Value =
            serde_json::from_slice(&store.audit_record(3).unwrap().expect("record 3")).unwrap();
        rec["actor"] = Value::String("someone-else".into());
        store
            .overwrite_audit_record_for_test(3, &serde_json::to_vec(&rec).unwrap())
            .unwrap();
    }
    coord.start_again().await.expect("start again");
    let out = coord.cli(&["audit", "verify"]).await.expect("audit verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "a broken chain exits 3: {text}");
    assert!(text.contains("BROKEN at record 3"), "{text}");
}
