//! Enrollment refusals: a token that was used, expired or never existed, and a wrong CA
//! fingerprint. Each refusal exits non-zero, says why, and leaves nothing half-enrolled;
//! a fingerprint mismatch does not burn the token.

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
