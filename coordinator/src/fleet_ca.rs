//! The coordinator's state directory and its fleet CA: the private PKI for mutual TLS
//! between the coordinator, agents and operators. It never signs anything a browser
//! trusts; ACME issuance is separate ([`crate::acme`]).
//!
//! Files (keys 0600, directory 0700):
//! `fleet-ca.pem|key`, `server.pem|key`, `admin.pem|key`, `store/`.

use certfleet_shared::fsutil::{create_dir_with_mode, read_limited, write_atomic};
use certfleet_shared::ids::HostId;
use certfleet_shared::x509::{sha256_hex, CertInfo};
use certfleet_shared::{ADMIN_URI_PREFIX, HOST_URI_PREFIX};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateSigningRequestDer;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

const CA_LIFETIME_DAYS: i64 = 3650;
/// Default lifetime of a coordinator's own server certificate (`[server]
/// certificate_lifetime_secs`); it renews itself at two thirds (`crate::server_cert`).
pub const SERVER_LIFETIME_SECS: i64 = 90 * 24 * 3600;
/// Default agent identity lifetime (the config's `[server] identity_lifetime_secs`).
pub const AGENT_IDENTITY_LIFETIME_SECS: i64 = 7 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {0} already holds a fleet CA; refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    #[error("state directory {0} is not initialised; run `certfleet-coordinator init` first")]
    NotInitialised(PathBuf),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the enrollment CSR is invalid: {0}")]
    BadCsr(String),
    #[error("{0}")]
    Invalid(String),
}

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("fleet-ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("fleet-ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn admin_cert(&self) -> PathBuf {
        self.root.join("admin.pem")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.root.join("admin.key")
    }

    pub fn read(&self, path: &Path) -> Result<String, CaError> {
        let bytes = read_limited(path, 1 << 20).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CaError::NotInitialised(self.root.clone())
            } else {
                CaError::Io {
                    path: path.into(),
                    source,
                }
            }
        })?;
        String::from_utf8(bytes)
            .map_err(|_| CaError::Invalid(format!("{} is not UTF-8 PEM", path.display())))
    }

    pub(crate) fn write(&self, path: &Path, content: &str, mode: u32) -> Result<(), CaError> {
        write_atomic(path, content.as_bytes(), mode).map_err(|source| CaError::Io {
            path: path.into(),
            source,
        })
    }

    /// SHA-256 of the fleet CA certificate (DER), the value agents pin with `--ca-sha256`.
    pub fn ca_fingerprint(&self) -> Result<String, CaError> {
        let pem = self.read(&self.ca_cert())?;
        let der = certfleet_shared::x509::parse_pem_chain(&pem)
            .map_err(|e| CaError::Invalid(e.to_string()))?;
        Ok(sha256_hex(&der[0]))
    }
}

fn validity(params: &mut CertificateParams, days: i64, now: i64) -> Result<(), CaError> {
    validity_secs(params, days * 24 * 3600, now)
}

/// Valid from a little before `now` (unix seconds; clock skew: 5 minutes, or a tenth of a
/// short lifetime) for `secs`.
fn validity_secs(params: &mut CertificateParams, secs: i64, now: i64) -> Result<(), CaError> {
    let now = OffsetDateTime::from_unix_timestamp(now)
        .map_err(|e| CaError::Invalid(format!("the clock reads {now}, not a date: {e}")))?;
    params.not_before = now - Duration::seconds((secs / 10).min(300));
    params.not_after = now + Duration::seconds(secs);
    Ok(())
}

fn random_serial(params: &mut CertificateParams) {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
}

