//! Paging backwards through the audit trail (`AuditStore::audit_records_before`,
//! `AuditLog::page`) on both backends: newest first, bounded, a cursor that goes on
//! exactly where the last page stopped, with and without an index.

use super::each_backend;
use certfleet_coordinator::audit::{AuditLog, Entry, Kind, Query};
use std::net::IpAddr;

fn fill(log: &AuditLog) {
    for i in 0..300u64 {
        let ip: IpAddr = format!("203.0.113.{}", i % 4).parse().unwrap();
        let kind = if i % 10 == 0 {
            Kind::CertificateIssued
        } else {
            Kind::OrderCreated
        };
        let mut e = Entry::by("coordinator").ips(&[ip]);
        if i % 3 == 0 {
            e = e.host("h-three");
        }
        log.append_unflushed(kind, 1_000 + i as i64, e).unwrap();
    }
    log.flush().unwrap();
}

/// Every page's seqs, following the cursor.
fn walk(log: &AuditLog, q: &Query, limit: usize, scan: usize) -> Vec<Vec<u64>> {
    let (mut out, mut before) = (Vec::new(), None);
    loop {
        let page = log.page(q, before, limit, scan).unwrap();
        assert!(page.scanned <= scan.max(limit), "bounded: {}", page.scanned);
        out.push(page.records.iter().map(|r| r.seq).collect());
        match page.next_before {
            Some(b) => {
                assert!(before.is_none_or(|p| b < p), "the cursor moves back");
                before = Some(b);
            }
            None => return out,
        }
    }
}

#[test]
fn audit_pages_go_backwards_bounded_and_resume_at_the_cursor() {
    each_backend("audit_pages", |b| {
        let s = b.open();
        let log = AuditLog::open(s.clone()).unwrap();
        fill(&log);
        let seqs = |v: Vec<certfleet_coordinator::store::StoredAuditRecord>| -> Vec<u64> {
            v.into_iter().map(|r| r.seq).collect()
        };
        assert_eq!(
            seqs(s.audit_records_before(u64::MAX, 3).unwrap()),
            vec![299, 298, 297],
            "{}",
            b.name
        );
        assert_eq!(seqs(s.audit_records_before(2, 10).unwrap()), vec![1, 0]);
        assert!(s.audit_records_before(0, 10).unwrap().is_empty());

        // Everything, 64 a page: every record once, newest first.
        let pages = walk(&log, &Query::default(), 64, 64);
        let flat: Vec<u64> = pages.concat();
        assert_eq!(flat, (0..300).rev().collect::<Vec<_>>(), "{}", b.name);
        assert_eq!(pages.len(), 5);

        // A rare kind with a small scan budget: pages may come back short or empty, the
        // cursor still reaches every match.
        let issued = Query {
            kinds: vec![Kind::CertificateIssued],
            ..Query::default()
        };
        let pages = walk(&log, &issued, 20, 50);
        assert!(
            pages.iter().any(|p| p.len() < 20),
            "stopped by the scan budget"
        );
        assert_eq!(
            pages.concat(),
            (0..300).rev().filter(|i| i % 10 == 0).collect::<Vec<_>>()
        );

        // By the host index and by the address index, with a time range.
        let host = Query {
            host_id: Some("h-three".into()),
            since: Some(1_030),
            until: Some(1_100),
            ..Query::default()
        };
        let expected: Vec<u64> = (30..100).rev().filter(|i| i % 3 == 0).collect();
        assert_eq!(walk(&log, &host, 7, 1_000).concat(), expected, "{}", b.name);
        let net = Query {
            network: Some(certfleet_coordinator::audit::parse_network("203.0.113.2").unwrap()),
            ..Query::default()
        };
        let expected: Vec<u64> = (0..300).rev().filter(|i| i % 4 == 2).collect();
        assert_eq!(walk(&log, &net, 10, 1_000).concat(), expected);
        // A cursor from a page, and nothing below zero.
        let page = log.page(&Query::default(), Some(5), 100, 1_000).unwrap();
        assert_eq!(
            page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![4, 3, 2, 1, 0]
        );
        assert_eq!(page.next_before, None);
    });
}
