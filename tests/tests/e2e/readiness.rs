//! systemd readiness and the health endpoints with a real coordinator and agent: the agent
//! under a fake `$NOTIFY_SOCKET` says READY=1 once running, then STATUS= when its session
//! is up; `/readyz` follows the session (200 with it, 503 once the coordinator is gone,
//! 200 again after it returns) while `/healthz` stays 200; SIGTERM sends STOPPING=1.

use std::time::Duration;

use certfleet_tests::coordinator::{CoordinatorOptions, RestartMode};
use certfleet_tests::webserver::http_get;
use certfleet_tests::Agent;
use tokio::net::UnixDatagram;

use crate::support::pebble_and_coordinator_with;

async fn get(port: u16, path: &str) -> (u16, String) {
    let r = http_get(([127, 0, 0, 1], port).into(), path)
        .await
        .expect("GET on the metrics listener");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// The next notification's lines.
async fn next(sock: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(60), sock.recv(&mut buf))
        .await
        .expect("a notification within 60 s")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `/readyz` of `port` until it answers `status`.
async fn wait_readyz(port: u16, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, body) = get(port, "/readyz").await;
        if s == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still {s} ({body:?}), waited for {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ready_status_and_health_follow_the_session() {
    let coord_port = certfleet_tests::net::free_port().expect("port");
    let copts = CoordinatorOptions {
        extra_config: format!("\n[metrics]\nlisten = \"127.0.0.1:{coord_port}\"\n"),
        ..Default::default()
    };
    let (pebble, mut coord) = pebble_and_coordinator_with(Default::default(), copts).await;
    assert_eq!(get(coord_port, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        get(coord_port, "/readyz").await,
        (200, "ready: serving; store readable\n".into())
    );

    let mut agent = Agent::new("ready", pebble.http_port()).expect("agent");
    let agent_port = certfleet_tests::net::free_port().expect("port");
    agent
        .append_config(&format!(
            "\n[metrics]\nlisten = \"127.0.0.1:{agent_port}\"\n"
        ))
        .expect("config");
    agent.enroll_with(&coord).await.expect("enroll");

    let sock_path = agent.host_dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let sock_env = sock_path.to_string_lossy().into_owned();
    agent
        .start_with_env(&[("NOTIFY_SOCKET", &sock_env)])
        .expect("start");

    let ready = next(&sock).await;
    assert_eq!(ready[0], "READY=1", "{ready:?}");
    assert!(
        ready[1].starts_with("STATUS=running; connecting to https://"),
        "{ready:?}"
    );
    // READY=1 comes after the metrics listener is up: no retry needed.
    assert_eq!(get(agent_port, "/healthz").await, (200, "ok\n".into()));
    let status = next(&sock).await;
    assert!(
        status.len() == 1 && status[0].starts_with("STATUS=session with https://"),
        "{status:?}"
    );
    assert_eq!(
        wait_readyz(agent_port, 200).await,
        "ready: session with the coordinator established\n"
    );

    // The coordinator goes away: the agent stays alive but is not ready.
    coord
        .stop_current(RestartMode::Term)
        .await
        .expect("stop coordinator");
    assert_eq!(
        wait_readyz(agent_port, 503).await,
        "not ready: no session with the coordinator (connecting; see the agent's log)\n"
    );
    assert_eq!(get(agent_port, "/healthz").await, (200, "ok\n".into()));
    assert!(
        next(&sock).await[0].starts_with("STATUS="),
        "a status while reconnecting"
    );

    coord.start_again().await.expect("coordinator back");
    wait_readyz(agent_port, 200).await;

    // Drain the status lines of the reconnection, then stop: STOPPING=1 arrives.
    let stop = agent.stop(Duration::from_secs(20));
    let stopping = async {
        loop {
            if next(&sock).await == ["STOPPING=1"] {
                return;
            }
        }
    };
    let (stopped, ()) = tokio::join!(stop, stopping);
    let (status, by_itself) = stopped.expect("stop").expect("was running");
    assert!(by_itself && status.success(), "{status:?}");
}
