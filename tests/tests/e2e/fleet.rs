//! A fleet of namespace hosts with real nginx and apache: every host ends up *serving* a
//! trusted certificate for exactly its IPs; a broken web server config and a web server
//! that ignores the reload are caught and rolled back; an IP change gets a new
//! certificate; partitions and a coordinator outage leave served certificates alone.
//!
//! Each host is a network namespace on a bridge with its own IPv4 and IPv6 address; pebble
//! (root namespace) validates HTTP-01 on the real port 80 of each. Tests skip with a
//! clear message where namespaces cannot be made (and fail instead under
//! `CERTFLEET_REQUIRE_NETNS=1`, as `tests/run.sh` sets as root).

use std::net::IpAddr;
use std::time::Duration;

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::fleet::{wait_all_served, Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::{Redirect, ServerKind};
use certfleet_tests::{pki, CertRow, Coordinator, Pebble};

use crate::world::{lan_pebble_and_coordinator, pebble_on_80_443};

const SERVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the coordinator stays down in the outage test (hosts are watched throughout).
const OUTAGE: Duration = Duration::from_secs(3);

async fn pebble_and_coordinator(lan: &Lan, retry_base_secs: Option<u64>) -> (Pebble, Coordinator) {
    let coord_opts = CoordinatorOptions {
        retry_base_secs,
        ..Default::default()
    };
    lan_pebble_and_coordinator(lan, pebble_on_80_443(), coord_opts).await
}

async fn start_hosts(lan: &Lan, coord: &Coordinator, specs: Vec<HostSpec>) -> Vec<FleetHost> {
    let mut hosts = Vec::new();
    for spec in specs {
        let mut h = FleetHost::new(lan, spec).await.expect("host");
        h.enroll(coord, lan).await.expect("enroll");
        h.agent.start().expect("agent start");
        hosts.push(h);
    }
    hosts
}

fn row_of<'a>(rows: &'a [CertRow], h: &FleetHost) -> &'a CertRow {
    let id = h.agent.host_id().expect("enrolled");
    rows.iter().find(|r| r.host_id == id).expect("row")
}

