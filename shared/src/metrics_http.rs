//! A minimal HTTP server for the metrics listener both daemons have: `GET /metrics`
//! (OpenMetrics text), `GET /healthz` and `GET /readyz`. What to render and what "ready"
//! means is the caller's business; both run off the async threads (they may read a store).
//! Each connection is a task of the server's own, ended and waited for on shutdown, so a
//! caller that tracks [`serve`] tracks them all.
//!
//! - `/healthz`: 200 `ok` whenever the process answers at all (liveness).
//! - `/readyz`: 200 with the readiness check's short reason, or 503 with why not
//!   (coordinator: store readable and gRPC serving; agent: a live session).
//!
//! Both are plain text, one line, for load balancers and probes.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Whether the daemon is ready: `Ok(reason)` (200) or `Err(reason)` (503), one short line.
pub type Readiness = Result<String, String>;

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`; returns
/// once its connections are closed too.
pub async fn serve<F, R>(
    listener: tokio::net::TcpListener,
    render: F,
    ready: R,
    shutdown: CancellationToken,
) where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
    R: Fn() -> Readiness + Send + Sync + 'static,
{
    let handlers = Arc::new(Handlers { render, ready });
    let connections = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let handlers = handlers.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handlers = handlers.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handlers.answer(req.method(), req.uri().path()).await,
                        )
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_secs(30), conn) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

struct Handlers<F, R> {
    render: F,
    ready: R,
}

type Response = hyper::Response<Full<Bytes>>;

fn text(status: hyper::StatusCode, body: String) -> Response {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl<F, R> Handlers<F, R>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
    R: Fn() -> Readiness + Send + Sync + 'static,
{
    async fn answer(self: Arc<Self>, method: &hyper::Method, path: &str) -> Response {
        use hyper::StatusCode;
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return text(
                StatusCode::NOT_FOUND,
                "not found: use /metrics, /healthz or /readyz\n".into(),
            );
        }
        if method != hyper::Method::GET && method != hyper::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let this = self.clone();
                let ready = tokio::task::spawn_blocking(move || (this.ready)())
                    .await
                    .unwrap_or_else(|e| Err(format!("readiness check failed: {e}")));
                match ready {
                    Ok(reason) => text(StatusCode::OK, format!("ready: {}\n", one_line(&reason))),
                    Err(reason) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", one_line(&reason)),
                    ),
                }
            }
            _ => {
                let this = self.clone();
                let body = tokio::task::spawn_blocking(move || (this.render)())
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                match body {
                    Ok(metrics) => {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(metrics)));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        resp
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "metrics rendering failed");
                        text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "metrics rendering failed; see the daemon's log\n".into(),
                        )
                    }
                }
            }
        }
    }
}

/// A reason on one line of bounded length (it may carry an error's text).
fn one_line(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    line.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn health_ready_and_metrics() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ready = Arc::new(AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let r = ready.clone();
        let server = tokio::spawn(serve(
            listener,
            || Ok("# EOF\n".to_owned()),
            move || {
                if r.load(Ordering::SeqCst) {
                    Ok("serving".into())
                } else {
                    Err("store unreadable:\nno such file".into())
                }
            },
            shutdown.clone(),
        ));

        assert_eq!(get(addr, "GET", "/healthz").await, (200, "ok\n".into()));
        assert_eq!(
            get(addr, "GET", "/readyz").await,
            (503, "not ready: store unreadable: no such file\n".into())
        );
        ready.store(true, Ordering::SeqCst);
        assert_eq!(
            get(addr, "GET", "/readyz").await,
            (200, "ready: serving\n".into())
        );
        assert_eq!(get(addr, "GET", "/metrics").await, (200, "# EOF\n".into()));
        assert_eq!(get(addr, "GET", "/other").await.0, 404);
        assert_eq!(get(addr, "POST", "/readyz").await.0, 405);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .expect("server task");
    }

    #[tokio::test]
    async fn failed_metrics_rendering_is_a_500_without_the_error_text() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            || Err("secret detail".to_owned()),
            || Ok("fine".into()),
            shutdown.clone(),
        ));
        let (status, body) = get(addr, "GET", "/metrics").await;
        assert_eq!(status, 500);
        assert!(!body.contains("secret detail"), "{body}");
        shutdown.cancel();
        server.await.expect("server task");
    }
}
