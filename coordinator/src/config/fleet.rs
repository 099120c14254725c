//! `[fleet]`: the life of hosts — when a host that stopped reporting is decommissioned,
//! and whether a certificate for an address a host no longer has is revoked.

use serde::Deserialize;
use std::time::Duration;

/// The longest `decommission_after` (a year).
const MAX_DECOMMISSION_AFTER: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// A host not seen (no session) for this long has its certificates revoked
    /// (cessationOfOperation) and is removed (humantime, e.g. "24h"). Off when unset.
    pub decommission_after: Option<String>,
    /// A certificate covering an address its host no longer reports is revoked (reason
    /// superseded) while its replacement for the new set is issued. Default true.
    #[serde(default = "yes")]
    pub revoke_on_address_loss: bool,
}

fn yes() -> bool {
    true
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            decommission_after: None,
            revoke_on_address_loss: true,
        }
    }
}

impl FleetConfig {
    /// `decommission_after` as a duration (checked by [`FleetConfig::validate`]).
    pub fn decommission_after(&self) -> Option<Duration> {
        self.decommission_after
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
    }

    pub fn validate(&self) -> Result<(), String> {
        let Some(s) = &self.decommission_after else {
            return Ok(());
        };
        let d = humantime::parse_duration(s).map_err(|e| {
            format!("[fleet] decommission_after = {s:?} is not a duration ({e}); write it like \"24h\" or \"7d\"")
        })?;
        if d < Duration::from_secs(1) || d > MAX_DECOMMISSION_AFTER {
            return Err(format!(
                "[fleet] decommission_after = {s:?} must be between 1s and 365d; leave it out to never decommission"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<FleetConfig, String> {
        let f: FleetConfig = toml::from_str(t).map_err(|e| e.to_string())?;
        f.validate().map(|()| f)
    }

    #[test]
    fn defaults_off_and_revoking() {
        let f = parse("").unwrap();
        assert_eq!(f.decommission_after(), None);
        assert!(f.revoke_on_address_loss);
        let f = parse("decommission_after = \"24h\"\nrevoke_on_address_loss = false").unwrap();
        assert_eq!(f.decommission_after(), Some(Duration::from_secs(86400)));
        assert!(!f.revoke_on_address_loss);
    }

    #[test]
    fn bad_values_name_the_fix() {
        for (t, want) in [
            ("decommission_after = \"a day\"", "write it like \"24h\""),
            ("decommission_after = \"0s\"", "between 1s and 365d"),
            ("decommission_after = \"400d\"", "between 1s and 365d"),
            (
                "decomission_after = \"1h\"",
                "unknown field `decomission_after`",
            ),
        ] {
            let err = parse(t).unwrap_err();
            assert!(err.contains(want), "{t}: {err:?} should contain {want:?}");
        }
    }
}
