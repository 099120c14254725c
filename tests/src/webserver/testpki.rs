//! Throw-away certificates: the bootstrap certificate a web server starts with.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::CertificateDer;

use super::CertPaths;

/// A self-signed CA and a leaf for a set of IPs: the bootstrap certificate, or a stand-in
/// "new" certificate in tests.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub leaf_der: CertificateDer<'static>,
    pub leaf_pem: String,
    pub key_pem: String,
}

impl TestPki {
    /// A fresh CA and a leaf with exactly `ips` as SANs (`label` in both CNs).
    pub fn generate(label: &str, ips: &[IpAddr]) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("certfleet-tests {label} CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("certfleet-tests {label}"));
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&leaf_key, &ca)?;
        Ok(Self {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            leaf_der: leaf.der().clone(),
            leaf_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// Leaf then CA.
    pub fn fullchain_pem(&self) -> String {
        format!("{}{}", self.leaf_pem, self.ca_pem)
    }

    /// Writes all four files (creating parent dirs; the key with mode 0600).
    pub fn write_to(&self, paths: &CertPaths) -> anyhow::Result<()> {
        write_file(&paths.cert, &self.leaf_pem, 0o644)?;
        write_file(&paths.chain, &self.ca_pem, 0o644)?;
        write_file(&paths.fullchain, &self.fullchain_pem(), 0o644)?;
        write_file(&paths.key, &self.key_pem, 0o600)
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
