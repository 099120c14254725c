//! PEM/DER parsing and inspection of certificates and CSRs. Everything that arrives from
//! another process goes through here before it is trusted or stored.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest PEM chain we accept (a chain is a few KiB).
pub const MAX_CHAIN_PEM_BYTES: usize = 64 * 1024;
/// Largest CSR we accept.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error("{what} is {len} bytes, more than the {limit} allowed")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("no certificate found in PEM input")]
    Empty,
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error("malformed certificate: {0}")]
    Cert(String),
    #[error("malformed CSR: {0}")]
    Csr(String),
    #[error("CSR signature does not verify")]
    CsrSignature,
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Parses a PEM chain (leaf first) into DER certificates.
pub fn parse_pem_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, X509Error> {
    if pem.len() > MAX_CHAIN_PEM_BYTES {
        return Err(X509Error::TooLarge {
            what: "certificate chain",
            len: pem.len(),
            limit: MAX_CHAIN_PEM_BYTES,
        });
    }
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| X509Error::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(X509Error::Empty);
    }
    Ok(certs)
}

/// DER certificates back to PEM.
pub fn chain_to_pem(chain: &[CertificateDer<'_>]) -> String {
    chain
        .iter()
        .map(|c| der_to_pem("CERTIFICATE", c.as_ref()))
        .collect()
}

/// The first PKCS#8 private key (`PRIVATE KEY`) in `pem`, which may also hold
/// certificates or other blocks (haproxy's combined file), as one PEM block of its own.
/// Found and decoded by rustls-pki-types' PEM reader (which skips the other sections),
/// not by searching for markers. None when there is none or it is not valid base64.
pub fn pkcs8_key_pem(pem: &str) -> Option<String> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(der_to_pem("PRIVATE KEY", der.secret_pkcs8_der()))
}

/// One PEM block.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[first..])
}

/// What we need to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial as lowercase hex of its big-endian bytes without leading zero bytes (even
    /// length, as `openssl x509 -serial` prints it).
    pub serial_hex: String,
    pub not_before: i64,
    pub not_after: i64,
    pub ips: Vec<IpAddr>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    pub subject_cn: Option<String>,
    pub is_ca: bool,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, X509Error> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| X509Error::Cert(e.to_string()))?;
        let mut info = CertInfo {
            serial_hex: serial_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            ips: Vec::new(),
            dns_names: Vec::new(),
            uris: Vec::new(),
            spki_der: cert.public_key().raw.to_vec(),
            subject_cn: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            is_ca: cert.is_ca(),
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            collect_names(
                &san.value.general_names,
                &mut info.ips,
                &mut info.dns_names,
                &mut info.uris,
            );
        }
        Ok(info)
    }

    /// Seconds of validity, notBefore to notAfter.
    pub fn lifetime_secs(&self) -> i64 {
        self.not_after - self.not_before
    }
}

fn collect_names(
    names: &[GeneralName<'_>],
    ips: &mut Vec<IpAddr>,
    dns: &mut Vec<String>,
    uris: &mut Vec<String>,
) {
    for name in names {
        match name {
            GeneralName::IPAddress(bytes) => {
                if let Ok(b) = <[u8; 4]>::try_from(*bytes) {
                    ips.push(IpAddr::from(b));
                } else if let Ok(b) = <[u8; 16]>::try_from(*bytes) {
                    ips.push(IpAddr::from(b));
                }
            }
            GeneralName::DNSName(n) => dns.push((*n).to_owned()),
            GeneralName::URI(u) => uris.push((*u).to_owned()),
            _ => {}
        }
    }
}

/// What a (signature-verified) CSR asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    pub ips: Vec<IpAddr>,
    pub dns_names: Vec<String>,
    pub subject_cn: Option<String>,
    /// DER SubjectPublicKeyInfo of the requested key.
    pub spki_der: Vec<u8>,
    /// Algorithm OID of the public key, dotted.
    pub key_algorithm: String,
}

