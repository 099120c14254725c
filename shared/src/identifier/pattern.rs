//! `allowed_names` entries of a policy: an exact name, or `*.zone` for everything below a
//! zone.
//!
//! `*.zone` here is a *subtree*, not a certificate wildcard: it covers every name strictly
//! below `zone` at any depth (`*.example.net` covers `a.example.net` and
//! `a.b.example.net`), and every wildcard identifier whose names all lie below it
//! (`*.example.net` and `*.a.example.net`), but never `example.net` itself — list the
//! apex as its own exact entry when it is wanted. An exact entry covers that one name and
//! no wildcard; no pattern covers an IP address (those are `allowed_ips`).
//!
//! Patterns are parsed with the identifiers' own canonicalisation and rules, so
//! `*.ÉXAMPLE.net.` is `*.xn--xample-9ua.net`, and a zone that is a public suffix
//! (`*.com`, `*.co.uk`) or a single label (`*.internal`) is refused, as such a wildcard is.

use super::name::{parse_name, parse_wildcard_base, Context};
use super::{shown, DnsName, Identifier, IdentifierError, ParseVisitor, MAX_INPUT_BYTES};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamePattern {
    /// Exactly this name.
    Exact(DnsName),
    /// `*.zone`: every name strictly below `zone`, at any depth.
    Below(DnsName),
}

impl NamePattern {
    /// Parses `name` or `*.zone`; IP addresses are refused (they belong in
    /// `allowed_ips`), as is every name [`DnsName::parse`] refuses.
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
        match s.strip_prefix("*.") {
            Some(zone) => parse_wildcard_base(s, zone).map(NamePattern::Below),
            None => parse_name(s, s, Context::Name).map(NamePattern::Exact),
        }
    }

    /// True when the policy entry covers `id` (see the module documentation).
    pub fn matches(&self, id: &Identifier) -> bool {
        match (self, id) {
            (_, Identifier::Ip(_)) => false,
            (NamePattern::Exact(name), Identifier::Dns(n)) => n == name,
            (NamePattern::Exact(_), Identifier::Wildcard(_)) => false,
            (NamePattern::Below(zone), Identifier::Dns(n)) => n.is_under(zone),
            // `*.base` names exactly the names one label below `base`: all below `zone`
            // when `base` is `zone` or below it.
            (NamePattern::Below(zone), Identifier::Wildcard(base)) => base.is_at_or_under(zone),
        }
    }

    /// True when any of `patterns` covers `id` (an empty list covers nothing).
    pub fn any_matches(patterns: &[NamePattern], id: &Identifier) -> bool {
        patterns.iter().any(|p| p.matches(id))
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(name) => write!(f, "{name}"),
            NamePattern::Below(zone) => write!(f, "*.{zone}"),
        }
    }
}

impl FromStr for NamePattern {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NamePattern::parse(s)
    }
}

impl serde::Serialize for NamePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NamePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ParseVisitor::<NamePattern>::new(
            "a DNS name or a *.zone pattern",
        ))
    }
}
