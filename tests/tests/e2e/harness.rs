//! The harness itself, without the binaries under test: pebble starts, per-host
//! addresses work for IPv4 and IPv6, and a direct ACME client's certificate passes the
//! same checks the fleet's certificates must pass. If this fails, fix the machine or the
//! harness before reading the other failures.

use std::net::IpAddr;

use certfleet_tests::direct::DirectClient;
use certfleet_tests::net::HostAddrs;
use certfleet_tests::{pki, require_root, tlsutil, Pebble};
use instant_acme::RetryPolicy;

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
