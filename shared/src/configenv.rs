//! Environment overrides for TOML configuration: `PREFIX` + `SECTION__KEY` (double
//! underscore between levels, case-insensitive), e.g. `CERTFLEET_SERVER__LISTEN`. The value is
//! read as a TOML value when it parses as one (numbers, booleans, arrays), else as a string.
//! Overrides apply to tables only, never into arrays of tables.

use std::path::PathBuf;
use toml::Value;

/// Why a daemon's config could not be used; the same for the coordinator and the agent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("config {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// `message` without the source excerpt a TOML parse error carries (the ` 5 | key = …`
/// lines and their `^` markers), on one line: what a reload logs and audits, so a value
/// from the file (an inline secret such as an EAB HMAC key) is never copied there.
pub fn without_source_excerpt(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            let rest = l
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !l.is_empty() && !rest.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Applies every `prefix*` variable of `vars` (except the names in `skip`) to `doc`.
/// Returns the names applied, for logging.
pub fn apply_overrides(
    doc: &mut Value,
    prefix: &str,
    skip: &[&str],
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, String> {
    let mut applied = Vec::new();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if skip.iter().any(|s| *s == name) || rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(format!("environment variable {name}: empty key segment"));
        }
        let value = parse_value(&raw);
        set_path(doc, &path, value).map_err(|e| format!("environment variable {name}: {e}"))?;
        applied.push(name);
    }
    Ok(applied)
}

/// Parses TOML text, applies the environment overrides and deserializes into `T`.
pub fn parse_with_env<T: serde::de::DeserializeOwned>(
    text: &str,
    prefix: &str,
    skip: &[&str],
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, String> {
    let mut doc: Value = toml::from_str(text).map_err(|e| e.to_string())?;
    apply_overrides(&mut doc, prefix, skip, vars)?;
    doc.try_into().map_err(|e: toml::de::Error| e.to_string())
}

fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn set_path(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut cur = doc;
    for p in parents {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| format!("{p:?} is not a table"))?;
        cur = table
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Default::default()));
    }
    let table = cur
        .as_table_mut()
        .ok_or_else(|| format!("{last:?} is inside a non-table"))?;
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_loses_its_source_excerpt() {
        let text = "version = 1\neab_hmac_key = \"s3cr3t-value\nlisten = 1\n";
        let err = parse_with_env::<Value>(text, "CF_", &[], Vec::new()).unwrap_err();
        assert!(err.contains("s3cr3t-value"), "the excerpt is there: {err}");
        let shown = without_source_excerpt(&format!("config /etc/x.toml is not valid: {err}"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
        assert!(
            shown.starts_with("config /etc/x.toml is not valid: "),
            "{shown}"
        );
        // A message without an excerpt stays as it is.
        assert_eq!(
            without_source_excerpt("issuer \"nope\" is unknown"),
            "issuer \"nope\" is unknown"
        );
    }

    #[test]
    fn overrides_nested_keys_with_typed_values() {
        let mut doc: Value = toml::from_str("version = 1\n[server]\nlisten = \"a\"\n").unwrap();
        let vars = vec![
            ("CF_SERVER__LISTEN".to_owned(), "0.0.0.0:1".to_owned()),
            ("CF_SERVER__IPS".to_owned(), "[\"::1\"]".to_owned()),
            ("CF_VERSION".to_owned(), "2".to_owned()),
            ("CF_CONFIG".to_owned(), "/x".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let applied = apply_overrides(&mut doc, "CF_", &["CF_CONFIG"], vars).unwrap();
        assert_eq!(applied.len(), 3);
        assert_eq!(doc["server"]["listen"].as_str(), Some("0.0.0.0:1"));
        assert_eq!(doc["server"]["ips"].as_array().map(|a| a.len()), Some(1));
        assert_eq!(doc["version"].as_integer(), Some(2));
        assert!(doc.get("config").is_none());
    }
}
