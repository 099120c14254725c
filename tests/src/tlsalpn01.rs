//! A minimal TLS-ALPN-01 responder (RFC 8737; RFC 8738 for addresses): answers
//! `acme-tls/1` handshakes on the given addresses with a self-signed validation
//! certificate per identifier (SAN exactly the identifier, the critical acmeIdentifier
//! extension holding SHA-256 of the key authorization), chosen by SNI (the name, or the
//! reverse-DNS name of an address). Used by the direct-ACME baseline in the issuance
//! benchmark; the agent's own responder is `agent/src/tlsalpn01/`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinHandle;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Validation certificates by SNI (lower-case).
type Certs = Arc<Mutex<HashMap<String, Arc<CertifiedKey>>>>;

#[derive(Debug)]
pub struct TlsAlpn01Responder {
    certs: Certs,
    tasks: Vec<JoinHandle<()>>,
}

impl TlsAlpn01Responder {
    /// Binds `port` (pebble's `tlsPort`) on every address in `ips`.
    pub async fn bind(ips: &[IpAddr], port: u16) -> anyhow::Result<Self> {
        let certs: Certs = Arc::default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(certs.clone())));
        cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let mut tasks = Vec::new();
        for ip in ips {
            let addr = SocketAddr::new(*ip, port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} for TLS-ALPN-01"))?;
            let acceptor = acceptor.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // One handshake, then close: the CA sends no application data.
                        if let Ok(mut tls) = acceptor.accept(stream).await {
                            let _ = tls.shutdown().await;
                        }
                    });
                }
            }));
        }
        Ok(Self { certs, tasks })
    }

    /// Answers for `identifier` (a DNS name or an IP address) with a validation
    /// certificate carrying `digest` (SHA-256 of the key authorization, 32 bytes).
    pub fn insert(
        &self,
        identifier: &instant_acme::Identifier,
        digest: &[u8],
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            digest.len() == 32,
            "TLS-ALPN-01 needs the 32-byte SHA-256 of the key authorization, got {} bytes",
            digest.len()
        );
        let (sni, san) = match identifier {
            instant_acme::Identifier::Dns(name) => (
                name.to_ascii_lowercase(),
                SanType::DnsName(
                    name.clone()
                        .try_into()
                        .with_context(|| format!("not a DNS name: {name:?}"))?,
                ),
            ),
            instant_acme::Identifier::Ip(ip) => (reverse_name(*ip), SanType::IpAddress(*ip)),
            other => anyhow::bail!("TLS-ALPN-01 cannot validate {other:?}"),
        };
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![san];
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key)?;
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .context("the validation key")?;
        let certified = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(cert.der().to_vec())],
            signer,
        ));
        self.certs
            .lock()
            .map_err(|_| anyhow::anyhow!("TLS-ALPN-01 certificate table poisoned"))?
            .insert(sni, certified);
        Ok(())
    }
}

impl Drop for TlsAlpn01Responder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// RFC 8738's SNI for an address: `d.c.b.a.in-addr.arpa` or the `ip6.arpa` nibble name.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(String::from).collect();
            format!("{}.ip6.arpa", nibbles.join("."))
        }
    }
}

/// Only `acme-tls/1` handshakes with the SNI of a live challenge get a certificate.
#[derive(Debug)]
struct Resolver(Certs);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if !acme {
            return None;
        }
        let sni = hello.server_name()?.to_ascii_lowercase();
        self.0.lock().ok()?.get(&sni).cloned()
    }
}
