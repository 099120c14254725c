//! A tonic [`Channel`] to the coordinator over a rustls configuration we build ourselves
//! (tonic's built-in TLS cannot pin a CA by fingerprint).

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
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

/// Connects to `url` (https://HOST:PORT) with `tls`. Fails fast if the coordinator cannot
/// be reached or the TLS handshake is refused.
pub async fn connect(url: &str, tls: Arc<ClientConfig>) -> Result<Channel, TransportError> {
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
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let addr = addr.clone();
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| TransportError::Connect {
            url: url.to_owned(),
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
}
