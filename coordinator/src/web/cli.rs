//! The web view's commands on the coordinator's machine: `web login` (a one-time login
//! link, from the state directory) and the PKCS#12 file `operators add --p12` writes for a
//! browser.

use super::auth::{create_login, DEFAULT_LOGIN_TTL, MAX_LOGIN_TTL};
use crate::config::Config;
use crate::fleet_ca::StateDir;
use anyhow::Context;
use certfleet_shared::fsutil::write_atomic;
use certfleet_shared::timefmt::rfc3339;
use certfleet_shared::x509::{parse_pem_chain, CertInfo};
use certfleet_shared::ADMIN_URI_PREFIX;
use std::path::Path;

/// Where links point: `[web] url`, else https:// + the first `[server] names` entry (or
/// the listen address) and the web port.
pub fn base_url(config: &Config) -> anyhow::Result<String> {
    let listen = config.web.listen.ok_or_else(|| {
        anyhow::anyhow!("the web view is off: set [web] listen (e.g. \"127.0.0.1:8444\") in the coordinator's config and restart it")
    })?;
    if let Some(u) = &config.web.url {
        return Ok(u.trim_end_matches('/').to_owned());
    }
    Ok(match config.server.names.first() {
        Some(name) => format!("https://{name}:{}", listen.port()),
        None => format!("https://{listen}"),
    })
}

/// The operator named by the state directory's credential (`admin.pem`).
fn state_dir_operator(dir: &StateDir) -> anyhow::Result<String> {
    let path = dir.admin_cert();
    let pem = dir.read(&path)?;
    let der = parse_pem_chain(&pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no certificate", path.display()))?;
    let info = CertInfo::from_der(&der).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    info.uris
        .iter()
        .find_map(|u| u.strip_prefix(ADMIN_URI_PREFIX))
        .map(str::to_owned)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not an operator credential; name one with --operator",
                path.display()
            )
        })
}

/// A ticket written as root belongs to the state directory's owner, so a coordinator
/// running as its own user can read and remove it.
fn same_owner(dir: &StateDir) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&dir.root)?;
    let logins = super::auth::login_dir(dir);
    for e in std::iter::once(logins.clone())
        .chain(std::fs::read_dir(&logins)?.flatten().map(|e| e.path()))
    {
        let m = std::fs::metadata(&e)?;
        if m.uid() != meta.uid() || m.gid() != meta.gid() {
            std::os::unix::fs::chown(&e, Some(meta.uid()), Some(meta.gid()))?;
        }
    }
    Ok(())
}

/// `web login [--operator NAME] [--ttl 10m]`: prints a link that logs a browser in once.
pub fn login(
    config: &Config,
    operator: Option<&str>,
    ttl: &str,
    now: i64,
) -> anyhow::Result<crate::cli::Printed> {
    let base = base_url(config)?;
    let ttl_secs = match ttl.trim() {
        "" => DEFAULT_LOGIN_TTL,
        t => {
            let d = humantime::parse_duration(t)
                .map_err(|e| anyhow::anyhow!("--ttl {t:?}: {e} (write it like 10m)"))?;
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
        }
    };
    anyhow::ensure!(
        (10..=MAX_LOGIN_TTL).contains(&ttl_secs),
        "--ttl must be between 10s and 1h: a login link is for opening right away"
    );
    let dir = StateDir::new(&config.state_dir);
    anyhow::ensure!(
        dir.ca_key().exists(),
        "{} holds no coordinator (run `certfleet-coordinator init` first, or pass the coordinator's --config)",
        dir.root.display()
    );
    let name = match operator {
        Some(n) => n.to_owned(),
        None => state_dir_operator(&dir)?,
    };
    crate::operators::check_name(&name).map_err(anyhow::Error::msg)?;
    let token = create_login(&dir, &name, ttl_secs, now)
        .with_context(|| format!("writing the login ticket under {}", dir.root.display()))?;
    same_owner(&dir).context("giving the login ticket to the state directory's owner")?;
    let link = format!("{base}/login?token={token}");
    Ok(crate::cli::Printed::new(
        format!(
            "login link for operator {name}, valid until {} and only once (the coordinator checks the operator is current when it is opened):\n{link}\n",
            rfc3339(now + ttl_secs)
        ),
        serde_json::json!({"operator": name, "link": link, "expires": rfc3339(now + ttl_secs)}),
    ))
}

/// `operators add --p12`: `operator.p12` (the key, the certificate and the fleet CA;
/// PBES2 with AES-256 and a SHA-256 MAC) and its random password in
/// `operator.p12.password`, both 0600. Returns the two paths.
pub fn write_p12(
    out: &Path,
    name: &str,
    key_pem: &str,
    cert_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let key_der = rustls_pki_types::pem::PemObject::from_pem_slice(key_pem.as_bytes())
        .map(|k: rustls_pki_types::PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec())
        .map_err(|e| anyhow::anyhow!("the new key is not PKCS#8 PEM: {e}"))?;
    let mut chain = Vec::new();
    for pem in [cert_pem, ca_pem] {
        for der in parse_pem_chain(pem).map_err(|e| anyhow::anyhow!("{e}"))? {
            chain.push(Certificate::from_der(&der).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
    }
    let local_id = rand::random::<[u8; 20]>();
    let mut store = KeyStore::new();
    store.add_entry(
        name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(key_der, local_id, chain)),
    );
    let password = hex::encode(rand::random::<[u8; 16]>());
    let bytes = store
        .writer(&password)
        .write()
        .map_err(|e| anyhow::anyhow!("writing the PKCS#12 file: {e}"))?;
    let (p12, pass) = (out.join("operator.p12"), out.join("operator.p12.password"));
    write_atomic(&pass, format!("{password}\n").as_bytes(), 0o600)?;
    write_atomic(&p12, &bytes, 0o600)?;
    Ok((p12, pass))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p12_holds_the_key_and_chain_under_its_password() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fleet CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["ann".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (p12, pass) = write_p12(
            tmp.path(),
            "ann",
            &key.serialize_pem(),
            &cert.pem(),
            &ca.pem(),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [&p12, &pass] {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let password = std::fs::read_to_string(&pass).unwrap();
        let bytes = std::fs::read(&p12).unwrap();
        assert!(p12_keystore::KeyStore::from_pkcs12(&bytes, "wrong").is_err());
        let ks = p12_keystore::KeyStore::from_pkcs12(&bytes, password.trim()).unwrap();
        let (alias, chain) = ks.private_key_chain().unwrap();
        assert_eq!(alias, "ann");
        assert_eq!(chain.key(), key.serialize_der().as_slice());
        assert_eq!(chain.chain().len(), 2);
        assert_eq!(chain.chain()[0].as_der(), cert.der().as_ref());
    }
}
