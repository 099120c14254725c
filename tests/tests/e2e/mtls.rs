//! The coordinator's mutual TLS: who may call what. Uses the generated certfleet-proto
//! clients over the harness's own tokio-rustls connector.

use std::path::Path;

use certfleet_proto::v1::admin_client::AdminClient;
use certfleet_proto::v1::agent_message::Msg;
use certfleet_proto::v1::agent_session_client::AgentSessionClient;
use certfleet_proto::v1::{AgentMessage, Hello, ListHostsRequest};
use certfleet_tests::{grpc, Agent};
use futures::StreamExt as _;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use tonic::Code;

use crate::support::pebble_and_coordinator;

async fn list_hosts(
    coord_addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<certfleet_proto::v1::ListHostsResponse, String> {
    let cfg = grpc::client_config(ca, client).map_err(|e| format!("config: {e:#}"))?;
    let channel = grpc::channel(coord_addr, cfg)
        .await
        .map_err(|e| format!("connect: {e:#}"))?;
    AdminClient::new(channel)
        .list_hosts(ListHostsRequest::default())
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn code_of(err: &str) -> &str {
    err.split(':').next().unwrap_or(err)
}

/// A client certificate from a CA the coordinator has never seen.
fn foreign_client_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "certfleet fleet CA"); // same name, other key
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "admin");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &ca).expect("sign");
    let cert_path = dir.join("foreign.pem");
    let key_path = dir.join("foreign.key");
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca.pem())).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    (cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_decides_who_may_call_what() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let mut agent = Agent::new("member", pebble.http_port()).expect("agent");
    let host_id = agent.enroll_with(&coord).await.expect("enroll");
    let ca = coord.fleet_ca_pem_path();
    let addr = coord.addr();

    // (a) No client certificate: Admin and AgentSession both say Unauthenticated.
    let err = list_hosts(addr, &ca, None)
        .await
        .expect_err("ListHosts without a client cert");
    assert_eq!(
        code_of(&err),
        "Unauthenticated",
        "ListHosts without client cert: {err}"
    );

    let cfg = grpc::client_config(&ca, None).expect("config");
    let channel = grpc::channel(addr, cfg)
        .await
        .expect("TLS without client cert connects");
    let hello = AgentMessage {
        msg: Some(Msg::Hello(Hello {
            agent_version: "test".into(),
            ips: agent.ips().iter().map(|i| i.to_string()).collect(),
            targets: vec!["default".into()],
            challenge_modes: vec!["http-01/standalone".into()],
            inventory: vec![],
            requested_names: vec![],
            key_groups: vec![],
        })),
    };
    let outbound = futures::stream::iter(vec![hello]).chain(futures::stream::pending());
    let code = match AgentSessionClient::new(channel).session(outbound).await {
        Err(s) => s.code(),
        Ok(resp) => match resp.into_inner().message().await {
            Err(s) => s.code(),
            Ok(m) => panic!("Session without a client cert must fail, got {m:?}"),
        },
    };
    assert_eq!(code, Code::Unauthenticated, "Session without client cert");

    // (b) A client certificate from a foreign CA: refused (handshake or call).
    let (fc, fk) = foreign_client_cert(coord.dir());
    let err = list_hosts(addr, &ca, Some((&fc, &fk)))
        .await
        .expect_err("a foreign client certificate must be refused");
    eprintln!("foreign client cert refused with: {err}");

    // (c) An agent identity calling the Admin API: PermissionDenied.
    let err = list_hosts(
        addr,
        &ca,
        Some((&agent.identity_cert_path(), &agent.identity_key_path())),
    )
    .await
    .expect_err("an agent identity must not use the Admin API");
    assert_eq!(
        code_of(&err),
        "PermissionDenied",
        "agent identity on Admin: {err}"
    );

    // (d) The operator certificate: allowed, and sees the host.
    let resp = list_hosts(
        addr,
        &ca,
        Some((&coord.admin_cert_path(), &coord.admin_key_path())),
    )
    .await
    .expect("operator cert may call ListHosts");
    assert!(
        resp.hosts.iter().any(|h| h.host_id == host_id),
        "ListHosts should show {host_id}: {resp:?}"
    );
}
