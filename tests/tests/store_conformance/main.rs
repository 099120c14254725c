//! One conformance suite for the coordinator's store traits, run against both backends:
//! sled in a temp dir, and PostgreSQL (a private server per test, `tests/src/postgres.rs`;
//! `SKIPPED:` where it is not installed, a failure under `CERTFLEET_REQUIRE_POSTGRES=1`).
//! `postgres.rs` holds what only PostgreSQL has: several writers, schema versions, a
//! server restart.
#![allow(clippy::unwrap_used)]

mod audit_pages;
mod cluster;
mod enroll_repeat;
mod operators;
mod paging;
mod postgres;
mod renewal_requests;

use certfleet_coordinator::audit::{AuditLog, Entry, Kind, Query};
use certfleet_coordinator::model::{CertRecord, CertSpec, HostRecord};
use certfleet_coordinator::store::{
    AccountRecord, AuditRow, AuditStore, EnrollError, EnrollRefusal, PgOptions, PgSyncStore, PgTls,
    SledStore, Store, StoreError, TokenRecord,
};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::ratelimit::{Budget, Event};
use certfleet_tests::postgres::PostgresServer;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Both traits, as each backend implements them on one type.
pub trait Both: Store + AuditStore {}
impl<T: Store + AuditStore> Both for T {}

/// A backend that can be opened (again) on the same data.
pub struct Backend {
    pub name: &'static str,
    open: Box<dyn Fn() -> Arc<dyn Both>>,
    // Kept alive for the test: the temp dir or the server.
    _sled_dir: Option<tempfile::TempDir>,
    pub pg: Option<(PostgresServer, String)>,
}

impl Backend {
    pub fn open(&self) -> Arc<dyn Both> {
        (self.open)()
    }
}

pub fn pg_options(url: &str) -> PgOptions {
    PgOptions {
        url: url.to_owned(),
        pool_size: 4,
        statement_timeout: Duration::from_secs(10),
        tls: PgTls::Disable,
        ca_certs: vec![],
    }
}

pub fn sled() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    Backend {
        name: "sled",
        open: Box::new(move || Arc::new(SledStore::open(&path).unwrap())),
        _sled_dir: Some(dir),
        pg: None,
    }
}

/// A PostgreSQL backend on its own server and database, or `None` (skipped).
pub fn postgres(test: &str) -> Option<Backend> {
    let server = PostgresServer::start_or_skip(test)?;
    let url = server.create_database("conformance").unwrap();
    let open_url = url.clone();
    Some(Backend {
        name: "postgres",
        open: Box::new(move || Arc::new(PgSyncStore::open(pg_options(&open_url)).unwrap())),
        _sled_dir: None,
        pg: Some((server, url)),
    })
}

/// Runs `check` on sled, then on PostgreSQL where it is available.
fn each_backend(test: &str, check: impl Fn(&Backend)) {
    for backend in [Some(sled()), postgres(test)].into_iter().flatten() {
        eprintln!("{test}: {}", backend.name);
        check(&backend);
    }
}

pub fn host(id: &HostId, name: &str) -> HostRecord {
    HostRecord {
        requested_names: Default::default(),
        challenge_modes: Default::default(),
        key_groups: Default::default(),
        id: id.clone(),
        hostname: name.into(),
        labels: BTreeMap::from([("role".to_owned(), "web".to_owned())]),
        enrolled: 10,
        enrolled_from: "127.0.0.1:5000".into(),
        identity_serial: "01".into(),
        identity_spki: None,
        identity_not_after: None,
        identity_rotated: None,
        ips: vec![],
        targets: vec![],
        last_seen: None,
        inventory: vec![],
    }
}

fn cert(host: &HostId, next: Option<i64>, group: Option<&str>) -> CertRecord {
    let spec = CertSpec {
        name: Default::default(),
        challenges: Default::default(),
        policy: None,
        identifiers: vec!["8.8.8.8".parse().unwrap()],
        issuer: "le".into(),
        fallback_issuers: vec![],
        required_profile: None,
        key_type: Default::default(),
        targets: vec!["t".into()],
        key_group: group.map(str::to_owned),
    };
    let mut rec = CertRecord::new(CertId::generate(), host.clone(), spec, 1);
    rec.schedule.next_action = next;
    rec
}

