//! Bootstrapping an ephemeral VM (issue #14): the shipped cloud-init script
//! (`deploy/cloud-init/certfleet-bootstrap.sh`, its own commands, see
//! `certfleet_tests::bootstrap`) on a namespace host with nginx — `enroll --wait` holds the
//! service until the first certificate is served, and running it again is "already
//! enrolled", one host, no second token use; join tokens constrained to source CIDRs and
//! fixed labels, refused (naming the constraint, audited) and accepted; enrollment retried
//! while the coordinator is down, bounded by `--timeout`; another fleet's CA refused.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use certfleet_tests::bootstrap::{Bootstrap, BootstrapInput};
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{Agent, Coordinator, RestartMode};

use crate::support::{pebble_and_coordinator, stderr_of};
use crate::world::{lan_pebble_and_coordinator, pebble_on_80_443};

fn lan_url(coord: &Coordinator, lan: &Lan) -> String {
    coord.url_at(IpAddr::V4(lan.gateway_v4()))
}

/// The `enrollment_refused` audit records, as (constraint, reason).
async fn refusals(coord: &Coordinator) -> Vec<(String, String)> {
    coord
        .audit_records()
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r["kind"] == "enrollment_refused")
        .map(|r| {
            let d = &r["details"];
            (
                d["constraint"].as_str().unwrap_or_default().to_owned(),
                d["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_init_script_holds_the_service_until_the_certificate_is_served() {
    let Some(lan) = require_namespaces("bootstrap::cloud_init") else {
        return;
    };
    let (_pebble, coord) =
        lan_pebble_and_coordinator(&lan, pebble_on_80_443(), Default::default()).await;
    let host = FleetHost::new(
        &lan,
        HostSpec::new("vm-1", ServerKind::Nginx, Challenge::Webroot),
    )
    .await
    .expect("host");
    let bootstrap_cert = host.served_serial().await.expect("bootstrap certificate");
    let token = coord
        .cli_ok(&["token", "create", "--ttl", "10m"])
        .await
        .expect("token")
        .trim()
        .to_owned();
    let boot = Bootstrap::new(&host, &coord, &lan_url(&coord, &lan)).expect("bootstrap");

    let run = boot
        .run(&BootstrapInput {
            token: Some(token),
            ..Default::default()
        })
        .await
        .expect("run the script");
    assert!(
        run.success(),
        "the script failed: stdout={} stderr={}\nagent log:\n{}",
        run.stdout(),
        run.stderr(),
        boot.agent_log()
    );
    eprintln!(
        "bootstrap: {:.2} s\n{}{}",
        run.elapsed.as_secs_f64(),
        run.stdout(),
        run.stderr()
    );
    // The daemon was started before enrollment and waited for the identity.
    assert!(
        boot.agent_log().contains("not enrolled yet"),
        "the agent should have waited for enrollment:\n{}",
        boot.agent_log()
    );
    let stdout = run.stdout();
    assert!(stdout.contains("enrolled as host "), "{stdout}");
    assert!(
        stdout.contains("installed in target default and served on"),
        "{stdout}"
    );

    // When the service started, the host already served the CA's certificate.
    let rows = coord.certs().await.expect("certs");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let issued = certfleet_tests::pki::normalize_serial(rows[0].serial.as_deref().expect("serial"));
    let at_start = boot
        .served_when_service_started()
        .expect("the service was started");
    assert_eq!(
        at_start, issued,
        "the service started while another certificate was served"
    );
    assert_ne!(at_start, bootstrap_cert);
    assert_eq!(host.served_serial().await.expect("served"), issued);
    let hosts = coord.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1);
    let host_id = hosts[0].host_id.clone();
    let pid = boot.agent_pid().expect("the agent daemon runs");

    // cloud-init runs it again (no token any more: the script removed it): a success that
    // says so, the same host, the same daemon, no second host, no second token use.
    let again = boot
        .run(&BootstrapInput::default())
        .await
        .expect("run again");
    assert!(
        again.success(),
        "second run failed: {}\n{}",
        again.stdout(),
        again.stderr()
    );
    assert!(
        again
            .stdout()
            .contains(&format!("already enrolled as host {host_id}")),
        "{}",
        again.stdout()
    );
    assert!(again.stdout().contains("the token was not used"));
    assert_eq!(boot.agent_pid(), Some(pid), "one agent daemon");
    assert_eq!(boot.served_when_service_started(), Some(issued.clone()));
    let hosts = coord.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1, "enrolling twice made one host: {hosts:?}");
    let tokens: serde_json::Value =
        serde_json::from_str(&coord.cli_ok(&["tokens", "--json"]).await.expect("tokens"))
            .expect("json");
    assert_eq!(tokens[0]["used_by"], serde_json::json!([host_id]));
    assert_eq!(tokens[0]["state"], "used");
    assert!(
        again.elapsed < Duration::from_secs(5),
        "the rerun has nothing to wait for: {:?}",
        again.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_tokens_refuse_other_sources_and_extra_labels() {
    let Some(lan) = require_namespaces("bootstrap::constrained_tokens") else {
        return;
    };
    let (_pebble, coord) =
        lan_pebble_and_coordinator(&lan, pebble_on_80_443(), Default::default()).await;
    let mut host = FleetHost::new(
        &lan,
        HostSpec::new("vm-2", ServerKind::Nginx, Challenge::Webroot),
    )
    .await
    .expect("host");
    let url = lan_url(&coord, &lan);
    let fp = coord.ca_sha256().to_owned();
    let own = host.ns.ipv4().expect("ipv4").to_string();
    let token = |args: Vec<String>| {
        let coord = &coord;
        async move {
            let mut a = vec!["token".to_owned(), "create".to_owned()];
            a.extend(args);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            coord.cli_ok(&a).await.expect("token").trim().to_owned()
        }
    };
    let enroll = |token: String, labels: Vec<&'static str>| {
        let (agent, url, fp) = (&host.agent, url.clone(), fp.clone());
        async move {
            let mut args = vec![
                "enroll".to_owned(),
                "--coordinator".into(),
                url,
                "--token".into(),
                token,
                "--ca-sha256".into(),
                fp,
                "--name".into(),
                "vm-2".into(),
            ];
            for l in labels {
                args.extend(["--label".to_owned(), l.to_owned()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let started = Instant::now();
            let out = agent.cli(&args).await.expect("run enroll");
            (out, started.elapsed())
        }
    };

    // Outside the token's CIDR: refused at once (not retried), naming it and the fix.
    let outside = token(vec!["--cidr".into(), "192.0.2.0/24".into()]).await;
    let (out, took) = enroll(outside, vec![]).await;
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("may only be used from 192.0.2.0/24")
            && err.contains(&format!("came from {own}"))
            && err.contains("--cidr"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "a refusal is not retried: {took:?}"
    );
    assert!(host.agent.enrollment_files_present().is_empty());

    // Inside it, with labels fixed by the token: asking for another label is refused.
    let fixed = token(vec![
        "--cidr".into(),
        own.clone(),
        "--cidr".into(),
        "2001:db8::/32".into(),
        "--label".into(),
        "pool=edge".into(),
        "--label".into(),
        "env=prod".into(),
        "--uses".into(),
        "3".into(),
    ])
    .await;
    let (out, _) = enroll(fixed.clone(), vec!["pool=edge", "role=admin"]).await;
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("fixes this host's labels to env=prod, pool=edge")
            && err.contains("role=admin"),
        "{err}"
    );
    let (out, _) = enroll(fixed.clone(), vec!["pool=core"]).await;
    assert!(!out.status.success(), "another value: {}", stderr_of(&out));
    assert!(coord.hosts().await.expect("hosts").is_empty());

    // Accepted from inside, asking for a fixed label: the host gets exactly the token's.
    let (out, _) = enroll(fixed, vec!["pool=edge"]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let hosts = coord.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1);
    assert_eq!(
        hosts[0].labels,
        [("env", "prod"), ("pool", "edge")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    );
    host.agent.start().expect("agent");

    // Every refusal is in the audit trail with its constraint and reason.
    let refused = refusals(&coord).await;
    let constraints: Vec<&str> = refused.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(constraints, ["cidr", "labels", "labels"], "{refused:?}");
    assert!(refused[0].1.contains("192.0.2.0/24"), "{refused:?}");
    assert!(refused[1].1.contains("role=admin"), "{refused:?}");

    // `tokens list` shows the constraints, in the table and as JSON.
    let table = coord.cli_ok(&["tokens"]).await.expect("tokens");
    assert!(
        table.contains("192.0.2.0/24") && table.contains("env=prod,pool=edge"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&coord.cli_ok(&["tokens", "--json"]).await.expect("tokens"))
            .expect("json");
    let with_labels = json
        .as_array()
        .expect("array")
        .iter()
        .find(|t| !t["labels"].is_null())
        .expect("the labelled token");
    assert_eq!(
        with_labels["cidrs"],
        serde_json::json!([format!("{own}/32"), "2001:db8::/32"])
    );
    assert_eq!(with_labels["uses_left"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_waits_out_a_coordinator_outage_within_its_timeout() {
    let (pebble, mut coord) = pebble_and_coordinator().await;
    let token = coord.create_token(Some("10m")).await.expect("token");
    let fp = coord.ca_sha256().to_owned();
    let url = coord.url();
    coord
        .stop_current(RestartMode::Term)
        .await
        .expect("stop coordinator");

    // Down for longer than --timeout: fails, saying it could not reach it and how long.
    let late = Agent::new("late", pebble.http_port()).expect("agent");
    let started = Instant::now();
    let out = late
        .cli(&[
            "enroll",
            "--coordinator",
            &url,
            "--token",
            &token,
            "--ca-sha256",
            &fp,
            "--timeout",
            "3s",
        ])
        .await
        .expect("run enroll");
    let took = started.elapsed();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no coordinator could be reached") && err.contains("--timeout"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(15),
        "bounded by --timeout 3s: {took:?}"
    );

    // Back after 3 s: an enrollment started during the outage gets through.
    let agent = Agent::new("patient", pebble.http_port()).expect("agent");
    let args = [
        "enroll",
        "--coordinator",
        &url,
        "--token",
        &token,
        "--ca-sha256",
        &fp,
        "--timeout",
        "40s",
    ];
    let (enrolled, ()) = tokio::join!(agent.cli(&args), async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        coord.start_again().await.expect("coordinator back");
    });
    let out = enrolled.expect("run enroll");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("enrollment tries again"),
        "the retries are logged: {}",
        stderr_of(&out)
    );
    assert_eq!(coord.hosts().await.expect("hosts").len(), 1);

    // Another fleet's CA for an enrolled host: an error naming the fix; nothing changes.
    let other = "ab".repeat(32);
    let out = agent
        .cli(&["enroll", "--coordinator", &url, "--ca-sha256", &other])
        .await
        .expect("run enroll");
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("already enrolled")
            && err.contains("another CA")
            && err.contains("--ca-sha256"),
        "{err}"
    );
    // The same CA, no token: already enrolled, exit 0.
    let out = agent
        .cli(&["enroll", "--coordinator", &url, "--ca-sha256", &fp])
        .await
        .expect("run enroll");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already enrolled as host"));
    assert_eq!(coord.hosts().await.expect("hosts").len(), 1);
}
