//! TLS-ALPN-01 challenges (RFC 8737; RFC 8738 for IP addresses), in the mode
//! `[tls_alpn01]` configures:
//!
//! - **standalone** — the agent listens on `port` (443) of each of the host's addresses
//!   while at least one challenge is live.
//! - **loopback** — the same TLS responder on the loopback `listen` address, while a
//!   challenge is live; a front on port 443 (nginx `stream` + `ssl_preread`,
//!   `deploy/nginx/acme-tls-alpn.conf`) sends connections offering ALPN `acme-tls/1` here
//!   and everything else to the web server.
//!
//! The responder answers only handshakes that offer ALPN `acme-tls/1` with an SNI it
//! holds a live challenge for: the identifier itself for a DNS name, the reverse-DNS name
//! (`4.3.2.1.in-addr.arpa`, nibble `….ip6.arpa`) for an IP address. It answers with a
//! self-signed validation certificate whose only SAN is the identifier (dNSName or
//! iPAddress) and which carries the critical `id-pe-acmeIdentifier` extension holding
//! SHA-256(key authorization). Each challenge gets a fresh key, kept only in memory and
//! never logged. Every other handshake is refused; after a completed handshake the
//! connection is closed without application data.

mod listener;

use crate::config::{TlsAlpn01Config, TlsAlpn01Mode};
use crate::error::AgentFailure;
use crate::http01::{valid_token, valid_token_part, CHALLENGE_TTL};
use certfleet_shared::identifier::{reverse_name, Identifier};
use prometheus_client::metrics::counter::Counter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The ALPN protocol name of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One challenge to present, as the coordinator sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// One of this host's IP addresses, or a DNS name.
    pub identifier: String,
    pub token: String,
    pub key_authorization: String,
}

/// A live challenge: the SNI it answers and the validation certificate with its key.
/// No `Debug`: the key must never reach a log.
struct Entry {
    sni: String,
    certified: Arc<CertifiedKey>,
    expires: Instant,
}

/// Live challenges by token.
type Table = Arc<Mutex<HashMap<String, Entry>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Presents and clears TLS-ALPN-01 challenges.
pub struct Responder {
    mode: TlsAlpn01Mode,
    ips: Vec<IpAddr>,
    table: Table,
    listeners: listener::Listeners,
    ttl: Duration,
}

impl Responder {
    /// A responder for this host's `ips` in the mode `config` names (validated at load).
    /// `served` counts completed validation handshakes.
    pub fn new(
        ips: Vec<IpAddr>,
        config: &TlsAlpn01Config,
        served: Counter,
    ) -> Result<Self, rustls::Error> {
        let table = Table::default();
        let (addrs, purpose) = match (config.mode, config.listen) {
            (TlsAlpn01Mode::Loopback, Some(listen)) => (vec![listen], listener::Purpose::Loopback),
            // Standalone (and a config that skipped validation: fall back to standalone).
            _ => (
                ips.iter()
                    .map(|ip| SocketAddr::new(*ip, config.port()))
                    .collect(),
                listener::Purpose::Standalone,
            ),
        };
        let mode = match purpose {
            listener::Purpose::Loopback => TlsAlpn01Mode::Loopback,
            listener::Purpose::Standalone => TlsAlpn01Mode::Standalone,
        };
        let resolver = Arc::new(Resolver {
            table: table.clone(),
        });
        Ok(Self {
            mode,
            ips,
            listeners: listener::listeners(addrs, purpose, server_config(resolver)?, served),
            table,
            ttl: CHALLENGE_TTL,
        })
    }

    /// The mode this responder serves in.
    pub fn mode(&self) -> TlsAlpn01Mode {
        self.mode
    }

    /// Where the responder listens while a challenge is live.
    pub fn addrs(&self) -> &[SocketAddr] {
        self.listeners.addrs()
    }

    /// Makes the challenges answerable. Either every challenge is presented or, on error,
    /// none of the new ones. Returns the tokens this call added (not live before), so a
    /// caller presenting other kinds in the same command can take them back.
    pub async fn present(&self, challenges: &[Challenge]) -> Result<Vec<String>, AgentFailure> {
        let mut made = Vec::with_capacity(challenges.len());
        for c in challenges {
            let id = self.check_challenge(c)?;
            let certified = validation_cert(&id, &c.key_authorization)?;
            made.push((c.token.clone(), sni_of(&id), certified));
        }
        let fresh: Vec<String> = {
            let mut table = lock(&self.table);
            let expires = Instant::now() + self.ttl;
            made.into_iter()
                .filter_map(|(token, sni, certified)| {
                    let entry = Entry {
                        sni,
                        certified,
                        expires,
                    };
                    table
                        .insert(token.clone(), entry)
                        .is_none()
                        .then_some(token)
                })
                .collect()
        };
        if let Err(e) = self.listeners.ensure().await {
            self.forget(&fresh);
            return Err(e);
        }
        Ok(fresh)
    }

    /// Removes challenges (tokens this agent does not hold are ignored); stops listening
    /// when none are left.
    pub fn clear(&self, tokens: &[String]) {
        self.forget(tokens);
    }

    /// Removes every live challenge (at shutdown).
    /// Once nothing is live: waits until the listeners have closed their sockets.
    pub async fn wait_stopped(&self) {
        self.listeners.wait_stopped().await;
    }

    pub fn clear_all(&self) {
        let all: Vec<String> = lock(&self.table).keys().cloned().collect();
        self.forget(&all);
    }

