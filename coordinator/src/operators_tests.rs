use super::*;
use crate::store::SledStore;
use std::sync::Arc;

const PROTO: &str = include_str!("../../proto/proto/certfleet/v1/certfleet.proto");

/// The RPC names of `service Admin` in the proto, in order.
fn proto_admin_rpcs() -> Vec<String> {
    let start = PROTO
        .find("service Admin {")
        .expect("service Admin in the proto");
    let body = &PROTO[start..];
    let body = &body[..body.find("\n}").expect("end of service Admin")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l[..l.find('(').expect("rpc Name(")].trim().to_owned())
        .collect()
}

#[test]
fn every_admin_rpc_is_classified_and_no_other() {
    let proto = proto_admin_rpcs();
    assert!(proto.len() >= 16, "parsed {proto:?}");
    let ours: Vec<String> = AdminRpc::ALL.iter().map(|r| r.name().to_owned()).collect();
    for name in &proto {
        assert!(
            ours.contains(name),
            "Admin RPC {name} is not in AdminRpc::ALL: classify it (Read, Write or Own) in operators.rs"
        );
    }
    for name in &ours {
        assert!(proto.contains(name), "AdminRpc {name} is not in the proto");
    }
    assert_eq!(proto.len(), ours.len(), "an RPC is listed twice");
}

#[test]
fn viewers_read_admins_do_everything_and_renewal_is_for_everyone() {
    for rpc in AdminRpc::ALL {
        assert!(
            rpc.access().allows(Role::Admin),
            "{} refused to an admin",
            rpc.name()
        );
    }
    let viewer: Vec<&str> = AdminRpc::ALL
        .iter()
        .filter(|r| r.access().allows(Role::Viewer))
        .map(|r| r.name())
        .collect();
    assert_eq!(
        viewer,
        [
            "ListHosts",
            "ListCerts",
            "QueryAudit",
            "VerifyAudit",
            "ListTokens",
            "RenewOperator",
            "ListOperators",
            "GetCredentials",
            "ClusterStatus"
        ]
    );
    for write in [
        "CreateToken",
        "RevokeCert",
        "RemoveHost",
        "AddOperator",
        "RevokeOperator",
    ] {
        assert!(!viewer.contains(&write), "{write} allowed to a viewer");
    }
}

#[test]
fn lifetimes_default_and_bounds() {
    assert_eq!(lifetime(0), Ok(30 * 24 * 3600));
    assert_eq!(lifetime(10), Ok(10));
    assert_eq!(lifetime(90 * 24 * 3600), Ok(90 * 24 * 3600));
    assert!(lifetime(9).unwrap_err().contains("10 s to 90 days"));
    assert!(lifetime(90 * 24 * 3600 + 1).is_err());
    assert!(lifetime(u64::MAX).is_err());
}

#[test]
fn renewal_at_two_thirds() {
    assert_eq!(renew_at(1000, 1030), 1020);
    assert_eq!(renew_at(0, 90 * 86400), 60 * 86400);
    // A credential made with clock-skew slack still renews before its end.
    let (nb, na) = (1_000 - 3, 1_000 + 30);
    assert!(renew_at(nb, na) < na && renew_at(nb, na) > nb);
    assert_eq!(renew_at(5, 5), 5, "an empty lifetime is due at once");
    assert_eq!(renew_at(10, 5), 10, "a reversed one too");
}

#[test]
fn names_are_plain() {
    for ok in ["alice", "ops.team", "a_b-c", "0perator", &"x".repeat(64)] {
        assert_eq!(check_name(ok), Ok(()), "{ok}");
    }
    for bad in ["", "Alice", "-a", "a b", "a/b", "ä", &"x".repeat(65)] {
        assert!(check_name(bad).is_err(), "{bad:?} accepted");
    }
}

fn record(role: Role) -> OperatorRecord {
    OperatorRecord {
        name: "alice".into(),
        role,
        serial: "0a1b".into(),
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
fn the_record_decides_each_call() {
    let viewer = record(Role::Viewer);
    assert!(check(viewer.clone(), "0A1B", 150, AdminRpc::ListHosts).is_ok());
    let e = check(viewer.clone(), "0a1b", 150, AdminRpc::CreateToken).unwrap_err();
    assert!(
        e.to_string()
            .contains("has role viewer; CreateToken needs role admin"),
        "{e}"
    );
    assert!(check(viewer.clone(), "0a1b", 150, AdminRpc::RenewOperator).is_ok());
    let e = check(viewer.clone(), "ffff", 150, AdminRpc::ListHosts).unwrap_err();
    assert!(matches!(e, Refusal::Replaced { .. }), "{e}");
    let e = check(viewer.clone(), "0a1b", 200, AdminRpc::ListHosts).unwrap_err();
    assert!(
        e.to_string().contains("expired")
            && e.to_string().contains("operators add alice --role viewer"),
        "{e}"
    );
    let mut revoked = record(Role::Admin);
    revoked.revoked_at = Some(120);
    revoked.revoked_by = Some("operator:root".into());
    let e = check(revoked, "0a1b", 150, AdminRpc::ListHosts).unwrap_err();
    assert!(matches!(e, Refusal::Revoked { .. }), "{e}");
    assert!(check(record(Role::Admin), "0a1b", 150, AdminRpc::RevokeOperator).is_ok());
}

#[test]
fn the_state_dir_credential_is_adopted_once_and_never_over_a_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(&tmp.path().join("state"));
    let now = 1_750_000_000;
    crate::fleet_ca::init(&dir, &["localhost".into()], &[], 3600, now).unwrap();
    let store = Arc::new(SledStore::open(&dir.store()).unwrap());
    let audit = AuditLog::open(store.clone()).unwrap();

    adopt_state_dir_credential(&dir, store.as_ref(), &audit, now).unwrap();
    let rec = store.operator(STATE_DIR_OPERATOR).unwrap().unwrap();
    assert_eq!(rec.role, Role::Admin);
    assert_eq!(rec.added_by, STATE_DIR_ACTOR);
    let pem = dir.read(&dir.admin_cert()).unwrap();
    let info = CertInfo::from_der(&parse_pem_chain(&pem).unwrap()[0]).unwrap();
    assert_eq!(rec.serial, info.serial_hex);
    assert_eq!(
        info.not_after,
        now + DEFAULT_LIFETIME_SECS,
        "init's admin has the same lifetime as any operator"
    );
    assert_eq!(audit.len(), 1);

    adopt_state_dir_credential(&dir, store.as_ref(), &audit, now + 5).unwrap();
    assert_eq!(
        audit.len(),
        1,
        "already the current credential: nothing to do"
    );

    // Revoked: a credential in the state directory does not bring it back.
    let mut revoked = rec.clone();
    revoked.revoked_at = Some(now + 10);
    revoked.generation += 1;
    assert!(store.put_operator(&revoked, Some(rec.generation)).unwrap());
    let other = tempfile::tempdir().unwrap();
    let newer = StateDir::new(&other.path().join("state"));
    crate::fleet_ca::init(&newer, &[], &[], 3600, now + 100).unwrap();
    std::fs::copy(newer.admin_cert(), dir.admin_cert()).unwrap();
    adopt_state_dir_credential(&dir, store.as_ref(), &audit, now + 100).unwrap();
    assert_eq!(
        store.operator(STATE_DIR_OPERATOR).unwrap().unwrap().serial,
        rec.serial
    );
    assert_eq!(audit.len(), 1);
}
