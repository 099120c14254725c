//! route53 against moto's server: zone lookup, UPSERT merging, INSYNC, exact cleanup.

use super::{name, providers, secret_file};
use certfleet_coordinator::dns::DnsErrorKind;
use certfleet_tests::moto::MotoServer;
use certfleet_tests::workdir::WorkDir;

fn route53_provider(moto: &MotoServer, dir: &WorkDir, zones: &[&str]) -> serde_json::Value {
    let creds = dir.join("aws-credentials");
    secret_file(
        &creds,
        "[default]\naws_access_key_id = AKIDWRONGPROFILE\naws_secret_access_key = x\n\
         [dns]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secretsecret\n",
    );
    serde_json::json!({
        "name": "aws",
        "zones": zones,
        "kind": "route53",
        "endpoint": moto.endpoint(),
        "profile": "dns",
        "credentials_file": creds,
        "propagation_timeout": "20s",
        "poll_interval": "200ms",
    })
}

#[tokio::test]
async fn route53_upserts_both_values_and_removes_exactly_ours() {
    let moto = MotoServer::start().await.expect("moto");
    if let Some(took) = moto.venv_created_in() {
        eprintln!("moto venv created in {took:?}");
    }
    let zone_id = moto.create_hosted_zone("example.test").await.expect("zone");
    let acme = "_acme-challenge.example.test";
    moto.upsert_txt(&zone_id, acme, &["not-ours"])
        .await
        .expect("seed");

    let dir = WorkDir::new("dns-route53").unwrap();
    let dns = providers(&[route53_provider(
        &moto,
        &dir,
        &["example.test", "missing.test"],
    )]);
    let set = dns
        .present(&[
            (name("example.test"), "wildcard-value".to_owned()),
            (name("example.test"), "apex-value".to_owned()),
        ])
        .await
        .unwrap_or_else(|e| panic!("present: {e}\nmoto log:\n{}", moto.logs()));
    assert_eq!(set.records.len(), 1);
    assert_eq!(
        moto.txt_values(&zone_id, acme).await.unwrap(),
        vec!["apex-value", "not-ours", "wildcard-value"]
    );

    dns.cleanup(&set).await.expect("cleanup");
    assert_eq!(
        moto.txt_values(&zone_id, acme).await.unwrap(),
        vec!["not-ours"]
    );
    dns.cleanup(&set).await.expect("idempotent cleanup");

    // Only ours left: the RRset is deleted, not left empty.
    let set = dns
        .present(&[(name("www.example.test"), "only".to_owned())])
        .await
        .expect("present www");
    assert_eq!(
        moto.txt_values(&zone_id, "_acme-challenge.www.example.test")
            .await
            .unwrap(),
        vec!["only"]
    );
    dns.cleanup(&set).await.expect("cleanup www");
    assert!(moto
        .txt_values(&zone_id, "_acme-challenge.www.example.test")
        .await
        .unwrap()
        .is_empty());

    // A zone the account has no hosted zone for: a configuration error naming it.
    let err = dns
        .present(&[(name("missing.test"), "v".to_owned())])
        .await
        .expect_err("no hosted zone");
    assert_eq!(err.kind, DnsErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .contains("no Route53 hosted zone named missing.test"),
        "{err}"
    );
}

#[tokio::test]
async fn route53_uses_a_configured_hosted_zone_id() {
    let moto = MotoServer::start().await.expect("moto");
    let zone_id = moto.create_hosted_zone("example.test").await.expect("zone");
    let dir = WorkDir::new("dns-route53-id").unwrap();
    let mut cfg = route53_provider(&moto, &dir, &["example.test"]);
    cfg["hosted_zone_id"] = format!("/hostedzone/{zone_id}").into();
    let dns = providers(&[cfg]);
    let set = dns
        .present(&[(name("a.example.test"), "v".to_owned())])
        .await
        .expect("present");
    assert_eq!(
        moto.txt_values(&zone_id, "_acme-challenge.a.example.test")
            .await
            .unwrap(),
        vec!["v"]
    );
    dns.cleanup(&set).await.expect("cleanup");

    // A hosted zone id the account does not have: refused as configuration.
    let mut cfg = route53_provider(&moto, &dir, &["example.test"]);
    cfg["hosted_zone_id"] = "ZNOSUCHZONE".into();
    let err = providers(&[cfg])
        .present(&[(name("a.example.test"), "v".to_owned())])
        .await
        .expect_err("unknown zone id");
    assert!(
        err.to_string().contains("ZNOSUCHZONE") || err.to_string().contains("NoSuchHostedZone"),
        "{err}"
    );
}
