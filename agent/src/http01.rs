//! Standalone HTTP-01 responder: while at least one challenge is live, the agent listens
//! on `port` of each of the host's configured addresses and answers
//! `GET /.well-known/acme-challenge/<token>` with the key authorization. It stops listening
//! when the last challenge is cleared or expires.
//!
//! Challenges are only accepted for this host's own addresses, with well-formed tokens.

use crate::error::AgentFailure;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/.well-known/acme-challenge/";
/// A challenge the coordinator never cleared is dropped after this.
const CHALLENGE_TTL: Duration = Duration::from_secs(15 * 60);
const CONN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct Entry {
    key_authorization: String,
    expires: Instant,
}

type Table = Arc<Mutex<HashMap<String, Entry>>>;

pub struct Responder {
    served: prometheus_client::metrics::counter::Counter,
    ips: Vec<IpAddr>,
    port: u16,
    table: Table,
    /// Cancels the listeners; `Some` while listening.
    listening: Mutex<Option<CancellationToken>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tokens are base64url (RFC 8555 §8.1: at least 128 bits of entropy).
pub fn valid_token(t: &str) -> bool {
    (16..=256).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Responder {
    pub fn new(ips: Vec<IpAddr>, port: u16) -> Self {
        Self::with_counter(ips, port, Default::default())
    }

    /// A responder that counts what it serves into `served`.
    pub fn with_counter(
        ips: Vec<IpAddr>,
        port: u16,
        served: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            served,
            ips,
            port,
            table: Arc::default(),
            listening: Mutex::new(None),
        }
    }

    /// Adds challenges and makes sure the listeners are up.
    pub async fn present(
        &self,
        challenges: &[(String, String, String)],
    ) -> Result<(), AgentFailure> {
        for (identifier, token, key_auth) in challenges {
            let ip: IpAddr = identifier.parse().map_err(|_| {
                AgentFailure::bad_request(format!(
                    "challenge identifier {identifier:?} is not an IP address"
                ))
            })?;
            if !self.ips.contains(&ip) {
                return Err(AgentFailure::new(
                    "not_my_ip",
                    format!("{ip} is not one of this host's configured ips"),
                ));
            }
            if !valid_token(token) {
                return Err(AgentFailure::bad_request("malformed challenge token"));
            }
            let thumb = key_auth
                .strip_prefix(token.as_str())
                .and_then(|r| r.strip_prefix('.'));
            if !thumb.is_some_and(valid_token_part) {
                return Err(AgentFailure::bad_request("malformed key authorization"));
            }
        }
        {
            let mut table = lock(&self.table);
            let expires = Instant::now() + CHALLENGE_TTL;
            for (_, token, key_auth) in challenges {
                table.insert(
                    token.clone(),
                    Entry {
                        key_authorization: key_auth.clone(),
                        expires,
                    },
                );
            }
        }
        if let Err(e) = self.ensure_listening().await {
            let mut table = lock(&self.table);
            for (_, token, _) in challenges {
                table.remove(token);
            }
            drop(table);
            self.stop_if_idle();
            return Err(e);
        }
        Ok(())
    }

    /// Removes challenges; stops listening when none are left.
    pub fn clear(&self, tokens: &[String]) {
        {
            let mut table = lock(&self.table);
            for t in tokens {
                table.remove(t);
            }
        }
        self.stop_if_idle();
    }

    /// Drops expired challenges (called periodically).
    pub fn expire(&self) {
        let now = Instant::now();
        lock(&self.table).retain(|_, e| e.expires > now);
        self.stop_if_idle();
    }

    pub fn is_listening(&self) -> bool {
        lock(&self.listening).is_some()
    }

    fn stop_if_idle(&self) {
        if lock(&self.table).is_empty() {
            if let Some(cancel) = lock(&self.listening).take() {
                cancel.cancel();
                tracing::debug!("HTTP-01 responder stopped");
            }
        }
    }

    async fn ensure_listening(&self) -> Result<(), AgentFailure> {
        if self.is_listening() {
            return Ok(());
        }
        let mut listeners = Vec::new();
        for ip in &self.ips {
            let addr = SocketAddr::new(*ip, self.port);
            let l = TcpListener::bind(addr).await.map_err(|e| {
                AgentFailure::new(
                    "bind_failed",
                    format!(
                        "cannot listen on {addr} for HTTP-01: {e} (is another server on port {}?)",
                        self.port
                    ),
                )
            })?;
            listeners.push(l);
        }
        let cancel = CancellationToken::new();
        for l in listeners {
            tokio::spawn(serve(
                l,
                self.table.clone(),
                cancel.clone(),
                self.served.clone(),
            ));
        }
        let mut slot = lock(&self.listening);
        if let Some(old) = slot.replace(cancel) {
            old.cancel();
        }
        tracing::debug!(port = self.port, "HTTP-01 responder listening");
        Ok(())
    }
}

fn valid_token_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn serve(
    listener: TcpListener,
    table: Table,
    cancel: CancellationToken,
    served: prometheus_client::metrics::counter::Counter,
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
        let table = table.clone();
        let served = served.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let table = table.clone();
                let served = served.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&table, &req, peer, &served)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONN_TIMEOUT, conn).await;
        });
    }
}

fn answer<B>(
    table: &Table,
    req: &Request<B>,
    peer: SocketAddr,
    served: &prometheus_client::metrics::counter::Counter,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(valid_token("abcdefghijklmnop_-AZ09"));
        assert!(!valid_token("short"));
        assert!(!valid_token("abcdefghijklmnop/../"));
    }

    #[tokio::test]
    async fn serves_then_stops() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let port = {
            let l = std::net::TcpListener::bind((ip, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let r = Responder::new(vec![ip], port);
        let token = "tok_0123456789abcdef".to_string();
        let ka = format!("{token}.thumbprint_value");
        assert!(
            r.present(&[("10.0.0.1".into(), token.clone(), ka.clone())])
                .await
                .is_err(),
            "not our IP"
        );
        assert!(!r.is_listening());
        r.present(&[("127.0.0.1".into(), token.clone(), ka.clone())])
            .await
            .unwrap();
        let body = http_get(ip, port, &format!("{PREFIX}{token}")).await;
        assert!(
            body.starts_with("HTTP/1.1 200") && body.ends_with(&ka),
            "{body}"
        );
        assert!(http_get(ip, port, &format!("{PREFIX}other_token_000000"))
            .await
            .starts_with("HTTP/1.1 404"));
        r.clear(&[token]);
        assert!(!r.is_listening());
    }

    async fn http_get(ip: IpAddr, port: u16, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
