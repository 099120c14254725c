//! The agent's own HTTP-01 server, for standalone mode (on `port` of each of the host's
//! addresses) and proxy mode (on the loopback `listen` address the web server forwards
//! to). It listens only while a challenge is live and answers nothing but
//! `GET|HEAD /.well-known/acme-challenge/<token>` from the live table.
//!
//! Its accept loops and connections are tasks on its own tracker; [`Listeners::close`]
//! (at agent shutdown) ends them all and waits for them.

use super::{lock, Table, PREFIX};
use crate::error::AgentFailure;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CONN_TIMEOUT: Duration = Duration::from_secs(20);

/// Why we listen, for the message when binding fails.
#[derive(Clone, Copy)]
pub(super) enum Purpose {
    Standalone,
    Proxy,
}

pub(super) struct Listeners {
    addrs: Vec<SocketAddr>,
    purpose: Purpose,
    table: Table,
    served: Counter,
    /// One bind at a time: two concurrent `present`s must not both bind the port.
    bind: tokio::sync::Mutex<()>,
    /// Cancels the listeners; `Some` while listening.
    cancel: Mutex<Option<CancellationToken>>,
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
        table: Table,
        served: Counter,
    ) -> Self {
        Self {
            addrs,
            purpose,
            table,
            served,
            bind: tokio::sync::Mutex::new(()),
            cancel: Mutex::new(None),
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

    /// Starts listening on every address unless already listening.
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
        let mut listeners = Vec::with_capacity(self.addrs.len());
        for addr in &self.addrs {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| AgentFailure::new("bind_failed", self.bind_error(*addr, &e)))?;
            listeners.push(l);
        }
        let cancel = self.closed.child_token();
        for l in listeners {
            self.tasks.spawn(serve(
                l,
                self.table.clone(),
                cancel.clone(),
                self.served.clone(),
                Connections {
                    tasks: self.tasks.clone(),
                    closed: self.closed.clone(),
                },
            ));
        }
        if let Some(old) = lock(&self.cancel).replace(cancel) {
            old.cancel();
        }
        tracing::debug!(addrs = ?self.addrs, "HTTP-01 responder listening");
        Ok(())
    }

    pub(super) fn stop(&self) {
        if let Some(cancel) = lock(&self.cancel).take() {
            cancel.cancel();
            tracing::debug!("HTTP-01 responder stopped");
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
                "HTTP-01 connections still open after {} s; stopping anyway",
                within.as_secs()
            );
        }
    }

    fn bind_error(&self, addr: SocketAddr, e: &std::io::Error) -> String {
        match self.purpose {
            Purpose::Standalone => format!(
                "cannot listen on {addr} for HTTP-01: {e} (is another server on port {}? \
                 If nginx or apache own it, set [http01] mode = \"webroot\" or \"proxy\" \
                 in the agent config)",
                addr.port()
            ),
            Purpose::Proxy => format!(
                "cannot listen on {addr} ([http01] listen) for HTTP-01: {e} (is another \
                 process using it? Pick a free port in both [http01] listen and the web \
                 server's proxy to the agent)"
            ),
        }
    }
}

/// Where a listener's connections run: on the listeners' tracker, cut when they close.
/// A listener that merely stops (no live challenge) lets its open connections finish.
struct Connections {
    tasks: TaskTracker,
    closed: CancellationToken,
}

async fn serve(
    listener: TcpListener,
    table: Table,
    cancel: CancellationToken,
    served: Counter,
    connections: Connections,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP-01 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let conn = serve_connection(stream, peer, table.clone(), served.clone(), false);
        let closed = connections.closed.clone();
        connections.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(CONN_TIMEOUT, conn) => {}
                _ = closed.cancelled() => {}
            }
        });
    }
}

/// Serves one HTTP/1 connection from `peer` until the client closes it (or an error).
/// `half_close`: still answer requests the client sent before it shut down its side (only
/// the in-memory [`super::answer_raw`] wants that; the listeners keep hyper's default).
pub(super) async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    table: Table,
    served: Counter,
    half_close: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let table = table.clone();
        let served = served.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&table, &req, peer, &served)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .max_buf_size(16 * 1024)
        .half_close(half_close)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

fn answer<B>(
    table: &Table,
    req: &Request<B>,
    peer: SocketAddr,
    served: &Counter,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, String::new());
    }
    let Some(token) = req.uri().path().strip_prefix(PREFIX) else {
        return reply(StatusCode::NOT_FOUND, String::new());
    };
    let found = lock(table)
        .get(token)
        .filter(|e| e.expires > Instant::now())
        .cloned();
    match found {
        Some(e) => {
            served.inc();
            tracing::debug!(peer = %peer, "HTTP-01 challenge served");
            reply(StatusCode::OK, e.key_authorization)
        }
        None => reply(StatusCode::NOT_FOUND, String::new()),
    }
}
