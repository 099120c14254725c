//! Key groups: one wildcard certificate and one key for several hosts behind a load
//! balancer. One member makes the key; the others get it sealed to their identity keys
//! (HPKE), relayed by the coordinator, which never holds it in clear. One order per
//! renewal for the whole group; a host joining later gets the key the same way; a host
//! whose own config does not list the group refuses to take part.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use certfleet_tests::dns::ZONE;
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{pki, tlsutil, CertRow};
use serde_json::Value;

use super::wildcard::{rfc2136_provider, secret_file, world_with, World};

const GROUP_POLICY: &str = r#"
[[policy]]
name = "edge"

[[policy.certificate]]
name = "wildcard"
names = ["*.example.test", "example.test"]
challenges = ["dns-01"]
key_group = "edge"
"#;

const TIMEOUT: Duration = Duration::from_secs(120);

async fn member(w: &World, lan: &Lan, name: &str, kind: ServerKind, groups: &[&str]) -> FleetHost {
    w.enrolled_host(
        lan,
        HostSpec::new(name, kind, Challenge::Webroot).with_key_groups(groups),
    )
    .await
}

/// Waits until every host in `hosts` has its certificate served with one serial that
/// `accept` takes; returns the rows by host id.
async fn wait_group_served(
    w: &World,
    hosts: &[&FleetHost],
    accept: impl Fn(&str) -> bool,
) -> BTreeMap<String, CertRow> {
    let ids: BTreeSet<String> = hosts
        .iter()
        .map(|h| h.agent.host_id().expect("enrolled").to_owned())
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let rows: BTreeMap<String, CertRow> = w
            .coord
            .certs()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| ids.contains(&r.host_id))
            .map(|r| (r.host_id.clone(), r))
            .collect();
        let serials: BTreeSet<Option<&String>> = rows.values().map(|r| r.serial.as_ref()).collect();
        let done = rows.len() == ids.len()
            && rows.values().all(|r| r.state == "served")
            && serials.len() == 1
            && serials
                .iter()
                .next()
                .copied()
                .flatten()
                .is_some_and(|s| accept(s));
        if done {
            return rows;
        }
        if Instant::now() > deadline {
            for h in hosts {
                h.agent.dump_logs();
            }
            w.coord.dump_logs();
            panic!("the key group was not served with one certificate: {rows:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

/// Every member serves the same leaf for the apex and under the wildcard, and holds the
/// same key, 0600. Returns the key PEM.
async fn check_members_serve(w: &World, hosts: &[&FleetHost], serial: &str) -> String {
    let want = pki::normalize_serial(serial);
    let mut keys = BTreeSet::new();
    for h in hosts {
        for addr in h.https_addrs() {
            for sni in [ZONE.to_owned(), format!("www.{ZONE}")] {
                tlsutil::served_leaf_for_name(addr, &sni, &w.root, &want)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:#}", h.spec.name));
            }
        }
        let key_path = h.agent.tls_dir().join("key.pem");
        let meta = std::fs::metadata(&key_path).expect("key file");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600,
            "{}: key mode",
            h.spec.name
        );
        keys.insert(std::fs::read_to_string(&key_path).expect("key"));
    }
    assert_eq!(keys.len(), 1, "every member holds the same key");
    keys.into_iter().next().expect("one key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_group_serves_one_certificate_and_key_that_the_coordinator_never_sees() {
    let Some(lan) = require_namespaces("key_group::three_hosts") else {
        return;
    };
    let w = world_with(
        &lan,
        |knot, dir| {
            let file = secret_file(dir, &knot.tsig_key().secret);
            rfc2136_provider(knot, &file, None, "20s")
        },
        GROUP_POLICY,
    )
    .await;
    let a = member(&w, &lan, "kga", ServerKind::Nginx, &["edge"]).await;
    let b = member(&w, &lan, "kgb", ServerKind::Nginx, &["edge"]).await;
    let c = member(&w, &lan, "kgc", ServerKind::Apache, &["edge"]).await;
    let rows = wait_group_served(&w, &[&a, &b, &c], |_| true).await;
    let first_serial = rows
        .values()
        .next()
        .and_then(|r| r.serial.clone())
        .expect("serial");
    let key_pem = check_members_serve(&w, &[&a, &b, &c], &first_serial).await;
    let key_sha256 = pki::sha256_hex(&pki::key_spki_from_pem(&key_pem).expect("key spki"));

    // One order for the group; the key went from the member that made it to each other
    // member, sealed to that member's identity key.
    let records = w.coord.audit_records().await.expect("audit");
    let issued = of_kind(&records, "certificate_issued");
    assert_eq!(
        issued.len(),
        1,
        "one certificate for the group: {issued:#?}"
    );
    assert_eq!(of_kind(&records, "order_created").len(), 1);
    let maker = issued[0]["host_id"].as_str().expect("maker").to_owned();
    assert_eq!(issued[0]["details"]["key_group"], "edge");
    assert_eq!(issued[0]["details"]["key_sha256"], key_sha256.as_str());
    let shared = of_kind(&records, "key_shared");
    let receivers: BTreeSet<&str> = shared
        .iter()
        .map(|r| r["host_id"].as_str().expect("receiver"))
        .collect();
    let others: BTreeSet<&str> = rows
        .keys()
        .map(String::as_str)
        .filter(|h| **h != maker)
        .collect();
    assert_eq!(
        receivers, others,
        "each other member received the key once: {shared:#?}"
    );
    assert_eq!(shared.len(), 2, "{shared:#?}");
    // Sealed by a member that held the key by then: the maker, or one that got it before.
    let mut holders = BTreeSet::from([maker.clone()]);
    for r in &shared {
        assert_eq!(r["details"]["key_sha256"], key_sha256.as_str(), "{r}");
        let from = r["details"]["from_host"].as_str().expect("from_host");
        assert!(
            holders.contains(from),
            "sealed by a host without the key: {r}"
        );
        holders.insert(r["host_id"].as_str().expect("receiver").to_owned());
        assert_eq!(r["details"]["key_group"], "edge", "{r}");
        assert!(r["details"]["recipient_identity_sha256"].is_string(), "{r}");
    }

    // A host that joins later gets the group's certificate and key the same way; no new
    // order.
    let d = member(&w, &lan, "kgd", ServerKind::Nginx, &["edge"]).await;
    let same = first_serial.clone();
    wait_group_served(&w, &[&a, &b, &c, &d], |s| s == same).await;
    check_members_serve(&w, &[&a, &b, &c, &d], &first_serial).await;
    let records = w.coord.audit_records().await.expect("audit");
    assert_eq!(of_kind(&records, "certificate_issued").len(), 1);
    let d_id = d.agent.host_id().expect("enrolled").to_owned();
    assert_eq!(
        of_kind(&records, "key_shared")
            .iter()
            .filter(|r| r["host_id"] == d_id.as_str())
            .count(),
        1,
        "the late joiner received the key"
    );

    // A host whose own config does not list the group takes no part: its certificate
    // fails with a message naming the agent's setting, and no key reaches it.
    let e = member(&w, &lan, "kge", ServerKind::Nginx, &[]).await;
    let e_id = e.agent.host_id().expect("enrolled").to_owned();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let row = w
            .coord
            .certs()
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.host_id == e_id);
        if let Some(err) = row.as_ref().and_then(|r| r.last_error.clone()) {
            if err.contains("key_groups") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no refusal naming key_groups: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A renewal of the group: one new order, every member ends on the new certificate.
    let a_row = &rows[a.agent.host_id().expect("enrolled")];
    let out = w.coord.renew(&[&a_row.cert_id]).await.expect("certs renew");
    assert!(out.status.success(), "{out:?}");
    let old = first_serial.clone();
    let renewed = wait_group_served(&w, &[&a, &b, &c, &d], |s| s != old).await;
    let new_serial = renewed
        .values()
        .next()
        .and_then(|r| r.serial.clone())
        .expect("serial");
    let new_key = check_members_serve(&w, &[&a, &b, &c, &d], &new_serial).await;
    assert_ne!(new_key, key_pem, "a renewal makes a new key");
    let records = w.coord.audit_records().await.expect("audit");
    assert_eq!(
        of_kind(&records, "certificate_issued").len(),
        2,
        "one order per renewal for the whole group"
    );
    assert_eq!(of_kind(&records, "order_created").len(), 2);

    // Removing a member does not revoke the certificate the others still serve.
    let d_id = d.agent.host_id().expect("enrolled").to_owned();
    w.coord
        .cli_ok(&["hosts", "remove", &d_id])
        .await
        .expect("hosts remove");
    let records = w.coord.audit_records().await.expect("audit");
    assert!(
        of_kind(&records, "certificate_revoked").is_empty(),
        "nothing revoked"
    );
    let removed = of_kind(&records, "host_removed");
    assert_eq!(removed.len(), 1);
    let kept: Vec<String> = removed[0]["details"]["kept_for_key_group"]
        .as_array()
        .expect("kept_for_key_group")
        .iter()
        .map(|v| pki::normalize_serial(v.as_str().expect("serial")))
        .collect();
    assert_eq!(
        kept,
        vec![pki::normalize_serial(&new_serial)],
        "{removed:?}"
    );
    check_members_serve(&w, &[&a, &b, &c], &new_serial).await;

    // Revoking the group's certificate replaces it on every member with one new order.
    let out = w
        .coord
        .cli_ok(&["certs", "revoke", &a_row.cert_id, "--reason", "superseded"])
        .await
        .expect("certs revoke");
    assert!(
        out.contains(&new_serial) || out.contains(&pki::normalize_serial(&new_serial)),
        "{out}"
    );
    let revoked = new_serial.clone();
    let replaced = wait_group_served(&w, &[&a, &b, &c], |s| s != revoked).await;
    let third = replaced
        .values()
        .next()
        .and_then(|r| r.serial.clone())
        .expect("serial");
    check_members_serve(&w, &[&a, &b, &c], &third).await;
    let records = w.coord.audit_records().await.expect("audit");
    assert_eq!(of_kind(&records, "certificate_revoked").len(), 1);
    assert_eq!(
        of_kind(&records, "certificate_issued").len(),
        3,
        "one replacement for the whole group"
    );

    // The coordinator never held a group key (nor any host key) in clear: not in its
    // state dir (the sled store included), not in its logs.
    let mut needles = Vec::new();
    for (what, pem) in [
        ("first group key", &key_pem),
        ("renewed group key", &new_key),
    ] {
        for (form, n) in pki::key_needles(pem).expect("needles") {
            needles.push((format!("{what} {form}"), n));
        }
    }
    for h in [&a, &b, &c, &d, &e] {
        let pem = std::fs::read_to_string(h.agent.identity_key_path()).expect("identity key");
        for (form, n) in pki::key_needles(&pem).expect("needles") {
            needles.push((format!("{} identity {form}", h.spec.name), n));
        }
    }
    let logs = vec![("coordinator logs".to_owned(), w.coord.logs().into_bytes())];
    let (found, files) = pki::scan_for_needles(w.coord.state_dir(), &logs, &needles).expect("scan");
    assert!(files > 0, "scanned nothing");
    assert!(
        found.is_empty(),
        "private key material on the coordinator:\n{}",
        found.join("\n")
    );
    // Nor did the host outside the group receive it.
    let dir = e.agent.state_dir().parent().unwrap_or(e.agent.state_dir());
    let group_needles: Vec<(String, Vec<u8>)> = needles
        .iter()
        .filter(|(w, _)| w.contains("group key"))
        .cloned()
        .collect();
    let (found, _) = pki::scan_for_needles(dir, &[], &group_needles).expect("scan");
    assert!(
        found.is_empty(),
        "group key on a host outside the group:\n{}",
        found.join("\n")
    );
    w.coord.audit_verify().await.expect("audit chain intact");
}
