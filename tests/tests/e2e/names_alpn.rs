//! TLS-ALPN-01 ordered by the real coordinator as the first choice, and one certificate
//! into two targets: namespace hosts with nginx, pebble resolving names through knot and
//! validating on the hosts' ports 80 and 443, the real agent answering TLS-ALPN-01
//! standalone on port 443 (nginx's TLS moved to another port) or on loopback behind
//! nginx's `stream` + `ssl_preread` front (`deploy/nginx/acme-tls-alpn.conf`) on 443.
//! Each test checks the certificate is issued, installed and served (for the name with
//! SNI, for an address without), that `certs --json` says which challenge validated each
//! identifier, and the audit trail.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use certfleet_tests::dns::ZONE;
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec, TlsAlpn};
use certfleet_tests::netns::require_namespaces;
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{pki, tlsutil, CertRow};
use serde_json::Value;

use crate::names::{
    assert_audited, assert_served_for_name, audit_of, enroll_and_start, host_with,
    second_nginx_target, strings, world, SECOND_PORT,
};
use crate::world::World;

/// nginx's TLS port while the agent answers TLS-ALPN-01 standalone on 443.
const WEB_TLS_PORT: u16 = 8444;

/// A policy giving each host one certificate `site` with `names` (TOML list body),
/// addresses `ips` and `challenges` (TOML list body).
fn policy(names: &str, ips: &str, challenges: &str) -> String {
    format!(
        "[[policy]]\nname = \"alpn\"\n\n[[policy.certificate]]\nname = \"site\"\n\
         names = [{names}]\nips = \"{ips}\"\nchallenges = [{challenges}]\n"
    )
}

/// Every identifier of `row` was validated by `kind`, and they are exactly `want`.
fn assert_validated_by(row: &CertRow, want: &BTreeSet<String>, kind: &str) {
    let expected: BTreeMap<String, String> =
        want.iter().map(|i| (i.clone(), kind.to_owned())).collect();
    assert_eq!(row.validated_by, expected, "validated_by: {row:?}");
}

/// The challenge type of each `order_created` and `challenge_validated` record of the
/// certificate: only `kind`, and at least one of each.
fn assert_only_challenge_type(records: &[Value], kind: &str) {
    for what in ["order_created", "challenge_validated"] {
        let types: Vec<&str> = records
            .iter()
            .filter(|r| r["kind"] == what)
            .map(|r| {
                // order_created says `challenge`, the challenge records `type`.
                r["details"]["type"]
                    .as_str()
                    .or(r["details"]["challenge"].as_str())
                    .unwrap_or("(none)")
            })
            .collect();
        assert!(
            !types.is_empty() && types.iter().all(|t| *t == kind),
            "{what} records' types {types:?}, want only {kind}: {records:#?}"
        );
    }
}

