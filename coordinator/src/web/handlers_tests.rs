use super::*;
use crate::model::{CertState, Role};
use crate::store::Store;
use crate::web::fixture::{self, cert, host, operator, Fixture, NOW};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn get(f: &Fixture, path: &str, cookie: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(path);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, format!("other=1; {}={c}", auth::COOKIE));
    }
    let resp = router(f.web.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// Logs `name` in by a login link; returns the session cookie.
async fn login_as(f: &Fixture, name: &str) -> String {
    let token = auth::create_login(&f.web.dir, name, 600, NOW).unwrap();
    let (status, headers, _) = get(f, &format!("/login?token={token}"), None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/");
    let set = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    let (again, _, body) = get(f, &format!("/login?token={token}"), None).await;
    assert_eq!(again, StatusCode::UNAUTHORIZED, "a link works once");
    assert!(body.contains("already used"), "{body}");
    set.split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

#[tokio::test]
async fn nothing_is_shown_without_an_operator() {
    let f = fixture::fixture();
    let h = host("web-1", "192.0.2.10");
    f.add_host(&h, &[cert(&h, CertState::Served, 30 * 86_400)]);
    for path in [
        "/",
        "/hosts",
        &format!("/hosts/{}", h.id),
        "/certs",
        "/audit",
        "/audit.jsonl",
        "/nope",
    ] {
        let (status, headers, body) = get(&f, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            body.contains("web login") && !body.contains("web-1"),
            "{path}: {body}"
        );
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'") && !csp.contains("script-src"),
            "{csp}"
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    }
    // A made-up cookie is no session.
    let (status, _, _) = get(&f, "/", Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The stylesheet is public (the 401 page uses it).
    let (status, _, css) = get(&f, "/style.css", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(css.contains("body"));
}

#[tokio::test]
async fn a_login_session_sees_the_fleet_until_its_operator_is_revoked() {
    let f = fixture::fixture();
    f.store
        .put_operator(&operator("ann", Role::Viewer), None)
        .unwrap();
    let ok = host("web-1", "192.0.2.10");
    let bad = host("db-1", "192.0.2.11");
    let ok_cert = cert(&ok, CertState::Served, 30 * 86_400);
    let bad_cert = cert(&bad, CertState::Failed, 2 * 86_400);
    f.add_host(&ok, std::slice::from_ref(&ok_cert));
    f.add_host(&bad, std::slice::from_ref(&bad_cert));
    // A login link for an operator the store does not know logs nobody in.
    let token = auth::create_login(&f.web.dir, "nobody", 600, NOW).unwrap();
    let (status, _, body) = get(&f, &format!("/login?token={token}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("no longer in the store"), "{body}");

    let cookie = login_as(&f, "ann").await;
    let (status, _, body) = get(&f, "/", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("ann (viewer, login session)"), "{body}");
    assert!(
        body.contains("<b>2</b> hosts") && body.contains("<b>1</b> need attention"),
        "{body}"
    );
    // The failing certificate leads "at risk or failing", its error escaped.
    let attention = body.split("Soonest expiries").next().unwrap();
    assert!(attention.contains(&bad_cert.id.to_string()), "{attention}");
    assert!(!attention.contains(&ok_cert.id.to_string()));
    assert!(
        body.contains("the CA said &#60;b&#62;no&#60;/b&#62;")
            || body.contains("the CA said &lt;b&gt;no&lt;/b&gt;"),
        "{body}"
    );

    let (status, _, body) = get(&f, &format!("/hosts/{}", ok.id), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("host_enrolled") && body.contains(&ok_cert.id.to_string()),
        "{body}"
    );
    let (status, _, body) = get(&f, &format!("/certs/{}", bad_cert.id), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("pebble") && body.contains("shortlived") && body.contains("db-1"),
        "{body}"
    );
    let (status, _, _) = get(&f, "/hosts/h-notahost", Some(&cookie)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Revoked: the session is refused at the next request.
    let mut rec = operator("ann", Role::Viewer);
    rec.revoked_at = Some(NOW);
    rec.revoked_by = Some("operator:root".into());
    rec.generation = 1;
    assert!(f.store.put_operator(&rec, Some(0)).unwrap());
    let (status, _, body) = get(&f, "/", Some(&cookie)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("revoked"), "{body}");
}

#[tokio::test]
async fn markup_in_a_hostname_or_label_is_text() {
    let f = fixture::fixture();
    f.store
        .put_operator(&operator("ann", Role::Admin), None)
        .unwrap();
    let evil = host("<script>alert(1)</script>", "192.0.2.66");
    f.add_host(&evil, &[cert(&evil, CertState::Served, 86_400)]);
    let cookie = login_as(&f, "ann").await;
    for path in ["/", "/hosts", &format!("/hosts/{}", evil.id), "/certs"] {
        let (status, _, body) = get(&f, path, Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.contains("<script"), "{path}: {body}");
        assert!(
            body.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
                || body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn lists_are_paged_and_the_audit_is_searched_and_exported() {
    let f = fixture::fixture();
    f.store
        .put_operator(&operator("ann", Role::Viewer), None)
        .unwrap();
    for i in 0..120 {
        let h = host(&format!("h{i:03}"), &format!("198.51.100.{}", i + 1));
        f.add_host(&h, &[]);
    }
    let cookie = login_as(&f, "ann").await;
    let (_, _, body) = get(&f, "/hosts?limit=50&offset=100", Some(&cookie)).await;
    assert!(
        body.contains("101–120 of 120") && body.contains("h100") && !body.contains("h099"),
        "{body}"
    );
    assert!(
        body.contains("href=\"/hosts?offset=50&#38;limit=50\""),
        "previous page link: {body}"
    );
    let (_, _, body) = get(&f, "/hosts?q=h11", Some(&cookie)).await;
    assert!(body.contains("1–10 of 10"), "{body}");

    // 120 enrollments + 1 login; newest first, 100 a page, the older link goes on.
    let (status, _, body) = get(&f, "/audit?kind=host_enrolled", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("100 records, #119 to #20"), "{body}");
    assert!(body.contains("before=20"), "{body}");
    let (_, _, body) = get(&f, "/audit?kind=host_enrolled&before=20", Some(&cookie)).await;
    assert!(
        body.contains("20 records, #19 to #0") && !body.contains("older →"),
        "{body}"
    );
    let (_, _, body) = get(&f, "/audit?ip=198.51.100.0/30", Some(&cookie)).await;
    assert!(body.contains("3 records, #2 to #0"), "{body}");
    let (_, _, body) = get(&f, "/audit?host=h005", Some(&cookie)).await;
    assert!(body.contains("1 record, #5 to #5"), "by hostname: {body}");
    let (status, _, body) = get(&f, "/audit?ip=nonsense&kind=nope&since=soon", Some(&cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for e in ["IP or CIDR", "kind: \"nope\"", "since:"] {
        assert!(
            body.contains(&e.replace('"', "&#34;"))
                || body.contains(&e.replace('"', "&quot;"))
                || body.contains(e),
            "{e}: {body}"
        );
    }

    let (status, headers, body) = get(&f, "/audit.jsonl?kind=host_enrolled", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-ndjson");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 120);
    assert_eq!(
        lines[0]["seq"], 0,
        "oldest first, as the CLI's audit --json"
    );
    assert_eq!(lines[119]["seq"], 119);
    assert_eq!(lines[119]["kind"], "host_enrolled");
    // A page's export: the page's records (the 7 newest below the cursor), oldest first.
    let (_, _, body) = get(
        &f,
        "/audit.jsonl?kind=host_enrolled&limit=7&before=100",
        Some(&cookie),
    )
    .await;
    let seqs: Vec<u64> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (93..100).collect::<Vec<_>>());
    // Everything below a cursor, oldest first.
    let (_, _, body) = get(
        &f,
        "/audit.jsonl?kind=host_enrolled&before=3",
        Some(&cookie),
    )
    .await;
    assert_eq!(body.lines().count(), 3, "{body}");
}

#[test]
fn cookies_are_found_among_others() {
    let mut h = HeaderMap::new();
    h.append(
        header::COOKIE,
        HeaderValue::from_static("a=1; certfleet_session=xyz; b=2"),
    );
    assert_eq!(session_cookie(&h), Some("xyz".into()));
    assert_eq!(session_cookie(&HeaderMap::new()), None);
}

#[tokio::test]
async fn a_session_ends_at_its_lifetime() {
    let f = fixture::fixture();
    f.store
        .put_operator(&operator("ann", Role::Viewer), None)
        .unwrap();
    let cookie = login_as(&f, "ann").await;
    f.clock.advance(3599);
    assert_eq!(get(&f, "/", Some(&cookie)).await.0, StatusCode::OK);
    f.clock.advance(1);
    assert_eq!(
        get(&f, "/", Some(&cookie)).await.0,
        StatusCode::UNAUTHORIZED
    );
}
