//! `[store]`: where the coordinator keeps its state. `backend = "sled"` (the default: an
//! embedded database in `state_dir`) or `"postgres"` (a database several coordinators can
//! share). The URL's password never sits in the TOML: give it in `url_file` (a 0600 file)
//! or `url_env`; `url` itself is refused when it holds one.

use crate::dns::secret::{read_secret_env, read_secret_file};
use crate::store::{PgOptions, PgTls};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreBackend {
    #[default]
    Sled,
    Postgres,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sled => "sled",
            Self::Postgres => "postgres",
        }
    }
}

const DEFAULT_POOL_SIZE: usize = 8;
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub backend: StoreBackend,
    /// `postgres://user@host:port/db` without a password.
    pub url: Option<String>,
    /// A file (no access for others) holding the whole URL, password included.
    pub url_file: Option<PathBuf>,
    /// An environment variable holding the whole URL.
    pub url_env: Option<String>,
    /// Connections in the pool (default 8).
    pub pool_size: Option<usize>,
    /// Humantime ("30s"); the server cancels a statement that runs longer (default 30s).
    pub statement_timeout: Option<String>,
    /// `disable` | `require` | `verify-full` (default).
    #[serde(default)]
    pub tls: PgTls,
    /// PEM roots for `verify-full`; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field(
                "url",
                &self.url.as_deref().map(crate::store::pg::redact_url),
            )
            .field("url_file", &self.url_file)
            .field("url_env", &self.url_env)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn err(msg: impl std::fmt::Display) -> String {
    format!("[store] {msg}")
}

impl StoreConfig {
    /// What serde cannot check; files and variables are read by [`StoreConfig::pg_options`].
    pub fn validate(&self) -> Result<(), String> {
        let pg_keys = [
            ("url", self.url.is_some()),
            ("url_file", self.url_file.is_some()),
            ("url_env", self.url_env.is_some()),
            ("pool_size", self.pool_size.is_some()),
            ("statement_timeout", self.statement_timeout.is_some()),
            ("ca_file", self.ca_file.is_some()),
        ];
        if self.backend == StoreBackend::Sled {
            if let Some((key, _)) = pg_keys.iter().find(|(_, set)| *set) {
                return Err(err(format!(
                    "{key} is a PostgreSQL setting but backend = \"sled\"; set backend = \
                     \"postgres\" or remove {key}"
                )));
            }
            return Ok(());
        }
        let sources = [
            self.url.is_some(),
            self.url_file.is_some(),
            self.url_env.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => {
                return Err(err(
                    "backend = \"postgres\" needs the database: url (no password), url_file \
                     (a 0600 file holding the URL) or url_env (a variable holding it)",
                ))
            }
            1 => {}
            _ => return Err(err("give one of url, url_file and url_env, not several")),
        }
        if let Some(url) = &self.url {
            let parsed: tokio_postgres::Config = url.parse().map_err(|e| {
                err(format!(
                    "url is not a PostgreSQL URL ({e}); write it like \
                     \"postgres://certfleet@db.example:5432/certfleet\""
                ))
            })?;
            if parsed.get_password().is_some() {
                return Err(err(
                    "url holds a password; move the whole URL into url_file (a file only the \
                     coordinator can read) or url_env, so the password is not in the config",
                ));
            }
        }
        if let Some(n) = self.pool_size {
            if !(1..=256).contains(&n) {
                return Err(err(format!("pool_size = {n} must be between 1 and 256")));
            }
        }
        self.statement_timeout()?;
        if self.tls == PgTls::Disable && self.ca_file.is_some() {
            return Err(err(
                "ca_file is set but tls = \"disable\"; set tls = \"verify-full\" or remove ca_file",
            ));
        }
        if self.tls == PgTls::Require && self.ca_file.is_some() {
            return Err(err(
                "ca_file is set but tls = \"require\" does not check the server's certificate; \
                 set tls = \"verify-full\" to use it",
            ));
        }
        Ok(())
    }

