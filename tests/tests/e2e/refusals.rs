//! Enrollment refusals: a token that was used, expired or never existed, and a wrong CA
//! fingerprint. Each refusal exits non-zero, says why, and leaves nothing half-enrolled;
//! a fingerprint mismatch does not burn the token.
//!
//! Config refusals: what could only fail later (a trust_root without a certificate, an
//! agent address that is not one or is link-local, a symlinked webroot) stops the daemon
//! at start, with one `error:` line on stderr that names the value or the file.

use std::time::Duration;

use certfleet_tests::{Agent, Coordinator};

use crate::support::{pebble_and_coordinator, stderr_of};

/// Asserts the enrollment was refused with `reason` (case-insensitive, on stderr) and
/// the agent wrote none of its enrollment files.
fn assert_refused(agent: &Agent, out: &std::process::Output, reason: &str) {
    let stderr = stderr_of(out);
    assert!(
        !out.status.success(),
        "{}: enrollment should be refused ({reason}), but exited {}; stdout={:?} stderr={stderr:?}",
        agent.name(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.to_lowercase().contains(reason),
        "{}: refusal should say {reason:?} on stderr, got {stderr:?}",
        agent.name()
    );
    let present = agent.enrollment_files_present();
    assert!(
        present.is_empty(),
        "{}: refused enrollment left {present:?} in {}",
        agent.name(),
        agent.state_dir().display()
    );
}

/// A token of the same shape as `token` that the coordinator never issued: eight
/// alphanumerics near the end (sparing the last two, which may carry encoding padding
/// bits) are each moved to another character of the same class.
fn unknown_like(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let mut changed = 0;
    let n = chars.len();
    for c in chars[..n.saturating_sub(2)].iter_mut().rev() {
        if changed == 8 {
            break;
        }
        let next = match *c {
            '0'..='8' | 'a'..='y' | 'A'..='Y' => char::from(*c as u8 + 1),
            '9' => '0',
            'z' => 'a',
            'Z' => 'A',
            _ => continue,
        };
        *c = next;
        changed += 1;
    }
    chars.into_iter().collect()
}

async fn new_agent(pebble: &certfleet_tests::Pebble, name: &str) -> Agent {
    Agent::new(name, pebble.http_port()).expect("agent")
}

async fn enroll(
    agent: &mut Agent,
    coord: &Coordinator,
    token: &str,
    fp: &str,
) -> std::process::Output {
    agent
        .enroll(&coord.url(), token, fp)
        .await
        .expect("run enroll")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_token_is_refused() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let token = coord.create_token(None).await.expect("token");
    let mut first = new_agent(&pebble, "first").await;
    let out = enroll(&mut first, &coord, &token, coord.ca_sha256()).await;
    assert!(out.status.success(), "first use of the token: {out:?}");

    let mut second = new_agent(&pebble, "second").await;
    let out = enroll(&mut second, &coord, &token, coord.ca_sha256()).await;
    assert_refused(&second, &out, "already used");
    let hosts = coord.hosts().await.expect("hosts");
    assert_eq!(
        hosts.len(),
        1,
        "only the first enrollment made a host: {hosts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let token = coord
        .create_token(Some("1s"))
        .await
        .expect("token --ttl 1s");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut agent = new_agent(&pebble, "late").await;
    let out = enroll(&mut agent, &coord, &token, coord.ca_sha256()).await;
    assert_refused(&agent, &out, "expired");
    assert!(coord.hosts().await.expect("hosts").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_is_refused() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let real = coord.create_token(None).await.expect("token");
    let fake = unknown_like(&real);
    assert_ne!(fake, real);
    let mut agent = new_agent(&pebble, "stranger").await;
    let out = enroll(&mut agent, &coord, &fake, coord.ca_sha256()).await;
    assert_refused(&agent, &out, "unknown");
    assert!(coord.hosts().await.expect("hosts").is_empty());
    // The real token is untouched.
    let out = enroll(&mut agent, &coord, &real, coord.ca_sha256()).await;
    assert!(out.status.success(), "the real token still works: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_fingerprint_is_refused_without_consuming_the_token() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let token = coord.create_token(None).await.expect("token");
    let right = coord.ca_sha256().to_owned();
    let wrong: String = right
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let mut agent = new_agent(&pebble, "careful").await;
    let out = enroll(&mut agent, &coord, &token, &wrong).await;
    assert_refused(&agent, &out, "fingerprint");
    assert!(
        coord.hosts().await.expect("hosts").is_empty(),
        "no host after a fingerprint refusal"
    );

    let out = enroll(&mut agent, &coord, &token, &right).await;
    assert!(
        out.status.success(),
        "the token must survive a fingerprint mismatch (the agent checks before sending it): {out:?}"
    );
    assert!(
        agent.enrollment_files_present().len() == certfleet_tests::agent::ENROLLMENT_FILES.len()
    );
}

/// Config refusals run the binaries only (no pebble, no root needed).
pub(crate) const REFUSAL_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn toml_string(s: impl std::fmt::Display) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The command failed, and stderr is exactly one line, `error: …`, that contains each of
/// `wants` exactly once.
pub(crate) fn assert_refused_once(what: &str, out: &std::process::Output, wants: &[&str]) {
    let stderr = stderr_of(out);
    assert!(
        !out.status.success(),
        "{what}: should be refused, but exited {}; stderr={stderr:?}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error: "),
        "{what}: the refusal should be printed once, as one `error:` line; stderr={stderr:?}"
    );
    for want in wants {
        assert_eq!(
            stderr.matches(want).count(),
            1,
            "{what}: stderr should say {want:?} exactly once; stderr={stderr:?}"
        );
    }
}

/// A coordinator config in `dir` whose issuer trusts `trust_root`.
pub(crate) fn coordinator_config(
    dir: &std::path::Path,
    trust_root: &std::path::Path,
) -> std::path::PathBuf {
    let port = certfleet_tests::net::free_port().expect("free port");
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n\
             state_dir = {state}\n\
             [server]\n\
             listen = \"127.0.0.1:{port}\"\n\
             [[issuer]]\n\
             name = \"private-ca\"\n\
             directory = \"https://127.0.0.1:14000/dir\"\n\
             trust_root = {root}\n\
             allow_private_ips = true\n",
            state = toml_string(dir.join("state").display()),
            root = toml_string(trust_root.display()),
        ),
    )
    .expect("write config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_trust_root_without_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The operator pointed trust_root at the CA's key instead of its certificate.
    let key_only = dir.path().join("ca-key.pem");
    let key = rcgen::KeyPair::generate().expect("key");
    std::fs::write(&key_only, key.serialize_pem()).expect("write key");
    let config = coordinator_config(dir.path(), &key_only);
    let config_arg = config.to_str().expect("utf-8 path");

    // The file exists, so the config loads and `init` works ...
    let out = certfleet_tests::coordinator::run_with_config(&config, &["init"], REFUSAL_TIMEOUT)
        .await
        .expect("run init");
    assert!(out.status.success(), "init: {out:?}");
    // ... but `serve` refuses to start rather than fail at the first ACME call.
    let out = certfleet_tests::coordinator::run_with_config(&config, &["serve"], REFUSAL_TIMEOUT)
        .await
        .expect("serve must exit on its own, refusing the trust_root");
    let root = key_only.display().to_string();
    assert_refused_once(
        "serve with a key as trust_root",
        &out,
        &[
            config_arg,
            &format!("[[issuer]] \"private-ca\": trust_root {root}: holds no certificate"),
            "-----BEGIN CERTIFICATE-----",
        ],
    );

    // An empty file: the same.
    std::fs::write(&key_only, "").expect("truncate");
    let out = certfleet_tests::coordinator::run_with_config(&config, &["serve"], REFUSAL_TIMEOUT)
        .await
        .expect("serve must exit on its own, refusing the trust_root");
    assert_refused_once(
        "serve with an empty trust_root",
        &out,
        &[&format!(
            "trust_root {root}: holds no certificate (the file is empty)"
        )],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_is_reported_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nowhere.toml");
    let out = certfleet_tests::coordinator::run_with_config(&missing, &["serve"], REFUSAL_TIMEOUT)
        .await
        .expect("run serve");
    let path = missing.display().to_string();
    assert_refused_once(
        "coordinator without its config",
        &out,
        &[
            &format!("cannot read config {path}"),
            "No such file or directory",
        ],
    );
    let out = certfleet_tests::agent::run_with_config(&missing, &["run"], REFUSAL_TIMEOUT)
        .await
        .expect("run agent");
    assert_refused_once(
        "agent without its config",
        &out,
        &[
            &format!("cannot read config {path}"),
            "No such file or directory",
        ],
    );
}

/// An agent config in `dir` with these `ips` and `[http01]` body.
pub(crate) fn agent_config(
    dir: &std::path::Path,
    ips: &[&str],
    http01: &str,
) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    let ips: Vec<String> = ips.iter().map(toml_string).collect();
    std::fs::write(
        &config,
        format!(
            "version = 1\n\
             state_dir = {state}\n\
             ips = [{ips}]\n\
             [http01]\n\
             {http01}\n",
            state = toml_string(dir.join("state").display()),
            ips = ips.join(", "),
        ),
    )
    .expect("write config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_bad_and_link_local_ips_naming_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 4] = [
        (
            &["127.0.0.1", "::1", "10.0.0.300"],
            "ips[2]: \"10.0.0.300\" is not an IP address",
        ),
        (
            &["127.0.0.1", "169.254.7.7"],
            "ips[1]: 169.254.7.7 is a link-local address (169.254.0.0/16): no CA can reach it",
        ),
        (
            &["fe80::1"],
            "ips[0]: fe80::1 is a link-local address (fe80::/10): no CA can reach it",
        ),
        (
            &["127.0.0.1", "::1", "127.0.0.1"],
            "ips[2]: \"127.0.0.1\" is listed twice",
        ),
    ];
    for (ips, want) in cases {
        let config = agent_config(dir.path(), ips, "port = 5002");
        let config_arg = config.to_str().expect("utf-8 path");
        let out = certfleet_tests::agent::run_with_config(&config, &["run"], REFUSAL_TIMEOUT)
            .await
            .expect("agent run must exit, refusing its config");
        assert_refused_once(
            &format!("agent with ips {ips:?}"),
            &out,
            &[config_arg, want],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_symlinked_webroot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("srv-www");
    std::fs::create_dir(&real).expect("mkdir");
    let link = dir.path().join("www");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let http01 = format!(
        "mode = \"webroot\"\nwebroot = {}",
        toml_string(link.display())
    );
    let config = agent_config(dir.path(), &["127.0.0.1"], &http01);
    let out = certfleet_tests::agent::run_with_config(&config, &["run"], REFUSAL_TIMEOUT)
        .await
        .expect("agent run must exit, refusing its config");
    let real = real.canonicalize().expect("canonicalize");
    assert_refused_once(
        "agent with a symlinked webroot",
        &out,
        &[
            &format!("[http01] webroot {} is a symlink", link.display()),
            &format!("its real path is {}", real.display()),
            "could point its writes anywhere",
        ],
    );
    assert!(
        !real.join(".well-known").exists(),
        "nothing was created behind the link"
    );
}
