//! Checks on issued certificates: what is in the leaf, whether the chain verifies against
//! pebble's issuing root, whether the key file belongs to the leaf, and whether key
//! material shows up anywhere it must not (the key-leak scan).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use rcgen::PublicKeyData as _;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::*;

/// What the tests look at in a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafInfo {
    pub ip_sans: BTreeSet<IpAddr>,
    pub dns_sans: Vec<String>,
    /// Other SAN kinds, debug-formatted.
    pub other_sans: Vec<String>,
    pub common_names: Vec<String>,
    /// Lowercase hex, no colons, leading zero bytes stripped.
    pub serial_hex: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

/// SHA-256 of `bytes`, lowercase hex (how certfleet names keys by their SPKI).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Normalises a hex serial for comparison: lowercase, no colons, no leading zeros.
pub fn normalize_serial(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0".to_owned()
    } else {
        t.to_owned()
    }
}

pub fn leaf_info(der: &CertificateDer<'_>) -> anyhow::Result<LeafInfo> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).context("parsing leaf")?;
    let mut ip_sans = BTreeSet::new();
    let mut dns_sans = Vec::new();
    let mut other_sans = Vec::new();
    if let Some(san) = cert.subject_alternative_name().context("SAN extension")? {
        for name in &san.value.general_names {
            match name {
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b)?),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b)?),
                        n => anyhow::bail!("IP SAN of {n} bytes"),
                    };
                    ip_sans.insert(ip);
                }
                GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                other => other_sans.push(format!("{other:?}")),
            }
        }
    }
    let common_names = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().map(str::to_owned).unwrap_or_default())
        .collect();
    Ok(LeafInfo {
        ip_sans,
        dns_sans,
        other_sans,
        common_names,
        serial_hex: normalize_serial(&hex::encode(cert.raw_serial())),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        spki_der: cert.tbs_certificate.subject_pki.raw.to_vec(),
    })
}

/// Parses the leaf (first certificate) of a PEM chain file.
pub fn leaf_info_from_file(path: &Path) -> anyhow::Result<LeafInfo> {
    let certs = crate::tlsutil::certs_from_file(path)?;
    leaf_info(&certs[0])
}

/// Verifies `fullchain` (leaf first) up to `root` as a TLS server certificate for `ip`,
/// with rustls' WebPKI verifier.
pub fn verify_chain_for_ip(
    fullchain: &[CertificateDer<'static>],
    root: &CertificateDer<'static>,
    ip: IpAddr,
) -> anyhow::Result<()> {
    verify_chain(fullchain, root, &ServerName::IpAddress(ip.into()))
        .map_err(|e| anyhow::anyhow!("chain does not verify for {ip}: {e:#}"))
}

/// Verifies `fullchain` (leaf first) up to `root` as a TLS server certificate for the DNS
/// name `name`, with rustls' WebPKI verifier.
pub fn verify_chain_for_name(
    fullchain: &[CertificateDer<'static>],
    root: &CertificateDer<'static>,
    name: &str,
) -> anyhow::Result<()> {
    let server_name =
        ServerName::try_from(name.to_owned()).with_context(|| format!("not a name: {name:?}"))?;
    verify_chain(fullchain, root, &server_name)
        .map_err(|e| anyhow::anyhow!("chain does not verify for {name}: {e:#}"))
}

fn verify_chain(
    fullchain: &[CertificateDer<'static>],
    root: &CertificateDer<'static>,
    server_name: &ServerName<'static>,
) -> anyhow::Result<()> {
    let (leaf, intermediates) = fullchain.split_first().context("empty chain")?;
    let roots = std::sync::Arc::new(crate::tlsutil::root_store(std::slice::from_ref(root))?);
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots,
        crate::tlsutil::provider(),
    )
    .build()?;
    verifier
        .verify_server_cert(leaf, intermediates, server_name, &[], UnixTime::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The SubjectPublicKeyInfo of a PKCS#8 PEM private key.
pub fn key_spki_from_pem(key_pem: &str) -> anyhow::Result<Vec<u8>> {
    let kp = rcgen::KeyPair::from_pem(key_pem)
        .context("parsing private key (the harness reads PKCS#8 `PRIVATE KEY` PEM)")?;
    Ok(kp.subject_public_key_info())
}

/// Byte strings that would reveal a private key if found somewhere: its DER, the DER in
/// base64 (standard, url-safe), every long base64 line of the PEM, and the raw EC scalar
/// (binary, hex, base64) when it can be located.
pub fn key_needles(key_pem: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let der = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .context("no private key in PEM")?
        .secret_der()
        .to_vec();
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut needles = vec![
        ("key DER".to_owned(), der.clone()),
        ("key DER base64".to_owned(), b64.encode(&der).into_bytes()),
        (
            "key DER base64url".to_owned(),
            b64url.encode(&der).into_bytes(),
        ),
    ];
    for (i, line) in key_pem.lines().enumerate() {
        let line = line.trim();
        if line.len() >= 32 && !line.starts_with("-----") {
            needles.push((format!("key PEM line {i}"), line.as_bytes().to_vec()));
        }
    }
    if let Some(scalar) = ec_private_scalar(&der) {
        needles.push(("EC private scalar (raw)".to_owned(), scalar.to_vec()));
        needles.push((
            "EC private scalar (hex)".to_owned(),
            hex::encode(scalar).into_bytes(),
        ));
        needles.push((
            "EC private scalar (base64url)".to_owned(),
            b64url.encode(scalar).into_bytes(),
        ));
        needles.push((
            "EC private scalar (base64)".to_owned(),
            b64.encode(scalar).into_bytes(),
        ));
    }
    Ok(needles)
}

/// Finds the private scalar inside a SEC1 `ECPrivateKey` (possibly wrapped in PKCS#8):
/// `INTEGER 1, OCTET STRING (32 | 48 bytes)`.
fn ec_private_scalar(der: &[u8]) -> Option<&[u8]> {
    for len in [32usize, 48] {
        let pat = [0x02, 0x01, 0x01, 0x04, len as u8];
        if let Some(pos) = find(der, &pat) {
            let start = pos + pat.len();
            return der.get(start..start + len);
        }
    }
    None
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    (0..=hay.len() - needle.len()).find(|&i| hay[i] == first && &hay[i..i + needle.len()] == needle)
}

/// Searches every file under `dir` (recursively) and every `(name, text)` blob for every
/// needle. Returns human-readable findings (empty = clean) and how many files were read.
pub fn scan_for_needles(
    dir: &Path,
    blobs: &[(String, Vec<u8>)],
    needles: &[(String, Vec<u8>)],
) -> anyhow::Result<(Vec<String>, usize)> {
    let mut findings = Vec::new();
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let data =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                files += 1;
                for (what, n) in needles {
                    if let Some(at) = find(&data, n) {
                        findings.push(format!("{what} found in {} at byte {at}", path.display()));
                    }
                }
            }
        }
    }
    for (name, data) in blobs {
        for (what, n) in needles {
            if let Some(at) = find(data, n) {
                findings.push(format!("{what} found in {name} at byte {at}"));
            }
        }
    }
    Ok((findings, files))
}

/// RFC 3339 → unix seconds.
pub fn rfc3339_unix(s: &str) -> anyhow::Result<i64> {
    let t = ::time::OffsetDateTime::parse(s, &::time::format_description::well_known::Rfc3339)
        .with_context(|| format!("not RFC 3339: {s:?}"))?;
    Ok(t.unix_timestamp())
}

/// Unix mode bits (e.g. 0o600) of a file.
pub fn file_mode(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777)
}
