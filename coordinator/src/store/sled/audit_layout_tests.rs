//! The audit trail's on-disk layout is the one coordinators wrote before the audit went
//! through [`AuditStore`]: stores written then must open and verify unchanged.
use super::*;
use crate::audit::{AuditLog, Entry, Kind, Query};
use std::sync::Arc;

#[test]
fn audit_trees_keep_their_keys_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let ip: IpAddr = "203.0.113.5".parse().unwrap();
    {
        let store = Arc::new(SledStore::open(&path).unwrap());
        let log = AuditLog::open(store.clone()).unwrap();
        log.append(Kind::TokenCreated, 1, Entry::by("operator:ops"))
            .unwrap();
        log.append(
            Kind::CertificateIssued,
            2,
            Entry::by("coordinator").host("h-1").ips(&[ip]).serial("0a"),
        )
        .unwrap();
    }
    // Read the trees as sled holds them.
    let db = sled::open(&path).unwrap();
    let seq1 = 1u64.to_be_bytes();
    let rec: serde_json::Value =
        serde_json::from_slice(&db.open_tree("audit").unwrap().get(seq1).unwrap().unwrap())
            .unwrap();
    assert_eq!(rec["seq"], 1);
    assert_eq!(rec["kind"], "certificate_issued");
    assert_eq!(rec["host_id"], "h-1", "entry fields are flattened");
    let keys = |tree: &str| -> Vec<Vec<u8>> {
        db.open_tree(tree)
            .unwrap()
            .iter()
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect()
    };
    assert_eq!(
        keys("audit"),
        vec![0u64.to_be_bytes().to_vec(), seq1.to_vec()]
    );
    assert_eq!(keys("audit_by_host"), vec![[&b"h-1\0"[..], &seq1].concat()]);
    assert_eq!(
        keys("audit_by_serial"),
        vec![[&b"0a\0"[..], &seq1].concat()]
    );
    let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 5];
    assert_eq!(keys("audit_by_ip"), vec![[&mapped[..], &seq1].concat()]);
    drop(db);
    // And the log reads it back through the store.
    let log = AuditLog::open(Arc::new(SledStore::open(&path).unwrap())).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log.verify().unwrap(), None);
    let by_ip = log
        .query(&Query {
            network: Some(ipnet::IpNet::new(ip, 24).unwrap().trunc()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_ip.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
}
