//! Installing a certificate into a named target from the agent's own config: every file is
//! written atomically (temp, fsync, rename, dir fsync), the key with mode 0600, the previous
//! files kept as `<file>.prev`, then the target's reload command runs (argv, no shell).
//!
//! Only paths and commands from the local config are ever used (design invariant 3).

use crate::config::TargetConfig;
use crate::error::AgentFailure;
use crate::keys::{KeyPem, PendingKeys};
use certfleet_shared::fsutil::{read_limited, write_atomic};
use certfleet_shared::x509::{chain_to_pem, key_matches_spki, parse_pem_chain, CertInfo};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const OUTPUT_LIMIT: usize = 2048;

/// What is installed in a target right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub serial: String,
    pub not_after: i64,
    pub ips: Vec<IpAddr>,
}

/// Reads the target's current leaf, and reports it only if the key file matches it.
pub fn inspect(target: &TargetConfig) -> Option<Installed> {
    let cert_path = target.cert.as_ref().or(target.fullchain.as_ref())?;
    let pem = String::from_utf8(read_limited(cert_path, 256 * 1024).ok()?).ok()?;
    let chain = parse_pem_chain(&pem).ok()?;
    let leaf = CertInfo::from_der(&chain[0]).ok()?;
    let key = String::from_utf8(read_limited(&target.key, 64 * 1024).ok()?).ok()?;
    key_matches_spki(&key, &leaf.spki_der).then_some(Installed {
        serial: leaf.serial_hex,
        not_after: leaf.not_after,
        ips: leaf.ips,
    })
}

pub struct InstallOutcome {
    pub serial: String,
    pub not_after: i64,
    pub reload_output: String,
}

/// Installs `chain_pem` into `target` and reloads.
pub async fn install(
    target_name: &str,
    target: &TargetConfig,
    chain_pem: &str,
    own_ips: &[IpAddr],
    pending: &PendingKeys,
) -> Result<InstallOutcome, AgentFailure> {
    let chain = parse_pem_chain(chain_pem)
        .map_err(|e| AgentFailure::bad_request(format!("certificate chain: {e}")))?;
    let leaf = CertInfo::from_der(&chain[0])
        .map_err(|e| AgentFailure::bad_request(format!("leaf certificate: {e}")))?;
    if let Some(ip) = leaf.ips.iter().find(|ip| !own_ips.contains(ip)) {
        return Err(AgentFailure::new(
            "not_my_ip",
            format!("the certificate names {ip}, which is not one of this host's ips"),
        ));
    }

    if inspect(target).is_some_and(|i| i.serial == leaf.serial_hex) {
        tracing::info!(target = target_name, serial = %leaf.serial_hex, "certificate already installed");
        return Ok(InstallOutcome {
            serial: leaf.serial_hex,
            not_after: leaf.not_after,
            reload_output: String::new(),
        });
    }

    let key = pending.find(&leaf.spki_der).ok_or_else(|| {
        AgentFailure::new(
            "no_matching_key",
            "no key on this host matches the certificate's public key (pending key lost?); a new certificate is needed",
        )
    })?;

    let leaf_pem = chain_to_pem(&chain[..1]);
    let issuers_pem = chain_to_pem(&chain[1..]);
    let full_pem = chain_to_pem(&chain);
    let mut writes: Vec<(&Path, &str, u32)> =
        vec![(target.key.as_path(), key_text(&key), KEY_MODE)];
    if let Some(p) = &target.cert {
        writes.push((p, &leaf_pem, CERT_MODE));
    }
    if let Some(p) = &target.chain {
        writes.push((p, &issuers_pem, CERT_MODE));
    }
    if let Some(p) = &target.fullchain {
        writes.push((p, &full_pem, CERT_MODE));
    }

    for (path, _, mode) in &writes {
        keep_previous(path, *mode)?;
    }
    for (path, content, mode) in &writes {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| write_failed(dir, e))?;
        }
        write_atomic(path, content.as_bytes(), *mode).map_err(|e| write_failed(path, e))?;
    }
    pending.remove(&leaf.spki_der);
    tracing::info!(target = target_name, serial = %leaf.serial_hex, "certificate files written");

    let reload_output = reload(target_name, target).await?;
    Ok(InstallOutcome {
        serial: leaf.serial_hex,
        not_after: leaf.not_after,
        reload_output,
    })
}

fn key_text(k: &KeyPem) -> &str {
    &k.0
}

fn write_failed(path: &Path, e: std::io::Error) -> AgentFailure {
    AgentFailure::new(
        "write_failed",
        format!("cannot write {}: {e}", path.display()),
    )
}

