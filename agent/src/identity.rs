//! The agent's identity: enrollment with a join token and a pinned CA fingerprint, and the
//! files that result (`identity.key` 0600, `identity.pem`, `ca.pem`, `enrollment.json`).
//! `enrollment.json` is written last: without it the agent is not enrolled, so a failure
//! at any point leaves nothing half-enrolled.

use anyhow::{bail, Context};
use certfleet_proto::v1::{enrollment_client::EnrollmentClient, EnrollRequest};
use certfleet_proto::MAX_MESSAGE_BYTES;
use certfleet_shared::backoff::Backoff;
use certfleet_shared::fsutil::{create_dir_with_mode, read_limited, write_atomic};
use certfleet_shared::ids::HostId;
use certfleet_shared::tls::{fleet_client_config, parse_fingerprint, pinned_client_config};
use certfleet_shared::x509::{parse_pem_chain, sha256_hex, CertInfo};
use certfleet_shared::HOST_URI_PREFIX;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub host_id: HostId,
    /// The first coordinator URL (an older agent reads only this one).
    pub coordinator: String,
    /// Every coordinator URL given at enrollment; absent from files older agents wrote
    /// (then [`Enrollment::coordinator`] alone). See [`Enrollment::coordinator_urls`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordinators: Vec<String>,
    pub ca_sha256: String,
    pub enrolled: i64,
}

impl Enrollment {
    /// The coordinators to talk to, as enrolled (one URL in an older file).
    pub fn coordinator_urls(&self) -> Vec<String> {
        if self.coordinators.is_empty() {
            vec![self.coordinator.clone()]
        } else {
            self.coordinators.clone()
        }
    }
}

pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("identity.key")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("identity.pem")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn enrollment(&self) -> PathBuf {
        self.dir.join("enrollment.json")
    }
    /// The key an enrollment in progress asks with (0600), kept until it has succeeded.
    pub fn pending_key(&self) -> PathBuf {
        self.dir.join("enroll-pending.key")
    }

    fn read(&self, p: &Path) -> anyhow::Result<String> {
        let bytes =
            read_limited(p, 256 * 1024).with_context(|| format!("reading {}", p.display()))?;
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", p.display()))
    }

    /// The enrollment record, or a message saying how to enroll.
    pub fn load(&self) -> anyhow::Result<Enrollment> {
        let path = self.enrollment();
        if !path.exists() {
            bail!("this agent is not enrolled ({} is missing); run `certfleet-agent enroll --coordinator URL [--coordinator URL …] --token T --ca-sha256 FP`", path.display());
        }
        serde_json::from_str(&self.read(&path)?)
            .with_context(|| format!("{} is corrupt; enroll again", path.display()))
    }

    /// The enrollment; when there is none yet (the daemon started before `certfleet-agent
    /// enroll`, as cloud-init does it) waits for one: READY=1 to systemd (so a
    /// `systemctl start` does not block the enrollment that follows it), a status saying
    /// why, a `session.json` for `status` and `enroll --wait`. `None`: stopped meanwhile.
    pub async fn wait_enrolled(
        &self,
        now: i64,
        stop: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Option<Enrollment>> {
        if !self.enrollment().exists() {
            tracing::info!(
                "not enrolled yet; waiting for `certfleet-agent enroll` (for {} to appear)",
                self.enrollment().display()
            );
            certfleet_shared::daemon::notify_systemd(certfleet_shared::daemon::Notify::Ready(
                "not enrolled yet; waiting for `certfleet-agent enroll`",
            ));
            create_dir_with_mode(&self.dir, 0o700)
                .with_context(|| format!("creating the state directory {}", self.dir.display()))?;
            crate::coordinators::SessionStatus {
                pid: std::process::id(),
                connected: false,
                coordinator: None,
                address: None,
                since: now,
                last_error: Some("not enrolled yet; waiting for `certfleet-agent enroll`".into()),
            }
            .write(&self.dir);
        }
        while !self.enrollment().exists() {
            tokio::select! {
                _ = tokio::time::sleep(ENROLLMENT_POLL) => {}
                _ = stop.cancelled() => return Ok(None),
            }
        }
        self.load().map(Some)
    }

    /// rustls config for the session: trust the fleet CA, present the identity.
    pub fn session_tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(fleet_client_config(
            &self.read(&self.ca())?,
            &self.read(&self.cert())?,
            &self.read(&self.key())?,
        )?)
    }
}