/// The host's certificate row, waiting for the coordinator to have one.
async fn cert_row(coord: &Coordinator, h: &FleetHost) -> CertRow {
    let id = h.agent.host_id().expect("enrolled");
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    loop {
        let rows = coord.certs().await.unwrap_or_default();
        if let Some(r) = rows.into_iter().find(|r| r.host_id == id) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate row for {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn dump(hosts: &[FleetHost], coord: &Coordinator) {
    for h in hosts {
        h.agent.dump_logs();
        eprintln!("--- {} error log:\n{}", h.spec.name, h.web.error_log());
    }
    coord.dump_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hosts_nginx_and_apache_serve_verified_certificates() {
    let Some(lan) = require_namespaces("fleet::five_hosts") else {
        return;
    };
    let (pebble, coord) = pebble_and_coordinator(&lan, None).await;
    let root = pebble.issuing_root_der().await.expect("root");
    let specs = vec![
        HostSpec::new("web1", ServerKind::Nginx, Challenge::Webroot),
        HostSpec::new("web2", ServerKind::Nginx, Challenge::Proxy),
        HostSpec::new("web3", ServerKind::Nginx, Challenge::Standalone),
        HostSpec::new("app1", ServerKind::Apache, Challenge::Webroot),
        HostSpec::new("app2", ServerKind::Apache, Challenge::Proxy),
    ];
    let mut hosts = start_hosts(&lan, &coord, specs).await;
    let rows = {
        let mut refs: Vec<&mut FleetHost> = hosts.iter_mut().collect();
        wait_all_served(&coord, &mut refs, SERVE_TIMEOUT).await
    };
    let rows = rows.unwrap_or_else(|e| {
        dump(&hosts, &coord);
        panic!("{e:#}")
    });
    for h in &hosts {
        let row = row_of(&rows, h);
        h.check_serves(row, &root)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let want: Vec<String> = h.ns.ips().iter().map(|a| format!("{a}")).collect();
        assert_eq!(row.served_on.len(), want.len(), "{}: {row:?}", h.spec.name);
        assert_eq!(row.installed_serial, row.serial);
        assert_eq!(row.served_serial, row.serial);
        // The challenge went the configured way: nothing left in the webroot.
        if let Some(dir) = h.web.challenge_dir() {
            let left: Vec<_> = std::fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(
                left.is_empty(),
                "{}: tokens left in the webroot: {left:?}",
                h.spec.name
            );
        }
    }
    // The audit trail says where each certificate is served.
    let audit = coord
        .cli_ok(&["audit", "--kind", "certificate_served", "--json"])
        .await
        .expect("audit");
    assert_eq!(audit.lines().count(), hosts.len(), "{audit}");
    // The table shows issued, installed and served apart.
    let table = coord.cli_ok(&["certs"]).await.expect("certs table");
    assert!(
        table.contains("SERVED") && table.contains("INSTALLED"),
        "{table}"
    );
    assert_eq!(table.matches(" served ").count(), hosts.len(), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_nginx_config_is_rolled_back_reported_and_audited() {
    let Some(lan) = require_namespaces("fleet::broken_nginx_config") else {
        return;
    };
    let (pebble, coord) = pebble_and_coordinator(&lan, Some(2)).await;
    let mut hosts = start_hosts(
        &lan,
        &coord,
        vec![HostSpec::new(
            "broken",
            ServerKind::Nginx,
            Challenge::Webroot,
        )],
    )
    .await;
    {
        let mut refs: Vec<&mut FleetHost> = hosts.iter_mut().collect();
        wait_all_served(&coord, &mut refs, SERVE_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let h = &mut hosts[0];
    let first = cert_row(&coord, h).await;
    let first_serial = pki::normalize_serial(first.serial.as_deref().expect("serial"));

    // Someone breaks the nginx config; the next certificate must not take the host down.
    h.web.break_config().expect("break");
    let out = coord
        .renew(&["--host", h.agent.host_id().expect("id")])
        .await
        .expect("renew");
    assert!(out.status.success());
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    let row = loop {
        let row = cert_row(&coord, h).await;
        if row
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("config test"))
        {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no config-test error: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new_serial = pki::normalize_serial(row.serial.as_deref().expect("serial"));
    assert_ne!(new_serial, first_serial, "a new certificate was issued");
    assert_eq!(
        row.installed_serial.as_deref().map(pki::normalize_serial),
        Some(first_serial.clone()),
        "the host reports the previous certificate back in place: {row:?}"
    );
    assert_eq!(row.state, "issued", "{row:?}");
    // Still serving the old certificate, from files that match it.
    assert_eq!(h.served_serial().await.expect("served"), first_serial);
    let audit = coord
        .cli_ok(&["audit", "--kind", "certificate_rolled_back", "--json"])
        .await
        .expect("audit");
    assert!(audit.contains("config_test_failed"), "{audit}");
    let table = coord.cli_ok(&["certs"]).await.expect("certs");
    assert!(
        table.contains("config test"),
        "error visible in certs:\n{table}"
    );
    // `status` exits 3 naming the failing certificate (for cron and monitoring scripts).
    let (code, status) = coord.status_json().await.expect("status");
    assert_eq!(code, 3, "{status:#}");
    assert!(
        status["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p["kind"] == "certificate_failing"
                && p["subject"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&row.cert_id))),
        "{status:#}"
    );
    let text = coord.cli(&["status"]).await.expect("status");
    assert_eq!(text.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("certificate_failing"),
        "{text:?}"
    );

    // Fixed: the retry installs and serves the new certificate without anyone asking.
    h.web.restore_config().expect("restore");
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    loop {
        let row = cert_row(&coord, h).await;
        if row.state == "served" {
            assert_eq!(
                row.serial.as_deref().map(pki::normalize_serial),
                Some(new_serial.clone())
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not served after the fix: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(h.served_serial().await.expect("served"), new_serial);

    // Revoke it: the CA confirms, a replacement is issued and served.
    let row = cert_row(&coord, h).await;
    coord
        .cli_ok(&["certs", "revoke", &row.cert_id, "--reason", "keyCompromise"])
        .await
        .expect("revoke");
    let status = pebble
        .cert_status(&new_serial)
        .await
        .expect("pebble status");
    assert_eq!(status["Status"].as_str(), Some("Revoked"), "{status}");
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    let replacement = loop {
        let row = cert_row(&coord, h).await;
        let serial = row.serial.as_deref().map(pki::normalize_serial);
        if let Some(serial) = serial.filter(|s| row.state == "served" && *s != new_serial) {
            break serial;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replacement served: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // The host's audit trail tells the whole story, in order, and the chain verifies.
    let host = h.agent.host_id().expect("id").to_owned();
    let trail: Vec<serde_json::Value> = coord
        .cli_ok(&["audit", "--host", &host, "--json"])
        .await
        .expect("audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let story: Vec<(&str, Option<String>)> = vec![
        ("host_enrolled", None),
        ("order_created", None),
        ("challenge_validated", None),
        ("certificate_issued", Some(first_serial.clone())),
        ("certificate_installed", Some(first_serial.clone())),
        ("certificate_served", Some(first_serial.clone())),
        ("renewal_forced", None),
        ("certificate_issued", Some(new_serial.clone())),
        ("certificate_rolled_back", Some(new_serial.clone())),
        ("certificate_installed", Some(new_serial.clone())),
        ("certificate_served", Some(new_serial.clone())),
        ("certificate_revoked", Some(new_serial.clone())),
        ("certificate_issued", Some(replacement.clone())),
        ("certificate_served", Some(replacement.clone())),
    ];
    let mut at = 0;
    for (kind, serial) in &story {
        let found = trail[at..].iter().position(|r| {
            r["kind"] == *kind
                && serial.as_ref().is_none_or(|s| {
                    r["serial"].as_str().map(pki::normalize_serial).as_deref() == Some(s.as_str())
                })
        });
        let Some(i) = found else {
            let kinds: Vec<_> = trail
                .iter()
                .map(|r| format!("{} {}", r["kind"], r["serial"]))
                .collect();
            panic!("audit trail lacks {kind} {serial:?} after position {at}: {kinds:#?}");
        };
        at += i + 1;
    }
    let rolled = trail
        .iter()
        .find(|r| r["kind"] == "certificate_rolled_back")
        .expect("rolled back");
    let text = rolled.to_string();
    assert!(
        text.contains("config_test_failed") && text.contains(&first_serial),
        "{text}"
    );
    let served = trail
        .iter()
        .find(|r| r["kind"] == "certificate_served")
        .expect("served");
    assert_eq!(
        served.to_string().matches("443").count(),
        2,
        "served on both addresses: {served}"
    );
    let verify = coord.cli_ok(&["audit", "verify"]).await.expect("verify");
    assert!(verify.contains("intact"), "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_ignoring_the_reload_is_caught_and_rolled_back() {
    let Some(lan) = require_namespaces("fleet::ignored_reload") else {
        return;
    };
    let (_pebble, coord) = pebble_and_coordinator(&lan, None).await;
    let mut spec = HostSpec::new("deaf", ServerKind::Apache, Challenge::Proxy);
    spec.reload_ignored = true;
    spec.verify_grace_secs = 2;
    let mut hosts = start_hosts(&lan, &coord, vec![spec]).await;
    let h = &mut hosts[0];
    let bootstrap = pki::leaf_info(&h.web.bootstrap().expect("bootstrap cert").leaf_der)
        .expect("leaf")
        .serial_hex;
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    let row = loop {
        let row = cert_row(&coord, h).await;
        if row
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not served"))
        {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no served-check failure: {row:?}\n{}",
            h.agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let err = row.last_error.clone().unwrap_or_default();
    assert!(err.contains("previous certificate was put back"), "{err}");
    assert_ne!(row.state, "served");
    // The old (bootstrap) certificate is still what the host serves, from matching files.
    assert_eq!(h.served_serial().await.expect("served"), bootstrap);
    let audit = coord
        .cli_ok(&["audit", "--kind", "certificate_rolled_back", "--json"])
        .await
        .expect("audit");
    assert!(audit.contains("not_served"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_change_partition_and_coordinator_outage() {
    let Some(lan) = require_namespaces("fleet::ip_change") else {
        return;
    };
    let (pebble, mut coord) = pebble_and_coordinator(&lan, None).await;
    let root = pebble.issuing_root_der().await.expect("root");
    let mut hosts = start_hosts(
        &lan,
        &coord,
        vec![
            HostSpec::new("mover", ServerKind::Nginx, Challenge::Webroot),
            HostSpec::new("stayer", ServerKind::Nginx, Challenge::Standalone),
        ],
    )
    .await;
    {
        let mut refs: Vec<&mut FleetHost> = hosts.iter_mut().collect();
        wait_all_served(&coord, &mut refs, SERVE_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let stayer_serial = hosts[1].served_serial().await.expect("served");
    let mover_serial = hosts[0].served_serial().await.expect("served");

    // Coordinator outage: nothing the hosts serve changes while it lasts; agents come back
    // by themselves.
    coord
        .stop_current(certfleet_tests::RestartMode::Kill)
        .await
        .expect("stop");
    let outage = std::time::Instant::now();
    while outage.elapsed() < OUTAGE {
        for (h, before) in hosts.iter().zip([&mover_serial, &stayer_serial]) {
            let now = h
                .served_serial()
                .await
                .expect("still serving during the outage");
            assert_eq!(
                &now, before,
                "{}: served certificate changed during the outage",
                h.spec.name
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    coord.start_again().await.expect("start again");
    for h in &hosts {
        coord
            .wait_connected(
                h.agent.host_id().expect("id"),
                true,
                Duration::from_secs(45),
            )
            .await
            .expect("reconnects after the outage");
    }

    // Partition: the agent loses the coordinator, its host keeps serving, and it comes back.
    let stayer_id = hosts[1].agent.host_id().expect("id").to_owned();
    hosts[1].ns.link_down().expect("down");
    coord
        .wait_connected(&stayer_id, false, Duration::from_secs(60))
        .await
        .expect("seen disconnected");
    hosts[1].ns.link_up().expect("up");
    coord
        .wait_connected(&stayer_id, true, Duration::from_secs(60))
        .await
        .expect("reconnects on its own");
    assert_eq!(
        hosts[1].served_serial().await.expect("served"),
        stayer_serial
    );

    // IP change: the host's IPv4 address moves; its agent reports the new set and gets a
    // certificate for exactly that set, served on the new address.
    let h = &mut hosts[0];
    let old_v4 = h.ns.ipv4().expect("v4");
    let new_v4 = lan.v4(200);
    h.ns.remove_ip(IpAddr::V4(old_v4)).expect("remove");
    h.ns.add_ip(IpAddr::V4(new_v4)).expect("add");
    let ips = h.ns.ips();
    h.web.set_ips(ips.clone()).expect("web ips");
    h.web.reload().await.expect("web reload");
    h.agent.kill().await.expect("stop agent");
    let body = h.config_body();
    h.agent
        .set_netns_ips(ips.clone(), &body)
        .expect("agent ips");
    h.agent.start().expect("agent start");
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    let row = loop {
        let row = cert_row(&coord, h).await;
        let now: std::collections::BTreeSet<String> = row.identifiers.iter().cloned().collect();
        let want: std::collections::BTreeSet<String> = ips.iter().map(|i| i.to_string()).collect();
        if row.state == "served" && now == want {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate for the new IPs: {row:?}\n{}",
            h.agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    h.check_serves(&row, &root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The stayer was not touched by any of this.
    assert_eq!(
        hosts[1].served_serial().await.expect("served"),
        stayer_serial
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_in_front_of_the_challenge_path_is_warned() {
    let Some(lan) = require_namespaces("fleet::redirect_warning") else {
        return;
    };
    let (_pebble, coord) = pebble_and_coordinator(&lan, None).await;
    let mut spec = HostSpec::new("redir", ServerKind::Nginx, Challenge::Webroot);
    spec.redirect = Redirect::All;
    let hosts = start_hosts(&lan, &coord, vec![spec]).await;
    let h = &hosts[0];
    // The agent's self-check sees the 301 on its own challenge URL and says so, naming the
    // fix; the coordinator logs what the agent reported.
    let deadline = std::time::Instant::now() + SERVE_TIMEOUT;
    loop {
        let agent_log = h.agent.logs();
        let coord_log = coord.logs();
        if agent_log.contains("redirect") && coord_log.contains("agent self-check warnings") {
            assert!(agent_log.contains("301"), "{agent_log}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no redirect warning; agent:\n{agent_log}\ncoordinator:\n{coord_log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
