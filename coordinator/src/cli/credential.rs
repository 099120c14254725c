//! Which operator credential the CLI presents: `--credential DIR` (`operator.pem`,
//! `operator.key`, `fleet-ca.pem`, as `operators add --out DIR` writes them), else the
//! state directory's `admin.pem|key` (the admin `init` made). Checked before connecting:
//! an expired credential is named with the fix instead of a TLS alert.

use crate::config::Config;
use crate::fleet_ca::StateDir;
use anyhow::Context;
use certfleet_shared::fsutil::{read_limited, write_atomic};
use certfleet_shared::timefmt::rfc3339;
use certfleet_shared::x509::{parse_pem_chain, CertInfo};
use std::path::{Path, PathBuf};

/// File names inside a `--credential DIR`.
pub const CERT_FILE: &str = "operator.pem";
pub const KEY_FILE: &str = "operator.key";
pub const CA_FILE: &str = "fleet-ca.pem";

/// The three files of one credential.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A loaded credential (PEM). `Debug` hides the key.
pub struct Credential {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
}

fn read(path: &Path) -> anyhow::Result<String> {
    let bytes =
        read_limited(path, 1 << 20).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not PEM text", path.display()))
}

/// `*.new` beside `path`: a renewal writes there first.
fn staged(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

impl CredentialFiles {
    pub fn locate(config: &Config, dir: Option<&Path>) -> Self {
        match dir {
            Some(d) => Self::in_dir(d),
            None => {
                let s = StateDir::new(&config.state_dir);
                Self {
                    cert: s.admin_cert(),
                    key: s.admin_key(),
                    ca: s.ca_cert(),
                }
            }
        }
    }

    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
            ca: dir.join(CA_FILE),
        }
    }

    /// Finishes a renewal a crash interrupted (new key renamed first, then the
    /// certificate), then reads the credential and refuses an expired one naming the fix.
    pub fn load(&self, now: i64) -> anyhow::Result<Credential> {
        if staged(&self.cert).exists() {
            if staged(&self.key).exists() {
                std::fs::rename(staged(&self.key), &self.key)
                    .with_context(|| format!("finishing the renewal of {}", self.key.display()))?;
            }
            std::fs::rename(staged(&self.cert), &self.cert)
                .with_context(|| format!("finishing the renewal of {}", self.cert.display()))?;
        }
        let cert_pem = read(&self.cert).with_context(|| {
            "no operator credential: pass --credential DIR (from `operators add --out DIR`), or run on the coordinator as the user owning its state directory"
        })?;
        let der = parse_pem_chain(&cert_pem)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.cert.display()))?;
        let info = CertInfo::from_der(der.first().context("no certificate")?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.cert.display()))?;
        if info.not_after <= now {
            let name = info
                .uris
                .iter()
                .find_map(|u| u.strip_prefix(certfleet_shared::ADMIN_URI_PREFIX))
                .unwrap_or("?");
            anyhow::bail!(
                "the operator credential {} (operator {name}) expired at {}; it can no longer be renewed: an admin issues a new one with `certfleet-coordinator operators add {name} --role viewer|admin --out DIR` (for the state directory's own admin: `certfleet-coordinator operators bootstrap`, then restart the coordinator)",
                self.cert.display(),
                rfc3339(info.not_after)
            );
        }
        Ok(Credential {
            ca_pem: read(&self.ca)?,
            key_pem: read(&self.key)?,
            cert_pem,
            info,
        })
    }

    /// Replaces the credential with a renewed one: both written beside the old files
    /// first (`*.new`, the key 0600), then the key renamed, then the certificate.
    pub fn replace(&self, key_pem: &str, cert_pem: &str) -> anyhow::Result<()> {
        let (key_new, cert_new) = (staged(&self.key), staged(&self.cert));
        write_atomic(&key_new, key_pem.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", key_new.display()))?;
        write_atomic(&cert_new, cert_pem.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", cert_new.display()))?;
        std::fs::rename(&key_new, &self.key)
            .with_context(|| format!("renaming {}", key_new.display()))?;
        std::fs::rename(&cert_new, &self.cert)
            .with_context(|| format!("renaming {}", cert_new.display()))?;
        Ok(())
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("info", &self.info)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}
