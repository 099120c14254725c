//! The coordinator's configuration: strict (`deny_unknown_fields`), versioned, with
//! environment overrides (`CERTFLEET_SECTION__KEY`) and a `validate()` that names what to
//! fix.

use base64::Engine;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub const CONFIG_VERSION: u32 = 1;
const ENV_PREFIX: &str = "CERTFLEET_";
/// Variables under the prefix that are not config overrides.
const ENV_SKIP: &[&str] = &[
    "CERTFLEET_CONFIG",
    "CERTFLEET_LOG_FORMAT",
    "CERTFLEET_COORDINATOR",
];

pub use certfleet_shared::configenv::ConfigError;

pub mod diff;
mod dns;
pub use dns::{
    parse_nameserver, validate_providers, DnsProviderConfig, DnsProviderKind, TsigAlgorithmName,
};
mod store;
pub use store::{StoreBackend, StoreConfig};
mod fleet;
pub use fleet::FleetConfig;
mod web;
pub use web::WebConfig;
mod policy;
pub use policy::{
    in_some_zone, CertificateConfig, ChallengeKind, IpSelection, NameTemplate, PolicyConfig,
    DEFAULT_CERT, REQUESTED,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    pub state_dir: PathBuf,
    pub server: ServerConfig,
    #[serde(default)]
    pub issuance: IssuanceConfig,
    #[serde(rename = "issuer", default)]
    pub issuers: Vec<IssuerConfig>,
    /// Certificate specs by host labels; the first matching policy wins. A host no policy
    /// matches gets the default spec from `[issuance]`.
    #[serde(rename = "policy", default)]
    pub policies: Vec<PolicyConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Who writes DNS-01 TXT records, per zone (`config/dns.rs`).
    #[serde(rename = "dns_provider", default)]
    pub dns_providers: Vec<DnsProviderConfig>,
    /// Where the state lives: sled in `state_dir` (default) or PostgreSQL
    /// (`config/store.rs`).
    #[serde(default)]
    pub store: StoreConfig,
    /// Host life: decommissioning silent hosts, revocation on address loss
    /// (`config/fleet.rs`).
    #[serde(default)]
    pub fleet: FleetConfig,
    /// The read-only web view (`config/web.rs`); off without `listen`.
    #[serde(default)]
    pub web: WebConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on `http://<listen>/metrics`; off when unset. Bind it to a
    /// private address: the metrics name hosts and certificates.
    pub listen: Option<SocketAddr>,
}

/// A CIDR block or a single address (as a /32 or /128); host bits set are refused.
pub use certfleet_shared::identifier::parse_net;

/// Rate limits an issuer declares, which the coordinator then counts itself.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimits {
    /// Let's Encrypt's published limits.
    Letsencrypt,
    /// Not counted.
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_names")]
    pub names: Vec<String>,
    #[serde(default = "default_ips", deserialize_with = "ip_list")]
    pub ips: Vec<IpAddr>,
    /// Lifetime of agent identity certificates; agents rotate them over their session
    /// when a third is left. Default 7 days; 30 s to 1 year.
    #[serde(
        default = "default_identity_lifetime",
        deserialize_with = "certfleet_shared::timefmt::de_secs",
        alias = "identity_lifetime"
    )]
    pub identity_lifetime_secs: u64,
    /// Lifetime of the coordinator's own TLS server certificate; it renews itself at two
    /// thirds, without a restart. Default 90 days; 30 s to 825 days.
    #[serde(
        default = "default_certificate_lifetime",
        deserialize_with = "certfleet_shared::timefmt::de_secs",
        alias = "certificate_lifetime"
    )]
    pub certificate_lifetime_secs: u64,
}

fn default_certificate_lifetime() -> u64 {
    crate::fleet_ca::SERVER_LIFETIME_SECS as u64
}

/// `[server] ips`, with an error that names the entry and the value (serde's own says
/// only "invalid IP address syntax").
fn ip_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "[server] ips[{i}] = {:?} is not an IP address",
                    s.chars().take(64).collect::<String>()
                ))
            })
        })
        .collect()
}

fn default_identity_lifetime() -> u64 {
    7 * 24 * 3600
}

