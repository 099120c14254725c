//! Typed identifiers. A `HostId` can never be passed where a `CertId` is expected.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn random_suffix(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Checks the shape of an id received from outside: prefix, then 1..=64 of `[a-z0-9-]`.
fn valid_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, random_suffix(16)))
            }

            /// Parses an id received from outside (a certificate, a message, the CLI).
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if valid_id(s, $prefix) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidId { kind: stringify!($name), value: s.chars().take(80).collect() })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

typed_id!(
    /// A host (one enrolled agent).
    HostId,
    "h-"
);
typed_id!(
    /// A managed certificate.
    CertId,
    "c-"
);

/// A fresh request id for a command to an agent: `r-` and 26 random characters (130 bits),
/// so ids never repeat across coordinator runs or across coordinators sharing one store —
/// an agent's reply cache can never answer a new command with an old reply by id alone.
pub fn request_id() -> String {
    format!("r-{}", random_suffix(26))
}

/// An id that does not have the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind} {value:?}")]
pub struct InvalidId {
    kind: &'static str,
    value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let h = HostId::generate();
        assert_eq!(HostId::parse(h.as_str()).ok(), Some(h.clone()));
        assert!(
            CertId::parse(h.as_str()).is_err(),
            "a host id is not a cert id"
        );
    }

    #[test]
    fn request_ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.len() == 28 && i.starts_with("r-")));
    }

    #[test]
    fn hostile_ids_are_refused() {
        for bad in [
            "",
            "h-",
            "h-../x",
            "h-A",
            "x-abc",
            &format!("h-{}", "a".repeat(65)),
        ] {
            assert!(HostId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
