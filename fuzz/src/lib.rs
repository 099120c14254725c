//! What the fuzz targets share: one tokio runtime per process, scratch directories, a
//! coordinator (fleet CA, sled store, audit log, sessions, engine — never started, so no
//! CA is contacted and no port is bound) and an agent (webroot HTTP-01 under a scratch dir,
//! self-check off, one target with no commands and no verify address).
//!
//! Each `run_*` function is one target's body: the binaries in `fuzz_targets/` only hand
//! the input over, so `write-seeds` and a unit test can drive the same code.
//!
//! State that an input leaves behind is bounded: a Hello rewrites the one host record,
//! presented challenges are cleared again, pending keys are capped by the agent itself.

use certfleet_agent::session::Agent;
use certfleet_coordinator::config::{Config, KeyTypeName};
use certfleet_coordinator::fleet_ca::{self, FleetCa, StateDir};
use certfleet_coordinator::server::{Api, Services};
use certfleet_coordinator::sessions::{AgentHandle, Sessions};
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};
use certfleet_shared::ids::HostId;
use prost::Message;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// The agent's and the coordinator's idea of this host's addresses (seeds use them).
pub const HOST_IPS: [&str; 3] = ["192.0.2.10", "2001:db8::10", "127.0.0.1"];
/// The one install target of the fuzzed agent.
pub const TARGET: &str = "web";
/// A live challenge of the HTTP-01 target (seeds ask for it).
pub const LIVE_TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
pub const LIVE_KEY_AUTHORIZATION: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";
/// Separates the TOML text of a config input from its environment (`NAME=value` lines).
pub const ENV_MARKER: &str = "\n#%env\n";

/// One current-thread runtime for the whole process (not one per input).
pub fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A fresh directory for this process under `$TMPDIR` (tests/fuzz.sh points it at
/// /dev/shm and removes it afterwards).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("certfleet-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

// ------------------------------------------------------------------ coordinator

pub struct Coordinator {
    pub api: Api,
    pub host: HostId,
    /// The host's session; its outbound side is `outbound`.
    pub handle: AgentHandle,
    outbound: Mutex<mpsc::Receiver<Result<pb::CoordinatorMessage, tonic::Status>>>,
    /// What the coordinator asks the host's CSR to name.
    pub csr_ips: Vec<certfleet_shared::identifier::Identifier>,
}

const COORDINATOR_TOML: &str = r#"
version = 1
state_dir = "STATE"
[server]
listen = "127.0.0.1:0"
[[issuer]]
name = "pebble"
directory = "https://127.0.0.1:14000/dir"
allow_private_ips = true
"#;

pub fn coordinator() -> &'static Coordinator {
    static C: OnceLock<Coordinator> = OnceLock::new();
    C.get_or_init(|| {
        let _rt = rt().enter();
        let root = scratch("coordinator");
        let dir = StateDir::new(&root.join("state"));
        let clock: certfleet_shared::clock::SharedClock =
            Arc::new(certfleet_shared::clock::SystemClock);
        fleet_ca::init(
            &dir,
            &["localhost".to_owned()],
            &[],
            fleet_ca::SERVER_LIFETIME_SECS,
            clock.now_unix(),
        )
        .expect("fleet CA");
        let ca = Arc::new(FleetCa::load(&dir).expect("load fleet CA"));
        let text = COORDINATOR_TOML.replace("STATE", &dir.root.display().to_string());
        let config = Config::from_toml(&text, Path::new("fuzz.toml"), Vec::new()).expect("config");
        let sled =
            Arc::new(certfleet_coordinator::store::SledStore::open(&dir.store()).expect("store"));
        let audit =
            Arc::new(certfleet_coordinator::audit::AuditLog::open(sled.clone()).expect("audit"));
        let store: Arc<dyn certfleet_coordinator::store::Store> = sled;
        let sessions = Arc::new(Sessions::default());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let config_providers = config.dns_providers.clone();
        let engine = certfleet_coordinator::engine::Engine::new(
            config,
            Arc::default(),
            store.clone(),
            audit.clone(),
            sessions.clone(),
            clock.clone(),
            shutdown.clone(),
            tracker.clone(),
            // No DNS provider: the fuzzed sessions never reach DNS-01.
            Arc::new(
                certfleet_coordinator::dns::DnsProviders::from_config(&config_providers)
                    .expect("no providers"),
            ),
        );
        let host = HostId::parse("h-fuzz0000000000").expect("host id");
        // From JSON, so fields added to the record later (with defaults) need no change here.
        let rec: certfleet_coordinator::model::HostRecord =
            serde_json::from_value(serde_json::json!({
                "id": host, "hostname": "fuzz", "enrolled": 1_700_000_000,
                "identity_serial": "01",
            }))
            .expect("host record");
        store.put_host(&rec).expect("put host");
        seed_audit(&audit, &host);
        let (tx, rx) = mpsc::channel(4);
        let handle = sessions.open(host.clone(), tx);
        let server_cert = certfleet_coordinator::server_cert::ServerCertManager::start(
            dir.clone(),
            ca.clone(),
            vec!["localhost".to_owned()],
            vec![],
            fleet_ca::SERVER_LIFETIME_SECS,
            audit.clone(),
            clock.clone(),
        )
        .expect("server certificate")
        .resolver
        .clone();
        let services = Services {
            server_cert,
            store,
            sessions,
            engine,
            ca,
            audit,
            clock,
            shutdown,
            tracker,
        };
        Coordinator {
            api: Api(Arc::new(services)),
            host,
            handle,
            outbound: Mutex::new(rx),
            csr_ips: certfleet_shared::identifier::canonical_set(
                HOST_IPS[..2]
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .collect(),
            )
            .into_iter()
            .map(certfleet_shared::identifier::Identifier::Ip)
            .collect(),
        }
    })
}

