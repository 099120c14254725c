//! rustls client configurations for talking to the coordinator.
//!
//! - [`fleet_client_config`]: trust only the fleet CA, present a client identity (agents,
//!   operators).
//! - [`pinned_client_config`]: used once, at enrollment, before the agent has the fleet CA:
//!   the server's chain must contain a CA certificate whose SHA-256 equals the pin (like
//!   `kubeadm join --discovery-token-ca-cert-hash`), and the leaf must chain to it.
//! - [`observer_client_config`]: for the agent's served-certificate check: completes a
//!   handshake with whatever certificate a web server presents, so the caller can compare
//!   it byte for byte with the one it installed. It trusts nothing and sends nothing.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad PEM in {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0:?} is not a SHA-256 fingerprint (64 hex digits)")]
    BadFingerprint(String),
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a fingerprint given as 64 hex digits (colons allowed, any case).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let cleaned: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let bytes = hex::decode(&cleaned).map_err(|_| TlsError::BadFingerprint(s.to_owned()))?;
    bytes
        .try_into()
        .map_err(|_| TlsError::BadFingerprint(s.to_owned()))
}

/// Loads certificates from PEM text.
pub fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            detail: "no certificate".into(),
        });
    }
    Ok(certs)
}

/// Loads a private key from PEM text.
pub fn key_from_pem(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        detail: e.to_string(),
    })
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?)
}

fn finish(mut cfg: ClientConfig) -> Arc<ClientConfig> {
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// Trust only `ca_pem`; authenticate with `cert_pem` + `key_pem`.
pub fn fleet_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(ca_pem, "fleet CA")? {
        roots.add(ca)?;
    }
    let certs = certs_from_pem(cert_pem, "client certificate")?;
    let key = key_from_pem(key_pem, "client key")?;
    let cfg = builder()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    Ok(finish(cfg))
}

/// Trust a server whose chain contains the CA with this SHA-256 fingerprint; no client
/// certificate.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(Verifier {
        trust: Trust::PinnedCa(pin),
        provider: provider(),
    });
    let cfg = builder()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(finish(cfg))
}

/// Accept any certificate (TLS 1.2 or 1.3, no ALPN, no client certificate): the handshake
/// signature is still checked, but nothing is trusted. Only for observing which
/// certificate a server presents.
pub fn observer_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(Verifier {
        trust: Trust::Nothing,
        provider: provider(),
    });
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
enum Trust {
    /// Accept a server only if it sends a CA certificate matching the pin and its leaf
    /// verifies (signature, validity, name) against that CA alone.
    PinnedCa([u8; 32]),
    /// Accept any certificate: the caller only observes it.
    Nothing,
}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = match &self.trust {
            Trust::Nothing => return Ok(ServerCertVerified::assertion()),
            Trust::PinnedCa(pin) => pin,
        };
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the coordinator's CA does not match the --ca-sha256 fingerprint".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        let hexs = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&hexs).unwrap(), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
