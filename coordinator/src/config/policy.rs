//! `[[policy]]`: which certificate the hosts whose labels match get — which addresses, by
//! whom, with which key, into which of the agent's targets.

use super::{parse_net, IssuerConfig, KeyTypeName};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Which of a host's addresses a certificate covers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpSelection {
    #[default]
    All,
    /// Only addresses outside the special-purpose ranges.
    Public,
}

/// An ACME challenge type, in the spelling of RFC 8555 / 8737.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }

    /// The order tried when a certificate does not say: HTTP-01, then TLS-ALPN-01.
    pub fn default_order() -> Vec<ChallengeKind> {
        vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    /// Every label here must be on the host (from enrollment). Empty matches every host.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Issuer for this policy; default: `[issuance] issuer`.
    pub issuer: Option<String>,
    /// Instead of `issuer`: an ordered list; when one CA fails, the next is tried.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// A profile the certificate must have. When set and the CA does not offer it, the
    /// certificate goes to an error state instead of silently getting another lifetime.
    pub profile: Option<String>,
    /// Target on the agent; default: `[issuance] target`, else the agent's only target.
    pub target: Option<String>,
    pub key_type: Option<KeyTypeName>,
    #[serde(default)]
    pub ips: IpSelection,
    /// Addresses (CIDR blocks, or single addresses) the policy's hosts may claim. Empty:
    /// any. A host claiming an address outside gets no certificate with it: the
    /// certificate is `refused`, naming the address and this list.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
}

impl PolicyConfig {
    /// `allowed_ips` parsed (validated at load, so nothing is dropped here).
    pub fn allowed_nets(&self) -> Vec<ipnet::IpNet> {
        self.allowed_ips
            .iter()
            .filter_map(|s| parse_net(s).ok())
            .collect()
    }

    /// Everything `Config::validate` checks about one policy.
    pub(super) fn validate(&self, issuers: &[IssuerConfig]) -> Result<(), String> {
        let ctx = |m: String| format!("[[policy]] {:?}: {m}", self.name);
        check_issuers(&self.issuer, &self.issuers, issuers).map_err(ctx)?;
        for n in &self.allowed_ips {
            parse_net(n).map_err(|e| ctx(format!("allowed_ips: {e}")))?;
        }
        Ok(())
    }
}

/// The name of the certificate every host has (one per host for now; the policy will list
/// several).
pub const DEFAULT_CERT: &str = "default";

fn check_issuers(
    issuer: &Option<String>,
    list: &[String],
    configured: &[IssuerConfig],
) -> Result<(), String> {
    if issuer.is_some() && !list.is_empty() {
        return Err("give issuer or issuers, not both".into());
    }
    for i in issuer.iter().chain(list) {
        if !configured.iter().any(|x| &x.name == i) {
            return Err(format!(
                "issuer {i:?} is not one of the configured [[issuer]] names"
            ));
        }
    }
    Ok(())
}