    fn statement_timeout(&self) -> Result<Duration, String> {
        let Some(s) = &self.statement_timeout else {
            return Ok(DEFAULT_STATEMENT_TIMEOUT);
        };
        let d = humantime::parse_duration(s).map_err(|e| {
            err(format!(
                "statement_timeout = {s:?} is not a duration ({e}); write it like \"30s\""
            ))
        })?;
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            return Err(err(format!(
                "statement_timeout = {s:?} must be between 100ms and 1h"
            )));
        }
        Ok(d)
    }

    /// The PostgreSQL connection settings, reading `url_file` / `url_env` and `ca_file`.
    pub fn pg_options(&self) -> Result<PgOptions, String> {
        self.validate()?;
        let url = match (&self.url, &self.url_file, &self.url_env) {
            (Some(u), _, _) => u.clone(),
            (_, Some(path), _) => read_secret_file(path, "[store] url_file")?
                .expose()
                .to_owned(),
            (_, _, Some(var)) => read_secret_env(var, "[store] url_env")?.expose().to_owned(),
            _ => return Err(err("backend = \"postgres\" needs url, url_file or url_env")),
        };
        if let Err(e) = url.parse::<tokio_postgres::Config>() {
            let from = if self.url_file.is_some() {
                "url_file"
            } else {
                "url_env"
            };
            return Err(err(format!(
                "{from} does not hold a PostgreSQL URL ({e}); it should hold one line like \
                 postgres://certfleet:PASSWORD@db.example:5432/certfleet"
            )));
        }
        let ca_certs = match &self.ca_file {
            None => Vec::new(),
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("ca_file {}: cannot read it: {e}", path.display())))?;
                certfleet_shared::tls::certs_from_pem(&pem, "[store] ca_file")
                    .map_err(|e| err(format!("ca_file {}: {e}", path.display())))?
            }
        };
        Ok(PgOptions {
            url,
            pool_size: self.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
            statement_timeout: self.statement_timeout()?,
            tls: self.tls,
            ca_certs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> StoreConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn sled_is_the_default_and_takes_no_database_settings() {
        let c = StoreConfig::default();
        assert_eq!(c.backend, StoreBackend::Sled);
        assert!(c.validate().is_ok());
        let e = parse("url = \"postgres://u@h/db\"").validate().unwrap_err();
        assert!(e.contains("backend = \"postgres\""), "{e}");
    }

    #[test]
    fn postgres_settings_are_checked_and_name_the_fix() {
        let ok = parse(
            "backend = \"postgres\"\nurl = \"postgres://cf@db:5432/cf\"\npool_size = 4\n\
             statement_timeout = \"5s\"\ntls = \"disable\"",
        );
        let opts = ok.pg_options().unwrap();
        assert_eq!(opts.pool_size, 4);
        assert_eq!(opts.statement_timeout, Duration::from_secs(5));
        assert_eq!(opts.tls, PgTls::Disable);
        let cases = [
            ("backend = \"postgres\"", "url_file"),
            (
                "backend = \"postgres\"\nurl = \"postgres://cf:hunter2@db/cf\"",
                "move the whole URL into url_file",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgres://cf@db/cf\"\nurl_env = \"X\"",
                "not several",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgres://cf@db/cf\"\npool_size = 0",
                "between 1 and 256",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgres://cf@db/cf\"\nstatement_timeout = \"soon\"",
                "like \"30s\"",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgres://cf@db/cf\"\ntls = \"disable\"\nca_file = \"/x\"",
                "tls = \"verify-full\"",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).validate().unwrap_err();
            assert!(e.starts_with("[store]") && e.contains(want), "{text}: {e}");
        }
        assert!(toml::from_str::<StoreConfig>("tls = \"prefer\"").is_err());
    }

    #[test]
    fn the_url_never_shows_in_debug() {
        let c = StoreConfig {
            backend: StoreBackend::Postgres,
            url: Some("postgres://cf:hunter2@db:5433/cf".into()),
            ..StoreConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("db:5433/cf"),
            "{shown}"
        );
        let opts = PgOptions {
            url: "postgres://cf:hunter2@db/cf".into(),
            pool_size: 1,
            statement_timeout: Duration::from_secs(1),
            tls: PgTls::Disable,
            ca_certs: vec![],
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn url_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "postgres://cf:pw@db/cf\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = StoreConfig {
            backend: StoreBackend::Postgres,
            url_file: Some(path.clone()),
            ..StoreConfig::default()
        };
        assert!(c.pg_options().unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.pg_options().unwrap().url, "postgres://cf:pw@db/cf");
    }
}
