//! The DNS part of the harness, without the binaries under test: a real knotd serves its
//! zones authoritatively, applies TSIG-signed dynamic updates (and refuses unsigned or
//! wrongly signed ones), fails to start with a clear error, dies with its guard; and
//! pebble, resolving through it, validates HTTP-01 for DNS names of a namespace host whose
//! nginx answers from its webroot. The later DNS-name and TLS-ALPN-01 tests stand on this:
//! if it fails, fix the machine or the harness first.

use std::path::Path;

use certfleet_tests::direct::DirectClient;
use certfleet_tests::dns::{KnotOptions, KnotServer, RData, Record, SECOND_ZONE, ZONE};
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::require_namespaces;
use certfleet_tests::process::{describe_output, run_output};
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{pki, tlsutil, Pebble, PebbleOptions};
use instant_acme::{Identifier, RetryPolicy};

/// Runs `knsupdate` with `key_line` (`alg:name:secret`, or none) adding one A record;
/// returns its output.
async fn raw_update(knot: &KnotServer, key_line: Option<&str>) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tmp");
    let script = dir.path().join("u.txt");
    std::fs::write(
        &script,
        format!(
            "server {} {}\nzone {ZONE}.\nupdate add rogue.{ZONE}. 60 A 10.66.6.6\nsend\n",
            knot.addr().ip(),
            knot.addr().port()
        ),
    )
    .expect("script");
    let mut cmd = tokio::process::Command::new("knsupdate");
    cmd.args(["-t", "3"]);
    if let Some(line) = key_line {
        let key = dir.path().join("k");
        std::fs::write(&key, line).expect("key");
        cmd.arg("-k").arg(&key);
    }
    cmd.arg(&script);
    run_output(&mut cmd, std::time::Duration::from_secs(15))
        .await
        .expect("knsupdate runs")
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_serves_zones_and_applies_only_signed_updates() {
    let www = format!("www.{ZONE}");
    let txt = format!("txt.{SECOND_ZONE}");
    let mut knot = KnotServer::start_with(KnotOptions {
        records: vec![
            Record::new(&www, RData::A("10.1.2.3".parse().unwrap())),
            Record::new(&www, RData::Aaaa("fd00::3".parse().unwrap())),
            Record::txt(&txt, "hello world"),
        ],
        ..KnotOptions::default()
    })
    .await
    .expect("start knot");

    // Records given at start, in both zones, answered with authority.
    let a = knot.resolve(&www, "A").await.expect("kdig");
    assert_eq!(
        (a.rcode.as_str(), a.authoritative),
        ("NOERROR", true),
        "{a:?}"
    );
    assert_eq!(a.values, vec!["10.1.2.3"]);
    let aaaa = knot.resolve(&www, "AAAA").await.expect("kdig");
    assert_eq!(aaaa.values, vec!["fd00::3"]);
    let t = knot.resolve(&txt, "TXT").await.expect("kdig");
    assert_eq!(t.values, vec!["\"hello world\""]);
    let ns = knot.resolve(SECOND_ZONE, "NS").await.expect("kdig");
    assert_eq!(ns.values, vec![format!("ns1.{SECOND_ZONE}.")]);
    // A name that is not there, and a zone that is not ours.
    let nx = knot
        .resolve(&format!("absent.{ZONE}"), "A")
        .await
        .expect("kdig");
    assert_eq!(
        (nx.rcode.as_str(), nx.values.len()),
        ("NXDOMAIN", 0),
        "{nx:?}"
    );
    let other = knot.resolve("www.example.org", "A").await.expect("kdig");
    assert_eq!(other.rcode, "REFUSED", "{other:?}");

    // Dynamic updates: add (two TXT values in one RRset, an A in the second zone).
    let acme = format!("_acme-challenge.{www}");
    let new_a = Record::address(&format!("new.{SECOND_ZONE}"), "10.9.9.9".parse().unwrap());
    knot.add_records(&[
        Record::txt(&acme, "token-one"),
        Record::txt(&acme, "token-two"),
        new_a.clone(),
    ])
    .await
    .expect("signed update");
    let got = knot.resolve(&acme, "TXT").await.expect("kdig");
    assert_eq!(got.values, vec!["\"token-one\"", "\"token-two\""]);
    let got = knot.resolve(&new_a.name, "A").await.expect("kdig");
    assert_eq!(got.values, vec!["10.9.9.9"]);
    // ... and remove: one TXT value of two, then the A.
    knot.remove_records(&[Record::txt(&acme, "token-one"), new_a.clone()])
        .await
        .expect("signed delete");
    let got = knot.resolve(&acme, "TXT").await.expect("kdig");
    assert_eq!(got.values, vec!["\"token-two\""]);
    let got = knot.resolve(&new_a.name, "A").await.expect("kdig");
    assert_eq!((got.rcode.as_str(), got.values.len()), ("NXDOMAIN", 0));
    // Names outside every zone are refused before anything is sent.
    let err = knot
        .add_records(&[Record::txt("x.example.org", "v")])
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("none of the served zones"),
        "{err:#}"
    );

    // The update ACL: unsigned and wrongly signed updates are refused, nothing changes.
    let unsigned = raw_update(&knot, None).await;
    assert!(!unsigned.status.success(), "{}", describe_output(&unsigned));
    let wrong = raw_update(
        &knot,
        Some("hmac-sha256:certfleet-update:d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyE="),
    )
    .await;
    assert!(!wrong.status.success(), "{}", describe_output(&wrong));
    let rogue = knot
        .resolve(&format!("rogue.{ZONE}"), "A")
        .await
        .expect("kdig");
    assert!(
        rogue.values.is_empty(),
        "an unsigned update went through: {rogue:?}"
    );
    // The harness's own key works with the raw tool too (the DNS-01 client will use it).
    let k = knot.tsig_key().clone();
    let right = raw_update(
        &knot,
        Some(&format!("{}:{}:{}", k.algorithm, k.name, k.secret)),
    )
    .await;
    assert!(right.status.success(), "{}", describe_output(&right));
    let rogue = knot
        .resolve(&format!("rogue.{ZONE}"), "A")
        .await
        .expect("kdig");
    assert_eq!(rogue.values, vec!["10.66.6.6"]);
    assert!(
        !knot.logs().contains(&k.secret),
        "TSIG secret in knotd's log"
    );

    // Stop (SIGTERM) leaves no process; a second server gets its own address.
    let other = KnotServer::start().await.expect("second knot");
    assert_ne!(other.addr(), knot.addr());
    let (pid, other_pid) = (knot.pid(), other.pid());
    knot.stop().await.expect("stop");
    assert!(!process_exists(pid), "knotd {pid} still there after stop");
    drop(other);
    assert!(
        !process_exists(other_pid),
        "knotd {other_pid} still there after drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_start_failure_names_the_problem_and_shows_the_log() {
    // A CNAME beside other data: knot refuses to load the zone.
    let name = format!("clash.{ZONE}");
    let err = KnotServer::start_with(KnotOptions {
        records: vec![
            Record::address(&name, "10.1.1.1".parse().unwrap()),
            Record::new(&name, RData::Cname(format!("www.{ZONE}"))),
        ],
        ..KnotOptions::default()
    })
    .await
    .expect_err("a zone that cannot load must fail the start");
    let msg = format!("{err:#}");
    assert!(msg.contains("could not load a zone"), "{msg}");
    assert!(msg.contains(&format!("[{ZONE}.]")), "names the zone: {msg}");
    assert!(msg.contains("Knot DNS"), "shows knotd's log: {msg}");

    let err = KnotServer::start_with(KnotOptions {
        records: vec![Record::txt("x.example.org", "v")],
        ..KnotOptions::default()
    })
    .await
    .expect_err("a record outside the zones");
    assert!(
        format!("{err:#}").contains("none of the served zones"),
        "{err:#}"
    );

    let err = KnotServer::start_with(KnotOptions {
        binary: Some("/nonexistent/knotd".into()),
        ..KnotOptions::default()
    })
    .await
    .expect_err("missing binary");
    assert!(
        format!("{err:#}").contains("apt-get install -y knot"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_validates_dns_names_of_a_namespace_host_through_knot() {
    let Some(lan) = require_namespaces("dns_harness::pebble_validates_dns_names") else {
        return;
    };
    certfleet_tests::install_crypto_provider();
    let knot = KnotServer::start().await.expect("knot");
    let pebble = Pebble::start_with(PebbleOptions {
        validation_ports: Some((80, 443)),
        dns_server: Some(knot.addr()),
        ..Default::default()
    })
    .await
    .expect("pebble");
    let root = pebble.issuing_root_der().await.expect("root");

    // host-1.example.test is published by the fleet harness before the host is returned;
    // www.certfleet.test (second zone) is added while everything runs.
    let primary = format!("host-1.{ZONE}");
    let host = FleetHost::new_with_dns(
        &lan,
        HostSpec::new("dns1", ServerKind::Nginx, Challenge::Webroot).with_names(&[&primary]),
        &knot,
    )
    .await
    .expect("host");
    assert_eq!(host.names(), std::slice::from_ref(&primary));
    let ips = host.ns.ips();
    assert_eq!(ips.len(), 2, "an IPv4 and an IPv6 address: {ips:?}");
    for (rtype, ip) in [("A", ips[0]), ("AAAA", ips[1])] {
        let got = knot.resolve(&primary, rtype).await.expect("kdig");
        assert_eq!(got.values, vec![ip.to_string()], "{primary} {rtype}");
    }
    let secondary = format!("www.{SECOND_ZONE}");
    knot.add_records(&Record::addresses(&secondary, &ips))
        .await
        .expect("update");

    let challenge_dir = host.web.challenge_dir().expect("webroot mode");
    std::fs::create_dir_all(&challenge_dir).expect("challenge dir");
    let present = |token: &str, key_auth: &str| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = challenge_dir.join(token);
        std::fs::write(&path, key_auth)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    let client = DirectClient::new(&pebble).await.expect("account");
    let names = vec![primary.clone(), secondary.clone()];
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let issued = client
        .issue_for(&identifiers, &RetryPolicy::default(), present)
        .await
        .unwrap_or_else(|e| {
            eprintln!("--- nginx access log:\n{}", host.web.access_log());
            eprintln!("--- knotd log:\n{}", knot.logs());
            panic!("issuance for {names:?}: {e:#}\n{}", pebble.logs())
        });

    let chain = tlsutil::certs_from_pem(&issued.chain_pem).expect("chain");
    let leaf = pki::leaf_info(&chain[0]).expect("leaf");
    let mut sans = leaf.dns_sans.clone();
    sans.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(sans, want, "the leaf names exactly the DNS names");
    assert!(leaf.ip_sans.is_empty(), "no IP SANs: {:?}", leaf.ip_sans);
    for name in &names {
        pki::verify_chain_for_name(&chain, &root, name).expect("chain verifies for the name");
    }
    assert!(
        pki::verify_chain_for_name(&chain, &root, &format!("other.{ZONE}")).is_err(),
        "the chain must not verify for a name it does not carry"
    );
    assert_eq!(
        pki::key_spki_from_pem(&issued.key_pem).expect("spki"),
        leaf.spki_der
    );
    // Pebble reached the host by name: nginx logged the challenge fetches on port 80.
    let access = host.web.access_log();
    assert!(
        access.contains("/.well-known/acme-challenge/"),
        "no challenge request in nginx's access log:\n{access}"
    );

    // A name knot does not have cannot be validated: pebble really asks knot.
    let absent = format!("absent.{ZONE}");
    let err = client
        .issue_for(
            &[Identifier::Dns(absent.clone())],
            &RetryPolicy::default(),
            present,
        )
        .await
        .expect_err("a name without records must not validate");
    // Pebble 2.4.0: "could not resolve URL http://absent.example.test:80/..." (connection).
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&absent) && (msg.contains("resolve") || msg.to_lowercase().contains("dns")),
        "{msg}"
    );
}
