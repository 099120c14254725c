//! The life of a host on namespace hosts with nginx and pebble: addresses that change under
//! a running agent with `ips = "auto"` (a new certificate for the new set, served; the one
//! naming a lost address revoked and audited; the released address taken by another host
//! at once), decommission after `[fleet] decommission_after`, and `certfleet-agent leave`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{CertRow, Coordinator};

use crate::metrics::scrape;
use crate::world::{lan_pebble_and_coordinator, pebble_on_80_443};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The LAN's ranges (private: `ips = "auto"` takes them only when included).
const LAN_RANGES: &[&str] = &["10.99.0.0/16", "fd99::/16"];

/// An nginx namespace host whose agent uses `ips = "auto"` (rescan every second),
/// enrolled and running.
async fn auto_host(lan: &Lan, coord: &Coordinator, name: &str) -> FleetHost {
    let mut h = FleetHost::new(
        lan,
        HostSpec::new(name, ServerKind::Nginx, Challenge::Webroot),
    )
    .await
    .expect("host");
    let body = h.config_body();
    h.agent
        .set_netns_auto_ips(LAN_RANGES, "1s", &body)
        .expect("auto config");
    h.enroll(coord, lan).await.expect("enroll");
    h.agent.start().expect("agent start");
    h
}

/// Waits until `h`'s certificate is served for exactly `ips`; returns its row.
async fn wait_served_for(coord: &Coordinator, h: &FleetHost, ips: &[IpAddr]) -> CertRow {
    let id = h.agent.host_id().expect("enrolled").to_owned();
    let want: BTreeSet<String> = ips.iter().map(ToString::to_string).collect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let rows = coord.certs().await.unwrap_or_default();
        if let Some(r) = rows.iter().find(|r| r.host_id == id) {
            let have: BTreeSet<String> = r.identifiers.iter().cloned().collect();
            if r.state == "served" && have == want {
                return r.clone();
            }
        }
        if Instant::now() > deadline {
            h.agent.dump_logs();
            coord.dump_logs();
            panic!(
                "{}: no certificate served for {want:?} after {TIMEOUT:?}: {rows:#?}",
                h.spec.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn audit_of(coord: &Coordinator, kind: &str) -> Vec<serde_json::Value> {
    coord
        .audit_records()
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

/// Waits until the audit has a record of `kind` for which `want` holds.
async fn wait_audit(
    coord: &Coordinator,
    kind: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let records = audit_of(coord, kind).await;
        if let Some(r) = records.iter().find(|r| want(r)) {
            return r.clone();
        }
        if Instant::now() > deadline {
            coord.dump_logs();
            panic!("no matching {kind} record after {TIMEOUT:?}: {records:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_added_and_removed_under_a_running_agent_with_ips_auto() {
    let Some(lan) = require_namespaces("lifecycle::ips_auto") else {
        return;
    };
    let (pebble, coord) = lan_pebble_and_coordinator(
        &lan,
        pebble_on_80_443(),
        CoordinatorOptions {
            retry_base_secs: Some(2),
            ..Default::default()
        },
    )
    .await;
    let root = pebble.issuing_root_der().await.expect("root");
    let mut a = auto_host(&lan, &coord, "auto-a").await;
    let a_id = a.agent.host_id().expect("id").to_owned();
    let first = wait_served_for(&coord, &a, &a.ns.ips()).await;

    // An address is added to the live host (and to its web server): the agent sees it
    // without a restart, and the host gets and serves a certificate for the new set.
    let old_v4 = a.ns.ipv4().expect("v4");
    let added = IpAddr::V4(lan.v4(200));
    a.ns.add_ip(added).expect("add address");
    a.web.set_ips(a.ns.ips()).expect("web ips");
    a.web.reload().await.expect("web reload");
    let grown = wait_served_for(&coord, &a, &a.ns.ips()).await;
    assert_ne!(grown.serial, first.serial, "a new certificate");
    a.check_serves(&grown, &root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pid_before = a.agent.child().map(|c| c.pid());
    assert!(pid_before.is_some(), "the agent process kept running");

    // The original IPv4 address goes away: a certificate for the rest, and the one that
    // named the lost address is revoked (superseded), audited.
    // As systemd-networkd sets on real hosts: removing the primary IPv4 address promotes
    // the added one instead of deleting it with it (and the LAN route stays).
    let out =
        a.ns.exec(
            "sysctl",
            &["-w", "net.ipv4.conf.eth0.promote_secondaries=1"],
        )
        .await
        .expect("sysctl");
    assert!(out.status.success(), "{out:?}");
    a.ns.remove_ip(IpAddr::V4(old_v4)).expect("remove address");
    a.web.set_ips(a.ns.ips()).expect("web ips");
    a.web.reload().await.expect("web reload");
    let shrunk = wait_served_for(&coord, &a, &a.ns.ips()).await;
    a.check_serves(&shrunk, &root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let lost = wait_audit(&coord, "addresses_lost", |r| {
        r["host_id"] == a_id.as_str() && r.to_string().contains(&old_v4.to_string())
    })
    .await;
    assert_eq!(lost["actor"], format!("host:{a_id}"), "{lost:#}");
    let grown_serial = grown.serial.clone().expect("serial");
    let revoked = wait_audit(&coord, "certificate_revoked", |r| {
        r["serial"] == grown_serial.as_str()
    })
    .await;
    assert_eq!(revoked["details"]["reason"], "superseded", "{revoked:#}");
    assert!(
        audit_of(&coord, "certificate_revoked")
            .await
            .iter()
            .all(|r| r["serial"] != shrunk.serial.clone().unwrap_or_default().as_str()),
        "the certificate for the new set is not revoked"
    );
    assert_eq!(
        a.agent.child().map(|c| c.pid()),
        pid_before,
        "followed live, no restart of the agent process"
    );

    // The released address is claimable by another host at once.
    let mut b = FleetHost::new(
        &lan,
        HostSpec::new("auto-b", ServerKind::Nginx, Challenge::Webroot),
    )
    .await
    .expect("host b");
    b.ns.add_ip(IpAddr::V4(old_v4))
        .expect("b takes the address");
    // The bridge still maps the address to the first host's link (a cloud moving an
    // address announces it): forget that, so the CA reaches the new holder now.
    let flushed = std::process::Command::new("ip")
        .args(["neigh", "flush", "to", &old_v4.to_string()])
        .status()
        .expect("ip neigh flush");
    assert!(flushed.success());
    b.web.set_ips(b.ns.ips()).expect("web ips");
    b.web.reload().await.expect("web reload");
    let body = b.config_body();
    b.agent
        .set_netns_auto_ips(LAN_RANGES, "1s", &body)
        .expect("auto config");
    b.enroll(&coord, &lan).await.expect("enroll b");
    b.agent.start().expect("start b");
    let b_row = wait_served_for(&coord, &b, &b.ns.ips()).await;
    assert!(b_row.identifiers.contains(&old_v4.to_string()), "{b_row:?}");
    b.check_serves(&b_row, &root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_seen_for_decommission_after_is_revoked_and_removed() {
    let Some(lan) = require_namespaces("lifecycle::decommission") else {
        return;
    };
    let metrics_port = certfleet_tests::net::free_port().expect("port");
    let (_pebble, coord) = lan_pebble_and_coordinator(
        &lan,
        pebble_on_80_443(),
        CoordinatorOptions {
            retry_base_secs: Some(2),
            extra_config: format!(
                "\n[fleet]\ndecommission_after = \"8s\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
            ),
            ..Default::default()
        },
    )
    .await;
    let mut gone = auto_host(&lan, &coord, "gone").await;
    let mut stays = auto_host(&lan, &coord, "stays").await;
    let gone_id = gone.agent.host_id().expect("id").to_owned();
    let stays_id = stays.agent.host_id().expect("id").to_owned();
    let row = wait_served_for(&coord, &gone, &gone.ns.ips()).await;
    wait_served_for(&coord, &stays, &stays.ns.ips()).await;
    let serial = row.serial.clone().expect("serial");

    // The VM dies (no leave): its agent is killed.
    gone.agent.kill().await.expect("kill");
    let text = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = scrape(metrics_port).await;
            // The host's id and its name (the labels an alert names it by).
            if text.lines().any(|l| {
                l.starts_with(&format!(
                    "certfleet_host_decommission_in_seconds{{host_id=\"{gone_id}\",hostname=\""
                ))
            }) {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "no countdown for {gone_id}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("certfleet_host_decommission_in_seconds")
                && l.contains(&stays_id)),
        "a connected host has no countdown:\n{text}"
    );

    let rec = wait_audit(&coord, "host_decommissioned", |r| {
        r["host_id"] == gone_id.as_str()
    })
    .await;
    assert_eq!(rec["actor"], "coordinator:decommission", "{rec:#}");
    assert_eq!(
        rec["details"]["revoked_serials"],
        serde_json::json!([serial]),
        "{rec:#}"
    );
    assert!(
        rec["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not seen since")),
        "{rec:#}"
    );
    let revoked = wait_audit(&coord, "certificate_revoked", |r| {
        r["serial"] == serial.as_str()
    })
    .await;
    assert_eq!(revoked["details"]["reason"], "cessationOfOperation");
    let hosts = coord.hosts().await.expect("hosts");
    assert!(
        hosts.iter().all(|h| h.host_id != gone_id),
        "removed: {hosts:?}"
    );
    assert!(
        hosts.iter().any(|h| h.host_id == stays_id),
        "the connected host stays: {hosts:?}"
    );
    let rows = coord.certs().await.expect("certs");
    assert!(rows.iter().all(|r| r.host_id != gone_id), "{rows:#?}");
    // Its identity is refused from then on.
    let out = gone.agent.cli(&["leave"]).await.expect("leave");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("already removed"),
        "{out:?}"
    );
    // Still there after a few more sweeps.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(coord
        .hosts()
        .await
        .expect("hosts")
        .iter()
        .any(|h| h.host_id == stays_id));
    stays
        .agent
        .stop(Duration::from_secs(5))
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_revokes_removes_and_forgets_the_identity() {
    let Some(lan) = require_namespaces("lifecycle::leave") else {
        return;
    };
    let (_pebble, coord) = lan_pebble_and_coordinator(
        &lan,
        pebble_on_80_443(),
        CoordinatorOptions {
            retry_base_secs: Some(2),
            ..Default::default()
        },
    )
    .await;
    let mut h = auto_host(&lan, &coord, "leaver").await;
    let id = h.agent.host_id().expect("id").to_owned();
    let row = wait_served_for(&coord, &h, &h.ns.ips()).await;
    let serial = row.serial.clone().expect("serial");

    // As the shutdown unit does: `leave` while the agent still runs.
    let out = h.agent.cli(&["leave"]).await.expect("leave");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!("host {id} left the fleet")) && stdout.contains(&serial),
        "{stdout}"
    );
    let rec = wait_audit(&coord, "host_left", |r| r["host_id"] == id.as_str()).await;
    assert_eq!(rec["actor"], format!("host:{id}"), "{rec:#}");
    assert_eq!(
        rec["details"]["revoked_serials"],
        serde_json::json!([serial])
    );
    let revoked = wait_audit(&coord, "certificate_revoked", |r| {
        r["serial"] == serial.as_str()
    })
    .await;
    assert_eq!(revoked["details"]["reason"], "cessationOfOperation");
    assert!(coord
        .hosts()
        .await
        .expect("hosts")
        .iter()
        .all(|x| x.host_id != id));
    // The identity is gone; what the target installed stays in place.
    let state = h.agent.state_dir().to_path_buf();
    for f in ["enrollment.json", "identity.key", "identity.pem"] {
        assert!(!state.join(f).exists(), "{f} deleted");
    }
    assert!(
        h.agent.tls_dir().join("key.pem").exists(),
        "installed key stays"
    );
    let status = h.agent.cli(&["status"]).await.expect("status");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("not enrolled"),
        "{status:?}"
    );
    // A second run (the unit stopped again) is fine.
    let again = h.agent.cli(&["leave"]).await.expect("leave again");
    assert!(
        again.status.success() && String::from_utf8_lossy(&again.stdout).contains("not enrolled"),
        "{again:?}"
    );
    let _ = h.agent.kill().await;
}
