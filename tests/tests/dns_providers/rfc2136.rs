//! rfc2136 against a real knotd: TSIG-signed updates, propagation, CNAME delegation.

use super::{name, providers, secret_file};
use base64::Engine as _;
use certfleet_coordinator::dns::{DnsErrorKind, DnsProviders};
use certfleet_tests::dns::{KnotOptions, KnotServer, RData, Record, SECOND_ZONE, ZONE};
use certfleet_tests::workdir::WorkDir;
use std::time::{Duration, Instant};

/// A knot-backed provider for `zones`, checking propagation on `check` (default: knot).
fn knot_provider(
    knot: &KnotServer,
    dir: &WorkDir,
    provider: &str,
    zones: &[&str],
    secret: &str,
    check: Option<Vec<String>>,
) -> serde_json::Value {
    let key_file = dir.join(format!("{provider}.tsig"));
    secret_file(&key_file, &format!("{secret}\n"));
    serde_json::json!({
        "name": provider,
        "zones": zones,
        "kind": "rfc2136",
        "server": knot.addr().to_string(),
        "tsig_key_name": knot.tsig_key().name,
        "tsig_algorithm": knot.tsig_key().algorithm,
        "tsig_secret_file": key_file,
        "ttl": 30,
        "propagation_timeout": "2s",
        "poll_interval": "100ms",
        "check_nameservers": check.unwrap_or_else(|| vec![knot.addr().to_string()]),
    })
}

fn quoted(v: &str) -> String {
    format!("\"{v}\"")
}

async fn txt_at(knot: &KnotServer, fqdn: &str) -> Vec<String> {
    knot.resolve(fqdn, "TXT").await.expect("kdig").values
}

#[tokio::test]
async fn wildcard_and_apex_share_one_rrset_and_cleanup_removes_only_ours() {
    let acme = format!("_acme-challenge.{ZONE}");
    // Someone else's value at the same name must survive our cleanup.
    let knot = KnotServer::start_with(KnotOptions {
        records: vec![Record::txt(&acme, "not-ours")],
        ..KnotOptions::default()
    })
    .await
    .expect("knot");
    let dir = WorkDir::new("dns-rfc2136").unwrap();
    let secret = knot.tsig_key().secret.clone();
    let dns = providers(&[knot_provider(
        &knot,
        &dir,
        "knot",
        &[ZONE, SECOND_ZONE],
        &secret,
        None,
    )]);

    let www = format!("www.{ZONE}");
    let values = vec![
        (name(ZONE), "wildcard-value".to_owned()), // *.example.test, without "*."
        (name(ZONE), "apex-value".to_owned()),
        (name(&www), "www-value".to_owned()),
    ];
    let set = dns.present(&values).await.expect("present");
    assert_eq!(set.records.len(), 2, "{set:?}");
    let apex = &set.records[0];
    assert_eq!((apex.provider.as_str(), apex.zone.as_str()), ("knot", ZONE));
    assert_eq!(apex.fqdn, acme);
    assert_eq!(apex.values, vec!["wildcard-value", "apex-value"]);

    // Both values in the one RRset, beside the foreign one.
    assert_eq!(
        txt_at(&knot, &acme).await,
        vec![
            quoted("apex-value"),
            quoted("not-ours"),
            quoted("wildcard-value")
        ]
    );
    assert_eq!(
        txt_at(&knot, &format!("_acme-challenge.{www}")).await,
        vec![quoted("www-value")]
    );
    dns.wait_propagated(&set).await.expect("propagated");

    // What the engine stores and reads back after a restart cleans up the same.
    let stored = serde_json::to_string(&set).unwrap();
    let set: certfleet_coordinator::dns::PresentedSet = serde_json::from_str(&stored).unwrap();
    dns.cleanup(&set).await.expect("cleanup");
    assert_eq!(txt_at(&knot, &acme).await, vec![quoted("not-ours")]);
    assert!(txt_at(&knot, &format!("_acme-challenge.{www}"))
        .await
        .is_empty());
    // Idempotent: nothing left to remove is fine.
    dns.cleanup(&set).await.expect("second cleanup");
}

