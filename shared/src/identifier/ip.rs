//! IP identifiers: canonical text form, the special-purpose address check, and the
//! reverse-DNS name TLS-ALPN-01 uses for an address (RFC 8738).
//!
//! Public CAs (Let's Encrypt's Boulder) refuse addresses in the IANA special-purpose
//! registries; we refuse them first, with a message that says so, unless the issuer is
//! configured to allow private addresses (private CAs, pebble in tests).

use super::IdentifierError;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parses an IP identifier, insisting on the canonical text form (RFC 5952 for IPv6,
/// dotted quad without leading zeros for IPv4), so that one address has one spelling in
/// the store, in certificates and in rate-limit counting.
pub fn parse_ip(s: &str) -> Result<IpAddr, IdentifierError> {
    let ip: IpAddr = s.parse().map_err(|_| match zero_padded_v4(s) {
        Some(decimal) => IdentifierError::LeadingZeros {
            given: s.to_owned(),
            decimal,
        },
        None => IdentifierError::NotAnIp(s.chars().take(64).collect()),
    })?;
    // An IPv4-mapped IPv6 address names an IPv4 host; make people say so.
    let canonical = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    };
    if canonical.to_string() != s {
        return Err(IdentifierError::NotCanonical {
            given: s.to_owned(),
            canonical: canonical.to_string(),
        });
    }
    Ok(ip)
}

/// Parses an address a host claims as its own ([`parse_ip`]) and refuses the link-local
/// ranges, which name no single host and which no CA can reach.
pub fn parse_host_ip(s: &str) -> Result<IpAddr, IdentifierError> {
    let ip = parse_ip(s)?;
    if is_link_local(ip) {
        return Err(IdentifierError::LinkLocal(ip));
    }
    Ok(ip)
}

/// "127.000.0.1" → Some("127.0.0.1"): a dotted quad whose only fault is leading zeros.
pub(super) fn zero_padded_v4(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let octets: Vec<u8> = parts
        .iter()
        .map(|p| p.parse::<u8>().ok())
        .collect::<Option<_>>()?;
    Some(std::net::Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]).to_string())
}

/// Checks an address against the issuer's policy.
pub fn check_issuable(ip: IpAddr, allow_private: bool) -> Result<(), IdentifierError> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(IdentifierError::NotPublic(ip))
    }
}

/// True unless the address is in an IANA special-purpose registry entry that public CAs
/// refuse (RFC 6890 and successors).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// A block from its address and prefix length, checked when compiled.
const fn v4(a: [u8; 4], len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a[0], a[1], a[2], a[3]), len)
}

const fn v6(s: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// IPv4 link-local (RFC 3927).
const LINK_LOCAL_V4: Ipv4Net = v4([169, 254, 0, 0], 16);
/// IPv6 link-local unicast (RFC 4291).
const LINK_LOCAL_V6: Ipv6Net = v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10);

/// True for `169.254.0.0/16` and `fe80::/10`: addresses that are only meaningful on one
/// link (one of the special-purpose ranges of [`is_public`]).
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => LINK_LOCAL_V4.contains(&v4),
        IpAddr::V6(v6) => LINK_LOCAL_V6.contains(&v6),
    }
}

/// IANA IPv4 special-purpose blocks public CAs refuse.
const SPECIAL_V4: &[Ipv4Net] = &[
    v4([0, 0, 0, 0], 8),       // "this network"
    v4([10, 0, 0, 0], 8),      // private
    v4([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    v4([127, 0, 0, 0], 8),     // loopback
    LINK_LOCAL_V4,             // link local
    v4([172, 16, 0, 0], 12),   // private
    v4([192, 0, 0, 0], 24),    // IETF protocol assignments
    v4([192, 0, 2, 0], 24),    // TEST-NET-1
    v4([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    v4([192, 168, 0, 0], 16),  // private
    v4([198, 18, 0, 0], 15),   // benchmarking
    v4([198, 51, 100, 0], 24), // TEST-NET-2
    v4([203, 0, 113, 0], 24),  // TEST-NET-3
    v4([224, 0, 0, 0], 4),     // multicast
    v4([240, 0, 0, 0], 4),     // reserved, and broadcast
];

/// IANA IPv6 special-purpose blocks public CAs refuse.
const SPECIAL_V6: &[Ipv6Net] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128),         // unspecified
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),         // loopback
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),     // IPv4-mapped
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),  // IPv4/IPv6 translation
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use translation
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),     // 6to4
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation (RFC 9637)
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),     // segment routing SIDs
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
    LINK_LOCAL_V6,                             // link local
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !SPECIAL_V4.iter().any(|net| net.contains(&ip))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    !SPECIAL_V6.iter().any(|net| net.contains(&ip))
}

