//! A lost enrollment reply must not burn a token use (issue #14): the agent retries an
//! Enroll with the same key and CSR; when the coordinator had committed the first one, the
//! retry is the same host again — its identity certificate issued anew for that key — not
//! a second host and not a second use of a single-use token. Another key with the used-up
//! token is refused, and so is the same key once the host has left.

use std::time::Duration;

use certfleet_proto::v1::agent_session_client::AgentSessionClient;
use certfleet_proto::v1::enrollment_client::EnrollmentClient;
use certfleet_proto::v1::{EnrollRequest, EnrollResponse, LeaveRequest};
use certfleet_tests::{grpc, Coordinator};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use tonic::{Code, Status};

use crate::support::pebble_and_coordinator;

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// An Enroll request as `certfleet-agent enroll` makes it: a fresh key, a CSR naming the
/// host. Returns the key with it.
fn request(token: &str, hostname: &str) -> (KeyPair, EnrollRequest) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, hostname);
    let csr = params.serialize_request(&key).expect("csr");
    let req = EnrollRequest {
        token: token.to_owned(),
        csr_der: csr.der().to_vec(),
        hostname: hostname.to_owned(),
        labels: Default::default(),
    };
    (key, req)
}

/// One Enroll call, pinned to the fleet CA, without a client certificate.
async fn enroll(coord: &Coordinator, req: EnrollRequest) -> Result<EnrollResponse, Status> {
    let cfg = grpc::client_config(&coord.fleet_ca_pem_path(), None).expect("client config");
    let channel = grpc::channel(coord.addr(), cfg).await.expect("connect");
    tokio::time::timeout(CALL_TIMEOUT, EnrollmentClient::new(channel).enroll(req))
        .await
        .expect("Enroll must answer")
        .map(tonic::Response::into_inner)
}

/// The SPKI and serial of the identity certificate in an Enroll reply.
fn leaf(resp: &EnrollResponse) -> (Vec<u8>, String) {
    let der = rustls_pemfile::certs(&mut resp.client_cert_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    (cert.public_key().raw.to_vec(), cert.raw_serial_as_string())
}

async fn tokens_json(coord: &Coordinator) -> serde_json::Value {
    serde_json::from_str(&coord.cli_ok(&["tokens", "--json"]).await.expect("tokens"))
        .expect("tokens --json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_enrollment_is_the_same_host_and_takes_no_second_use() {
    let (_pebble, coord) = pebble_and_coordinator().await;
    let token = coord.create_token(None).await.expect("token");
    let (key, req) = request(&token, "replay");

    let first = enroll(&coord, req.clone()).await.expect("first Enroll");
    // The reply was "lost": the agent sends the very same request again.
    let second = enroll(&coord, req.clone())
        .await
        .expect("the replayed Enroll must succeed, not spend a second use");
    assert_eq!(second.host_id, first.host_id, "the same host again");
    let ((spki1, serial1), (spki2, serial2)) = (leaf(&first), leaf(&second));
    assert_eq!(
        spki1,
        key.subject_public_key_info(),
        "first certificate for our key"
    );
    assert_eq!(
        spki2, spki1,
        "the re-issued certificate is for the same key"
    );
    assert_ne!(serial2, serial1, "the identity certificate is issued anew");

    let hosts = coord.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1, "one host: {hosts:?}");
    let tokens = tokens_json(&coord).await;
    assert_eq!(tokens[0]["used_by"], serde_json::json!([first.host_id]));
    assert_eq!(tokens[0]["uses_left"], 0, "{tokens}");

    // Another key with the used-up single-use token: refused.
    let (_, other) = request(&token, "intruder");
    let st = enroll(&coord, other)
        .await
        .expect_err("another key must be refused");
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("already used"), "{}", st.message());
    assert_eq!(coord.hosts().await.expect("hosts").len(), 1);

    // Audited: one use and one enrollment, the repeat with both serials, the refusal.
    let records = coord.audit_records().await.expect("audit");
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        records.iter().filter(|r| r["kind"] == kind).collect()
    };
    assert_eq!(of("token_used").len(), 1, "one use");
    assert_eq!(of("host_enrolled").len(), 1, "one enrollment");
    let repeats = of("enrollment_repeated");
    assert_eq!(repeats.len(), 1, "{records:?}");
    assert_eq!(repeats[0]["host_id"], serde_json::json!(first.host_id));
    let refused = of("enrollment_refused");
    assert_eq!(refused.len(), 1, "{records:?}");
    assert_eq!(refused[0]["details"]["constraint"], "uses");

    // The re-issued identity is the host's identity: it can leave with it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, keyf) = (dir.path().join("id.pem"), dir.path().join("id.key"));
    std::fs::write(&cert, &second.client_cert_pem).expect("write cert");
    std::fs::write(&keyf, key.serialize_pem()).expect("write key");
    let cfg = grpc::client_config(&coord.fleet_ca_pem_path(), Some((&cert, &keyf)))
        .expect("client config");
    let channel = grpc::channel(coord.addr(), cfg).await.expect("connect");
    tokio::time::timeout(
        CALL_TIMEOUT,
        AgentSessionClient::new(channel).leave(LeaveRequest {}),
    )
    .await
    .expect("Leave must answer")
    .expect("Leave with the re-issued identity");
    assert!(
        coord.hosts().await.expect("hosts").is_empty(),
        "the host left"
    );

    // Once the host is gone, the same request does not bring it back.
    let st = enroll(&coord, req)
        .await
        .expect_err("a repeat after removal");
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(st.message().contains("removed"), "{}", st.message());
    assert!(coord.hosts().await.expect("hosts").is_empty());
}

