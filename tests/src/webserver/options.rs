//! What a [`super::WebServer`] is configured with.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Which web server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Debian's `nginx`: uses the fullchain and key files.
    Nginx,
    /// Debian's `apache2`: uses cert, chain and key files.
    Apache,
}

impl ServerKind {
    /// `nginx` / `apache2`.
    pub fn program(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Apache => "apache2",
        }
    }
}

/// What the web server does with port 80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port80 {
    /// Port 80 is not the web server's (the agent answers challenges standalone).
    None,
    /// Serves `/.well-known/acme-challenge/X` from `DIR/.well-known/acme-challenge/X`
    /// as plain files (no redirect). `DIR` must be absolute.
    Webroot(PathBuf),
    /// Forwards `/.well-known/acme-challenge/...` (path and Host header preserved) to the
    /// agent at this address inside the namespace, e.g. `127.0.0.1:8402`.
    Proxy(SocketAddr),
}

/// A 301 to `https://<ip>/<path>` in front of port 80.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect {
    /// No redirect.
    Off,
    /// Everything but the challenge path is redirected (a common real setup).
    ExceptChallenge,
    /// Everything is redirected, the challenge path included (the agent should warn).
    /// Port 80 is served even with [`Port80::None`].
    All,
}

/// Where the web server reads its certificate. All four are written by the agent;
/// nginx uses `fullchain` + `key`, apache `cert` + `chain` + `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub chain: PathBuf,
    pub fullchain: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    /// `cert.pem`, `chain.pem`, `fullchain.pem`, `key.pem` in `dir` (the agent's naming).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("cert.pem"),
            chain: dir.join("chain.pem"),
            fullchain: dir.join("fullchain.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// The files `kind` reads.
    pub fn used_by(&self, kind: ServerKind) -> Vec<&Path> {
        match kind {
            ServerKind::Nginx => vec![&self.fullchain, &self.key],
            ServerKind::Apache => vec![&self.cert, &self.chain, &self.key],
        }
    }
}

/// Everything the generated config depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebServerOptions {
    pub kind: ServerKind,
    /// Addresses to listen on (port 443, and port 80 when used).
    pub ips: Vec<IpAddr>,
    pub certs: CertPaths,
    pub port80: Port80,
    pub redirect: Redirect,
    /// The TLS port (443 unless a second server shares the namespace).
    pub https_port: u16,
    /// nginx only: the TLS-ALPN-01 front on `https_port` instead of TLS there.
    pub alpn_front: Option<AlpnFrontOptions>,
}

/// The shipped TLS-ALPN-01 front (`deploy/nginx/acme-tls-alpn.conf`, `stream` +
/// `ssl_preread`) in nginx: it holds `https_port` on every IP and routes each connection by
/// the ALPN its ClientHello offers — `acme-tls/1` to `agent` (the agent's `[tls_alpn01]`
/// loopback `listen`), everything else to nginx's own TLS server, moved to `web`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlpnFrontOptions {
    pub agent: SocketAddr,
    /// Where TLS ends now: a loopback address inside the namespace.
    pub web: SocketAddr,
}

impl WebServerOptions {
    /// Listens on `ips`, port 80 unused, no redirect.
    pub fn new(kind: ServerKind, ips: Vec<IpAddr>, certs: CertPaths) -> Self {
        Self {
            kind,
            ips,
            certs,
            port80: Port80::None,
            redirect: Redirect::Off,
            https_port: 443,
            alpn_front: None,
        }
    }

    /// Puts the TLS-ALPN-01 front on `https_port` (see [`AlpnFrontOptions`]).
    pub fn alpn_front(mut self, agent: SocketAddr, web: SocketAddr) -> Self {
        self.alpn_front = Some(AlpnFrontOptions { agent, web });
        self
    }

    /// What no server could run; the error names the fix.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.ips.is_empty(),
            "{}: no IPs to listen on",
            self.kind.program()
        );
        if let Some(front) = &self.alpn_front {
            anyhow::ensure!(
                self.kind == ServerKind::Nginx,
                "the TLS-ALPN-01 front is an nginx `stream` snippet; use ServerKind::Nginx"
            );
            anyhow::ensure!(
                front.agent.ip().is_loopback() && front.web.ip().is_loopback(),
                "the front's agent ({}) and web ({}) addresses must be loopback ones",
                front.agent,
                front.web
            );
            anyhow::ensure!(
                front.agent != front.web,
                "the front sends acme-tls/1 and the rest to the same address {}",
                front.agent
            );
        }
        Ok(())
    }

    /// Serves TLS on `port` instead of 443 (e.g. a second server in the same namespace).
    pub fn https_port(mut self, port: u16) -> Self {
        self.https_port = port;
        self
    }

    pub fn port80(mut self, port80: Port80) -> Self {
        self.port80 = port80;
        self
    }

    pub fn redirect(mut self, redirect: Redirect) -> Self {
        self.redirect = redirect;
        self
    }

    /// Whether the server listens on port 80.
    pub fn serves_port80(&self) -> bool {
        self.port80 != Port80::None || self.redirect != Redirect::Off
    }
}
