//! Tests of `session.rs`: command dispatch, replay cache, challenge presentation.

use super::*;

/// An agent on a temp dir whose commands touch nothing outside it (webroot mode, no
/// self-check, a custom target).
fn agent(dir: &std::path::Path) -> Arc<Agent> {
    agent_with(dir, "")
}

/// [`agent`] with `extra` appended to its config.
fn agent_with(dir: &std::path::Path, extra: &str) -> Arc<Agent> {
    agent_on(dir, "192.0.2.10", extra)
}

/// [`agent_with`] on the address `ip`.
fn agent_on(dir: &std::path::Path, ip: &str, extra: &str) -> Arc<Agent> {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let text = format!(
        "version = 1\nstate_dir = \"{d}/state\"\nips = [\"{ip}\"]\n\
         [http01]\nmode = \"webroot\"\nwebroot = \"{d}/www\"\nself_check = false\n\
         [targets.t]\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\nverify = []\n{extra}",
        d = dir.display()
    );
    let config =
        AgentConfig::from_toml(&text, std::path::Path::new("agent.toml"), Vec::new()).unwrap();
    Agent::new(config).unwrap()
}

fn msg(id: &str, cmd: Cmd) -> CoordinatorMessage {
    CoordinatorMessage {
        request_id: id.into(),
        cmd: Some(cmd),
    }
}

fn csr_cmd() -> Cmd {
    csr_cmd_for("192.0.2.10")
}

/// A CSR for the address `ip`, target `t`.
fn csr_cmd_for(ip: &str) -> Cmd {
    Cmd::CreateCsr(pb::CreateCsr {
        identifiers: vec![ip.into()],
        key_type: pb::KeyType::EcdsaP256 as i32,
        target: "t".into(),
        cert_id: "c-abc".into(),
        key_group: String::new(),
    })
}

#[tokio::test]
async fn a_reused_id_with_other_content_is_refused_not_answered_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let first = a
        .handle(msg(
            "r-1",
            Cmd::ClearChallenges(pb::ClearChallenges { tokens: vec![] }),
        ))
        .await;
    assert!(matches!(first, reply::Result::Done(_)), "{first:?}");
    // A new coordinator run reusing the id for another command: never the old reply.
    let second = a.handle(msg("r-1", csr_cmd())).await;
    match second {
        reply::Result::Failure(f) => assert_eq!(f.code, "request_id_reused"),
        other => panic!("answered from the cache of another command: {other:?}"),
    }
    assert_eq!(a.pending.count(), 0, "the refused command did not run");
}

#[tokio::test]
async fn the_same_command_replayed_gets_the_same_reply_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let one = a.handle(msg("r-2", csr_cmd())).await;
    let two = a.handle(msg("r-2", csr_cmd())).await;
    let (reply::Result::Csr(x), reply::Result::Csr(y)) = (&one, &two) else {
        panic!("{one:?} {two:?}");
    };
    assert_eq!(x.csr_der, y.csr_der, "the replay gets the cached CSR");
    assert_eq!(a.pending.count(), 1, "one key made");
    // A new id is a new command: a new key.
    let three = a.handle(msg("r-3", csr_cmd())).await;
    let reply::Result::Csr(z) = three else {
        panic!("{three:?}")
    };
    assert_ne!(z.csr_der, x.csr_der);
    assert_eq!(a.pending.count(), 2);
    // The coordinator ends the order: both go.
    let done = a
        .handle(msg(
            "r-4",
            Cmd::DiscardPendingKeys(pb::DiscardPendingKeys {
                cert_id: "c-abc".into(),
                keep_spki_sha256: vec![],
            }),
        ))
        .await;
    assert!(
        matches!(done, reply::Result::Done(pb::Done { discarded: 2, .. })),
        "{done:?}"
    );
    assert_eq!(a.pending.count(), 0);
}

#[test]
fn digests_tell_commands_apart() {
    assert_eq!(
        command_digest(&Some(csr_cmd())),
        command_digest(&Some(csr_cmd()))
    );
    assert_ne!(
        command_digest(&Some(csr_cmd())),
        command_digest(&Some(Cmd::ClearChallenges(pb::ClearChallenges {
            tokens: vec![]
        })))
    );
}

