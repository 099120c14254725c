//! Route53 answers read and requests written (the API itself: the moto test in
//! `tests/tests/dns_providers/`).

use super::*;

#[test]
fn the_public_hosted_zone_of_that_exact_name_is_found() {
    let body = r#"<?xml version="1.0"?>
<ListHostedZonesByNameResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">
 <HostedZones>
  <HostedZone><Id>/hostedzone/ZOTHER</Id><Name>aexample.net.</Name></HostedZone>
  <HostedZone><Id>/hostedzone/ZPRIVATE</Id><Name>example.net.</Name>
   <Config><PrivateZone>true</PrivateZone></Config></HostedZone>
  <HostedZone><Id>/hostedzone/Z123ABC</Id><Name>example.net.</Name>
   <Config><PrivateZone>false</PrivateZone></Config></HostedZone>
 </HostedZones><IsTruncated>false</IsTruncated><MaxItems>1</MaxItems>
</ListHostedZonesByNameResponse>"#;
    assert_eq!(
        parse_zone_id(body, "example.net").unwrap().as_deref(),
        Some("Z123ABC")
    );
    assert_eq!(parse_zone_id(body, "example.org").unwrap(), None);
    assert!(parse_zone_id("not xml", "example.net").is_err());
}

#[test]
fn the_txt_rrset_is_read_only_when_it_is_ours() {
    let body = r#"<ListResourceRecordSetsResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">
<ResourceRecordSets><ResourceRecordSet><Name>_acme-challenge.example.net.</Name><Type>TXT</Type>
<TTL>60</TTL><ResourceRecords><ResourceRecord><Value>"AAA"</Value></ResourceRecord>
<ResourceRecord><Value>"B\"B" "C"</Value></ResourceRecord></ResourceRecords>
</ResourceRecordSet></ResourceRecordSets></ListResourceRecordSetsResponse>"#;
    assert_eq!(
        parse_rrset(body, "_acme-challenge.example.net").unwrap(),
        Some((60, vec!["AAA".to_owned(), "B\"BC".to_owned()]))
    );
    // The next name in order is not ours.
    assert_eq!(
        parse_rrset(body, "_acme-challenge.a.example.net").unwrap(),
        None
    );
}

#[test]
fn change_ids_and_status_are_read_and_checked() {
    let body = r#"<ChangeResourceRecordSetsResponse><ChangeInfo><Id>/change/C2682N5HXP0BZ4</Id>
<Status>PENDING</Status></ChangeInfo></ChangeResourceRecordSetsResponse>"#;
    assert_eq!(
        parse_change(body).unwrap(),
        ("C2682N5HXP0BZ4".to_owned(), "PENDING".to_owned())
    );
    let bad =
        "<GetChangeResponse><ChangeInfo><Id>/change/../x</Id></ChangeInfo></GetChangeResponse>";
    assert!(parse_change(bad).is_err());
}

#[test]
fn api_errors_are_classified() {
    let denied = r#"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>
<Message>User is not authorized</Message></Error></ErrorResponse>"#;
    let e = api_error("Route53 POST /x", 403, denied);
    assert_eq!(e.kind, DnsErrorKind::Config);
    assert!(
        e.cause.contains("AccessDenied") && e.cause.contains("not authorized"),
        "{}",
        e.cause
    );
    let throttled = "<ErrorResponse><Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>";
    assert_eq!(api_error("w", 400, throttled).kind, DnsErrorKind::Transient);
    assert_eq!(api_error("w", 503, "").kind, DnsErrorKind::Transient);
}

#[test]
fn txt_values_are_quoted_and_escaped_for_the_api() {
    assert_eq!(quote_txt(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(unquote_txt(&quote_txt(r#"a"b\c"#)), r#"a"b\c"#);
    assert_eq!(xml_escape("<a&\">"), "&lt;a&amp;&quot;&gt;");
}

#[test]
fn shared_credentials_are_read_by_profile() {
    let text = "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\
                [profile dns]\n# comment\naws_access_key_id=AKIDDNS\naws_secret_access_key=s2\n\
                aws_session_token = t2\n[empty]\naws_access_key_id = AKID\n";
    let d = parse_credentials(text, "default").unwrap();
    assert_eq!(
        (d.access_key_id.as_str(), d.secret_access_key.expose()),
        ("AKIDDEFAULT", "s1")
    );
    assert!(d.session_token.is_none());
    let p = parse_credentials(text, "dns").unwrap();
    assert_eq!(p.access_key_id, "AKIDDNS");
    assert_eq!(p.session_token.as_ref().map(Secret::expose), Some("t2"));
    assert!(parse_credentials(text, "empty").is_none());
    assert!(parse_credentials(text, "nope").is_none());
    assert!(!format!("{p:?}").contains("s2"));
}

#[test]
fn requests_are_signed_for_route53_at_the_clock_s_time() {
    let cfg: DnsProviderConfig = toml::from_str(
        "name = \"aws\"\nzones = [\"example.net\"]\nkind = \"route53\"\n\
         endpoint = \"http://127.0.0.1:5000\"\n",
    )
    .unwrap();
    // 2026-01-02T03:04:05Z
    let clock = certfleet_shared::clock::ManualClock::new(1_767_323_045);
    let r53 = Route53::new(&cfg, Arc::new(clock)).unwrap();
    let creds = Creds {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        session_token: Some(Secret::new("session-token".into())),
    };
    let body = b"<x/>".to_vec();
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri("http://127.0.0.1:5000/2013-04-01/hostedzone/Z1/rrset/")
        .header("host", "127.0.0.1:5000")
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    r53.sign(&mut req, &creds, &body).unwrap();
    let header = |n: &str| req.headers().get(n).unwrap().to_str().unwrap().to_owned();
    let auth = header("authorization");
    assert!(
        auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260102/us-east-1/route53/aws4_request, "
        ),
        "{auth}"
    );
    assert!(
        auth.contains("SignedHeaders=content-type;host;x-amz-date"),
        "{auth}"
    );
    assert!(!auth.contains("wJalr"), "{auth}");
    assert_eq!(header("x-amz-date"), "20260102T030405Z");
    assert_eq!(header("x-amz-security-token"), "session-token");
}