/// What `certfleet-agent enroll` asks for.
#[derive(Debug, Clone)]
pub struct EnrollParams {
    /// Coordinator URLs, tried in this order; all are recorded for the session.
    pub urls: Vec<String>,
    pub token: String,
    /// The fleet CA's SHA-256 (`certfleet-coordinator ca-fingerprint`).
    pub ca_sha256: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// How long to keep trying while no coordinator can be reached.
    pub timeout: Duration,
}

/// What [`enroll`] did.
#[derive(Debug, Clone)]
pub enum Enrolled {
    /// A new identity, written.
    New(Enrollment),
    /// The host was already enrolled in the fleet of the same CA: nothing was asked of a
    /// coordinator, no token use taken (cloud-init running its steps again).
    Already(Enrollment),
}

impl Enrolled {
    pub fn enrollment(&self) -> &Enrollment {
        match self {
            Enrolled::New(e) | Enrolled::Already(e) => e,
        }
    }
}

/// One enrollment attempt's failure: worth another try later, or final.
enum Attempt {
    /// No coordinator answered (resolution, connection, an unavailable service).
    Unreachable(anyhow::Error),
    /// An answer that will not change: a refusal, a CA that does not match the pin.
    Final(anyhow::Error),
}

/// How often a daemon started before enrollment looks for `enrollment.json`.
const ENROLLMENT_POLL: Duration = Duration::from_millis(100);

/// Most one attempt may take (a connection is bounded by 10 s on its own).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Enrolls with one of the coordinators of `p`: tried in the order given, each address
/// of each, moving on only when one cannot be reached (a refusal, or a CA that does not
/// match the pin, is the answer). While none can be reached, tries again with jittered
/// backoff ([`Backoff::RECONNECT`]) until `p.timeout`; a refusal is not retried. On any
/// failure nothing is written.
///
/// Already enrolled with the same fleet CA: [`Enrolled::Already`], nothing asked; with
/// another CA: an error naming the fix.
pub async fn enroll(state_dir: &Path, p: &EnrollParams, now: i64) -> anyhow::Result<Enrolled> {
    let files = Files::new(state_dir);
    let pin = parse_fingerprint(&p.ca_sha256)?;
    if let Ok(existing) = files.load() {
        if existing.ca_sha256.eq_ignore_ascii_case(&hex_of(&pin)) {
            return Ok(Enrolled::Already(existing));
        }
        bail!(
            "this host is already enrolled as host {} in the fleet whose CA has SHA-256 {}, \
             and --ca-sha256 names another CA: check --ca-sha256 (`certfleet-coordinator \
             ca-fingerprint`); to move the host to another fleet, stop the agent, remove {} \
             and enroll again",
            existing.host_id,
            existing.ca_sha256,
            files.enrollment().display()
        );
    }
    let urls =
        crate::coordinators::check_urls(&p.urls, "--coordinator").map_err(anyhow::Error::msg)?;
    let token = p.token.trim();
    if token.is_empty() {
        bail!("--token is empty");
    }

    // One key and CSR for every attempt, and for a rerun after this one was cut short.
    let key = enrollment_key(&files)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, p.hostname.as_str());
    let csr = params.serialize_request(&key)?;
    let request = EnrollRequest {
        token: token.to_owned(),
        csr_der: csr.der().to_vec(),
        hostname: p.hostname.clone(),
        labels: p.labels.clone().into_iter().collect(),
    };

    let started = Instant::now();
    let deadline = started + p.timeout;
    let mut failures = 0u32;
    let resp = loop {
        // The last attempt, at the deadline, still gets a moment.
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_secs(2), ATTEMPT_TIMEOUT);
        let attempt = tokio::time::timeout(budget, attempt(&urls, pin, request.clone()))
            .await
            .unwrap_or_else(|_| {
                Err(Attempt::Unreachable(anyhow::anyhow!(
                    "no answer within {} s",
                    budget.as_secs()
                )))
            });
        let error = match attempt {
            Ok(resp) => break resp,
            Err(Attempt::Final(e)) => {
                // Refused: the next enrollment (another token, another pin) starts afresh.
                let _ = std::fs::remove_file(files.pending_key());
                return Err(e);
            }
            Err(Attempt::Unreachable(e)) => e,
        };
        failures += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no coordinator could be reached for {} s ({failures} attempts): {error:#}; \
                 check the coordinator runs and this host can reach {} (or give a longer --timeout)",
                started.elapsed().as_secs(),
                urls.join(", ")
            );
        }
        let delay = Backoff::RECONNECT.delay_random(failures - 1).min(left);
        tracing::warn!(error = %format!("{error:#}"), retry_in_ms = delay.as_millis() as u64, "coordinator unreachable; enrollment tries again");
        tokio::time::sleep(delay).await;
    };

    // Check what came back before keeping any of it.
    let ca_chain =
        parse_pem_chain(&resp.ca_cert_pem).context("coordinator sent a bad CA certificate")?;
    if sha256_hex(&ca_chain[0]) != hex_of(&pin) {
        bail!("the CA certificate in the enrollment response does not match --ca-sha256");
    }
    let host_id = HostId::parse(&resp.host_id)?;
    let leaf = parse_pem_chain(&resp.client_cert_pem)
        .context("coordinator sent a bad client certificate")?;
    let info = CertInfo::from_der(&leaf[0])?;
    if info.spki_der != key.subject_public_key_info() {
        bail!("the client certificate from the coordinator is not for our key");
    }
    if !info
        .uris
        .iter()
        .any(|u| u.strip_prefix(HOST_URI_PREFIX) == Some(host_id.as_str()))
    {
        bail!("the client certificate from the coordinator does not name host {host_id}");
    }

    let record = Enrollment {
        host_id,
        coordinator: urls[0].clone(),
        coordinators: if urls.len() > 1 { urls } else { Vec::new() },
        ca_sha256: hex_of(&pin),
        enrolled: now,
    };
    let written = (|| -> anyhow::Result<()> {
        create_dir_with_mode(state_dir, 0o700)?;
        write_atomic(&files.key(), key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&files.cert(), resp.client_cert_pem.as_bytes(), 0o644)?;
        write_atomic(&files.ca(), resp.ca_cert_pem.as_bytes(), 0o644)?;
        write_atomic(
            &files.enrollment(),
            serde_json::to_string_pretty(&record)?.as_bytes(),
            0o644,
        )?;
        Ok(())
    })();
    if let Err(e) = written {
        for p in [files.enrollment(), files.key(), files.cert(), files.ca()] {
            let _ = std::fs::remove_file(p);
        }
        return Err(e.context(format!("writing the identity into {}", state_dir.display())));
    }
    let _ = std::fs::remove_file(files.pending_key());
    Ok(Enrolled::New(record))
}