fn prev_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".prev");
    PathBuf::from(s)
}

/// Copies the current file (if any) to `<file>.prev`, atomically and with the same mode.
fn keep_previous(path: &Path, mode: u32) -> Result<(), AgentFailure> {
    match std::fs::read(path) {
        Ok(old) => write_atomic(&prev_path(path), &old, mode)
            .map_err(|e| write_failed(&prev_path(path), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write_failed(path, e)),
    }
}

/// Runs the target's reload command with its timeout.
async fn reload(target_name: &str, target: &TargetConfig) -> Result<String, AgentFailure> {
    let Some((program, args)) = target.reload.split_first() else {
        return Ok(String::new());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let timeout = Duration::from_secs(target.reload_timeout_secs);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(AgentFailure::new(
                "reload_failed",
                format!(
                    "reload of target {target_name} did not finish within {} s",
                    timeout.as_secs()
                ),
            ))
        }
        Ok(Err(e)) => {
            return Err(AgentFailure::new(
                "reload_failed",
                format!("cannot run reload command {program:?}: {e}"),
            ))
        }
        Ok(Ok(out)) => out,
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text: String = text.trim().chars().take(OUTPUT_LIMIT).collect();
    if !out.status.success() {
        return Err(AgentFailure::new(
            "reload_failed",
            format!("reload of target {target_name} failed ({}): {text}; the new files are in place, the previous ones are kept as *.prev", out.status),
        ));
    }
    tracing::info!(target = target_name, "reload command succeeded");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_proto::v1::KeyType;
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
    use rustls_pki_types::CertificateSigningRequestDer;

    /// Signs the agent's CSR with a throwaway CA: a real chain for the install logic.
    fn sign(csr_der: &[u8]) -> String {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let csr = rcgen::CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr_der),
        )
        .unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        let leaf = params.signed_by(&csr.public_key, &issuer).unwrap();
        format!("{}{}", leaf.pem(), ca_cert.pem())
    }

    #[tokio::test]
    async fn install_writes_files_keeps_previous_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingKeys::new(&dir.path().join("state"));
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let log = dir.path().join("reload.log");
        let target = TargetConfig {
            cert: Some(dir.path().join("tls/cert.pem")),
            chain: Some(dir.path().join("tls/chain.pem")),
            fullchain: Some(dir.path().join("tls/fullchain.pem")),
            key: dir.path().join("tls/key.pem"),
            reload: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo reloaded >> {}", log.display()),
            ],
            reload_timeout_secs: 10,
        };
        let mut serials = Vec::new();
        for _ in 0..2 {
            let csr = pending.create_csr(&ips, KeyType::EcdsaP256).unwrap();
            let chain = sign(&csr);
            let out = install("default", &target, &chain, &ips, &pending)
                .await
                .unwrap();
            assert_eq!(inspect(&target).map(|i| i.serial), Some(out.serial.clone()));
            serials.push(out.serial);
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&target.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(prev_path(&target.key))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
        let prev = std::fs::read_to_string(prev_path(target.cert.as_ref().unwrap())).unwrap();
        let prev_leaf = CertInfo::from_der(&parse_pem_chain(&prev).unwrap()[0]).unwrap();
        assert_eq!(
            prev_leaf.serial_hex, serials[0],
            "previous certificate kept"
        );
    }

    #[tokio::test]
    async fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingKeys::new(&dir.path().join("state"));
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let target = TargetConfig {
            cert: Some(dir.path().join("cert.pem")),
            chain: None,
            fullchain: None,
            key: dir.path().join("key.pem"),
            reload: vec!["/bin/false".into()],
            reload_timeout_secs: 10,
        };
        // A certificate whose key this host never made.
        let other = PendingKeys::new(&dir.path().join("elsewhere"));
        let chain = sign(&other.create_csr(&ips, KeyType::EcdsaP256).unwrap());
        let err = install("t", &target, &chain, &ips, &pending)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, "no_matching_key");
        assert!(!target.key.exists(), "nothing written");
        // Not our IP.
        let err = install(
            "t",
            &target,
            &chain,
            &["10.0.0.1".parse().unwrap()],
            &pending,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(err.code, "not_my_ip");
        // Garbage.
        assert_eq!(
            install("t", &target, "garbage", &ips, &pending)
                .await
                .err()
                .unwrap()
                .code,
            "bad_request"
        );
        // Failing reload is reported.
        let chain = sign(&pending.create_csr(&ips, KeyType::EcdsaP256).unwrap());
        let err = install("t", &target, &chain, &ips, &pending)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, "reload_failed");
    }
}
