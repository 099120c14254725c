//! What only the PostgreSQL store has: several writers on one database, schema versions,
//! and a server that goes away and comes back.

use super::*;

/// Two coordinators (two stores, two pools, two audit logs) appending at once make one
/// chain: no record lost or replaced, no fork, `verify()` intact.
#[test]
fn concurrent_appenders_make_one_chain() {
    let Some(b) = postgres("concurrent_appenders_make_one_chain") else {
        return;
    };
    const EACH: usize = 60;
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let store = b.open();
            std::thread::spawn(move || {
                let log = AuditLog::open(store).unwrap();
                (0..EACH)
                    .map(|i| {
                        log.append(
                            Kind::OperatorAction,
                            i as i64,
                            Entry::by(format!("operator:w{w}")),
                        )
                        .unwrap()
                        .seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = writers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..2 * EACH as u64).collect::<Vec<_>>(),
        "each seq taken once"
    );
    let s = b.open();
    let log = AuditLog::open(s.clone()).unwrap();
    assert_eq!(log.len(), 2 * EACH as u64);
    assert_eq!(log.verify().unwrap(), None, "one chain, intact");
    let (server, _) = b.pg.as_ref().unwrap();
    let forks = server
        .psql(
            "conformance",
            "SELECT count(*) FROM audit a JOIN audit b ON a.prev = b.prev AND a.seq <> b.seq",
        )
        .unwrap();
    assert_eq!(forks.trim(), "0");
}

/// The schema itself refuses a fork: a row whose `prev` is not the hash of the record
/// before it, or a second successor of one record.
#[test]
fn the_schema_refuses_a_fork() {
    let Some(b) = postgres("the_schema_refuses_a_fork") else {
        return;
    };
    let s = b.open();
    let log = AuditLog::open(s.clone()).unwrap();
    let r0 = log
        .append(Kind::TokenCreated, 1, Entry::by("operator:a"))
        .unwrap();
    let r1 = log
        .append(Kind::TokenCreated, 2, Entry::by("operator:a"))
        .unwrap();
    let row = |seq, prev| AuditRow {
        seq,
        json: "{}",
        prev,
        hash: "h",
        host_id: None,
        ips: &[],
        serial: None,
    };
    // Extends record 1 but claims another predecessor.
    assert!(matches!(
        s.append_audit(&row(2, "bogus")),
        Err(StoreError::AuditConflict { seq: 2 })
    ));
    // A second successor of record 0 (under a new seq): prev is unique.
    assert!(matches!(
        s.append_audit(&row(3, &r1.prev)),
        Err(StoreError::AuditConflict { .. })
    ));
    // A second record 0.
    assert!(matches!(
        s.append_audit(&row(0, "")),
        Err(StoreError::AuditConflict { seq: 0 })
    ));
    assert_eq!(r1.prev, r0.hash);
    assert_eq!(log.verify().unwrap(), None);
    assert_eq!(s.last_audit_record().unwrap().unwrap().seq, 1);
}

/// Several coordinators starting on a new database at once: one migrates under the
/// advisory lock, the others find the schema current.
#[test]
fn simultaneous_starts_migrate_once() {
    let Some(b) = postgres("simultaneous_starts_migrate_once") else {
        return;
    };
    let (server, _) = b.pg.as_ref().unwrap();
    let url = server.create_database("fresh").unwrap();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgSyncStore::open(pg_options(&url)).map(drop))
        })
        .collect();
    for t in opens {
        t.join().unwrap().unwrap();
    }
    let versions = server
        .psql(
            "fresh",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM certfleet_schema",
        )
        .unwrap();
    // Each migration applied once, in order.
    let want: Vec<String> = (1..=certfleet_coordinator::store::pg::SCHEMA_VERSION)
        .map(|v| v.to_string())
        .collect();
    assert_eq!(versions.trim(), want.join(","));
}

