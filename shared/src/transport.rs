//! A tonic [`Channel`] to the coordinator over a rustls configuration we build ourselves
//! (tonic's built-in TLS cannot pin a CA by fingerprint).

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0:?} is not a coordinator URL; expected https://HOST:PORT")]
    BadUrl(String),
    #[error("cannot connect to the coordinator at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("cannot resolve the coordinator's host in {url}: {detail}")]
    Resolve { url: String, detail: String },
}

/// Host and port of an `https://HOST:PORT` URL.
pub fn parse_coordinator_url(url: &str) -> Result<(String, u16), TransportError> {
    let bad = || TransportError::BadUrl(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// Every address of `url`'s host (an IP literal is its own), sorted and without
/// repeats, each with the URL's port: a name with several addresses is several
/// coordinators to try, each dialled with the name as TLS server name
/// ([`connect_at`]).
pub async fn resolve(url: &str) -> Result<Vec<SocketAddr>, TransportError> {
    let (host, port) = parse_coordinator_url(url)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| TransportError::Resolve {
            url: url.to_owned(),
            detail: e.to_string(),
        })?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(TransportError::Resolve {
            url: url.to_owned(),
            detail: "no address".into(),
        });
    }
    Ok(addrs)
}

/// Connects to `url` (https://HOST:PORT) with `tls`. Fails fast if the coordinator cannot
/// be reached or the TLS handshake is refused.
pub async fn connect(url: &str, tls: Arc<ClientConfig>) -> Result<Channel, TransportError> {
    dial(url, None, tls).await
}

/// [`connect`] to one address of `url`'s host ([`resolve`]); the URL's host stays the TLS
/// server name (and the HTTP/2 authority), so the coordinator's certificate must name it.
pub async fn connect_at(
    url: &str,
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<Channel, TransportError> {
    dial(url, Some(addr), tls).await
}

async fn dial(
    url: &str,
    at: Option<SocketAddr>,
    tls: Arc<ClientConfig>,
) -> Result<Channel, TransportError> {
    let (host, port) = parse_coordinator_url(url)?;
    let server_name =
        ServerName::try_from(host.clone()).map_err(|_| TransportError::BadUrl(url.to_owned()))?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    // The endpoint is plain http for tonic: TLS is done by our connector below.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|_| TransportError::BadUrl(url.to_owned()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(tls);
    let addr = authority.clone();
    let shown = match at {
        Some(a) if a.to_string() != authority => format!("{url} ({a})"),
        _ => url.to_owned(),
    };
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let addr = addr.clone();
            async move {
                let tcp = match at {
                    Some(a) => TcpStream::connect(a).await?,
                    None => TcpStream::connect(&addr).await?,
                };
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| TransportError::Connect {
            url: shown,
            detail: error_chain(&e),
        })
}

/// Renders an error with its sources, for messages that must say what really failed.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_coordinator_url("https://127.0.0.1:7443").unwrap(),
            ("127.0.0.1".into(), 7443)
        );
        assert_eq!(
            parse_coordinator_url("https://[::1]:7443").unwrap(),
            ("::1".into(), 7443)
        );
        assert_eq!(
            parse_coordinator_url("https://c.example").unwrap(),
            ("c.example".into(), 443)
        );
        assert!(parse_coordinator_url("http://127.0.0.1:7443").is_err());
        assert!(parse_coordinator_url("not a url").is_err());
    }

    #[tokio::test]
    async fn resolving_literals_and_names() {
        assert_eq!(
            resolve("https://[::1]:7443").await.unwrap(),
            ["[::1]:7443".parse().unwrap()]
        );
        let local = resolve("https://localhost:7443").await.unwrap();
        assert!(
            !local.is_empty()
                && local
                    .iter()
                    .all(|a| a.port() == 7443 && a.ip().is_loopback()),
            "{local:?}"
        );
        let mut sorted = local.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(local, sorted, "sorted, no repeats");
        assert!(matches!(
            resolve("https://no-such-host.invalid:7443").await,
            Err(TransportError::Resolve { .. })
        ));
    }
}
