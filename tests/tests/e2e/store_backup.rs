//! The store at scale and its backup: admin lists paged through 12,000 hosts and
//! certificates inserted straight into the store; `store backup` of a serving coordinator
//! with an agent connected, restored into a new state directory.

use std::time::{Duration, Instant};

use certfleet_coordinator::model::{CertRecord, CertSpec, HostRecord};
use certfleet_coordinator::store::{SledStore, Store};
use certfleet_proto::v1::admin_client::AdminClient;
use certfleet_proto::v1::{ListCertsRequest, ListHostsRequest};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_tests::coordinator::test_store_is_postgres;
use certfleet_tests::{grpc, Agent, Coordinator, RestartMode};
use prost::Message as _;

use crate::support::{pebble_and_coordinator, ISSUE_TIMEOUT};

const HOSTS: usize = 12_000;

fn host(i: usize) -> HostRecord {
    serde_json::from_value(serde_json::json!({
        "id": HostId::generate().to_string(),
        "hostname": format!("bulk-{i:05}.example.test"),
        "labels": {"role": "web", "rack": format!("r{}", i % 40)},
        "enrolled": 1_750_000_000,
        "enrolled_from": "192.0.2.1:5000",
        "identity_serial": format!("{:032x}", i),
        "ips": [format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)],
        "targets": ["nginx"],
    }))
    .expect("host record")
}

fn cert(host: &HostRecord, now: i64) -> CertRecord {
    let spec = CertSpec {
        name: Default::default(),
        challenges: Default::default(),
        policy: Some("default".into()),
        identifiers: host
            .ips
            .iter()
            .map(|ip| ip.to_string().parse().expect("id"))
            .collect(),
        issuer: "pebble".into(),
        fallback_issuers: vec![],
        required_profile: None,
        key_type: Default::default(),
        targets: vec!["nginx".into()],
        key_group: None,
    };
    let mut rec = CertRecord::new(CertId::generate(), host.id.clone(), spec, now);
    // Far away (from the real clock the coordinator runs on): the engine leaves them
    // alone while the test lists them.
    rec.schedule.next_action = Some(now + 30 * 86_400);
    // A CA's problem text, as a certificate that failed once carries: the certificates
    // then weigh what a real fleet's do (about 400 bytes each in a reply).
    rec.schedule.last_error = Some(format!(
        "urn:ietf:params:acme:error:connection: 10.0.{}.{}: Fetching http://{}/.well-known/\
         acme-challenge/{}: Timeout during connect (likely firewall problem)",
        host.hostname.len(),
        now % 251,
        host.ips
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        "k".repeat(43)
    ));
    rec
}

