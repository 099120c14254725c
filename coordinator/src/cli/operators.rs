//! `operators add | renew | list | revoke | bootstrap`. Keys are made here, by the CLI,
//! and never leave the operator's machine: the coordinator signs a CSR.

use super::credential::{CredentialFiles, CA_FILE};
use super::{opt_time, status_err, table, Printed};
use crate::config::Config;
use crate::fleet_ca::{FleetCa, StateDir};
use anyhow::Context;
use certfleet_proto::v1::{self as pb, admin_client::AdminClient};
use certfleet_shared::fsutil::{create_dir_with_mode, write_atomic};
use certfleet_shared::timefmt::{relative, rfc3339};
use serde_json::json;
use std::path::Path;
use tonic::transport::Channel;

/// A fresh key (PEM) and a CSR for it (DER). The coordinator takes only the public key.
fn key_and_csr(name: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// `operators add NAME --role ROLE --lifetime L --out DIR`.
pub async fn add(
    client: &mut AdminClient<Channel>,
    name: &str,
    role: &str,
    lifetime_secs: u64,
    out: &Path,
    p12: bool,
) -> anyhow::Result<Printed> {
    let files = CredentialFiles::in_dir(out);
    anyhow::ensure!(
        !files.key.exists() && !files.cert.exists(),
        "{} already holds a credential; choose another --out (each operator its own directory)",
        out.display()
    );
    crate::operators::check_name(name).map_err(anyhow::Error::msg)?;
    let (key_pem, csr_der) = key_and_csr(name)?;
    let cred = client
        .add_operator(pb::AddOperatorRequest {
            name: name.into(),
            role: role.into(),
            lifetime_seconds: lifetime_secs,
            csr_der,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    create_dir_with_mode(out, 0o700).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&files.key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&files.cert, cred.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&out.join(CA_FILE), cred.ca_cert_pem.as_bytes(), 0o644)?;
    let (browser, p12_file) = if p12 {
        let (file, pass) = crate::web::cli::write_p12(
            out,
            &cred.name,
            &key_pem,
            &cred.cert_pem,
            &cred.ca_cert_pem,
        )?;
        (
            format!(
                "\nwrote {} for a browser (import it; its password is in {}, 0600)",
                file.display(),
                pass.display()
            ),
            Some(file),
        )
    } else {
        (String::new(), None)
    };
    Ok(Printed::new(
        format!(
            "operator {} ({}) added, serial {}, valid until {}\nwrote {} (key 0600); hand the directory to its owner, who runs commands with --credential {} (or CERTFLEET_CREDENTIAL) and renews with `operators renew` before it expires{}",
            cred.name,
            cred.role,
            cred.serial,
            rfc3339(cred.not_after_unix),
            out.display(),
            out.display(),
            browser
        ),
        json!({"name": cred.name, "role": cred.role, "serial": cred.serial,
               "not_after": opt_time(cred.not_after_unix), "credential_dir": out,
               "p12": p12_file}),
    ))
}

/// `operators renew`: a new key and certificate for the credential in use, same name and
/// role; the old one is refused from then on.
pub async fn renew(
    client: &mut AdminClient<Channel>,
    files: &CredentialFiles,
) -> anyhow::Result<Printed> {
    let (key_pem, csr_der) = key_and_csr("operator")?;
    let cred = client
        .renew_operator(pb::RenewOperatorRequest { csr_der })
        .await
        .map_err(status_err)?
        .into_inner();
    files.replace(&key_pem, &cred.cert_pem)?;
    Ok(Printed::new(
        format!(
            "renewed operator {} ({}): serial {}, valid until {}; {} replaced",
            cred.name,
            cred.role,
            cred.serial,
            rfc3339(cred.not_after_unix),
            files.cert.display()
        ),
        json!({"name": cred.name, "role": cred.role, "serial": cred.serial,
               "not_after": opt_time(cred.not_after_unix), "certificate": files.cert}),
    ))
}

fn state(o: &pb::OperatorView, now: i64) -> String {
    if o.revoked {
        format!("revoked {}", relative(o.revoked_unix, now))
    } else if o.not_after_unix <= now {
        "expired".into()
    } else {
        format!("valid, expires {}", relative(o.not_after_unix, now))
    }
}

pub async fn list(
    client: &mut AdminClient<Channel>,
    as_json: bool,
    now: i64,
) -> anyhow::Result<String> {
    let ops = client
        .list_operators(pb::ListOperatorsRequest {})
        .await
        .map_err(status_err)?
        .into_inner()
        .operators;
    if as_json {
        let v: Vec<_> = ops
            .iter()
            .map(|o| {
                json!({"name": o.name, "role": o.role, "serial": o.serial,
                    "issued": opt_time(o.issued_unix), "not_after": opt_time(o.not_after_unix),
                    "revoked": o.revoked, "revoked_at": opt_time(o.revoked_unix),
                    "added_by": o.added_by, "lifetime_seconds": o.lifetime_seconds,
                    "state": state(o, now)})
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                o.role.clone(),
                state(o, now),
                o.serial.clone(),
                o.added_by.clone(),
            ]
        })
        .collect();
    Ok(table(
        &["NAME", "ROLE", "STATE", "SERIAL", "ADDED BY"],
        &rows,
    ))
}

pub async fn revoke(client: &mut AdminClient<Channel>, name: &str) -> anyhow::Result<Printed> {
    let r = client
        .revoke_operator(pb::RevokeOperatorRequest { name: name.into() })
        .await
        .map_err(status_err)?
        .into_inner();
    Ok(Printed::new(
        format!(
            "revoked operator {name} (serial {}); its calls are refused from now on",
            r.serial
        ),
        json!({"revoked": name, "serial": r.serial}),
    ))
}

/// `operators bootstrap` (offline, on the coordinator, as the owner of its state
/// directory): a new credential for the state directory's admin, signed with the fleet CA
/// key there, for when every admin credential has expired. The coordinator adopts it at
/// its next start unless that operator was revoked.
pub fn bootstrap(config: &Config, now: i64) -> anyhow::Result<Printed> {
    let dir = StateDir::new(&config.state_dir);
    let ca = FleetCa::load(&dir)?;
    let name = crate::operators::STATE_DIR_OPERATOR;
    let (key_pem, csr_der) = key_and_csr(name)?;
    let (cert_pem, info) =
        ca.sign_operator(&csr_der, name, crate::operators::DEFAULT_LIFETIME_SECS, now)?;
    let files = CredentialFiles {
        cert: dir.admin_cert(),
        key: dir.admin_key(),
        ca: dir.ca_cert(),
    };
    files.replace(&key_pem, &cert_pem)?;
    Ok(Printed::new(
        format!(
            "wrote {} (operator {name}, serial {}, valid until {}); restart the coordinator to adopt it (not when operator {name} was revoked)",
            files.cert.display(),
            info.serial_hex,
            rfc3339(info.not_after)
        ),
        json!({"name": name, "serial": info.serial_hex, "not_after": opt_time(info.not_after),
               "certificate": files.cert}),
    ))
}
