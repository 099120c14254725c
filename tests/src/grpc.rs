//! tonic channels to the coordinator over a hand-made tokio-rustls connector, so a test
//! decides exactly which client certificate (if any) is presented.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use crate::tlsutil;

/// Client TLS config for the coordinator: trusts only the fleet CA in `ca_pem`, ALPN
/// `h2`, presenting `client` (cert PEM, key PEM) when given.
pub fn client_config(
    ca_pem: &Path,
    client: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = tlsutil::certs_from_file(ca_pem)?;
    let auth = match client {
        Some((cert, key)) => Some((
            tlsutil::certs_from_file(cert)?,
            tlsutil::key_from_file(key)?,
        )),
        None => None,
    };
    tlsutil::client_config(&roots, auth, &[b"h2"])
}

/// Connects a tonic channel to `addr` over TLS with `cfg` (server name = the IP).
pub async fn channel(addr: SocketAddr, cfg: Arc<ClientConfig>) -> anyhow::Result<Channel> {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(channel)
}