fn default_names() -> Vec<String> {
    vec!["localhost".into()]
}
fn default_ips() -> Vec<IpAddr> {
    vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
    ]
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
pub enum KeyTypeName {
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    /// RSA keys, for clients that cannot use ECDSA (generated on the host).
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceConfig {
    /// Issuer for host certificates; defaults to the only issuer when there is one.
    pub issuer: Option<String>,
    #[serde(default)]
    pub key_type: KeyTypeName,
    /// Target name on the agent; defaults to the agent's only target.
    pub target: Option<String>,
    #[serde(
        default = "default_validation_timeout",
        deserialize_with = "certfleet_shared::timefmt::de_secs",
        alias = "validation_timeout"
    )]
    pub validation_timeout_secs: u64,
    /// First retry delay after a failure; later ones grow tenfold (1 min, 10 min, 100 min,
    /// then every 4 h), with jitter.
    #[serde(
        default = "default_retry_base",
        deserialize_with = "certfleet_shared::timefmt::de_secs",
        alias = "retry_base"
    )]
    pub retry_base_secs: u64,
}

fn default_retry_base() -> u64 {
    60
}

impl IssuanceConfig {
    pub fn retry_backoff(&self) -> certfleet_shared::backoff::Backoff {
        certfleet_shared::backoff::Backoff {
            base: std::time::Duration::from_secs(self.retry_base_secs),
            ..certfleet_shared::backoff::Backoff::ISSUANCE
        }
    }
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            key_type: KeyTypeName::default(),
            target: None,
            validation_timeout_secs: default_validation_timeout(),
            retry_base_secs: default_retry_base(),
        }
    }
}

fn default_validation_timeout() -> u64 {
    90
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub name: String,
    /// ACME directory URL; may be omitted when `preset` names a known CA.
    #[serde(default)]
    pub directory: String,
    /// "letsencrypt" or "letsencrypt-staging": fills `directory` and `rate_limits`.
    pub preset: Option<String>,
    /// Rate limits to count for this issuer; default: Let's Encrypt's for the LE presets and
    /// directories, none otherwise.
    pub rate_limits: Option<RateLimits>,
    #[serde(default)]
    pub contact: Vec<String>,
    /// Trust only this root (PEM) for the CA's HTTPS endpoint instead of the system roots.
    pub trust_root: Option<PathBuf>,
    pub eab_kid: Option<String>,
    /// base64url HMAC key for external account binding.
    pub eab_hmac_key: Option<String>,
    /// Profile asked for when a certificate has IP identifiers and the CA offers profiles;
    /// "" asks for none.
    #[serde(default = "default_ip_profile")]
    pub ip_profile: String,
    #[serde(default)]
    pub allow_private_ips: bool,
}

fn default_ip_profile() -> String {
    "shortlived".into()
}

impl std::fmt::Debug for IssuerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerConfig")
            .field("name", &self.name)
            .field("directory", &self.directory)
            .field("preset", &self.preset)
            .field("rate_limits", &self.rate_limits)
            .field("contact", &self.contact)
            .field("trust_root", &self.trust_root)
            .field("eab_kid", &self.eab_kid)
            .field(
                "eab_hmac_key",
                &self.eab_hmac_key.as_ref().map(|_| "<redacted>"),
            )
            .field("ip_profile", &self.ip_profile)
            .field("allow_private_ips", &self.allow_private_ips)
            .finish()
    }
}

pub const LETSENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING_DIRECTORY: &str =
    "https://acme-staging-v02.api.letsencrypt.org/directory";

impl IssuerConfig {
    /// Fills `directory` from `preset`.
    fn apply_preset(&mut self) -> Result<(), String> {
        let url = match self.preset.as_deref() {
            None => return Ok(()),
            Some("letsencrypt") => LETSENCRYPT_DIRECTORY,
            Some("letsencrypt-staging") => LETSENCRYPT_STAGING_DIRECTORY,
            Some(other) => {
                return Err(format!(
                "[[issuer]] {:?}: unknown preset {other:?}; use letsencrypt or letsencrypt-staging",
                self.name
            ))
            }
        };
        if !self.directory.is_empty() && self.directory != url {
            return Err(format!(
                "[[issuer]] {:?}: preset and directory disagree; give one of them",
                self.name
            ));
        }
        self.directory = url.to_owned();
        Ok(())
    }

    /// The limits this issuer is counted against.
    pub fn rate_limits(&self) -> RateLimits {
        self.rate_limits
            .unwrap_or(if self.directory.contains(".api.letsencrypt.org/") {
                RateLimits::Letsencrypt
            } else {
                RateLimits::None
            })
    }

