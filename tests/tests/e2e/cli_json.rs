//! `--json` on every command of both binaries that prints something, against a live
//! coordinator with a running agent (and a second, enrolled, idle host): each command's
//! stdout parses as JSON (`audit`: one JSON document a line) and holds the fact the
//! command is about. `store migrate` (needs a PostgreSQL) and the daemons (`serve`, `run`)
//! are left out.

use std::path::Path;
use std::process::Output;

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::Agent;
use serde_json::Value;

use crate::support::{pebble_and_coordinator_with, ISSUE_TIMEOUT};

/// stdout of a successful command, parsed as one JSON document.
fn json_of(what: &str, out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"))
}

/// `certfleet-coordinator --config CONFIG ARGS…` (a config other than the live one's).
async fn coordinator_with(config: &Path, args: &[&str]) -> Output {
    let bin = certfleet_tests::bins::bin_path("certfleet-coordinator").expect("binary");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--config").arg(config).args(args);
    // The test's own CERTFLEET_* settings would be config overrides to the binary.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CERTFLEET_") {
            cmd.env_remove(&k);
        }
    }
    cmd.output().await.expect("run certfleet-coordinator")
}

/// The live coordinator's config with another state directory.
fn config_with_state_dir(live: &Path, dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(live).expect("config");
    let state = dir.join("state");
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("state_dir") {
            out.push_str(&format!("state_dir = {:?}\n", state.to_string_lossy()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, out).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_with_json() {
    let (pebble, coord) =
        pebble_and_coordinator_with(Default::default(), CoordinatorOptions::default()).await;
    let mut agent = Agent::new("jsonhost", pebble.http_port()).expect("agent");
    agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    let row = agent
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed");
    let host = agent.id().expect("id").to_owned();
    let mut idle = Agent::new("idlehost", pebble.http_port()).expect("agent");
    let idle_id = idle.enroll_with(&coord).await.expect("enroll idle");

    // Reads.
    let fp = c_owned(&coord, &["ca-fingerprint", "--json"]).await;
    assert_eq!(fp["ca_sha256"], coord.ca_sha256());
    let hosts = c_owned(&coord, &["hosts", "--json"]).await;
    assert_eq!(hosts.as_array().map(Vec::len), Some(2), "{hosts:#}");
    let certs = c_owned(&coord, &["--json", "certs"]).await;
    assert!(certs.to_string().contains(&row.cert_id), "{certs:#}");
    let status = c_owned(&coord, &["status", "--json"]).await;
    assert_eq!(status["healthy"], true, "{status:#}");
    assert_eq!(status["exit_code"], 0);
    let verify = c_owned(&coord, &["audit", "verify", "--json"]).await;
    assert_eq!(verify["intact"], true, "{verify:#}");
    assert!(verify["records"].as_u64().unwrap_or(0) > 0, "{verify:#}");
    let audit = coord.cli_ok(&["audit", "--json"]).await.expect("audit");
    for line in audit.lines() {
        let rec: Value = serde_json::from_str(line).expect("an audit line is JSON");
        assert!(rec["kind"].is_string(), "{rec}");
    }
    let ops = c_owned(&coord, &["operators", "list", "--json"]).await;
    assert!(ops.as_array().is_some_and(|o| !o.is_empty()), "{ops:#}");

    // Tokens: create (both spellings), list (both spellings, flag before or after),
    // revoke.
    let tok = c_owned(&coord, &["token", "create", "--ttl", "1h30m", "--json"]).await;
    assert!(
        tok["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{tok:#}"
    );
    assert!(tok["expires"].is_string(), "{tok:#}");
    let tok2 = c_owned(&coord, &["tokens", "create", "--json"]).await;
    assert_ne!(tok2["token"], tok["token"]);
    let list = c_owned(&coord, &["tokens", "list", "--json"]).await;
    let list2 = c_owned(&coord, &["--json", "tokens"]).await;
    assert_eq!(list, list2);
    let id = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["state"] == "usable"))
        .and_then(|t| t["id"].as_str())
        .expect("a usable token")
        .to_owned();
    let revoke = json_of(
        "tokens revoke",
        &coord
            .cli(&["tokens", "revoke", &id, "--json"])
            .await
            .unwrap(),
    );
    assert_eq!(revoke["revoked"], id.as_str());

    // Certificates: renew, then revoke (a replacement follows).
    let renew = json_of(
        "certs renew",
        &coord
            .cli(&["certs", "renew", &row.cert_id, "--json"])
            .await
            .unwrap(),
    );
    assert_eq!(
        renew["renewal_scheduled"][0],
        row.cert_id.as_str(),
        "{renew:#}"
    );
    let revoked = json_of(
        "certs revoke",
        &coord
            .cli(&[
                "certs",
                "revoke",
                &row.cert_id,
                "--reason",
                "superseded",
                "--json",
            ])
            .await
            .unwrap(),
    );
    assert!(revoked["revoked_serial"].is_string(), "{revoked:#}");
    assert_eq!(revoked["reason"], "superseded");
    // The replacement is installed before the host leaves (leaving revokes what it holds).
    let old_serial = revoked["revoked_serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    certfleet_tests::wait_for(
        "the replacement certificate installed",
        ISSUE_TIMEOUT,
        std::time::Duration::from_millis(300),
        || async {
            let c = coord.cert(&row.cert_id).await?;
            Ok((c.installed_serial.is_some()
                && c.installed_serial == c.serial
                && c.serial.as_deref() != Some(old_serial.as_str()))
            .then_some(()))
        },
    )
    .await
    .expect("replacement");

    // Hosts: release an address, remove the idle host.
    let ip = hosts
        .as_array()
        .and_then(|h| h.iter().find(|h| h["host_id"] == host.as_str()))
        .and_then(|h| h["ips"][0].as_str())
        .expect("the running host's address")
        .to_owned();
    let released = json_of(
        "hosts release-ip",
        &coord
            .cli(&["hosts", "release-ip", &host, &ip, "--json"])
            .await
            .unwrap(),
    );
    assert_eq!(released["released"], ip.as_str());
    let removed = json_of(
        "hosts remove",
        &coord
            .cli(&["hosts", "remove", &idle_id, "--json"])
            .await
            .unwrap(),
    );
    assert_eq!(removed["removed"], idle_id.as_str());

    // Operators: add, renew with the new credential, revoke.
    let work = tempfile::tempdir().expect("tempdir");
    let cred = work.path().join("vera");
    let cred_s = cred.to_string_lossy().into_owned();
    let added = json_of(
        "operators add",
        &coord
            .cli(&[
                "operators",
                "add",
                "vera",
                "--role",
                "viewer",
                "--lifetime",
                "1d12h",
                "--out",
                &cred_s,
                "--json",
            ])
            .await
            .unwrap(),
    );
    assert_eq!(added["name"], "vera");
    let renewed = json_of(
        "operators renew",
        &coord
            .cli(&["--credential", &cred_s, "operators", "renew", "--json"])
            .await
            .unwrap(),
    );
    assert_eq!(renewed["name"], "vera");
    assert_ne!(renewed["serial"], added["serial"]);
    let gone = c_owned(&coord, &["operators", "revoke", "vera", "--json"]).await;
    assert_eq!(gone["revoked"], "vera");

    // Offline commands on other state directories: init, bootstrap, node export / join.
    let fresh = config_with_state_dir(coord.config_path(), &mkdir(work.path().join("a")));
    let init = json_of("init", &coordinator_with(&fresh, &["init", "--json"]).await);
    assert!(
        init["ca_sha256"].as_str().is_some_and(|f| f.len() == 64),
        "{init:#}"
    );
    assert!(init["enroll"]
        .as_str()
        .is_some_and(|e| e.contains("--ca-sha256")));
    let boot = json_of(
        "operators bootstrap",
        &coordinator_with(&fresh, &["operators", "bootstrap", "--json"]).await,
    );
    assert!(boot["serial"].is_string(), "{boot:#}");
    let bundle = work.path().join("node.bundle");
    let bundle_s = bundle.to_string_lossy().into_owned();
    let export = c_owned(&coord, &["node", "export", "--out", &bundle_s, "--json"]).await;
    assert_eq!(export["ca_sha256"], coord.ca_sha256());
    let joiner = config_with_state_dir(coord.config_path(), &mkdir(work.path().join("b")));
    let join = json_of(
        "node join",
        &coordinator_with(&joiner, &["node", "join", "--bundle", &bundle_s, "--json"]).await,
    );
    assert_eq!(join["joined"], true, "{join:#}");
    assert_eq!(join["ca_sha256"], coord.ca_sha256());

    // The agent: status, enroll (already enrolled: nothing asked), leave.
    let st = json_of(
        "agent status",
        &agent.cli(&["status", "--json"]).await.unwrap(),
    );
    assert_eq!(st["host_id"], host.as_str());
    let again = json_of(
        "agent enroll",
        &agent
            .cli(&["enroll", "--ca-sha256", coord.ca_sha256(), "--json"])
            .await
            .unwrap(),
    );
    assert_eq!(again["already_enrolled"], true, "{again:#}");
    assert_eq!(again["host_id"], host.as_str());
    let left = json_of(
        "agent leave",
        &agent.cli(&["leave", "--json"]).await.unwrap(),
    );
    assert_eq!(left["left"], true, "{left:#}");
    assert_eq!(left["host_id"], host.as_str());
}

/// [`json_of`] of `coord.cli(args)` for arguments built at run time.
async fn c_owned(coord: &certfleet_tests::Coordinator, args: &[&str]) -> Value {
    json_of(&args.join(" "), &coord.cli(args).await.expect("cli"))
}

/// `dir`, created.
fn mkdir(dir: std::path::PathBuf) -> std::path::PathBuf {
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}
