//! Plain-HTTP requests to a web server (port 80 checks).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// One plain-HTTP response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// The `Location` header, if any.
    pub location: Option<String>,
    pub body: Bytes,
}

/// `GET http://<addr><path>` with `Host: <addr>` (port included, as pebble sends it),
/// no redirects followed. From the calling process's namespace.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpReply> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let conn_task = tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().collect().await?.to_bytes();
        conn_task.abort();
        anyhow::Ok(HttpReply {
            status,
            location,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}