/// Waits until nothing accepts TCP on `addr` (from the root namespace) — the agent's
/// standalone listener is gone once no challenge is live.
async fn wait_closed(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
                .is_ok_and(|r| r.is_ok());
        if !open {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections with no challenge live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace host with nginx (webroot for HTTP-01, TLS on `WEB_TLS_PORT`) whose agent
/// answers TLS-ALPN-01 standalone on port 443; `names` published in knot. Enrolled and
/// running; port 443 is free before the agent starts.
async fn standalone_host(
    w: &World,
    lan: &certfleet_tests::netns::Lan,
    name: &str,
    names: &[&str],
) -> FleetHost {
    let spec = HostSpec::new(name, ServerKind::Nginx, Challenge::Webroot)
        .with_https_port(WEB_TLS_PORT)
        .with_tls_alpn(TlsAlpn::Standalone(443));
    let mut h = host_with(w, lan, spec, names, &[]).await;
    for ip in h.ns.ips() {
        // Nobody holds 443 while no challenge is live: nginx serves TLS elsewhere.
        wait_closed(SocketAddr::new(ip, 443)).await;
    }
    enroll_and_start(&mut h, w, lan).await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_tls_alpn01_standalone_first_choice_issues_installs_and_serves() {
    let Some(lan) = require_namespaces("names_alpn::standalone") else {
        return;
    };
    let w = world(
        &lan,
        &policy("\"{hostname}.example.test\"", "none", "\"tls-alpn-01\""),
    )
    .await;
    let name = format!("nals1.{ZONE}");
    let mut h = standalone_host(&w, &lan, "nals1", &[&name]).await;
    let row = w.wait_served(&mut h).await;

    assert_eq!(row.identifiers, vec![name.clone()], "{row:?}");
    assert_validated_by(&row, &BTreeSet::from([name.clone()]), "tls-alpn-01");
    assert_eq!(row.installed_serial, row.serial, "{row:?}");
    assert_eq!(row.served_serial, row.serial, "{row:?}");
    // The agent checked it where nginx serves it (the target's verify addresses).
    let want_on: BTreeSet<String> = h.https_addrs().iter().map(|a| a.to_string()).collect();
    assert_eq!(
        row.served_on.iter().cloned().collect::<BTreeSet<_>>(),
        want_on,
        "{row:?}"
    );

    // nginx serves it for the name on every address of the host; the key is the leaf's.
    let leaf = assert_served_for_name(&h.https_addrs(), &name, &row, &w.root).await;
    assert_eq!(leaf.dns_sans, vec![name.clone()]);
    assert!(leaf.ip_sans.is_empty(), "{:?}", leaf.ip_sans);
    let certs = &h.web.options().certs;
    let key_pem = std::fs::read_to_string(&certs.key).expect("key");
    assert_eq!(
        pki::key_spki_from_pem(&key_pem).expect("key"),
        leaf.spki_der
    );
    assert_eq!(pki::file_mode(&certs.key).expect("mode"), 0o600);
    // HTTP-01 was never tried: nothing fetched a challenge from nginx's port 80.
    let access = h.web.access_log();
    assert!(
        !access.contains("/.well-known/acme-challenge/"),
        "an HTTP-01 fetch, but only TLS-ALPN-01 was allowed:\n{access}"
    );
    // The agent let go of 443 after the challenge.
    for ip in h.ns.ips() {
        wait_closed(SocketAddr::new(ip, 443)).await;
    }

    let records = audit_of(&w.coord, &row.cert_id).await;
    assert_audited(
        &records,
        &[
            "order_created",
            "challenge_validated",
            "certificate_issued",
            "certificate_installed",
            "certificate_served",
        ],
        std::slice::from_ref(&name),
        &BTreeSet::new(),
    );
    assert_only_challenge_type(&records, "tls-alpn-01");
    w.coord.audit_verify().await.expect("audit chain intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_tls_alpn01_behind_the_nginx_front_with_the_real_coordinator() {
    let Some(lan) = require_namespaces("names_alpn::front") else {
        return;
    };
    let w = world(
        &lan,
        &policy("\"{hostname}.example.test\"", "none", "\"tls-alpn-01\""),
    )
    .await;
    let name = format!("nafr1.{ZONE}");
    // nginx holds 443 with the shipped front; the agent listens on loopback only, so the
    // CA can reach it through the front and nowhere else.
    let spec =
        HostSpec::new("nafr1", ServerKind::Nginx, Challenge::Webroot).with_tls_alpn(TlsAlpn::Front);
    let mut h = host_with(&w, &lan, spec, &[&name], &[]).await;
    let https = h.https_addrs();
    assert!(https.iter().all(|a| a.port() == 443), "{https:?}");
    // Before: browsers through the front reach nginx's TLS server (bootstrap certificate).
    let bootstrap = h.web.bootstrap().expect("bootstrap").leaf_der.clone();
    for addr in &https {
        // nginx's stream front may still be coming up on a loaded machine: a short retry.
        let mut tries = 0;
        let leaf = loop {
            match tlsutil::served_leaf(*addr).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{addr}: through the front: {e:#}"),
            }
        };
        assert_eq!(
            leaf, bootstrap,
            "{addr}: the front's default route is nginx"
        );
    }
    enroll_and_start(&mut h, &w, &lan).await;
    let row = w.wait_served(&mut h).await;

    assert_eq!(row.identifiers, vec![name.clone()], "{row:?}");
    assert_validated_by(&row, &BTreeSet::from([name.clone()]), "tls-alpn-01");
    assert_eq!(row.installed_serial, row.serial, "{row:?}");
    assert_eq!(row.served_serial, row.serial, "{row:?}");
    // The agent's served check went to IP:443, i.e. through the front.
    let want_on: BTreeSet<String> = https.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        row.served_on.iter().cloned().collect::<BTreeSet<_>>(),
        want_on,
        "{row:?}"
    );
    // Clients through the front get it for the name (SNI), chain verified.
    let leaf = assert_served_for_name(&https, &name, &row, &w.root).await;
    assert_eq!(leaf.dns_sans, vec![name.clone()]);
    let installed = pki::leaf_info_from_file(&h.web.options().certs.fullchain).expect("file");
    assert_eq!(installed.serial_hex, leaf.serial_hex);
    assert!(
        h.web.is_running(),
        "nginx (front and web server) still runs after the reload"
    );

    let records = audit_of(&w.coord, &row.cert_id).await;
    assert_audited(
        &records,
        &[
            "order_created",
            "challenge_validated",
            "certificate_issued",
            "certificate_installed",
            "certificate_served",
        ],
        std::slice::from_ref(&name),
        &BTreeSet::new(),
    );
    assert_only_challenge_type(&records, "tls-alpn-01");
    w.coord.audit_verify().await.expect("audit chain intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_ip_certificate_via_tls_alpn01_first_choice_v4_and_v6() {
    let Some(lan) = require_namespaces("names_alpn::ip") else {
        return;
    };
    // RFC 8738: the CA connects to each address with its reverse name as SNI.
    let w = world(&lan, &policy("", "all", "\"tls-alpn-01\", \"http-01\"")).await;
    let mut h = standalone_host(&w, &lan, "naip1", &[]).await;
    let row = w.wait_served(&mut h).await;

    let ips: BTreeSet<IpAddr> = h.ns.ips().into_iter().collect();
    assert!(
        ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6),
        "namespace hosts have both families: {ips:?}"
    );
    let want: BTreeSet<String> = ips.iter().map(|ip| ip.to_string()).collect();
    assert_eq!(
        row.identifiers.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "{row:?}"
    );
    assert_validated_by(&row, &want, "tls-alpn-01");
    assert_eq!(row.served_serial, row.serial, "{row:?}");
    // Served without SNI on every address, exactly the host's IPs, verified for each IP.
    h.check_serves(&row, &w.root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let access = h.web.access_log();
    assert!(
        !access.contains("/.well-known/acme-challenge/"),
        "the first choice was TLS-ALPN-01, yet HTTP-01 was fetched:\n{access}"
    );

    let records = audit_of(&w.coord, &row.cert_id).await;
    assert_audited(
        &records,
        &[
            "order_created",
            "challenge_validated",
            "certificate_issued",
            "certificate_installed",
            "certificate_served",
        ],
        &[],
        &ips,
    );
    assert_only_challenge_type(&records, "tls-alpn-01");
    assert!(
        !records.iter().any(|r| r["kind"] == "challenge_fallback"),
        "{records:#?}"
    );
    w.coord.audit_verify().await.expect("audit chain intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_one_certificate_into_two_targets_serves_the_same_leaf_and_key_on_both() {
    let Some(lan) = require_namespaces("names_alpn::one_into_two") else {
        return;
    };
    let mut p = policy("\"{hostname}.example.test\"", "none", "\"http-01\"");
    p.push_str("targets = [\"default\", \"second\"]\n");
    let w = world(&lan, &p).await;
    let name = format!("nboth1.{ZONE}");
    let spec = HostSpec::new("nboth1", ServerKind::Nginx, Challenge::Webroot);
    let mut h = host_with(&w, &lan, spec, &[&name], &[]).await;
    let second = second_nginx_target(&mut h, "second").await;
    enroll_and_start(&mut h, &w, &lan).await;
    let row = w.wait_served(&mut h).await;

    assert_eq!(
        row.target, "default,second",
        "one record, both targets: {row:?}"
    );
    assert_validated_by(&row, &BTreeSet::from([name.clone()]), "http-01");
    assert_eq!(row.installed_serial, row.serial, "{row:?}");
    assert_eq!(row.served_serial, row.serial, "{row:?}");
    let rows: Vec<CertRow> = w
        .coord
        .certs()
        .await
        .expect("certs")
        .into_iter()
        .filter(|r| r.host_id == row.host_id)
        .collect();
    assert_eq!(rows.len(), 1, "one certificate for the host: {rows:#?}");

    // nginx on 443 and the second nginx on SECOND_PORT serve the same leaf for the name.
    let first = assert_served_for_name(&h.https_addrs(), &name, &row, &w.root).await;
    let other = assert_served_for_name(&second.https_addrs(), &name, &row, &w.root).await;
    assert_eq!(first.serial_hex, other.serial_hex);
    assert!(second.https_addrs().iter().all(|a| a.port() == SECOND_PORT));
    // Each target holds the same key, the leaf's, 0600.
    let key_a = std::fs::read(&h.web.options().certs.key).expect("default key");
    let key_b = std::fs::read(&second.options().certs.key).expect("second key");
    assert_eq!(key_a, key_b, "both targets hold the same key");
    assert_eq!(
        pki::key_spki_from_pem(&String::from_utf8_lossy(&key_a)).expect("key"),
        first.spki_der
    );
    for path in [&h.web.options().certs.key, &second.options().certs.key] {
        assert_eq!(
            pki::file_mode(path).expect("mode"),
            0o600,
            "{}",
            path.display()
        );
    }

    // One issuance, installed and served in each target, same serial.
    let records = audit_of(&w.coord, &row.cert_id).await;
    assert_audited(
        &records,
        &["order_created", "certificate_issued"],
        std::slice::from_ref(&name),
        &BTreeSet::new(),
    );
    let issued = records
        .iter()
        .filter(|r| r["kind"] == "certificate_issued")
        .count();
    assert_eq!(issued, 1, "{records:#?}");
    for kind in ["certificate_installed", "certificate_served"] {
        let targets: BTreeSet<String> = records
            .iter()
            .filter(|r| r["kind"] == kind)
            .filter(|r| strings(&r["names"]) == [name.clone()])
            .filter(|r| {
                r["serial"].as_str().map(pki::normalize_serial)
                    == row.serial.as_deref().map(pki::normalize_serial)
            })
            .filter_map(|r| r["details"]["target"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            targets,
            BTreeSet::from(["default".to_owned(), "second".to_owned()]),
            "{kind} for each target: {records:#?}"
        );
    }
    drop(second);
}
