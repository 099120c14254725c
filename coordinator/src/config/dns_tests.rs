//! `[[dns_provider]]` parsing and validation: each mistake refused naming the provider
//! and the fix.

use super::super::{Config, ConfigError};
use super::*;
use std::path::Path;

const BASE: &str = r#"
version = 1
state_dir = "/var/lib/cf"
[server]
listen = "127.0.0.1:7443"
[[issuer]]
name = "pebble"
directory = "https://127.0.0.1:14000/dir"
"#;

const KNOT: &str = r#"
[[dns_provider]]
name = "knot"
zones = ["example.test", "Certfleet.Test."]
kind = "rfc2136"
server = "127.0.0.53:5354"
tsig_key_name = "certfleet-update"
tsig_algorithm = "hmac-sha512"
tsig_secret_file = "/etc/certfleet/tsig.key"
ttl = 30
propagation_timeout = "90s"
poll_interval = "500ms"
check_nameservers = ["127.0.0.53:5354", "192.0.2.53"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(&format!("{BASE}{text}"), Path::new("test.toml"), Vec::new())
}

fn refused(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn each_kind_parses_with_its_settings() {
    let cfg = parse(&format!(
        r#"{KNOT}
[[dns_provider]]
name = "aws"
zones = ["example.net"]
kind = "route53"
hosted_zone_id = "/hostedzone/Z0123456789"
endpoint = "http://127.0.0.1:5000"
profile = "dns"
credentials_file = "/etc/certfleet/aws-credentials"

[[dns_provider]]
name = "script"
zones = ["example.org"]
kind = "exec"
command = ["/usr/local/bin/dns-hook", "--verbose"]
timeout = "10s"
"#
    ))
    .unwrap();
    let [knot, aws, script] = &cfg.dns_providers[..] else {
        panic!("three providers expected")
    };
    assert_eq!(knot.kind, DnsProviderKind::Rfc2136);
    assert_eq!(knot.tsig_algorithm, Some(TsigAlgorithmName::HmacSha512));
    assert_eq!(knot.ttl(), 30);
    assert_eq!(knot.propagation_timeout(), Duration::from_secs(90));
    assert_eq!(knot.poll_interval(), Duration::from_millis(500));
    assert_eq!(
        knot.zone_names()
            .iter()
            .map(|z| z.as_str())
            .collect::<Vec<_>>(),
        ["example.test", "certfleet.test"]
    );
    assert_eq!(
        knot.check_nameserver_addrs(),
        vec![
            "127.0.0.53:5354".parse::<SocketAddr>().unwrap(),
            "192.0.2.53:53".parse().unwrap()
        ]
    );
    assert_eq!(aws.kind, DnsProviderKind::Route53);
    assert_eq!(aws.ttl(), DEFAULT_TTL);
    assert_eq!(aws.propagation_timeout(), DEFAULT_PROPAGATION_TIMEOUT);
    assert_eq!(script.kind, DnsProviderKind::Exec);
    assert_eq!(script.timeout(), Duration::from_secs(10));
    assert_eq!(script.command.len(), 2);
}

#[test]
fn no_provider_is_fine() {
    assert!(parse("").unwrap().dns_providers.is_empty());
}

#[test]
fn unknown_keys_and_kinds_are_refused() {
    let e = refused(&format!("{KNOT}tsig_secret = \"c2VjcmV0\"\n"));
    assert!(
        e.contains("unknown field") && e.contains("tsig_secret"),
        "{e}"
    );
    let e = refused(&KNOT.replace("\"rfc2136\"", "\"cloudflare\""));
    assert!(e.contains("cloudflare"), "{e}");
    let e = refused(&KNOT.replace("hmac-sha512", "hmac-md5"));
    assert!(e.contains("hmac-md5"), "{e}");
}

#[test]
fn each_mistake_names_the_provider_and_the_fix() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "zones = [\"example.test\", \"Certfleet.Test.\"]",
            "zones = []",
            &["\"knot\"", "zones is empty"],
        ),
        (
            "zones = [\"example.test\", \"Certfleet.Test.\"]",
            "zones = [\"*.example.test\"]",
            &["\"knot\"", "apex"],
        ),
        (
            "server = \"127.0.0.53:5354\"\n",
            "",
            &["\"knot\"", "needs server"],
        ),
        (
            "server = \"127.0.0.53:5354\"",
            "server = \"127.0.0.53\"",
            &["host:port"],
        ),
        (
            "tsig_key_name = \"certfleet-update\"\n",
            "",
            &["needs tsig_key_name"],
        ),
        (
            "tsig_secret_file = \"/etc/certfleet/tsig.key\"\n",
            "",
            &["tsig_secret_file", "tsig_secret_env"],
        ),
        (
            "tsig_secret_file = \"/etc/certfleet/tsig.key\"",
            "tsig_secret_file = \"tsig.key\"",
            &["absolute"],
        ),
        (
            "tsig_secret_file = \"/etc/certfleet/tsig.key\"",
            "tsig_secret_file = \"/k\"\ntsig_secret_env = \"K\"",
            &["not both"],
        ),
        ("ttl = 30", "ttl = 0", &["ttl = 0", "between 1 and 86400"]),
        ("\"90s\"", "\"ninety\"", &["propagation_timeout", "\"60s\""]),
        (
            "\"500ms\"",
            "\"5m\"",
            &["poll_interval", "longer than propagation_timeout"],
        ),
        (
            "\"192.0.2.53\"",
            "\"ns1.example.test\"",
            &["check_nameservers", "not an address"],
        ),
        (
            "tsig_algorithm = \"hmac-sha512\"",
            "tsig_algorithm = \"hmac-sha512\"\ncommand = [\"/bin/x\"]",
            &["command is a setting of kind = \"exec\""],
        ),
        (
            "name = \"knot\"",
            "name = \"knot dns\"",
            &["letters, digits"],
        ),
    ];
    for (from, to, wanted) in cases {
        assert!(KNOT.contains(from), "case does not apply: {from}");
        let e = refused(&KNOT.replacen(from, to, 1));
        for w in *wanted {
            assert!(e.contains(w), "{from} → {to}: {e:?} lacks {w:?}");
        }
    }
}

