//! The coordinator orders the challenge type a host can serve and falls back to the next
//! one when it fails: a namespace host (nginx on 443 for the served check) whose HTTP-01
//! cannot be validated (pebble's HTTP-01 port is one nothing listens on, as when port 80
//! is firewalled) and whose agent answers TLS-ALPN-01 standalone on its addresses gets its
//! IP certificate through TLS-ALPN-01 after the HTTP-01 order failed.
//!
//! pebble's `tlsPort` is the agent's `[tls_alpn01] port` (8443) rather than 443, because
//! nginx holds 443 on the host's addresses to serve the certificate afterwards.

use std::time::Duration;

use certfleet_tests::fleet::{wait_all_served, Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{Coordinator, Pebble, PebbleOptions};

use crate::world::lan_pebble_and_coordinator;

const SERVE_TIMEOUT: Duration = Duration::from_secs(120);
/// Where pebble validates HTTP-01: no one listens there.
const DEAD_HTTP_PORT: u16 = 5002;
/// Where pebble validates TLS-ALPN-01, and the agent's standalone port.
const ALPN_PORT: u16 = 8443;

async fn pebble_and_coordinator(lan: &Lan) -> (Pebble, Coordinator) {
    let pebble_opts = PebbleOptions {
        validation_ports: Some((DEAD_HTTP_PORT, ALPN_PORT)),
        ..Default::default()
    };
    lan_pebble_and_coordinator(lan, pebble_opts, Default::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_failing_falls_back_to_tls_alpn01_and_the_certificate_is_served() {
    let Some(lan) = require_namespaces("challenge_fallback::http01_to_tls_alpn01") else {
        return;
    };
    let (pebble, coord) = pebble_and_coordinator(&lan).await;
    let root = pebble.issuing_root_der().await.expect("root");
    let mut host = FleetHost::new(
        &lan,
        HostSpec::new("alpn1", ServerKind::Nginx, Challenge::Standalone),
    )
    .await
    .expect("host");
    host.agent
        .append_config(&format!(
            "\n[tls_alpn01]\nmode = \"standalone\"\nport = {ALPN_PORT}\n"
        ))
        .expect("agent config");
    host.enroll(&coord, &lan).await.expect("enroll");
    host.agent.start().expect("agent start");

    let rows = {
        let mut refs = vec![&mut host];
        wait_all_served(&coord, &mut refs, SERVE_TIMEOUT).await
    };
    let rows = rows.unwrap_or_else(|e| {
        host.agent.dump_logs();
        coord.dump_logs();
        panic!("{e:#}")
    });
    let row = &rows[0];
    host.check_serves(row, &root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Every address was proved by TLS-ALPN-01, and `certs --json` says so.
    let ips: Vec<String> = host.ns.ips().iter().map(|ip| ip.to_string()).collect();
    assert_eq!(
        row.validated_by.keys().cloned().collect::<Vec<_>>(),
        {
            let mut sorted = ips.clone();
            sorted.sort();
            sorted
        },
        "{row:?}"
    );
    assert!(
        row.validated_by.values().all(|k| k == "tls-alpn-01"),
        "{:?}",
        row.validated_by
    );

    // The audit trail: an HTTP-01 order whose validation failed, the switch, then a
    // TLS-ALPN-01 order validated — in that order.
    let all = coord.audit_records().await.expect("audit");
    let kinds: Vec<(String, String)> = all
        .iter()
        .map(|r| {
            let t = r["details"]["type"]
                .as_str()
                .or(r["details"]["challenge"].as_str())
                .unwrap_or("");
            (r["kind"].as_str().unwrap_or("").to_owned(), t.to_owned())
        })
        .filter(|(k, _)| k.starts_with("challenge_") || k == "order_created")
        .collect();
    let pos = |kind: &str, t: &str| {
        kinds
            .iter()
            .position(|(k, ty)| k == kind && ty == t)
            .unwrap_or_else(|| panic!("no {kind} ({t}) in {kinds:?}"))
    };
    let order_http = pos("order_created", "http-01");
    let failed = pos("challenge_failed", "http-01");
    let fallback = pos("challenge_fallback", "http-01");
    let order_alpn = pos("order_created", "tls-alpn-01");
    let validated = pos("challenge_validated", "tls-alpn-01");
    assert!(
        order_http < failed && failed < fallback && fallback < order_alpn && order_alpn < validated,
        "{kinds:?}"
    );
    assert!(
        !kinds
            .iter()
            .any(|(k, t)| k == "challenge_validated" && t == "http-01"),
        "{kinds:?}"
    );
    let switch = all
        .iter()
        .find(|r| r["kind"] == "challenge_fallback")
        .expect("fallback record");
    assert_eq!(switch["details"]["next_type"], "tls-alpn-01", "{switch}");
    coord.audit_verify().await.expect("audit chain intact");
}
