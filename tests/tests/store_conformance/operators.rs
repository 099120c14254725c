//! Operators on both backends: written by compare-and-swap on a generation (a renewal
//! racing a revocation cannot undo it), listed by name, durable across a reopen.

use super::each_backend;
use certfleet_coordinator::model::{OperatorRecord, Role};

pub fn operator(name: &str, serial: &str) -> OperatorRecord {
    OperatorRecord {
        name: name.into(),
        role: Role::Viewer,
        serial: serial.into(),
        issued: 100,
        not_after: 200,
        lifetime_secs: 100,
        added_by: "operator:root".into(),
        added: 100,
        revoked_at: None,
        revoked_by: None,
        generation: 0,
    }
}

#[test]
fn operators_are_written_by_compare_and_swap_and_survive_reopen() {
    each_backend("operators", |b| {
        {
            let s = b.open();
            assert!(s.operator("alice").unwrap().is_none());
            assert!(s.operators().unwrap().is_empty());
            assert!(s.put_operator(&operator("bob", "0b"), None).unwrap());
            assert!(s.put_operator(&operator("alice", "0a"), None).unwrap());
            // A second add of the same name loses: the first one stands.
            assert!(!s.put_operator(&operator("alice", "ff"), None).unwrap());
            assert_eq!(s.operator("alice").unwrap().unwrap().serial, "0a");

            // Renewal and revocation race from the same read: one wins, the other is told.
            let read = s.operator("alice").unwrap().unwrap();
            let mut renewed = read.clone();
            renewed.serial = "0c".into();
            renewed.generation += 1;
            let mut revoked = read.clone();
            revoked.revoked_at = Some(150);
            revoked.revoked_by = Some("operator:root".into());
            revoked.generation += 1;
            assert!(s.put_operator(&revoked, Some(read.generation)).unwrap());
            assert!(
                !s.put_operator(&renewed, Some(read.generation)).unwrap(),
                "{}: a renewal must not undo a revocation it raced",
                b.name
            );
            // With no record, an update expecting one writes nothing.
            let mut ghost = operator("carol", "0d");
            ghost.generation = 1;
            assert!(!s.put_operator(&ghost, Some(0)).unwrap());
            assert!(s.operator("carol").unwrap().is_none());
        }
        let s = b.open();
        let alice = s.operator("alice").unwrap().unwrap();
        assert_eq!(alice.serial, "0a");
        assert_eq!(alice.revoked_at, Some(150), "{}: durable", b.name);
        assert_eq!(alice.generation, 1);
        let names: Vec<String> = s.operators().unwrap().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["alice", "bob"], "{}: by name", b.name);
        // The next writer goes on from the stored generation.
        let mut again = alice.clone();
        again.role = Role::Admin;
        again.generation = 2;
        assert!(s.put_operator(&again, Some(1)).unwrap());
        assert_eq!(s.operator("alice").unwrap().unwrap().role, Role::Admin);
    });
}
