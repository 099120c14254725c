//! Tests of `store/backup.rs`: a round trip into a new state directory, the refusals
//! (damaged, truncated, readable by others, a non-empty state directory), and the pause
//! the snapshot is taken in.

use super::*;
use crate::audit::{Entry, Kind};
use crate::model::{CertSpec, Role};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

const NOW: i64 = 1_750_000_000;

fn config(state_dir: &Path) -> crate::config::Config {
    let text = format!(
        "version = 1\nstate_dir = {:?}\n[server]\nlisten = \"127.0.0.1:7443\"\n\
         names = [\"b.example\"]\n\
         [issuance]\nissuer = \"a\"\n\
         [[issuer]]\nname = \"a\"\ndirectory = \"https://a.example/dir\"\n",
        state_dir.display().to_string()
    );
    crate::config::Config::from_toml(&text, Path::new("t.toml"), std::iter::empty())
        .expect("config")
}

fn host(name: &str) -> HostRecord {
    let mut h: HostRecord = serde_json::from_value(serde_json::json!({
        "id": HostId::generate().to_string(),
        "hostname": name,
        "labels": {"role": "web"},
        "enrolled": 10,
        "enrolled_from": "127.0.0.1:5000",
        "identity_serial": "01",
    }))
    .expect("host record");
    h.ips = vec!["192.0.2.7".parse().unwrap()];
    h
}

fn cert(host: &HostId, next: i64) -> CertRecord {
    let spec = CertSpec {
        name: Default::default(),
        challenges: Default::default(),
        policy: None,
        identifiers: vec!["192.0.2.7".parse().unwrap()],
        issuer: "a".into(),
        fallback_issuers: vec![],
        required_profile: None,
        key_type: Default::default(),
        targets: vec!["t".into()],
        key_group: None,
    };
    let mut rec = CertRecord::new(
        certfleet_shared::ids::CertId::generate(),
        host.clone(),
        spec,
        1,
    );
    rec.schedule.next_action = Some(next);
    rec
}

/// A state directory `a` (fleet CA from `init`) whose store holds a bit of everything;
/// returns the directory, the open store and the hosts.
fn source(tmp: &Path) -> (StateDir, Arc<SledStore>, Vec<HostRecord>) {
    let dir = StateDir::new(&tmp.join("a"));
    crate::fleet_ca::init(&dir, &["a.example".into()], &[], 3600, NOW).unwrap();
    let store = Arc::new(SledStore::open(&dir.store()).unwrap());
    store
        .put_account(
            "a",
            &AccountRecord {
                directory: "https://a.example/dir".into(),
                account_id: "acct-1".into(),
                created: 5,
                credentials: serde_json::json!({"key_pkcs8": "secret"}),
            },
        )
        .unwrap();
    store.put_budget("a", &Budget::default()).unwrap();
    store
        .put_token(
            &"ab".repeat(32),
            &serde_json::from_value(serde_json::json!({
                "created": 1, "expires": 2, "uses_left": 1
            }))
            .unwrap(),
        )
        .unwrap();
    let op = OperatorRecord {
        name: "alice".into(),
        role: Role::Admin,
        serial: "0a".into(),
        issued: 1,
        not_after: 2,
        lifetime_secs: 1,
        added_by: "operator:root".into(),
        added: 1,
        revoked_at: None,
        revoked_by: None,
        generation: 0,
    };
    assert!(store.put_operator(&op, None).unwrap());
    let hosts: Vec<HostRecord> = (0..3).map(|i| host(&format!("h{i}"))).collect();
    for (i, h) in hosts.iter().enumerate() {
        store.put_host(h).unwrap();
        store.put_cert(&cert(&h.id, 100 + i as i64)).unwrap();
    }
    store
        .claim_ip("192.0.2.7".parse().unwrap(), &hosts[0].id, None)
        .unwrap();
    let log = AuditLog::open(store.clone() as Arc<dyn AuditStore>).unwrap();
    for h in &hosts {
        log.append(Kind::HostEnrolled, NOW, Entry::by("test").host(&h.id))
            .unwrap();
    }
    (dir, store, hosts)
}

fn backup_file(
    tmp: &Path,
    dir: &StateDir,
    store: &SledStore,
) -> (std::path::PathBuf, MigrateReport) {
    let path = tmp.join("store.backup");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bundle = crate::node::bundle(dir, NOW).unwrap();
    let counts = write(store, &bundle, NOW, file).unwrap();
    (path, counts)
}