#[test]
fn a_schema_newer_than_the_binary_is_refused() {
    let Some(b) = postgres("a_schema_newer_than_the_binary_is_refused") else {
        return;
    };
    drop(b.open());
    let (server, url) = b.pg.as_ref().unwrap();
    server
        .psql(
            "conformance",
            "INSERT INTO certfleet_schema (version) VALUES (99)",
        )
        .unwrap();
    let err = PgSyncStore::open(pg_options(url)).unwrap_err();
    let known = certfleet_coordinator::store::pg::SCHEMA_VERSION;
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, known: k } if k == known),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("version 99") && msg.contains(&format!("version {known}")),
        "{msg}"
    );
}

/// A call while the server is down is an error (no panic, no hang beyond the timeouts);
/// once it is back the pool replaces its dead connections and the next call succeeds.
#[test]
fn a_server_restart_is_survived() {
    let Some(mut b) = postgres("a_server_restart_is_survived") else {
        return;
    };
    let s = b.open();
    let h = HostId::generate();
    s.put_host(&host(&h, "before")).unwrap();
    let log = AuditLog::open(s.clone()).unwrap();
    log.append(Kind::TokenCreated, 1, Entry::by("operator:a"))
        .unwrap();
    let (server, _) = b.pg.as_mut().unwrap();
    server.stop().unwrap();
    let down = s.host(&h);
    assert!(matches!(down, Err(StoreError::Io(_))), "{down:?}");
    let msg = down.unwrap_err().to_string();
    assert!(msg.contains("127.0.0.1"), "names the database: {msg}");
    assert!(log
        .append(Kind::TokenCreated, 2, Entry::by("operator:a"))
        .is_err());
    server.start_again().unwrap();
    assert_eq!(s.host(&h).unwrap().unwrap().hostname, "before");
    s.put_host(&host(&h, "after")).unwrap();
    log.append(Kind::TokenCreated, 3, Entry::by("operator:a"))
        .unwrap();
    assert_eq!(log.verify().unwrap(), None);
    assert_eq!(log.len(), 2);
}

/// The server's certificate decides under `verify-full`; `require` encrypts without it,
/// and a server without TLS is refused by both (never a silent plain connection).
#[test]
fn tls_modes_refuse_a_server_without_tls() {
    let Some(b) = postgres("tls_modes_refuse_a_server_without_tls") else {
        return;
    };
    let (_, url) = b.pg.as_ref().unwrap();
    for tls in [PgTls::Require, PgTls::VerifyFull] {
        let opts = PgOptions {
            tls,
            ..pg_options(url)
        };
        let err = PgSyncStore::open(opts).unwrap_err().to_string();
        assert!(
            err.contains("tls") || err.contains("TLS") || err.contains("SSL"),
            "{tls:?}: {err}"
        );
    }
}

