//! Several coordinators of one fleet: a second node is made from a bundle the first
//! exports (`certfleet-coordinator node export --out FILE`, then `node join --bundle FILE`
//! on the new node).
//!
//! What a node needs from the fleet is its CA: the certificate agents pinned at enrollment
//! and trust for every session, and the private key that signs agent identities at
//! enrollment and rotation on any node. That is all the bundle holds. Each node makes its
//! own server key and certificate (signed by the fleet CA, for the names and addresses in
//! its own `[server]` config) and its own admin operator's credential (`operator-<hex>`,
//! adopted into the store at its first `serve`); no node's server or
//! operator key leaves it. The bundle holds a private key: it is written 0600, refused when
//! others may read it, and is to be moved like a secret and deleted after the join. Keys
//! live as 0600 files in each node's state directory, never in a store.

use crate::fleet_ca::{CaError, NodeCredentials, StateDir};
use certfleet_shared::fsutil::{create_dir_with_mode, read_limited};
use certfleet_shared::x509::{key_matches_spki, parse_pem_chain, sha256_hex, CertInfo};
use rcgen::{Issuer, KeyPair};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The bundle's `format` value this coordinator writes and reads.
pub const BUNDLE_FORMAT: &str = "certfleet-node-bundle/1";

/// What `node export` writes (JSON).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    /// SHA-256 of the fleet CA certificate (DER), as `ca-fingerprint` prints it.
    pub ca_sha256: String,
    /// Unix time of the export.
    pub created: i64,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("format", &self.format)
            .field("ca_sha256", &self.ca_sha256)
            .field("created", &self.created)
            .field("ca_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What `node join` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The CA files and this node's own credentials were written.
    Joined { ca_sha256: String },
    /// The state directory already holds this fleet's CA and its own credentials: nothing
    /// was changed.
    AlreadyMember { ca_sha256: String },
}

impl Bundle {
    /// Checks a bundle: known format, one CA certificate, the key is that certificate's,
    /// the fingerprint is that certificate's.
    pub fn check(&self) -> Result<(), CaError> {
        let bad = |m: String| CaError::Invalid(format!("the node bundle is not usable: {m}"));
        if self.format != BUNDLE_FORMAT {
            return Err(bad(format!(
                "format {:?}; this coordinator reads {BUNDLE_FORMAT:?} (export it again with the same version on both nodes)",
                self.format
            )));
        }
        let chain = parse_pem_chain(&self.ca_cert_pem).map_err(|e| bad(e.to_string()))?;
        let [ca] = chain.as_slice() else {
            return Err(bad("ca_cert_pem must hold exactly one certificate".into()));
        };
        let info = CertInfo::from_der(ca).map_err(|e| bad(e.to_string()))?;
        if !info.is_ca {
            return Err(bad("ca_cert_pem is not a CA certificate".into()));
        }
        if !key_matches_spki(&self.ca_key_pem, &info.spki_der) {
            return Err(bad(
                "ca_key_pem is not the key of ca_cert_pem (the file was edited or mixed up)".into(),
            ));
        }
        if sha256_hex(ca) != self.ca_sha256 {
            return Err(bad(format!(
                "ca_sha256 {} is not the certificate's ({})",
                self.ca_sha256,
                sha256_hex(ca)
            )));
        }
        Ok(())
    }
}

/// The bundle of the fleet CA in `dir`, for `node join` on another coordinator.
pub fn bundle(dir: &StateDir, now: i64) -> Result<Bundle, CaError> {
    let b = Bundle {
        format: BUNDLE_FORMAT.into(),
        ca_sha256: dir.ca_fingerprint()?,
        created: now,
        ca_cert_pem: dir.read(&dir.ca_cert())?,
        ca_key_pem: dir.read(&dir.ca_key())?,
    };
    b.check()?;
    Ok(b)
}

/// Writes the bundle of `dir`'s fleet CA to `out` (0600). Refuses an existing `out`.
pub fn export(dir: &StateDir, out: &Path, now: i64) -> Result<Bundle, CaError> {
    let b = bundle(dir, now)?;
    if out.exists() {
        return Err(CaError::Invalid(format!(
            "{} already exists; remove it or choose another --out (a bundle holds the fleet CA's private key)",
            out.display()
        )));
    }
    let json = serde_json::to_string_pretty(&b).map_err(|e| CaError::Invalid(e.to_string()))?;
    dir.write(out, &json, 0o600)?;
    Ok(b)
}

/// Reads a bundle file, refusing one that others may read.
pub fn read_bundle(path: &Path) -> Result<Bundle, CaError> {
    let io = |source| CaError::Io {
        path: path.into(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CaError::Invalid(format!(
            "{} is readable by others (mode {:o}) and holds the fleet CA's private key; run `chmod 600 {}` (and keep it only until the join)",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    let bytes = read_limited(path, 1 << 20).map_err(io)?;
    let b: Bundle = serde_json::from_slice(&bytes).map_err(|e| {
        CaError::Invalid(format!(
            "{} is not a node bundle from `certfleet-coordinator node export`: {e}",
            path.display()
        ))
    })?;
    b.check()?;
    Ok(b)
}

/// Makes `dir` a node of the bundle's fleet: its own server key and certificate for
/// `names`/`ips` and its own operator credential, signed by the fleet CA, then the CA
/// certificate and key (the key last: its presence marks a complete state directory, as
/// after `init`). A state directory holding another CA is refused, naming the fix; one
/// holding this CA and its credentials is left as it is.
pub fn join(
    dir: &StateDir,
    bundle: &Bundle,
    names: &[String],
    ips: &[IpAddr],
    server_lifetime_secs: i64,
    now: i64,
) -> Result<Joined, CaError> {
    bundle.check()?;
    let ca_sha256 = bundle.ca_sha256.clone();
    if dir.ca_cert().exists() {
        let have = dir.ca_fingerprint()?;
        if have != ca_sha256 {
            return Err(CaError::Invalid(format!(
                "state directory {} already holds another fleet CA ({have}, not the bundle's {ca_sha256}); refusing to overwrite it. To make this node part of the bundle's fleet, stop its coordinator, move {} aside (its store and keys belong to the other fleet) and run `node join` again",
                dir.root.display(),
                dir.root.display()
            )));
        }
        let complete = [dir.ca_key(), dir.server_cert(), dir.server_key()]
            .iter()
            .all(|p| p.exists());
        if complete {
            return Ok(Joined::AlreadyMember { ca_sha256 });
        }
    }
    create_dir_with_mode(&dir.root, 0o700).map_err(|source| CaError::Io {
        path: dir.root.clone(),
        source,
    })?;
    let key = KeyPair::from_pem(&bundle.ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&bundle.ca_cert_pem, key)?;
    // Its own admin operator, named apart from other nodes' (a shared store holds them all).
    let operator = format!(
        "{}-{}",
        crate::operators::STATE_DIR_OPERATOR,
        hex::encode(rand::random::<[u8; 4]>())
    );
    NodeCredentials::make(&issuer, names, ips, server_lifetime_secs, &operator, now)?.write(dir)?;
    dir.write(&dir.ca_cert(), &bundle.ca_cert_pem, 0o644)?;
    dir.write(&dir.ca_key(), &bundle.ca_key_pem, 0o600)?;
    Ok(Joined::Joined { ca_sha256 })
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
