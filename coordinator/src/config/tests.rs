//! Unit tests of the coordinator's config: parsing, presets, refusals with the fix named.

use super::*;

const MINIMAL: &str = r#"
version = 1
state_dir = "/var/lib/cf"
[server]
listen = "127.0.0.1:7443"
[[issuer]]
name = "pebble"
directory = "https://127.0.0.1:14000/dir"
allow_private_ips = true
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"), Vec::new())
}

#[test]
fn example_config_in_deploy_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = Config::from_toml(&text, &path, Vec::new()).unwrap();
    assert_eq!(cfg.issuers.len(), 2);
    assert_eq!(cfg.default_issuer_name(), Some("letsencrypt"));
    assert!(cfg.issuers[1].eab().is_some());
    assert_eq!(cfg.issuers[0].directory, LETSENCRYPT_DIRECTORY);
    assert_eq!(cfg.issuers[0].rate_limits(), RateLimits::Letsencrypt);
    assert_eq!(cfg.policies.len(), 1);
    assert_eq!(cfg.metrics.listen.map(|a| a.port()), Some(9464));
    // Durations in `*_secs` fields ("7d", "1m"), and the old numbers, and the short names.
    assert_eq!(cfg.server.identity_lifetime_secs, 7 * 86_400);
    assert_eq!(cfg.server.certificate_lifetime_secs, 90 * 86_400);
    assert_eq!(cfg.issuance.validation_timeout_secs, 90);
    assert_eq!(cfg.issuance.retry_base_secs, 60);
    let numbers = text
        .replace("retry_base_secs = \"1m\"", "retry_base_secs = 600")
        .replace(
            "validation_timeout_secs = \"90s\"",
            "validation_timeout = \"1m30s\"",
        );
    let cfg3 = Config::from_toml(&numbers, &path, Vec::new()).unwrap();
    assert_eq!(cfg3.issuance.retry_base_secs, 600);
    assert_eq!(cfg3.issuance.validation_timeout_secs, 90);
    let bad = text.replace("retry_base_secs = \"1m\"", "retry_base_secs = \"soon\"");
    let err = Config::from_toml(&bad, &path, Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("retry_base_secs") || err.contains("not a duration"),
        "{err}"
    );
    assert_eq!(cfg.policies[0].ips, IpSelection::Public);
    assert!(cfg.fleet.revoke_on_address_loss);
    assert_eq!(cfg.fleet.decommission_after(), None, "off unless set");
    let on = text.replace("# decommission_after = ", "decommission_after = ");
    let cfg2 = Config::from_toml(&on, &path, Vec::new()).unwrap();
    assert_eq!(
        cfg2.fleet.decommission_after(),
        Some(std::time::Duration::from_secs(86400))
    );
    assert!(
        !format!("{:?}", cfg.issuers[1]).contains("REPLACE-WITH-BASE64URL"),
        "EAB key redacted in Debug"
    );
}

#[test]
fn minimal_config_gets_defaults() {
    let cfg = parse(MINIMAL).unwrap();
    assert_eq!(cfg.default_issuer_name(), Some("pebble"));
    assert_eq!(cfg.issuers[0].ip_profile, "shortlived");
    assert_eq!(cfg.local_url(), "https://127.0.0.1:7443");
}

