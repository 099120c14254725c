//! The install journal (`state_dir/installs/<target>.json`): what an interrupted install
//! had done, one variant per layout, each with only what that layout needs to finish or
//! undo it. Written before every step ([`super::Installer`]), read by
//! [`super::Installer::recover`] after a crash.
//!
//! The JSON shape is the one agents wrote before the journal became an enum (one flat
//! object with `files`, `store`, `version`, `prev`), read back without a version field:
//! the variants are untagged and told apart by their fields — a versioned journal has a
//! `store` and a `version`; anything else is certbot's per-file journal. So an agent
//! upgraded in the middle of an interrupted install recovers it, and an older agent reads
//! what this one writes (`files` and `store` were optional there).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Phase {
    /// New files are being written; nothing the web server reads has changed.
    Staging,
    /// Everything staged and durable; the switch may have begun.
    Committed,
    /// Every configured path shows the new files.
    Swapped,
}

/// One interrupted (or running) install.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(super) enum Journal {
    /// Versioned store: `current` is switched in one rename (see [`super::versioned`]).
    Versioned(VersionedJournal),
    /// certbot's `live/` → `archive/` layout, switched file by file (see
    /// [`super::certbot`]).
    Certbot(CertbotJournal),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct VersionedJournal {
    pub target: String,
    pub serial: String,
    pub phase: Phase,
    /// The target's versioned store.
    pub store: PathBuf,
    /// The version directory being installed (the serial, or the serial with a suffix
    /// when the same serial is installed again).
    pub version: String,
    /// The version `current` pointed at before: the one to roll back to.
    pub prev: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct CertbotJournal {
    pub target: String,
    pub serial: String,
    pub phase: Phase,
    /// Destinations, and whether each had a previous version (kept as `.prev`).
    pub files: Vec<(PathBuf, bool)>,
}

impl Journal {
    pub fn target(&self) -> &str {
        match self {
            Journal::Versioned(j) => &j.target,
            Journal::Certbot(j) => &j.target,
        }
    }

    pub fn serial(&self) -> &str {
        match self {
            Journal::Versioned(j) => &j.serial,
            Journal::Certbot(j) => &j.serial,
        }
    }

    /// Whether there is a previous certificate to roll back to.
    pub fn has_previous(&self) -> bool {
        match self {
            Journal::Versioned(j) => j.prev.is_some(),
            Journal::Certbot(j) => j.files.iter().any(|(_, had)| *had),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Journals as the agent wrote them before this module existed (one flat struct with
    /// optional fields), copied from real files: the agent of commit 3ab417c stopped at
    /// the named pause points of a second install into a fresh temp dir (`{DIR}`).
    pub(in crate::install) const FLAT_JOURNALS: [(&str, &str); 8] = [
        (
            "versioned staging:0",
            r#"{"target":"web","serial":"63038a588ce447dd70e4c1177e5a532931372cff","phase":"staging","files":[],"store":"{DIR}/tls/.certfleet-web","version":"63038a588ce447dd70e4c1177e5a532931372cff","prev":"09ca58333a40c37e3bed2fc7047d948b635a5d13"}"#,
        ),
        (
            "versioned staged",
            r#"{"target":"web","serial":"257ca3afea94f94608af8c276529652a7cf7ab3f","phase":"staging","files":[],"store":"{DIR}/tls/.certfleet-web","version":"257ca3afea94f94608af8c276529652a7cf7ab3f","prev":"7b0182e4d0018d333f7882c6f5f79d9c55f46bc1"}"#,
        ),
        (
            "versioned linked",
            r#"{"target":"web","serial":"57cafabfac801e67f2ce7c2057d35ae7ff8a2c75","phase":"committed","files":[],"store":"{DIR}/tls/.certfleet-web","version":"57cafabfac801e67f2ce7c2057d35ae7ff8a2c75","prev":"69ff9d838562203d1a381113f35a327dce263bc5"}"#,
        ),
        (
            "versioned swapped",
            r#"{"target":"web","serial":"540ad9662a3cae42e7ece915de5ec19046d08400","phase":"swapped","files":[],"store":"{DIR}/tls/.certfleet-web","version":"540ad9662a3cae42e7ece915de5ec19046d08400","prev":"4a195265e2463a7e456eccff76edd14883aaaefd"}"#,
        ),
        (
            "certbot staging:0",
            r#"{"target":"web","serial":"6acdd972562828466539655b4cfd0c5012d8da7f","phase":"staging","files":[["{DIR}/le/live/web/cert.pem",true],["{DIR}/le/live/web/chain.pem",true],["{DIR}/le/live/web/fullchain.pem",true],["{DIR}/le/live/web/privkey.pem",true]],"store":null,"version":null,"prev":null}"#,
        ),
        (
            "certbot committed",
            r#"{"target":"web","serial":"1664d3cbce21f0cd58550d78c6d3055dd54ffd04","phase":"committed","files":[["{DIR}/le/live/web/cert.pem",true],["{DIR}/le/live/web/chain.pem",true],["{DIR}/le/live/web/fullchain.pem",true],["{DIR}/le/live/web/privkey.pem",true]],"store":null,"version":null,"prev":null}"#,
        ),
        (
            "certbot renamed:0",
            r#"{"target":"web","serial":"78d85ba26cad165520181331bf43322d4f2498bd","phase":"committed","files":[["{DIR}/le/live/web/cert.pem",true],["{DIR}/le/live/web/chain.pem",true],["{DIR}/le/live/web/fullchain.pem",true],["{DIR}/le/live/web/privkey.pem",true]],"store":null,"version":null,"prev":null}"#,
        ),
        (
            "certbot swapped",
            r#"{"target":"web","serial":"1e46117b3f99e0562932847b252acf8f78b0ac3c","phase":"swapped","files":[["{DIR}/le/live/web/cert.pem",true],["{DIR}/le/live/web/chain.pem",true],["{DIR}/le/live/web/fullchain.pem",true],["{DIR}/le/live/web/privkey.pem",true]],"store":null,"version":null,"prev":null}"#,
        ),
    ];

    #[test]
    fn flat_journals_parse_into_their_layout() {
        for (name, text) in FLAT_JOURNALS {
            let j: Journal = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            match (&j, name.starts_with("versioned")) {
                (Journal::Versioned(v), true) => {
                    assert_eq!(v.store, PathBuf::from("{DIR}/tls/.certfleet-web"));
                    assert_eq!(v.version, v.serial);
                    assert!(v.prev.is_some());
                }
                (Journal::Certbot(c), false) => {
                    assert_eq!(c.files.len(), 4);
                    assert!(j.has_previous());
                }
                _ => panic!("{name}: read as the wrong layout: {j:?}"),
            }
            let phase = if name.ends_with("staging:0") || name.ends_with("staged") {
                Phase::Staging
            } else if name.ends_with("swapped") {
                Phase::Swapped
            } else {
                Phase::Committed
            };
            let got = match &j {
                Journal::Versioned(v) => v.phase,
                Journal::Certbot(c) => c.phase,
            };
            assert_eq!(got, phase, "{name}");
        }
    }

    #[test]
    fn a_first_versioned_install_has_no_previous_version() {
        let text = r#"{"target":"web","serial":"ab","phase":"committed","files":[],"store":"/s","version":"ab","prev":null}"#;
        let j: Journal = serde_json::from_str(text).unwrap();
        assert!(matches!(&j, Journal::Versioned(v) if v.prev.is_none()));
        assert!(!j.has_previous());
    }

    /// What this agent writes, an older agent reads as the same install: a versioned
    /// journal keeps `store` and `version`; a certbot one has no `store`.
    #[test]
    fn written_journals_keep_the_flat_shape() {
        let v = Journal::Versioned(VersionedJournal {
            target: "web".into(),
            serial: "ab".into(),
            phase: Phase::Committed,
            store: "/s".into(),
            version: "ab".into(),
            prev: Some("aa".into()),
        });
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(
            text,
            r#"{"target":"web","serial":"ab","phase":"committed","store":"/s","version":"ab","prev":"aa"}"#
        );
        assert_eq!(serde_json::from_str::<Journal>(&text).unwrap(), v);
        let c = Journal::Certbot(CertbotJournal {
            target: "web".into(),
            serial: "ab".into(),
            phase: Phase::Staging,
            files: vec![("/le/live/web/cert.pem".into(), false)],
        });
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"target":"web","serial":"ab","phase":"staging","files":[["/le/live/web/cert.pem",false]]}"#
        );
        assert_eq!(serde_json::from_str::<Journal>(&text).unwrap(), c);
    }
}