#[test]
fn kind_specific_mistakes_are_refused() {
    let route53 =
        "[[dns_provider]]\nname = \"aws\"\nzones = [\"example.net\"]\nkind = \"route53\"\n";
    assert!(parse(route53).is_ok());
    let e = refused(&format!("{route53}server = \"192.0.2.1:53\"\n"));
    assert!(
        e.contains("server is a setting of kind = \"rfc2136\""),
        "{e}"
    );
    let e = refused(&format!("{route53}endpoint = \"localhost:5000\"\n"));
    assert!(e.contains("http://"), "{e}");
    let e = refused(&format!("{route53}hosted_zone_id = \"Z/1\"\n"));
    assert!(e.contains("hosted zone id"), "{e}");
    let e = refused(&route53.replace(
        "[\"example.net\"]\n",
        "[\"example.net\", \"example.org\"]\nhosted_zone_id = \"Z1\"\n",
    ));
    assert!(e.contains("one [[dns_provider]] per hosted zone"), "{e}");
    let exec = "[[dns_provider]]\nname = \"x\"\nzones = [\"example.net\"]\nkind = \"exec\"\n";
    assert!(refused(exec).contains("needs command"));
    let e = refused(&format!("{exec}command = [\"dns-hook\"]\n"));
    assert!(e.contains("absolute path"), "{e}");
}

