//! Unit tests of the provider set: zone choice, grouping into RRsets, the stored form,
//! errors. The backends against real servers: `tests/tests/dns_providers/`.

use super::*;

fn name(s: &str) -> DnsName {
    DnsName::parse(s).unwrap()
}

fn exec_cfg(name: &str, zones: &[&str]) -> DnsProviderConfig {
    toml::from_str(&format!(
        "name = {name:?}\nzones = {zones:?}\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n"
    ))
    .unwrap()
}

fn record(fqdn: &str, value: &str, ident: &str) -> PresentedRecord {
    PresentedRecord {
        provider: "p".into(),
        zone: "example.net".into(),
        fqdn: fqdn.into(),
        values: vec![value.into()],
        names: vec![name(ident)],
    }
}

#[test]
fn the_longest_zone_wins_and_unserved_names_have_none() {
    let p = DnsProviders::from_config(&[
        exec_cfg("outer", &["example.net"]),
        exec_cfg("inner", &["dev.example.net", "other.test"]),
    ])
    .unwrap();
    let zone = |n: &str| {
        p.zone_for(&name(n))
            .map(|(p, z)| (p.to_owned(), z.to_string()))
    };
    assert_eq!(
        zone("example.net"),
        Some(("outer".into(), "example.net".into()))
    );
    assert_eq!(
        zone("www.example.net"),
        Some(("outer".into(), "example.net".into()))
    );
    assert_eq!(
        zone("a.dev.example.net"),
        Some(("inner".into(), "dev.example.net".into()))
    );
    assert_eq!(
        zone("dev.example.net"),
        Some(("inner".into(), "dev.example.net".into()))
    );
    assert_eq!(zone("badexample.net"), None);
    assert_eq!(zone("example.org"), None);
    let (prov, z) = p
        .provider_for_fqdn("_acme-challenge.x.Dev.Example.NET.")
        .unwrap();
    assert_eq!(
        (prov.name.as_str(), z.as_str()),
        ("inner", "dev.example.net")
    );
    assert!(p.provider_for_fqdn("_acme-challenge.example.org").is_none());
}

#[test]
fn a_wildcard_and_its_apex_share_one_rrset() {
    let set = group_records(vec![
        record("_acme-challenge.example.net", "AAA", "example.net"),
        record("_acme-challenge.www.example.net", "BBB", "www.example.net"),
        record("_acme-challenge.example.net", "CCC", "example.net"),
        // The same value twice (a retried authorization) is one record.
        record("_acme-challenge.example.net", "AAA", "example.net"),
    ]);
    assert_eq!(set.records.len(), 2);
    assert_eq!(set.records[0].fqdn, "_acme-challenge.example.net");
    assert_eq!(set.records[0].values, vec!["AAA", "CCC"]);
    assert_eq!(set.records[0].names, vec![name("example.net")]);
    assert_eq!(set.records[1].values, vec!["BBB"]);
    assert_eq!(set.pairs().count(), 3);
}

#[test]
fn names_delegated_to_one_target_share_its_rrset() {
    let set = group_records(vec![
        record("x.validation.test", "AAA", "a.example.net"),
        record("x.validation.test", "BBB", "b.example.net"),
    ]);
    assert_eq!(set.records.len(), 1);
    assert_eq!(set.records[0].values, vec!["AAA", "BBB"]);
    assert_eq!(
        set.records[0].names,
        vec![name("a.example.net"), name("b.example.net")]
    );
}

#[test]
fn the_stored_set_reads_back_the_same() {
    let set = group_records(vec![record(
        "_acme-challenge.example.net",
        "AAA",
        "example.net",
    )]);
    let json = serde_json::to_string(&set).unwrap();
    assert!(json.contains("\"provider\":\"p\""), "{json}");
    let back: PresentedSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, set);
}

#[test]
fn zones_match_on_label_boundaries() {
    assert!(in_zone("example.net", "example.net"));
    assert!(in_zone("_acme-challenge.example.net.", "example.net"));
    assert!(!in_zone("badexample.net", "example.net"));
    assert!(!in_zone("net", "example.net"));
    assert!(!in_zone("é.example.ne", "example.net"));
}

#[test]
fn errors_name_provider_zone_record_and_say_if_retrying_helps() {
    let e = DnsError::new(
        DnsErrorKind::Timeout,
        "knot",
        "example.net",
        "_acme-challenge.example.net",
        "no answer",
    );
    let text = e.to_string();
    for part in [
        "\"knot\"",
        "example.net",
        "_acme-challenge.example.net",
        "no answer",
    ] {
        assert!(text.contains(part), "{text}");
    }
    assert!(e.is_retryable() && !e.is_config());
    let c = DnsError::new(DnsErrorKind::Config, "k", "z", "r", "bad key");
    assert!(!c.is_retryable() && c.is_config());
    assert!(DnsErrorKind::NotPropagated.is_retryable());
    assert!(!DnsErrorKind::NoProvider.is_retryable());
}