async fn admin(coord: &Coordinator) -> AdminClient<tonic::transport::Channel> {
    let cfg = grpc::client_config(
        &coord.fleet_ca_pem_path(),
        Some((&coord.admin_cert_path(), &coord.admin_key_path())),
    )
    .expect("client config");
    // tonic's default 4 MiB decoding limit: what an old or third-party client has.
    AdminClient::new(grpc::channel(coord.addr(), cfg).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_page_through_twelve_thousand_hosts() {
    if test_store_is_postgres() {
        eprintln!("SKIPPED: inserts into the sled store directly (paging on PostgreSQL: store_conformance)");
        return;
    }
    let (_pebble, mut coord) = pebble_and_coordinator().await;
    coord.stop_current(RestartMode::Term).await.expect("stop");
    let started = Instant::now();
    let now = {
        use certfleet_shared::clock::Clock as _;
        certfleet_shared::clock::SystemClock.now_unix()
    };
    {
        let store = SledStore::open(&coord.state_dir().join("store")).expect("open store");
        for i in 0..HOSTS {
            let h = host(i);
            store.put_host(&h).expect("put host");
            store.put_cert_unflushed(&cert(&h, now)).expect("put cert");
        }
        store.put_host(&host(HOSTS)).expect("last host, flushed");
    }
    eprintln!(
        "{} hosts and {HOSTS} certificates inserted in {:?}",
        HOSTS + 1,
        started.elapsed()
    );
    coord.start_again().await.expect("serve again");

    let t = Instant::now();
    let hosts = coord.hosts_json().await.expect("hosts --json");
    let hosts_time = t.elapsed();
    eprintln!("hosts --json: {hosts_time:?}");
    let hosts = hosts.as_array().expect("an array");
    assert_eq!(hosts.len(), HOSTS + 1);
    let mut ids: Vec<&str> = hosts.iter().filter_map(|h| h["host_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), HOSTS + 1, "every host once");
    let t = Instant::now();
    let certs = coord.certs_json().await.expect("certs --json");
    let certs_time = t.elapsed();
    assert_eq!(certs.as_array().expect("an array").len(), HOSTS);
    eprintln!(
        "CLI over {} hosts: hosts --json {hosts_time:?}, certs --json ({HOSTS} certificates) {certs_time:?}",
        HOSTS + 1
    );

    // What one reply of everything would weigh, page by page over the wire.
    let mut client = admin(&coord).await;
    let (mut host_bytes, mut cert_bytes, mut pages, mut token) = (0, 0, 0, String::new());
    loop {
        let r = client
            .list_hosts(ListHostsRequest {
                page_size: 5_000,
                page_token: std::mem::take(&mut token),
            })
            .await
            .expect("a page of hosts")
            .into_inner();
        assert!(r.encoded_len() < 4 << 20);
        host_bytes += r.encoded_len();
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 3, "12,001 hosts in pages of 5,000");
    loop {
        let r = client
            .list_certs(ListCertsRequest {
                page_size: 5_000,
                page_token: std::mem::take(&mut token),
            })
            .await
            .expect("a page of certificates")
            .into_inner();
        assert!(
            r.encoded_len() < 4 << 20,
            "a page of {} bytes",
            r.encoded_len()
        );
        cert_bytes += r.encoded_len();
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    eprintln!(
        "one unpaged reply would weigh: ListHosts {:.2} MiB, ListCerts {:.2} MiB",
        host_bytes as f64 / 1048576.0,
        cert_bytes as f64 / 1048576.0
    );
    // A client that does not page (no page_size): the whole list when it fits in one
    // reply, otherwise a refusal naming the fix — never a cut list, never more than 4 MiB.
    for (what, bytes, result) in [
        (
            "hosts",
            host_bytes,
            client
                .list_hosts(ListHostsRequest::default())
                .await
                .map(|r| r.into_inner().hosts.len()),
        ),
        (
            "certificates",
            cert_bytes,
            client
                .list_certs(ListCertsRequest::default())
                .await
                .map(|r| r.into_inner().certs.len()),
        ),
    ] {
        match result {
            Ok(n) => {
                assert!(
                    bytes < 3 << 20,
                    "{what}: {bytes} bytes answered in one reply"
                );
                assert!(n >= HOSTS, "{what}: {n}, a cut list");
            }
            Err(s) => {
                assert!(bytes > 3 << 20, "{what}: refused at {bytes} bytes: {s:?}");
                assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{what}: {s:?}");
                assert!(s.message().contains("page_size"), "{}", s.message());
                eprintln!("unpaged {what}: refused ({})", s.message());
            }
        }
    }

    // A backup of this store while it serves: how long the snapshot of a large fleet takes.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.backup");
    let t = Instant::now();
    let out = coord
        .cli_ok(&["store", "backup", "--out", path.to_str().expect("utf-8")])
        .await
        .expect("store backup of a large fleet");
    let size = std::fs::metadata(&path).expect("backup").len();
    eprintln!(
        "store backup of {} hosts: {:?}, {:.1} MiB: {}",
        HOSTS + 1,
        t.elapsed(),
        size as f64 / 1048576.0,
        out.trim()
    );
    assert!(
        out.contains(&format!("{} hosts, {HOSTS} certificates", HOSTS + 1)),
        "{out}"
    );
    for line in coord.log_lines_containing("store backup") {
        eprintln!("coordinator: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_into_a_new_state_directory() {
    let (pebble, mut coord) = pebble_and_coordinator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = dir.path().join("store.backup");
    let backup_arg = backup.to_str().expect("utf-8 path");
    if test_store_is_postgres() {
        let out = coord
            .cli(&["store", "backup", "--out", backup_arg])
            .await
            .expect("cli");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("pg_dump"), "{err}");
        return;
    }
    let mut a = Agent::new("backed-up", pebble.http_port()).expect("agent");
    let a_id = a.enroll_with(&coord).await.expect("enroll");
    a.start().expect("start agent");
    let row = a
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("installed");
    let serial = row.serial.clone().expect("serial");
    coord
        .wait_connected(&a_id, true, Duration::from_secs(30))
        .await
        .expect("connected");

    // It holds the account and CA keys: a viewer is refused, naming the role.
    let viewer = coord.dir().join("op-vera");
    let viewer_s = viewer.to_str().expect("utf-8");
    coord
        .cli_ok(&[
            "operators",
            "add",
            "vera",
            "--role",
            "viewer",
            "--out",
            viewer_s,
        ])
        .await
        .expect("operators add");
    let out = coord
        .cli(&[
            "--credential",
            viewer_s,
            "store",
            "backup",
            "--out",
            backup_arg,
        ])
        .await
        .expect("cli");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("BackupStore needs role admin"),
        "{err}"
    );
    assert!(!backup.exists(), "a refused backup leaves no file");

    // Taken while the coordinator serves and the agent's session is up.
    let t = Instant::now();
    let out = coord
        .cli_ok(&["store", "backup", "--out", backup_arg])
        .await
        .expect("store backup");
    eprintln!("store backup in {:?}: {}", t.elapsed(), out.trim());
    assert!(out.contains("1 hosts, 1 certificates"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup)
        .expect("backup")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the backup holds account and CA keys");
    // An existing file is never overwritten.
    let again = coord
        .cli(&["store", "backup", "--out", backup_arg])
        .await
        .expect("cli");
    assert!(!again.status.success());
    coord
        .wait_connected(&a_id, true, Duration::from_secs(5))
        .await
        .expect("the session was not disturbed by the backup");

    coord.stop_current(RestartMode::Term).await.expect("stop");
    let state = coord.state_dir().to_owned();
    std::fs::rename(&state, state.with_extension("old")).expect("move the state dir aside");

    // A damaged or cut backup is refused before anything is written.
    let good = std::fs::read(&backup).expect("read backup");
    let bad = dir.path().join("bad.backup");
    let stopped = &coord;
    let try_restore = |bytes: Vec<u8>| {
        let bad = bad.clone();
        async move {
            std::fs::write(&bad, bytes).expect("write");
            std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            stopped
                .cli(&["store", "restore", "--from", bad.to_str().expect("utf-8")])
                .await
                .expect("cli")
        }
    };
    let out = try_restore(good[..good.len() * 2 / 3].to_vec()).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("truncated"), "{err}");
    let edited = String::from_utf8(good.clone()).expect("utf-8").replacen(
        &serial,
        &"0".repeat(serial.len()),
        1,
    );
    let out = try_restore(edited.into_bytes()).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("checksum mismatch"),
        "{err}"
    );
    assert!(
        !state.exists() || std::fs::read_dir(&state).expect("dir").next().is_none(),
        "a refused restore left files behind"
    );

    let out = coord
        .cli_ok(&["store", "restore", "--from", backup_arg])
        .await
        .expect("store restore");
    eprintln!("{}", out.trim());
    // Into a state directory in use: refused, naming the fix.
    let out = coord
        .cli(&["store", "restore", "--from", backup_arg])
        .await
        .expect("cli");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("not empty"), "{err}");

    coord.start_again().await.expect("serve the restored state");
    coord
        .wait_connected(&a_id, true, Duration::from_secs(60))
        .await
        .expect("the agent reconnects to the restored coordinator (same fleet CA)");
    let hosts = coord.hosts().await.expect("hosts");
    assert!(hosts.iter().any(|h| h.host_id == a_id), "{hosts:?}");
    let certs = coord.certs().await.expect("certs");
    assert!(
        certs
            .iter()
            .any(|c| c.serial.as_deref() == Some(serial.as_str())),
        "the certificate is back: {certs:?}"
    );
    let verified = coord.audit_verify().await.expect("audit verify");
    assert!(verified.contains("intact"), "{verified}");
    let records = coord.audit_records().await.expect("audit");
    assert!(
        records.iter().any(|r| r["kind"] == "store_backed_up"),
        "the backup is in the audit trail it holds"
    );
    let log = coord.run_log(coord.runs());
    assert!(
        log.contains("ACME account loaded") || !log.contains("ACME account created"),
        "the restored ACME account is used, not a new one:\n{log}"
    );
}
