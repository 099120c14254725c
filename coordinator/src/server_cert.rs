//! The coordinator's own TLS server certificate (the one agents and operators see; each
//! node of several has its own): served through a resolver over a swappable value, renewed
//! at two thirds of its lifetime by [`ServerCertManager::run`] and swapped in without a
//! restart — established sessions keep their connection, new handshakes get the new
//! certificate. Audited (`server_certificate_renewed`).
//!
//! TLS is ours (rustls with that resolver and the fleet CA as optional client-certificate
//! verifier, TLS 1.3, ALPN h2), in front of tonic: [`incoming`] hands tonic handshaken
//! streams, whose client certificates `Request::peer_certs` then reads as before.

use crate::audit::{AuditLog, Entry, Kind};
use crate::fleet_ca::{FleetCa, ServerCredential, StateDir};
use crate::operators::renew_at;
use certfleet_shared::clock::SharedClock;
use certfleet_shared::tls::{certs_from_pem, key_from_pem, provider};
use certfleet_shared::x509::{key_matches_spki, parse_pem_chain, CertInfo};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed renewal, the next attempt (bounded by the time left).
const RETRY: Duration = Duration::from_secs(60);

/// What is known of the certificate in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertInfo {
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

struct Current {
    key: Arc<CertifiedKey>,
    info: ServerCertInfo,
}

/// The swappable server certificate; rustls asks it at every handshake.
pub struct ServerCertResolver {
    current: RwLock<Current>,
}

impl std::fmt::Debug for ServerCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertResolver")
            .field("info", &self.info())
            .finish()
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .key
                .clone(),
        )
    }
}

impl ServerCertResolver {
    pub fn info(&self) -> ServerCertInfo {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .info
            .clone()
    }

    fn swap(&self, key: Arc<CertifiedKey>, info: ServerCertInfo) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Current { key, info };
    }
}

