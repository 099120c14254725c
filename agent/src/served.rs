//! Served-certificate check: a TLS handshake with a verify address of a target, to see
//! which leaf the web server presents right now.
//!
//! The handshake (`certfleet_shared::tls::observer_client_config`) accepts any
//! certificate: it *observes*, it does not trust. The caller
//! compares the leaf byte for byte with the certificate it just installed, which is a
//! stronger check than chain validation (the old certificate chains fine too).
//!
//! SNI, as a client of the certificate would send it ([`sni_name`]): for a certificate
//! with DNS names, its first name that is not a wildcard (so a web server with one virtual
//! host per name picks the virtual host the certificate was installed for); for an
//! IP-only certificate none, as with a browser reaching `https://<ip>/`. The TCP
//! connection always goes to the verify address itself; the name is never resolved.

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

/// The SNI for the served check of a certificate with these dNSName SANs: the first name
/// that is not a wildcard; for a certificate with only wildcards, a name one label below
/// the first one's base (`certfleet-served-check.example.net` for `*.example.net`), which
/// the wildcard covers; `None` (no SNI) for a certificate without names.
///
/// The first name, because the coordinator orders a certificate's identifiers one way
/// (canonically), so the check asks for the same name on every install of that
/// certificate; any of its names selects the virtual host the certificate is for.
pub fn sni_name(dns_names: &[String]) -> Option<String> {
    let usable = |n: &&String| ServerName::try_from(n.as_str()).is_ok();
    if let Some(name) = dns_names
        .iter()
        .filter(|n| !n.starts_with("*."))
        .find(usable)
    {
        return Some(name.clone());
    }
    dns_names
        .iter()
        .filter_map(|n| n.strip_prefix("*."))
        .map(|base| format!("certfleet-served-check.{base}"))
        .find(|n| ServerName::try_from(n.as_str()).is_ok())
}

/// One handshake with `addr` (SNI `sni` when given, none otherwise), bounded by `timeout`.
pub async fn observe(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: Option<&str>,
    timeout: Duration,
) -> Seen {
    let attempt = async {
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_owned())
                .map_err(|e| format!("{n:?} cannot be sent as SNI: {e}"))?,
            // rustls sends no SNI for an IP address.
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sni_is_the_first_plain_name_or_none() {
        assert_eq!(sni_name(&[]), None, "IP-only: no SNI");
        assert_eq!(
            sni_name(&names(&["a.example.net", "b.example.net"])).as_deref(),
            Some("a.example.net")
        );
        assert_eq!(
            sni_name(&names(&["*.example.net", "www.example.org"])).as_deref(),
            Some("www.example.org"),
            "a wildcard cannot be sent as SNI"
        );
        assert_eq!(
            sni_name(&names(&["*.example.net"])).as_deref(),
            Some("certfleet-served-check.example.net"),
            "a name the wildcard covers"
        );
    }
}