    /// Whether this issuer is Let's Encrypt (production or staging): a preset, or a
    /// directory on `*.api.letsencrypt.org`.
    pub fn is_letsencrypt(&self) -> bool {
        if matches!(
            self.preset.as_deref(),
            Some("letsencrypt" | "letsencrypt-staging")
        ) {
            return true;
        }
        let Some(rest) = self.directory.strip_prefix("https://") else {
            return false;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        let host = host
            .strip_suffix(":443")
            .unwrap_or(host)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        host == "api.letsencrypt.org" || host.ends_with(".api.letsencrypt.org")
    }

    /// The decoded EAB HMAC key, if configured.
    pub fn eab(&self) -> Option<(String, Vec<u8>)> {
        match (&self.eab_kid, &self.eab_hmac_key) {
            (Some(kid), Some(key)) => decode_b64url(key).map(|k| (kid.clone(), k)),
            _ => None,
        }
    }
}

/// Largest PEM file the config may name (a CA bundle of a few hundred roots fits).
const MAX_PEM_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Checks that the file at `path` holds at least one PEM certificate and that every
/// `CERTIFICATE` block in it is a well-formed X.509 certificate.
fn check_pem_certificates(path: &Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(format!(
            "{} bytes is too large for a PEM file of CA certificates",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let hint = "it must hold the CA's root certificate in PEM \
                (-----BEGIN CERTIFICATE----- …); a key or a DER file does not do";
    let mut count = 0;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&bytes) {
        count += 1;
        let cert =
            cert.map_err(|e| format!("certificate {count} is not valid PEM ({e}); {hint}"))?;
        X509Certificate::from_der(&cert)
            .map_err(|e| format!("certificate {count} is malformed ({e}); {hint}"))?;
    }
    if count == 0 {
        return Err(format!(
            "holds no certificate{}; {hint}",
            if bytes.is_empty() {
                " (the file is empty)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    let trimmed = s.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()
        .filter(|k| !k.is_empty())
}

impl Config {
    /// Reads, applies environment overrides, parses and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text, path, std::env::vars())
    }

    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |detail: String| ConfigError::Parse {
            path: path.into(),
            detail,
        };
        let vars = env
            .into_iter()
            .filter(|(k, _)| !k.starts_with("CERTFLEET_AGENT_"));
        let mut cfg: Config =
            certfleet_shared::configenv::parse_with_env(text, ENV_PREFIX, ENV_SKIP, vars)
                .map_err(parse_err)?;
        for i in &mut cfg.issuers {
            i.apply_preset().map_err(|detail| ConfigError::Invalid {
                path: path.into(),
                detail,
            })?;
        }
        cfg.validate().map_err(|detail| ConfigError::Invalid {
            path: path.into(),
            detail,
        })?;
        Ok(cfg)
    }

    /// Checks what serde cannot: references, formats, files.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != CONFIG_VERSION {
            return Err(format!(
                "version = {} is not supported; this coordinator reads version = {CONFIG_VERSION}",
                self.version
            ));
        }
        if !(30..=365 * 24 * 3600).contains(&self.server.identity_lifetime_secs) {
            return Err(format!(
                "[server] identity_lifetime_secs = {} must be between 30 and 31536000 (1 year)",
                self.server.identity_lifetime_secs
            ));
        }
        if !(30..=825 * 24 * 3600).contains(&self.server.certificate_lifetime_secs) {
            return Err(format!(
                "[server] certificate_lifetime_secs = {} must be between 30 and 71280000 (825 days)",
                self.server.certificate_lifetime_secs
            ));
        }
        self.store.validate()?;
        self.fleet.validate()?;
        self.web.validate()?;
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state_dir {:?} must be an absolute path",
                self.state_dir
            ));
        }
        if self.server.names.is_empty() && self.server.ips.is_empty() {
            return Err(
                "[server] needs at least one of names or ips for the server certificate".into(),
            );
        }
        for n in &self.server.names {
            if rustls::pki_types::DnsName::try_from(n.as_str()).is_err() {
                return Err(format!("[server] names: {n:?} is not a valid DNS name"));
            }
        }
        if self.issuers.is_empty() {
            return Err("no [[issuer]] configured; add one with name and directory".into());
        }
        let mut names = HashSet::new();
        for i in &self.issuers {
            let ctx = |m: String| format!("[[issuer]] {:?}: {m}", i.name);
            if i.name.is_empty()
                || !i
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "[[issuer]] name {:?} must be non-empty letters, digits, - or _",
                    i.name
                ));
            }
            if !names.insert(i.name.as_str()) {
                return Err(ctx("name is used twice".into()));
            }
            if !i.directory.starts_with("https://") {
                return Err(ctx(format!(
                    "directory {:?} must be an https:// URL",
                    i.directory
                )));
            }
            for c in &i.contact {
                if !c.starts_with("mailto:") {
                    return Err(ctx(format!("contact {c:?} must be a mailto: URI")));
                }
            }
            match (&i.eab_kid, &i.eab_hmac_key) {
                (Some(_), None) | (None, Some(_)) => {
                    return Err(ctx("eab_kid and eab_hmac_key go together".into()))
                }
                (Some(_), Some(k)) if decode_b64url(k).is_none() => {
                    return Err(ctx(
                        "eab_hmac_key is not base64url (as the CA shows it)".into()
                    ))
                }
                _ => {}
            }
            if let Some(root) = &i.trust_root {
                if !root.is_file() {
                    return Err(ctx(format!("trust_root {} does not exist", root.display())));
                }
            }
            if i.allow_private_ips && i.is_letsencrypt() {
                return Err(ctx(format!(
                    "allow_private_ips = true cannot work with Let's Encrypt ({}): it refuses \
                     private and special-purpose addresses (10/8, 192.168/16, loopback, \
                     link-local, fc00::/7, documentation ranges …), so every order for one \
                     would fail at the CA; remove allow_private_ips (a private address is then \
                     refused before any order; a [[policy]] with ips = \"public\" leaves them \
                     out), or point this issuer at a private CA (directory, and trust_root for \
                     its HTTPS)",
                    i.directory
                )));
            }
        }
        let issuer = self.default_issuer_name().ok_or_else(|| {
            "[issuance] issuer is not set and there is more than one [[issuer]]; name one"
                .to_string()
        })?;
        if !self.issuers.iter().any(|i| i.name == issuer) {
            return Err(format!(
                "[issuance] issuer {issuer:?} is not one of the configured [[issuer]] names"
            ));
        }
        let mut policy_names = HashSet::new();
        for p in &self.policies {
            if p.name.is_empty() || !policy_names.insert(p.name.as_str()) {
                return Err(format!(
                    "[[policy]] name {:?} must be non-empty and unique",
                    p.name
                ));
            }
            p.validate(&self.issuers, &self.dns_zones())?;
        }
        // A key group is one certificate: given by one [[policy.certificate]] only.
        let mut groups: HashMap<&str, (&str, &str)> = HashMap::new();
        for p in &self.policies {
            for c in &p.certificates {
                let Some(g) = &c.key_group else { continue };
                if let Some((op, oc)) = groups.insert(g, (&p.name, &c.name)) {
                    return Err(format!(
                        "[[policy]] {:?}, [[policy.certificate]] {:?}: key_group {g:?} is also given by [[policy]] {op:?}, [[policy.certificate]] {oc:?}; a key group is one certificate, so give each its own group name",
                        p.name, c.name
                    ));
                }
            }
        }
        if self.issuance.retry_base_secs == 0 || self.issuance.retry_base_secs > 3600 {
            return Err("[issuance] retry_base_secs must be between 1 and 3600".into());
        }
        if self.issuance.validation_timeout_secs == 0
            || self.issuance.validation_timeout_secs > 3600
        {
            return Err("[issuance] validation_timeout_secs must be between 1 and 3600".into());
        }
        validate_providers(&self.dns_providers)?;
        Ok(())
    }

    /// Every zone a `[[dns_provider]]` serves, its `delegated_zones` included (those that
    /// parse; each provider's own validation names a bad one).
    pub fn dns_zones(&self) -> Vec<certfleet_shared::identifier::DnsName> {
        self.dns_providers
            .iter()
            .flat_map(|p| p.zones.iter().chain(&p.delegated_zones))
            .filter_map(|z| certfleet_shared::identifier::DnsName::parse(z).ok())
            .collect()
    }

    /// Reads every PEM file the config names (each `[[issuer]] trust_root`) and refuses
    /// one that holds no certificate, naming the file and its key. `serve` calls this at
    /// start, so a wrong file stops the daemon instead of failing the first ACME call.
    /// Not part of [`Config::load`]: operator commands do not read these files (and may
    /// not be allowed to).
    pub fn check_files(&self, path: &Path) -> Result<(), ConfigError> {
        for i in &self.issuers {
            if let Some(root) = &i.trust_root {
                check_pem_certificates(root).map_err(|why| ConfigError::Invalid {
                    path: path.into(),
                    detail: format!(
                        "[[issuer]] {:?}: trust_root {}: {why}",
                        i.name,
                        root.display()
                    ),
                })?;
            }
        }
        Ok(())
    }

    /// Things that are allowed but likely to bite (logged at `serve` start).
    pub fn warnings(&self) -> Vec<String> {
        self.policies
            .iter()
            .flat_map(|p| p.shared_set_warnings())
            .collect()
    }

    pub fn default_issuer_name(&self) -> Option<&str> {
        match &self.issuance.issuer {
            Some(n) => Some(n),
            None if self.issuers.len() == 1 => Some(&self.issuers[0].name),
            None => None,
        }
    }

    /// The URL operators use by default: the listen address, with a wildcard replaced by
    /// loopback.
    pub fn local_url(&self) -> String {
        let addr = self.server.listen;
        let host = match addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_string(),
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        format!("https://{host}:{}", addr.port())
    }
}

#[cfg(test)]
mod tests;
