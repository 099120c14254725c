//! How long the pages take with 10,000 hosts (a certificate each) and 100,000 audit
//! records on sled. Prints the figures (`--nocapture`); asserts only that each page
//! answered and stayed a page (time on a shared test machine is not a pass criterion).
//! The figures that count are the release-build benchmark's (`cargo bench -p
//! certfleet-coordinator --bench web_pages`: 10,000 hosts and 1,000,000 records against a
//! small baseline); this test checks the pages at scale in a debug build.
//! Ignored by default (filling the store takes most of its ~40 s):
//! `cargo nextest run -p certfleet-coordinator --run-ignored only -E 'test(/pages_at_ten/)' --no-capture`.

use crate::audit::{Entry, Kind};
use crate::model::{CertState, Role};
use crate::store::Store;
use crate::web::fixture::{self, cert, host, operator, NOW};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use std::time::Instant;
use tower::ServiceExt;

const HOSTS: usize = 10_000;
const AUDIT: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 40 s in a debug build: run with --run-ignored only -E 'test(/pages_at_ten/)' --no-capture"]
async fn pages_at_ten_thousand_hosts_and_a_hundred_thousand_audit_records() {
    let f = fixture::fixture();
    f.store
        .put_operator(&operator("ann", Role::Viewer), None)
        .unwrap();
    let t = Instant::now();
    let states = [
        CertState::Served,
        CertState::Served,
        CertState::Installed,
        CertState::Failed,
        CertState::Pending,
    ];
    let mut some_host = None;
    for i in 0..HOSTS {
        let ip = format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256);
        let h = host(&format!("host-{i:05}"), &ip);
        let c = cert(&h, states[i % states.len()], 86_400 * (1 + (i as i64 % 90)));
        f.store.put_host(&h).unwrap();
        f.store.put_cert_unflushed(&c).unwrap();
        some_host.get_or_insert(h);
    }
    let some_host = some_host.unwrap();
    for i in 0..AUDIT {
        let kind = if i % 1000 == 0 {
            Kind::CertificateRevoked
        } else {
            Kind::CertificateServed
        };
        let mut e = Entry::by("coordinator");
        if i % 100 == 0 {
            e = e.host(&some_host.id);
        }
        f.web
            .audit
            .append_unflushed(kind, NOW - (AUDIT - i) as i64, e)
            .unwrap();
    }
    f.web.audit.flush().unwrap();
    println!(
        "scale: filled {HOSTS} hosts + certificates and {AUDIT} audit records in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let token = super::auth::create_login(&f.web.dir, "ann", 600, NOW).unwrap();
    let router = super::handlers::router(f.web.clone());
    let resp = router
        .clone()
        .oneshot(
            Request::get(format!("/login?token={token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let cookie = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let pages = [
        "/".to_owned(),
        "/hosts".to_owned(),
        "/hosts?offset=9950".to_owned(),
        "/hosts?q=host-0999".to_owned(),
        "/certs?state=failed".to_owned(),
        format!("/hosts/{}", some_host.id),
        "/audit".to_owned(),
        "/audit?kind=certificate_revoked".to_owned(),
        format!("/audit?host={}", some_host.id),
        "/audit?since=2h".to_owned(),
    ];
    for path in pages {
        let t = Instant::now();
        let resp = router
            .clone()
            .oneshot(
                Request::get(path.as_str())
                    .header(header::COOKIE, &cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        println!(
            "scale: GET {path:<40} {status} {:>7} bytes {:>8.1} ms",
            body.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(body.len() < 400_000, "{path}: a page, not the fleet");
    }
}
