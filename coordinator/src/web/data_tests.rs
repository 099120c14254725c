use super::*;
use crate::web::fixture::{cert, host, NOW};

#[test]
fn pages_clamp_and_link() {
    let p = Paged::of((0..120).collect::<Vec<_>>(), 100, 50);
    assert_eq!((p.rows.len(), p.prev(), p.next()), (20, Some(50), None));
    assert_eq!(p.range(), "101–120 of 120");
    let p = Paged::of((0..120).collect::<Vec<_>>(), 5000, 10_000);
    assert_eq!(p.limit, MAX_PAGE, "a page is never the whole fleet");
    assert_eq!(p.offset, 0, "past the end: the last page");
    let p = Paged::of(Vec::<u8>::new(), 0, 0);
    assert_eq!(
        (p.range().as_str(), p.prev(), p.next()),
        ("none", None, None)
    );
}

#[test]
fn problems_name_why() {
    let h = host("a", "192.0.2.1");
    assert_eq!(problem(&cert(&h, CertState::Served, 100), NOW), None);
    assert_eq!(
        problem(&cert(&h, CertState::Served, -1), NOW).as_deref(),
        Some("expired")
    );
    let failed = cert(&h, CertState::Failed, 100);
    assert_eq!(
        problem(&failed, NOW).as_deref(),
        Some("failed: the CA said <b>no</b>")
    );
    let mut risky = cert(&h, CertState::Installed, 100);
    risky.schedule.at_risk = true;
    assert_eq!(problem(&risky, NOW).as_deref(), Some("at risk"));
}
