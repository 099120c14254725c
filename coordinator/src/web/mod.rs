//! The read-only web view of the fleet (`[web] listen`): server-rendered pages over HTTPS
//! with the coordinator's own server certificate (the resolver `server_cert` swaps on
//! renewal), for operators only — by client certificate or a login-link session
//! ([`auth`]). Overview, hosts, host, certificates, certificate, audit search and JSON
//! Lines export. Nothing here writes to the store.
//!
//! - [`auth`] — who may look: client certificates, login links, sessions.
//! - [`data`] — what the pages show: rows, counts, lists cut into pages.
//! - [`fleet`] — the snapshot of every host and certificate the overview and lists are
//!   made from, at most a few seconds old (stated on the page), made one at a time.
//! - [`audit`] — the audit search's filters and rows.
//! - [`pages`] — the askama templates (`templates/web/`).
//! - `handlers` — the routes; `hostpage` — the host, certificate and audit pages' data.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod data;
#[cfg(test)]
mod fixture;
pub mod fleet;
mod handlers;
mod hostpage;
pub mod pages;
#[cfg(test)]
mod scale_tests;

use crate::audit::AuditLog;
use crate::fleet_ca::StateDir;
use crate::server_cert::ServerCertResolver;
use crate::sessions::Sessions;
use crate::store::Store;
use axum::http::{header, HeaderValue};
use certfleet_shared::clock::SharedClock;
use certfleet_shared::tls::{certs_from_pem, provider};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A TLS handshake must finish within this, and a request's headers too.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the pages read from, and the browser sessions.
pub struct Web {
    pub store: Arc<dyn Store>,
    pub audit: Arc<AuditLog>,
    /// Agent sessions, for "connected".
    pub sessions: Arc<Sessions>,
    pub clock: SharedClock,
    /// Where `web login` leaves its tickets.
    pub dir: StateDir,
    pub logins: auth::WebSessions,
    /// Export streams run here (drained at shutdown with the daemon's other tasks).
    pub tasks: TaskTracker,
    /// The fleet's rows and counts for the overview and the lists (bounded staleness).
    pub fleet: Arc<fleet::FleetCache>,
}

/// The leaf certificate a browser presented, if any (a request extension).
#[derive(Debug, Clone, Default)]
pub struct PeerCert(pub Option<Arc<Vec<u8>>>);

/// The web listener's TLS: the server certificate's resolver, the fleet CA as an
/// *optional* client-certificate verifier (operators' credentials; a browser without one
/// logs in by link), TLS 1.3 and 1.2, HTTP/1.1.
pub fn tls_config(
    resolver: Arc<ServerCertResolver>,
    ca_pem: &str,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(ca_pem, "fleet CA")? {
        roots.add(ca)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// `key=value&…` with each value percent-encoded (empty values left out).
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The web view's routes over `web` (what [`serve`] serves; the `web_pages` benchmark
/// drives it directly, without TLS).
pub fn router(web: Arc<Web>) -> axum::Router {
    handlers::router(web)
}

/// Headers on every answer: a strict content security policy (no script at all, styles
/// from /style.css only), no sniffing, no referrer (a login link's token never leaves in
/// one), no framing, no caching of pages about the fleet.
pub fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// Serves the web view on `listener` until `shutdown`: the accept loop and every
/// connection are tasks on `tracker`; connections get a graceful close at shutdown.
pub fn serve(
    web: Arc<Web>,
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let router = handlers::router(web);
    let acceptor = TlsAcceptor::from(tls);
    let conns = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "web: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, router, stop) = (acceptor.clone(), router.clone(), shutdown.clone());
            conns.spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "web: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %peer, "web: TLS handshake timed out");
                        return;
                    }
                };
                let cert = PeerCert(
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(c.as_ref().to_vec())),
                );
                serve_connection(tls, cert, router, stop).await;
            });
        }
    });
}

async fn serve_connection<S>(
    io: S,
    cert: PeerCert,
    router: axum::Router,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(cert.clone());
        let router = router.clone();
        async move { router.oneshot(req.map(axum::body::Body::new)).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "web: connection ended");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
