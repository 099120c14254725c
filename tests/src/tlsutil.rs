//! rustls client configurations, PEM helpers, a tiny HTTPS GET (enough for pebble's
//! `/dir` and `/roots/0`) and probes of what a TLS server serves ([`served_leaf`],
//! [`served_chain_verifies`]). Everything uses the ring provider explicitly.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All certificates in a PEM string.
pub fn certs_from_pem(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing PEM certificates")?;
    anyhow::ensure!(!certs.is_empty(), "no CERTIFICATE block in PEM");
    Ok(certs)
}

pub fn certs_from_file(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    certs_from_pem(&pem).with_context(|| format!("in {}", path.display()))
}

pub fn key_from_file(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

pub fn root_store(roots: &[CertificateDer<'static>]) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).context("adding trust root")?;
    }
    Ok(store)
}

/// A client config trusting only `roots`, optionally presenting a client certificate,
/// with the given ALPN protocols.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(roots)?);
    let mut cfg = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// `GET https://<addr><path>` trusting `roots`, with server name = the IP of `addr`.
/// Returns status and body.
pub async fn https_get(
    addr: SocketAddr,
    path: &str,
    roots: &[CertificateDer<'static>],
) -> anyhow::Result<(u16, Bytes)> {
    let cfg = client_config(roots, None, &[b"http/1.1"])?;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let conn_task = tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        conn_task.abort();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .with_context(|| format!("GET https://{addr}{path} timed out"))?
        .with_context(|| format!("GET https://{addr}{path}"))
}

/// How long a [`served_chain`] / [`served_chain_verifies`] probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts any server certificate (the handshake signature is still checked, so the
/// server holds the key): for capturing what a server serves, never for trusting it.
#[derive(Debug)]
struct CaptureAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for CaptureAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS handshake with `addr` (server name = its IP, so no SNI is sent); returns the
/// certificates the server presented, leaf first.
async fn handshake(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    handshake_as(addr, ServerName::IpAddress(addr.ip().into()), cfg).await
}

/// TLS handshake with `addr` as `server_name` (a DNS name is sent as SNI).
async fn handshake_as(
    addr: SocketAddr,
    server_name: ServerName<'static>,
    cfg: Arc<ClientConfig>,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .context("TCP connect")?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(server_name, tcp)
            .await
            .context("TLS handshake")?;
        let (_, conn) = tls.get_ref();
        let certs = conn
            .peer_certificates()
            .context("server presented no certificate")?
            .iter()
            .map(|c| c.clone().into_owned())
            .collect::<Vec<_>>();
        anyhow::Ok(certs)
    };
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .with_context(|| format!("TLS to {addr} timed out after {PROBE_TIMEOUT:?}"))?
        .with_context(|| format!("TLS to {addr}"))
}

/// The certificate chain `addr` serves right now (leaf first), captured without
/// verifying it. Connects from the calling process's namespace (the root namespace reaches
/// every [`crate::netns::NsHost`] over the bridge).
pub async fn served_chain(addr: SocketAddr) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    served_chain_alpn(addr, b"http/1.1").await
}

/// [`served_chain`] offering `alpn` (e.g. `h2` for a gRPC server, which refuses others).
pub async fn served_chain_alpn(
    addr: SocketAddr,
    alpn: &[u8],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let provider = provider();
    let mut cfg = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaptureAnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    handshake(addr, Arc::new(cfg)).await
}

/// The leaf certificate `addr` serves right now (not verified).
pub async fn served_leaf(addr: SocketAddr) -> anyhow::Result<CertificateDer<'static>> {
    served_chain(addr)
        .await?
        .into_iter()
        .next()
        .with_context(|| format!("{addr} served an empty chain"))
}

/// Whether the chain `addr` serves verifies against `root` for the IP of `addr` (what a
/// browser would check): `Ok(())`, or the handshake error.
pub async fn served_chain_verifies(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
) -> anyhow::Result<()> {
    let cfg = client_config(std::slice::from_ref(root), None, &[b"http/1.1"])?;
    handshake(addr, cfg)
        .await
        .with_context(|| format!("verifying the chain served by {addr} for {}", addr.ip()))
        .map(|_| ())
}

/// How long [`served_leaf_for_name`] waits for the leaf a reload just put in place: nginx's
/// and apache's old workers may still take a connection for a moment after a reload.
pub const RELOAD_SETTLE: Duration = Duration::from_secs(10);

/// The chain `addr` serves for `name` (verified as [`served_chain_for_name`] does) once its
/// leaf has the serial `want` (hex, any case, colons and leading zeros ignored); asked
/// again every 100 ms for up to [`RELOAD_SETTLE`]. An error says what was served instead.
pub async fn served_leaf_for_name(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
    want: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let want = crate::pki::normalize_serial(want);
    let deadline = std::time::Instant::now() + RELOAD_SETTLE;
    loop {
        let chain = served_chain_for_name(addr, name, root).await?;
        let got = crate::pki::leaf_info(&chain[0])?.serial_hex;
        if got == want {
            return Ok(chain);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{addr} ({name}) still serves serial {got} after {RELOAD_SETTLE:?}, not {want}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chain `addr` serves to a client that sends `name` as SNI and verifies the chain
/// against `root` for that name (what a browser asking for the name checks); leaf first.
pub async fn served_chain_for_name(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let server_name =
        ServerName::try_from(name.to_owned()).with_context(|| format!("not a name: {name:?}"))?;
    let cfg = client_config(std::slice::from_ref(root), None, &[b"http/1.1"])?;
    handshake_as(addr, server_name, cfg)
        .await
        .with_context(|| format!("verifying the chain served by {addr} for {name} (SNI)"))
}