/// The certificate (with the fleet CA after it: agents pin the CA at enrollment) and key
/// for rustls; refuses a key that is not the certificate's.
fn certified(
    cred: &ServerCredential,
    ca_pem: &str,
) -> anyhow::Result<(Arc<CertifiedKey>, ServerCertInfo, CertInfo)> {
    let leaf = parse_pem_chain(&cred.cert_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate"))?;
    let info = CertInfo::from_der(&leaf)?;
    anyhow::ensure!(
        key_matches_spki(&cred.key_pem, &info.spki_der),
        "the key is not the certificate's"
    );
    let mut chain = certs_from_pem(&cred.cert_pem, "server certificate")?;
    chain.truncate(1);
    chain.extend(certs_from_pem(ca_pem, "fleet CA")?);
    let key = provider()
        .key_provider
        .load_private_key(key_from_pem(&cred.key_pem, "server key")?)?;
    let summary = ServerCertInfo {
        serial: info.serial_hex.clone(),
        not_before: info.not_before,
        not_after: info.not_after,
    };
    Ok((Arc::new(CertifiedKey::new(chain, key)), summary, info))
}

/// Keeps the server certificate current: checks it at start, renews it at two thirds.
pub struct ServerCertManager {
    dir: StateDir,
    ca: Arc<FleetCa>,
    names: Vec<String>,
    ips: Vec<IpAddr>,
    lifetime_secs: i64,
    audit: Arc<AuditLog>,
    clock: SharedClock,
    pub resolver: Arc<ServerCertResolver>,
}

impl ServerCertManager {
    /// Loads `server.pem|key` from the state directory, and renews at once (audited) when
    /// they are missing or do not match, are due, outlive the configured lifetime, or name
    /// other names/addresses than `[server]`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dir: StateDir,
        ca: Arc<FleetCa>,
        names: Vec<String>,
        ips: Vec<IpAddr>,
        lifetime_secs: i64,
        audit: Arc<AuditLog>,
        clock: SharedClock,
    ) -> anyhow::Result<Arc<Self>> {
        let now = clock.now_unix();
        let stored = dir
            .read(&dir.server_cert())
            .and_then(|cert_pem| {
                Ok(ServerCredential {
                    cert_pem,
                    key_pem: dir.read(&dir.server_key())?,
                })
            })
            .map_err(anyhow::Error::from)
            .and_then(|cred| certified(&cred, &ca.ca_pem));
        let (key, info, reason) = match stored {
            Err(e) => {
                // Nothing usable to serve meanwhile: make one now or fail the start.
                let reason = format!("the stored one is missing or damaged ({e})");
                let (key, info, _) = Self::make(
                    &dir,
                    &ca,
                    &names,
                    &ips,
                    lifetime_secs,
                    now,
                    &audit,
                    None,
                    &reason,
                )?;
                (key, info, None)
            }
            Ok((key, summary, info)) => {
                let reason = if now >= renew_at(info.not_before, info.not_after) {
                    Some("due (two thirds of its lifetime)".to_owned())
                } else if info.not_after - now > lifetime_secs + (lifetime_secs / 10).max(300) {
                    Some(format!(
                        "it outlives [server] certificate_lifetime_secs = {lifetime_secs}"
                    ))
                } else if !same_names(&info, &names, &ips) {
                    Some("[server] names or ips changed".to_owned())
                } else {
                    None
                };
                (key, summary, reason)
            }
        };
        let manager = Arc::new(Self {
            resolver: Arc::new(ServerCertResolver {
                current: RwLock::new(Current { key, info }),
            }),
            dir,
            ca,
            names,
            ips,
            lifetime_secs,
            audit,
            clock,
        });
        if let Some(reason) = reason {
            // The stored certificate is still served when this fails; `run` renews it
            // when it is due.
            if let Err(e) = manager.renew(now, &reason) {
                tracing::error!(error = %e, reason, "cannot renew the server certificate at start");
            }
        }
        Ok(manager)
    }

    /// Signs, audits, writes (key first) and returns a new certificate.
    #[allow(clippy::too_many_arguments)]
    fn make(
        dir: &StateDir,
        ca: &FleetCa,
        names: &[String],
        ips: &[IpAddr],
        lifetime_secs: i64,
        now: i64,
        audit: &AuditLog,
        previous: Option<&str>,
        reason: &str,
    ) -> anyhow::Result<(Arc<CertifiedKey>, ServerCertInfo, ServerCredential)> {
        let cred = ca.sign_server(names, ips, lifetime_secs, now)?;
        let (key, info, _) = certified(&cred, &ca.ca_pem)?;
        audit.append(
            Kind::ServerCertificateRenewed,
            now,
            Entry::by("coordinator")
                .serial(&info.serial)
                .detail("previous_serial", previous.unwrap_or(""))
                .detail("not_after", info.not_after)
                .detail("reason", reason)
                .detail("names", names)
                .detail(
                    "ips",
                    ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                ),
        )?;
        cred.write(dir)?;
        tracing::info!(serial = %info.serial, previous = previous.unwrap_or(""), not_after = info.not_after, reason, "server certificate renewed");
        Ok((key, info, cred))
    }

    /// Renews now and swaps the new certificate in.
    pub fn renew(&self, now: i64, reason: &str) -> anyhow::Result<ServerCertInfo> {
        let previous = self.resolver.info().serial;
        let (key, info, _) = Self::make(
            &self.dir,
            &self.ca,
            &self.names,
            &self.ips,
            self.lifetime_secs,
            now,
            &self.audit,
            Some(&previous),
            reason,
        )?;
        self.resolver.swap(key, info.clone());
        Ok(info)
    }

    /// Renews at two thirds of each certificate's lifetime until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let info = self.resolver.info();
            let now = self.clock.now_unix();
            let due = renew_at(info.not_before, info.not_after);
            let wait = if now >= due {
                match self.renew(now, "due (two thirds of its lifetime)") {
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, not_after = info.not_after, "cannot renew the server certificate; trying again");
                        RETRY.min(Duration::from_secs(
                            ((info.not_after - now) / 10).clamp(1, 60) as u64,
                        ))
                    }
                }
            } else {
                // Wake at least every minute: the clock is read again, not trusted to sleep.
                Duration::from_secs((due - now).clamp(1, 60) as u64)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The rustls server configuration: this resolver, the fleet CA for client
    /// certificates (optional: enrollment has none), TLS 1.3, h2.
    pub fn tls_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let mut roots = RootCertStore::empty();
        for ca in certs_from_pem(&self.ca.ca_pem, "fleet CA")? {
            roots.add(ca)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn same_names(info: &CertInfo, names: &[String], ips: &[IpAddr]) -> bool {
    let have: BTreeSet<String> = info
        .dns_names
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let want: BTreeSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let have_ips: BTreeSet<IpAddr> = info.ips.iter().copied().collect();
    let want_ips: BTreeSet<IpAddr> = ips.iter().copied().collect();
    have == want && have_ips == want_ips
}

/// Accepts TCP connections on `listener` and hands tonic the ones whose TLS handshake
/// (bounded by [`HANDSHAKE_TIMEOUT`]) succeeded. The accept loop and every handshake are
/// tasks on `tracker`; the loop ends at `shutdown`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            handshakes.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
