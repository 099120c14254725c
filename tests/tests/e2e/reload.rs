//! SIGHUP reloads the configuration of both daemons (`systemctl reload`), on a namespace
//! host with nginx:
//! - the agent, given a second target, reloads: its next Hello reports it;
//! - the coordinator, given a policy certificate for that target while a renewal is in
//!   flight, reloads without dropping the agent's session (the agent's `session.json`
//!   keeps its `since`, its log no second `session established`); the renewal completes
//!   after the reload, and the new certificate is issued, installed into the new target
//!   and served by the second nginx;
//! - a bad coordinator config is refused (`config_reload_failed` naming the mistake), the
//!   old one keeps running and `status` still works; a bad agent config is refused and
//!   the session stays.

use std::time::{Duration, Instant};

use certfleet_tests::coordinator::{run_with_config, CoordinatorOptions};
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::require_namespaces;
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{pki, tlsutil, Coordinator};

use crate::world::{lan_pebble_and_coordinator, pebble_on_80_443};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Every host gets one certificate of its addresses, into its `default` target.
const POLICY: &str = "\n[[policy]]\nname = \"web\"\n\n[[policy.certificate]]\nname = \"default\"\ntargets = [\"default\"]\n";
/// What the reload adds to the policy: a second certificate into the `second` target.
const SECOND_CERT: &str = "\n[[policy.certificate]]\nname = \"second\"\ntargets = [\"second\"]\n";

