//! Certificate keys: made on this host, never sent anywhere (design invariant 2). A key
//! waits in `state_dir/pending/` (0600) from CSR to install, named by the SHA-256 of its
//! public key (so the install finds it by the certificate's public key alone) and the
//! certificate id the coordinator made it for (`<sha256[..32]>.<cert id>.key`), so the
//! coordinator can have the keys of an ended order removed ([`PendingKeys::discard`]).
//! Age and count limits remain as a safety net for orders nobody ends.

use crate::error::AgentFailure;
use certfleet_proto::v1::KeyType;
use certfleet_shared::clock::{SharedClock, SystemClock};
use certfleet_shared::fsutil::{create_dir_with_mode, read_limited, write_atomic};
use certfleet_shared::ids::CertId;
use certfleet_shared::x509::sha256_hex;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Pending keys older than this are removed (an order that never finished).
const PENDING_MAX_AGE_SECS: u64 = 7 * 86_400;
const MAX_PENDING: usize = 32;

pub struct PendingKeys {
    dir: PathBuf,
    /// Wall-clock time for the age limit.
    clock: SharedClock,
}

/// A private key in PEM; `Debug` never shows it.
pub struct KeyPem(pub String);

impl std::fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPem(<redacted>)")
    }
}

impl PendingKeys {
    pub fn new(state_dir: &Path) -> Self {
        Self::with_clock(state_dir, std::sync::Arc::new(SystemClock))
    }

    /// Pending keys whose age limit is measured on `clock`.
    pub fn with_clock(state_dir: &Path, clock: SharedClock) -> Self {
        Self {
            dir: state_dir.join("pending"),
            clock,
        }
    }

