//! `[web]`: the read-only web view of the fleet (`crate::web`) — its listener, the address
//! printed in login links, and how long a browser session lasts.

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Default `session_lifetime`.
const DEFAULT_SESSION: Duration = Duration::from_secs(8 * 3600);
/// Longest `session_lifetime`.
const MAX_SESSION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// HTTPS (the coordinator's server certificate) on this address; off when unset.
    pub listen: Option<SocketAddr>,
    /// The base URL `web login` prints links under, e.g. "https://coord.example.net:8444"
    /// (default: https:// + the first `[server] names` entry, else the listen address).
    pub url: Option<String>,
    /// How long a browser session from a login link lasts (humantime, default "8h",
    /// at most 7d). Sessions end sooner when their operator is revoked or expires.
    pub session_lifetime: Option<String>,
}

impl WebConfig {
    /// `session_lifetime` (checked by [`WebConfig::validate`]).
    pub fn session_lifetime(&self) -> Duration {
        self.session_lifetime
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(DEFAULT_SESSION)
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = &self.session_lifetime {
            let d = humantime::parse_duration(s).map_err(|e| {
                format!(
                    "[web] session_lifetime = {s:?} is not a duration ({e}); write it like \"8h\""
                )
            })?;
            if d < Duration::from_secs(60) || d > MAX_SESSION {
                return Err(format!(
                    "[web] session_lifetime = {s:?} must be between 1m and 7d"
                ));
            }
        }
        if let Some(u) = &self.url {
            if !u.starts_with("https://") || u.len() <= "https://".len() {
                return Err(format!(
                    "[web] url = {u:?} must be an https:// URL (the web view serves HTTPS only), like \"https://coord.example.net:8444\""
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_and_urls_are_checked() {
        let ok = WebConfig {
            listen: Some("127.0.0.1:8444".parse().unwrap()),
            url: Some("https://coord.test:8444".into()),
            session_lifetime: Some("2h".into()),
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.session_lifetime(), Duration::from_secs(7200));
        assert_eq!(WebConfig::default().session_lifetime(), DEFAULT_SESSION);
        for bad in ["soon", "10s", "30d"] {
            let c = WebConfig {
                session_lifetime: Some(bad.into()),
                ..WebConfig::default()
            };
            assert!(
                c.validate().unwrap_err().contains("session_lifetime"),
                "{bad}"
            );
        }
        let c = WebConfig {
            url: Some("http://coord.test".into()),
            ..WebConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("https://"));
    }
}
