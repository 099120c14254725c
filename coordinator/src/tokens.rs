//! Join tokens: 256 random bits, shown once, stored only as a SHA-256 hash.

use base64::Engine;

/// Prefix that makes a token recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "cfj_";

/// A fresh join token.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_unique_and_prefixed() {
        let (a, b) = (super::generate(), super::generate());
        assert_ne!(a, b);
        assert!(a.starts_with(super::TOKEN_PREFIX) && a.len() == 4 + 43);
    }
}
