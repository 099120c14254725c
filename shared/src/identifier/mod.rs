//! Identifiers a certificate can name: IP addresses, DNS names and (for DNS-01) wildcards,
//! each with one canonical text form — the form that goes into certificates, the store, the
//! audit trail and rate-limit counting.
//!
//! - [`ip`]: canonical IPs, the special-purpose ranges public CAs refuse, reverse names.
//! - [`name`]: [`DnsName`] (IDNA to A-labels, LDH labels, lengths, public suffixes) and
//!   [`registered_domain`].
//! - [`pattern`]: [`NamePattern`], the `allowed_names` entries of a policy.
//!
//! Parsing only canonicalises and validates; whether an issuer accepts an identifier
//! (`check_issuable`) and whether a policy allows it ([`NamePattern::matches`]) are
//! separate questions asked by the caller. Every refusal is an [`IdentifierError`] whose
//! message names the identifier, the rule it breaks and, where there is one, the fix.

mod ip;
mod name;
mod pattern;
#[cfg(test)]
mod tests;

pub use ip::{
    canonical_set, check_issuable, is_link_local, is_public, parse_host_ip, parse_ip, parse_net,
    reverse_name,
};
pub use name::{registered_domain, DnsName, MAX_LABEL_OCTETS, MAX_NAME_OCTETS};
pub use pattern::NamePattern;

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The longest identifier text we look at (bytes): a 253-octet name written in Unicode
/// stays under it; anything longer is refused before any IDNA work.
pub const MAX_INPUT_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum IdentifierError {
    #[error("{0:?} is not an IP address")]
    NotAnIp(String),
    #[error(
        "{given:?} has leading zeros, which some tools read as octal; write each part \
         without them, e.g. {decimal:?} if decimal was meant"
    )]
    LeadingZeros { given: String, decimal: String },
    #[error("{given:?} is not in canonical form; write it as {canonical:?}")]
    NotCanonical { given: String, canonical: String },
    #[error(
        "{0} is a private or special-purpose address that public CAs refuse; \
         set allow_private_ips = true on the issuer only for a private CA"
    )]
    NotPublic(IpAddr),
    #[error(
        "{0} is a link-local address ({range}): no CA can reach it, since it is valid only \
         on one network link, and it is not unique to this host, since every link reuses \
         the same range; list the host's routable addresses instead",
        range = if .0.is_ipv4() { "169.254.0.0/16" } else { "fe80::/10" }
    )]
    LinkLocal(IpAddr),
    #[error("an identifier is empty; give an IP address or a DNS name")]
    Empty,
    #[error(
        "{given:?} is {len} bytes long; an identifier is at most {MAX_NAME_OCTETS} octets \
         (a name) and its text at most {MAX_INPUT_BYTES} bytes"
    )]
    TooLong { given: String, len: usize },
    #[error("{given:?} is an IP address, not a name; list it as an IP: {ip}")]
    IpNotName { given: String, ip: IpAddr },
    #[error(
        "{given:?} has an empty label (a leading dot or two dots in a row); write the name \
         with one dot between labels and at most one at the end"
    )]
    EmptyLabel { given: String },
    #[error(
        "{given:?}: label {label:?} holds {ch:?}; a label holds only letters, digits and \
         hyphens (LDH), so underscores, spaces and other punctuation cannot be in a \
         certificate name"
    )]
    BadCharacter {
        given: String,
        label: String,
        ch: char,
    },
    #[error(
        "{given:?}: label {label:?} starts or ends with a hyphen, which DNS host names may not"
    )]
    EdgeHyphen { given: String, label: String },
    #[error(
        "{given:?}: label {label:?} has \"--\" as its 3rd and 4th characters, a form \
         reserved for internationalised labels (\"xn--\", RFC 5891) that CAs refuse otherwise"
    )]
    ReservedHyphens { given: String, label: String },
    #[error(
        "{given:?}: label {label:?} is {len} octets (as A-label); a label is at most \
         {MAX_LABEL_OCTETS}"
    )]
    LabelTooLong {
        given: String,
        label: String,
        len: usize,
    },
    #[error("{given:?} is {len} octets (as A-labels); a name is at most {MAX_NAME_OCTETS}")]
    NameTooLong { given: String, len: usize },
    #[error(
        "{given:?} has only one label; a certificate name needs at least two (e.g. \
         host.example.net): CAs do not issue for bare top-level or single-label names"
    )]
    SingleLabel { given: String },
    #[error(
        "{given:?} ends in the numeric label {label:?}: no top-level domain is numeric, and \
         resolvers may read the name as an IPv4 address; write an IP address in canonical \
         form (e.g. 192.0.2.1) or a name with a real top-level domain"
    )]
    NumericTld { given: String, label: String },
    #[error(
        "{given:?} is not a valid internationalised name (UTS #46): it holds a character \
         IDNA disallows, an \"xn--\" label that is not valid Punycode of a valid label, or \
         text whose writing direction is not allowed in a label"
    )]
    InvalidIdna { given: String },
    #[error(
        "{given:?} is a public suffix (on the Public Suffix List's ICANN section), under \
         which anyone can register names, so no one can hold a certificate for it; name a \
         domain registered under it, e.g. example.{name}"
    )]
    PublicSuffix { given: String, name: String },
    #[error(
        "{given:?} is a wildcard over the public suffix {base:?}: it would cover every \
         domain registered under it, so CAs refuse it; write *.example.{base} for a domain \
         you hold"
    )]
    WildcardOverPublicSuffix { given: String, base: String },
    #[error(
        "{given:?}: \"*\" is allowed only as the whole first label of a wildcard (e.g. \
         *.example.net), and only where wildcards are accepted"
    )]
    MisplacedWildcard { given: String },
    #[error(
        "{given:?} has more than one wildcard label; a wildcard covers exactly one label \
         level: write it as \"*.{base}\""
    )]
    NestedWildcard { given: String, base: String },
}

