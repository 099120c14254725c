//! Named operators: who may call the admin API, with which role, and the one credential
//! of theirs that is accepted (by serial). Plain data; the rules are `crate::operators`.

use serde::{Deserialize, Serialize};

/// What an operator may do. `Viewer`: read-only calls; `Admin`: every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "role {:?} is not known; use admin or viewer",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One operator. Only the credential with `serial` is accepted, and only until
/// `not_after`, and never once `revoked_at` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub name: String,
    pub role: Role,
    /// Serial (hex, as `CertInfo::serial_hex`) of the current credential.
    pub serial: String,
    /// When the current credential was signed (unix seconds).
    pub issued: i64,
    /// The current credential's notAfter.
    pub not_after: i64,
    /// The lifetime asked for at `operators add`; renewals keep it.
    pub lifetime_secs: i64,
    /// Who added the operator (`operator:NAME`, or `coordinator:state-dir`).
    pub added_by: String,
    pub added: i64,
    #[serde(default)]
    pub revoked_at: Option<i64>,
    #[serde(default)]
    pub revoked_by: Option<String>,
    /// Bumped by every write; writes compare it (`Store::put_operator`), so a renewal
    /// racing a revocation cannot undo it.
    #[serde(default)]
    pub generation: u64,
}
