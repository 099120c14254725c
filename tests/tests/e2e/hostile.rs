//! Hostile messages on the wire, sent with the generated certfleet-proto clients: an
//! oversized CSR, a garbage CSR (neither consumes the join token), a session that does not
//! start with Hello, a Hello with non-canonical IPs. The coordinator refuses each with the
//! right status and keeps serving.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use certfleet_proto::v1::agent_message::Msg;
use certfleet_proto::v1::agent_session_client::AgentSessionClient;
use certfleet_proto::v1::enrollment_client::EnrollmentClient;
use certfleet_proto::v1::{reply, AgentMessage, Done, EnrollRequest, Hello, Reply};
use certfleet_tests::{grpc, Agent, Coordinator};
use futures::StreamExt as _;
use tonic::{Code, Status};

use crate::support::{assert_still_serving, pebble_and_coordinator};

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// One Enroll call without a client certificate (as `certfleet-agent enroll` makes it).
async fn enroll_raw(coord: &Coordinator, token: &str, csr_der: Vec<u8>) -> Result<String, Status> {
    let cfg = grpc::client_config(&coord.fleet_ca_pem_path(), None).expect("client config");
    let channel = grpc::channel(coord.addr(), cfg).await.expect("connect");
    let mut client = EnrollmentClient::new(channel);
    let call = client.enroll(EnrollRequest {
        token: token.to_owned(),
        csr_der,
        hostname: "hostile".into(),
        labels: Default::default(),
    });
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .expect("Enroll must answer")
        .map(|r| r.into_inner().host_id)
}

/// Opens a Session with the agent identity `(cert, key)`, sends `first` and keeps the
/// stream open; returns how the coordinator ended it.
async fn session_status(
    addr: SocketAddr,
    ca: &Path,
    ident: (&Path, &Path),
    first: AgentMessage,
) -> Status {
    let cfg = grpc::client_config(ca, Some(ident)).expect("client config");
    let channel = grpc::channel(addr, cfg).await.expect("connect");
    let outbound = futures::stream::iter(vec![first]).chain(futures::stream::pending());
    let fut = async {
        match AgentSessionClient::new(channel).session(outbound).await {
            Err(s) => s,
            Ok(resp) => match resp.into_inner().message().await {
                Err(s) => s,
                Ok(m) => panic!("the coordinator must end this session, it sent {m:?}"),
            },
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .expect("the coordinator must end the session within the timeout")
}

fn hello(ips: Vec<String>) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Hello(Hello {
            agent_version: "hostile-test".into(),
            ips,
            targets: vec!["default".into()],
            challenge_modes: vec!["http-01/standalone".into()],
            inventory: vec![],
            requested_names: vec![],
            key_groups: vec![],
        })),
    }
}

