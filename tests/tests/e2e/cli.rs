//! The coordinator's operator CLI against a live coordinator, no agents: what `init`
//! creates, the fingerprint, tokens, empty fleet views.

use certfleet_tests::pki;

use crate::support::pebble_and_coordinator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_and_operator_commands() {
    let (_pebble, coord) = pebble_and_coordinator().await;

    let state = coord.state_dir();
    for f in [
        "fleet-ca.pem",
        "fleet-ca.key",
        "server.pem",
        "server.key",
        "admin.pem",
        "admin.key",
    ] {
        assert!(state.join(f).is_file(), "init should create {f}");
    }
    // (On PostgreSQL — CERTFLEET_TEST_STORE=postgres — the store is the database.)
    assert!(
        state.join("store").is_dir() || certfleet_tests::coordinator::test_store_is_postgres(),
        "init should create the sled store dir"
    );
    for key in ["fleet-ca.key", "server.key", "admin.key"] {
        let mode = pki::file_mode(&state.join(key)).expect("stat");
        assert_eq!(mode, 0o600, "{key} mode is {mode:o}, want 600");
    }

    let fp = coord.ca_fingerprint_cli().await.expect("ca-fingerprint");
    assert_eq!(
        fp,
        coord.ca_sha256(),
        "ca-fingerprint must print exactly what init printed"
    );

    // The fingerprint is the SHA-256 of the fleet CA certificate (DER).
    let ca =
        certfleet_tests::tlsutil::certs_from_file(&coord.fleet_ca_pem_path()).expect("fleet CA");
    let ring_digest = ring_sha256(ca[0].as_ref());
    assert_eq!(
        fp, ring_digest,
        "fingerprint should be sha256(fleet CA DER)"
    );

    let t1 = coord.create_token(None).await.expect("token create");
    let t2 = coord
        .create_token(Some("30m"))
        .await
        .expect("token create --ttl 30m");
    assert_ne!(t1, t2, "tokens must be unique");

    assert_eq!(
        coord.hosts_json().await.expect("hosts"),
        serde_json::json!([])
    );
    assert_eq!(
        coord.certs_json().await.expect("certs"),
        serde_json::json!([])
    );
    for table in ["hosts", "certs"] {
        coord.cli_ok(&[table]).await.expect("human table");
    }

    // A second init must not clobber the fleet CA (agents pin its fingerprint).
    let out = coord.cli(&["init"]).await.expect("run init again");
    let fp_after = coord.ca_fingerprint_cli().await.expect("ca-fingerprint");
    assert_eq!(
        fp_after, fp,
        "init again changed the fleet CA (exit {})",
        out.status
    );

    // Tokens are shown once, to the operator: they must not appear in the coordinator's logs.
    let logs = coord.logs();
    for t in [&t1, &t2] {
        assert!(
            !logs.contains(t.as_str()),
            "join token printed in the coordinator log"
        );
    }
}

fn ring_sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}