fn present(http: &[(&str, &str)], tls: &[(&str, &str)]) -> Cmd {
    let key_auth = |token: &str| format!("{token}.thumbprint_0123");
    Cmd::PresentChallenges(pb::PresentChallenges {
        challenges: http
            .iter()
            .map(|(id, token)| pb::Http01Challenge {
                identifier: (*id).into(),
                token: (*token).into(),
                key_authorization: key_auth(token),
            })
            .collect(),
        tls_alpn01: tls
            .iter()
            .map(|(id, token)| pb::TlsAlpn01Challenge {
                identifier: (*id).into(),
                token: (*token).into(),
                key_authorization: key_auth(token),
            })
            .collect(),
    })
}

#[tokio::test]
async fn tls_alpn01_without_its_section_is_refused_with_a_typed_code() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    assert_eq!(a.hello().challenge_modes, vec!["http-01/webroot"]);
    let http_token = "token_http_0123456789";
    let r = a
        .handle(msg(
            "p-1",
            present(
                &[("192.0.2.10", http_token)],
                &[("192.0.2.10", "token_tls_01234567890")],
            ),
        ))
        .await;
    let reply::Result::Failure(f) = r else {
        panic!("{r:?}")
    };
    assert_eq!(f.kind(), pb::FailureCode::ChallengeModeUnavailable);
    assert!(
        f.message.contains("no [tls_alpn01] section"),
        "{}",
        f.message
    );
    let file = dir
        .path()
        .join("www/.well-known/acme-challenge")
        .join(http_token);
    assert!(!file.exists(), "nothing of the message presented");
}

#[tokio::test]
async fn a_message_with_both_kinds_is_presented_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = agent_with(
        dir.path(),
        &format!("[tls_alpn01]\nmode = \"loopback\"\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    assert_eq!(
        a.hello().challenge_modes,
        vec!["http-01/webroot", "tls-alpn-01/loopback"]
    );
    let tls = a.tls_alpn01.as_ref().unwrap();
    // The HTTP-01 part fails: the TLS-ALPN-01 part is taken back.
    let r = a
        .handle(msg(
            "p-1",
            present(
                &[("198.51.100.1", "token_http_0123456789")],
                &[("192.0.2.10", "token_tls_01234567890")],
            ),
        ))
        .await;
    assert!(
        matches!(&r, reply::Result::Failure(f) if f.code == "not_my_ip"),
        "{r:?}"
    );
    assert!(
        !tls.is_listening(),
        "the TLS-ALPN-01 challenge was taken back"
    );
    // Both good: both live; one clear covers both kinds.
    let r = a
        .handle(msg(
            "p-2",
            present(
                &[("192.0.2.10", "token_http_0123456789")],
                &[("192.0.2.10", "token_tls_01234567890")],
            ),
        ))
        .await;
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");
    assert!(tls.is_listening());
    let file = dir
        .path()
        .join("www/.well-known/acme-challenge/token_http_0123456789");
    assert!(file.exists());
    let r = a
        .handle(msg(
            "p-3",
            Cmd::ClearChallenges(pb::ClearChallenges {
                tokens: vec![
                    "token_http_0123456789".into(),
                    "token_tls_01234567890".into(),
                ],
            }),
        ))
        .await;
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");
    assert!(!tls.is_listening());
    assert!(!file.exists());
    // Only TLS-ALPN-01: HTTP-01 is not touched (its standalone would bind port 80).
    let r = a
        .handle(msg(
            "p-4",
            present(&[], &[("192.0.2.10", "token_tls_01234567890")]),
        ))
        .await;
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");
    assert!(tls.is_listening());
    let r = a.handle(msg("p-5", present(&[], &[]))).await;
    assert!(
        matches!(&r, reply::Result::Failure(f) if f.code == "bad_request"),
        "{r:?}"
    );
}

