//! A real nginx on 127.0.0.1 running the shipped TLS-ALPN-01 front
//! (`deploy/nginx/acme-tls-alpn.conf`, its ports rewritten to free ones) in front of its
//! own TLS web server, and the handshakes a CA and a browser make through it.
//!
//! The client side of a TLS-ALPN-01 validation does what a CA does: it trusts nothing
//! and checks the handshake signature against the presented certificate's key directly
//! (webpki refuses the critical acmeIdentifier extension it does not know).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::process::ChildGuard;
use crate::workdir::WorkDir;

/// The shipped snippet.
pub fn snippet_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/acme-tls-alpn.conf")
}

/// nginx on `port` with the snippet routing `acme-tls/1` to `agent` and everything else
/// to its own TLS server on `web_port` (self-signed certificate `web_cert`, page "web").
pub struct AlpnFront {
    _child: ChildGuard,
    _dir: WorkDir,
    pub port: u16,
    pub web_cert: CertificateDer<'static>,
}

impl AlpnFront {
    pub async fn start(agent: SocketAddr) -> anyhow::Result<Self> {
        let dir = WorkDir::new("alpn-front")?;
        let ports = crate::net::free_ports(2)?;
        let (port, web_port) = (ports[0], ports[1]);
        let snippet = front_snippet(
            &[SocketAddr::from(([127, 0, 0, 1], port))],
            agent,
            SocketAddr::from(([127, 0, 0, 1], web_port)),
        )?;
        std::fs::write(dir.join("snippet.conf"), snippet)?;

        let web = rcgen::generate_simple_self_signed(vec!["web.test".to_owned()])?;
        std::fs::write(dir.join("web.pem"), web.cert.pem())?;
        std::fs::write(dir.join("web.key"), web.signing_key.serialize_pem())?;

        let module = stream_module()?;
        let d = dir.path().display();
        let conf = format!(
            "{module}\n\
             daemon off;\n\
             master_process off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             include {d}/snippet.conf;\n\
             http {{\n\
                 access_log off;\n\
                 client_body_temp_path {d}/body;\n\
                 server {{\n\
                     listen 127.0.0.1:{web_port} ssl http2;\n\
                     ssl_certificate {d}/web.pem;\n\
                     ssl_certificate_key {d}/web.key;\n\
                     ssl_protocols TLSv1.2 TLSv1.3;\n\
                     location / {{ return 200 \"web\\n\"; }}\n\
                 }}\n\
             }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = std::process::Command::new(nginx_binary());
        cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf_path);
        let child = ChildGuard::spawn("nginx-alpn-front", &mut cmd, dir.path())?;
        let front = SocketAddr::from(([127, 0, 0, 1], port));
        crate::net::wait_port(front, Duration::from_secs(10)).await?;
        Ok(Self {
            _child: child,
            _dir: dir,
            port,
            web_cert: web.cert.der().clone(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// The shipped snippet with its addresses rewritten: the front listens on each of
/// `listen` (instead of port 443 of every address), sends `acme-tls/1` to `agent` and
/// everything else to `web`. Fails, naming the line, if the snippet no longer has the
/// lines this rewrites (so a changed snippet cannot go untested).
pub fn front_snippet(
    listen: &[SocketAddr],
    agent: SocketAddr,
    web: SocketAddr,
) -> anyhow::Result<String> {
    let path = snippet_path();
    let snippet = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    for want in [
        "listen 443;",
        "listen [::]:443;",
        "127.0.0.1:8443",
        "127.0.0.1:8444",
    ] {
        anyhow::ensure!(
            snippet.contains(want),
            "{}: the snippet changed, no {want:?}; update alpn_front::front_snippet",
            path.display()
        );
    }
    let listens: Vec<String> = listen.iter().map(|a| format!("listen {a};")).collect();
    Ok(snippet
        .replace("listen 443;", &listens.join("\n        "))
        .replace("listen [::]:443;", "")
        .replace("127.0.0.1:8443", &agent.to_string())
        .replace("127.0.0.1:8444", &web.to_string()))
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// The `load_module` line nginx needs for `stream`, when it is a dynamic module (Debian:
/// libnginx-mod-stream), or nothing when built in.
pub fn stream_module() -> anyhow::Result<String> {
    let v = std::process::Command::new(nginx_binary())
        .arg("-V")
        .output()?;
    let text = String::from_utf8_lossy(&v.stderr);
    if text.contains("--with-stream ") {
        return Ok(String::new());
    }
    for m in [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/share/nginx/modules/ngx_stream_module.so",
    ] {
        if Path::new(m).exists() {
            return Ok(format!("load_module {m};"));
        }
    }
    anyhow::bail!("nginx has no stream module: install libnginx-mod-stream (tests/run.sh does)")
}

/// What one handshake through the front got.
#[derive(Debug)]
pub struct Handshake {
    pub leaf: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    /// What the server sent after the handshake until it closed the connection (`GET /`
    /// is written first when `get` is set); `None` if it kept it open for 3 s.
    pub after: Option<Vec<u8>>,
}

/// One TLS 1.3 handshake with `addr` offering `alpn` and SNI `sni`; with `get`, then an
/// HTTP/1.1 `GET /` and the answer until the server closes.
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
    get: bool,
) -> anyhow::Result<Handshake> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_owned())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| anyhow::anyhow!("no certificate"))?
            .clone()
            .into_owned();
        let alpn = conn.alpn_protocol().map(|p| p.to_vec());
        if get {
            tls.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
                .await?;
        }
        let mut buf = Vec::new();
        let after = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut buf))
            .await
            .ok()
            .map(|_| buf);
        anyhow::Ok(Handshake { leaf, alpn, after })
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| anyhow::anyhow!("no handshake within 10 s"))?
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| rustls::Error::General(format!("certificate: {e}")))?;
        let spki = SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &spki,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
