//! Unit tests of the audit trail: chain, queries, tampering, names.
use super::*;
use crate::store::SledStore;

fn open(dir: &tempfile::TempDir) -> (Arc<SledStore>, AuditLog) {
    let store = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
    let log = AuditLog::open(store.clone()).unwrap();
    (store, log)
}

fn log() -> (tempfile::TempDir, Arc<SledStore>, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = open(&dir);
    (dir, store, log)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Names go into their own field (absent when none, so IP-only records hash as before)
/// and are found by exact name or by zone.
#[test]
fn names_are_recorded_and_found_by_name_or_zone() {
    let (_d, _s, log) = log();
    let ids = |v: &[&str]| {
        v.iter()
            .map(|s| Identifier::parse(s).unwrap())
            .collect::<Vec<_>>()
    };
    let only_ip = log
        .append(
            Kind::OrderCreated,
            1,
            Entry::by("c").ids(&ids(&["192.0.2.1"])),
        )
        .unwrap();
    assert!(!serde_json::to_string(&only_ip).unwrap().contains("names"));
    log.append(
        Kind::OrderCreated,
        2,
        Entry::by("c").ids(&ids(&["192.0.2.1", "api.example.net"])),
    )
    .unwrap();
    log.append(
        Kind::OrderCreated,
        3,
        Entry::by("c").ids(&ids(&["a.b.example.net"])),
    )
    .unwrap();
    log.append(
        Kind::OrderCreated,
        4,
        Entry::by("c").ids(&ids(&["example.org"])),
    )
    .unwrap();
    let find = |n: &str| -> Vec<u64> {
        let q = Query {
            name: Some(NamePattern::parse(n).unwrap()),
            ..Query::default()
        };
        log.query(&q).unwrap().iter().map(|r| r.seq).collect()
    };
    assert_eq!(find("api.example.net"), vec![1]);
    assert_eq!(find("*.example.net"), vec![1, 2]);
    assert_eq!(find("*.b.example.net"), vec![2]);
    assert_eq!(find("example.org"), vec![3]);
    assert_eq!(log.verify().unwrap(), None);
}

#[test]
fn chain_verifies_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_store, log) = open(&dir);
        log.append(Kind::TokenCreated, 1, Entry::by("operator:ops"))
            .unwrap();
        log.append(Kind::HostEnrolled, 2, Entry::by("host:h-1").host("h-1"))
            .unwrap();
    }
    let (_store, log) = open(&dir);
    let r = log
        .append(
            Kind::CertificateIssued,
            3,
            Entry::by("coordinator").host("h-1").serial("0a"),
        )
        .unwrap();
    assert_eq!(r.seq, 2);
    assert_eq!(log.verify().unwrap(), None);
}

#[test]
fn edits_removals_and_reorders_are_caught() {
    let (_d, store, log) = log();
    for i in 0..5 {
        log.append(
            Kind::OrderCreated,
            i,
            Entry::by("coordinator").detail("n", i),
        )
        .unwrap();
    }
    // Edit record 2's content, keeping its hash.
    let mut r = log.get(2).unwrap().unwrap();
    r.entry.actor = "someone-else".into();
    store
        .overwrite_audit_record_for_test(2, &serde_json::to_vec(&r).unwrap())
        .unwrap();
    assert_eq!(log.verify().unwrap().map(|b| b.seq), Some(2));
    // Re-seal the edited record: the next link breaks instead.
    r.hash = seal(r.seq, r.time, r.kind, &r.entry, &r.prev);
    store
        .overwrite_audit_record_for_test(2, &serde_json::to_vec(&r).unwrap())
        .unwrap();
    assert_eq!(log.verify().unwrap().map(|b| b.seq), Some(3));
    // Remove a record.
    let (_d2, store2, log2) = self::log();
    for i in 0..3 {
        log2.append(Kind::OrderCreated, i, Entry::by("c")).unwrap();
    }
    store2.remove_audit_record_for_test(1).unwrap();
    assert_eq!(log2.verify().unwrap().map(|b| b.seq), Some(1));
}