/// At most this many characters of a refused identifier are repeated in its error.
const SHOWN_CHARS: usize = 100;

/// The refused text as an error repeats it: bounded, so a megabyte of garbage does not
/// become a megabyte of log line.
pub(crate) fn shown(s: &str) -> String {
    if s.chars().count() <= SHOWN_CHARS {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(SHOWN_CHARS).collect();
        out.push('…');
        out
    }
}

/// One identifier of a certificate.
///
/// Ordering (so identifier sets sort one way everywhere): IP addresses first (IPv4 before
/// IPv6, numerically, as [`canonical_set`]), then DNS names and wildcards together in the
/// byte order of their canonical text (so `*.example.net` sorts just before
/// `a.example.net`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    Ip(IpAddr),
    Dns(DnsName),
    /// `*.base`: every name exactly one label below `base` (RFC 6125 §6.4.3), for DNS-01.
    Wildcard(DnsName),
}

impl Identifier {
    /// Parses an identifier: an IP address in canonical form (see [`parse_ip`], whose
    /// errors for a near-miss such as `010.0.0.1` or `::ffff:1.2.3.4` are kept), else
    /// `*.base` as a wildcard, else a DNS name ([`DnsName::parse`]).
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        if s.is_empty() {
            return Err(IdentifierError::Empty);
        }
        if s.len() > MAX_INPUT_BYTES {
            return Err(IdentifierError::TooLong {
                given: shown(s),
                len: s.len(),
            });
        }
        if let Some(base) = s.strip_prefix("*.") {
            return name::parse_wildcard_base(s, base).map(Identifier::Wildcard);
        }
        match parse_ip(s) {
            Ok(ip) => Ok(Identifier::Ip(ip)),
            Err(IdentifierError::NotAnIp(_)) => DnsName::parse(s).map(Identifier::Dns),
            Err(near_miss) => Err(near_miss),
        }
    }

    /// The ACME identifier type (RFC 8555 §9.7.7, RFC 8738): `"ip"` or `"dns"` (a
    /// wildcard is a `"dns"` identifier whose value starts with `*.`).
    pub fn acme_type(&self) -> &'static str {
        match self {
            Identifier::Ip(_) => "ip",
            Identifier::Dns(_) | Identifier::Wildcard(_) => "dns",
        }
    }

    pub fn is_ip(&self) -> bool {
        matches!(self, Identifier::Ip(_))
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, Identifier::Wildcard(_))
    }

    pub fn as_ip(&self) -> Option<IpAddr> {
        match self {
            Identifier::Ip(ip) => Some(*ip),
            _ => None,
        }
    }

    /// The DNS name the CA validates: the name itself, or a wildcard's base (the
    /// authorization of `*.example.net` is for `example.net`, RFC 8555 §7.1.3).
    pub fn dns_name(&self) -> Option<&DnsName> {
        match self {
            Identifier::Ip(_) => None,
            Identifier::Dns(n) | Identifier::Wildcard(n) => Some(n),
        }
    }

    /// The registered domain (eTLD+1) the rate-limit budget counts a name or wildcard
    /// under; `None` for an IP (counted by address or /64) and for a name that is itself
    /// a suffix of the list's private section (see [`registered_domain`]).
    pub fn registered_domain(&self) -> Option<DnsName> {
        self.dns_name().and_then(registered_domain)
    }

    /// The canonical text: what a certificate, the store and the audit trail hold.
    pub fn to_canonical(&self) -> String {
        self.to_string()
    }
}

