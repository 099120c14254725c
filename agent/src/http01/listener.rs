//! The agent's own HTTP-01 server, for standalone mode (on `port` of each of the host's
//! addresses) and proxy mode (on the loopback `listen` address the web server forwards
//! to). It listens only while a challenge is live and answers nothing but
//! `GET|HEAD /.well-known/acme-challenge/<token>` from the live table.
//!
//! Listening while live, binding, stopping and closing are [`LiveListeners`]'s.

use super::{lock, Table, PREFIX};
use crate::live_listener::{LiveListeners, Responder};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const CONN_TIMEOUT: Duration = Duration::from_secs(20);

/// Why we listen, for the message when binding fails.
#[derive(Clone, Copy)]
pub(super) enum Purpose {
    Standalone,
    Proxy,
}

/// The HTTP-01 listeners: [`LiveListeners`] answering with the live table.
pub(super) type Listeners = LiveListeners<Http01Responder>;

pub(super) fn listeners(
    addrs: Vec<SocketAddr>,
    purpose: Purpose,
    table: Table,
    served: Counter,
) -> Listeners {
    LiveListeners::new(
        addrs,
        Http01Responder {
            purpose,
            table,
            served,
        },
    )
}

#[derive(Clone)]
pub(super) struct Http01Responder {
    purpose: Purpose,
    table: Table,
    served: Counter,
}

impl Responder for Http01Responder {
    const WHAT: &'static str = "HTTP-01";
    const CONN_TIMEOUT: Duration = CONN_TIMEOUT;

    fn answer(
        self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send {
        serve_connection(stream, peer, self.table, self.served, false)
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
