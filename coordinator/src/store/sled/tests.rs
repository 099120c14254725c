//! Unit tests of the sled store (the conformance suite in tests/tests/store_conformance
//! runs the same checks on both backends).
use super::*;
use std::collections::BTreeMap;

fn host(id: &HostId) -> HostRecord {
    HostRecord {
        requested_names: Default::default(),
        challenge_modes: Default::default(),
        key_groups: Default::default(),
        id: id.clone(),
        hostname: "web-1".into(),
        labels: BTreeMap::new(),
        enrolled: 10,
        enrolled_from: "127.0.0.1:5000".into(),
        identity_serial: "01".into(),
        identity_spki: None,
        identity_not_after: None,
        identity_rotated: None,
        ips: vec![],
        targets: vec![],
        last_seen: None,
        inventory: vec![],
    }
}

#[test]
fn tokens_are_single_use_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    store
        .put_token(
            "t1",
            &TokenRecord {
                created: 0,
                expires: 100,
                uses_left: 1,
                used_by: vec![],
                revoked: false,
                cidrs: vec![],
                labels: None,
                keys: Default::default(),
            },
        )
        .unwrap();
    let (a, b) = (HostId::generate(), HostId::generate());
    store.enroll("t1", 50, None, &host(&a)).unwrap();
    assert!(
        matches!(store.enroll("t1", 50, None, &host(&b)), Err(EnrollError::Refused(EnrollRefusal::AlreadyUsed(h))) if h == a.as_str())
    );
    assert!(
        store.host(&b).unwrap().is_none(),
        "refused enrollment records nothing"
    );
    assert!(matches!(
        store.enroll("nope", 50, None, &host(&b)),
        Err(EnrollError::Refused(EnrollRefusal::UnknownToken))
    ));
    store
        .put_token(
            "t2",
            &TokenRecord {
                created: 0,
                expires: 100,
                uses_left: 1,
                used_by: vec![],
                revoked: false,
                cidrs: vec![],
                labels: None,
                keys: Default::default(),
            },
        )
        .unwrap();
    assert!(matches!(
        store.enroll("t2", 100, None, &host(&b)),
        Err(EnrollError::Refused(EnrollRefusal::Expired(_)))
    ));
    assert!(store.host(&a).unwrap().is_some());
}

fn cert(host: &HostId, next: Option<i64>) -> CertRecord {
    let spec = crate::model::CertSpec {
        name: Default::default(),
        challenges: Default::default(),
        policy: None,
        identifiers: vec!["8.8.8.8".parse().unwrap()],
        issuer: "le".into(),
        fallback_issuers: vec![],
        required_profile: None,
        key_type: Default::default(),
        targets: vec!["t".into()],
        key_group: None,
    };
    let mut rec = CertRecord::new(CertId::generate(), host.clone(), spec, 1);
    rec.schedule.next_action = next;
    rec
}

#[test]
fn a_lease_has_one_holder_until_it_expires_and_fences_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut rec = cert(&HostId::generate(), Some(5));
    store.put_cert(&rec).unwrap();
    let a = store
        .take_lease(&rec.id, "node-a", 100, 20)
        .unwrap()
        .expect("free");
    assert_eq!((a.token, a.until), (1, 120));
    assert_eq!(
        store.take_lease(&rec.id, "node-b", 110, 20).unwrap(),
        None,
        "held"
    );
    // The holder extends it under the same token.
    let a2 = store
        .take_lease(&rec.id, "node-a", 110, 20)
        .unwrap()
        .expect("mine");
    assert_eq!((a2.token, a2.until), (1, 130));
    rec.schedule.next_action = Some(7);
    store.put_cert_fenced(&rec, &a2, 125).unwrap();
    // Expired: another node takes it with a higher token, and the old holder's
    // writes are refused and change nothing.
    let b = store
        .take_lease(&rec.id, "node-b", 131, 20)
        .unwrap()
        .expect("expired");
    assert_eq!(b.token, 2);
    rec.schedule.next_action = Some(9);
    assert!(matches!(
        store.put_cert_fenced(&rec, &a2, 131),
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        store.cert(&rec.id).unwrap().unwrap().schedule.next_action,
        Some(7)
    );
    assert_eq!(
        store.due(8, 10).unwrap(),
        vec![rec.id.clone()],
        "index untouched"
    );
    store.put_cert_fenced(&rec, &b, 140).unwrap();
    // Released: free at once, and the next lease is told apart from the last.
    store.release_lease(&a2).unwrap();
    assert_eq!(
        store.take_lease(&rec.id, "node-c", 141, 20).unwrap(),
        None,
        "a's release is a no-op"
    );
    store.release_lease(&b).unwrap();
    let c = store
        .take_lease(&rec.id, "node-c", 141, 20)
        .unwrap()
        .expect("released");
    assert_eq!(c.token, 3);
    assert!(matches!(
        store.put_cert_fenced(&rec, &b, 142),
        Err(StoreError::LeaseLost { .. })
    ));
    // Only one process opens a sled store: on reopening, no lease is held.
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert!(store
        .take_lease(&rec.id, "node-d", 142, 20)
        .unwrap()
        .is_some());
}