    /// Removes what a crash left half-written (temp files of interrupted key writes).
    /// Called at start, before anything writes here.
    pub fn sweep_interrupted(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
            })
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Makes a fresh key and a CSR naming exactly `ips` (IP SANs, empty subject: no CN); the
    /// key waits filed under `cert` (when the coordinator named one).
    pub fn create_csr(
        &self,
        ips: &[IpAddr],
        key_type: KeyType,
        cert: Option<&CertId>,
    ) -> Result<Vec<u8>, AgentFailure> {
        let alg = match key_type {
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::EcdsaP256 | KeyType::Unspecified => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let internal = |e: rcgen::Error| {
            AgentFailure::new("internal", format!("key/CSR generation failed: {e}"))
        };
        let key = KeyPair::generate_for(alg).map_err(internal)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        let csr = params.serialize_request(&key).map_err(internal)?;
        self.prune();
        create_dir_with_mode(&self.dir, 0o700).map_err(|e| {
            AgentFailure::new("write_failed", format!("{}: {e}", self.dir.display()))
        })?;
        let hash = &sha256_hex(&key.subject_public_key_info())[..32];
        let path = match cert {
            Some(c) => self.dir.join(format!("{hash}.{c}.key")),
            None => self.dir.join(format!("{hash}.key")),
        };
        write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| AgentFailure::new("write_failed", format!("{}: {e}", path.display())))?;
        Ok(csr.der().to_vec())
    }

    /// Pending key files as (path, public-key hash prefix, certificate id if filed under one).
    fn entries(&self) -> Vec<(PathBuf, String, Option<String>)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                // A temp file of an interrupted write (`.<name>.key.tmp-…`) counts as
                // the key it was becoming: it is removed with it.
                let stem = match name.strip_prefix('.') {
                    Some(hidden) => hidden.split_once(".key.tmp-")?.0,
                    None => name.strip_suffix(".key")?,
                };
                let (hash, cert) = match stem.split_once('.') {
                    Some((h, c)) => (h.to_owned(), Some(c.to_owned())),
                    None => (stem.to_owned(), None),
                };
                Some((e.path(), hash, cert))
            })
            .collect()
    }

    fn paths_for(&self, spki: &[u8]) -> Vec<PathBuf> {
        let hash = &sha256_hex(spki)[..32];
        self.entries()
            .into_iter()
            .filter(|(p, h, _)| h == hash && !is_temp(p))
            .map(|(p, _, _)| p)
            .collect()
    }

    /// The pending key for this public key, if it is here.
    pub fn find(&self, spki: &[u8]) -> Option<KeyPem> {
        self.paths_for(spki).into_iter().find_map(|path| {
            let bytes = read_limited(&path, 64 * 1024).ok()?;
            let pem = String::from_utf8(bytes).ok()?;
            certfleet_shared::x509::key_matches_spki(&pem, spki).then_some(KeyPem(pem))
        })
    }

    pub fn remove(&self, spki: &[u8]) {
        for path in self.paths_for(spki) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Removes the pending keys filed under `cert` except those whose public key's SHA-256
    /// (hex) is in `keep`. Returns how many were removed.
    pub fn discard(&self, cert: &CertId, keep: &[String]) -> u32 {
        let mut removed = 0;
        for (path, hash, filed_under) in self.entries() {
            let kept = !is_temp(&path)
                && keep
                    .iter()
                    .any(|k| k.len() >= 32 && k[..32].eq_ignore_ascii_case(&hash));
            if filed_under.as_deref() == Some(cert.as_str())
                && !kept
                && std::fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// How many keys are pending (for tests and the agent's status).
    pub fn count(&self) -> usize {
        self.entries().len()
    }

    /// Drops stale pending keys and caps their number.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        let now = self.clock.now_unix();
        let excess = files.len().saturating_sub(MAX_PENDING - 1);
        for (i, (modified, path)) in files.iter().enumerate() {
            let old = certfleet_shared::clock::unix_secs(*modified)
                .is_some_and(|m| now.saturating_sub(m) > PENDING_MAX_AGE_SECS as i64);
            if old || i < excess {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_shared::x509::CsrInfo;

    #[test]
    fn csr_has_ip_sans_no_cn_and_key_stays_pending() {
        let dir = tempfile::tempdir().unwrap();
        let keys = PendingKeys::new(dir.path());
        let ips: Vec<IpAddr> = vec![
            "8.8.8.8".parse().unwrap(),
            "2001:4860::8888".parse().unwrap(),
        ];
        let der = keys.create_csr(&ips, KeyType::EcdsaP256, None).unwrap();
        let csr = CsrInfo::from_der(&der).unwrap();
        assert_eq!(csr.ips, ips);
        assert_eq!(csr.subject_cn, None);
        assert!(csr.dns_names.is_empty());
        let key = keys.find(&csr.spki_der).expect("pending key");
        assert!(format!("{key:?}").contains("redacted"));
        use std::os::unix::fs::PermissionsExt;
        let f = std::fs::read_dir(dir.path().join("pending"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        keys.remove(&csr.spki_der);
        assert!(keys.find(&csr.spki_der).is_none());
    }

    #[test]
    fn discard_removes_only_the_keys_of_that_certificate_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let keys = PendingKeys::new(dir.path());
        let ips: Vec<IpAddr> = vec!["8.8.8.8".parse().unwrap()];
        let (a, b) = (CertId::generate(), CertId::generate());
        let spki = |der: Vec<u8>| CsrInfo::from_der(&der).unwrap().spki_der;
        let a1 = spki(keys.create_csr(&ips, KeyType::EcdsaP256, Some(&a)).unwrap());
        let a2 = spki(keys.create_csr(&ips, KeyType::EcdsaP256, Some(&a)).unwrap());
        let b1 = spki(keys.create_csr(&ips, KeyType::EcdsaP256, Some(&b)).unwrap());
        let legacy = spki(keys.create_csr(&ips, KeyType::EcdsaP256, None).unwrap());
        assert_eq!(keys.count(), 4);
        // Keep a2 (issued, not yet installed): only a1 goes.
        assert_eq!(keys.discard(&a, &[sha256_hex(&a2)]), 1);
        assert!(keys.find(&a1).is_none());
        assert!(keys.find(&a2).is_some(), "the kept key stays");
        assert!(keys.find(&b1).is_some(), "another certificate's key stays");
        assert!(
            keys.find(&legacy).is_some(),
            "an unfiled key is left to the age limit"
        );
        // A write of a key for `a` interrupted by a crash leaves a temp file: it goes with
        // the certificate's keys, and at start.
        let half = dir
            .path()
            .join("pending")
            .join(format!(".{}.{a}.key.tmp-1-00000000", "0".repeat(32)));
        std::fs::write(&half, "-----BEGIN PRIVATE KEY-----").unwrap();
        assert_eq!(keys.discard(&a, &[]), 2);
        assert!(!half.exists());
        assert_eq!(keys.discard(&a, &[]), 0, "idempotent");
        std::fs::write(&half, "x").unwrap();
        assert_eq!(keys.sweep_interrupted(), 1);
        assert!(!half.exists());
        keys.remove(&b1);
        assert!(keys.find(&b1).is_none());
    }
}