#[tokio::test]
async fn a_wrong_tsig_key_is_a_clear_config_error_and_leaves_nothing() {
    let knot = KnotServer::start().await.expect("knot");
    let dir = WorkDir::new("dns-badkey").unwrap();
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let dns = providers(&[knot_provider(&knot, &dir, "knot", &[ZONE], &wrong, None)]);
    let err = dns
        .present(&[(name(ZONE), "v1".to_owned())])
        .await
        .expect_err("a wrong secret must be refused");
    let text = err.to_string();
    assert_eq!(err.kind, DnsErrorKind::Config, "{text}");
    assert!(!err.is_retryable());
    for part in [
        "\"knot\"",
        ZONE,
        &format!("_acme-challenge.{ZONE}"),
        &knot.addr().to_string(),
        &knot.tsig_key().name,
        "NOTAUTH",
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    assert!(!text.contains(&wrong), "the secret is in the error: {text}");
    assert!(txt_at(&knot, &format!("_acme-challenge.{ZONE}"))
        .await
        .is_empty());

    // A key name the server does not know: the same clear refusal.
    let mut cfg = knot_provider(&knot, &dir, "other", &[ZONE], &knot.tsig_key().secret, None);
    cfg["tsig_key_name"] = "no-such-key".into();
    let dns = providers(&[cfg]);
    let err = dns
        .present(&[(name(ZONE), "v2".to_owned())])
        .await
        .unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("no-such-key"),
        "{err}"
    );
    assert!(txt_at(&knot, &format!("_acme-challenge.{ZONE}"))
        .await
        .is_empty());
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error_naming_it() {
    let knot = KnotServer::start().await.expect("knot");
    let dir = WorkDir::new("dns-down").unwrap();
    let mut cfg = knot_provider(&knot, &dir, "knot", &[ZONE], &knot.tsig_key().secret, None);
    // A port nothing listens on.
    let port = certfleet_tests::net::free_port().unwrap();
    let server = format!("127.0.0.1:{port}");
    cfg["server"] = server.clone().into();
    cfg["timeout"] = "2s".into();
    let dns = providers(&[cfg]);
    let err = dns
        .present(&[(name(ZONE), "v".to_owned())])
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&server), "{err}");
}