#[test]
fn unreadable_and_misplaced_records_are_named() {
    let (_d, store, log) = log();
    for i in 0..4 {
        log.append(Kind::OrderCreated, i, Entry::by("c")).unwrap();
    }
    let third = store.audit_record(3).unwrap().unwrap();
    // Record 3's bytes under key 1: in the wrong place.
    store.overwrite_audit_record_for_test(1, &third).unwrap();
    let broken = log.verify().unwrap().unwrap();
    assert_eq!(broken.seq, 1);
    assert!(
        broken.reason.contains("out of place (found 3)"),
        "{broken:?}"
    );
    // Garbage under key 0: unreadable, and a query over it says which record.
    store
        .overwrite_audit_record_for_test(0, b"\xffnot json")
        .unwrap();
    let broken = log.verify().unwrap().unwrap();
    assert_eq!(broken.seq, 0);
    assert!(broken.reason.starts_with("unreadable"), "{broken:?}");
    assert!(matches!(
        log.query(&Query::default()),
        Err(AuditError::Corrupt { seq: 0, .. })
    ));
}

#[test]
fn time_range_queries_bisect_and_keep_exact_bounds() {
    let (_d, _store, log) = log();
    for t in 0..500i64 {
        log.append_unflushed(Kind::OrderCreated, t * 100, Entry::by("c"))
            .unwrap();
    }
    let q = |since, until| {
        log.query(&Query {
            since,
            until,
            ..Default::default()
        })
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect::<Vec<_>>()
    };
    assert_eq!(q(Some(10_000), Some(10_300)), vec![100, 101, 102]);
    assert_eq!(q(Some(0), Some(250)), vec![0, 1, 2]);
    assert_eq!(q(None, None).len(), 500);
    assert!(q(Some(1_000_000), None).is_empty());
    // A query stops at its limit.
    let limited = log
        .query(&Query {
            kinds: vec![Kind::OrderCreated],
            limit: Some(3),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        limited.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

/// A rare kind over a long trail: each page reads at most `scan` records, says how far
/// back it got and where to go on, and the last one says nothing older is left.
#[test]
fn pages_stop_at_their_scan_budget_and_say_how_far_back_they_searched() {
    let (_d, _store, log) = log();
    for i in 0..100i64 {
        let kind = if i == 10 {
            Kind::CertificateRevoked
        } else {
            Kind::CertificateServed
        };
        log.append_unflushed(kind, 1000 + i, Entry::by("c"))
            .unwrap();
    }
    let q = Query {
        kinds: vec![Kind::CertificateRevoked],
        ..Default::default()
    };
    let p = log.page(&q, None, 10, 30).unwrap();
    assert!(p.records.is_empty());
    assert_eq!(
        (p.scanned, p.reached, p.next_before),
        (30, Some((70, 1070)), Some(70))
    );
    let p = log.page(&q, Some(40), 10, 30).unwrap();
    assert_eq!(
        p.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![10]
    );
    assert_eq!((p.reached, p.next_before), (Some((10, 1010)), Some(10)));
    let p = log.page(&q, Some(10), 10, 30).unwrap();
    assert!(p.records.is_empty());
    assert_eq!(
        (p.scanned, p.next_before),
        (10, None),
        "the start of the trail"
    );
    // A time range is bounded by bisection, and the probe keeps its exact bounds.
    let q = Query {
        since: Some(1050),
        until: Some(1053),
        ..Default::default()
    };
    let p = log.page(&q, None, 10, 1000).unwrap();
    assert_eq!(
        p.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![52, 51, 50]
    );
    // `before` bounds a forward query too (the web view's export below a cursor).
    let q = Query {
        kinds: vec![Kind::CertificateServed],
        before: Some(3),
        ..Default::default()
    };
    assert_eq!(
        log.query(&q)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[test]
fn extreme_time_bounds_neither_overflow_nor_hide_records() {
    // Found by the coordinator_admin fuzz target: `since - slack` and `until + slack`
    // overflowed (a panic with overflow checks, wrong results without).
    let (_d, _store, log) = log();
    for t in [i64::MIN, 0, i64::MAX] {
        log.append_unflushed(Kind::OrderCreated, t, Entry::by("c"))
            .unwrap();
    }
    let q = |since, until| {
        log.query(&Query {
            since,
            until,
            ..Default::default()
        })
        .unwrap()
        .len()
    };
    assert_eq!(q(Some(i64::MIN), None), 3);
    assert_eq!(q(None, Some(i64::MAX)), 2);
    assert_eq!(q(Some(i64::MIN), Some(i64::MAX)), 2);
    assert_eq!(q(Some(i64::MAX), None), 1);
    assert_eq!(q(None, Some(i64::MIN)), 0);
}

#[test]
fn queries_use_host_cidr_serial_kind_and_time() {
    let (_d, _store, log) = log();
    log.append(
        Kind::CertificateIssued,
        10,
        Entry::by("c")
            .host("h-a")
            .ips(&[ip("203.0.113.5")])
            .serial("01"),
    )
    .unwrap();
    log.append(
        Kind::CertificateIssued,
        20,
        Entry::by("c")
            .host("h-b")
            .ips(&[ip("198.51.100.9"), ip("2001:db8::9")])
            .serial("02"),
    )
    .unwrap();
    log.append(
        Kind::CertificateInstalled,
        30,
        Entry::by("c")
            .host("h-a")
            .ips(&[ip("203.0.113.5")])
            .serial("01"),
    )
    .unwrap();
    let q = |q: Query| {
        log.query(&q)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        q(Query {
            host_id: Some("h-a".into()),
            ..Default::default()
        }),
        vec![0, 2]
    );
    assert_eq!(
        q(Query {
            network: Some(parse_network("203.0.113.0/24").unwrap()),
            ..Default::default()
        }),
        vec![0, 2]
    );
    assert_eq!(
        q(Query {
            network: Some(parse_network("2001:db8::/32").unwrap()),
            ..Default::default()
        }),
        vec![1]
    );
    assert_eq!(
        q(Query {
            network: Some(parse_network("198.51.100.9").unwrap()),
            ..Default::default()
        }),
        vec![1]
    );
    assert_eq!(
        q(Query {
            serial: Some("01".into()),
            kinds: vec![Kind::CertificateInstalled],
            ..Default::default()
        }),
        vec![2]
    );
    assert_eq!(
        q(Query {
            since: Some(15),
            until: Some(30),
            ..Default::default()
        }),
        vec![1]
    );
    assert!(parse_network("10.0.0.0/33").is_err());
    assert!(parse_network("nope").is_err());
}

#[test]
fn network_blocks_by_ipnet() {
    let net = |s: &str| parse_network(s).unwrap();
    assert_eq!(net("203.0.113.7/24").to_string(), "203.0.113.0/24");
    assert_eq!(net("198.51.100.9").to_string(), "198.51.100.9/32");
    assert_eq!(net("2001:db8::1").to_string(), "2001:db8::1/128");
    let key = |s: &str| ip_key(s.parse().unwrap());
    // IPv4 blocks are IPv4-mapped ranges, first to last address.
    assert_eq!(
        ip_block(net("10.0.0.0/8")),
        (key("10.0.0.0"), key("10.255.255.255"))
    );
    assert_eq!(
        ip_block(net("0.0.0.0/0")),
        (key("0.0.0.0"), key("255.255.255.255"))
    );
    assert_eq!(ip_block(net("::/0")), ([0; 16], [0xff; 16]));
    assert_eq!(
        ip_block(net("2001:db8::/32")),
        (
            key("2001:db8::"),
            key("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")
        )
    );
    // contains() keeps the families apart: ::ffff:10.0.0.1 is not in 10.0.0.0/8.
    assert!(net("10.0.0.0/8").contains(&"10.0.0.1".parse::<std::net::IpAddr>().unwrap()));
    assert!(!net("10.0.0.0/8").contains(&"::ffff:10.0.0.1".parse::<std::net::IpAddr>().unwrap()));
}

/// Two logs on one store (as two coordinators on one database): each log's cached head is
/// stale after the other appends; the store refuses the stale record and the log seals it
/// again onto the real head, so the records form one chain in one order.
#[test]
fn two_logs_on_one_store_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (store, a) = open(&dir);
    let b = AuditLog::open(store.clone()).unwrap();
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(a.append(Kind::OrderCreated, i, Entry::by("a")).unwrap().seq);
        seqs.push(b.append(Kind::OrderCreated, i, Entry::by("b")).unwrap().seq);
    }
    assert_eq!(
        seqs,
        (0..10).collect::<Vec<u64>>(),
        "no record replaced another"
    );
    assert_eq!(a.verify().unwrap(), None);
    let all = a.query(&Query::default()).unwrap();
    assert_eq!(all.len(), 10);
    let actors: Vec<&str> = all.iter().map(|r| r.entry.actor.as_str()).collect();
    assert_eq!(actors.iter().filter(|a| **a == "b").count(), 5);
    // A record already stored is never replaced.
    let row = AuditRow {
        seq: 3,
        json: "{}",
        prev: "",
        hash: "",
        host_id: None,
        ips: &[],
        serial: None,
    };
    assert!(matches!(
        store.append_audit(&row),
        Err(StoreError::AuditConflict { seq: 3 })
    ));
    assert_eq!(a.verify().unwrap(), None);
}