/// A few records so that audit queries have something to find, filter and range-scan.
fn seed_audit(audit: &certfleet_coordinator::audit::AuditLog, host: &HostId) {
    use certfleet_coordinator::audit::{Entry, Kind};
    let ips: Vec<IpAddr> = HOST_IPS.iter().filter_map(|s| s.parse().ok()).collect();
    let events = [
        (Kind::HostEnrolled, Entry::by("host:x").host(host)),
        (
            Kind::CertificateIssued,
            Entry::by("coordinator").host(host).ips(&ips).serial("0a1b"),
        ),
        (
            Kind::CertificateInstalled,
            Entry::by("host:x").host(host).ips(&ips[..1]).serial("0a1b"),
        ),
        (Kind::TokenCreated, Entry::by("operator:op")),
    ];
    for (i, (kind, entry)) in events.into_iter().enumerate() {
        audit
            .append(kind, 1_700_000_000 + i as i64 * 60, entry)
            .expect("audit append");
    }
}

/// `AgentMessage` bytes, as the coordinator's session loop gets them: a Hello is validated
/// and recorded (`Services::apply_hello`); a Reply goes through `AgentHandle::deliver` as
/// received, and once more as the answer to a pending request, whose result is then checked
/// the way `issuance.rs` does (the CSR by `check_csr`).
pub fn run_coordinator_agent_message(data: &[u8]) {
    let Ok(msg) = pb::AgentMessage::decode(data) else {
        return;
    };
    let c = coordinator();
    match msg.msg {
        Some(pb::agent_message::Msg::Hello(h)) => {
            let _ = c.api.apply_hello(&c.host, h);
        }
        Some(pb::agent_message::Msg::Reply(r)) => rt().block_on(reply_to_pending(c, r)),
        None => {}
    }
}