/// `store migrate`: a sled store with something of every kind, copied into PostgreSQL,
/// reads back the same; a second copy into the now non-empty database is refused.
#[test]
fn a_sled_store_migrates_whole() {
    use certfleet_coordinator::store::migrate::{sled_to_postgres, MigrateError};
    let Some(b) = postgres("a_sled_store_migrates_whole") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
    let h = HostId::generate();
    sled.put_host(&host(&h, "web")).unwrap();
    sled.put_token("t1", &token(100, 1)).unwrap();
    let acct = AccountRecord {
        directory: "https://ca.test/dir".into(),
        account_id: "acct-1".into(),
        created: 1,
        credentials: serde_json::json!({"k": "v"}),
    };
    sled.put_account("le", &acct).unwrap();
    let mut budget = Budget::new();
    budget.record(&Event::OrderCreated, 5);
    sled.put_budget("le", &budget).unwrap();
    assert!(sled
        .put_operator(&super::operators::operator("alice", "0a"), None)
        .unwrap());
    let certs: Vec<CertRecord> = (0..3)
        .map(|i| cert(&h, Some(i * 10), Some("edge")))
        .collect();
    for c in &certs {
        sled.put_cert(c).unwrap();
    }
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    sled.claim_ip(ip, &h, None).unwrap();
    let log = AuditLog::open(sled.clone()).unwrap();
    for i in 0..20 {
        log.append(
            Kind::OrderCreated,
            i,
            Entry::by("coordinator")
                .host(h.as_str())
                .ips(&[ip])
                .serial(format!("{i:02x}")),
        )
        .unwrap();
    }
    let pg = Arc::new(PgSyncStore::open(pg_options(&b.pg.as_ref().unwrap().1)).unwrap());
    let report = sled_to_postgres(sled.clone(), pg.clone()).unwrap();
    assert_eq!(
        (
            report.hosts,
            report.certs,
            report.tokens,
            report.accounts,
            report.budgets,
            report.ip_holders,
            report.operators,
            report.audit_records
        ),
        (1, 3, 1, 1, 1, 1, 1, 20)
    );
    assert_eq!(
        pg.operator("alice").unwrap(),
        Some(super::operators::operator("alice", "0a"))
    );
    assert_eq!(pg.account("le").unwrap().unwrap().account_id, "acct-1");
    assert_eq!(pg.budget("le").unwrap(), Some(budget));
    assert_eq!(pg.ip_holder(ip).unwrap(), Some(h.clone()));
    assert_eq!(pg.certs_in_group("edge").unwrap().len(), 3);
    let due = pg.due(10, 10).unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due, sled.due(10, 10).unwrap(), "the schedule index rebuilt");
    for seq in 0..20 {
        assert_eq!(
            pg.audit_record(seq).unwrap(),
            sled.audit_record(seq).unwrap(),
            "byte for byte"
        );
    }
    let copied = AuditLog::open(pg.clone()).unwrap();
    assert_eq!(copied.verify().unwrap(), None);
    let by_serial = copied
        .query(&Query {
            serial: Some("0a".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        by_serial.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![10],
        "indexes rebuilt"
    );
    assert!(matches!(
        sled_to_postgres(sled, pg),
        Err(MigrateError::NotEmpty(_))
    ));
}

/// With TLS on the server: `verify-full` connects only when the certificate chains to
/// `ca_file` and names the URL's host; `require` connects to any; the session is TLS.
#[test]
fn verify_full_checks_the_servers_certificate() {
    use certfleet_tests::webserver::TestPki;
    let Some(b) = postgres("verify_full_checks_the_servers_certificate") else {
        return;
    };
    let (server, url) = b.pg.as_ref().unwrap();
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let pki = TestPki::generate("postgres", &[local]).unwrap();
    server
        .enable_tls(&pki.fullchain_pem(), &pki.key_pem)
        .unwrap();
    let with = |tls, ca: Vec<_>| PgOptions {
        tls,
        ca_certs: ca,
        ..pg_options(url)
    };
    let s = PgSyncStore::open(with(PgTls::VerifyFull, vec![pki.ca_der.clone()])).unwrap();
    let h = HostId::generate();
    s.put_host(&host(&h, "tls")).unwrap();
    let tls_sessions = server
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE application_name = 'certfleet-coordinator' AND ssl",
        )
        .unwrap();
    assert_ne!(tls_sessions.trim(), "0", "the pool's session is TLS");
    drop(s);
    let other = TestPki::generate("other", &[local]).unwrap();
    let err = PgSyncStore::open(with(PgTls::VerifyFull, vec![other.ca_der.clone()]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
    // Right CA, wrong name: the certificate is for 127.0.0.2.
    let misnamed = TestPki::generate("postgres", &["127.0.0.2".parse().unwrap()]).unwrap();
    server
        .enable_tls(&misnamed.fullchain_pem(), &misnamed.key_pem)
        .unwrap();
    server.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let err = PgSyncStore::open(with(PgTls::VerifyFull, vec![misnamed.ca_der.clone()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid for name"), "{err}");
    let s = PgSyncStore::open(with(PgTls::Require, vec![])).unwrap();
    assert_eq!(s.host(&h).unwrap().unwrap().hostname, "tls");
}