fn token(expires: i64, uses: u32) -> TokenRecord {
    TokenRecord {
        created: 0,
        expires,
        uses_left: uses,
        used_by: vec![],
        revoked: false,
        cidrs: vec![],
        labels: None,
        keys: Default::default(),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn accounts_hosts_and_budgets_round_trip_and_survive_reopen() {
    each_backend("accounts_hosts_and_budgets", |b| {
        let (h1, h2) = (HostId::generate(), HostId::generate());
        {
            let s = b.open();
            assert!(s.account("le").unwrap().is_none());
            let acct = AccountRecord {
                directory: "https://ca.test/dir".into(),
                account_id: "https://ca.test/acct/1".into(),
                created: 5,
                credentials: serde_json::json!({"id": "x", "key_pkcs8": "AAAA", "nul": "a\u{0}b"}),
            };
            s.put_account("le", &acct).unwrap();
            s.put_account("other", &acct).unwrap();
            s.delete_account("other").unwrap();
            assert!(s.account("other").unwrap().is_none());
            s.put_host(&host(&h1, "web-1")).unwrap();
            s.put_host(&host(&h2, "web-2")).unwrap();
            let mut renamed = host(&h2, "web-2b");
            renamed.ips = vec!["192.0.2.9".parse().unwrap()];
            s.put_host(&renamed).unwrap();
            let mut budget = Budget::new();
            budget.record(&Event::OrderCreated, 100);
            s.put_budget("le", &budget).unwrap();
            assert!(s.budget("zerossl").unwrap().is_none());
        }
        // Every write was durable: a new handle (a restarted coordinator) sees it.
        let s = b.open();
        let acct = s.account("le").unwrap().unwrap();
        assert_eq!(acct.account_id, "https://ca.test/acct/1");
        assert_eq!(
            acct.credentials["nul"], "a\u{0}b",
            "{}: NUL survives",
            b.name
        );
        assert_eq!(s.host(&h2).unwrap().unwrap().hostname, "web-2b");
        let mut want = vec![h1.to_string(), h2.to_string()];
        want.sort();
        let got: Vec<String> = s
            .hosts()
            .unwrap()
            .iter()
            .map(|h| h.id.to_string())
            .collect();
        assert_eq!(got, want, "{}: hosts in id order", b.name);
        s.delete_host(&h1).unwrap();
        assert!(s.host(&h1).unwrap().is_none());
        assert_eq!(s.hosts().unwrap().len(), 1);
        let mut budget = Budget::new();
        budget.record(&Event::OrderCreated, 100);
        assert_eq!(s.budget("le").unwrap(), Some(budget));
    });
}

#[test]
fn join_tokens_are_single_use_expire_and_can_be_revoked() {
    each_backend("join_tokens", |b| {
        let s = b.open();
        s.put_token("t1", &token(100, 1)).unwrap();
        s.put_token("t0", &token(100, 2)).unwrap();
        let (a, c) = (HostId::generate(), HostId::generate());
        s.enroll("t1", 50, None, &host(&a, "a")).unwrap();
        assert!(
            matches!(s.enroll("t1", 50, None, &host(&c, "c")), Err(EnrollError::Refused(EnrollRefusal::AlreadyUsed(h))) if h == a.as_str()),
            "{}",
            b.name
        );
        assert!(
            s.host(&c).unwrap().is_none(),
            "a refused enrollment records nothing"
        );
        assert!(matches!(
            s.enroll("nope", 50, None, &host(&c, "c")),
            Err(EnrollError::Refused(EnrollRefusal::UnknownToken))
        ));
        assert!(matches!(
            s.enroll("t0", 100, None, &host(&c, "c")),
            Err(EnrollError::Refused(EnrollRefusal::Expired(_)))
        ));
        let mut revoked = token(100, 1);
        revoked.revoked = true;
        s.put_token("t2", &revoked).unwrap();
        assert!(matches!(
            s.enroll("t2", 50, None, &host(&c, "c")),
            Err(EnrollError::Refused(EnrollRefusal::Revoked))
        ));
        // A two-use token: two hosts, then refused.
        s.enroll("t0", 60, None, &host(&c, "c")).unwrap();
        let tokens = s.tokens().unwrap();
        let names: Vec<&str> = tokens.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(names, vec!["t0", "t1", "t2"], "{}: in hash order", b.name);
        assert_eq!(tokens[0].1.uses_left, 1);
        assert_eq!(tokens[0].1.used_by, vec![c.clone()]);
        assert_eq!(tokens[1].1.used_by, vec![a.clone()]);
        assert!(s.host(&a).unwrap().is_some() && s.host(&c).unwrap().is_some());
    });
}

#[test]
fn constrained_tokens_are_checked_inside_the_enrollment() {
    each_backend("constrained_tokens", |b| {
        let s = b.open();
        let mut t = token(100, 3);
        t.cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        t.labels = Some(BTreeMap::from([("pool".to_owned(), "edge".to_owned())]));
        s.put_token("tc", &t).unwrap();
        let inside: Option<IpAddr> = Some("10.1.2.3".parse().unwrap());
        let outside: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let (a, c) = (HostId::generate(), HostId::generate());

        // From outside the CIDR: refused, nothing recorded, no use taken.
        let mut plain = host(&c, "c");
        plain.labels.clear();
        let r = s.enroll("tc", 50, outside, &plain);
        assert!(
            matches!(&r, Err(EnrollError::Refused(e @ EnrollRefusal::SourceNotAllowed { .. })) if e.constraint() == "cidr"),
            "{}: {r:?}",
            b.name
        );
        // A label the token does not fix (`host()` asks for role=web): refused.
        let r = s.enroll("tc", 50, inside, &host(&c, "c"));
        assert!(
            matches!(&r, Err(EnrollError::Refused(EnrollRefusal::LabelNotAllowed { key, .. })) if key == "role"),
            "{}: {r:?}",
            b.name
        );
        assert!(
            s.host(&c).unwrap().is_none(),
            "{}: refusals record no host",
            b.name
        );
        let (_, stored) = s
            .tokens()
            .unwrap()
            .into_iter()
            .find(|(h, _)| h == "tc")
            .unwrap();
        assert_eq!(stored.uses_left, 3, "{}: refusals take no use", b.name);

        // Inside, asking for nothing: the host gets exactly the token's labels.
        let mut asked = host(&a, "a");
        asked.labels.clear();
        let got = s.enroll("tc", 50, inside, &asked).unwrap().into_host();
        let want = BTreeMap::from([("pool".to_owned(), "edge".to_owned())]);
        assert_eq!(got.labels, want, "{}", b.name);
        assert_eq!(
            s.host(&a).unwrap().unwrap().labels,
            want,
            "{}: as stored",
            b.name
        );
        // A v4-mapped peer address (a dual-stack listener) counts as its IPv4 address.
        let mapped: Option<IpAddr> = Some("::ffff:10.9.9.9".parse().unwrap());
        s.enroll("tc", 50, mapped, &plain).unwrap();

        // The constraints survive the round trip through the store.
        let (_, stored) = s
            .tokens()
            .unwrap()
            .into_iter()
            .find(|(h, _)| h == "tc")
            .unwrap();
        assert_eq!(stored.uses_left, 1);
        assert_eq!(stored.cidrs, t.cidrs);
        assert_eq!(stored.labels, t.labels);
        assert_eq!(stored.used_by, vec![a.clone(), c.clone()]);
    });
}

#[test]
fn the_schedule_index_follows_every_write() {
    each_backend("schedule_index", |b| {
        let id = HostId::generate();
        let (early, late);
        {
            let s = b.open();
            s.put_host(&host(&id, "web")).unwrap();
            early = cert(&id, Some(-5), None);
            late = cert(&id, Some(1_000), None);
            s.put_cert(&early).unwrap();
            s.put_cert_unflushed(&late).unwrap();
            s.put_cert(&cert(&HostId::generate(), None, None)).unwrap();
        }
        let s = b.open();
        assert_eq!(s.certs().unwrap().len(), 3);
        assert_eq!(s.certs_for_host(&id).unwrap().len(), 2);
        assert_eq!(s.next_due().unwrap(), Some(-5));
        assert_eq!(s.due(0, 10).unwrap(), vec![early.id.clone()]);
        assert_eq!(
            s.due(1_000, 10).unwrap(),
            vec![early.id.clone(), late.id.clone()]
        );
        assert_eq!(s.due(1_000, 1).unwrap(), vec![early.id.clone()], "limit");
        // Moving an entry leaves no old one behind.
        let mut moved = early.clone();
        moved.schedule.next_action = Some(2_000);
        s.put_cert(&moved).unwrap();
        assert_eq!(s.due(1_999, 10).unwrap(), vec![late.id.clone()]);
        assert_eq!(s.next_due().unwrap(), Some(1_000));
        moved.schedule.next_action = None;
        s.put_cert(&moved).unwrap();
        assert_eq!(s.due(i64::MAX - 1, 10).unwrap(), vec![late.id.clone()]);
        // Equal times: id order.
        let mut same = cert(&id, Some(1_000), None);
        s.put_cert(&same).unwrap();
        let due = s.due(1_000, 10).unwrap();
        let mut want = vec![late.id.to_string(), same.id.to_string()];
        want.sort();
        assert_eq!(due.iter().map(|i| i.to_string()).collect::<Vec<_>>(), want);
        // Deleting takes the index entries too.
        s.delete_cert(&late).unwrap();
        same.schedule.next_action = Some(3_000);
        s.put_cert(&same).unwrap();
        assert_eq!(s.next_due().unwrap(), Some(3_000));
        assert!(s.cert(&late.id).unwrap().is_none());
        assert_eq!(s.certs_for_host(&id).unwrap().len(), 2);
        assert_eq!(
            s.cert(&same.id).unwrap().unwrap().schedule.next_action,
            Some(3_000)
        );
    });
}

#[test]
fn scan_visits_every_certificate_once() {
    each_backend("scan_certs", |b| {
        let s = b.open();
        let h = HostId::generate();
        // More than one page of the PostgreSQL scan (500).
        let mut want: Vec<String> = (0..1_100)
            .map(|i| {
                let r = cert(&h, Some(i), None);
                s.put_cert_unflushed(&r).unwrap();
                r.id.to_string()
            })
            .collect();
        want.sort();
        let mut seen = Vec::new();
        s.scan_certs(&mut |r| {
            seen.push(r.id.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, want, "{}: each once, in id order", b.name);
        // The visitor's error stops the scan and comes back.
        let mut n = 0;
        let err = s.scan_certs(&mut |_| {
            n += 1;
            Err(StoreError::Corrupt {
                key: "stop".into(),
                detail: "visitor".into(),
            })
        });
        assert!(matches!(err, Err(StoreError::Corrupt { .. })) && n == 1);
    });
}

#[test]
fn key_group_members_follow_put_and_delete() {
    each_backend("key_groups", |b| {
        let s = b.open();
        let (h1, h2) = (HostId::generate(), HostId::generate());
        let ra = cert(&h1, Some(5), Some("edge"));
        let mut rb = cert(&h2, Some(6), Some("edge"));
        let other = cert(&h2, Some(7), Some("edge-2"));
        for r in [&ra, &rb, &other] {
            s.put_cert(r).unwrap();
        }
        let ids = |g: &str| -> Vec<String> {
            sorted(
                s.certs_in_group(g)
                    .unwrap()
                    .iter()
                    .map(|r| r.id.to_string())
                    .collect(),
            )
        };
        assert_eq!(
            ids("edge"),
            sorted(vec![ra.id.to_string(), rb.id.to_string()])
        );
        assert_eq!(ids("edge-2"), vec![other.id.to_string()]);
        assert!(ids("edg").is_empty(), "a prefix is not a group");
        rb.spec.key_group = None;
        s.put_cert(&rb).unwrap();
        assert_eq!(
            ids("edge"),
            vec![ra.id.to_string()],
            "{}: left the group",
            b.name
        );
        s.delete_cert(&ra).unwrap();
        assert!(ids("edge").is_empty());
        drop(s);
        assert_eq!(
            b.open().certs_in_group("edge-2").unwrap().len(),
            1,
            "durable"
        );
    });
}

/// The store's clock as the engine passes it (PostgreSQL uses its own `now()`).
fn now() -> i64 {
    use certfleet_shared::clock::Clock;
    certfleet_shared::clock::SystemClock.now_unix()
}

#[test]
fn a_lease_has_one_holder_until_it_expires_and_fences_writes() {
    each_backend("leases", |b| {
        let s = b.open();
        let mut rec = cert(&HostId::generate(), Some(5), None);
        s.put_cert(&rec).unwrap();
        let a = s
            .take_lease(&rec.id, "node-a", now(), 2)
            .unwrap()
            .expect("free");
        assert_eq!(
            s.take_lease(&rec.id, "node-b", now(), 2).unwrap(),
            None,
            "{}: held",
            b.name
        );
        let a2 = s
            .take_lease(&rec.id, "node-a", now(), 2)
            .unwrap()
            .expect("mine");
        assert_eq!(
            a2.token, a.token,
            "{}: extended under the same token",
            b.name
        );
        rec.schedule.next_action = Some(7);
        s.put_cert_fenced(&rec, &a2, now()).unwrap();
        // Expired: another node takes it over, and the old holder cannot write any more.
        std::thread::sleep(Duration::from_millis(3100));
        let bl = s
            .take_lease(&rec.id, "node-b", now(), 20)
            .unwrap()
            .expect("expired");
        assert!(bl.token > a2.token, "{}: a new token", b.name);
        rec.schedule.next_action = Some(9);
        assert!(
            matches!(
                s.put_cert_fenced(&rec, &a2, now()),
                Err(StoreError::LeaseLost { .. })
            ),
            "{}: fenced",
            b.name
        );
        assert_eq!(
            s.cert(&rec.id).unwrap().unwrap().schedule.next_action,
            Some(7)
        );
        assert_eq!(
            s.due(8, 10).unwrap(),
            vec![rec.id.clone()],
            "{}: index untouched",
            b.name
        );
        s.put_cert_fenced(&rec, &bl, now()).unwrap();
        assert_eq!(s.due(8, 10).unwrap(), vec![], "{}", b.name);
        // Given back: free at once (the old holder's give-back is a no-op).
        s.release_lease(&a2).unwrap();
        assert_eq!(s.take_lease(&rec.id, "node-c", now(), 20).unwrap(), None);
        s.release_lease(&bl).unwrap();
        let c = s
            .take_lease(&rec.id, "node-c", now(), 20)
            .unwrap()
            .expect("released");
        assert!(c.token > bl.token);
        assert!(matches!(
            s.put_cert_fenced(&rec, &bl, now()),
            Err(StoreError::LeaseLost { .. })
        ));
        s.delete_cert(&rec).unwrap();
        assert!(s
            .take_lease(&rec.id, "node-d", now(), 20)
            .unwrap()
            .is_some());
    });
}

#[test]
fn an_ip_has_one_holder_by_compare_and_swap() {
    each_backend("claim_ip", |b| {
        let s = b.open();
        let (a, c) = (HostId::generate(), HostId::generate());
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let ip6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(s.ip_holder(ip).unwrap(), None);
        assert_eq!(s.claim_ip(ip, &a, None).unwrap(), a);
        assert_eq!(s.claim_ip(ip, &a, None).unwrap(), a, "idempotent");
        assert_eq!(
            s.claim_ip(ip, &c, None).unwrap(),
            a,
            "{}: held by a",
            b.name
        );
        assert_eq!(
            s.claim_ip(ip, &c, Some(&c)).unwrap(),
            a,
            "a wrong expectation changes nothing"
        );
        assert!(!s.release_ip(ip, &c).unwrap(), "c cannot free a's address");
        assert_eq!(s.claim_ip(ip6, &a, None).unwrap(), a);
        let mut held = s.ips_held_by(&a).unwrap();
        held.sort();
        assert_eq!(held, vec![ip, ip6]);
        // a is gone: c takes it over by naming the old holder.
        assert_eq!(s.claim_ip(ip, &c, Some(&a)).unwrap(), c);
        assert_eq!(s.ips_held_by(&a).unwrap(), vec![ip6]);
        assert!(s.release_ip(ip, &c).unwrap());
        assert_eq!(s.ip_holder(ip).unwrap(), None);
        // Expecting a holder that already left: taken from nobody.
        assert_eq!(s.claim_ip(ip, &a, Some(&c)).unwrap(), a);
        drop(s);
        assert_eq!(b.open().ip_holder(ip).unwrap(), Some(a), "durable");
    });
}

fn audit_fill(log: &AuditLog) {
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    log.append(Kind::TokenCreated, 10, Entry::by("operator:ops"))
        .unwrap();
    log.append(
        Kind::CertificateIssued,
        20,
        Entry::by("coordinator")
            .host("h-1")
            .ips(&[ip("203.0.113.5"), ip("2001:db8::5")])
            .serial("0a"),
    )
    .unwrap();
    log.append(
        Kind::OrderCreated,
        30,
        Entry::by("coordinator")
            .host("h-2")
            .ips(&[ip("203.0.113.200")]),
    )
    .unwrap();
    log.append(
        Kind::CertificateInstalled,
        40,
        Entry::by("host:h-1").host("h-1").serial("0a"),
    )
    .unwrap();
    log.append(
        Kind::OrderCreated,
        50,
        Entry::by("coordinator")
            .host("h-10")
            .ips(&[ip("198.51.100.1")]),
    )
    .unwrap();
}

fn seqs(log: &AuditLog, q: Query) -> Vec<u64> {
    log.query(&q).unwrap().iter().map(|r| r.seq).collect()
}

#[test]
fn audit_appends_reads_and_index_lookups() {
    each_backend("audit_lookups", |b| {
        {
            let s = b.open();
            let log = AuditLog::open(s.clone()).unwrap();
            audit_fill(&log);
        }
        let s = b.open();
        let log = AuditLog::open(s.clone()).unwrap();
        assert_eq!(log.len(), 5, "{}: head read back", b.name);
        assert_eq!(log.verify().unwrap(), None);
        let last = s.last_audit_record().unwrap().unwrap();
        assert_eq!(last.seq, 4);
        assert!(s.audit_record(1).unwrap().is_some() && s.audit_record(9).unwrap().is_none());
        let from: Vec<u64> = s.audit_records_from(2).map(|r| r.unwrap().seq).collect();
        assert_eq!(from, vec![2, 3, 4]);
        let host = |h: &str| Query {
            host_id: Some(h.into()),
            ..Default::default()
        };
        assert_eq!(seqs(&log, host("h-1")), vec![1, 3]);
        assert_eq!(
            seqs(&log, host("h-10")),
            vec![4],
            "a host id is matched whole"
        );
        assert_eq!(s.audit_seqs_by_host("h-").count(), 0);
        assert_eq!(
            seqs(
                &log,
                Query {
                    serial: Some("0a".into()),
                    ..Default::default()
                }
            ),
            vec![1, 3]
        );
        let net = |n: &str| Query {
            network: Some(certfleet_coordinator::audit::parse_network(n).unwrap()),
            ..Default::default()
        };
        assert_eq!(seqs(&log, net("203.0.113.0/24")), vec![1, 2]);
        assert_eq!(seqs(&log, net("203.0.113.5")), vec![1]);
        assert_eq!(seqs(&log, net("2001:db8::/32")), vec![1]);
        assert_eq!(seqs(&log, net("0.0.0.0/0")), vec![1, 2, 4]);
        assert_eq!(
            seqs(
                &log,
                Query {
                    since: Some(30),
                    until: Some(50),
                    ..Default::default()
                }
            ),
            vec![2, 3]
        );
        assert_eq!(
            seqs(
                &log,
                Query {
                    limit: Some(2),
                    ..Default::default()
                }
            ),
            vec![0, 1]
        );
        // A record is never replaced.
        let row = AuditRow {
            seq: 2,
            json: "{}",
            prev: "",
            hash: "x",
            host_id: None,
            ips: &[],
            serial: None,
        };
        assert!(matches!(
            s.append_audit(&row),
            Err(StoreError::AuditConflict { seq: 2 })
        ));
        s.flush_audit().unwrap();
        assert_eq!(log.verify().unwrap(), None);
        // A second log on the same store (another coordinator) joins the same chain.
        let other = AuditLog::open(s.clone()).unwrap();
        other
            .append(Kind::OperatorAction, 60, Entry::by("operator:b"))
            .unwrap();
        let r = log
            .append(Kind::OperatorAction, 61, Entry::by("operator:a"))
            .unwrap();
        assert_eq!(
            r.seq, 6,
            "{}: re-sealed onto the other log's record",
            b.name
        );
        assert_eq!(log.verify().unwrap(), None);
    });
}

#[test]
fn tampering_is_reported_at_the_broken_link() {
    each_backend("audit_tamper", |b| {
        let s = b.open();
        let log = AuditLog::open(s.clone()).unwrap();
        audit_fill(&log);
        let original = s.audit_record(2).unwrap().unwrap();
        let edited = String::from_utf8(original.clone())
            .unwrap()
            .replace("h-2", "h-3");
        s.overwrite_audit_record_for_test(2, edited.as_bytes())
            .unwrap();
        let broken = log.verify().unwrap().unwrap();
        assert_eq!(broken.seq, 2, "{}", b.name);
        assert!(broken.reason.contains("edited"), "{}", broken.reason);
        s.overwrite_audit_record_for_test(2, b"not json").unwrap();
        assert!(log.verify().unwrap().unwrap().reason.contains("unreadable"));
        s.overwrite_audit_record_for_test(2, &original).unwrap();
        assert_eq!(log.verify().unwrap(), None);
        s.remove_audit_record_for_test(3).unwrap();
        let broken = log.verify().unwrap().unwrap();
        assert_eq!(broken.seq, 3);
        assert!(broken.reason.contains("missing"), "{}", broken.reason);
    });
}