/// Sorts and de-duplicates a set of identifiers: the one order of a certificate's
/// identifier set (see [`Identifier`]'s ordering).
pub fn canonical_identifiers(mut ids: Vec<Identifier>) -> Vec<Identifier> {
    ids.sort();
    ids.dedup();
    ids
}

/// The identifiers a certificate or CSR names, from its IP and DNS SANs, canonical and
/// sorted (to compare with the identifiers asked for). A SAN that is not a valid
/// identifier is an error naming it.
pub fn from_sans(ips: &[IpAddr], dns_names: &[String]) -> Result<Vec<Identifier>, IdentifierError> {
    let mut out: Vec<Identifier> = ips.iter().map(|ip| Identifier::Ip(*ip)).collect();
    for n in dns_names {
        out.push(Identifier::parse(n)?);
    }
    Ok(canonical_identifiers(out))
}

/// Whether SANs name exactly `want` (in any order); the error says what they name instead.
pub fn check_sans(ips: &[IpAddr], dns_names: &[String], want: &[Identifier]) -> Result<(), String> {
    let named = from_sans(ips, dns_names)
        .map_err(|e| format!("it names something that is not an identifier: {e}"))?;
    let want = canonical_identifiers(want.to_vec());
    if named == want {
        return Ok(());
    }
    let show = |v: &[Identifier]| {
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "it names [{}], expected [{}]",
        show(&named),
        show(&want)
    ))
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identifier::Ip(ip) => write!(f, "{ip}"),
            Identifier::Dns(n) => f.write_str(n.as_str()),
            Identifier::Wildcard(base) => write!(f, "*.{}", base.as_str()),
        }
    }
}

impl FromStr for Identifier {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identifier::parse(s)
    }
}

impl From<IpAddr> for Identifier {
    fn from(ip: IpAddr) -> Self {
        Identifier::Ip(ip)
    }
}

impl From<DnsName> for Identifier {
    fn from(name: DnsName) -> Self {
        Identifier::Dns(name)
    }
}

impl Ord for Identifier {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Identifier::Ip(a), Identifier::Ip(b)) => a.cmp(b),
            (Identifier::Ip(_), _) => Ordering::Less,
            (_, Identifier::Ip(_)) => Ordering::Greater,
            (a, b) => name_bytes(a).cmp(name_bytes(b)),
        }
    }
}

impl PartialOrd for Identifier {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The canonical text of a name or wildcard, byte by byte, without allocating.
fn name_bytes(id: &Identifier) -> impl Iterator<Item = u8> + '_ {
    let (prefix, base): (&'static [u8], &str) = match id {
        Identifier::Wildcard(base) => (b"*.", base.as_str()),
        Identifier::Dns(n) => (b"", n.as_str()),
        Identifier::Ip(_) => (b"", ""),
    };
    prefix.iter().copied().chain(base.bytes())
}

impl serde::Serialize for Identifier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identifier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ParseVisitor::<Identifier>::new(
            "an IP address or a DNS name",
        ))
    }
}

/// Deserializes any of this module's types from a string through its `FromStr`, so that
/// stored and configured text is validated exactly as typed text is.
pub(crate) struct ParseVisitor<T> {
    expecting: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> ParseVisitor<T> {
    pub(crate) fn new(expecting: &'static str) -> Self {
        ParseVisitor {
            expecting,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T> serde::de::Visitor<'_> for ParseVisitor<T>
where
    T: FromStr<Err = IdentifierError>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}