#[test]
fn bad_configs_name_the_fix() {
    let cases = [
        (
            MINIMAL.replace("version = 1", "version = 2"),
            "version = 2 is not supported",
        ),
        (
            MINIMAL.replace("[server]", "[server]\nlisten_addr = 1"),
            "unknown field `listen_addr`",
        ),
        (
            MINIMAL.replace("https://127", "http://127"),
            "must be an https:// URL",
        ),
        (MINIMAL.replace("/var/lib/cf", "relative"), "absolute path"),
        (
            MINIMAL.replace("127.0.0.1:7443", "nonsense"),
            "invalid socket address",
        ),
        (format!("{MINIMAL}eab_kid = \"k\"\n"), "go together"),
        (
            MINIMAL.replace("[server]", "[server]\nips = [\"::1\", \"10.0.0.300\"]"),
            "[server] ips[1] = \"10.0.0.300\" is not an IP address",
        ),
        (
            format!("{MINIMAL}[[issuer]]\nname = \"pebble\"\ndirectory = \"https://x/dir\"\n"),
            "used twice",
        ),
    ];
    for (text, want) in cases {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
}

#[test]
fn presets_fill_directory_and_rate_limits() {
    let text = MINIMAL
        .replace(
            "directory = \"https://127.0.0.1:14000/dir\"",
            "preset = \"letsencrypt-staging\"",
        )
        .replace("allow_private_ips = true\n", "");
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.issuers[0].directory, LETSENCRYPT_STAGING_DIRECTORY);
    assert_eq!(cfg.issuers[0].rate_limits(), RateLimits::Letsencrypt);
    assert_eq!(
        parse(MINIMAL).unwrap().issuers[0].rate_limits(),
        RateLimits::None
    );
    let bad = MINIMAL.replace(
        "directory = \"https://127.0.0.1:14000/dir\"",
        "preset = \"zerossl\"",
    );
    assert!(parse(&bad)
        .unwrap_err()
        .to_string()
        .contains("unknown preset"));
    let policy = format!("{MINIMAL}[[policy]]\nname = \"p\"\nissuer = \"nope\"\n");
    assert!(parse(&policy)
        .unwrap_err()
        .to_string()
        .contains("not one of the configured"));
}

#[test]
fn private_ips_with_lets_encrypt_are_refused() {
    let issuers = [
        "preset = \"letsencrypt\"",
        "preset = \"letsencrypt-staging\"",
        "directory = \"https://acme-v02.api.letsencrypt.org/directory\"",
        "directory = \"https://acme-staging-v02.api.letsencrypt.org/directory\"",
        "directory = \"https://ACME-v02.api.letsencrypt.org:443/directory\"",
    ];
    for issuer in issuers {
        let text = MINIMAL.replace("directory = \"https://127.0.0.1:14000/dir\"", issuer);
        let err = parse(&text).unwrap_err().to_string();
        for want in [
            "[[issuer]] \"pebble\": allow_private_ips = true cannot work with Let's Encrypt",
            "refuses private and special-purpose addresses",
            "remove allow_private_ips",
            "point this issuer at a private CA",
        ] {
            assert!(
                err.contains(want),
                "{issuer}: {err:?} should contain {want:?}"
            );
        }
        // Without the flag the same issuer is fine; and so is false said explicitly.
        assert!(parse(&text.replace("allow_private_ips = true\n", "")).is_ok());
        assert!(
            parse(&text.replace("allow_private_ips = true", "allow_private_ips = false")).is_ok()
        );
    }
    // A private CA (and look-alike hosts) may allow them.
    for dir in [
        "https://127.0.0.1:14000/dir",
        "https://acme.example.net/letsencrypt.org/directory",
        "https://api.letsencrypt.org.example.net/directory",
    ] {
        let text = MINIMAL.replace("https://127.0.0.1:14000/dir", dir);
        assert!(parse(&text).is_ok(), "{dir}");
    }
}

