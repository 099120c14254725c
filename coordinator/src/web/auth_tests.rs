use super::*;

fn record(name: &str, role: Role) -> OperatorRecord {
    OperatorRecord {
        name: name.into(),
        role,
        serial: "0a".into(),
        issued: 0,
        not_after: 1_000,
        lifetime_secs: 1_000,
        added_by: "coordinator:state-dir".into(),
        added: 0,
        revoked_at: None,
        revoked_by: None,
        generation: 0,
    }
}

#[test]
fn a_valid_certificate_or_session_is_needed() {
    let v = decide(Some(Ok(record("ann", Role::Viewer))), None, 10).unwrap();
    assert_eq!((v.name.as_str(), v.via), ("ann", "client certificate"));
    let v = decide(
        None,
        Some(("bob".into(), Some(record("bob", Role::Admin)))),
        10,
    )
    .unwrap();
    assert_eq!(
        (v.name.as_str(), v.role, v.via),
        ("bob", Role::Admin, "login session")
    );
    // A refused certificate does not hide a good session, and is named when both fail.
    let v = decide(
        Some(Err(Refusal::NotOperator)),
        Some(("bob".into(), Some(record("bob", Role::Viewer)))),
        10,
    )
    .unwrap();
    assert_eq!(v.name, "bob");
    let why = decide(None, None, 10).unwrap_err();
    assert_eq!(
        why,
        vec!["no client certificate and no login session".to_owned()]
    );
    let why = decide(Some(Err(Refusal::NoCertificate)), None, 10).unwrap_err();
    assert!(why[0].starts_with("client certificate refused"), "{why:?}");
}

#[test]
fn revoked_expired_or_removed_operators_lose_their_sessions() {
    let mut revoked = record("bob", Role::Admin);
    revoked.revoked_at = Some(5);
    revoked.revoked_by = Some("operator:ann".into());
    let why = decide(None, Some(("bob".into(), Some(revoked))), 10).unwrap_err();
    assert!(why[0].contains("revoked"), "{why:?}");
    let why = decide(
        None,
        Some(("bob".into(), Some(record("bob", Role::Admin)))),
        1_000,
    )
    .unwrap_err();
    assert!(why[0].contains("expired"), "{why:?}");
    let why = decide(None, Some(("bob".into(), None)), 10).unwrap_err();
    assert!(why[0].contains("no longer in the store"), "{why:?}");
}

#[test]
fn a_login_link_works_once_and_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(tmp.path());
    let token = create_login(&dir, "ann", 60, 100).unwrap();
    assert!(well_formed(&token), "{token}");
    // Only the hash is on disk, 0600, in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let files: Vec<_> = std::fs::read_dir(login_dir(&dir))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].file_name().to_string_lossy(), token_hash(&token));
    assert!(!std::fs::read_to_string(files[0].path())
        .unwrap()
        .contains(&token));
    assert_eq!(
        files[0].metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
    let dmode = std::fs::metadata(login_dir(&dir))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dmode & 0o777, 0o700);

    assert_eq!(redeem_login(&dir, &token, 120), Ok("ann".into()));
    assert_eq!(redeem_login(&dir, &token, 121), Err(LoginRefusal::Unknown));

    let late = create_login(&dir, "ann", 60, 100).unwrap();
    assert_eq!(redeem_login(&dir, &late, 160), Err(LoginRefusal::Expired));
    assert_eq!(
        redeem_login(&dir, "../../etc/passwd", 100),
        Err(LoginRefusal::Unknown)
    );

    // Expired tickets are swept when the next one is made.
    let _old = create_login(&dir, "ann", 10, 100).unwrap();
    let _new = create_login(&dir, "ann", 60, 200).unwrap();
    assert_eq!(std::fs::read_dir(login_dir(&dir)).unwrap().count(), 1);
}

#[test]
fn sessions_expire_and_close() {
    let s = WebSessions::new(100);
    let a = s.open("ann", 0);
    let b = s.open("bob", 50);
    assert_ne!(a, b);
    assert_eq!(s.operator(&a, 99), Some("ann".into()));
    assert_eq!(s.operator(&a, 100), None, "expired at its lifetime");
    assert_eq!(s.len(), 1, "an expired session is dropped when seen");
    assert_eq!(s.operator("not-a-session", 10), None);
    s.close(&b);
    assert_eq!(s.operator(&b, 60), None);
    assert!(s.is_empty());
}
