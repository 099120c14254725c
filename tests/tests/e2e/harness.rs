//! The harness itself, without the binaries under test: pebble starts, per-host
//! addresses work for IPv4 and IPv6, and a direct ACME client's certificate passes the
//! same checks the fleet's certificates must pass. If this fails, fix the machine or the
//! harness before reading the other failures.

use std::net::IpAddr;

use certfleet_tests::direct::DirectClient;
use certfleet_tests::dns::{KnotServer, Record, ZONE};
use certfleet_tests::net::HostAddrs;
use certfleet_tests::{pki, require_root, tlsutil, Pebble, PebbleOptions};
use instant_acme::{Identifier, RetryPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_acme_issuance_passes_the_harness_checks() {
    require_root().expect("root");
    certfleet_tests::install_crypto_provider();
    let pebble = Pebble::start().await.expect("start pebble");
    let root = pebble.issuing_root_der().await.expect("issuing root");
    let client = DirectClient::new(&pebble).await.expect("account");
    let addrs = HostAddrs::allocate(pebble.http_port()).expect("addresses");
    let ips: Vec<IpAddr> = addrs.ips();
    let issued = client
        .issue(&ips, &RetryPolicy::default())
        .await
        .expect("direct issuance");

    let chain = tlsutil::certs_from_pem(&issued.chain_pem).expect("chain");
    let leaf = pki::leaf_info(&chain[0]).expect("leaf");
    assert_eq!(leaf.ip_sans, ips.iter().copied().collect(), "IP SANs");
    for ip in &ips {
        pki::verify_chain_for_ip(&chain, &root, *ip).expect("chain verifies");
    }
    assert_eq!(
        pki::key_spki_from_pem(&issued.key_pem).expect("spki"),
        leaf.spki_der
    );
    let needles = pki::key_needles(&issued.key_pem).expect("needles");
    assert!(
        needles.iter().any(|(w, _)| w.contains("scalar")),
        "EC scalar located: {:?}",
        needles.iter().map(|(w, _)| w).collect::<Vec<_>>()
    );
    // The scan finds a planted key and ignores an unrelated one.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("blob"),
        [b"xx".as_slice(), &needles[0].1, b"yy"].concat(),
    )
    .expect("write");
    let (found, files) = pki::scan_for_needles(dir.path(), &[], &needles).expect("scan");
    assert_eq!(files, 1);
    assert!(!found.is_empty(), "scan must find a planted key");
    std::fs::write(
        dir.path().join("blob"),
        rcgen::KeyPair::generate().expect("k").serialize_pem(),
    )
    .expect("write");
    let (found, _) = pki::scan_for_needles(dir.path(), &[], &needles).expect("scan");
    assert!(found.is_empty(), "false positive: {found:?}");
}

/// The direct client the issuance benchmark compares against, for names: pebble resolves
/// each name through knot to loopback addresses where the client answers HTTP-01 (its
/// own responder) or TLS-ALPN-01 (its own validation certificates), and the certificate
/// is for exactly the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_acme_name_issuance_over_http01_and_tls_alpn01_through_knot() {
    require_root().expect("root");
    certfleet_tests::install_crypto_provider();
    let knot = KnotServer::start().await.expect("knot");
    let pebble = Pebble::start_with(PebbleOptions {
        dns_server: Some(knot.addr()),
        ..Default::default()
    })
    .await
    .expect("start pebble");
    let root = pebble.issuing_root_der().await.expect("issuing root");
    let client = DirectClient::new(&pebble).await.expect("account");
    for alpn in [false, true] {
        let addrs =
            HostAddrs::allocate_ports(&[pebble.http_port(), pebble.tls_port()]).expect("addrs");
        let ips = addrs.ips();
        let name = format!("direct-{}.{ZONE}", if alpn { "alpn" } else { "http" });
        knot.add_records(&Record::addresses(&name, &ips))
            .await
            .expect("publish");
        let ids = [Identifier::Dns(name.clone())];
        let retry = RetryPolicy::default();
        let issued = if alpn {
            client.issue_tls_alpn01_on(&ids, &ips, &retry).await
        } else {
            client.issue_http01_on(&ids, &ips, &retry).await
        }
        .unwrap_or_else(|e| panic!("{name}: {e:#}\nknot:\n{}", knot.logs()));
        let chain = tlsutil::certs_from_pem(&issued.chain_pem).expect("chain");
        let leaf = pki::leaf_info(&chain[0]).expect("leaf");
        assert_eq!(leaf.dns_sans, vec![name.clone()], "exactly the name");
        assert!(leaf.ip_sans.is_empty(), "{:?}", leaf.ip_sans);
        pki::verify_chain_for_name(&chain, &root, &name).expect("chain verifies");
    }
}