    /// At shutdown: removes every live challenge and closes the listeners for good,
    /// waiting (at most `within`) for their handshakes to end.
    pub async fn close(&self, within: Duration) {
        self.clear_all();
        self.listeners.close(within).await;
    }

    /// Drops expired challenges (called periodically).
    pub fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<String> = lock(&self.table)
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(t, _)| t.clone())
            .collect();
        self.forget(&expired);
    }

    /// Whether the responder is listening (only while a challenge is live).
    pub fn is_listening(&self) -> bool {
        self.listeners.is_listening()
    }

    fn check_challenge(&self, c: &Challenge) -> Result<Identifier, AgentFailure> {
        let id = parse_identifier(&c.identifier)?;
        if let Identifier::Ip(ip) = id {
            if !self.ips.contains(&ip) {
                return Err(AgentFailure::new(
                    "not_my_ip",
                    format!("{ip} is not one of this host's configured ips"),
                ));
            }
        }
        if !valid_token(&c.token) {
            return Err(AgentFailure::bad_request("malformed challenge token"));
        }
        let thumb = c
            .key_authorization
            .strip_prefix(c.token.as_str())
            .and_then(|r| r.strip_prefix('.'));
        if !thumb.is_some_and(valid_token_part) {
            return Err(AgentFailure::bad_request("malformed key authorization"));
        }
        Ok(id)
    }

    /// Removes `tokens` from the table; stops listening when idle.
    fn forget(&self, tokens: &[String]) {
        let mut table = lock(&self.table);
        for t in tokens {
            table.remove(t.as_str());
        }
        // Checked and stopped under the table lock, so a concurrent `present` either sees
        // the listener gone or has its entries counted here.
        if table.is_empty() {
            self.listeners.stop();
        }
    }

    #[cfg(test)]
    fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// A challenge's identifier in the shared model (`certfleet_shared::identifier`): an IP
/// address or a DNS name, in canonical form (what the coordinator sends; a spelling
/// that needs canonicalising is refused, not silently changed). Wildcards cannot be
/// validated by TLS-ALPN-01 (RFC 8737 §3).
fn parse_identifier(s: &str) -> Result<Identifier, AgentFailure> {
    let bad = |m: String| AgentFailure::bad_request(format!("challenge identifier: {m}"));
    let id = Identifier::parse(s).map_err(|e| bad(e.to_string()))?;
    if id.is_wildcard() {
        return Err(bad(format!(
            "{id} is a wildcard, which TLS-ALPN-01 cannot validate (RFC 8737 §3); use DNS-01"
        )));
    }
    if id.to_string() != s {
        let shown: String = s.chars().take(80).collect();
        return Err(bad(format!(
            "{shown:?} is not in canonical form; the coordinator sends {:?}",
            id.to_string()
        )));
    }
    Ok(id)
}

/// The SNI the CA sends for an identifier: the name itself, or for an IP address its
/// reverse-DNS name (RFC 8738 §6).
fn sni_of(id: &Identifier) -> String {
    match id {
        Identifier::Ip(ip) => reverse_name(*ip),
        other => other.to_string(),
    }
}

/// A fresh P-256 key and the self-signed validation certificate for `id`: its only SAN
/// is the identifier, and the critical acmeIdentifier extension (1.3.6.1.5.5.7.1.31)
/// holds the DER OCTET STRING of SHA-256(key authorization) (RFC 8737 §3).
fn validation_cert(
    id: &Identifier,
    key_authorization: &str,
) -> Result<Arc<CertifiedKey>, AgentFailure> {
    use sha2::Digest;
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        AgentFailure::new(
            "internal",
            format!("making the TLS-ALPN-01 validation certificate: {what}: {e}"),
        )
    };
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![match id {
        Identifier::Ip(ip) => rcgen::SanType::IpAddress(*ip),
        other => rcgen::SanType::DnsName(
            other
                .to_string()
                .try_into()
                .map_err(|e| internal("the name", &e))?,
        ),
    }];
    let digest = sha2::Sha256::digest(key_authorization.as_bytes());
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| internal("key", &e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| internal("signing", &e))?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| internal("key for TLS", &e))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Picks the validation certificate for a ClientHello: ALPN `acme-tls/1` offered and a
/// live challenge for its SNI, or no certificate (the handshake fails).
struct Resolver {
    table: Table,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if !acme {
            tracing::debug!("TLS-ALPN-01: handshake without ALPN acme-tls/1 refused");
            return None;
        }
        let Some(sni) = hello.server_name() else {
            tracing::debug!("TLS-ALPN-01: handshake without SNI refused");
            return None;
        };
        let sni = sni.to_ascii_lowercase();
        let now = Instant::now();
        let found = lock(&self.table)
            .values()
            .filter(|e| e.sni == sni && e.expires > now)
            .max_by_key(|e| e.expires)
            .map(|e| e.certified.clone());
        if found.is_none() {
            let shown: String = sni.chars().take(80).collect();
            tracing::debug!(sni = %shown, "TLS-ALPN-01: no live challenge for this SNI; refused");
        }
        found
    }
}

/// TLS 1.2 and 1.3 (RFC 8737 §4 asks for at least 1.2), ALPN `acme-tls/1` only, no
/// session tickets (nothing is resumed: every handshake is a fresh validation).
fn server_config(resolver: Arc<Resolver>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests;
