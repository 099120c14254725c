//! The agent's TLS-ALPN-01 listeners: standalone on `port` of each of the host's
//! addresses, loopback on `[tls_alpn01] listen`. They listen only while a challenge is
//! live; each connection gets one handshake (the resolver in `mod.rs` decides whether it
//! succeeds) and is then closed without application data.
//!
//! Listening while live, binding, stopping and closing are [`LiveListeners`]'s.

use crate::live_listener::{LiveListeners, Responder};
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;

/// A handshake (and the close after it) that takes longer is cut.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why we listen, for the message when binding fails.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Standalone,
    Loopback,
}

/// The TLS-ALPN-01 listeners: [`LiveListeners`] answering with one handshake.
pub(super) type Listeners = LiveListeners<TlsAlpn01Responder>;

pub(super) fn listeners(
    addrs: Vec<SocketAddr>,
    purpose: Purpose,
    config: Arc<rustls::ServerConfig>,
    served: Counter,
) -> Listeners {
    LiveListeners::new(
        addrs,
        TlsAlpn01Responder {
            purpose,
            acceptor: TlsAcceptor::from(config),
            served,
        },
    )
}

#[derive(Clone)]
pub(super) struct TlsAlpn01Responder {
    purpose: Purpose,
    acceptor: TlsAcceptor,
    served: Counter,
}

impl Responder for TlsAlpn01Responder {
    const WHAT: &'static str = "TLS-ALPN-01";
    const CONN_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;

    fn answer(
        self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send {
        handshake(self.acceptor, stream, peer, self.served)
    }

    fn bind_error(&self, addr: SocketAddr, e: &std::io::Error) -> String {
        use std::io::ErrorKind;
        let (ip, port) = (addr.ip(), addr.port());
        match (self.purpose, e.kind()) {
            (Purpose::Standalone, ErrorKind::AddrInUse) => format!(
                "port {port} on {ip} is held by another process (nginx?), so the agent cannot \
                 answer TLS-ALPN-01 there: use [tls_alpn01] mode = \"loopback\" behind an \
                 ALPN-routing front, see deploy/nginx/acme-tls-alpn.conf"
            ),
            (Purpose::Standalone, ErrorKind::PermissionDenied) => format!(
                "cannot listen on {addr} for TLS-ALPN-01: {e} (ports below 1024 need root or \
                 CAP_NET_BIND_SERVICE, which deploy/systemd/certfleet-agent.service keeps)"
            ),
            (Purpose::Standalone, ErrorKind::AddrNotAvailable) => format!(
                "cannot listen on {addr} for TLS-ALPN-01: {e} ({ip} is in the agent's ips but \
                 not configured on this host; fix ips in the agent config)"
            ),
            (Purpose::Standalone, _) => {
                format!("cannot listen on {addr} for TLS-ALPN-01 ([tls_alpn01] port): {e}")
            }
            (Purpose::Loopback, _) => format!(
                "cannot listen on {addr} ([tls_alpn01] listen) for TLS-ALPN-01: {e} (is another \
                 process using it? Pick a free port in both [tls_alpn01] listen and the \
                 front's acme-tls/1 upstream, see deploy/nginx/acme-tls-alpn.conf)"
            ),
        }
    }
}

/// One validation handshake, then close_notify and close: no application data.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    served: Counter,
) {
    match acceptor.accept(stream).await {
        Ok(mut tls) => {
            served.inc();
            let sni = tls.get_ref().1.server_name().unwrap_or_default().to_owned();
            tracing::debug!(peer = %peer, sni = %sni, "TLS-ALPN-01 challenge served");
            let _ = tls.shutdown().await;
        }
        Err(e) => tracing::debug!(peer = %peer, error = %e, "TLS-ALPN-01 handshake refused"),
    }
}
