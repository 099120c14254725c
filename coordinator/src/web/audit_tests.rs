use super::*;
use crate::web::fixture::host;

const NOW: i64 = 1_800_000_000;
/// 2027-01-15T00:00:00Z, the day of NOW.
const MIDNIGHT: i64 = NOW - NOW % 86_400;

fn params(f: impl FnOnce(&mut AuditParams)) -> AuditParams {
    let mut p = AuditParams::default();
    f(&mut p);
    p
}

#[test]
fn times_are_dates_moments_or_durations_ago() {
    assert_eq!(parse_time("2027-01-15", NOW), Ok(MIDNIGHT));
    assert_eq!(parse_time("2027-01-15T08:00", NOW), Ok(MIDNIGHT + 8 * 3600));
    assert_eq!(
        parse_time("2027-01-15T08:00:00Z", NOW),
        Ok(MIDNIGHT + 8 * 3600)
    );
    assert_eq!(parse_time("24h", NOW), Ok(NOW - 86_400));
    assert_eq!(parse_time("1h30m", NOW), Ok(NOW - 5400));
    assert!(parse_time("yesterday", NOW)
        .unwrap_err()
        .contains("how long ago"));
}

#[test]
fn every_filter_parses_or_says_why() {
    let hosts = || {
        vec![
            host("web-1", "192.0.2.1"),
            host("dup", "192.0.2.2"),
            host("dup", "192.0.2.3"),
        ]
    };
    let s = params(|p| {
        p.ip = "192.0.2.0/24".into();
        p.name = "*.example.net".into();
        p.serial = "0A:1B".into();
        p.kind = "certificate_issued, host_enrolled".into();
        p.since = "7d".into();
        p.before = "500".into();
        p.limit = "100000".into();
        p.host = "WEB-1".into();
    })
    .search(&hosts, NOW)
    .unwrap();
    assert_eq!(s.query.network, Some("192.0.2.0/24".parse().unwrap()));
    assert_eq!(s.query.serial.as_deref(), Some("0a1b"));
    assert_eq!(s.query.kinds.len(), 2);
    assert_eq!(s.query.since, Some(NOW - 7 * 86_400));
    assert!(
        s.query.host_id.as_deref().unwrap().starts_with("h-"),
        "hostname → id"
    );
    assert_eq!((s.before, s.limit), (Some(500), MAX_LIMIT));

    let errors = params(|p| {
        p.host = "dup".into();
        p.ip = "300.1.1.1".into();
        p.name = "-bad-.example".into();
        p.serial = "xyz".into();
        p.kind = "certificate_eaten".into();
        p.until = "later".into();
        p.before = "top".into();
    })
    .search(&hosts, NOW)
    .unwrap_err();
    let all = errors.join("\n");
    for word in [
        "2 hosts are named",
        "IP or CIDR",
        "name:",
        "serial:",
        "kind:",
        "until:",
        "before:",
    ] {
        assert!(all.contains(word), "{word}: {all}");
    }
    let none = params(|p| p.host = "ghost".into())
        .search(&hosts, NOW)
        .unwrap_err();
    assert!(none[0].contains("no host has"), "{none:?}");
}

#[test]
fn links_keep_the_search_and_move_the_cursor() {
    let p = params(|p| {
        p.ip = "192.0.2.0/24".into();
        p.kind = "a b".into();
        p.before = "9".into();
    });
    assert_eq!(
        p.with_before(Some(4)),
        "ip=192.0.2.0%2F24&kind=a%20b&before=4"
    );
    assert_eq!(p.with_before(None), "ip=192.0.2.0%2F24&kind=a%20b");
}
