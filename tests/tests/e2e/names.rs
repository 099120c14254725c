//! DNS-name certificates end to end: namespace hosts with nginx, pebble resolving the
//! hosts' names through a real knot server and validating HTTP-01 on port 80, the real
//! coordinator ordering DNS identifiers from its `[[policy.certificate]]` templates (or
//! from the names an agent asks for, when `allowed_names` covers them), the real agent
//! installing and checking the served certificate with SNI.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use certfleet_tests::dns::ZONE;
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::{CertPaths, ServerKind, WebServer, WebServerOptions};
use certfleet_tests::{pki, tlsutil, CertRow, Coordinator};
use rustls_pki_types::CertificateDer;
use serde_json::Value;

use crate::support::QUIET_PERIOD;
use crate::world::{served, World};

/// A TOML basic string (JSON string escaping is valid TOML for these inputs).
pub(crate) fn toml_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The second TLS server of the two-targets test (nginx holds 443 for the first).
pub(crate) const SECOND_PORT: u16 = 8443;

/// The shared [`World`] (knot, pebble, coordinator) whose coordinator config ends with
/// `policy`.
pub(crate) async fn world(lan: &Lan, policy: &str) -> World {
    World::start(lan, |_, _| policy.to_owned()).await
}

/// An nginx webroot host named `name` whose DNS names (`names`, published in knot) point
/// at it; `asks` goes into the agent's config as `names = [...]`. Not enrolled yet.
async fn host(w: &World, lan: &Lan, name: &str, names: &[&str], asks: &[&str]) -> FleetHost {
    let spec = HostSpec::new(name, ServerKind::Nginx, Challenge::Webroot);
    host_with(w, lan, spec, names, asks).await
}

/// Like [`host`] for any `spec` (its names are `names`).
pub(crate) async fn host_with(
    w: &World,
    lan: &Lan,
    spec: HostSpec,
    names: &[&str],
    asks: &[&str],
) -> FleetHost {
    let mut h = FleetHost::new_with_dns(lan, spec.with_names(names), &w.knot)
        .await
        .expect("host");
    set_asked_names(&mut h, asks);
    h
}

/// Rewrites the agent's config with `names = [...]` at the top.
pub(crate) fn set_asked_names(h: &mut FleetHost, asks: &[&str]) {
    let list: Vec<String> = asks.iter().map(|n| toml_str(n)).collect();
    let body = format!("names = [{}]\n\n{}", list.join(", "), h.config_body());
    let ips = h.ns.ips();
    h.agent.set_netns_ips(ips, &body).expect("agent config");
}

pub(crate) async fn enroll_and_start(h: &mut FleetHost, w: &World, lan: &Lan) {
    h.enroll(&w.coord, lan).await.expect("enroll");
    h.agent.start().expect("agent start");
}

/// The audit records about certificate `cert_id`.
pub(crate) async fn audit_of(coord: &Coordinator, cert_id: &str) -> Vec<Value> {
    coord
        .audit_records()
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r["cert_id"] == cert_id)
        .collect()
}

pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Each kind in `kinds` has a record for the certificate whose `names` are exactly
/// `names` and whose IP `identifiers` are exactly `ips`.
pub(crate) fn assert_audited(
    records: &[Value],
    kinds: &[&str],
    names: &[String],
    ips: &BTreeSet<IpAddr>,
) {
    for kind in kinds {
        let found = records.iter().filter(|r| r["kind"] == *kind).any(|r| {
            let rec_ips: BTreeSet<IpAddr> = strings(&r["identifiers"])
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect();
            strings(&r["names"]) == names && &rec_ips == ips
        });
        assert!(
            found,
            "no {kind} record naming {names:?} and {ips:?}: {records:#?}"
        );
    }
}