#[tokio::test]
async fn a_nameserver_that_never_gets_the_record_times_out_by_name() {
    let knot = KnotServer::start().await.expect("knot");
    // Serves the same zone but never receives our update (a lagging secondary).
    let lagging = KnotServer::start().await.expect("second knot");
    let dir = WorkDir::new("dns-propagation").unwrap();
    let check = vec![knot.addr().to_string(), lagging.addr().to_string()];
    let dns = providers(&[knot_provider(
        &knot,
        &dir,
        "knot",
        &[ZONE],
        &knot.tsig_key().secret,
        Some(check),
    )]);
    let set = dns
        .present(&[(name(ZONE), "v1".to_owned())])
        .await
        .expect("present");
    let started = Instant::now();
    let err = dns.wait_propagated(&set).await.expect_err("must time out");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert_eq!(err.kind, DnsErrorKind::NotPropagated, "{text}");
    assert!(err.is_retryable());
    assert!(text.contains(&lagging.addr().to_string()), "{text}");
    assert!(
        !text.contains(&format!("{} (", knot.addr())),
        "the good server is not named: {text}"
    );
    assert!(text.contains(&format!("_acme-challenge.{ZONE}")), "{text}");
    dns.cleanup(&set).await.expect("cleanup");
    assert!(txt_at(&knot, &format!("_acme-challenge.{ZONE}"))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_cname_delegates_the_record_to_the_validation_zone() {
    let target = format!("www.acme.{SECOND_ZONE}");
    let acme = format!("_acme-challenge.www.{ZONE}");
    let knot = KnotServer::start_with(KnotOptions {
        records: vec![Record::new(&acme, RData::Cname(target.clone()))],
        ..KnotOptions::default()
    })
    .await
    .expect("knot");
    let dir = WorkDir::new("dns-cname").unwrap();
    // The customer zone's provider has a key that does not work: it must not be used.
    let wrong = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let dns: DnsProviders = providers(&[
        knot_provider(&knot, &dir, "customer", &[ZONE], &wrong, None),
        knot_provider(
            &knot,
            &dir,
            "validation",
            &[SECOND_ZONE],
            &knot.tsig_key().secret,
            None,
        ),
    ]);
    assert_eq!(
        dns.zone_for(&name(&format!("www.{ZONE}"))).map(|(p, _)| p),
        Some("customer"),
        "zone_for looks at the name itself, before any CNAME"
    );
    let set = dns
        .present(&[(name(&format!("www.{ZONE}")), "delegated".to_owned())])
        .await
        .expect("present through the CNAME");
    assert_eq!(set.records.len(), 1);
    let rec = &set.records[0];
    assert_eq!(
        (rec.provider.as_str(), rec.zone.as_str(), rec.fqdn.as_str()),
        ("validation", SECOND_ZONE, target.as_str())
    );
    assert_eq!(txt_at(&knot, &target).await, vec![quoted("delegated")]);
    let at_name = knot.resolve(&acme, "CNAME").await.unwrap();
    assert_eq!(
        at_name.values,
        vec![format!("{target}.")],
        "the CNAME is untouched"
    );
    dns.wait_propagated(&set)
        .await
        .expect("propagated at the target");
    dns.cleanup(&set).await.expect("cleanup");
    assert!(txt_at(&knot, &target).await.is_empty());
}

/// CNAME delegation with no credential for the name's zone: the only provider writes to
/// the validation zone and lists the customer zone in `delegated_zones`.
#[tokio::test]
async fn a_delegated_zone_needs_no_provider_of_its_own() {
    let target = format!("www.{ZONE}.{SECOND_ZONE}");
    let acme = format!("_acme-challenge.www.{ZONE}");
    let knot = KnotServer::start_with(KnotOptions {
        records: vec![Record::new(&acme, RData::Cname(target.clone()))],
        ..KnotOptions::default()
    })
    .await
    .expect("knot");
    let dir = WorkDir::new("dns-delegated").unwrap();
    let mut validation = knot_provider(
        &knot,
        &dir,
        "validation",
        &[SECOND_ZONE],
        &knot.tsig_key().secret,
        None,
    );
    validation["delegated_zones"] = serde_json::json!([ZONE]);
    let dns = providers(&[validation]);
    assert_eq!(
        dns.zone_for(&name(&format!("www.{ZONE}")))
            .map(|(p, z)| (p, z.to_string())),
        Some(("validation", ZONE.to_owned())),
        "a name in a delegated zone can be validated by DNS-01"
    );
    let set = dns
        .present(&[(name(&format!("www.{ZONE}")), "delegated".to_owned())])
        .await
        .expect("present through the CNAME");
    let rec = &set.records[0];
    assert_eq!(
        (rec.provider.as_str(), rec.zone.as_str(), rec.fqdn.as_str()),
        ("validation", SECOND_ZONE, target.as_str())
    );
    assert_eq!(txt_at(&knot, &target).await, vec![quoted("delegated")]);
    dns.wait_propagated(&set).await.expect("propagated");
    dns.cleanup(&set).await.expect("cleanup");
    assert!(txt_at(&knot, &target).await.is_empty());
    // A name of the delegated zone without the CNAME: refused, naming the record to add;
    // nothing is written in the delegated zone.
    let err = dns
        .present(&[(name(&format!("api.{ZONE}")), "x".to_owned())])
        .await
        .expect_err("no CNAME at _acme-challenge.api");
    assert_eq!(err.kind, DnsErrorKind::Config, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("delegated_zones")
            && msg.contains(&format!("_acme-challenge.api.{ZONE}. CNAME")),
        "{msg}"
    );
    assert!(txt_at(&knot, &format!("_acme-challenge.api.{ZONE}"))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_name_no_provider_serves_is_refused_before_anything_is_written() {
    let knot = KnotServer::start().await.expect("knot");
    let dir = WorkDir::new("dns-noprovider").unwrap();
    let dns = providers(&[knot_provider(
        &knot,
        &dir,
        "knot",
        &[ZONE],
        &knot.tsig_key().secret,
        None,
    )]);
    assert!(dns.zone_for(&name(&format!("www.{SECOND_ZONE}"))).is_none());
    let err = dns
        .present(&[
            (name(ZONE), "a".to_owned()),
            (name(&format!("www.{SECOND_ZONE}")), "b".to_owned()),
        ])
        .await
        .expect_err("no provider for certfleet.test");
    assert_eq!(err.kind, DnsErrorKind::NoProvider, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("_acme-challenge.www.{SECOND_ZONE}")),
        "{err}"
    );
    assert!(txt_at(&knot, &format!("_acme-challenge.{ZONE}"))
        .await
        .is_empty());
}

#[tokio::test]
async fn hmac_sha384_and_sha512_keys_sign_updates_too() {
    for alg in ["hmac-sha384", "hmac-sha512"] {
        let knot = KnotServer::start_with(KnotOptions {
            tsig_algorithm: alg,
            ..KnotOptions::default()
        })
        .await
        .expect("knot");
        let dir = WorkDir::new("dns-alg").unwrap();
        let cfg = knot_provider(&knot, &dir, "knot", &[ZONE], &knot.tsig_key().secret, None);
        assert_eq!(cfg["tsig_algorithm"], alg);
        let dns = providers(std::slice::from_ref(&cfg));
        let set = dns
            .present(&[(name(ZONE), format!("{alg}-value"))])
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        let acme = format!("_acme-challenge.{ZONE}");
        assert_eq!(
            txt_at(&knot, &acme).await,
            vec![quoted(&format!("{alg}-value"))]
        );
        dns.cleanup(&set).await.expect("cleanup");
        assert!(txt_at(&knot, &acme).await.is_empty());

        // The right secret under another algorithm than the server's: refused.
        let mut other = cfg;
        other["tsig_algorithm"] = "hmac-sha256".into();
        let err = providers(&[other])
            .present(&[(name(ZONE), "v".to_owned())])
            .await
            .expect_err("algorithm mismatch");
        assert!(
            err.is_config() && err.to_string().contains("NOTAUTH"),
            "{alg}: {err}"
        );
    }
}
