//! DNS names in canonical form, and the registered domain a name counts under.
//!
//! Canonical: A-labels (UTS #46 processing, non-transitional, through the `idna` crate),
//! lower case, no trailing dot. The rules, in the order they are checked:
//! 1. the text is not an IP address in any spelling (`1.2.3.4.`, `010.1.1.1`, `[::1]`):
//!    an address is listed as an IP identifier, never as a name;
//! 2. it is a valid internationalised name (UTS #46: allowed code points, valid Punycode in
//!    `xn--` labels, bidi and joiner rules);
//! 3. `*` appears nowhere (wildcards are [`super::Identifier::Wildcard`]; their base obeys
//!    every rule here);
//! 4. every label is non-empty, letters/digits/hyphens only, does not start or end with a
//!    hyphen, has `--` in positions 3–4 only as `xn--` (RFC 5891's reserved R-LDH form,
//!    which Let's Encrypt refuses too), and is at most 63 octets; the name is at most 253;
//! 5. it is not itself a public suffix of the list's ICANN section (`com`, `co.uk`);
//! 6. it has at least two labels, and its last label is not numeric.
//!
//! Public suffixes: rule 5 refuses only the ICANN section, as Let's Encrypt does: a name
//! in the private section (`github.io`, `blogspot.com`) is a domain someone registered and
//! may hold a certificate for. The registered domain for rate limits, however, uses both
//! sections ([`registered_domain`]), as Let's Encrypt's limits do: `alice.github.io` and
//! `bob.github.io` are separate registered domains. The list is the `psl` crate (Mozilla's
//! list compiled to code, a new release on every list change, no dependency but its own
//! types); `publicsuffix` reads the list at run time and leaves fetching it to us.
//!
//! Names under a suffix the list does not know (`example.test`, `host.internal`) are
//! accepted: private CAs issue for them; public CAs refuse them themselves.

use super::ip::zero_padded_v4;
use super::{shown, IdentifierError, ParseVisitor, MAX_INPUT_BYTES};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The longest label, in octets of its A-label form (RFC 1035 §2.3.4).
pub const MAX_LABEL_OCTETS: usize = 63;
/// The longest name, in octets of its text form without the trailing dot (RFC 1035's 255
/// octets of wire form, less the length octets of the first label and the root).
pub const MAX_NAME_OCTETS: usize = 253;

/// A DNS name in canonical form (see the module documentation for the rules).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(String);

impl DnsName {
    /// Parses and canonicalises a name: one trailing dot dropped, Unicode to A-labels, lower
    /// case; every rule of the module documentation checked.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        check_size(s)?;
        parse_name(s, s, Context::Name)
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The labels, left to right (`www`, `example`, `net`).
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// True when this name is strictly below `zone`, at any depth: `a.example.net` and
    /// `a.b.example.net` are under `example.net`; `example.net` and `aexample.net` are not.
    pub fn is_under(&self, zone: &DnsName) -> bool {
        self.0.len() > zone.0.len()
            && self.0.ends_with(zone.as_str())
            && self.0.as_bytes()[self.0.len() - zone.0.len() - 1] == b'.'
    }

    /// True when this name is `zone` or strictly below it.
    pub fn is_at_or_under(&self, zone: &DnsName) -> bool {
        self == zone || self.is_under(zone)
    }
}

/// The registered domain (eTLD+1) of a name, from the Public Suffix List's ICANN *and*
/// private sections, as Let's Encrypt counts its 50-certificates-per-7-days limit:
/// `www.example.co.uk` → `example.co.uk`, `alice.github.io` → `alice.github.io`,
/// `a.b.example.test` → `example.test` (an unknown top-level label is one suffix label).
/// `None` when the name is itself a suffix of the private section (`github.io`; the ICANN
/// ones are not [`DnsName`]s at all): such a name has no registered domain above it, and
/// the budget counts it as its own.
pub fn registered_domain(name: &DnsName) -> Option<DnsName> {
    let domain = psl::domain(name.as_str().as_bytes())?;
    let start = name.0.len().checked_sub(domain.as_bytes().len())?;
    // A suffix of a canonical name on a label boundary, with at least two labels: itself
    // canonical (and not an ICANN suffix, being one label longer than the longest one).
    name.0.get(start..).map(|d| DnsName(d.to_owned()))
}

/// Where a name is parsed: its own, or as the base of a wildcard (`given` is then the whole
/// `*.base` text), which changes only how a refusal is worded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Context {
    Name,
    WildcardBase,
}

fn check_size(s: &str) -> Result<(), IdentifierError> {
    if s.is_empty() {
        return Err(IdentifierError::Empty);
    }
    if s.len() > MAX_INPUT_BYTES {
        return Err(IdentifierError::TooLong {
            given: shown(s),
            len: s.len(),
        });
    }
    Ok(())
}

/// The base of a wildcard `given` = `*.base`: a name by every rule, two octets shorter
/// than the longest name (the `*.` counts), and no second `*`.
pub(super) fn parse_wildcard_base(given: &str, base: &str) -> Result<DnsName, IdentifierError> {
    check_size(given)?;
    if base.is_empty() {
        return Err(IdentifierError::EmptyLabel {
            given: shown(given),
        });
    }
    let name = parse_name(given, base, Context::WildcardBase)?;
    let len = name.0.len() + 2;
    if len > MAX_NAME_OCTETS {
        return Err(IdentifierError::NameTooLong {
            given: shown(given),
            len,
        });
    }
    Ok(name)
}