#[test]
fn a_backup_restores_every_record_into_a_new_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store, hosts) = source(tmp.path());
    let (path, counts) = backup_file(tmp.path(), &dir, &store);
    assert_eq!(
        (
            counts.accounts,
            counts.budgets,
            counts.tokens,
            counts.operators
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(
        (
            counts.hosts,
            counts.certs,
            counts.ip_holders,
            counts.audit_records
        ),
        (3, 3, 1, 3)
    );
    assert_eq!(check(&path).unwrap().1, counts);

    let b = tmp.path().join("b");
    let restored = restore(&config(&b), &path, NOW).unwrap();
    assert_eq!(restored, counts);
    let copy = Arc::new(SledStore::open(&StateDir::new(&b).store()).unwrap());
    let json = |v: &dyn erased::Json| v.json();
    for h in &hosts {
        let got = copy.host(&h.id).unwrap().expect("host restored");
        assert_eq!(json(&got), json(h));
        assert_eq!(copy.certs_for_host(&h.id).unwrap().len(), 1);
    }
    assert_eq!(
        copy.due(i64::MAX - 1, 10).unwrap().len(),
        3,
        "the schedule index is rebuilt"
    );
    assert_eq!(copy.account("a").unwrap().unwrap().account_id, "acct-1");
    assert_eq!(
        copy.ip_holder("192.0.2.7".parse().unwrap()).unwrap(),
        Some(hosts[0].id.clone())
    );
    let source_log = AuditLog::open(store.clone() as Arc<dyn AuditStore>).unwrap();
    let log = AuditLog::open(copy.clone() as Arc<dyn AuditStore>).unwrap();
    assert_eq!(log.head_hash(), source_log.head_hash());
    assert!(log.verify().unwrap().is_none());
    assert_eq!(
        log.query(&crate::audit::Query {
            host_id: Some(hosts[1].id.to_string()),
            ..Default::default()
        })
        .unwrap()
        .len(),
        1,
        "the audit indexes are rebuilt"
    );
    // The fleet CA is the backup's, with a new server certificate and admin credential.
    let new = StateDir::new(&b);
    assert_eq!(new.ca_fingerprint().unwrap(), dir.ca_fingerprint().unwrap());
    assert!(new.server_cert().exists() && new.admin_cert().exists());
    let key_mode = std::fs::metadata(new.ca_key())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
}

/// Record equality by their JSON (the records have no `PartialEq`).
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}

#[test]
fn damaged_truncated_or_exposed_backups_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store, _) = source(tmp.path());
    let (path, _) = backup_file(tmp.path(), &dir, &store);
    let good = std::fs::read(&path).unwrap();
    let b = tmp.path().join("b");
    let attempt = |bytes: &[u8]| -> String {
        std::fs::write(&path, bytes).unwrap();
        let err = restore(&config(&b), &path, NOW).unwrap_err().to_string();
        assert!(
            !b.exists() || std::fs::read_dir(&b).unwrap().next().is_none(),
            "a refused restore wrote into the state directory"
        );
        err
    };
    // Cut anywhere: in the middle, at a line end (the end record missing).
    let err = attempt(&good[..good.len() / 2]);
    assert!(err.contains("truncated"), "{err}");
    let last_line = good[..good.len() - 1]
        .iter()
        .rposition(|&c| c == b'\n')
        .unwrap();
    let err = attempt(&good[..=last_line]);
    assert!(
        err.contains("truncated") && err.contains("store backup"),
        "{err}"
    );
    // One character of a record changed: still JSON, but not what was written.
    let text = String::from_utf8(good.clone()).unwrap();
    let edited = text.replacen("\"hostname\":\"h1\"", "\"hostname\":\"hX\"", 1);
    assert_ne!(edited, text);
    let err = attempt(edited.as_bytes());
    assert!(err.contains("checksum mismatch"), "{err}");
    // A byte that breaks the JSON.
    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 0x40;
    let err = attempt(&flipped);
    assert!(err.contains("line") || err.contains("checksum"), "{err}");
    // Something after the end record.
    let mut longer = good.clone();
    longer.extend_from_slice(b"{\"kind\":\"audit\",\"seq\":9,\"json\":\"{}\"}\n");
    let err = attempt(&longer);
    assert!(err.contains("after the end record"), "{err}");
    // Not a backup at all.
    let err = attempt(b"{\"hello\":1}\n");
    assert!(err.contains("not a backup record"), "{err}");
    // Readable by others: refused naming chmod.
    std::fs::write(&path, &good).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = restore(&config(&b), &path, NOW).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    // The good file restores.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    restore(&config(&b), &path, NOW).unwrap();
}

#[test]
fn a_state_directory_in_use_is_refused_naming_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store, _) = source(tmp.path());
    let (path, _) = backup_file(tmp.path(), &dir, &store);
    let err = restore(&config(&dir.root), &path, NOW)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty") && err.contains("move"), "{err}");
    // The store in it is untouched (still open here, still three hosts).
    assert_eq!(store.hosts().unwrap().len(), 3);
}

#[test]
fn writes_wait_while_the_snapshot_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, store, _) = source(tmp.path());
    let late = host("late");
    let seen_during = store.with_writes_paused(|s| {
        let (st, h) = (store.clone(), late.clone());
        let writer = std::thread::spawn(move || st.put_host(&h).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(300));
        let seen = s.host(&late.id).unwrap().is_some();
        (seen, writer)
    });
    assert!(!seen_during.0, "a write went through during the snapshot");
    seen_during.1.join().unwrap();
    assert!(
        store.host(&late.id).unwrap().is_some(),
        "the write happens after it"
    );
}
