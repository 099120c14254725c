//! Operators' renewal requests on both backends: kept apart from the certificate's record
//! (a task writing its older copy of the record cannot drop one), replaced by a newer
//! request, cleared only while still the one read, and kept across a reopen.

use super::{cert, each_backend};
use certfleet_coordinator::store::RenewalRequest;
use certfleet_shared::ids::{CertId, HostId};

fn request(cert: &CertId, by: &str, at: i64, nonce: &str) -> RenewalRequest {
    RenewalRequest {
        cert: cert.clone(),
        by: by.into(),
        at,
        nonce: nonce.into(),
    }
}

#[test]
fn renewal_requests_survive_record_writes_and_clear_only_when_unchanged() {
    each_backend("renewal_requests", |b| {
        let host = HostId::generate();
        let (c1, c2) = (cert(&host, Some(500), None), cert(&host, Some(900), None));
        {
            let s = b.open();
            assert!(s.renewal_requests().unwrap().is_empty(), "{}", b.name);
            s.put_cert(&c1).unwrap();
            s.put_cert(&c2).unwrap();
            let first = request(&c1.id, "operator:ann", 20, "n1");
            s.request_renewal(&first).unwrap();
            s.request_renewal(&request(&c2.id, "operator:bob", 10, "n2"))
                .unwrap();
            // A write of the record (a task's older copy) leaves the request alone.
            s.put_cert(&c1).unwrap();
            assert_eq!(s.renewal_request(&c1.id).unwrap(), Some(first.clone()));
            let all = s.renewal_requests().unwrap();
            assert_eq!(
                all.iter().map(|r| r.cert.clone()).collect::<Vec<_>>(),
                vec![c2.id.clone(), c1.id.clone()],
                "{}: oldest first",
                b.name
            );

            // A newer request replaces it; clearing the one read earlier keeps the newer.
            let newer = request(&c1.id, "operator:cy", 30, "n3");
            s.request_renewal(&newer).unwrap();
            s.clear_renewal_request(&first).unwrap();
            assert_eq!(s.renewal_request(&c1.id).unwrap(), Some(newer.clone()));
            s.clear_renewal_request(&newer).unwrap();
            assert_eq!(s.renewal_request(&c1.id).unwrap(), None, "{}", b.name);
            // Clearing what is gone already is no error.
            s.clear_renewal_request(&newer).unwrap();
        }
        // Kept across a reopen (a restart of the coordinator).
        let s = b.open();
        let left = s.renewal_requests().unwrap();
        assert_eq!(left.len(), 1, "{}: {left:?}", b.name);
        assert_eq!(left[0].by, "operator:bob");
        assert_eq!(s.renewal_request(&CertId::generate()).unwrap(), None);
    });
}
