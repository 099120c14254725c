//! Two coordinators of one fleet, the second made from the first's `node export` bundle
//! by `node join`: one fleet CA (same `ca-fingerprint`), each node its own server
//! certificate; an agent enrolled with both addresses enrolls through whichever is up,
//! holds one session, and when that coordinator is killed its session moves to the other
//! within seconds (measured and printed).
//!
//! Each node still has its own sled store (a shared PostgreSQL store is the next step), so
//! a host enrolled on one is unknown to the other. To show a real session move, the
//! second node's store is a copy of the first's taken while the first was stopped (after
//! enrollment and the first installed certificate): a stand-in for the shared database.

use std::path::Path;
use std::time::{Duration, Instant};

use certfleet_tests::coordinator::{CoordinatorOptions, RestartMode};
use certfleet_tests::{pki, Agent, Coordinator};

use crate::support::{pebble_and_coordinator, ISSUE_TIMEOUT};

/// Copies a (stopped coordinator's) store directory.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// The coordinator URL of the agent's session, from the `session.json` the running agent
/// writes (what `status` shows), once it is connected to one of `urls`.
async fn wait_session_on(agent: &Agent, urls: &[&str], timeout: Duration) -> String {
    let start = Instant::now();
    let path = agent.state_dir().join("session.json");
    loop {
        let status = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(s) = status {
            let url = s["coordinator"].as_str().unwrap_or_default();
            if s["connected"] == true && urls.contains(&url) {
                return url.to_owned();
            }
        }
        assert!(
            start.elapsed() < timeout,
            "no session on {urls:?} within {timeout:?}; agent log:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_between_two_coordinators_of_one_fleet() {
    if certfleet_tests::coordinator::test_store_is_postgres() {
        eprintln!("SKIPPED under CERTFLEET_TEST_STORE=postgres: it copies one node's sled store to the other (several nodes on PostgreSQL: the ha tests)");
        return;
    }
    let (pebble, mut a) = pebble_and_coordinator().await;

    // The second node, from the first's bundle.
    let bundle = a.export_bundle().await.expect("node export");
    assert_eq!(
        pki::file_mode(&bundle).expect("mode"),
        0o600,
        "the bundle holds the CA key"
    );
    let mut b = Coordinator::join_with(&pebble, CoordinatorOptions::default(), &bundle)
        .await
        .expect("second node from the bundle");
    let (fp_a, fp_b) = (
        a.ca_fingerprint_cli().await.expect("fingerprint a"),
        b.ca_fingerprint_cli().await.expect("fingerprint b"),
    );
    println!("fleet CA: node a {fp_a}, node b {fp_b}");
    assert_eq!(fp_a, fp_b, "one fleet CA on both nodes");
    assert_eq!(b.ca_sha256(), a.ca_sha256());
    let server = |c: &Coordinator| std::fs::read(c.state_dir().join("server.key")).unwrap();
    assert_ne!(server(&a), server(&b), "each node its own server key");
    // Joining the node's own fleet again changes nothing.
    let bundle_s = bundle.to_string_lossy().into_owned();
    let again = a
        .cli_ok(&["node", "join", "--bundle", &bundle_s])
        .await
        .expect("join again");
    assert!(again.contains("nothing changed"), "{again}");

    // Enrollment through whichever node is up: b is down, a answers.
    b.stop_current(RestartMode::Term).await.expect("stop b");
    let (url_a, url_b) = (a.url(), b.url());
    let mut agent = Agent::new("multi", pebble.http_port()).expect("agent");
    let token = a.create_token(None).await.expect("token");
    let out = agent
        .enroll_many(&[&url_b, &url_a], &token, a.ca_sha256())
        .await
        .expect("enroll");
    assert!(
        out.status.success(),
        "enrollment past the node that is down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = agent.id().expect("host id").to_owned();
    let enrollment: serde_json::Value = serde_json::from_slice(
        &std::fs::read(agent.state_dir().join("enrollment.json")).expect("enrollment.json"),
    )
    .expect("JSON");
    assert_eq!(
        enrollment["coordinators"],
        serde_json::json!([url_b, url_a])
    );
    agent.start().expect("start agent");
    agent
        .wait_installed(&a, ISSUE_TIMEOUT)
        .await
        .expect("installed through node a");
    agent
        .stop(Duration::from_secs(15))
        .await
        .expect("stop agent");

    // b's store := a copy of a's, taken while a is stopped (stand-in for a shared store).
    a.stop_current(RestartMode::Term).await.expect("stop a");
    let b_store = b.state_dir().join("store");
    std::fs::remove_dir_all(&b_store).expect("remove b's own store");
    copy_dir(&a.state_dir().join("store"), &b_store).expect("copy the store");
    a.start_again().await.expect("a again");
    b.start_again().await.expect("b again");

    agent.start().expect("agent again");
    let first = wait_session_on(&agent, &[&url_a, &url_b], Duration::from_secs(30)).await;
    let on_a = first == url_a;
    let (mut dying, survivor, survivor_url) = if on_a {
        (a, b, url_b.clone())
    } else {
        (b, a, url_a.clone())
    };
    println!(
        "agent connected to {first} (node {})",
        if on_a { "a" } else { "b" }
    );
    let status = agent.cli(&["status"]).await.expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("session: connected to {first}")),
        "{text}"
    );

    // Kill the connected node: the session moves to the other.
    let killed = Instant::now();
    dying.stop_current(RestartMode::Kill).await.expect("kill");
    let moved = wait_session_on(&agent, &[&survivor_url], Duration::from_secs(15)).await;
    let failover = killed.elapsed();
    println!(
        "FAILOVER: session moved from {first} to {moved} in {} ms",
        failover.as_millis()
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    survivor
        .wait_connected(&host, true, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; agent log:\n{}", agent.logs()));
    let row = agent
        .wait_installed(&survivor, ISSUE_TIMEOUT)
        .await
        .expect("the certificate stays installed as the surviving node sees it");
    assert_eq!(row.host_id, host);
    let status = agent.cli(&["status", "--json"]).await.expect("status");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(v["session"]["connected"], true, "{v}");
    assert_eq!(v["session"]["coordinator"], survivor_url, "{v}");
    assert_eq!(v["coordinators"], serde_json::json!([url_b, url_a]), "{v}");
    agent
        .stop(Duration::from_secs(15))
        .await
        .expect("stop agent");
    drop((dying, pebble));
}