#[tokio::test]
async fn hello_asks_for_the_configured_names_and_csrs_name_what_the_coordinator_sends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    let text = format!(
        "version = 1\nstate_dir = \"{d}/state\"\nips = [\"192.0.2.10\"]\n\
         names = [\"API.example.net\", \"web-1.example.net\"]\n\
         [http01]\nmode = \"webroot\"\nwebroot = \"{d}/www\"\nself_check = false\n\
         [targets.t]\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\nverify = []\n",
        d = dir.path().display()
    );
    let config =
        AgentConfig::from_toml(&text, std::path::Path::new("agent.toml"), Vec::new()).unwrap();
    let a = Agent::new(config).unwrap();
    assert_eq!(
        a.hello().requested_names,
        ["api.example.net", "web-1.example.net"]
    );
    let csr = |id: &str, key_type: i32, identifiers: &[&str]| {
        msg(
            id,
            Cmd::CreateCsr(pb::CreateCsr {
                identifiers: identifiers.iter().map(|s| s.to_string()).collect(),
                key_type,
                target: "t".into(),
                cert_id: "c-abc".into(),
                key_group: String::new(),
            }),
        )
    };
    // A name the host did not ask for is the coordinator's call: the CSR names it.
    let ids = ["192.0.2.10", "other.example.org", "*.example.net"];
    let reply::Result::Csr(c) = a
        .handle(csr("r-1", pb::KeyType::Rsa3072 as i32, &ids))
        .await
    else {
        panic!("a CSR");
    };
    let info = certfleet_shared::x509::CsrInfo::from_der(&c.csr_der).unwrap();
    assert_eq!(info.ips, vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(info.dns_names, ["other.example.org", "*.example.net"]);
    assert_eq!(info.key_algorithm, "1.2.840.113549.1.1.1", "RSA");
    let refused = [
        (
            csr("r-2", 99, &["192.0.2.10"]),
            "bad_request",
            "key type 99",
        ),
        (
            csr("r-3", 1, &["192.0.2.10", "a_b.example.net"]),
            "bad_request",
            "\"a_b.example.net\"",
        ),
        (csr("r-4", 1, &["192.0.2.11"]), "not_my_ip", "192.0.2.11"),
    ];
    for (m, code, want) in refused {
        let reply::Result::Failure(f) = a.handle(m).await else {
            panic!("refused: {want}");
        };
        assert_eq!(f.code, code, "{}", f.message);
        assert!(
            f.message.contains(want),
            "{:?} should name {want:?}",
            f.message
        );
    }
}

/// Shutdown while a deploy hook runs: the drain outlasts its usual length for the hook,
/// which finishes; its result is in the (undeliverable) reply and recorded, so the
/// coordinator's repeat of the install after the restart reports it, without a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_drain_waits_for_a_running_deploy_hook_and_its_result_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let hook_toml = format!(
        "deploy_hook = [\"/bin/sh\", \"-c\", \"sleep 2; echo run >> {}; echo late >&2; exit 4\"]\n\
         deploy_hook_timeout = \"30s\"\n",
        runs.display()
    );
    let a = agent_on(dir.path(), "127.0.0.1", &hook_toml);
    let reply::Result::Csr(csr) = a.handle(msg("r-csr", csr_cmd_for("127.0.0.1"))).await else {
        panic!("a CSR");
    };
    let install = |id: &str| {
        msg(
            id,
            Cmd::Install(pb::InstallCertificate {
                target: "t".into(),
                chain_pem: crate::install::tests::sign(&csr.csr_der),
            }),
        )
    };
    let tasks = TaskTracker::new();
    let running = {
        let a = a.clone();
        let m = install("r-install");
        tasks.spawn(async move { a.handle(m).await })
    };
    let started = Instant::now();
    while a.installer.hooks.running_until().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the hook never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Shutdown, as `run` does it, with a drain far shorter than the hook.
    let asked = Instant::now();
    a.installer.hooks.stop_starting();
    tasks.close();
    a.drain(&tasks, Duration::from_millis(100)).await;
    assert!(tasks.is_empty(), "the drain ended before the hook");
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "the hook ran on after the drain's usual length ({:?})",
        asked.elapsed()
    );
    let reply::Result::Installed(report) = running.await.unwrap() else {
        panic!("installed");
    };
    let hook = report.deploy_hook.expect("the hook's result");
    assert_eq!(
        (hook.ok, hook.exit_code, hook.stderr_tail.as_str()),
        (false, Some(4), "late")
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");

    // The restarted agent, asked again under a new id: the recorded result, no new run.
    let restarted = agent_on(dir.path(), "127.0.0.1", &hook_toml);
    let reply::Result::Installed(again) = restarted.handle(install("r-again")).await else {
        panic!("installed");
    };
    assert_eq!(again.serial, report.serial);
    assert_eq!(again.deploy_hook, Some(hook));
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
}
