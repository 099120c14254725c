//! A minimal HTTP-01 responder: serves `/.well-known/acme-challenge/<token>` on the given
//! addresses until dropped. Used by the direct-ACME baseline in the benchmark.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

type Tokens = Arc<Mutex<HashMap<String, String>>>;

#[derive(Debug)]
pub struct Http01Responder {
    tokens: Tokens,
    tasks: Vec<JoinHandle<()>>,
}

const PREFIX: &str = "/.well-known/acme-challenge/";

impl Http01Responder {
    /// Binds `port` on every address in `ips`.
    pub async fn bind(ips: &[IpAddr], port: u16) -> anyhow::Result<Self> {
        let tokens: Tokens = Arc::default();
        let mut tasks = Vec::new();
        for ip in ips {
            let addr = SocketAddr::new(*ip, port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let tokens = tokens.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let tokens = tokens.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let tokens = tokens.clone();
                            async move {
                                let body = req
                                    .uri()
                                    .path()
                                    .strip_prefix(PREFIX)
                                    .and_then(|t| tokens.lock().ok()?.get(t).cloned());
                                let resp = match body {
                                    Some(ka) => hyper::Response::new(Full::new(Bytes::from(ka))),
                                    None => {
                                        let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                        r
                                    }
                                };
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }));
        }
        Ok(Self { tokens, tasks })
    }

    /// Serves `key_authorization` for `token`.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(token.to_owned(), key_authorization.to_owned());
        }
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
