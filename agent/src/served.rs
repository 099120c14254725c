//! Served-certificate check: a TLS handshake with a verify address of a target, to see
//! which leaf the web server presents right now.
//!
//! The handshake (`certfleet_shared::tls::observer_client_config`) accepts any
//! certificate: it *observes*, it does not trust. The caller
//! compares the leaf byte for byte with the certificate it just installed, which is a
//! stronger check than chain validation (the old certificate chains fine too). No SNI is
//! sent for an IP address, as with a browser reaching `https://<ip>/`.

use rustls::pki_types::ServerName;
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
