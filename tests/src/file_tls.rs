//! [`FileTlsServer`]: a TLS server presenting whatever certificate files a target holds
//! right now — what a web server does after a reload — for hosts without a web server
//! (the demo's loopback hosts), so the agent's served check and an SNI check by the
//! caller see the installed certificate.
//!
//! The full chain and key are read again for every handshake; while they are missing or
//! unreadable the connection is closed without a handshake (the agent's served check then
//! retries, as it does while a web server reloads). The accept task is aborted on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinHandle;

use crate::tlsutil;

#[derive(Debug)]
struct FromFiles {
    fullchain: PathBuf,
    key: PathBuf,
}

impl FromFiles {
    fn load(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let chain = tlsutil::certs_from_file(&self.fullchain)?;
        anyhow::ensure!(
            !chain.is_empty(),
            "{}: no certificate",
            self.fullchain.display()
        );
        let key = tlsutil::key_from_file(&self.key)?;
        let signing = tlsutil::provider()
            .key_provider
            .load_private_key(key)
            .with_context(|| format!("{}: unusable key", self.key.display()))?;
        Ok(Arc::new(CertifiedKey::new(chain, signing)))
    }
}

impl ResolvesServerCert for FromFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.load().ok()
    }
}

/// A TLS listener serving a target's files (see the module documentation).
#[derive(Debug)]
pub struct FileTlsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FileTlsServer {
    /// Serves `fullchain` (PEM, leaf first) with `key` (PEM) on `listener`.
    pub fn start(
        listener: tokio::net::TcpListener,
        fullchain: PathBuf,
        key: PathBuf,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let cfg = rustls::ServerConfig::builder_with_provider(tlsutil::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FromFiles { fullchain, key }));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The handshake is all a served check needs; then close.
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for FileTlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
