//! Table-driven tests of names, wildcards, identifiers and patterns (the IP rules are
//! tested beside their code in `ip.rs`).

use super::*;
use std::collections::HashSet;

fn name(s: &str) -> DnsName {
    DnsName::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn id(s: &str) -> Identifier {
    Identifier::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn label(n: usize) -> String {
    "a".repeat(n)
}

/// A name of exactly `len` octets: labels of 63 octets and one shorter, under `.example`.
fn name_of_len(len: usize) -> String {
    let mut s = String::from("example");
    while s.len() < len {
        let room = len - s.len() - 1; // the dot before `s`
        let n = room.min(MAX_LABEL_OCTETS);
        if n == 0 {
            // One octet left: no label fits before a dot; lengthen the first label instead.
            s.insert(0, 'b');
            continue;
        }
        s = format!("{}.{s}", label(n));
    }
    assert_eq!(s.len(), len);
    s
}

#[test]
fn names_are_canonicalised() {
    let cases: &[(&str, &str)] = &[
        ("example.net", "example.net"),
        ("WWW.Example.NET", "www.example.net"),
        ("www.example.net.", "www.example.net"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example.", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("münchen.de", "xn--mnchen-3ya.de"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        // Full-width letters and the ideographic full stop map to ASCII (UTS #46).
        ("ｅｘａｍｐｌｅ。ｎｅｔ", "example.net"),
        ("1password.com", "1password.com"),
        ("123.example.net", "123.example.net"),
        ("a-b--c.example.net", "a-b--c.example.net"),
        ("a.b.c.d.example.co.uk", "a.b.c.d.example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("www.example.test", "www.example.test"),
        ("host.internal", "host.internal"),
        // The private section of the list is not refused: someone registered these.
        ("github.io", "github.io"),
        ("alice.github.io", "alice.github.io"),
        // `!www.ck` is an exception to the ICANN rule `*.ck`.
        ("www.ck", "www.ck"),
        ("example.xn--fiqs8s", "example.xn--fiqs8s"),
        ("example.中国", "example.xn--fiqs8s"),
    ];
    for (input, want) in cases {
        let n = name(input);
        assert_eq!(n.as_str(), *want, "{input:?}");
        assert_eq!(
            name(n.as_str()),
            n,
            "canonical text of {input:?} parses to itself"
        );
        assert_eq!(id(input), Identifier::Dns(n.clone()), "{input:?}");
    }
}

#[test]
fn label_and_name_lengths_are_at_the_limits() {
    let l63 = format!("{}.example.net", label(63));
    assert_eq!(name(&l63).as_str(), l63);
    let l64 = format!("{}.example.net", label(64));
    assert_eq!(
        DnsName::parse(&l64),
        Err(IdentifierError::LabelTooLong {
            given: l64.clone(),
            label: label(64),
            len: 64
        })
    );
    let n253 = name_of_len(253);
    assert_eq!(name(&n253).as_str(), n253);
    assert_eq!(
        name(&format!("{n253}.")).as_str(),
        n253,
        "trailing dot not counted"
    );
    let n254 = name_of_len(254);
    assert!(
        matches!(
            DnsName::parse(&n254),
            Err(IdentifierError::NameTooLong { len: 254, .. })
        ),
        "{n254}"
    );
    // A label's length is that of its A-label: 60 × "a" and one "ü" are 61 characters
    // (62 octets of UTF-8) but "xn--aaa…a-" and a Punycode tail of more than 63.
    let wide = format!("{}ü.example", label(60));
    assert!(
        matches!(DnsName::parse(&wide), Err(IdentifierError::LabelTooLong { len, .. }) if len > 63),
        "{:?}",
        DnsName::parse(&wide)
    );
    // Text past the input bound is refused before any work.
    let huge = "a.".repeat(MAX_INPUT_BYTES) + "net";
    assert!(matches!(
        DnsName::parse(&huge),
        Err(IdentifierError::TooLong { .. })
    ));
    let err = Identifier::parse(&huge).unwrap_err().to_string();
    assert!(err.contains('…') && err.len() < 400, "{err}");
}

/// Each refused name: its error (checked by the closure) and a word of its message.
type Refusal = (&'static str, fn(&IdentifierError) -> bool, &'static str);

#[test]
fn refused_names_name_the_rule() {
    use IdentifierError as E;
    let cases: &[Refusal] = &[
        ("", |e| *e == E::Empty, "empty"),
        (
            "1.2.3.4.",
            |e| matches!(e, E::IpNotName { ip, .. } if ip.to_string() == "1.2.3.4"),
            "list it as an IP: 1.2.3.4",
        ),
        (
            "1.2.3.4",
            |e| matches!(e, E::IpNotName { .. }),
            "not a name",
        ),
        (
            "010.1.2.3",
            |e| matches!(e, E::IpNotName { ip, .. } if ip.to_string() == "10.1.2.3"),
            "list it as an IP",
        ),
        (
            "010.1.2.3.",
            |e| matches!(e, E::IpNotName { .. }),
            "list it as an IP",
        ),
        (
            "１.２.３.４",
            |e| matches!(e, E::IpNotName { ip, .. } if ip.to_string() == "1.2.3.4"),
            "list it as an IP",
        ),
        (
            "[2001:DB8::1]",
            |e| matches!(e, E::IpNotName { ip, .. } if ip.to_string() == "2001:db8::1"),
            "list it as an IP: 2001:db8::1",
        ),
        (
            "::ffff:1.2.3.4",
            |e| matches!(e, E::IpNotName { ip, .. } if ip.to_string() == "1.2.3.4"),
            "list it as an IP",
        ),
        (
            "1.2.3",
            |e| matches!(e, E::NumericTld { label, .. } if label == "3"),
            "numeric",
        ),
        (
            "example.123",
            |e| matches!(e, E::NumericTld { .. }),
            "numeric",
        ),
        (
            "example.0x1f",
            |e| matches!(e, E::NumericTld { .. }),
            "IPv4",
        ),
        (
            "a..example.net",
            |e| matches!(e, E::EmptyLabel { .. }),
            "empty label",
        ),
        (
            ".example.net",
            |e| matches!(e, E::EmptyLabel { .. }),
            "leading dot",
        ),
        (
            "example.net..",
            |e| matches!(e, E::EmptyLabel { .. }),
            "at most one at the end",
        ),
        (".", |e| matches!(e, E::EmptyLabel { .. }), "empty label"),
        (
            "_acme-challenge.example.net",
            |e| matches!(e, E::BadCharacter { ch: '_', label, .. } if label == "_acme-challenge"),
            "letters, digits and hyphens",
        ),
        (
            "a b.example",
            |e| matches!(e, E::BadCharacter { ch: ' ', .. }),
            "LDH",
        ),
        (
            " example.net",
            |e| matches!(e, E::BadCharacter { ch: ' ', .. }),
            "LDH",
        ),
        (
            "a/b.example",
            |e| matches!(e, E::BadCharacter { ch: '/', .. }),
            "LDH",
        ),
        (
            "example.net:443",
            |e| matches!(e, E::BadCharacter { ch: ':', .. }),
            "LDH",
        ),
        (
            "-a.example",
            |e| matches!(e, E::EdgeHyphen { label, .. } if label == "-a"),
            "hyphen",
        ),
        (
            "a-.example",
            |e| matches!(e, E::EdgeHyphen { .. }),
            "hyphen",
        ),
        (
            "ab--cd.example",
            |e| matches!(e, E::ReservedHyphens { label, .. } if label == "ab--cd"),
            "xn--",
        ),
        (
            "r3---sn-abc.example.net",
            |e| matches!(e, E::ReservedHyphens { .. }),
            "RFC 5891",
        ),
        // Punycode that decodes to ASCII only, to nothing valid, or to a disallowed label.
        (
            "xn--abc-.example",
            |e| matches!(e, E::InvalidIdna { .. }),
            "UTS #46",
        ),
        (
            "xn--.example",
            |e| matches!(e, E::InvalidIdna { .. }),
            "Punycode",
        ),
        // A private-use code point; Latin and Hebrew in one label; a stray joiner.
        (
            "\u{e000}.example",
            |e| matches!(e, E::InvalidIdna { .. }),
            "internationalised",
        ),
        (
            "a\u{5d0}.example",
            |e| matches!(e, E::InvalidIdna { .. }),
            "direction",
        ),
        (
            "a\u{200d}b.example",
            |e| matches!(e, E::InvalidIdna { .. }),
            "IDNA",
        ),
        (
            "com",
            |e| matches!(e, E::PublicSuffix { name, .. } if name == "com"),
            "public suffix",
        ),
        (
            "COM.",
            |e| matches!(e, E::PublicSuffix { name, .. } if name == "com"),
            "e.g. example.com",
        ),
        (
            "co.uk",
            |e| matches!(e, E::PublicSuffix { name, .. } if name == "co.uk"),
            "anyone can register",
        ),
        (
            "中国",
            |e| matches!(e, E::PublicSuffix { name, .. } if name == "xn--fiqs8s"),
            "public suffix",
        ),
        // Covered by the ICANN wildcard rule `*.ck`.
        (
            "foo.ck",
            |e| matches!(e, E::PublicSuffix { .. }),
            "public suffix",
        ),
        (
            "localhost",
            |e| matches!(e, E::SingleLabel { .. }),
            "at least two",
        ),
        (
            "internal.",
            |e| matches!(e, E::SingleLabel { .. }),
            "single-label",
        ),
        (
            "*.example.net",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "first label of a wildcard",
        ),
        (
            "a.*.example",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "\"*\" is allowed only",
        ),
        (
            "*",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "wildcard",
        ),
        (
            "a*.example.net",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "wildcard",
        ),
    ];
    for (input, check, word) in cases {
        let err = DnsName::parse(input).expect_err(input);
        assert!(check(&err), "{input:?}: unexpected {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(word), "{input:?}: {msg:?} lacks {word:?}");
        if !input.is_empty() {
            assert!(
                msg.contains(&format!("{input:?}")),
                "{input:?}: {msg:?} does not name the identifier"
            );
        }
    }
}

#[test]
fn wildcards_have_one_star_over_a_real_domain() {
    use IdentifierError as E;
    let good: &[(&str, &str)] = &[
        ("*.example.net", "example.net"),
        ("*.Bücher.example.", "xn--bcher-kva.example"),
        ("*.a.b.example.co.uk", "a.b.example.co.uk"),
        ("*.github.io", "github.io"),
        ("*.example.test", "example.test"),
    ];
    for (input, base) in good {
        let w = id(input);
        assert_eq!(w, Identifier::Wildcard(name(base)), "{input:?}");
        assert_eq!(w.to_string(), format!("*.{base}"));
        assert!(w.is_wildcard() && !w.is_ip());
        assert_eq!(w.acme_type(), "dns");
        assert_eq!(w.dns_name(), Some(&name(base)));
    }
    let bad: &[Refusal] = &[
        (
            "*.co.uk",
            |e| matches!(e, E::WildcardOverPublicSuffix { base, .. } if base == "co.uk"),
            "write *.example.co.uk",
        ),
        (
            "*.com",
            |e| matches!(e, E::WildcardOverPublicSuffix { .. }),
            "public suffix",
        ),
        (
            "*.*.example.net",
            |e| matches!(e, E::NestedWildcard { base, .. } if base == "example.net"),
            "write it as \"*.example.net\"",
        ),
        (
            "*.a.*.example",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "first label",
        ),
        (
            "*.*",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "wildcard",
        ),
        (
            "**.example.net",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "wildcard",
        ),
        (
            "*a.example.net",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "wildcard",
        ),
        ("*.", |e| matches!(e, E::EmptyLabel { .. }), "empty label"),
        (
            "*.localhost",
            |e| matches!(e, E::SingleLabel { .. }),
            "at least two",
        ),
        (
            "*.1.2.3.4",
            |e| matches!(e, E::IpNotName { .. }),
            "IP address",
        ),
        (
            "*._dmarc.example.net",
            |e| matches!(e, E::BadCharacter { ch: '_', .. }),
            "LDH",
        ),
    ];
    for (input, check, word) in bad {
        let err = Identifier::parse(input).expect_err(input);
        assert!(check(&err), "{input:?}: unexpected {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(word), "{input:?}: {msg:?} lacks {word:?}");
        assert!(msg.contains(&format!("{input:?}")), "{msg:?}");
    }
    // `*.` counts towards the 253 octets of the name in the certificate.
    let base251 = name_of_len(251);
    assert_eq!(id(&format!("*.{base251}")).to_string().len(), 253);
    let base252 = name_of_len(252);
    assert!(matches!(
        Identifier::parse(&format!("*.{base252}")),
        Err(E::NameTooLong { len: 254, .. })
    ));
}

#[test]
fn identifiers_parse_ips_first_and_keep_their_errors() {
    use IdentifierError as E;
    let ip = id("8.8.8.8");
    assert_eq!(ip, Identifier::Ip("8.8.8.8".parse().expect("ip")));
    assert!(ip.is_ip() && !ip.is_wildcard());
    assert_eq!(ip.acme_type(), "ip");
    assert_eq!(ip.as_ip(), Some("8.8.8.8".parse().expect("ip")));
    assert_eq!(ip.dns_name(), None);
    assert_eq!(id("2606:4700::1111").acme_type(), "ip");
    let dns = id("Example.NET");
    assert_eq!(dns.acme_type(), "dns");
    assert_eq!(dns.as_ip(), None);
    assert_eq!(dns.to_canonical(), "example.net");
    assert!(matches!(
        Identifier::parse("010.1.1.1"),
        Err(E::LeadingZeros { decimal, .. }) if decimal == "10.1.1.1"
    ));
    assert!(matches!(
        Identifier::parse("2606:4700:0:0:0:0:0:1111"),
        Err(E::NotCanonical { canonical, .. }) if canonical == "2606:4700::1111"
    ));
    assert!(matches!(
        Identifier::parse("::ffff:8.8.8.8"),
        Err(E::NotCanonical { canonical, .. }) if canonical == "8.8.8.8"
    ));
    assert!(matches!(
        Identifier::parse("[::1]"),
        Err(E::IpNotName { .. })
    ));
    assert!(matches!(
        Identifier::parse("8.8.8.8."),
        Err(E::IpNotName { .. })
    ));
    assert_eq!(Identifier::parse(""), Err(E::Empty));
    assert_eq!("example.net".parse::<Identifier>(), Ok(dns.clone()));
    assert_eq!(Identifier::from(name("example.net")), dns);
}

#[test]
fn identifier_sets_sort_ips_then_names() {
    let input = [
        "www.example.net",
        "2001:db8::1",
        "example.net",
        "*.example.net",
        "10.0.0.1",
        "a.example.net",
        "9.9.9.9",
        "xn--bcher-kva.example",
        "*.a.example.net",
        "example.net",
        "9.9.9.9",
    ];
    let ids: Vec<Identifier> = input.iter().map(|s| id(s)).collect();
    let sorted: Vec<String> = canonical_identifiers(ids.clone())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        sorted,
        [
            "9.9.9.9",
            "10.0.0.1",
            "2001:db8::1",
            "*.a.example.net",
            "*.example.net",
            "a.example.net",
            "example.net",
            "www.example.net",
            "xn--bcher-kva.example",
        ]
    );
    // The order agrees with equality and does not depend on where a list started.
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(
        canonical_identifiers(reversed),
        canonical_identifiers(ids.clone())
    );
    let set: HashSet<Identifier> = ids.into_iter().collect();
    assert_eq!(set.len(), 9);
    // A wildcard and the name that spells its base are different identifiers.
    assert_ne!(id("*.example.net"), id("example.net"));
    assert_ne!(
        id("*.example.net").cmp(&id("example.net")),
        std::cmp::Ordering::Equal
    );
}

#[test]
fn display_parse_and_serde_round_trip() {
    let inputs = [
        "8.8.8.8",
        "2606:4700::1111",
        "example.net",
        "BÜCHER.example.",
        "*.Example.co.uk",
        "例え.テスト",
        "alice.github.io",
    ];
    for input in inputs {
        let x = id(input);
        let text = x.to_string();
        assert_eq!(id(&text), x, "{input:?} → {text:?}");
        assert_eq!(id(&text).to_string(), text);
        let json = serde_json::to_string(&x).expect("serialize");
        assert_eq!(json, format!("\"{text}\""), "a plain string");
        let back: Identifier = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, x);
    }
    // Deserialising validates and canonicalises, like parsing.
    let back: Identifier = serde_json::from_str("\"Bücher.Example.\"").expect("deserialize");
    assert_eq!(back.to_string(), "xn--bcher-kva.example");
    for bad in [
        "\"co.uk\"",
        "\"*.com\"",
        "\"1.2.3.4.\"",
        "\"a_b.example\"",
        "42",
    ] {
        let err = serde_json::from_str::<Identifier>(bad).expect_err(bad);
        assert!(!err.to_string().is_empty());
    }
    let err = serde_json::from_str::<Identifier>("\"co.uk\"")
        .expect_err("public suffix")
        .to_string();
    assert!(err.contains("public suffix"), "{err}");
    let n: DnsName = serde_json::from_str("\"WWW.example.net.\"").expect("name");
    assert_eq!(
        serde_json::to_string(&n).expect("name"),
        "\"www.example.net\""
    );
    assert!(serde_json::from_str::<DnsName>("\"*.example.net\"").is_err());
    assert!(serde_json::from_str::<DnsName>("\"8.8.8.8\"").is_err());
}

#[test]
fn registered_domains_follow_both_sections_of_the_list() {
    let cases: &[(&str, Option<&str>)] = &[
        ("www.example.co.uk", Some("example.co.uk")),
        ("example.co.uk", Some("example.co.uk")),
        ("a.b.example.com", Some("example.com")),
        ("example.com", Some("example.com")),
        ("alice.github.io", Some("alice.github.io")),
        ("x.alice.github.io", Some("alice.github.io")),
        ("github.io", None),
        ("a.b.example.test", Some("example.test")),
        ("www.bücher.example", Some("xn--bcher-kva.example")),
        ("www.example.xn--fiqs8s", Some("example.xn--fiqs8s")),
    ];
    for (input, want) in cases {
        let got = registered_domain(&name(input));
        assert_eq!(got.as_ref().map(DnsName::as_str), *want, "{input:?}");
    }
    assert_eq!(
        id("*.a.example.com").registered_domain(),
        Some(name("example.com"))
    );
    assert_eq!(id("8.8.8.8").registered_domain(), None);
}

#[test]
fn zones_contain_names_on_label_boundaries() {
    let zone = name("example.net");
    assert!(name("a.example.net").is_under(&zone));
    assert!(name("a.b.example.net").is_under(&zone));
    assert!(!name("example.net").is_under(&zone));
    assert!(name("example.net").is_at_or_under(&zone));
    assert!(!name("aexample.net").is_under(&zone));
    assert!(!name("example.net.evil.com").is_under(&zone));
    assert!(!name("example.org").is_at_or_under(&zone));
    assert_eq!(
        name("www.example.net").labels().collect::<Vec<_>>(),
        ["www", "example", "net"]
    );
}

#[test]
fn name_patterns_cover_exact_names_or_subtrees() {
    let below = NamePattern::parse("*.ÉXAMPLE.net.").expect("pattern");
    assert_eq!(below, NamePattern::Below(name("xn--xample-9ua.net")));
    assert_eq!(below.to_string(), "*.xn--xample-9ua.net");
    let below = NamePattern::parse("*.example.net").expect("pattern");
    let exact = NamePattern::parse("Example.NET").expect("pattern");
    assert_eq!(exact, NamePattern::Exact(name("example.net")));
    // (identifier, covered by `*.example.net`, covered by `example.net`)
    let cases = [
        ("a.example.net", true, false),
        ("a.b.example.net", true, false),
        ("example.net", false, true),
        ("aexample.net", false, false),
        ("example.net.evil.com", false, false),
        ("*.example.net", true, false),
        ("*.x.example.net", true, false),
        ("*.example.org", false, false),
        ("*.net.example.org", false, false),
        ("192.0.2.1", false, false),
        ("2001:db8::1", false, false),
    ];
    for (input, by_below, by_exact) in cases {
        let x = id(input);
        assert_eq!(below.matches(&x), by_below, "*.example.net vs {input}");
        assert_eq!(exact.matches(&x), by_exact, "example.net vs {input}");
        assert_eq!(
            NamePattern::any_matches(&[exact.clone(), below.clone()], &x),
            by_below || by_exact,
            "{input}"
        );
    }
    assert!(!NamePattern::any_matches(&[], &id("example.net")));
    use IdentifierError as E;
    let bad: &[Refusal] = &[
        (
            "*.com",
            |e| matches!(e, E::WildcardOverPublicSuffix { .. }),
            "public suffix",
        ),
        (
            "*.co.uk",
            |e| matches!(e, E::WildcardOverPublicSuffix { .. }),
            "public suffix",
        ),
        (
            "*.internal",
            |e| matches!(e, E::SingleLabel { .. }),
            "at least two",
        ),
        (
            "co.uk",
            |e| matches!(e, E::PublicSuffix { .. }),
            "public suffix",
        ),
        (
            "192.0.2.1",
            |e| matches!(e, E::IpNotName { .. }),
            "list it as an IP",
        ),
        (
            "a.*.example.net",
            |e| matches!(e, E::MisplacedWildcard { .. }),
            "wildcard",
        ),
        (
            "*.*.example.net",
            |e| matches!(e, E::NestedWildcard { .. }),
            "wildcard",
        ),
        ("", |e| *e == E::Empty, "empty"),
    ];
    for (input, check, word) in bad {
        let err = NamePattern::parse(input).expect_err(input);
        assert!(check(&err), "{input:?}: unexpected {err:?}");
        assert!(err.to_string().contains(word), "{input:?}: {err}");
    }
    let patterns: Vec<NamePattern> =
        serde_json::from_str(r#"["*.Example.net", "www.example.org."]"#).expect("patterns");
    assert_eq!(
        serde_json::to_string(&patterns).expect("patterns"),
        r#"["*.example.net","www.example.org"]"#
    );
    assert!(serde_json::from_str::<Vec<NamePattern>>(r#"["*.com"]"#).is_err());
}