/// A CIDR block or a single address (as a /32 or /128), for config and token
/// constraints. A block with host bits set is refused: it is almost always a typo for
/// its network.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("{s:?} is not an address or CIDR block (like 203.0.113.0/24)"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Sorts and de-duplicates a set of addresses: the canonical order of a certificate's
/// identifier set (IPv4 before IPv6, then numeric).
pub fn canonical_set(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    ips.sort();
    ips.dedup();
    ips
}

/// The reverse-DNS name of an address, as TLS-ALPN-01 puts it in the SNI for an IP
/// identifier (RFC 8738 §6): `4.3.2.1.in-addr.arpa` for `1.2.3.4`, and for IPv6 the 32
/// nibbles of the address in reverse order, lower-case hex, under `ip6.arpa`
/// (RFC 3596 §2.5). An IPv4-mapped IPv6 address is an IPv6 address here.
pub fn reverse_name(ip: IpAddr) -> String {
    use std::fmt::Write as _;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(32 * 2 + "ip6.arpa".len());
            for byte in v6.octets().iter().rev() {
                // Writing to a String cannot fail.
                let _ = write!(out, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
            out.push_str("ip6.arpa");
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_parse_by_ipnet_and_refuse_host_bits() {
        assert_eq!(
            parse_net("203.0.113.0/24").unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_net("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_net("::1").unwrap().prefix_len(), 128);
        let e = parse_net("203.0.113.7/24").unwrap_err();
        assert!(e.contains("did you mean 203.0.113.0/24"), "{e}");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("nope")
            .unwrap_err()
            .contains("not an address or CIDR block"));
    }

    #[test]
    fn special_purpose_blocks_edges() {
        let public = |s: &str| is_public(s.parse().unwrap());
        // First and last address of a block, and the neighbours outside it.
        assert!(!public("100.64.0.0") && !public("100.127.255.255"));
        assert!(public("100.63.255.255") && public("100.128.0.0"));
        assert!(!public("172.31.255.255") && public("172.32.0.0"));
        assert!(!public("198.19.255.255") && public("198.20.0.0"));
        assert!(!public("2001:1ff:ffff:ffff::1") && public("2001:200::1"));
        assert!(!public("fdff::1") && public("fe00::1") && !public("febf::1"));
        assert!(is_link_local("169.254.1.1".parse().unwrap()));
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()));
    }

    #[test]
    fn canonical_forms_are_accepted() {
        for s in ["8.8.8.8", "2606:4700::1111", "::1", "127.0.0.1"] {
            assert_eq!(parse_ip(s).map(|ip| ip.to_string()), Ok(s.to_owned()));
        }
    }

    #[test]
    fn non_canonical_forms_name_the_fix() {
        let err = parse_ip("2606:4700:0:0:0:0:0:1111").unwrap_err();
        assert_eq!(
            err,
            IdentifierError::NotCanonical {
                given: "2606:4700:0:0:0:0:0:1111".into(),
                canonical: "2606:4700::1111".into()
            }
        );
        assert!(
            parse_ip("2606:4700::ABCD").is_err(),
            "upper case is not canonical"
        );
        assert!(
            matches!(parse_ip("::ffff:8.8.8.8"), Err(IdentifierError::NotCanonical { canonical, .. }) if canonical == "8.8.8.8")
        );
        assert!(
            matches!(parse_ip("010.1.1.1"), Err(IdentifierError::LeadingZeros { decimal, .. }) if decimal == "10.1.1.1")
        );
        let msg = parse_ip("127.000.0.1").unwrap_err().to_string();
        assert!(
            msg.contains("leading zeros") && msg.contains("\"127.0.0.1\""),
            "{msg}"
        );
        assert!(matches!(
            parse_ip("1.2.3.400"),
            Err(IdentifierError::NotAnIp(_))
        ));
        assert!(matches!(
            parse_ip(" 8.8.8.8"),
            Err(IdentifierError::NotAnIp(_))
        ));
        assert!(matches!(
            parse_ip("example.com"),
            Err(IdentifierError::NotAnIp(_))
        ));
    }

    #[test]
    fn special_purpose_ranges_are_not_public() {
        for s in [
            "10.1.2.3",
            "127.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "ff02::1",
            "::ffff:1.2.3.4",
            "2001::1",
            "2002::1",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(!is_public(ip), "{s} treated as public");
            assert!(check_issuable(ip, false).is_err());
            assert!(check_issuable(ip, true).is_ok());
        }
        for s in [
            "8.8.8.8",
            "172.32.0.1",
            "1.1.1.1",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            assert!(is_public(s.parse().unwrap()), "{s} treated as private");
        }
    }

    #[test]
    fn link_local_addresses_are_not_host_addresses() {
        for s in [
            "169.254.0.1",
            "169.254.169.254",
            "169.254.255.255",
            "fe80::1",
            "fe80::1:2:3:4",
            "febf:ffff::1",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(is_link_local(ip), "{s} is link-local");
            assert!(!is_public(ip), "{s} is not public either");
            let err = parse_host_ip(s).unwrap_err();
            assert_eq!(err, IdentifierError::LinkLocal(ip));
            let msg = err.to_string();
            assert!(
                msg.contains(s) && msg.contains("link-local") && msg.contains("no CA can reach"),
                "{msg}"
            );
        }
        assert!(parse_host_ip("169.254.1.1")
            .unwrap_err()
            .to_string()
            .contains("169.254.0.0/16"));
        assert!(parse_host_ip("fe80::1")
            .unwrap_err()
            .to_string()
            .contains("fe80::/10"));
        for s in [
            "169.253.255.255",
            "169.255.0.1",
            "fec0::1",
            "fe7f::1",
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "8.8.8.8",
            "2606:4700::1111",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(!is_link_local(ip), "{s} is not link-local");
            assert_eq!(parse_host_ip(s), Ok(ip));
        }
        assert!(matches!(
            parse_host_ip("10.0.0.300"),
            Err(IdentifierError::NotAnIp(_))
        ));
    }

    #[test]
    fn identifier_sets_have_one_order() {
        let a: Vec<IpAddr> = vec![
            "2001:4860::1".parse().unwrap(),
            "8.8.8.8".parse().unwrap(),
            "8.8.8.8".parse().unwrap(),
        ];
        assert_eq!(
            canonical_set(a),
            vec![
                "8.8.8.8".parse::<IpAddr>().unwrap(),
                "2001:4860::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn reverse_names_follow_rfc_8738() {
        let cases = [
            ("1.2.3.4", "4.3.2.1.in-addr.arpa"),
            ("127.0.0.80", "80.0.0.127.in-addr.arpa"),
            ("0.0.0.0", "0.0.0.0.in-addr.arpa"),
            ("255.10.0.1", "1.0.10.255.in-addr.arpa"),
            // RFC 3596 §2.5's example, 4321:0:1:2:3:4:567:89ab.
            (
                "4321:0:1:2:3:4:567:89ab",
                "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa",
            ),
            (
                "2001:db8::1",
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
            ),
            (
                "::ffff:1.2.3.4",
                "4.0.3.0.2.0.1.0.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
            ),
        ];
        for (ip, want) in cases {
            let ip: IpAddr = ip.parse().expect("test address");
            assert_eq!(reverse_name(ip), want, "{ip}");
        }
        let v6 = reverse_name("fe80::abcd".parse().expect("test address"));
        assert_eq!(v6.split('.').count(), 32 + 2, "{v6}");
        assert!(v6.starts_with("d.c.b.a.0.0.0.0."), "{v6}");
        assert!(v6.ends_with(".0.8.e.f.ip6.arpa"), "{v6}");
    }
}