/// The key this enrollment asks with. A run cut short after the coordinator had answered
/// (killed, rebooted, a cloud-init timeout) left its key in [`Files::pending_key`]: asking
/// again with the same token and the same key gets the same host back, where a new key
/// would find the single-use token spent. Otherwise a new key, written 0600 before the
/// first request (which also finds an unwritable state directory before a token use).
fn enrollment_key(files: &Files) -> anyhow::Result<KeyPair> {
    let path = files.pending_key();
    if let Ok(bytes) = read_limited(&path, 64 * 1024) {
        match std::str::from_utf8(&bytes)
            .ok()
            .and_then(|pem| KeyPair::from_pem(pem).ok())
        {
            Some(key) => {
                tracing::info!(path = %path.display(), "an earlier enrollment was cut short; asking again with its key");
                return Ok(key);
            }
            None => {
                tracing::warn!(path = %path.display(), "unreadable key of an earlier enrollment; making a new one")
            }
        }
    }
    create_dir_with_mode(&files.dir, 0o700)
        .with_context(|| format!("creating the state directory {}", files.dir.display()))?;
    let key = KeyPair::generate()?;
    write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

/// One round over the coordinators' addresses: resolve, connect (pinned), ask.
async fn attempt(
    urls: &[String],
    pin: [u8; 32],
    request: EnrollRequest,
) -> Result<certfleet_proto::v1::EnrollResponse, Attempt> {
    let (endpoints, unresolved) = crate::coordinators::resolve_all(urls).await;
    for e in &unresolved {
        tracing::warn!("{e}");
    }
    if endpoints.is_empty() {
        return Err(Attempt::Unreachable(anyhow::anyhow!(
            "no coordinator address: {}",
            unresolved.join("; ")
        )));
    }
    let tls = pinned_client_config(pin).map_err(|e| Attempt::Final(e.into()))?;
    let (channel, at) = crate::coordinators::first_reachable(&endpoints, tls, |e| {
        e.to_string().contains("fingerprint")
    })
    .await
    .map_err(|e| {
        if e.to_string().contains("fingerprint") {
            Attempt::Final(anyhow::anyhow!("refusing to enroll: {e} (check the value printed by `certfleet-coordinator ca-fingerprint`)"))
        } else {
            Attempt::Unreachable(e)
        }
    })?;
    tracing::info!(coordinator = %at, "enrolling");
    let mut client = EnrollmentClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    match client.enroll(request).await {
        Ok(resp) => Ok(resp.into_inner()),
        Err(s) if retryable(s.code()) => Err(Attempt::Unreachable(anyhow::anyhow!(
            "{at}: {} ({:?})",
            s.message(),
            s.code()
        ))),
        Err(s) => Err(Attempt::Final(anyhow::anyhow!(
            "enrollment refused: {}",
            s.message()
        ))),
    }
}

/// Answers that say the coordinator could not decide now (not a refusal).
fn retryable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
    )
}

