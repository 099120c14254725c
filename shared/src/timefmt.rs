//! Unix seconds to RFC 3339 and back, and short human durations ("1h", "30m", "2d").

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// RFC 3339 in UTC, e.g. `2026-11-22T15:04:05Z`.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}

/// Parses a duration into whole seconds: a bare number of seconds ("90"), or humantime's
/// form — one or more number+unit parts, "90s", "30m", "1h30m", "1h 30m", "7d", "2w"
/// (units s, m, h, d, w, and their long names). Zero, fractions of a second and
/// overflow are refused.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration; use e.g. 90s, 30m, 1h30m, 7d");
    let secs = if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        s.parse::<u64>().map_err(|_| bad())?
    } else {
        let d = humantime::parse_duration(s).map_err(|_| bad())?;
        if d.subsec_nanos() != 0 {
            return Err(format!("{s:?}: give whole seconds (e.g. 1s, 90s)"));
        }
        d.as_secs()
    };
    if secs == 0 {
        return Err(format!("{s:?}: a duration must be longer than zero"));
    }
    Ok(secs)
}

/// serde `deserialize_with` for a config field in seconds: an integer (the old form,
/// `retry_base_secs = 60`) or a duration string (`retry_base_secs = "1m"`, "1h30m"; see
/// [`parse_duration_secs`]).
pub fn de_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Secs {
        Number(u64),
        Text(String),
    }
    match <Secs as serde::Deserialize>::deserialize(d)? {
        Secs::Number(n) => Ok(n),
        Secs::Text(t) => parse_duration_secs(&t).map_err(serde::de::Error::custom),
    }
}

/// clap `value_parser` for a duration flag (see [`parse_duration_secs`]).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    parse_duration_secs(s).map(std::time::Duration::from_secs)
}

/// "in 5h 12m" / "3d 4h ago" relative to `now`; hours for anything under a few days.
pub fn relative(unix: i64, now: i64) -> String {
    let delta = unix - now;
    let abs = delta.unsigned_abs();
    if abs == 0 {
        return "now".into();
    }
    let text = if abs < 60 {
        format!("{abs}s")
    } else if abs < 3600 {
        format!("{}m", abs / 60)
    } else if abs < 4 * 86_400 {
        format!("{}h{:02}m", abs / 3600, (abs % 3600) / 60)
    } else {
        format!("{}d{}h", abs / 86_400, (abs % 86_400) / 3600)
    };
    if delta >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("1h"), Ok(3600));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("1s"), Ok(1));
        assert!(parse_duration_secs("0s").is_err());
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("99999999999999999999d").is_err());
        // Compound forms, and the long unit names.
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        assert_eq!(parse_duration_secs("1h 30m"), Ok(5400));
        assert_eq!(parse_duration_secs("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration_secs("2weeks"), Ok(14 * 86_400));
        assert_eq!(parse_duration_secs(" 45 "), Ok(45));
        assert!(parse_duration_secs("1500ms").is_err(), "not whole seconds");
        assert!(parse_duration_secs("").is_err());
        assert!(parse_duration_secs("-5").is_err());
        assert!(parse_duration_secs("1x").is_err());
        let e = parse_duration_secs("soon").unwrap_err();
        assert!(e.contains("1h30m"), "{e}");
    }

    #[test]
    fn config_seconds_take_a_number_or_a_duration() {
        #[derive(serde::Deserialize)]
        struct C {
            #[serde(deserialize_with = "de_secs")]
            t: u64,
        }
        let t = |v: &str| toml::from_str::<C>(&format!("t = {v}")).map(|c| c.t);
        assert_eq!(t("60").unwrap(), 60);
        assert_eq!(t("\"1h30m\"").unwrap(), 5400);
        assert_eq!(t("\"90\"").unwrap(), 90);
        let e = t("\"later\"").unwrap_err().to_string();
        assert!(e.contains("not a duration"), "{e}");
        assert!(t("-1").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(relative(100 + 160 * 3600, 100), "in 6d16h");
        assert_eq!(relative(100 + 26 * 3600 + 60, 100), "in 26h01m");
        assert_eq!(relative(40, 100), "1m ago");
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(99, 100), "1s ago");
    }
}
