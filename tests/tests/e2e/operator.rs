//! Operator commands: join tokens listed and revoked (and a revoked token refused), and the
//! one-screen status.

use certfleet_tests::Agent;
use serde_json::Value;

use crate::support::{pebble_and_coordinator, ISSUE_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_and_revoked_and_status_sums_up_the_fleet() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let mut agent = Agent::new("op", pebble.http_port()).expect("agent");
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed");
    let host = agent.id().expect("host id").to_owned();

    let spare = coord
        .cli_ok(&["token", "create", "--ttl", "2h"])
        .await
        .expect("token create");
    let spare = spare.trim().to_owned();
    let list: Vec<Value> = serde_json::from_str(
        &coord
            .cli_ok(&["tokens", "--json"])
            .await
            .expect("tokens --json"),
    )
    .expect("json");
    assert_eq!(list.len(), 2, "{list:?}");
    let used = list
        .iter()
        .find(|t| t["state"] == "used")
        .expect("the used token");
    assert_eq!(used["used_by"][0].as_str(), Some(host.as_str()));
    let usable = list
        .iter()
        .find(|t| t["state"] == "usable")
        .expect("the spare token");
    let id = usable["id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 16);
    let text = serde_json::to_string(&list).unwrap();
    assert!(!text.contains(&spare), "the token itself is never listed");

    // Refusals name the fix; revocation by an 8-digit prefix works.
    let short = coord.cli(&["tokens", "revoke", "abc"]).await.unwrap();
    assert!(
        !short.status.success()
            && String::from_utf8_lossy(&short.stderr).contains("at least 8 hex digits")
    );
    let unknown = coord
        .cli(&["tokens", "revoke", "0000000000"])
        .await
        .unwrap();
    assert!(
        !unknown.status.success()
            && String::from_utf8_lossy(&unknown.stderr).contains("no token with id")
    );
    let revoked = coord
        .cli_ok(&["tokens", "revoke", &id[..8]])
        .await
        .expect("tokens revoke");
    assert!(revoked.contains(&id), "{revoked}");
    let list: Vec<Value> =
        serde_json::from_str(&coord.cli_ok(&["tokens", "--json"]).await.unwrap()).unwrap();
    assert!(
        list.iter()
            .any(|t| t["id"] == id.as_str() && t["state"] == "revoked"),
        "{list:?}"
    );

    // A revoked token is refused, and nothing is left behind on the host.
    let mut late = Agent::new("late", pebble.http_port()).expect("agent");
    let out = late
        .enroll(&coord.url(), &spare, coord.ca_sha256())
        .await
        .expect("enroll runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(late.enrollment_files_present().is_empty());
    let audit = coord
        .cli_ok(&["audit", "--json", "--kind", "token_revoked"])
        .await
        .unwrap();
    assert_eq!(audit.lines().count(), 1, "{audit}");
    assert!(audit.contains("operator:operator"));

    // Request ids tie the coordinator's log line to the agent's.
    let coord_logs = coord.logs();
    let line = coord_logs
        .lines()
        .find(|l| l.contains("agent answered") && l.contains("create CSR"))
        .unwrap_or_else(|| panic!("no 'agent answered' line for the CSR:\n{coord_logs}"));
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("request_id="))
        .expect("request_id field")
        .to_owned();
    let agent_logs = agent.logs();
    assert!(
        agent_logs
            .lines()
            .any(|l| l.contains(&format!("request_id={id}")) && l.contains("new key and CSR made")),
        "agent log lacks request_id={id}:\n{agent_logs}"
    );

    // Status.
    // (`cli_ok`: a healthy fleet exits 0.)
    let status: Value = serde_json::from_str(
        &coord
            .cli_ok(&["status", "--json"])
            .await
            .expect("status --json"),
    )
    .unwrap();
    assert_eq!(status["healthy"], true, "{status:#}");
    assert_eq!(status["problems"], serde_json::json!([]));
    assert_eq!(status["hosts"]["total"], 1);
    assert_eq!(status["hosts"]["connected"], 1);
    assert_eq!(status["certificates"]["by_state"]["installed"], 1);
    assert_eq!(status["certificates"]["at_risk"], 0);
    assert_eq!(
        status["soonest_expiry"]["host_id"].as_str(),
        Some(host.as_str())
    );
    let human = coord.cli_ok(&["status"]).await.expect("status");
    assert!(
        human.contains("1 connected")
            && human.contains("installed 1")
            && human.contains("at risk       none"),
        "{human}"
    );
}
