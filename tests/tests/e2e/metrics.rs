//! Metrics scraped over HTTP match the fleet's real state.

use std::time::Duration;

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::Agent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{pebble_and_coordinator_with, ISSUE_TIMEOUT};

pub(crate) async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("application/openmetrics-text"), "{out}");
    out
}

/// The value of the first sample whose line starts with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_fleet() {
    let port = certfleet_tests::net::free_port().expect("port");
    let copts = CoordinatorOptions {
        extra_config: format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Default::default()
    };
    let (pebble, coord) = pebble_and_coordinator_with(Default::default(), copts).await;
    let mut agent = Agent::new("metered", pebble.http_port()).expect("agent");
    let agent_port = certfleet_tests::net::free_port().expect("port");
    agent
        .append_config(&format!(
            "\n[metrics]\nlisten = \"127.0.0.1:{agent_port}\"\n"
        ))
        .expect("config");
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    let row = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed");
    let host = agent.id().unwrap().to_owned();

    let m = scrape(port).await;
    assert_eq!(value(&m, "certfleet_agents "), 1.0);
    assert_eq!(value(&m, "certfleet_agents_connected "), 1.0);
    assert_eq!(
        value(&m, "certfleet_certificates{state=\"installed\"}"),
        1.0
    );
    assert_eq!(value(&m, "certfleet_certificates{state=\"failed\"}"), 0.0);
    assert_eq!(value(&m, "certfleet_certificates_at_risk "), 0.0);
    // Beside the ids, what an alert names: the host's name, the primary identifier and
    // the issuer.
    let labels = format!(
        "{{cert_id=\"{}\",host_id=\"{host}\",hostname=\"metered\",identifier=\"{}\",issuer=\"{}\"}}",
        row.cert_id, row.identifiers[0], row.issuer
    );
    let not_after = value(
        &m,
        &format!("certfleet_certificate_not_after_timestamp_seconds{labels}"),
    );
    let want =
        certfleet_tests::pki::rfc3339_unix(row.not_after.as_deref().unwrap()).unwrap() as f64;
    assert_eq!(not_after, want, "notAfter gauge matches certs --json");
    let ratio = value(
        &m,
        &format!("certfleet_certificate_remaining_lifetime_ratio{labels}"),
    );
    assert!(
        ratio > 0.9 && ratio <= 1.0,
        "a fresh certificate has most of its life ahead: {ratio}"
    );
    assert!(
        value(
            &m,
            &format!("certfleet_certificate_next_renewal_timestamp_seconds{labels}")
        ) < not_after
    );
    assert!(
        m.contains(
            "certfleet_acme_request_duration_seconds_count{issuer=\"pebble\",op=\"new order\"}"
        ),
        "{m}"
    );

    // The agent's own endpoint.
    let a = scrape(agent_port).await;
    assert_eq!(value(&a, "certfleet_agent_session_connected "), 1.0);
    assert_eq!(
        value(
            &a,
            "certfleet_agent_installs_total{target=\"default\",result=\"ok\"}"
        ),
        1.0
    );
    assert!(
        value(&a, "certfleet_agent_challenges_served_total ") >= 2.0,
        "pebble fetched both challenges"
    );
    assert_eq!(
        value(
            &a,
            "certfleet_agent_certificate_not_after_timestamp_seconds{target=\"default\"}"
        ),
        want
    );

    // A forced renewal shows up in the renewal counter.
    coord
        .cli_ok(&["certs", "renew", &row.cert_id])
        .await
        .expect("renew");
    let deadline = std::time::Instant::now() + ISSUE_TIMEOUT;
    loop {
        let m = scrape(port).await;
        if m.contains(
            "certfleet_renewals_total{issuer=\"pebble\",reason=\"an operator forced renewal\"} 1",
        ) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "renewal never counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let notfound = {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("io");
        s.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("io");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read response");
        out
    };
    assert!(notfound.starts_with("HTTP/1.1 404"));
}
