use super::*;
use crate::model::CertState;
use crate::web::data;
use crate::web::fixture::{self, cert, host, NOW};

#[test]
fn a_snapshot_holds_sorted_rows_of_every_host_and_certificate() {
    let f = fixture::fixture();
    let (b, a) = (host("bravo", "192.0.2.2"), host("alpha", "192.0.2.1"));
    f.add_host(&b, &[cert(&b, CertState::Served, 200)]);
    f.add_host(&a, &[cert(&a, CertState::Failed, 100)]);
    let snap = build(f.store.as_ref(), &f.web.sessions, NOW).unwrap();
    let names: Vec<&str> = snap.hosts.iter().map(|h| h.hostname.as_str()).collect();
    assert_eq!(names, ["alpha", "bravo"]);
    let hosts: Vec<&str> = snap.certs.iter().map(|c| c.row.hostname.as_str()).collect();
    assert_eq!(hosts, ["alpha", "bravo"], "soonest expiry first");
    let o = data::overview(&snap, NOW);
    assert_eq!((o.hosts, o.certs, o.attention_total), (2, 2, 1));
    let page = data::cert_list(&snap, "failed", "", 0, 50, NOW);
    assert_eq!(page.rows.len(), 1);
    assert_eq!(
        data::host_list(&snap, "192.0.2.2", 0, 50, NOW).rows[0].hostname,
        "bravo"
    );
}

/// Runs `get` and says whether it made a new snapshot (the number of hosts it shows
/// changed to what the store holds).
fn shown_hosts(f: &fixture::Fixture) -> usize {
    f.web.fleet.get().unwrap().hosts.len()
}

#[test]
fn staleness_is_bounded_by_the_fresh_and_stale_windows() {
    let f = fixture::fixture();
    let h = host("one", "192.0.2.1");
    f.add_host(&h, &[]);
    assert_eq!(shown_hosts(&f), 1);
    let two = host("two", "192.0.2.2");
    f.add_host(&two, &[]);
    f.clock.advance(FRESH_SECS - 1);
    assert_eq!(shown_hosts(&f), 1, "fresh: shown as it is");
    f.clock.advance(1);
    // Stale: the old one is shown while the next is made (inline here: no runtime).
    assert_eq!(shown_hosts(&f), 1);
    assert_eq!(shown_hosts(&f), 2, "the next one was made");
    let three = host("three", "192.0.2.3");
    f.add_host(&three, &[]);
    f.clock.advance(STALE_SECS);
    assert_eq!(shown_hosts(&f), 3, "too old to show: waited for");
    f.clock.set(NOW);
    let four = host("four", "192.0.2.4");
    f.add_host(&four, &[]);
    assert_eq!(
        shown_hosts(&f),
        4,
        "a snapshot from the future is not trusted"
    );
}

#[test]
fn one_snapshot_is_made_at_a_time() {
    let f = fixture::fixture();
    for i in 0..50 {
        let h = host(&format!("h{i}"), &format!("192.0.2.{}", i + 1));
        f.store.put_host(&h).unwrap();
    }
    let fleet = f.web.fleet.clone();
    let taken: Vec<Arc<Snapshot>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| fleet.get().unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        taken.iter().all(|s| Arc::ptr_eq(s, &taken[0])),
        "every concurrent request got the one snapshot made"
    );
    assert_eq!(taken[0].hosts.len(), 50);
}