#[test]
fn trust_root_without_a_certificate_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
    let key_only = cert.signing_key.serialize_pem();
    let cases: [(&str, String, &str); 5] = [
        (
            "empty.pem",
            String::new(),
            "holds no certificate (the file is empty)",
        ),
        (
            "garbage.pem",
            "not a certificate\n".into(),
            "holds no certificate",
        ),
        ("key.pem", key_only.clone(), "holds no certificate"),
        (
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            "certificate 1 is malformed",
        ),
        (
            "der.pem",
            String::from_utf8_lossy(cert.cert.der()).into_owned(),
            "holds no certificate",
        ),
    ];
    for (name, content, want) in cases {
        let file = tmp.path().join(name);
        std::fs::write(&file, content).unwrap();
        let text = format!("{MINIMAL}trust_root = {:?}\n", file.display().to_string());
        let cfg = parse(&text).expect("the file exists: load accepts it");
        let err = cfg
            .check_files(Path::new("/etc/cf.toml"))
            .unwrap_err()
            .to_string();
        let head = format!(
            "config /etc/cf.toml: [[issuer]] \"pebble\": trust_root {}: ",
            file.display()
        );
        assert!(err.starts_with(&head), "{err:?} should start with {head:?}");
        assert!(
            err.contains(want),
            "{name}: {err:?} should contain {want:?}"
        );
        assert!(err.contains("-----BEGIN CERTIFICATE-----"), "{err}");
    }
    // A certificate (with its key beside it, or after other text) is accepted.
    let good = tmp.path().join("root.pem");
    std::fs::write(&good, format!("{key_only}# comment\n{}", cert.cert.pem())).unwrap();
    let text = format!("{MINIMAL}trust_root = {:?}\n", good.display().to_string());
    parse(&text).unwrap().check_files(Path::new("t")).unwrap();
    // A missing file keeps its load-time error, which names the file.
    let gone = tmp.path().join("gone.pem");
    let text = format!("{MINIMAL}trust_root = {:?}\n", gone.display().to_string());
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains(&format!("trust_root {} does not exist", gone.display())),
        "{err}"
    );
}

#[test]
fn environment_overrides_apply() {
    let env = vec![(
        "CERTFLEET_SERVER__LISTEN".to_owned(),
        "0.0.0.0:9000".to_owned(),
    )];
    let cfg = Config::from_toml(MINIMAL, Path::new("t"), env).unwrap();
    assert_eq!(cfg.local_url(), "https://127.0.0.1:9000");
}

/// `[[policy.certificate]]` and `allowed_names`: a good list parses; each mistake is
/// refused naming the policy, the certificate and the fix.
#[test]
fn policy_certificates_parse_and_refusals_name_the_rule() {
    let good = format!(
        "{MINIMAL}[[policy]]\nname = \"web\"\nallowed_names = [\"*.example.net\", \"api.example.org\"]\n\
         [[policy.certificate]]\nname = \"site\"\nnames = [\"{{hostname}}.web.example.net\", \"{{label.region}}.api.example.net\", \"{{requested}}\"]\n\
         challenges = [\"tls-alpn-01\", \"http-01\"]\nkey_type = \"ecdsa-p384\"\ntargets = [\"nginx\", \"haproxy\"]\n\
         [[policy.certificate]]\nname = \"ip\"\nips = \"all\"\ntargets = [\"default-site\"]\n"
    );
    let cfg = parse(&good).expect("good policy certificates");
    let p = &cfg.policies[0];
    let certs = p.certificates();
    assert_eq!(certs.len(), 2);
    assert_eq!(
        certs[0].challenges,
        vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01]
    );
    assert_eq!(certs[0].targets, vec!["nginx", "haproxy"]);
    assert_eq!(p.allowed_name_patterns().len(), 2);
    // No list: one implicit certificate with the agent's names.
    let implicit = parse(&format!(
        "{MINIMAL}[[policy]]\nname = \"p\"\nips = \"public\"\n"
    ))
    .unwrap()
    .policies[0]
        .certificates();
    assert_eq!(implicit.len(), 1);
    assert_eq!(implicit[0].name, DEFAULT_CERT);
    assert_eq!(implicit[0].names, vec![REQUESTED]);
    assert_eq!(implicit[0].ips, Some(IpSelection::Public));

    let cert = |body: &str| {
        format!("{MINIMAL}[[policy]]\nname = \"web\"\n[[policy.certificate]]\nname = \"c\"\n{body}")
    };
    let cases: Vec<(String, &str)> = vec![
        (cert("names = [\"{host}.example.net\"]\n"), "unknown placeholder {host}"),
        (cert("names = [\"{hostname.example.net\"]\n"), "is not closed"),
        (cert("names = [\"www.exa_mple.net\"]\n"), "\"www.exa_mple.net\""),
        (cert("names = [\"co.uk\"]\n"), "public suffix"),
        (cert("names = [\"10.0.0.1\"]\n"), "list it as an IP"),
        (cert("names = [\"x-{requested}\"]\n"), "stands alone"),
        (cert("names = [\"{hostname}_x.example.net\"]\n"), "does not make a valid name"),
        (cert("ips = \"none\"\n"), "would name nothing"),
        (cert("names = [\"a.example.net\"]\nchallenges = [\"http-01\", \"http-01\"]\n"), "listed twice"),
        (cert("names = [\"a.example.net\"]\nchallenges = [\"dns-02\"]\n"), "dns-02"),
        (cert("names = [\"a.example.net\"]\nissuer = \"nope\"\n"), "issuer \"nope\" is not one of"),
        (
            cert("names = [\"a.example.net\"]\ntargets = [\"t\"]\n[[policy.certificate]]\nname = \"d\"\nnames = [\"b.example.net\"]\ntargets = [\"t\"]\n"),
            "a target holds one certificate",
        ),
        (
            cert("names = [\"a.example.net\"]\n[[policy.certificate]]\nname = \"c\"\nnames = [\"b.example.net\"]\n"),
            "must be unique",
        ),
        (
            format!("{MINIMAL}[[policy]]\nname = \"web\"\nallowed_names = [\"*.com\"]\n"),
            "allowed_names",
        ),
    ];
    for (text, want) in cases {
        let err = parse(&text).expect_err(&text).to_string();
        assert!(err.contains(want), "{want:?} not in: {err}");
        // Serde names the key path itself for an unknown challenge type.
        let named =
            err.contains("[[policy]] \"web\"") || err.contains("policy.certificate.challenges");
        assert!(named, "policy named: {err}");
    }
}

