//! A minimal HTTP server for `GET /metrics` (OpenMetrics text), shared by the coordinator
//! and the agent. What to render is the caller's business; rendering runs off the async
//! threads. Each connection is a task of the server's own, ended and waited for on
//! shutdown, so a caller that tracks [`serve`] tracks them all.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `GET /metrics` on `listener` until `shutdown`; returns once its connections are
/// closed too.
pub async fn serve<F>(listener: tokio::net::TcpListener, render: F, shutdown: CancellationToken)
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let render = Arc::new(render);
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
        let render = render.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let svc = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        if req.uri().path() != "/metrics" {
                            *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                            return Ok::<_, std::convert::Infallible>(resp);
                        }
                        let body = tokio::task::spawn_blocking(move || render())
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()));
                        match body {
                            Ok(text) => {
                                *resp.body_mut() = Full::new(Bytes::from(text));
                                resp.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                            );
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "metrics rendering failed");
                                *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                        }
                        Ok(resp)
                    }
                },
            );
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