fn describe(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// A Hello carrying `given` (a non-canonical spelling) is refused with InvalidArgument
/// and a message that names the canonical spelling `fix`.
async fn assert_noncanonical_hello_refused(
    coord: &Coordinator,
    ident: (&Path, &Path),
    given: &str,
    fix: &str,
) {
    assert_ne!(given, fix, "test case must be non-canonical");
    let ca = coord.fleet_ca_pem_path();
    let st = session_status(coord.addr(), &ca, ident, hello(vec![given.to_owned()])).await;
    eprintln!("Hello with {given:?} refused with: {}", describe(&st));
    assert_eq!(
        st.code(),
        Code::InvalidArgument,
        "Hello with {given:?}: {}",
        describe(&st)
    );
    assert!(
        st.message().contains(fix),
        "the refusal of {given:?} should name the fix {fix:?}: {}",
        describe(&st)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_refused_and_the_coordinator_keeps_serving() {
    let (pebble, mut coord) = pebble_and_coordinator().await;

    // (a) A valid token with a 300 KiB CSR: over the 256 KiB message limit.
    let token_a = coord.create_token(None).await.expect("token");
    let big = vec![0x30u8; 300 * 1024];
    let st = enroll_raw(&coord, &token_a, big)
        .await
        .expect_err("a 300 KiB Enroll must be refused");
    eprintln!("oversized Enroll refused with: {}", describe(&st));
    assert_eq!(
        st.code(),
        Code::OutOfRange,
        "oversized Enroll: {}",
        describe(&st)
    );
    let mut a = Agent::new("after-big", pebble.http_port()).expect("agent");
    let out = a
        .enroll(&coord.url(), &token_a, coord.ca_sha256())
        .await
        .expect("run enroll");
    assert!(
        out.status.success(),
        "the token must survive an oversized Enroll: {out:?}"
    );

    // (b) A valid token with garbage CSR bytes: InvalidArgument, token kept.
    let token_b = coord.create_token(None).await.expect("token");
    let st = enroll_raw(&coord, &token_b, b"this is not a CSR".to_vec())
        .await
        .expect_err("a garbage CSR must be refused");
    eprintln!("garbage-CSR Enroll refused with: {}", describe(&st));
    assert_eq!(
        st.code(),
        Code::InvalidArgument,
        "garbage CSR: {}",
        describe(&st)
    );
    let mut b = Agent::new("after-garbage", pebble.http_port()).expect("agent");
    let out = b
        .enroll(&coord.url(), &token_b, coord.ca_sha256())
        .await
        .expect("run enroll");
    assert!(
        out.status.success(),
        "the token must survive a garbage-CSR Enroll: {out:?}"
    );
    assert_eq!(
        coord.hosts().await.expect("hosts").len(),
        2,
        "the refused Enroll calls made no hosts"
    );

    // (c) A session whose first message is a Reply, not a Hello.
    let ca = coord.fleet_ca_pem_path();
    let ident_cert = a.identity_cert_path();
    let ident_key = a.identity_key_path();
    let ident = (ident_cert.as_path(), ident_key.as_path());
    let reply_first = AgentMessage {
        msg: Some(Msg::Reply(Reply {
            request_id: "nobody-asked".into(),
            result: Some(reply::Result::Done(Done::default())),
        })),
    };
    let st = session_status(coord.addr(), &ca, ident, reply_first).await;
    eprintln!("Reply-first session ended with: {}", describe(&st));
    assert_eq!(
        st.code(),
        Code::InvalidArgument,
        "first message not a Hello: {}",
        describe(&st)
    );
    assert!(
        st.message().contains("Hello"),
        "the refusal should say a Hello is expected: {}",
        describe(&st)
    );

    // (d) Hellos with non-canonical IPs: refused, naming the canonical spelling.
    let v6 = a
        .ips()
        .into_iter()
        .find_map(|ip| match ip {
            std::net::IpAddr::V6(v6) => Some(v6),
            _ => None,
        })
        .expect("agent has an IPv6 address");
    let expanded = v6
        .segments()
        .iter()
        .map(|s| format!("{s:x}"))
        .collect::<Vec<_>>()
        .join(":");
    let cases: Vec<(String, String)> = vec![
        ("0:0:0:0:0:0:0:1".into(), "::1".into()),
        (expanded, v6.to_string()),
        (v6.to_string().to_uppercase(), v6.to_string()),
        ("::ffff:127.0.0.1".into(), "127.0.0.1".into()),
    ];
    for (given, fix) in &cases {
        assert_noncanonical_hello_refused(&coord, ident, given, fix).await;
    }

    // (e) Still serving; the refused Hellos changed nothing, and a real agent still gets in.
    let hosts = assert_still_serving(&mut coord).await;
    let host_a = hosts
        .iter()
        .find(|h| h.host_id == a.id().expect("enrolled"))
        .unwrap_or_else(|| panic!("host missing: {hosts:?}"));
    assert!(
        host_a.ips.is_empty() && !host_a.connected,
        "refused sessions must not record anything: {host_a:?}"
    );
    a.start().expect("start agent");
    coord
        .wait_connected(a.id().expect("enrolled"), true, Duration::from_secs(30))
        .await
        .expect("a well-behaved agent still connects");
}

/// An IPv4 address with zero-padded octets ("127.000.0.1": the same address whether the
/// octets are read as decimal or octal) is non-canonical; the refusal must say how to
/// write it, like it does for IPv6 spellings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_zero_padded_ipv4_names_the_fix() {
    let (pebble, mut coord) = pebble_and_coordinator().await;
    let mut a = Agent::new("padded", pebble.http_port()).expect("agent");
    a.enroll_with(&coord).await.expect("enroll");
    let cert = a.identity_cert_path();
    let key = a.identity_key_path();
    assert_noncanonical_hello_refused(&coord, (&cert, &key), "127.000.0.1", "127.0.0.1").await;
    // A link-local address is not the host's own to claim: refused, saying why.
    for link_local in ["fe80::1", "169.254.7.7"] {
        assert_noncanonical_hello_refused(&coord, (&cert, &key), link_local, "link-local").await;
    }
    assert_still_serving(&mut coord).await;
}

/// RotateIdentity is for enrolled hosts only, and checks what it signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_rotation_refuses_strangers_and_garbage() {
    use certfleet_proto::v1::RotateIdentityRequest;
    let (pebble, mut coord) = pebble_and_coordinator().await;
    let mut a = Agent::new("rotator", pebble.http_port()).expect("agent");
    a.enroll_with(&coord).await.expect("enroll");
    let ca = coord.fleet_ca_pem_path();
    let call = |ident: Option<(std::path::PathBuf, std::path::PathBuf)>, csr: Vec<u8>| {
        let ca = ca.clone();
        let addr = coord.addr();
        async move {
            let cfg =
                grpc::client_config(&ca, ident.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))
                    .expect("client config");
            let channel = grpc::channel(addr, cfg).await.expect("connect");
            AgentSessionClient::new(channel)
                .rotate_identity(RotateIdentityRequest { csr_der: csr })
                .await
                .expect_err("must be refused")
        }
    };
    let host_ident = Some((a.identity_cert_path(), a.identity_key_path()));
    let st = call(host_ident, b"not a CSR".to_vec()).await;
    assert_eq!(st.code(), Code::InvalidArgument, "{}", describe(&st));
    let admin = Some((coord.admin_cert_path(), coord.admin_key_path()));
    let st = call(admin, b"not a CSR".to_vec()).await;
    assert_eq!(st.code(), Code::PermissionDenied, "{}", describe(&st));
    let st = call(None, b"not a CSR".to_vec()).await;
    assert_eq!(st.code(), Code::Unauthenticated, "{}", describe(&st));
    let rotated = coord
        .cli_ok(&["audit", "--kind", "identity_rotated", "--json"])
        .await
        .expect("audit");
    assert!(rotated.trim().is_empty(), "nothing was rotated: {rotated}");
    assert_still_serving(&mut coord).await;
}