async fn reply_to_pending(c: &'static Coordinator, r: pb::Reply) {
    c.handle.deliver(r.clone());
    let Some(result) = r.result else {
        return;
    };
    let cmd = match &result {
        reply::Result::Csr(_) => Cmd::CreateCsr(pb::CreateCsr::default()),
        reply::Result::Installed(_) => Cmd::Install(pb::InstallCertificate::default()),
        // The command each reply kind answers, so the request takes it (a reply of another
        // kind is discarded and the command asked again until its timeout).
        reply::Result::SealedKey(_) => Cmd::SealKey(pb::SealKey::default()),
        _ => Cmd::ClearChallenges(pb::ClearChallenges::default()),
    };
    let handle = c.handle.clone();
    let pending =
        tokio::spawn(async move { handle.request(cmd, "fuzz", Duration::from_secs(60)).await });
    // On this current-thread runtime the request task sends as soon as we yield.
    let mut sent = None;
    for _ in 0..8 {
        tokio::task::yield_now().await;
        let mut out = c.outbound.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(m) = out.try_recv() {
            sent = Some(m);
            break;
        }
    }
    let Some(Ok(sent)) = sent else {
        pending.abort();
        return;
    };
    c.handle.deliver(pb::Reply {
        request_id: sent.request_id,
        result: Some(result),
    });
    let Ok(answer) = pending.await else {
        return;
    };
    match answer {
        Ok(reply::Result::Csr(csr)) => {
            let checked = certfleet_coordinator::engine::check_csr(
                &csr.csr_der,
                &c.csr_ips,
                KeyTypeName::EcdsaP256,
            );
            if let Err(e) = checked {
                std::hint::black_box(e.to_string());
            }
        }
        Ok(other) => {
            std::hint::black_box(format!("{other:?}"));
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}

/// An `EnrollRequest` or a `RotateIdentityRequest` (first byte even / odd): the request
/// checks of `server.rs` and `FleetCa::sign_agent` on the CSR.
pub fn run_coordinator_identity(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let c = coordinator();
    let csr = if which % 2 == 0 {
        let Ok(r) = pb::EnrollRequest::decode(body) else {
            return;
        };
        if certfleet_coordinator::requests::enroll(&r).is_err() {
            return;
        }
        r.csr_der
    } else {
        let Ok(r) = pb::RotateIdentityRequest::decode(body) else {
            return;
        };
        r.csr_der
    };
    if let Err(e) = c.api.ca.sign_agent(&csr, &c.host, c.api.clock.now_unix()) {
        std::hint::black_box(e.to_string());
    }
}

/// The admin requests, in the order the first byte (mod their number) picks them.
pub const ADMIN_REQUESTS: [&str; 16] = [
    "CreateToken",
    "ListHosts",
    "ListCerts",
    "RenewCerts",
    "QueryAudit",
    "VerifyAudit",
    "ListTokens",
    "RevokeCert",
    "RemoveHost",
    "RevokeToken",
    "ReleaseIp",
    "AddOperator",
    "RenewOperator",
    "ListOperators",
    "RevokeOperator",
    "GetCredentials",
];

/// One admin request: the first byte picks the message (see [`ADMIN_REQUESTS`]; an RPC
/// added to `Admin` needs a line here), the rest
/// is decoded as it and run through the checks `server.rs` makes before it acts
/// (`coordinator::requests`); a query runs against the audit log (`Api::audit_query`).
pub fn run_coordinator_admin(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    use certfleet_coordinator::requests as check;
    fn ok<T: Message + Default>(body: &[u8]) -> Option<T> {
        T::decode(body).ok()
    }
    let err = |e: tonic::Status| {
        std::hint::black_box(e.message().len());
    };
    match which as usize % ADMIN_REQUESTS.len() {
        0 => ok(body).map(|r| check::create_token(&r).map(drop).map_err(err)),
        1 => ok::<pb::ListHostsRequest>(body).map(|_| Ok(())),
        2 => ok::<pb::ListCertsRequest>(body).map(|_| Ok(())),
        3 => ok(body).map(|r| check::renew_certs(&r).map(drop).map_err(err)),
        4 => ok(body).map(|r| coordinator().api.audit_query(r).map(drop).map_err(err)),
        5 => ok::<pb::VerifyAuditRequest>(body).map(|_| Ok(())),
        6 => ok::<pb::ListTokensRequest>(body).map(|_| Ok(())),
        7 => ok(body).map(|r| check::revoke_cert(&r).map(drop).map_err(err)),
        8 => ok(body).map(|r| check::remove_host(&r).map(drop).map_err(err)),
        9 => ok(body).map(|r| check::revoke_token(&r).map(drop).map_err(err)),
        10 => ok(body).map(|r| check::release_ip(&r).map(drop).map_err(err)),
        // The CSR of an operator's credential goes to the fleet CA as it comes.
        11 => ok::<pb::AddOperatorRequest>(body).map(|r| {
            let (name, _, secs) = check::add_operator(&r).map_err(err)?;
            operator_csr(&r.csr_der, &name, secs);
            Ok(())
        }),
        12 => ok::<pb::RenewOperatorRequest>(body).map(|r| {
            operator_csr(&r.csr_der, "fuzz", 60);
            Ok(())
        }),
        13 => ok::<pb::ListOperatorsRequest>(body).map(|_| Ok(())),
        14 => ok(body).map(|r| check::revoke_operator(&r).map(drop).map_err(err)),
        _ => ok::<pb::GetCredentialsRequest>(body).map(|_| Ok(())),
    };
}

/// Signs an operator credential from a fuzzed CSR with the fixture's fleet CA.
fn operator_csr(csr_der: &[u8], name: &str, secs: i64) {
    let signed = coordinator()
        .api
        .ca
        .sign_operator(csr_der, name, secs, 1_750_000_000);
    let _ = std::hint::black_box(signed.map(|(pem, _)| pem.len()).map_err(|e| e.to_string()));
}

/// Splits a config input into its TOML text and its environment.
fn config_input(data: &[u8]) -> Option<(&str, Vec<(String, String)>)> {
    let text = std::str::from_utf8(data).ok()?;
    let (toml, env) = text.split_once(ENV_MARKER).unwrap_or((text, ""));
    let env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some((toml, env))
}

/// The coordinator's config: TOML text (and environment overrides after [`ENV_MARKER`])
/// through `Config::from_toml` (parse, presets, `validate()`).
pub fn run_coordinator_config(data: &[u8]) {
    let Some((toml, env)) = config_input(data) else {
        return;
    };
    match Config::from_toml(toml, Path::new("fuzz.toml"), env) {
        Ok(cfg) => {
            std::hint::black_box((cfg.default_issuer_name().is_some(), cfg.local_url()));
            for i in &cfg.issuers {
                std::hint::black_box((i.rate_limits(), i.eab().is_some()));
            }
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}

// ------------------------------------------------------------------ agent

pub struct AgentFixture {
    pub agent: Arc<Agent>,
}

pub fn agent() -> &'static AgentFixture {
    static A: OnceLock<AgentFixture> = OnceLock::new();
    A.get_or_init(|| {
        let _rt = rt().enter();
        let root = scratch("agent");
        let web = root.join("web");
        std::fs::create_dir_all(root.join("webroot")).expect("webroot");
        std::fs::create_dir_all(&web).expect("target dir");
        let ips = HOST_IPS
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Enrolled as the envelope fixture's recipient, with its identity key, in its
        // group: the key-group commands get past enrollment and open real envelopes.
        let env = envelope_fixture();
        let state = root.join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        certfleet_shared::fsutil::write_atomic(
            &state.join("identity.key"),
            env.identity_key_pem.as_bytes(),
            0o600,
        )
        .expect("identity key");
        let enrollment = certfleet_agent::identity::Enrollment {
            host_id: HostId::parse(&env.ctx.recipient).expect("recipient host id"),
            coordinator: "https://127.0.0.1:1".into(),
            coordinators: Vec::new(),
            ca_sha256: "0".repeat(64),
            enrolled: 0,
        };
        std::fs::write(
            state.join("enrollment.json"),
            serde_json::to_vec(&enrollment).expect("enrollment"),
        )
        .expect("enrollment file");
        let text = format!(
            r#"
version = 1
state_dir = "{root}/state"
ips = [{ips}]
key_groups = [{group:?}]
[http01]
mode = "webroot"
webroot = "{root}/webroot"
self_check = false
[targets.{TARGET}]
fullchain = "{web}/fullchain.pem"
key = "{web}/privkey.pem"
check = []
reload = []
verify = []
"#,
            root = root.display(),
            web = web.display(),
            group = env.ctx.group,
        );
        let config = certfleet_agent::config::AgentConfig::from_toml(
            &text,
            Path::new("fuzz.toml"),
            Vec::new(),
        )
        .expect("agent config");
        AgentFixture {
            agent: Agent::new(config).expect("agent"),
        }
    })
}

static CLEANUP: AtomicU64 = AtomicU64::new(0);

/// `CoordinatorMessage` bytes, as the agent's session gets them, through `Agent::handle`
/// (present / clear challenges, create a key and CSR, install, seal and import a key
/// group's key: the agent is enrolled as the envelope fixture's recipient and lists its
/// group). Challenges it presented are cleared again through the same handler, so the
/// table and webroot stay small.
pub fn run_agent_command(data: &[u8]) {
    let Ok(mut msg) = pb::CoordinatorMessage::decode(data) else {
        return;
    };
    // Generating an RSA-3072/4096 key takes seconds in this instrumented build (past
    // libFuzzer's timeout): key generation parses nothing, so such CSRs get RSA-2048 keys.
    if let Some(Cmd::CreateCsr(c)) = &mut msg.cmd {
        if c.key_type == pb::KeyType::Rsa3072 as i32 || c.key_type == pb::KeyType::Rsa4096 as i32 {
            c.key_type = pb::KeyType::Rsa2048 as i32;
        }
    }
    let a = agent();
    let tokens: Vec<String> = match &msg.cmd {
        Some(Cmd::PresentChallenges(p)) => p.challenges.iter().map(|c| c.token.clone()).collect(),
        _ => Vec::new(),
    };
    rt().block_on(async {
        let result = a.agent.handle(msg).await;
        std::hint::black_box(result.encoded_len());
        if !tokens.is_empty() {
            let n = CLEANUP.fetch_add(1, Ordering::Relaxed);
            let clear = pb::CoordinatorMessage {
                request_id: format!("fuzz-cleanup-{n}"),
                cmd: Some(Cmd::ClearChallenges(pb::ClearChallenges { tokens })),
            };
            a.agent.handle(clear).await;
        }
    });
}

/// The agent's config: TOML text (and environment overrides after [`ENV_MARKER`]) through
/// `AgentConfig::from_toml` (parse, `validate()`, target resolution).
pub fn run_agent_config(data: &[u8]) {
    let Some((toml, env)) = config_input(data) else {
        return;
    };
    match certfleet_agent::config::AgentConfig::from_toml(toml, Path::new("fuzz.toml"), env) {
        Ok(cfg) => {
            std::hint::black_box(cfg.ip_addrs());
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}

/// Raw bytes from a client of the HTTP-01 responder (standalone/proxy listener), over
/// memory, with one live challenge ([`LIVE_TOKEN`]).
pub fn run_agent_http01(data: &[u8]) {
    let live = [(LIVE_TOKEN.to_owned(), LIVE_KEY_AUTHORIZATION.to_owned())];
    let out = rt().block_on(certfleet_agent::http01::answer_raw(&live, data));
    std::hint::black_box(out);
}

// ------------------------------------------------------------------ shared

/// PEM / DER inspection in `shared::x509`: the bytes as a certificate, as a CSR, and (when
/// UTF-8) as a PEM chain (each certificate inspected) and as a private key PEM.
pub fn run_x509(data: &[u8]) {
    use certfleet_shared::x509;
    let cert = x509::CertInfo::from_der(data);
    if let Ok(info) = &cert {
        std::hint::black_box(info.lifetime_secs());
    }
    let _ = x509::CsrInfo::from_der(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(chain) = x509::parse_pem_chain(text) {
        for der in &chain {
            let _ = x509::CertInfo::from_der(der);
        }
        let again = x509::parse_pem_chain(&x509::chain_to_pem(&chain)).map(|c| c.len());
        assert_eq!(
            again.ok(),
            Some(chain.len()),
            "PEM round trip lost certificates"
        );
    }
    std::hint::black_box(x509::key_matches_spki(text, b"not a key"));
}

// ------------------------------------------------------------------ identifiers

/// Seeds of the `identifier` target (one per line in the corpus).
pub const IDENTIFIER_SEEDS: &[(&str, &str)] = &[
    ("ipv4", "192.0.2.10"),
    ("ipv6", "2001:db8::10"),
    ("name", "www.example.net"),
    ("name-upper-dot", "WWW.Example.NET."),
    ("idn", "bücher.example"),
    ("a-label", "xn--bcher-kva.example"),
    ("wildcard", "*.example.co.uk"),
    ("public-suffix", "co.uk"),
    ("ip-as-name", "1.2.3.4."),
    ("leading-zeros", "010.1.2.3"),
    ("bracketed-v6", "[::1]"),
    ("nested-wildcard", "*.*.example.net"),
    ("fullwidth", "ｅｘａｍｐｌｅ。ｎｅｔ"),
    ("underscore", "_acme-challenge.example.net"),
];

/// Seeds of `coordinator_dns_answer`: DNS replies (wire format) and Route53 answers.
pub const DNS_ANSWER_SEEDS: &[(&str, &[u8])] = &[
    ("txt-two-values.dns", b"\x12\x34\x84\x00\x00\x01\x00\x02\x00\x00\x00\x00\x0f\x5f\x61\x63\x6d\x65\x2d\x63\x68\x61\x6c\x6c\x65\x6e\x67\x65\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x6e\x65\x74\x00\x00\x10\x00\x01\x0f\x5f\x61\x63\x6d\x65\x2d\x63\x68\x61\x6c\x6c\x65\x6e\x67\x65\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x6e\x65\x74\x00\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x2c\x2b\x4c\x6f\x71\x58\x63\x59\x56\x38\x71\x35\x4f\x4e\x62\x4a\x51\x78\x62\x6d\x52\x37\x53\x43\x54\x4e\x6f\x33\x74\x69\x41\x58\x44\x66\x6f\x77\x79\x6a\x78\x41\x6a\x45\x75\x58\x30\x0f\x5f\x61\x63\x6d\x65\x2d\x63\x68\x61\x6c\x6c\x65\x6e\x67\x65\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x6e\x65\x74\x00\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x12\x08\x70\x61\x72\x74\x2d\x6f\x6e\x65\x08\x70\x61\x72\x74\x2d\x74\x77\x6f"),
    ("cname.dns", b"\x12\x34\x84\x00\x00\x01\x00\x01\x00\x00\x00\x00\x0f\x5f\x61\x63\x6d\x65\x2d\x63\x68\x61\x6c\x6c\x65\x6e\x67\x65\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x6e\x65\x74\x00\x00\x05\x00\x01\x0f\x5f\x61\x63\x6d\x65\x2d\x63\x68\x61\x6c\x6c\x65\x6e\x67\x65\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x6e\x65\x74\x00\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x1f\x01\x78\x0f\x61\x63\x6d\x65\x2d\x76\x61\x6c\x69\x64\x61\x74\x69\x6f\x6e\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x6f\x72\x67\x00"),
    ("nxdomain.dns", b"\x12\x34\x84\x03\x00\x01\x00\x00\x00\x00\x00\x00\x0f\x5f\x61\x63\x6d\x65\x2d\x63\x68\x61\x6c\x6c\x65\x6e\x67\x65\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x6e\x65\x74\x00\x00\x10\x00\x01"),
    (
        "route53-zones.xml",
        b"<ListHostedZonesByNameResponse><HostedZones><HostedZone><Id>/hostedzone/Z1</Id>\
          <Name>example.net.</Name><Config><PrivateZone>false</PrivateZone></Config>\
          </HostedZone></HostedZones></ListHostedZonesByNameResponse>",
    ),
    (
        "route53-rrset.xml",
        b"<ListResourceRecordSetsResponse><ResourceRecordSets><ResourceRecordSet>\
          <Name>_acme-challenge.example.net.</Name><Type>TXT</Type><TTL>60</TTL>\
          <ResourceRecords><ResourceRecord><Value>\"a\\\"b\" \"c\"</Value></ResourceRecord>\
          </ResourceRecords></ResourceRecordSet></ResourceRecordSets>\
          </ListResourceRecordSetsResponse>",
    ),
    (
        "route53-change.xml",
        b"<GetChangeResponse><ChangeInfo><Id>/change/C1</Id><Status>INSYNC</Status>\
          </ChangeInfo></GetChangeResponse>",
    ),
    (
        "route53-error.xml",
        b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>\
          <Message>Rate exceeded</Message></Error></ErrorResponse>",
    ),
];

/// What a DNS server or the Route53 API sends the coordinator's DNS providers: a DNS
/// reply (TXT values, CNAME target) or a Route53 XML answer (zone, RRset, change, error).
pub fn run_coordinator_dns_answer(data: &[u8]) {
    certfleet_coordinator::dns::parse_untrusted_answer(data);
}

/// `shared::identifier`: `Identifier::parse`, `DnsName::parse` and `NamePattern::parse`
/// never panic; what parses is canonical (parsing its text gives it back, unchanged) and
/// obeys the label and length rules; a pattern's `matches` and the registered domain and
/// reverse name of what parsed never panic.
pub fn run_identifier(data: &[u8]) {
    use certfleet_shared::identifier::{
        registered_domain, reverse_name, DnsName, Identifier, NamePattern,
    };
    let text = String::from_utf8_lossy(data);
    let id = Identifier::parse(&text);
    if let Ok(id) = &id {
        let canonical = id.to_string();
        assert_eq!(
            Identifier::parse(&canonical).as_ref(),
            Ok(id),
            "{text:?} → {canonical:?} does not parse back to itself"
        );
        if let Some(name) = id.dns_name() {
            check_canonical_name(name.as_str());
            assert!(canonical.len() <= 253, "{canonical:?} too long");
            std::hint::black_box(registered_domain(name));
            assert_eq!(id.acme_type(), "dns");
        }
        if let Some(ip) = id.as_ip() {
            assert!(reverse_name(ip).ends_with(".arpa"));
        }
        let json = serde_json::to_string(id).expect("serialize an identifier");
        let back: Identifier = serde_json::from_str(&json).expect("deserialize what we wrote");
        assert_eq!(&back, id, "serde round trip of {canonical:?}");
    }
    if let Ok(name) = DnsName::parse(&text) {
        check_canonical_name(name.as_str());
        assert_eq!(DnsName::parse(name.as_str()).as_ref(), Ok(&name));
        assert_eq!(id.as_ref().ok(), Some(&Identifier::Dns(name)));
    }
    if let Ok(pattern) = NamePattern::parse(&text) {
        assert_eq!(
            NamePattern::parse(&pattern.to_string()).as_ref(),
            Ok(&pattern)
        );
        if let Ok(id) = &id {
            std::hint::black_box(pattern.matches(id));
        }
    }
}

/// The shape every canonical name has, whatever it was parsed from.
fn check_canonical_name(name: &str) {
    assert!(name.len() <= 253, "{name:?} longer than 253 octets");
    let labels: Vec<&str> = name.split('.').collect();
    assert!(labels.len() >= 2, "{name:?} has one label");
    for label in labels {
        assert!(
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-'),
            "{name:?}: label {label:?} is not canonical LDH"
        );
    }
}

// ------------------------------------------------------------------ key-group envelopes

/// The recipient of the `envelope` target: a fixed P-256 identity key (fixed so the seeds,
/// sealed to it, stay openable across runs; a fuzzing key, protecting nothing), its SPKI,
/// and the context every input is opened for.
pub struct EnvelopeFixture {
    pub identity_key_pem: String,
    pub identity_spki: Vec<u8>,
    pub ctx: certfleet_shared::envelope::Context,
}

pub fn envelope_fixture() -> &'static EnvelopeFixture {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    static F: OnceLock<EnvelopeFixture> = OnceLock::new();
    F.get_or_init(|| {
        let sk = p256::SecretKey::from_slice(&[7u8; 32]).expect("scalar");
        EnvelopeFixture {
            identity_key_pem: sk.to_pkcs8_pem(LineEnding::LF).expect("pkcs8").to_string(),
            identity_spki: sk
                .public_key()
                .to_public_key_der()
                .expect("spki")
                .as_bytes()
                .to_vec(),
            ctx: certfleet_shared::envelope::Context {
                group: "www".into(),
                recipient: "h-recipient".into(),
                sender: "h-sender".into(),
            },
        }
    })
}

/// An envelope as the `envelope` target reads it: suite id and enc behind a length byte
/// each, `key_sha256` behind two length bytes (big-endian), the rest ciphertext.
pub fn envelope_input(env: &certfleet_shared::envelope::Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [&env.suite_id, &env.enc] {
        out.push(u8::try_from(part.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&part[..part.len().min(255)]);
    }
    let fp = env.key_sha256.as_bytes();
    out.extend_from_slice(&u16::try_from(fp.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&fp[..fp.len().min(usize::from(u16::MAX))]);
    out.extend_from_slice(&env.ciphertext);
    out
}

/// `shared::envelope::open` on hostile envelopes: never panics, and what it opens is a key
/// whose fingerprint is the one the envelope names.
pub fn run_envelope(data: &[u8]) {
    use certfleet_shared::envelope::{key_fingerprint, open, Envelope};
    let mut rest = data;
    let mut take = |n: usize| {
        let (a, b) = rest.split_at(n.min(rest.len()));
        rest = b;
        a.to_vec()
    };
    let n = take(1).first().copied().unwrap_or(0);
    let suite_id = take(usize::from(n));
    let n = take(1).first().copied().unwrap_or(0);
    let enc = take(usize::from(n));
    let n = take(2);
    let n = if n.len() == 2 {
        u16::from_be_bytes([n[0], n[1]])
    } else {
        0
    };
    let key_sha256 = String::from_utf8_lossy(&take(usize::from(n))).into_owned();
    let ciphertext = take(usize::MAX);
    let env = Envelope {
        suite_id,
        enc,
        ciphertext,
        key_sha256,
    };
    let f = envelope_fixture();
    if let Ok(key) = open(&f.identity_key_pem, &f.ctx, &env) {
        assert_eq!(
            key_fingerprint(&key).as_deref(),
            Some(env.key_sha256.as_str())
        );
    }
}