/// The chain each address of `addrs` serves for `name` (SNI), verified for the name
/// against `root`, is `row`'s certificate; returns the leaf.
pub(crate) async fn assert_served_for_name(
    addrs: &[SocketAddr],
    name: &str,
    row: &CertRow,
    root: &CertificateDer<'static>,
) -> pki::LeafInfo {
    let want = pki::normalize_serial(row.serial.as_deref().expect("serial"));
    let mut leaf = None;
    for addr in addrs {
        let chain = tlsutil::served_leaf_for_name(*addr, name, root, &want)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let info = pki::leaf_info(&chain[0]).expect("leaf");
        assert!(
            pki::verify_chain_for_name(&chain, root, &format!("other.{ZONE}")).is_err(),
            "the chain must not verify for a name it does not carry"
        );
        leaf = Some(info);
    }
    leaf.expect("at least one address")
}

const NAME_POLICY: &str = r#"
[[policy]]
name = "names"

[[policy.certificate]]
name = "site"
names = ["{hostname}.example.test"]
ips = "none"
challenges = ["http-01"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_http01_certificate_is_issued_installed_served_and_audited() {
    let Some(lan) = require_namespaces("names::http01_certificate") else {
        return;
    };
    let w = world(&lan, NAME_POLICY).await;
    let name = format!("nweb1.{ZONE}");
    let mut h = host(&w, &lan, "nweb1", &[&name], &[]).await;
    enroll_and_start(&mut h, &w, &lan).await;
    let row = w.wait_served(&mut h).await;

    assert_eq!(row.identifiers, vec![name.clone()], "{row:?}");
    assert_eq!(row.target, "default", "{row:?}");
    assert_eq!(
        row.validated_by.iter().collect::<Vec<_>>(),
        vec![(&name, &"http-01".to_owned())],
        "{row:?}"
    );
    assert_eq!(row.installed_serial, row.serial, "{row:?}");
    assert_eq!(row.served_serial, row.serial, "{row:?}");

    // nginx serves it to a client asking for the name, on every address of the host.
    let leaf = assert_served_for_name(&h.https_addrs(), &name, &row, &w.root).await;
    assert_eq!(leaf.dns_sans, vec![name.clone()], "exactly the name");
    assert!(leaf.ip_sans.is_empty(), "no IP SANs: {:?}", leaf.ip_sans);
    // The installed files are that certificate and its key (0600).
    let certs = &h.web.options().certs;
    let installed = pki::leaf_info_from_file(&certs.fullchain).expect("fullchain");
    assert_eq!(installed.serial_hex, leaf.serial_hex);
    let key_pem = std::fs::read_to_string(&certs.key).expect("key");
    assert_eq!(
        pki::key_spki_from_pem(&key_pem).expect("key"),
        leaf.spki_der
    );
    assert_eq!(pki::file_mode(&certs.key).expect("mode"), 0o600);
    // pebble reached the host through the name: the challenge went through nginx.
    let access = h.web.access_log();
    assert!(
        access.contains("/.well-known/acme-challenge/"),
        "no challenge fetch in nginx's access log:\n{access}"
    );

    // The audit trail names the certificate's name at every step, and no address.
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
    w.coord.audit_verify().await.expect("audit chain intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_addresses_make_one_certificate_with_both() {
    let Some(lan) = require_namespaces("names::with_addresses") else {
        return;
    };
    let policy = NAME_POLICY.replace("ips = \"none\"", "ips = \"all\"");
    let w = world(&lan, &policy).await;
    let name = format!("nmix1.{ZONE}");
    let mut h = host(&w, &lan, "nmix1", &[&name], &[]).await;
    enroll_and_start(&mut h, &w, &lan).await;
    let row = w.wait_served(&mut h).await;

    let ips: BTreeSet<IpAddr> = h.ns.ips().into_iter().collect();
    let mut want: BTreeSet<String> = ips.iter().map(|ip| ip.to_string()).collect();
    want.insert(name.clone());
    let got: BTreeSet<String> = row.identifiers.iter().cloned().collect();
    assert_eq!(
        got, want,
        "identifiers: the addresses and the name: {row:?}"
    );
    assert_eq!(
        row.validated_by.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "every identifier validated: {row:?}"
    );

    let leaf = assert_served_for_name(&h.https_addrs(), &name, &row, &w.root).await;
    assert_eq!(leaf.dns_sans, vec![name.clone()]);
    assert_eq!(leaf.ip_sans, ips, "IP SANs are the host's addresses");
    // The same chain verifies for each address too (a client using the IP).
    for addr in h.https_addrs() {
        let chain = tlsutil::served_chain(addr).await.expect("served");
        pki::verify_chain_for_ip(&chain, &w.root, addr.ip()).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let records = audit_of(&w.coord, &row.cert_id).await;
    assert_audited(
        &records,
        &[
            "order_created",
            "certificate_issued",
            "certificate_installed",
        ],
        std::slice::from_ref(&name),
        &ips,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_allowed_names_are_refused_without_an_order_then_covered_ones_issue() {
    let Some(lan) = require_namespaces("names::outside_allowed_names") else {
        return;
    };
    let policy = r#"
[[policy]]
name = "asked"
allowed_names = ["*.ok.example.test"]

[[policy.certificate]]
name = "asked"
names = ["{requested}"]
ips = "none"
"#;
    let w = world(&lan, policy).await;
    let bad = format!("nask1.bad.{ZONE}");
    let good = format!("nask1.ok.{ZONE}");
    let mut h = host(&w, &lan, "nask1", &[&bad, &good], &[&bad]).await;
    enroll_and_start(&mut h, &w, &lan).await;
    let row = w
        .wait_rows(&mut h, 1, "refused", |r| r.state == "refused")
        .await
        .remove(0);
    let err = row.last_error.clone().unwrap_or_default();
    assert!(
        err.contains(&bad) && err.contains("allowed_names") && err.contains("*.ok.example.test"),
        "last_error names the name and the rule: {row:?}"
    );
    let records = audit_of(&w.coord, &row.cert_id).await;
    let refusal = records
        .iter()
        .find(|r| r["kind"] == "name_refused")
        .unwrap_or_else(|| panic!("no name_refused record: {records:#?}"));
    assert_eq!(strings(&refusal["names"]), vec![bad.clone()], "{refusal}");
    assert!(
        refusal["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("allowed_names")),
        "{refusal}"
    );
    // Nothing is ordered for it, however long we wait.
    tokio::time::sleep(QUIET_PERIOD).await;
    let row = w.coord.cert(&row.cert_id).await.expect("row");
    assert_eq!(row.state, "refused", "{row:?}");
    let orders: Vec<Value> = w
        .coord
        .audit_records()
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r["kind"] == "order_created")
        .collect();
    assert!(
        orders.is_empty(),
        "an order for a refused name: {orders:#?}"
    );

    // The agent asks for a covered name instead: it is ordered, issued and served.
    h.agent.stop(Duration::from_secs(10)).await.expect("stop");
    set_asked_names(&mut h, &[&good]);
    h.agent.start().expect("agent restart");
    let row = w
        .wait_rows(&mut h, 1, "served for the covered name", |r| {
            served(r) && r.identifiers == [good.clone()]
        })
        .await
        .remove(0);
    assert_served_for_name(&h.https_addrs(), &good, &row, &w.root).await;
    let records = audit_of(&w.coord, &row.cert_id).await;
    assert_audited(
        &records,
        &["order_created", "certificate_issued"],
        std::slice::from_ref(&good),
        &BTreeSet::new(),
    );
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "order_created" && strings(&r["names"]).contains(&bad)),
        "the refused name was ordered: {records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_address_certificates_on_one_host_go_to_their_own_targets() {
    let Some(lan) = require_namespaces("names::two_targets") else {
        return;
    };
    let policy = r#"
[[policy]]
name = "two"

[[policy.certificate]]
name = "ip"
ips = "all"
targets = ["default"]

[[policy.certificate]]
name = "site"
names = ["{hostname}.example.test"]
ips = "none"
targets = ["second"]
"#;
    let w = world(&lan, policy).await;
    let name = format!("ntwo1.{ZONE}");
    let mut h = host(&w, &lan, "ntwo1", &[&name], &[]).await;
    let second = second_nginx_target(&mut h, "second").await;
    enroll_and_start(&mut h, &w, &lan).await;
    let rows = w.wait_rows(&mut h, 2, "served", served).await;
    let ip_row = rows.iter().find(|r| r.target == "default").expect("ip row");
    let name_row = rows
        .iter()
        .find(|r| r.target == "second")
        .expect("name row");

    // 443: the address certificate, exactly the host's IPs.
    h.check_serves(ip_row, &w.root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // SECOND_PORT: the name certificate, for the name.
    assert_eq!(name_row.identifiers, vec![name.clone()], "{name_row:?}");
    let leaf = assert_served_for_name(&second.https_addrs(), &name, name_row, &w.root).await;
    assert!(leaf.ip_sans.is_empty(), "{:?}", leaf.ip_sans);
    assert_ne!(ip_row.serial, name_row.serial);
    drop(second);
}

/// A second nginx in `h`'s namespace on [`SECOND_PORT`], reading the files of the agent's
/// target `[targets.<target>]` (appended to its config: that nginx's config test and
/// reload, verified on its own addresses). Running when this returns.
pub(crate) async fn second_nginx_target(h: &mut FleetHost, target: &str) -> WebServer {
    let second_dir = h.agent.tls_dir().join(target);
    std::fs::create_dir_all(&second_dir).expect("dir");
    let ips = h.ns.ips();
    let mut second = WebServer::new(
        &h.ns,
        WebServerOptions::new(ServerKind::Nginx, ips, CertPaths::in_dir(&second_dir))
            .https_port(SECOND_PORT),
    )
    .expect("second nginx");
    second.start().await.expect("second nginx start");
    let argv = |v: Vec<String>| {
        format!(
            "[{}]",
            v.iter().map(|a| toml_str(a)).collect::<Vec<_>>().join(", ")
        )
    };
    let verify: Vec<String> = second.https_addrs().iter().map(|a| a.to_string()).collect();
    h.agent
        .append_config(&format!(
            "\n[targets.{target}]\npreset = \"nginx\"\ndir = {dir}\nkey = {key}\ncheck = {check}\n\
             reload = {reload}\nverify = {verify}\nverify_grace_secs = 10\n",
            dir = toml_str(&second_dir.display().to_string()),
            key = toml_str(&second_dir.join("key.pem").display().to_string()),
            check = argv(second.check_argv()),
            reload = argv(second.reload_argv()),
            verify = argv(verify),
        ))
        .expect("agent config");
    second
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_rsa_2048_certificate_installs_a_matching_rsa_key() {
    let Some(lan) = require_namespaces("names::rsa_2048") else {
        return;
    };
    let policy = NAME_POLICY.replace(
        "challenges = [\"http-01\"]",
        "challenges = [\"http-01\"]\nkey_type = \"rsa-2048\"",
    );
    let w = world(&lan, &policy).await;
    let name = format!("nrsa1.{ZONE}");
    let mut h = host(&w, &lan, "nrsa1", &[&name], &[]).await;
    enroll_and_start(&mut h, &w, &lan).await;
    let row = w.wait_served(&mut h).await;
    let leaf = assert_served_for_name(&h.https_addrs(), &name, &row, &w.root).await;

    let certs = &h.web.options().certs;
    let chain = tlsutil::certs_from_file(&certs.fullchain).expect("fullchain");
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::public_key::PublicKey;
    let (_, cert) = X509Certificate::from_der(chain[0].as_ref()).expect("leaf");
    match cert.public_key().parsed().expect("public key") {
        PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048, "RSA-2048"),
        other => panic!("the leaf's key is not RSA: {other:?}"),
    }
    let key_pem = std::fs::read_to_string(&certs.key).expect("key");
    assert_eq!(
        pki::key_spki_from_pem(&key_pem).expect("the key parses"),
        leaf.spki_der,
        "the installed key is the leaf's"
    );
    assert_eq!(pki::file_mode(&certs.key).expect("mode"), 0o600);
}
