//! Deploy hooks end to end: a namespace host with nginx whose target runs a hook after the
//! install. A hook that records its environment sees certfleet's, certbot's and lego's
//! variables naming what was installed and served; a hook that exits 3 is audited as
//! `deploy_hook_failed` while the certificate stays installed and served.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use certfleet_tests::fleet::{wait_all_served, Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::workdir::WorkDir;
use certfleet_tests::{pki, CertRow, Coordinator};

use crate::world::{lan_pebble_and_coordinator, pebble_on_80_443};

const SERVE_TIMEOUT: Duration = Duration::from_secs(120);

/// One nginx host whose `[targets.default]` has `deploy_hook = argv`; enrolled, started,
/// and waited for until its certificate is served.
async fn served_host_with_hook(
    lan: &Lan,
    coord: &Coordinator,
    name: &str,
    argv: &[&str],
) -> (FleetHost, CertRow) {
    let mut h = FleetHost::new(
        lan,
        HostSpec::new(name, ServerKind::Nginx, Challenge::Standalone),
    )
    .await
    .expect("host");
    let hook = argv
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    // The body ends inside [targets.default].
    let body = format!(
        "{}deploy_hook = [{hook}]\ndeploy_hook_timeout = \"30s\"\n",
        h.config_body()
    );
    let ips = h.ns.ips();
    h.agent.set_netns_ips(ips, &body).expect("agent config");
    h.enroll(coord, lan).await.expect("enroll");
    h.agent.start().expect("agent start");
    let rows = wait_all_served(coord, &mut [&mut h], SERVE_TIMEOUT).await;
    let row = rows.unwrap_or_else(|e| {
        h.agent.dump_logs();
        coord.dump_logs();
        panic!("{e:#}")
    });
    (h, row.into_iter().next().expect("row"))
}

async fn records_of(coord: &Coordinator, kind: &str, host: &str) -> Vec<serde_json::Value> {
    coord
        .audit_records()
        .await
        .expect("audit --json")
        .into_iter()
        .filter(|r| r["kind"] == kind && r["host_id"] == host)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_hook_sees_what_was_installed() {
    let Some(lan) = require_namespaces("deploy_hooks::records_env") else {
        return;
    };
    let (pebble, coord) =
        lan_pebble_and_coordinator(&lan, pebble_on_80_443(), Default::default()).await;
    let root = pebble.issuing_root_der().await.expect("root");
    let work = WorkDir::new("hook").expect("work dir");
    let out = work.join("hook-env");
    let script = work.join("record-env.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nenv > {}.tmp && mv {0}.tmp {0}\n", out.display()),
    )
    .expect("write hook");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let script_arg = script.to_string_lossy().into_owned();
    let (h, row) = served_host_with_hook(&lan, &coord, "hook1", &[&script_arg]).await;
    h.check_serves(&row, &root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let serial = pki::normalize_serial(row.serial.as_deref().expect("serial"));

    let env: BTreeMap<String, String> = std::fs::read_to_string(&out)
        .expect("the hook ran and wrote its environment")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let tls = h.agent.tls_dir().to_string_lossy().into_owned();
    assert_eq!(env["CERTFLEET_TARGET"], "default");
    assert_eq!(pki::normalize_serial(&env["CERTFLEET_SERIAL"]), serial);
    let ids: Vec<&str> = env["CERTFLEET_IDENTIFIERS"].split(',').collect();
    let want: BTreeSet<String> = h.ns.ips().iter().map(|ip| ip.to_string()).collect();
    assert_eq!(
        ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        want
    );
    assert_eq!(env["RENEWED_DOMAINS"], ids.join(" "));
    assert_eq!(env["LEGO_CERT_DOMAIN"], ids[0]);
    assert_eq!(
        env["CERTFLEET_FULLCHAIN_PATH"],
        format!("{tls}/fullchain.pem")
    );
    assert_eq!(env["CERTFLEET_KEY_PATH"], format!("{tls}/key.pem"));
    assert_eq!(env["LEGO_CERT_PATH"], format!("{tls}/fullchain.pem"));
    assert_eq!(env["LEGO_CERT_KEY_PATH"], format!("{tls}/key.pem"));
    assert_eq!(env["RENEWED_LINEAGE"], tls);
    // nginx's layout has no separate leaf or chain file: those names are unset.
    for unset in [
        "CERTFLEET_CERT_PATH",
        "CERTFLEET_CHAIN_PATH",
        "CERTFLEET_COMBINED_PATH",
    ] {
        assert!(!env.contains_key(unset), "{unset} is set: {env:#?}");
    }
    // The file it was pointed at holds the served certificate.
    let leaf = pki::leaf_info_from_file(std::path::Path::new(&env["CERTFLEET_FULLCHAIN_PATH"]))
        .expect("fullchain PEM");
    assert_eq!(leaf.serial_hex, serial);

    // Audited as part of the install.
    let id = h.agent.host_id().expect("enrolled").to_owned();
    let installed = records_of(&coord, "certificate_installed", &id).await;
    assert_eq!(installed.len(), 1, "{installed:#?}");
    assert_eq!(installed[0]["details"]["deploy_hook"], "ok");
    assert!(records_of(&coord, "deploy_hook_failed", &id)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_deploy_hook_is_audited_and_the_certificate_stays() {
    let Some(lan) = require_namespaces("deploy_hooks::failing") else {
        return;
    };
    let (pebble, coord) =
        lan_pebble_and_coordinator(&lan, pebble_on_80_443(), Default::default()).await;
    let root = pebble.issuing_root_der().await.expect("root");
    let (h, row) = served_host_with_hook(
        &lan,
        &coord,
        "hook2",
        &[
            "/bin/sh",
            "-c",
            "echo 'push to the mail server failed' >&2; exit 3",
        ],
    )
    .await;
    // Served and counted installed: nothing was rolled back.
    h.check_serves(&row, &root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(row.state, "served");
    assert_eq!(row.installed_serial, row.serial);
    assert_eq!(row.served_serial, row.serial);

    let id = h.agent.host_id().expect("enrolled").to_owned();
    let failed = records_of(&coord, "deploy_hook_failed", &id).await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let f = &failed[0];
    assert_eq!(f["serial"].as_str(), row.serial.as_deref());
    assert_eq!(f["cert_id"], row.cert_id.as_str());
    assert_eq!(f["details"]["target"], "default");
    assert_eq!(f["details"]["cert_name"], "default");
    assert_eq!(f["details"]["status"], "exit status 3");
    assert_eq!(f["details"]["exit_code"], 3);
    assert_eq!(f["details"]["stderr"], "push to the mail server failed");
    let installed = records_of(&coord, "certificate_installed", &id).await;
    assert_eq!(installed.len(), 1, "{installed:#?}");
    assert_eq!(installed[0]["details"]["deploy_hook"], "failed");
    assert!(records_of(&coord, "certificate_rolled_back", &id)
        .await
        .is_empty());

    // Nothing retries it: the schedule holds no retry or immediate action (only the
    // renewal or an ARI check), no error is recorded, and the row is unchanged.
    let again = coord.cert(&row.cert_id).await.expect("row");
    assert_eq!(
        (again.state.as_str(), &again.serial),
        ("served", &row.serial)
    );
    let next = again.next_reason.as_deref().unwrap_or_default();
    assert!(
        next != "retry" && next != "act now",
        "a failed hook must not be retried: next action {next:?} ({again:?})"
    );
    assert!(again.last_error.is_none(), "{again:?}");
    assert_eq!(records_of(&coord, "deploy_hook_failed", &id).await.len(), 1);
}