/// A certificate whose names are the same for every host is warned about (the 5-per-set
/// weekly limit); a host-specific template, the agent's names or the host's addresses make
/// each set distinct.
#[test]
fn same_names_for_every_host_are_warned_about() {
    let cert = |body: &str| {
        parse(&format!(
            "{MINIMAL}[[policy]]\nname = \"lb\"\n[[policy.certificate]]\nname = \"c\"\n{body}"
        ))
        .unwrap()
        .warnings()
    };
    let w = cert("names = [\"api.example.net\"]\n");
    assert_eq!(w.len(), 1);
    assert!(
        w[0].contains("api.example.net") && w[0].contains("{hostname}"),
        "{}",
        w[0]
    );
    assert!(cert("names = [\"api.example.net\", \"{hostname}.example.net\"]\n").is_empty());
    assert!(cert("names = [\"api.example.net\", \"{requested}\"]\n").is_empty());
    assert!(cert("names = [\"api.example.net\"]\nips = \"public\"\n").is_empty());
    assert!(
        w[0].contains("key_group"),
        "the key group is offered: {}",
        w[0]
    );
}

/// DNS-01's rules at load: wildcards only by DNS-01, never addresses by DNS-01, literal
/// names in a zone some `[[dns_provider]]` serves; each refusal names the fix.
#[test]
fn dns01_rules_are_checked_at_load() {
    const PROVIDER: &str = "[[dns_provider]]\nname = \"script\"\nzones = [\"example.net\"]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n";
    let cert = |body: &str| {
        format!(
            "{MINIMAL}{PROVIDER}[[policy]]\nname = \"web\"\n[[policy.certificate]]\nname = \"c\"\n{body}"
        )
    };
    let good = cert(
        "names = [\"*.example.net\", \"example.net\", \"*.{hostname}.example.net\"]\nchallenges = [\"dns-01\"]\n",
    );
    let cfg = parse(&good).expect("wildcards by dns-01 in a served zone");
    assert_eq!(
        cfg.policies[0].certificates[0].challenges,
        vec![ChallengeKind::Dns01]
    );
    let cases: Vec<(String, &str)> = vec![
        (
            cert("names = [\"*.example.net\"]\nchallenges = [\"http-01\"]\n"),
            "only DNS-01 can validate; set challenges = [\"dns-01\"]",
        ),
        (
            cert("names = [\"*.example.net\"]\n"),
            "only DNS-01 can validate",
        ),
        (
            cert("names = [\"*.example.net\"]\nchallenges = [\"dns-01\", \"http-01\"]\n"),
            "only DNS-01 can validate",
        ),
        (
            cert("names = [\"a.example.net\"]\nips = \"all\"\nchallenges = [\"dns-01\"]\n"),
            "IP addresses are never validated by DNS-01",
        ),
        (
            cert("names = [\"a.example.org\"]\nchallenges = [\"dns-01\"]\n"),
            "no [[dns_provider]] serves a zone it is in (zones served: example.net)",
        ),
        (
            cert("names = [\"*.co.uk\"]\nchallenges = [\"dns-01\"]\n"),
            "public suffix",
        ),
        (
            cert("names = [\"*.*.example.net\"]\nchallenges = [\"dns-01\"]\n"),
            "more than one wildcard",
        ),
    ];
    for (text, want) in cases {
        let err = parse(&text).expect_err(&text).to_string();
        assert!(err.contains(want), "{want:?} not in: {err}");
        assert!(err.contains("[[policy]] \"web\""), "policy named: {err}");
    }
    // No provider at all: the zone list says so.
    let none = format!(
        "{MINIMAL}[[policy]]\nname = \"web\"\n[[policy.certificate]]\nname = \"c\"\nnames = [\"a.example.net\"]\nchallenges = [\"dns-01\"]\n"
    );
    let err = parse(&none).expect_err("no provider").to_string();
    assert!(err.contains("(zones served: none)"), "{err}");
}

