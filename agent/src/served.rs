//! Served-certificate check: a TLS handshake with a verify address of a target, to see
//! which leaf the web server presents right now.
//!
//! The handshake accepts any certificate: it *observes*, it does not trust. The caller
//! compares the leaf byte for byte with the certificate it just installed, which is a
//! stronger check than chain validation (the old certificate chains fine too). No SNI is
//! sent for an IP address, as with a browser reaching `https://<ip>/`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// What one attempt saw at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The handshake completed and presented this leaf (DER).
    Leaf(Vec<u8>),
    /// No handshake: why (refused, timeout, TLS alert …).
    Unreachable(String),
}

#[derive(Debug)]
struct Observe(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Observe {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that observes whatever certificate is presented.
pub fn observer_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Observe(provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    match config {
        Ok(c) => Arc::new(c),
        // The ring provider supports the default versions; this cannot fail in practice,
        // but an error must not take the agent down.
        Err(_) => Arc::new(
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Observe(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))))
                .with_no_client_auth(),
        ),
    }
}

/// One handshake with `addr`, bounded by `timeout`.
pub async fn observe(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    timeout: Duration,
) -> Seen {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let (_, conn) = tls.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| "no certificate presented".to_owned())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(der)) => Seen::Leaf(der),
        Ok(Err(e)) => Seen::Unreachable(e),
        Err(_) => Seen::Unreachable(format!("no handshake within {} s", timeout.as_secs())),
    }
}
