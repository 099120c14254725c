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

/// Parses "90", "90s", "30m", "1h", "7d" into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a duration; use e.g. 90s, 30m, 1h, 7d"))
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