/// A key group's rules at load: literal names only, DNS-01 only, a valid name, one
/// certificate per group; each refusal names the fix.
#[test]
fn key_group_rules_are_checked_at_load() {
    const PROVIDER: &str = "[[dns_provider]]\nname = \"script\"\nzones = [\"example.net\"]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n";
    let cert = |body: &str| {
        format!(
            "{MINIMAL}{PROVIDER}[[policy]]\nname = \"web\"\n[[policy.certificate]]\nname = \"c\"\n{body}"
        )
    };
    let good = cert(
        "names = [\"*.example.net\", \"example.net\"]\nchallenges = [\"dns-01\"]\nkey_group = \"edge\"\n",
    );
    let cfg = parse(&good).expect("a key group for literal names by dns-01");
    assert_eq!(
        cfg.policies[0].certificates[0].key_group.as_deref(),
        Some("edge")
    );
    assert!(
        cfg.policies[0].shared_set_warnings().is_empty(),
        "one certificate for the whole group is the point, not a warning"
    );
    let cases: Vec<(String, &str)> = vec![
        (
            cert("names = [\"{hostname}.example.net\"]\nchallenges = [\"dns-01\"]\nkey_group = \"edge\"\n"),
            "would differ from host to host",
        ),
        (
            cert("names = [\"{requested}\"]\nchallenges = [\"dns-01\"]\nkey_group = \"edge\"\n"),
            "list the names literally",
        ),
        (
            cert("names = [\"a.example.net\"]\nkey_group = \"edge\"\n"),
            "needs challenges = [\"dns-01\"]",
        ),
        (
            cert("names = [\"a.example.net\"]\nchallenges = [\"dns-01\"]\nkey_group = \"no spaces\"\n"),
            "a group name is letters, digits",
        ),
        (
            cert("ips = \"public\"\nkey_group = \"edge\"\n"),
            "never for addresses",
        ),
    ];
    for (text, want) in cases {
        let err = parse(&text).expect_err(&text).to_string();
        assert!(err.contains(want), "{want:?} not in: {err}");
        assert!(err.contains("[[policy]] \"web\""), "policy named: {err}");
    }
    let twice = format!(
        "{good}[[policy]]\nname = \"api\"\n[[policy.certificate]]\nname = \"d\"\nnames = [\"api.example.net\"]\nchallenges = [\"dns-01\"]\nkey_group = \"edge\"\n"
    );
    let err = parse(&twice)
        .expect_err("one group, two certificates")
        .to_string();
    assert!(
        err.contains("key_group \"edge\" is also given by [[policy]] \"web\""),
        "{err}"
    );
}
