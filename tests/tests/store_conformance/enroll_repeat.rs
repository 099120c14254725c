//! A repeated enrollment (the same token and identity key again: the agent retries when
//! the reply was lost) is the same host again on both backends: no second host, no second
//! use; another key with the used-up token, and a repeat after the host was removed, are
//! refused.

use super::{each_backend, host, token};
use certfleet_coordinator::model::HostRecord;
use certfleet_coordinator::store::{EnrollError, EnrollRefusal, Enrolled, TokenRecord};
use certfleet_shared::ids::HostId;

/// A host record as the coordinator makes it for an Enroll: a fresh id, and the identity
/// key of the request's CSR (`identity_spki`, hex DER).
fn asking(key: &[u8]) -> HostRecord {
    let mut h = host(&HostId::generate(), "web");
    h.identity_spki = Some(hex::encode(key));
    h
}

fn stored_token(s: &dyn super::Both, hash: &str) -> TokenRecord {
    s.tokens()
        .unwrap()
        .into_iter()
        .find(|(h, _)| h == hash)
        .map(|(_, t)| t)
        .unwrap()
}

#[test]
fn a_repeated_enrollment_is_the_same_host_and_takes_no_use() {
    each_backend("enroll_repeat", |b| {
        let first = asking(b"key-a");
        let a = first.id.clone();
        {
            let s = b.open();
            s.put_token("single", &token(100, 1)).unwrap();
            s.put_token("multi", &token(100, 3)).unwrap();
            let got = s.enroll("single", 50, None, &first).unwrap();
            assert!(
                matches!(&got, Enrolled::New(h) if h.id == a),
                "{}: {got:?}",
                b.name
            );
        }
        // Reopened: what the token noted is durable.
        let s = b.open();
        let retry = asking(b"key-a");
        match s.enroll("single", 60, None, &retry) {
            Ok(Enrolled::Repeat(h)) => assert_eq!(h.id, a, "{}: the first host", b.name),
            other => panic!("{}: want a repeat, got {other:?}", b.name),
        }
        assert!(
            s.host(&retry.id).unwrap().is_none(),
            "{}: no second host",
            b.name
        );
        assert_eq!(s.hosts().unwrap().len(), 1, "{}", b.name);
        let t = stored_token(s.as_ref(), "single");
        assert_eq!(
            (t.uses_left, t.used_by.clone()),
            (0, vec![a.clone()]),
            "{}",
            b.name
        );

        // Another key with the used-up token: refused, nothing recorded.
        let other = asking(b"key-b");
        let r = s.enroll("single", 60, None, &other);
        assert!(
            matches!(&r, Err(EnrollError::Refused(EnrollRefusal::AlreadyUsed(h))) if h == a.as_str()),
            "{}: {r:?}",
            b.name
        );
        // Past the token's expiry a repeat is refused like any use.
        let r = s.enroll("single", 100, None, &retry);
        assert!(
            matches!(&r, Err(EnrollError::Refused(EnrollRefusal::Expired(_)))),
            "{}: {r:?}",
            b.name
        );

        // A token with uses left: the repeat takes none of them.
        let c = asking(b"key-c");
        assert!(matches!(
            s.enroll("multi", 50, None, &c),
            Ok(Enrolled::New(_))
        ));
        let again = asking(b"key-c");
        match s.enroll("multi", 55, None, &again) {
            Ok(Enrolled::Repeat(h)) => assert_eq!(h.id, c.id, "{}", b.name),
            other => panic!("{}: want a repeat, got {other:?}", b.name),
        }
        assert_eq!(stored_token(s.as_ref(), "multi").uses_left, 2, "{}", b.name);

        // The host was removed: its key and token do not bring it back.
        s.delete_host(&a).unwrap();
        let r = s.enroll("single", 70, None, &retry);
        assert!(
            matches!(&r, Err(EnrollError::Refused(e @ EnrollRefusal::HostRemoved(h))) if h == a.as_str() && e.constraint() == "removed"),
            "{}: {r:?}",
            b.name
        );
        assert!(s.host(&a).unwrap().is_none() && s.host(&retry.id).unwrap().is_none());

        // The host has another identity key since (rotated): the old key is not it.
        let mut rotated = s.host(&c.id).unwrap().unwrap();
        rotated.identity_spki = Some(hex::encode(b"key-c-rotated"));
        s.put_host(&rotated).unwrap();
        let r = s.enroll("multi", 60, None, &asking(b"key-c"));
        assert!(
            matches!(&r, Err(EnrollError::Refused(EnrollRefusal::AlreadyUsed(_)))),
            "{}: {r:?}",
            b.name
        );
        assert_eq!(stored_token(s.as_ref(), "multi").uses_left, 2, "{}", b.name);
    });
}
