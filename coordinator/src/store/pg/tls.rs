//! rustls for the database connection (ring, as everywhere in certfleet).

use super::PgTls;
use crate::store::StoreError;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

fn tls_error(detail: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("[store] TLS to PostgreSQL: {detail}").into())
}

/// `require`: any certificate (encrypted, not authenticated), `verify-full`: the roots
/// given (`ca_file`), or the system's when none are.
pub(super) fn connector(
    mode: PgTls,
    ca_certs: &[CertificateDer<'static>],
) -> Result<MakeRustlsConnect, StoreError> {
    let config = match mode {
        PgTls::Disable => return Err(tls_error("internal: no TLS connector for disable")),
        PgTls::Require => {
            let observer = certfleet_shared::tls::observer_client_config().map_err(tls_error)?;
            (*observer).clone()
        }
        PgTls::VerifyFull => {
            let mut roots = RootCertStore::empty();
            if ca_certs.is_empty() {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    // A system root rustls cannot parse is skipped, as browsers do.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(tls_error(
                        "no system root certificates found; set [store] ca_file to the CA \
                         that signed the database's certificate",
                    ));
                }
            } else {
                for cert in ca_certs {
                    roots.add(cert.clone()).map_err(|e| {
                        tls_error(format!(
                            "[store] ca_file holds an unusable certificate: {e}"
                        ))
                    })?;
                }
            }
            ClientConfig::builder_with_provider(certfleet_shared::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(tls_error)?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}