#[test]
fn two_providers_may_not_claim_one_zone_or_one_name() {
    let second =
        "[[dns_provider]]\nname = \"other\"\nzones = [\"EXAMPLE.test\"]\nkind = \"exec\"\n\
                  command = [\"/bin/true\"]\n";
    let e = refused(&format!("{KNOT}{second}"));
    assert!(
        e.contains("example.test") && e.contains("\"knot\"") && e.contains("\"other\""),
        "{e}"
    );
    // A zone below another provider's zone is allowed (the longest match wins).
    assert!(parse(&format!(
        "{KNOT}{}",
        second.replace("EXAMPLE.test", "sub.example.test")
    ))
    .is_ok());
    let e = refused(&format!(
        "{KNOT}{}",
        second
            .replace("\"other\"", "\"knot\"")
            .replace("EXAMPLE.test", "x.test")
    ));
    assert!(e.contains("used twice"), "{e}");
}

/// CNAME delegation: a provider of the validation zone only, with the zones whose
/// `_acme-challenge` names point into it; DNS-01 names there are accepted, and a
/// delegated zone is checked like a zone (a name, not also written to, not claimed twice).
#[test]
fn delegated_zones_are_checked_and_make_names_dns01_ready() {
    let validation = "[[dns_provider]]\nname = \"v\"\nzones = [\"validation.test\"]\n\
                      delegated_zones = [\"Example.ORG\"]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n";
    let cfg = parse(&format!(
        "{validation}[[policy]]\nname = \"p\"\n[[policy.certificate]]\nname = \"c\"\n\
         names = [\"*.example.org\", \"example.org\"]\nchallenges = [\"dns-01\"]\n"
    ))
    .expect("names in a delegated zone");
    let p = &cfg.dns_providers[0];
    assert_eq!(p.delegated_zone_names()[0].as_str(), "example.org");
    assert!(cfg.dns_zones().iter().any(|z| z.as_str() == "example.org"));
    let e = refused(&validation.replace("Example.ORG", "exa mple.org"));
    assert!(
        e.contains("delegated_zones") && e.contains("not a zone name"),
        "{e}"
    );
    let e = refused(&validation.replace("Example.ORG", "validation.test"));
    assert!(e.contains("both zones and delegated_zones"), "{e}");
    let e = refused(&format!(
        "{KNOT}{}",
        validation.replace("Example.ORG", "example.test")
    ));
    assert!(
        e.contains("example.test") && e.contains("\"knot\"") && e.contains("\"v\""),
        "{e}"
    );
}

#[test]
fn the_config_holds_no_secret_to_show() {
    let cfg = parse(KNOT).unwrap();
    let debug = format!("{:?}", cfg.dns_providers);
    assert!(debug.contains("tsig_secret_file") && debug.contains("/etc/certfleet/tsig.key"));
}

#[test]
fn host_port_and_nameservers_are_checked() {
    assert!(check_host_port("ns1.example.net:53").is_ok());
    assert!(check_host_port("[2001:db8::1]:53").is_ok());
    assert!(check_host_port("ns1.example.net").is_err());
    assert!(check_host_port("ns1.example.net:0").is_err());
    assert!(check_host_port("2001:db8::1:53").is_err());
    assert_eq!(
        parse_nameserver("::1").unwrap(),
        "[::1]:53".parse().unwrap()
    );
}

#[test]
fn the_example_config_in_deploy_has_a_provider() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = Config::from_toml(&text, &path, Vec::new()).unwrap();
    let [p] = &cfg.dns_providers[..] else {
        panic!("one [[dns_provider]] expected")
    };
    assert_eq!(
        (p.name.as_str(), p.kind),
        ("primary-dns", DnsProviderKind::Rfc2136)
    );
    assert_eq!(p.propagation_timeout(), Duration::from_secs(120));
}

#[test]
fn ttl_is_seconds_or_a_duration() {
    let five_minutes = parse(&KNOT.replace("ttl = 30", "ttl = \"5m\"")).unwrap();
    assert_eq!(five_minutes.dns_providers[0].ttl(), 300);
    assert_eq!(parse(KNOT).unwrap().dns_providers[0].ttl(), 30);
    let err = refused(&KNOT.replace("ttl = 30", "ttl = \"soon\""));
    assert!(err.contains("not a duration"), "{err}");
}
