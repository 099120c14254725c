//! The agent's TLS-ALPN-01 listeners: standalone on `port` of each of the host's
//! addresses, loopback on `[tls_alpn01] listen`. They listen only while a challenge is
//! live; each connection gets one handshake (the resolver in `mod.rs` decides whether it
//! succeeds) and is then closed without application data.
//!
//! Its accept loops and connections are tasks on its own tracker; [`Listeners::close`]
//! (at agent shutdown) ends them all and waits for them.

use super::lock;
use crate::error::AgentFailure;
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handshake (and the close after it) that takes longer is cut.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being handshaken at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// Why we listen, for the message when binding fails.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Standalone,
    Loopback,
}

pub(super) struct Listeners {
    addrs: Vec<SocketAddr>,
    purpose: Purpose,
    acceptor: TlsAcceptor,
    served: Counter,
    /// One bind at a time: two concurrent `present`s must not both bind the port.
    bind: tokio::sync::Mutex<()>,
    /// Cancels the listeners; `Some` while listening.
    cancel: Mutex<Option<CancellationToken>>,
    /// The accept loops, so a new bind can wait until stopped ones let go of the port.
    loops: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Cancelled by [`Listeners::close`]: every listener and connection ends, no new one
    /// starts.
    closed: CancellationToken,
    /// Every accept loop and connection.
    tasks: TaskTracker,
}

impl Listeners {
    pub(super) fn new(
        addrs: Vec<SocketAddr>,
        purpose: Purpose,
        config: Arc<rustls::ServerConfig>,
        served: Counter,
    ) -> Self {
        Self {
            addrs,
            purpose,
            acceptor: TlsAcceptor::from(config),
            served,
            bind: tokio::sync::Mutex::new(()),
            cancel: Mutex::new(None),
            loops: Mutex::new(Vec::new()),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    pub(super) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub(super) fn is_listening(&self) -> bool {
        lock(&self.cancel).is_some()
    }

    /// Starts listening on every address unless already listening (all or none).
    pub(super) async fn ensure(&self) -> Result<(), AgentFailure> {
        let _one_bind = self.bind.lock().await;
        if self.closed.is_cancelled() {
            return Err(AgentFailure::new(
                "internal",
                "the agent is stopping; the challenge is presented again once it is back",
            ));
        }
        if self.is_listening() {
            return Ok(());
        }
        // Stopped loops close their sockets when they next run: wait for that, or a clear
        // followed at once by a present would find our own port still held.
        let stopped: Vec<_> = std::mem::take(&mut *lock(&self.loops));
        for t in stopped {
            let _ = t.await;
        }
        let mut listeners = Vec::with_capacity(self.addrs.len());
        for addr in &self.addrs {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| AgentFailure::new("bind_failed", self.bind_error(*addr, &e)))?;
            listeners.push(l);
        }
        let cancel = self.closed.child_token();
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut loops = lock(&self.loops);
        for l in listeners {
            loops.push(self.tasks.spawn(serve(
                l,
                self.acceptor.clone(),
                cancel.clone(),
                Connections {
                    limit: limit.clone(),
                    served: self.served.clone(),
                    tasks: self.tasks.clone(),
                    closed: self.closed.clone(),
                },
            )));
        }
        drop(loops);
        if let Some(old) = lock(&self.cancel).replace(cancel) {
            old.cancel();
        }
        tracing::debug!(addrs = ?self.addrs, "TLS-ALPN-01 responder listening");
        Ok(())
    }

    /// When not listening: waits for the stopped accept loops to close their sockets.
    pub(super) async fn wait_stopped(&self) {
        let _one_bind = self.bind.lock().await;
        if self.is_listening() {
            return;
        }
        let stopped: Vec<_> = std::mem::take(&mut *lock(&self.loops));
        for t in stopped {
            let _ = t.await;
        }
    }

    pub(super) fn stop(&self) {
        if let Some(cancel) = lock(&self.cancel).take() {
            cancel.cancel();
            tracing::debug!("TLS-ALPN-01 responder stopped");
        }
    }

    /// Stops listening for good: ends every listener and open connection and waits for
    /// them (at most `within`).
    pub(super) async fn close(&self, within: Duration) {
        self.closed.cancel();
        self.stop();
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tasks.len(),
                "TLS-ALPN-01 connections still open after {} s; stopping anyway",
                within.as_secs()
            );
        }
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

/// Where a listener's connections run: at most `limit` at once, on the listeners'
/// tracker, cut when they close. A listener that merely stops (no live challenge) lets its
/// open handshakes finish.
struct Connections {
    limit: Arc<tokio::sync::Semaphore>,
    served: Counter,
    tasks: TaskTracker,
    closed: CancellationToken,
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    cancel: CancellationToken,
    connections: Connections,
) {
    loop {
        let permit = tokio::select! {
            p = connections.limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = cancel.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS-ALPN-01 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let conn = handshake(acceptor.clone(), stream, peer, connections.served.clone());
        let closed = connections.closed.clone();
        connections.tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn) => {}
                _ = closed.cancelled() => {}
            }
        });
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