#[test]
fn key_group_members_follow_put_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (a, b) = (HostId::generate(), HostId::generate());
    let mut ra = cert(&a, Some(5));
    ra.spec.key_group = Some("edge".into());
    let mut rb = cert(&b, Some(6));
    rb.spec.key_group = Some("edge".into());
    let mut other = cert(&b, Some(7));
    other.spec.key_group = Some("edge-2".into());
    for r in [&ra, &rb, &other] {
        store.put_cert(r).unwrap();
    }
    let ids = |g: &str| {
        let mut v: Vec<String> = store
            .certs_in_group(g)
            .unwrap()
            .iter()
            .map(|r| r.id.to_string())
            .collect();
        v.sort();
        v
    };
    let mut both = vec![ra.id.to_string(), rb.id.to_string()];
    both.sort();
    assert_eq!(
        ids("edge"),
        both,
        "a prefix of another group is not a member"
    );
    assert_eq!(ids("edge-2"), vec![other.id.to_string()]);
    // Leaving the group (the policy changed) and deletion take the entry away.
    rb.spec.key_group = None;
    store.put_cert(&rb).unwrap();
    assert_eq!(ids("edge"), vec![ra.id.to_string()]);
    store.delete_cert(&ra).unwrap();
    assert!(ids("edge").is_empty());
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.certs_in_group("edge-2").unwrap().len(), 1, "durable");
}

#[test]
fn an_ip_has_one_holder_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (a, b) = (HostId::generate(), HostId::generate());
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    assert_eq!(store.ip_holder(ip).unwrap(), None);
    assert_eq!(store.claim_ip(ip, &a, None).unwrap(), a);
    assert_eq!(store.claim_ip(ip, &a, None).unwrap(), a, "idempotent");
    assert_eq!(store.claim_ip(ip, &b, None).unwrap(), a, "held by a");
    assert!(
        !store.release_ip(ip, &b).unwrap(),
        "b cannot free a's address"
    );
    assert_eq!(store.ips_held_by(&a).unwrap(), vec![ip]);
    // a is gone: b takes it over by naming the old holder.
    assert_eq!(store.claim_ip(ip, &b, Some(&a)).unwrap(), b);
    assert!(store.release_ip(ip, &b).unwrap());
    assert_eq!(store.ip_holder(ip).unwrap(), None);
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.claim_ip(ip, &a, None).unwrap(), a);
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.ip_holder(ip).unwrap(), Some(a), "durable");
}

#[test]
fn records_and_schedule_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = HostId::generate();
    let (early, late);
    {
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        store.put_host(&host(&id)).unwrap();
        early = cert(&id, Some(-5));
        late = cert(&id, Some(1_000));
        store.put_cert(&early).unwrap();
        store.put_cert(&late).unwrap();
        store.put_cert(&cert(&HostId::generate(), None)).unwrap();
    }
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    assert_eq!(store.hosts().unwrap().len(), 1);
    assert_eq!(store.certs_for_host(&id).unwrap().len(), 2);
    assert_eq!(store.next_due().unwrap(), Some(-5));
    assert_eq!(store.due(0, 10).unwrap(), vec![early.id.clone()]);
    assert_eq!(
        store.due(1_000, 10).unwrap(),
        vec![early.id.clone(), late.id.clone()]
    );
    // Moving an entry removes the old index key.
    let mut moved = early.clone();
    moved.schedule.next_action = Some(2_000);
    store.put_cert(&moved).unwrap();
    assert_eq!(store.due(1_999, 10).unwrap(), vec![late.id.clone()]);
    assert_eq!(store.next_due().unwrap(), Some(1_000));
    moved.schedule.next_action = None;
    store.put_cert(&moved).unwrap();
    assert_eq!(store.due(i64::MAX - 1, 10).unwrap(), vec![late.id]);
}
