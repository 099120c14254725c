//! Two hosts, each with an IPv4 and an IPv6 address, get certificates end to end; the
//! private keys never leave the hosts.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use certfleet_tests::{pki, Agent, RestartMode};

use crate::support::{check_installed, ip_set, pebble_and_coordinator, ISSUE_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_get_ip_certificates_and_keys_stay_home() {
    let (pebble, mut coord) = pebble_and_coordinator().await;

    let fp = coord.ca_fingerprint_cli().await.expect("ca-fingerprint");
    assert_eq!(
        fp,
        coord.ca_sha256(),
        "ca-fingerprint must print what init printed"
    );

    let mut agents = vec![
        Agent::new("alpha", pebble.http_port()).expect("agent alpha"),
        Agent::new("beta", pebble.http_port()).expect("agent beta"),
    ];
    for a in &mut agents {
        a.enroll_with(&coord).await.expect("enroll");
        for f in certfleet_tests::agent::ENROLLMENT_FILES {
            assert!(
                a.state_dir().join(f).is_file(),
                "{}: {f} missing after enroll",
                a.name()
            );
        }
        let mode = pki::file_mode(&a.identity_key_path()).expect("stat identity.key");
        assert_eq!(mode, 0o600, "{}: identity.key mode {mode:o}", a.name());
        a.start().expect("start agent");
    }

    let root = pebble
        .issuing_root_der()
        .await
        .expect("pebble issuing root");
    for a in &mut agents {
        let row = a
            .wait_installed(&coord, ISSUE_TIMEOUT)
            .await
            .expect("certificate installed");
        check_installed(a, &row, &root);
    }

    // The fleet view: both hosts connected, with their IPs.
    let hosts = coord.hosts().await.expect("hosts --json");
    assert_eq!(hosts.len(), 2, "hosts: {hosts:?}");
    for a in &agents {
        let id = a.id().expect("enrolled");
        let h = hosts
            .iter()
            .find(|h| h.host_id == id)
            .unwrap_or_else(|| panic!("host {id} missing from {hosts:?}"));
        assert!(h.connected, "{} should be connected: {h:?}", a.name());
        let want: BTreeSet<IpAddr> = a.ips().into_iter().collect();
        assert_eq!(ip_set(&h.ips), want, "{}: hosts --json ips", a.name());
        assert_eq!(
            h.hostname,
            a.name(),
            "{}: --name should become the hostname",
            a.name()
        );
        assert!(
            h.targets.iter().any(|t| t == "default"),
            "{}: targets {:?}",
            a.name(),
            h.targets
        );
        pki::rfc3339_unix(&h.enrolled).expect("enrolled is RFC 3339");
    }
    let certs = coord.certs().await.expect("certs --json");
    assert_eq!(certs.len(), 2, "one certificate per host: {certs:?}");

    // The private keys never left the hosts: not in the coordinator's state dir (sled
    // store included) nor in anything it logged.
    let mut needles = Vec::new();
    for a in &agents {
        let pem = std::fs::read_to_string(a.key_path()).expect("read key");
        for (what, n) in pki::key_needles(&pem).expect("key needles") {
            needles.push((format!("{} {what}", a.name()), n));
        }
        let pem = std::fs::read_to_string(a.identity_key_path()).expect("read identity key");
        for (what, n) in pki::key_needles(&pem).expect("identity key needles") {
            needles.push((format!("{} identity {what}", a.name()), n));
        }
    }
    let logs = vec![("coordinator logs".to_owned(), coord.logs().into_bytes())];
    let (findings, files) =
        pki::scan_for_needles(coord.state_dir(), &logs, &needles).expect("scan state dir");
    assert!(
        files > 0,
        "scanned no files under {}",
        coord.state_dir().display()
    );
    assert!(
        findings.is_empty(),
        "private key material found outside the hosts:\n{}",
        findings.join("\n")
    );

    // Clean shutdown on SIGTERM.
    for a in &mut agents {
        let (st, by_itself) = a
            .stop(Duration::from_secs(10))
            .await
            .expect("stop agent")
            .expect("agent was running");
        assert!(
            by_itself && st.success(),
            "{}: SIGTERM should stop the agent cleanly, got {st} (by itself: {by_itself})",
            a.name()
        );
    }
    let (st, by_itself) = coord
        .stop_current(RestartMode::Term)
        .await
        .expect("stop coordinator")
        .expect("coordinator was running");
    assert!(
        by_itself && st.success(),
        "SIGTERM should stop the coordinator cleanly, got {st} (by itself: {by_itself})"
    );
}