/// Checks `text` (all of `given`, or a wildcard's base) by the rules of the module
/// documentation; errors repeat `given`.
pub(super) fn parse_name(
    given: &str,
    text: &str,
    ctx: Context,
) -> Result<DnsName, IdentifierError> {
    let err_given = || shown(given);
    if let Some(ip) = ipv6_literal(text) {
        return Err(IdentifierError::IpNotName {
            given: err_given(),
            ip,
        });
    }
    let ascii = idna::domain_to_ascii_cow(text.as_bytes(), idna::AsciiDenyList::EMPTY)
        .map_err(|_| IdentifierError::InvalidIdna { given: err_given() })?;
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    if ascii.is_empty() {
        return Err(IdentifierError::EmptyLabel { given: err_given() });
    }
    if let Some(ip) = ipv4_spelling(ascii) {
        return Err(IdentifierError::IpNotName {
            given: err_given(),
            ip,
        });
    }
    for (i, label) in ascii.split('.').enumerate() {
        check_label(given, label, i == 0, ctx, ascii)?;
    }
    if ascii.len() > MAX_NAME_OCTETS {
        return Err(IdentifierError::NameTooLong {
            given: err_given(),
            len: ascii.len(),
        });
    }
    if is_icann_suffix(ascii) {
        return Err(match ctx {
            Context::Name => IdentifierError::PublicSuffix {
                given: err_given(),
                name: ascii.to_owned(),
            },
            Context::WildcardBase => IdentifierError::WildcardOverPublicSuffix {
                given: err_given(),
                base: ascii.to_owned(),
            },
        });
    }
    let Some((_, last)) = ascii.rsplit_once('.') else {
        return Err(IdentifierError::SingleLabel { given: err_given() });
    };
    if is_numeric_label(last) {
        return Err(IdentifierError::NumericTld {
            given: err_given(),
            label: last.to_owned(),
        });
    }
    Ok(DnsName(ascii.to_owned()))
}

/// One label of the A-label form `name`.
fn check_label(
    given: &str,
    label: &str,
    first: bool,
    ctx: Context,
    name: &str,
) -> Result<(), IdentifierError> {
    let err_given = || shown(given);
    if label.contains('*') {
        let base = name.trim_start_matches("*.");
        return Err(
            if ctx == Context::WildcardBase && first && label == "*" && !base.contains('*') {
                IdentifierError::NestedWildcard {
                    given: err_given(),
                    base: base.to_owned(),
                }
            } else {
                IdentifierError::MisplacedWildcard { given: err_given() }
            },
        );
    }
    if label.is_empty() {
        return Err(IdentifierError::EmptyLabel { given: err_given() });
    }
    if let Some(ch) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(IdentifierError::BadCharacter {
            given: err_given(),
            label: shown(label),
            ch,
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(IdentifierError::EdgeHyphen {
            given: err_given(),
            label: shown(label),
        });
    }
    if label.get(2..4) == Some("--") && !label.starts_with("xn--") {
        return Err(IdentifierError::ReservedHyphens {
            given: err_given(),
            label: shown(label),
        });
    }
    if label.len() > MAX_LABEL_OCTETS {
        return Err(IdentifierError::LabelTooLong {
            given: err_given(),
            label: shown(label),
            len: label.len(),
        });
    }
    Ok(())
}

/// `::1`, `[2001:db8::1]` and the like: an IPv6 address written where a name was expected
/// (shown back in canonical form; an IPv4-mapped address as its IPv4 address).
fn ipv6_literal(text: &str) -> Option<IpAddr> {
    if !text.contains(':') {
        return None;
    }
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let v6: Ipv6Addr = inner.parse().ok()?;
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// A dotted quad, with or without leading zeros (read as decimal), after the trailing dot
/// is gone and full-width digits and dots are mapped to ASCII by IDNA.
fn ipv4_spelling(ascii: &str) -> Option<IpAddr> {
    if let Ok(v4) = ascii.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    zero_padded_v4(ascii).and_then(|decimal| decimal.parse().ok())
}

/// All digits, or a `0x` hexadecimal number: what URL parsers and `inet_aton` read as
/// part of an IPv4 address, and what no top-level domain is.
fn is_numeric_label(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .map(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex.unwrap_or_else(|| label.bytes().all(|b| b.is_ascii_digit()))
}

/// True when the whole name is a rule of the list's ICANN section (explicit or through a
/// wildcard rule such as `*.ck`).
fn is_icann_suffix(ascii: &str) -> bool {
    psl::suffix(ascii.as_bytes())
        .is_some_and(|s| s.typ() == Some(psl::Type::Icann) && s.as_bytes() == ascii.as_bytes())
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DnsName {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DnsName::parse(s)
    }
}

impl AsRef<str> for DnsName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for DnsName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DnsName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ParseVisitor::<DnsName>::new("a DNS name"))
    }
}
