//! Bounded, cursor-based reads (`hosts_page`, `certs_page`, `tokens_page`, audit queries
//! `after` a sequence number): the edges a paged admin list meets — empty, an exact
//! multiple of the page size, records added and removed while paging.

use super::{cert, each_backend, host, token, Both};
use certfleet_coordinator::audit::{AuditLog, Entry, Kind, Query};
use certfleet_shared::ids::{CertId, HostId};
use std::collections::BTreeSet;

/// Pages of `size` through hosts, calling `between` after each page.
fn page_hosts(
    s: &dyn Both,
    size: usize,
    mut between: impl FnMut(usize),
) -> (Vec<String>, Vec<usize>) {
    let (mut seen, mut sizes, mut after) = (Vec::new(), Vec::new(), None::<HostId>);
    loop {
        let page = s.hosts_page(after.as_ref(), size).unwrap();
        sizes.push(page.len());
        let Some(last) = page.last() else {
            return (seen, sizes);
        };
        after = Some(last.id.clone());
        seen.extend(page.iter().map(|h| h.id.to_string()));
        between(sizes.len());
    }
}

fn add_hosts(s: &dyn Both, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| {
            let id = HostId::generate();
            s.put_host(&host(&id, &format!("h{i}"))).unwrap();
            id.to_string()
        })
        .collect()
}

#[test]
fn host_pages_cover_every_host_once_in_key_order() {
    each_backend("host_pages", |b| {
        let s = b.open();
        // Empty: one empty page.
        assert_eq!(page_hosts(s.as_ref(), 10, |_| {}), (vec![], vec![0]));
        // An exact multiple: full pages, then an empty one (the end).
        let ids = add_hosts(s.as_ref(), 20);
        let (seen, sizes) = page_hosts(s.as_ref(), 10, |_| {});
        assert_eq!(sizes, vec![10, 10, 0]);
        assert_eq!(
            seen,
            ids.iter().cloned().collect::<Vec<_>>(),
            "key order, once each"
        );
        // Not a multiple; a page larger than the whole; a page of one.
        let ids: BTreeSet<String> = ids.union(&add_hosts(s.as_ref(), 5)).cloned().collect();
        assert_eq!(page_hosts(s.as_ref(), 10, |_| {}).1, vec![10, 10, 5, 0]);
        assert_eq!(page_hosts(s.as_ref(), 1_000, |_| {}).1, vec![25, 0]);
        let (seen, sizes) = page_hosts(s.as_ref(), 1, |_| {});
        assert_eq!(sizes.len(), 26);
        assert_eq!(seen, ids.iter().cloned().collect::<Vec<_>>());
        // A cursor that is no stored key (a host removed since) still places the range.
        let third = ids.iter().nth(2).unwrap().clone();
        let after = HostId::parse(&third).unwrap();
        s.delete_host(&after).unwrap();
        let rest = s.hosts_page(Some(&after), 100).unwrap();
        assert_eq!(rest.len(), 22);
        assert!(rest.iter().all(|h| h.id.to_string() > third));
    });
}

#[test]
fn hosts_added_and_removed_while_paging_shift_nothing_else() {
    each_backend("host_pages_insert", |b| {
        let s = b.open();
        let original = add_hosts(s.as_ref(), 30);
        let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
        let all_at_start: Vec<String> = original.iter().cloned().collect();
        let (seen, _) = page_hosts(s.as_ref(), 7, |page| {
            // After every page: 5 hosts added (random ids: before and after the cursor),
            // and after the second page one host not yet read is removed.
            added.extend(add_hosts(s.as_ref(), 5));
            if page == 2 {
                let victim = all_at_start[all_at_start.len() - 1].clone();
                s.delete_host(&HostId::parse(&victim).unwrap()).unwrap();
                removed.insert(victim);
            }
        });
        let seen_set: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), seen_set.len(), "a host was listed twice");
        // Every host there from start to end was listed; the removed one was not.
        for id in original.difference(&removed) {
            assert!(seen_set.contains(id), "{id} was skipped");
        }
        assert!(seen_set.is_disjoint(&removed));
        // Only hosts that exist(ed) were listed, and in key order.
        assert!(seen_set.is_subset(&original.union(&added).cloned().collect()));
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
    });
}

#[test]
fn cert_and_token_pages_follow_the_same_rules() {
    each_backend("cert_token_pages", |b| {
        let s = b.open();
        assert!(s.certs_page(None, 10).unwrap().is_empty());
        assert!(s.tokens_page(None, 10).unwrap().is_empty());
        let h = HostId::generate();
        let mut certs: Vec<String> = (0..12)
            .map(|i| {
                let c = cert(&h, Some(i), None);
                s.put_cert(&c).unwrap();
                c.id.to_string()
            })
            .collect();
        certs.sort();
        let (mut seen, mut after, mut sizes) = (Vec::new(), None::<CertId>, Vec::new());
        loop {
            let page = s.certs_page(after.as_ref(), 4).unwrap();
            sizes.push(page.len());
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            seen.extend(page.iter().map(|c| c.id.to_string()));
        }
        assert_eq!(sizes, vec![4, 4, 4, 0]);
        assert_eq!(seen, certs);

        let mut hashes: Vec<String> = (0..9)
            .map(|i| format!("{i:x}{}", "ab".repeat(31)))
            .collect();
        for hash in &hashes {
            s.put_token(hash, &token(100, 1)).unwrap();
        }
        hashes.sort();
        let first = s.tokens_page(None, 5).unwrap();
        assert_eq!(first.len(), 5);
        let rest = s.tokens_page(Some(&first[4].0), 5).unwrap();
        let seen: Vec<String> = first.iter().chain(&rest).map(|(h, _)| h.clone()).collect();
        assert_eq!(seen, hashes);
        assert!(s.tokens_page(Some(&hashes[8]), 5).unwrap().is_empty());
        assert_eq!(rest[0].1.uses_left, 1, "records come with their keys");
    });
}

#[test]
fn audit_queries_resume_after_a_sequence_number() {
    each_backend("audit_pages", |b| {
        let s = b.open();
        let log = AuditLog::open(s.clone()).unwrap();
        let host = HostId::generate().to_string();
        for i in 0..10 {
            let entry = if i % 2 == 0 {
                Entry::by("test").host(&host)
            } else {
                Entry::by("test")
            };
            log.append(Kind::OperatorAction, 1_000 + i, entry).unwrap();
        }
        let page = |after, host: Option<&str>| -> Vec<u64> {
            let q = Query {
                after,
                limit: Some(3),
                host_id: host.map(str::to_owned),
                ..Query::default()
            };
            log.query(&q).unwrap().iter().map(|r| r.seq).collect()
        };
        assert_eq!(page(None, None), vec![0, 1, 2]);
        assert_eq!(page(Some(2), None), vec![3, 4, 5]);
        assert_eq!(page(Some(8), None), vec![9]);
        assert!(page(Some(9), None).is_empty());
        // Through the host index too.
        assert_eq!(page(None, Some(&host)), vec![0, 2, 4]);
        assert_eq!(page(Some(4), Some(&host)), vec![6, 8]);
        // Appended while paging: the next page carries it.
        log.append(Kind::OperatorAction, 2_000, Entry::by("test"))
            .unwrap();
        assert_eq!(page(Some(9), None), vec![10]);
    });
}