/// `certfleet-agent enroll` killed after the coordinator answered, before it wrote the
/// identity (a reboot, a cloud-init timeout): it kept its key in `enroll-pending.key`
/// (0600) before asking, so the rerun asks with that key and gets the same host back
/// instead of finding the single-use token spent. Simulated by giving a second agent's
/// state directory the first one's key as the pending key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_cut_short_is_finished_by_the_rerun_with_its_kept_key() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let token = coord.create_token(None).await.expect("token");
    let mut first = certfleet_tests::Agent::new("cut-short", pebble.http_port()).expect("agent");
    let out = first
        .enroll(&coord.url(), &token, coord.ca_sha256())
        .await
        .expect("enroll");
    assert!(out.status.success(), "{out:?}");
    let host = first.id().expect("host id").to_owned();
    let pending = first.state_dir().join("enroll-pending.key");
    assert!(!pending.exists(), "the pending key goes once enrolled");

    // The run that was "killed": only its pending key is on disk.
    let mut rerun = certfleet_tests::Agent::new("cut-short", pebble.http_port()).expect("agent");
    std::fs::create_dir_all(rerun.state_dir()).expect("state dir");
    std::fs::copy(
        first.state_dir().join("identity.key"),
        rerun.state_dir().join("enroll-pending.key"),
    )
    .expect("pending key");
    let out = rerun
        .enroll(&coord.url(), &token, coord.ca_sha256())
        .await
        .expect("enroll again");
    assert!(
        out.status.success(),
        "the rerun must finish the enrollment with the same token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rerun.id().expect("host id"), host, "the same host");
    assert!(!rerun.state_dir().join("enroll-pending.key").exists());
    assert_eq!(coord.hosts().await.expect("hosts").len(), 1);

    // A rerun with a new key (no pending key) finds the token spent, as before.
    let mut other = certfleet_tests::Agent::new("other", pebble.http_port()).expect("agent");
    let out = other
        .enroll(&coord.url(), &token, coord.ca_sha256())
        .await
        .expect("enroll other");
    assert!(!out.status.success(), "a new key with a spent token");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already used"),
        "{out:?}"
    );
    let left = other.state_dir().join("enroll-pending.key");
    assert!(!left.exists(), "a refused enrollment leaves no key behind");
}