fn hex_of(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Files {
    /// Staged files of an identity rotation.
    fn next_key(&self) -> PathBuf {
        self.dir.join("identity.key.new")
    }
    fn next_cert(&self) -> PathBuf {
        self.dir.join("identity.pem.new")
    }

    /// The current identity certificate.
    pub fn identity_info(&self) -> anyhow::Result<CertInfo> {
        let pem = self.read(&self.cert())?;
        let chain = parse_pem_chain(&pem).context("identity.pem")?;
        Ok(CertInfo::from_der(&chain[0])?)
    }

    fn pair_matches(&self, cert: &Path) -> bool {
        let (Ok(key), Ok(pem)) = (self.read(&self.key()), self.read(cert)) else {
            return false;
        };
        parse_pem_chain(&pem)
            .ok()
            .and_then(|c| CertInfo::from_der(&c[0]).ok())
            .is_some_and(|info| certfleet_shared::x509::key_matches_spki(&key, &info.spki_der))
    }

    /// Finishes an identity rotation a crash interrupted. The key is renamed into place
    /// before the certificate, so a mismatched pair with a staged certificate that fits
    /// the key is rolled forward; otherwise leftovers are dropped.
    pub fn recover_rotation(&self) -> anyhow::Result<()> {
        if !self.pair_matches(&self.cert()) && self.pair_matches(&self.next_cert()) {
            std::fs::rename(self.next_cert(), self.cert())?;
            certfleet_shared::fsutil::sync_dir(&self.dir)?;
            tracing::warn!("finished an interrupted identity rotation");
        }
        for p in [self.next_key(), self.next_cert()] {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    /// Puts a new identity in place: both files staged, then the key, then the
    /// certificate renamed over the old ones (see [`Files::recover_rotation`]).
    fn replace_identity(&self, key_pem: &str, cert_pem: &str) -> anyhow::Result<()> {
        write_atomic(&self.next_key(), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.next_cert(), cert_pem.as_bytes(), 0o644)?;
        std::fs::rename(self.next_key(), self.key())?;
        certfleet_shared::fsutil::sync_dir(&self.dir)?;
        std::fs::rename(self.next_cert(), self.cert())?;
        certfleet_shared::fsutil::sync_dir(&self.dir)?;
        Ok(())
    }
}

/// When the identity should be rotated: when a third of its lifetime is left.
pub fn rotation_due(info: &CertInfo) -> i64 {
    info.not_after - (info.not_after - info.not_before) / 3
}

/// Asks a coordinator, over mutual TLS with the current identity, for a certificate for
/// a new key made here, checks it, and puts it in place. The old key is replaced only
/// once the new certificate is in hand. `urls` are the agent's coordinators: the one of
/// the session now open (`current`) is asked first, then the others from a random point;
/// one that cannot be reached is passed over.
pub async fn rotate(
    files: &Files,
    urls: &[String],
    current: Option<crate::coordinators::Endpoint>,
) -> anyhow::Result<CertInfo> {
    let enrollment = files.load()?;
    let tls = files.session_tls()?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, enrollment.host_id.as_str());
    let csr = params.serialize_request(&key)?;
    let (mut endpoints, unresolved) = crate::coordinators::resolve_all(urls).await;
    if endpoints.is_empty() {
        bail!("no coordinator address: {}", unresolved.join("; "));
    }
    let first = crate::coordinators::Failover::random().current(endpoints.len());
    endpoints.rotate_left(first);
    if let Some(at) = current.and_then(|c| endpoints.iter().position(|e| *e == c)) {
        let preferred = endpoints.remove(at);
        endpoints.insert(0, preferred);
    }
    let (channel, _) = crate::coordinators::first_reachable(&endpoints, tls, |_| false).await?;
    let mut client = certfleet_proto::v1::agent_session_client::AgentSessionClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let resp = client
        .rotate_identity(certfleet_proto::v1::RotateIdentityRequest {
            csr_der: csr.der().to_vec(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("identity rotation refused: {}", s.message()))?
        .into_inner();
    let leaf = parse_pem_chain(&resp.client_cert_pem)
        .context("coordinator sent a bad identity certificate")?;
    let info = CertInfo::from_der(&leaf[0])?;
    if info.spki_der != key.subject_public_key_info() {
        bail!("the new identity certificate is not for our new key");
    }
    if !info
        .uris
        .iter()
        .any(|u| u.strip_prefix(HOST_URI_PREFIX) == Some(enrollment.host_id.as_str()))
    {
        bail!(
            "the new identity certificate does not name host {}",
            enrollment.host_id
        );
    }
    files.replace_identity(&key.serialize_pem(), &resp.client_cert_pem)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_single_coordinator_enrollment_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let id = HostId::generate();
        // As agents before several coordinators wrote it.
        let old = format!(
            r#"{{"host_id": "{id}", "coordinator": "https://c.example:7443", "ca_sha256": "{}", "enrolled": 1}}"#,
            "ab".repeat(32)
        );
        std::fs::write(files.enrollment(), old).unwrap();
        let e = files.load().unwrap();
        assert_eq!(e.coordinator_urls(), ["https://c.example:7443"]);

        // A new record keeps `coordinator` (the first) for older agents, and the list.
        let both = Enrollment {
            coordinators: vec!["https://a:1".into(), "https://b:2".into()],
            coordinator: "https://a:1".into(),
            ..e
        };
        let json: serde_json::Value = serde_json::to_value(&both).unwrap();
        assert_eq!(json["coordinator"], "https://a:1");
        assert_eq!(json["coordinators"][1], "https://b:2");
        std::fs::write(files.enrollment(), json.to_string()).unwrap();
        assert_eq!(
            files.load().unwrap().coordinator_urls(),
            ["https://a:1", "https://b:2"]
        );
    }

    fn pair() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::default().self_signed(&key).unwrap();
        (key.serialize_pem(), cert.pem())
    }

    #[test]
    fn an_interrupted_rotation_is_finished_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let (old_key, old_cert) = pair();
        write_atomic(&files.key(), old_key.as_bytes(), 0o600).unwrap();
        write_atomic(&files.cert(), old_cert.as_bytes(), 0o644).unwrap();

        // Crash after staging, before any rename: the old pair stays, leftovers go.
        let (new_key, new_cert) = pair();
        write_atomic(&files.next_key(), new_key.as_bytes(), 0o600).unwrap();
        write_atomic(&files.next_cert(), new_cert.as_bytes(), 0o644).unwrap();
        files.recover_rotation().unwrap();
        assert_eq!(std::fs::read_to_string(files.cert()).unwrap(), old_cert);
        assert!(files.pair_matches(&files.cert()));
        assert!(!files.next_key().exists() && !files.next_cert().exists());

        // Crash between the key's rename and the certificate's: rolled forward.
        write_atomic(&files.next_cert(), new_cert.as_bytes(), 0o644).unwrap();
        write_atomic(&files.key(), new_key.as_bytes(), 0o600).unwrap();
        assert!(!files.pair_matches(&files.cert()));
        files.recover_rotation().unwrap();
        assert_eq!(std::fs::read_to_string(files.cert()).unwrap(), new_cert);
        assert!(files.pair_matches(&files.cert()));

        // A completed replace leaves a matching pair and nothing staged.
        let (k3, c3) = pair();
        files.replace_identity(&k3, &c3).unwrap();
        assert!(files.pair_matches(&files.cert()));
        assert!(!files.next_key().exists() && !files.next_cert().exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(files.key()).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