#[tokio::test]
async fn a_record_of_a_provider_no_longer_configured_is_a_config_error() {
    let p = DnsProviders::from_config(&[exec_cfg("now", &["example.net"])]).unwrap();
    let set = PresentedSet {
        records: vec![PresentedRecord {
            provider: "gone".into(),
            ..record("_acme-challenge.example.net", "AAA", "example.net")
        }],
    };
    let err = p.cleanup(&set).await.unwrap_err();
    assert_eq!(err.kind, DnsErrorKind::Config);
    assert!(err.to_string().contains("\"gone\""), "{err}");
}

#[test]
fn a_missing_secret_stops_the_build_naming_the_provider() {
    let cfg: DnsProviderConfig = toml::from_str(
        "name = \"knot\"\nzones = [\"example.net\"]\nkind = \"rfc2136\"\n\
         server = \"192.0.2.1:53\"\ntsig_key_name = \"k\"\n\
         tsig_secret_env = \"CERTFLEET_TEST_SURELY_UNSET_SECRET\"\n",
    )
    .unwrap();
    let err = DnsProviders::from_config(&[cfg]).unwrap_err();
    assert!(err.is_config());
    let text = err.to_string();
    assert!(
        text.contains("\"knot\"") && text.contains("CERTFLEET_TEST_SURELY_UNSET_SECRET"),
        "{text}"
    );
}

#[test]
fn debug_output_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tsig.key");
    std::fs::write(&path, "c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cfg: DnsProviderConfig = toml::from_str(&format!(
        "name = \"knot\"\nzones = [\"example.net\"]\nkind = \"rfc2136\"\n\
         server = \"192.0.2.1:53\"\ntsig_key_name = \"k\"\ntsig_secret_file = {:?}\n",
        path.display().to_string()
    ))
    .unwrap();
    let p = DnsProviders::from_config(&[cfg]).unwrap();
    let debug = format!("{p:?}");
    assert!(
        debug.contains("knot") && debug.contains("<redacted>"),
        "{debug}"
    );
    assert!(!debug.contains("c2VjcmV0"), "{debug}");
}

#[test]
fn the_providers_and_their_futures_can_go_to_other_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let p = DnsProviders::from_config(&[exec_cfg("p", &["example.net"])]).unwrap();
    send_sync(&p);
    let set = PresentedSet { records: vec![] };
    send(p.plan(&[]));
    send(p.present(&[]));
    send(p.present_set(&set));
    send(p.wait_propagated(&set));
    send(p.cleanup(&set));
}

#[test]
fn txt_values_and_cname_targets_are_read_from_a_reply() {
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::{CNAME, TXT};
    use hickory_proto::rr::{RData, Record};
    let acme = query::wire_name("_acme-challenge.example.net").unwrap();
    let mut reply = Message::new();
    reply.add_answer(Record::from_rdata(
        acme.clone(),
        60,
        RData::TXT(TXT::new(vec!["one".into()])),
    ));
    // A value split into two strings is one value.
    reply.add_answer(Record::from_rdata(
        acme.clone(),
        60,
        RData::TXT(TXT::new(vec!["tw".into(), "o".into()])),
    ));
    let other = query::wire_name("_acme-challenge.www.example.net").unwrap();
    reply.add_answer(Record::from_rdata(
        other.clone(),
        60,
        RData::TXT(TXT::new(vec!["not-here".into()])),
    ));
    let bytes = reply.to_vec().unwrap();
    let back = Message::from_vec(&bytes).unwrap();
    assert_eq!(query::txt_answers(&back, &acme), vec!["one", "two"]);
    assert_eq!(query::cname_answer(&back, &acme), None);

    let mut reply = Message::new();
    let target = query::wire_name("x.acme-validation.example.org").unwrap();
    reply.add_answer(Record::from_rdata(
        acme.clone(),
        60,
        RData::CNAME(CNAME(target)),
    ));
    let back = Message::from_vec(&reply.to_vec().unwrap()).unwrap();
    let found = query::cname_answer(&back, &acme).unwrap();
    assert_eq!(query::text_name(&found), "x.acme-validation.example.org");
    assert_eq!(query::cname_answer(&back, &other), None);
    // The fuzz entry takes any bytes.
    parse_untrusted_answer(&bytes);
    parse_untrusted_answer(b"\x00\x01garbage");
    parse_untrusted_answer(b"<ErrorResponse><Error><Code>X</Code></Error></ErrorResponse>");
}
