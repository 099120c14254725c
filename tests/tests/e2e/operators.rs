//! Named operators and the coordinator's own credentials: roles enforced per call,
//! revocation refused at the next call, audit records naming the operator, renewal of an
//! operator's credential and refusal of an expired one, and the server certificate renewed
//! and swapped in while an agent stays connected.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certfleet_proto::v1::admin_client::AdminClient;
use certfleet_proto::v1::ListHostsRequest;
use certfleet_shared::x509::CertInfo;
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::PebbleOptions;
use certfleet_tests::{grpc, tlsutil, Agent, Coordinator};
use serde_json::Value;

use crate::support::{pebble_and_coordinator, pebble_and_coordinator_with};

/// `--credential DIR ARGS…` as that operator.
async fn as_op(coord: &Coordinator, dir: &Path, args: &[&str]) -> std::process::Output {
    let dir = dir.to_string_lossy().into_owned();
    let mut all = vec!["--credential", dir.as_str()];
    all.extend_from_slice(args);
    coord.cli(&all).await.expect("cli runs")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn serial_of(cert: &Path) -> String {
    let pem = std::fs::read_to_string(cert).expect("read cert");
    let der = certfleet_shared::x509::parse_pem_chain(&pem).expect("pem");
    CertInfo::from_der(&der[0]).expect("cert").serial_hex
}

async fn add(coord: &Coordinator, name: &str, role: &str, extra: &[&str]) -> PathBuf {
    let out = coord.dir().join(format!("op-{name}"));
    let out_s = out.to_string_lossy().into_owned();
    let mut args = vec!["operators", "add", name, "--role", role, "--out", &out_s];
    args.extend_from_slice(extra);
    let text = coord.cli_ok(&args).await.expect("operators add");
    assert!(
        text.contains(&format!("operator {name} ({role}) added")),
        "{text}"
    );
    let mode = std::fs::metadata(out.join("operator.key"))
        .expect("key written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the operator's key is 0600");
    out
}

async fn audit_of(coord: &Coordinator, kind: &str) -> Vec<Value> {
    coord
        .audit_records()
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_revocation_is_immediate_and_audit_names_the_operator() {
    let (_pebble, coord) = pebble_and_coordinator().await;

    // The credential `init` made is the first admin, with the short lifetime.
    let list: Vec<Value> = serde_json::from_str(
        &coord
            .cli_ok(&["operators", "list", "--json"])
            .await
            .expect("operators list"),
    )
    .expect("json");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "operator");
    assert_eq!(list[0]["role"], "admin");
    assert_eq!(list[0]["added_by"], "coordinator:state-dir");

    let viewer = add(&coord, "vera", "viewer", &[]).await;
    let admin = add(&coord, "alice", "admin", &["--lifetime", "1d"]).await;

    // A viewer reads...
    let hosts = as_op(&coord, &viewer, &["hosts", "--json"]).await;
    assert!(
        hosts.status.success(),
        "viewer lists hosts: {}",
        stderr(&hosts)
    );
    let status = as_op(&coord, &viewer, &["status"]).await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("operator vera (viewer)"),
        "{text}{}",
        stderr(&status)
    );
    // ...and is refused a write, naming the role.
    let refused = as_op(&coord, &viewer, &["token", "create"]).await;
    let err = stderr(&refused);
    eprintln!("viewer token create: {err}");
    assert!(!refused.status.success());
    assert!(
        err.contains("has role viewer") && err.contains("CreateToken needs role admin"),
        "{err}"
    );
    let refused = as_op(
        &coord,
        &viewer,
        &[
            "operators",
            "add",
            "eve",
            "--role",
            "admin",
            "--out",
            "/tmp/never",
        ],
    )
    .await;
    assert!(!refused.status.success() && stderr(&refused).contains("has role viewer"));

    // An admin's actions are audited under its name.
    let token = as_op(&coord, &admin, &["token", "create"]).await;
    assert!(token.status.success(), "{}", stderr(&token));
    let created = audit_of(&coord, "token_created").await;
    assert_eq!(
        created.last().expect("token_created")["actor"],
        "operator:alice"
    );
    let added = audit_of(&coord, "operator_added").await;
    let by: Vec<(&str, &str)> = added
        .iter()
        .map(|r| {
            (
                r["details"]["operator"].as_str().unwrap_or(""),
                r["actor"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("operator", "coordinator:state-dir"),
            ("vera", "operator:operator"),
            ("alice", "operator:operator")
        ]
    );

    // Revoked: the very next call is refused.
    let out = as_op(&coord, &admin, &["operators", "revoke", "vera"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = as_op(&coord, &viewer, &["hosts"]).await;
    let err = stderr(&refused);
    assert!(
        !refused.status.success() && err.contains("operator \"vera\" was revoked"),
        "{err}"
    );
    let revoked = audit_of(&coord, "operator_revoked").await;
    assert_eq!(revoked[0]["actor"], "operator:alice");
    assert_eq!(
        revoked[0]["serial"],
        serial_of(&viewer.join("operator.pem")).as_str()
    );

    // The state directory's admin can be revoked by another admin; the last one cannot.
    let out = as_op(&coord, &admin, &["operators", "revoke", "operator"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = coord.cli(&["hosts"]).await.unwrap();
    assert!(!refused.status.success() && stderr(&refused).contains("was revoked"));
    let last = as_op(&coord, &admin, &["operators", "revoke", "alice"]).await;
    assert!(
        !last.status.success() && stderr(&last).contains("last admin"),
        "{}",
        stderr(&last)
    );
    let list = as_op(&coord, &admin, &["operators"]).await;
    eprintln!("{}", String::from_utf8_lossy(&list.stdout));
    let verify = as_op(&coord, &admin, &["audit", "verify"]).await;
    assert!(verify.status.success(), "{}", stderr(&verify));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_renews_its_credential_and_an_expired_one_is_refused() {
    let (_pebble, coord) = pebble_and_coordinator().await;
    let bob = add(&coord, "bob", "viewer", &["--lifetime", "20s"]).await;
    let old = coord.dir().join("op-bob-old");
    std::fs::create_dir(&old).unwrap();
    for f in ["operator.pem", "operator.key", "fleet-ca.pem"] {
        std::fs::copy(bob.join(f), old.join(f)).unwrap();
    }
    let old_serial = serial_of(&bob.join("operator.pem"));
    let old_key = std::fs::read(bob.join("operator.key")).unwrap();

    let renewed = as_op(&coord, &bob, &["operators", "renew"]).await;
    assert!(renewed.status.success(), "{}", stderr(&renewed));
    let new_serial = serial_of(&bob.join("operator.pem"));
    println!("operator bob: serial {old_serial} renewed to {new_serial}");
    assert_ne!(new_serial, old_serial);
    assert_ne!(
        std::fs::read(bob.join("operator.key")).unwrap(),
        old_key,
        "a new key"
    );
    let mode = std::fs::metadata(bob.join("operator.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ok = as_op(&coord, &bob, &["hosts"]).await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let refused = as_op(&coord, &old, &["hosts"]).await;
    assert!(
        !refused.status.success() && stderr(&refused).contains("replaced by a renewal"),
        "{}",
        stderr(&refused)
    );
    let rec = audit_of(&coord, "operator_renewed").await;
    assert_eq!(rec[0]["actor"], "operator:bob");
    assert_eq!(rec[0]["details"]["previous_serial"], old_serial.as_str());

    // Past its end: the CLI says what to do, and the coordinator refuses it regardless.
    tokio::time::sleep(Duration::from_secs(22)).await;
    let expired = as_op(&coord, &bob, &["hosts"]).await;
    let err = stderr(&expired);
    eprintln!("expired credential: {err}");
    assert!(
        !expired.status.success() && err.contains("expired") && err.contains("operators add bob"),
        "{err}"
    );
    let cfg = grpc::client_config(
        &bob.join("fleet-ca.pem"),
        Some((&bob.join("operator.pem"), &bob.join("operator.key"))),
    )
    .expect("config");
    let server_side = match grpc::channel(coord.addr(), cfg).await {
        Err(e) => format!("connect: {e:#}"),
        Ok(ch) => match AdminClient::new(ch)
            .list_hosts(ListHostsRequest::default())
            .await
        {
            Ok(_) => panic!("an expired credential was accepted"),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        },
    };
    eprintln!("expired credential, straight to the coordinator: {server_side}");
    let renew = as_op(&coord, &bob, &["operators", "renew"]).await;
    assert!(
        !renew.status.success(),
        "an expired credential cannot renew itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_renews_itself_while_an_agent_stays_connected() {
    let (pebble, coord) = pebble_and_coordinator_with(
        PebbleOptions::default(),
        CoordinatorOptions {
            certificate_lifetime_secs: Some(30),
            ..Default::default()
        },
    )
    .await;
    let mut agent = Agent::new("steady", pebble.http_port()).expect("agent");
    let host = agent.enroll_with(&coord).await.expect("enroll");
    agent.start().expect("start");
    coord
        .wait_connected(&host, true, Duration::from_secs(30))
        .await
        .expect("connected");

    let served = || async {
        let chain = tlsutil::served_chain_alpn(coord.addr(), b"h2").await?;
        anyhow::Ok(CertInfo::from_der(&chain[0])?)
    };
    let first = served().await.expect("served certificate");
    assert!(
        first.not_after - first.not_before <= 40,
        "the configured 30 s lifetime"
    );
    let status: Value =
        serde_json::from_str(&coord.cli_ok(&["status", "--json"]).await.unwrap()).unwrap();
    assert_eq!(
        status["server_certificate"]["serial"],
        first.serial_hex.as_str()
    );

    let second = certfleet_tests::wait_for(
        "a renewed server certificate",
        Duration::from_secs(40),
        Duration::from_millis(500),
        || async {
            let now = served().await?;
            Ok((now.serial_hex != first.serial_hex).then_some(now))
        },
    )
    .await
    .expect("renewed");
    println!(
        "server certificate serial before {} (until {}), after {} (until {})",
        first.serial_hex, first.not_after, second.serial_hex, second.not_after
    );
    // A new call sees the new certificate; the renewal is audited.
    let status: Value =
        serde_json::from_str(&coord.cli_ok(&["status", "--json"]).await.unwrap()).unwrap();
    let now_serial = status["server_certificate"]["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(now_serial, first.serial_hex, "status shows the renewed one");
    let renewals = audit_of(&coord, "server_certificate_renewed").await;
    assert!(
        renewals
            .iter()
            .any(|r| r["serial"] == second.serial_hex.as_str()
                && r["details"]["previous_serial"] == first.serial_hex.as_str()),
        "{renewals:?}"
    );

    // Past the first certificate's end, the agent's session has not been interrupted.
    let wait = (first.not_after + 2 - {
        use certfleet_shared::clock::Clock;
        certfleet_shared::clock::SystemClock.now_unix()
    })
    .max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    coord
        .wait_connected(&host, true, Duration::from_secs(5))
        .await
        .expect("still connected");
    let connects = coord.log_lines_containing("agent connected");
    assert_eq!(
        connects.len(),
        1,
        "one session, never re-established: {connects:?}"
    );
    coord
        .cli_ok(&["token", "create"])
        .await
        .expect("a new handshake works");
}
