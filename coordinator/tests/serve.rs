//! `serve()` on dependencies the test makes: a `ManualClock`, a store in a temporary
//! directory and a listener on port 0. What the daemon decides about time follows the
//! manual clock (token expiry, enrollment and identity times, a session's last-seen time),
//! and cancelling its token stops it promptly with every task it spawned finished.

use certfleet_coordinator::audit::AuditLog;
use certfleet_coordinator::config::Config;
use certfleet_coordinator::fleet_ca::{self, StateDir};
use certfleet_coordinator::store::{SledStore, Store};
use certfleet_coordinator::{cli, serve, Deps, DRAIN};
use certfleet_proto::v1::{
    self as pb, agent_message::Msg, agent_session_client::AgentSessionClient,
    enrollment_client::EnrollmentClient, AgentMessage, EnrollRequest,
};
use certfleet_shared::clock::{Clock as _, ManualClock, SystemClock};
use certfleet_shared::tls::{fleet_client_config, parse_fingerprint, pinned_client_config};
use certfleet_shared::transport::connect;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CONFIG: &str = r#"
version = 1
state_dir = "STATE"
[server]
listen = "127.0.0.1:0"
[[issuer]]
name = "nowhere"
# Nothing listens there: the account warm-up fails at once and is retried at first use.
directory = "https://127.0.0.1:9/dir"
allow_private_ips = true
"#;

/// An agent's identity key and the enrollment answer for it.
struct Enrolled {
    key_pem: String,
    resp: pb::EnrollResponse,
}

async fn enroll(url: &str, ca_sha256: &str, token: &str) -> Result<Enrolled, tonic::Status> {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("CSR");
    let pin = parse_fingerprint(ca_sha256).expect("fingerprint");
    let channel = connect(url, pinned_client_config(pin).expect("tls"))
        .await
        .expect("connect for enrollment");
    let resp = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: token.to_owned(),
            csr_der: csr.der().to_vec(),
            hostname: "manual".into(),
            labels: Default::default(),
        })
        .await?
        .into_inner();
    Ok(Enrolled {
        key_pem: key.serialize_pem(),
        resp,
    })
}

async fn host(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
) -> pb::HostView {
    let hosts = admin
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .expect("list hosts")
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    hosts.into_iter().next().expect("one host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_the_given_clock_store_and_listener_and_drains_on_shutdown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = StateDir::new(&tmp.path().join("state"));
    // The TLS handshakes are judged by rustls on real time, so the fleet PKI is made now
    // and the manual clock is set a day back (identities it signs are valid today too).
    let real_now = SystemClock.now_unix();
    let ca_sha256 = fleet_ca::init(
        &dir,
        &["localhost".to_owned()],
        &["127.0.0.1".parse().expect("ip")],
        fleet_ca::SERVER_LIFETIME_SECS,
        real_now,
    )
    .expect("fleet CA");
    let text = CONFIG.replace("STATE", &dir.root.display().to_string());
    let config =
        Config::from_toml(&text, Path::new("serve-test.toml"), Vec::new()).expect("config");

    let t0 = real_now - 86_400;
    let clock = ManualClock::new(t0);
    let sled = Arc::new(SledStore::open(&tmp.path().join("own-store")).expect("store"));
    let audit = Arc::new(AuditLog::open(sled.clone()).expect("audit log"));
    let store: Arc<dyn Store> = sled;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let tasks = TaskTracker::new();
    let deps = Deps {
        clock: Arc::new(clock.clone()),
        store: store.clone(),
        audit,
        listener,
        metrics_listener: None,
        web_listener: None,
        tasks: tasks.clone(),
    };
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(serve(config.clone(), deps, shutdown.clone()));

    let mut admin = cli::connect(&config, Some(&url), None)
        .await
        .expect("admin");
    let one_hour = || certfleet_proto::v1::CreateTokenRequest {
        ttl_seconds: 3600,
        uses: 1,
        ..Default::default()
    };
    let first = cli::token_create(&mut admin, one_hour())
        .await
        .expect("token");
    let second = cli::token_create(&mut admin, one_hour())
        .await
        .expect("token");
    assert_eq!(
        first.expires_unix,
        t0 + 3600,
        "token expiry on the manual clock"
    );

    let agent = enroll(&url, &ca_sha256, &first.token)
        .await
        .expect("enrollment with a fresh token");
    let enrolled = host(&mut admin).await;
    assert_eq!(enrolled.enrolled_unix, t0);
    assert_eq!(
        enrolled.identity_not_after_unix,
        t0 + config.server.identity_lifetime_secs as i64,
        "the identity is signed on the manual clock"
    );
    let stored = store.hosts().expect("hosts");
    assert_eq!(stored.len(), 1, "the host is in the store handed in");
    assert_eq!(stored[0].enrolled, t0);

    // Past the second token's expiry by the manual clock only (real time barely moved).
    clock.advance(3601);
    let refused = enroll(&url, &ca_sha256, &second.token)
        .await
        .err()
        .expect("an expired token is refused");
    assert!(refused.message().contains("expired"), "{refused:?}");

    // An agent session is open (its reader is a daemon task) when shutdown comes.
    let tls = fleet_client_config(
        &agent.resp.ca_cert_pem,
        &agent.resp.client_cert_pem,
        &agent.key_pem,
    )
    .expect("agent tls");
    // Tasks come and go (a certificate's reconcile round after enrollment): count once the
    // tracker has been quiet for a moment.
    let quiet = Instant::now() + Duration::from_secs(10);
    let mut before_session = tasks.len();
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_millis(500) && Instant::now() < quiet {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if tasks.len() != before_session {
            before_session = tasks.len();
            stable_since = Instant::now();
        }
    }
    let mut session = AgentSessionClient::new(connect(&url, tls).await.expect("connect"));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(Msg::Hello(pb::Hello::default())),
    })
    .await
    .expect("hello");
    let mut inbound = session
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    let seen = host(&mut admin).await;
    assert!(seen.connected, "{seen:?}");
    assert_eq!(
        seen.last_seen_unix,
        t0 + 3601,
        "Hello recorded on the manual clock"
    );
    let counted = Instant::now() + Duration::from_secs(5);
    while tasks.len() != before_session + 1 && Instant::now() < counted {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        tasks.len(),
        before_session + 1,
        "the session's reader is a task on the daemon's tracker"
    );

    shutdown.cancel();
    let stopping = Instant::now();
    let result = tokio::time::timeout(DRAIN, daemon)
        .await
        .expect("serve returns within the drain")
        .expect("serve did not panic");
    result.expect("serve stopped cleanly");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        stopping.elapsed()
    );
    assert!(tasks.is_closed(), "serve closes its tracker");
    assert!(tasks.is_empty(), "{} tasks still running", tasks.len());
    // The coordinator ended the session.
    let end = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("the session ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    drop(tx);
}
