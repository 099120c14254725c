//! Certificate keys: made on this host, never sent anywhere (design invariant 2). A key
//! waits in `state_dir/pending/` (0600) from CSR to install, named by the SHA-256 of its
//! public key so the install finds it by the certificate's public key alone.

use crate::error::AgentFailure;
use certfleet_proto::v1::KeyType;
use certfleet_shared::fsutil::{create_dir_with_mode, read_limited, write_atomic};
use certfleet_shared::x509::sha256_hex;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Pending keys older than this are removed (an order that never finished).
const PENDING_MAX_AGE_SECS: u64 = 7 * 86_400;
const MAX_PENDING: usize = 32;

pub struct PendingKeys {
    dir: PathBuf,
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
        Self {
            dir: state_dir.join("pending"),
        }
    }

    /// Makes a fresh key and a CSR naming exactly `ips` (IP SANs, empty subject: no CN).
    pub fn create_csr(&self, ips: &[IpAddr], key_type: KeyType) -> Result<Vec<u8>, AgentFailure> {
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
        let path = self.path_for(&key.subject_public_key_info());
        write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| AgentFailure::new("write_failed", format!("{}: {e}", path.display())))?;
        Ok(csr.der().to_vec())
    }

    fn path_for(&self, spki: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.key", &sha256_hex(spki)[..32]))
    }

    /// The pending key for this public key, if it is here.
    pub fn find(&self, spki: &[u8]) -> Option<KeyPem> {
        let bytes = read_limited(&self.path_for(spki), 64 * 1024).ok()?;
        let pem = String::from_utf8(bytes).ok()?;
        certfleet_shared::x509::key_matches_spki(&pem, spki).then_some(KeyPem(pem))
    }

    pub fn remove(&self, spki: &[u8]) {
        let _ = std::fs::remove_file(self.path_for(spki));
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
        let now = std::time::SystemTime::now();
        let excess = files.len().saturating_sub(MAX_PENDING - 1);
        for (i, (modified, path)) in files.iter().enumerate() {
            let old = now
                .duration_since(*modified)
                .map(|d| d.as_secs() > PENDING_MAX_AGE_SECS)
                .unwrap_or(false);
            if old || i < excess {
                let _ = std::fs::remove_file(path);
            }
        }
    }
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
        let der = keys.create_csr(&ips, KeyType::EcdsaP256).unwrap();
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
}