/// Creates the state directory: fleet CA, server certificate for `names`/`ips` (valid
/// `server_lifetime_secs`), the first admin's credential (operator
/// [`crate::operators::STATE_DIR_OPERATOR`], [`crate::operators::DEFAULT_LIFETIME_SECS`]),
/// all valid from `now` (unix seconds). Refuses to overwrite an existing CA. A second
/// coordinator of the fleet is made from this one by `crate::node` instead.
pub fn init(
    dir: &StateDir,
    names: &[String],
    ips: &[IpAddr],
    server_lifetime_secs: i64,
    now: i64,
) -> Result<String, CaError> {
    if dir.ca_key().exists() {
        return Err(CaError::AlreadyInitialised(dir.root.clone()));
    }
    create_dir_with_mode(&dir.root, 0o700).map_err(|source| CaError::Io {
        path: dir.root.clone(),
        source,
    })?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!(
            "certfleet fleet CA {}",
            hex::encode(rand::random::<[u8; 4]>())
        ),
    );
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, CA_LIFETIME_DAYS, now)?;
    random_serial(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let node = NodeCredentials::make(
        &issuer,
        names,
        ips,
        server_lifetime_secs,
        crate::operators::STATE_DIR_OPERATOR,
        now,
    )?;
    // Keys first, CA key last: its presence marks a complete init.
    node.write(dir)?;
    dir.write(&dir.ca_cert(), &ca_cert.pem(), 0o644)?;
    dir.write(&dir.ca_key(), &issuer.key().serialize_pem(), 0o600)?;
    Ok(sha256_hex(ca_cert.der()))
}

/// One node's own credentials, signed by the fleet CA: its server certificate for its
/// `names`/`ips`, and an admin operator's credential for its admin API (adopted into the
/// store at `serve` start, see `crate::operators::adopt_state_dir_credential`).
pub(crate) struct NodeCredentials {
    server: ServerCredential,
    admin_key: String,
    admin_cert: String,
}

/// A coordinator's TLS server key and certificate (PEM).
pub struct ServerCredential {
    pub key_pem: String,
    pub cert_pem: String,
}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCredential")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A fresh server key and certificate for `names`/`ips`, valid `secs` from `now`.
fn server_credential(
    issuer: &Issuer<'_, KeyPair>,
    names: &[String],
    ips: &[IpAddr],
    secs: i64,
    now: i64,
) -> Result<ServerCredential, CaError> {
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::default();
    server.distinguished_name = DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, "certfleet coordinator");
    server.subject_alt_names = names
        .iter()
        .map(|n| n.clone().try_into().map(SanType::DnsName))
        .collect::<Result<Vec<_>, _>>()?;
    server
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity_secs(&mut server, secs, now)?;
    random_serial(&mut server);
    let cert = server.signed_by(&server_key, issuer)?;
    Ok(ServerCredential {
        key_pem: server_key.serialize_pem(),
        cert_pem: cert.pem(),
    })
}

impl ServerCredential {
    /// Writes it into `dir` (key 0600), key first: a crash in between leaves a key that
    /// does not match the certificate, which `serve` replaces at start.
    pub fn write(&self, dir: &StateDir) -> Result<(), CaError> {
        dir.write(&dir.server_key(), &self.key_pem, 0o600)?;
        dir.write(&dir.server_cert(), &self.cert_pem, 0o644)
    }
}

impl NodeCredentials {
    /// Fresh keys and certificates valid from `now`; the operator credential names
    /// `operator`.
    pub(crate) fn make(
        issuer: &Issuer<'_, KeyPair>,
        names: &[String],
        ips: &[IpAddr],
        server_lifetime_secs: i64,
        operator: &str,
        now: i64,
    ) -> Result<Self, CaError> {
        let server = server_credential(issuer, names, ips, server_lifetime_secs, now)?;
        let admin_key = KeyPair::generate()?;
        let admin_cert = client_params(
            operator,
            &format!("{ADMIN_URI_PREFIX}{operator}"),
            crate::operators::DEFAULT_LIFETIME_SECS,
            now,
        )?
        .signed_by(&admin_key, issuer)?;
        Ok(Self {
            server,
            admin_key: admin_key.serialize_pem(),
            admin_cert: admin_cert.pem(),
        })
    }

    /// Writes them into `dir` (keys 0600).
    pub(crate) fn write(&self, dir: &StateDir) -> Result<(), CaError> {
        self.server.write(dir)?;
        dir.write(&dir.admin_key(), &self.admin_key, 0o600)?;
        dir.write(&dir.admin_cert(), &self.admin_cert, 0o644)
    }
}

fn client_params(cn: &str, uri: &str, secs: i64, now: i64) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = vec![SanType::URI(uri.to_string().try_into()?)];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity_secs(&mut p, secs, now)?;
    random_serial(&mut p);
    Ok(p)
}