/// Polls the audit trail until a record of `kind` (and `want`) appears; returns it.
async fn wait_audit(
    coord: &Coordinator,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let records = coord.audit_records().await.expect("audit --json");
        if let Some(r) = records.into_iter().find(|r| want(r)) {
            return r;
        }
        if Instant::now() > deadline {
            coord.dump_logs();
            panic!("no audit record {what} after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn seq(r: &serde_json::Value) -> u64 {
    r["seq"].as_u64().expect("seq")
}

/// The agent's `session.json`: (connected, since).
fn session(h: &FleetHost) -> (bool, i64) {
    let path = h.agent.state_dir().join("session.json");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("session.json")).expect("json");
    (
        v["connected"].as_bool().unwrap_or(false),
        v["since"].as_i64().expect("since"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_both_daemons() {
    let Some(lan) = require_namespaces("reload::sighup_reloads_both_daemons") else {
        return;
    };
    // pebble waits 0–3 s before each validation, so a renewal stays in flight long enough
    // for a reload to land in the middle of it.
    let mut pebble_opts = pebble_on_80_443();
    pebble_opts.env.remove("PEBBLE_VA_NOSLEEP");
    pebble_opts
        .env
        .insert("PEBBLE_VA_SLEEPTIME".into(), "4".into());
    let (pebble, mut coord) = lan_pebble_and_coordinator(
        &lan,
        pebble_opts,
        CoordinatorOptions {
            retry_base_secs: Some(2),
            extra_config: POLICY.into(),
            ..Default::default()
        },
    )
    .await;
    let root = pebble.issuing_root_der().await.expect("root");
    let mut h = FleetHost::new(
        &lan,
        HostSpec::new("reload", ServerKind::Nginx, Challenge::Webroot),
    )
    .await
    .expect("host");
    let host_id = h.enroll(&coord, &lan).await.expect("enroll");
    h.agent.start().expect("agent start");
    let first = certfleet_tests::fleet::wait_all_served(&coord, &mut [&mut h], TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            h.agent.dump_logs();
            coord.dump_logs();
            panic!("{e:#}")
        })
        .remove(0);
    assert_eq!(first.target, "default");

    // --- The agent: a second target, SIGHUP → a new Hello reports it.
    let second_web = h
        .add_second_target("second", 8443)
        .await
        .expect("second target");
    h.agent.sighup().expect("SIGHUP agent");
    certfleet_tests::wait_for(
        "the host reports the second target",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let hosts = coord.hosts().await?;
            Ok(hosts.into_iter().find(|r| {
                r.host_id == host_id && r.connected && r.targets.iter().any(|t| t == "second")
            }))
        },
    )
    .await
    .unwrap_or_else(|e| {
        h.agent.dump_logs();
        panic!("{e:#}")
    });
    assert!(
        h.agent.logs().contains("configuration reload: applying"),
        "{}",
        h.agent.logs()
    );
    // Without a policy certificate for it, the new target gets nothing yet.
    assert_eq!(
        coord
            .certs()
            .await
            .expect("certs")
            .iter()
            .filter(|r| r.host_id == host_id)
            .count(),
        1
    );
    let (connected, since) = session(&h);
    assert!(connected, "the agent's session is up after its reload");
    let established = h.agent.logs().matches("session established").count();

    // --- The coordinator: a renewal in flight, then SIGHUP with a second certificate.
    // pebble's random wait may let the renewal finish before the reload lands; then it
    // is tried again (the file unchanged the second time, which is still a reload).
    coord.append_config(SECOND_CERT).expect("config");
    let mut proved = false;
    let mut serial = first.serial.clone();
    for attempt in 1..=4 {
        let last = coord
            .audit_records()
            .await
            .expect("audit")
            .last()
            .map(seq)
            .unwrap_or(0);
        let out = coord.renew(&[&first.cert_id]).await.expect("renew");
        assert!(out.status.success(), "{out:?}");
        let created = wait_audit(&coord, "order_created", |r| {
            seq(r) > last && r["kind"] == "order_created" && r["cert_id"] == first.cert_id
        })
        .await;
        coord.sighup().expect("SIGHUP coordinator");
        let reloaded = wait_audit(&coord, "config_reloaded", |r| {
            seq(r) > seq(&created) && r["kind"] == "config_reloaded"
        })
        .await;
        if attempt == 1 {
            let summary = reloaded["details"]["summary"].as_str().unwrap_or_default();
            assert!(summary.contains("policies: ~web"), "{reloaded:#}");
            assert_eq!(
                reloaded["details"]["changes"]["policies"]["changed"],
                serde_json::json!(["web"])
            );
        }
        let issued = wait_audit(&coord, "certificate_issued of the renewal", |r| {
            seq(r) > seq(&created)
                && r["kind"] == "certificate_issued"
                && r["cert_id"] == first.cert_id
        })
        .await;
        // The renewal's order completes; its new certificate is served.
        let new_serial = issued["serial"].as_str().expect("serial").to_owned();
        assert_ne!(Some(&new_serial), serial.as_ref());
        serial = Some(new_serial);
        if seq(&issued) > seq(&reloaded) {
            proved = true;
            break;
        }
        eprintln!("attempt {attempt}: the renewal was issued before the reload landed; again");
    }
    assert!(
        proved,
        "no renewal was in flight across a reload in 4 tries"
    );

    // The new certificate: issued, installed into the new target, served by the second
    // nginx; the first one (renewed) still served.
    let rows = certfleet_tests::fleet::wait_all_served_n(&coord, &mut [&mut h], 2, TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            h.agent.dump_logs();
            coord.dump_logs();
            panic!("{e:#}")
        });
    let second = rows
        .iter()
        .find(|r| r.target == "second")
        .expect("a row for the second target");
    let want = pki::normalize_serial(second.serial.as_deref().expect("serial"));
    for addr in second_web.https_addrs() {
        let chain = tlsutil::served_chain(addr).await.expect("TLS");
        let leaf = pki::leaf_info(&chain[0]).expect("leaf");
        assert_eq!(leaf.serial_hex, want, "{addr}");
        pki::verify_chain_for_ip(&chain, &root, addr.ip()).expect("chain");
    }
    let renewed = rows
        .iter()
        .find(|r| r.target == "default")
        .expect("default");
    assert_eq!(renewed.serial, serial);
    h.check_serves(renewed, &root)
        .await
        .expect("default served");

    // The agent's session was never dropped by the coordinator's reloads.
    assert_eq!(
        session(&h),
        (true, since),
        "the agent's session started again"
    );
    assert_eq!(
        h.agent.logs().matches("session established").count(),
        established,
        "the agent connected again"
    );

    // --- A bad coordinator config: refused, the old one keeps running. (The operator
    // commands read the file too, so they run on a copy of the good one meanwhile.)
    let before = coord.audit_records().await.expect("audit").len();
    let good = std::fs::read_to_string(coord.config_path()).expect("config");
    let good_copy = coord.dir().join("good.toml");
    std::fs::write(&good_copy, &good).expect("copy");
    coord
        .append_config("\n[[policy.certificate]]\nname = \"broken\"\nissuer = \"nope\"\n")
        .expect("config");
    coord.sighup().expect("SIGHUP coordinator");
    certfleet_tests::wait_for(
        "the coordinator refuses its bad config",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let refused = coord.log_lines_containing("configuration reload refused");
            Ok((!refused.is_empty()).then_some(()))
        },
    )
    .await
    .expect("refusal logged");
    let running = coord.child().expect("running").try_wait().expect("wait");
    assert!(running.is_none(), "the coordinator exited on a bad config");
    let status = run_with_config(&good_copy, &["status"], Duration::from_secs(60))
        .await
        .expect("status");
    assert!(status.status.success(), "status: {status:?}");
    std::fs::write(coord.config_path(), &good).expect("config");
    let failed = wait_audit(&coord, "config_reload_failed", |r| {
        r["kind"] == "config_reload_failed"
    })
    .await;
    let why = failed["details"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("nope"), "{failed:#}");
    let records = coord.audit_records().await.expect("audit");
    assert!(
        !records[before..]
            .iter()
            .any(|r| r["kind"] == "config_reloaded" || r["kind"] == "certificate_retired"),
        "a refused reload changed something: {records:#?}"
    );
    let certs: Vec<_> = coord
        .certs()
        .await
        .expect("certs")
        .into_iter()
        .filter(|r| r.host_id == host_id)
        .collect();
    assert_eq!(certs.len(), 2, "{certs:#?}");
    assert_eq!(session(&h), (true, since));

    // --- A bad agent config: refused, the agent and its session go on.
    h.agent
        .append_config("\nbogus = 1\n")
        .expect("agent config");
    h.agent.sighup().expect("SIGHUP agent");
    certfleet_tests::wait_for(
        "the agent refuses its bad config",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            Ok(h.agent
                .logs()
                .contains("configuration reload refused")
                .then_some(()))
        },
    )
    .await
    .expect("refused");
    assert!(h
        .agent
        .child()
        .expect("running")
        .try_wait()
        .expect("wait")
        .is_none());
    assert_eq!(session(&h), (true, since));
    coord.audit_verify().await.expect("audit chain intact");
}