impl CsrInfo {
    /// Parses a DER CSR and verifies its self-signature (proof of possession).
    pub fn from_der(der: &[u8]) -> Result<Self, X509Error> {
        use x509_parser::certification_request::X509CertificationRequest;
        if der.len() > MAX_CSR_BYTES {
            return Err(X509Error::TooLarge {
                what: "CSR",
                len: der.len(),
                limit: MAX_CSR_BYTES,
            });
        }
        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| X509Error::Csr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(X509Error::Csr("trailing bytes after the CSR".into()));
        }
        csr.verify_signature()
            .map_err(|_| X509Error::CsrSignature)?;
        let info = &csr.certification_request_info;
        let mut out = CsrInfo {
            ips: Vec::new(),
            dns_names: Vec::new(),
            subject_cn: info
                .subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            spki_der: info.subject_pki.raw.to_vec(),
            key_algorithm: info.subject_pki.algorithm.algorithm.to_id_string(),
        };
        let mut uris = Vec::new();
        if let Some(exts) = csr.requested_extensions() {
            for ext in exts {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    collect_names(
                        &san.general_names,
                        &mut out.ips,
                        &mut out.dns_names,
                        &mut uris,
                    );
                }
            }
        }
        Ok(out)
    }
}

/// True when the PKCS#8 private key `key_der` belongs to the SubjectPublicKeyInfo `spki_der`.
pub fn key_matches_spki(key_pem: &str, spki_der: &[u8]) -> bool {
    rcgen::KeyPair::from_pem(key_pem)
        .map(|kp| rcgen::PublicKeyData::subject_public_key_info(&kp) == spki_der)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

    fn csr_for(ips: &[&str]) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = ips
            .iter()
            .map(|s| SanType::IpAddress(s.parse().unwrap()))
            .collect();
        let csr = params.serialize_request(&key).unwrap();
        (csr.der().to_vec(), key)
    }

    #[test]
    fn csr_is_parsed_and_verified() {
        let (der, key) = csr_for(&["8.8.8.8", "2001:4860::8888"]);
        let info = CsrInfo::from_der(&der).unwrap();
        assert_eq!(info.ips.len(), 2);
        assert_eq!(info.subject_cn, None);
        assert!(key_matches_spki(&key.serialize_pem(), &info.spki_der));
        assert!(!key_matches_spki(
            &KeyPair::generate().unwrap().serialize_pem(),
            &info.spki_der
        ));
    }

    #[test]
    fn tampered_and_hostile_csrs_are_refused() {
        let (mut der, _) = csr_for(&["8.8.8.8"]);
        let n = der.len();
        der[n - 5] ^= 0xff; // inside the signature
        assert!(CsrInfo::from_der(&der).is_err());
        assert!(CsrInfo::from_der(b"not a csr").is_err());
        assert!(CsrInfo::from_der(&vec![0x30; MAX_CSR_BYTES + 1]).is_err());
    }

    #[test]
    fn certificate_inspection() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress("1.2.3.4".parse().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        let chain = parse_pem_chain(&cert.pem()).unwrap();
        let info = CertInfo::from_der(&chain[0]).unwrap();
        assert_eq!(info.ips, vec!["1.2.3.4".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            info.spki_der,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
        assert!(!info.serial_hex.is_empty() && info.serial_hex.len().is_multiple_of(2));
        assert_eq!(serial_hex(&[0x00, 0x0a, 0xbc]), "0abc");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert!(parse_pem_chain("").is_err());
        assert!(
            parse_pem_chain("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }

    #[test]
    fn the_pkcs8_key_is_found_among_other_blocks() {
        let key = rcgen::KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // haproxy's combined file: certificate first, then the key, then more.
        let combined = format!("{}{key_pem}{}", cert.pem(), cert.pem());
        let found = pkcs8_key_pem(&combined).expect("key found");
        assert_eq!(found, key_pem.replace("\r\n", "\n"));
        assert_eq!(pkcs8_key_pem(&key_pem).as_deref(), Some(found.as_str()));
        // No key, a truncated one, an EC (SEC1) key: none.
        assert_eq!(pkcs8_key_pem(&cert.pem()), None);
        assert_eq!(pkcs8_key_pem("-----BEGIN PRIVATE KEY-----"), None);
        assert_eq!(
            pkcs8_key_pem("-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n"),
            None
        );
        assert_eq!(
            pkcs8_key_pem("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"),
            None
        );
    }
}