/// The public key of a CSR whose signature checks out (rcgen verifies it on parsing).
fn csr_public_key(csr_der: &[u8]) -> Result<rcgen::PublicKey, CaError> {
    if csr_der.len() > certfleet_shared::x509::MAX_CSR_BYTES {
        return Err(CaError::BadCsr("too large".into()));
    }
    let csr =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
    Ok(csr.public_key)
}

/// The loaded fleet CA, able to sign agent identities, operator credentials and the
/// coordinator's own server certificate.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    /// The CA certificate's notAfter (unix seconds).
    pub not_after: i64,
    /// Lifetime of the agent identities it signs.
    pub identity_lifetime_secs: i64,
}

impl FleetCa {
    pub fn load(dir: &StateDir) -> Result<Self, CaError> {
        let ca_pem = dir.read(&dir.ca_cert())?;
        let key_pem = dir.read(&dir.ca_key())?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)?;
        let der = certfleet_shared::x509::parse_pem_chain(&ca_pem)
            .map_err(|e| CaError::Invalid(format!("{}: {e}", dir.ca_cert().display())))?;
        let info = CertInfo::from_der(&der[0])
            .map_err(|e| CaError::Invalid(format!("{}: {e}", dir.ca_cert().display())))?;
        Ok(Self {
            issuer,
            ca_pem,
            not_after: info.not_after,
            identity_lifetime_secs: AGENT_IDENTITY_LIFETIME_SECS,
        })
    }

    /// A new server key and certificate for `names`/`ips`, valid `secs` from `now`.
    pub fn sign_server(
        &self,
        names: &[String],
        ips: &[IpAddr],
        secs: i64,
        now: i64,
    ) -> Result<ServerCredential, CaError> {
        server_credential(&self.issuer, names, ips, secs, now)
    }

    /// Signs operator `name`'s credential from the CSR made by its CLI (only the public
    /// key is used, after the CSR's signature is checked), valid `secs` from `now`.
    pub fn sign_operator(
        &self,
        csr_der: &[u8],
        name: &str,
        secs: i64,
        now: i64,
    ) -> Result<(String, CertInfo), CaError> {
        let public_key = csr_public_key(csr_der)?;
        let params = client_params(name, &format!("{ADMIN_URI_PREFIX}{name}"), secs, now)?;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        let info = CertInfo::from_der(cert.der()).map_err(|e| CaError::Invalid(e.to_string()))?;
        Ok((cert.pem(), info))
    }

    /// Signs an agent identity for `host` from the agent's CSR, valid from `now` (unix
    /// seconds). Only the CSR's public key is used (after its signature is verified); names
    /// come from us.
    pub fn sign_agent(
        &self,
        csr_der: &[u8],
        host: &HostId,
        now: i64,
    ) -> Result<(String, CertInfo), CaError> {
        let public_key = csr_public_key(csr_der)?;
        let params = client_params(
            host.as_str(),
            &format!("{HOST_URI_PREFIX}{host}"),
            self.identity_lifetime_secs,
            now,
        )?;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        let info = CertInfo::from_der(cert.der()).map_err(|e| CaError::Invalid(e.to_string()))?;
        Ok((cert.pem(), info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_sign_an_agent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(&tmp.path().join("state"));
        let now = 1_750_000_000;
        let fp = init(
            &dir,
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            SERVER_LIFETIME_SECS,
            now,
        )
        .unwrap();
        assert_eq!(fp, dir.ca_fingerprint().unwrap());
        assert!(matches!(
            init(&dir, &[], &[], SERVER_LIFETIME_SECS, now),
            Err(CaError::AlreadyInitialised(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        for key in [dir.ca_key(), dir.server_key(), dir.admin_key()] {
            assert_eq!(
                std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let ca = FleetCa::load(&dir).unwrap();
        let agent_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::DnsName("evil.example".try_into().unwrap())];
        let csr = p.serialize_request(&agent_key).unwrap();
        let host = HostId::generate();
        let (_, info) = ca.sign_agent(csr.der(), &host, now).unwrap();
        assert_eq!(
            info.not_after,
            now + AGENT_IDENTITY_LIFETIME_SECS,
            "valid from the clock's now, not the machine's"
        );
        assert_eq!(info.uris, vec![format!("{HOST_URI_PREFIX}{host}")]);
        assert!(
            info.dns_names.is_empty(),
            "names asked for in the CSR are ignored"
        );
        assert!(ca.sign_agent(b"garbage", &host, now).is_err());
    }
}
