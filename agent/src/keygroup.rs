//! Key groups (issue #12): one certificate served by several hosts behind a load
//! balancer. One member makes the key and CSR; the key reaches each other member only as
//! an HPKE envelope sealed to that member's identity key (`certfleet_shared::envelope`),
//! relayed by the coordinator, which never holds it in clear.
//!
//! The agent's own config decides (design invariant 3): for a group it does not list in
//! `key_groups` it makes no key, seals none and imports none (`key_group_not_allowed`),
//! so a compromised coordinator cannot pull any host's key. A key made
//! (`CreateCsr.key_group`) or imported (`ImportKey`) for a group gets a marker,
//! `state_dir/key-groups/<SHA-256 of its SPKI, hex>` holding the group's name (directory
//! 0700, file 0600, written atomically); `SealKey` seals only a key whose marker names
//! that very group. A key without a marker — every key made for no group — never leaves
//! the host.
//!
//! Markers are not secret, but nothing is left behind: [`KeyGroups::sweep`] removes each
//! marker whose key is neither a pending key nor the key a target holds. It runs at start
//! and after every `DiscardPendingKeys` (the coordinator sends one when an order ends,
//! installed or not), so the marker of a key a renewal replaced goes at the next order's
//! end; and before each new marker is written, so markers never outnumber the keys here.
//!
//! Key material is never logged; the keys this module handles are zeroized when dropped.

use crate::config::AgentConfig;
use crate::error::AgentFailure;
use crate::identity::Files;
use crate::install::{find_key, held_key};
use crate::keys::PendingKeys;
use crate::target::Target;
use certfleet_proto::v1 as pb;
use certfleet_shared::envelope::{self, key_fingerprint, Context, Envelope, EnvelopeError};
use certfleet_shared::fsutil::{create_dir_with_mode, read_limited, write_atomic};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::x509::{sha256_hex, CsrInfo};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use zeroize::Zeroizing;

/// Longest group name (the coordinator's policy `key_group` has the same rule).
pub const MAX_GROUP_NAME: usize = 64;

/// A group name: 1 to 64 letters, digits, `-` or `_`.
pub fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GROUP_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The config's `key_groups`: each a valid name, none twice.
pub fn check_config(groups: &[String]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (i, g) in groups.iter().enumerate() {
        if !valid_group_name(g) {
            return Err(format!(
                "key_groups[{i}]: {g:?} is not a group name: 1 to {MAX_GROUP_NAME} letters, digits, - or _ (the name the coordinator's policy gives as key_group)"
            ));
        }
        if !seen.insert(g.as_str()) {
            return Err(format!(
                "key_groups[{i}]: {g:?} is listed twice; remove one of them"
            ));
        }
    }
    Ok(())
}

/// A SHA-256 in the form the wire uses: 64 lower-case hex digits.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn not_allowed(message: String) -> AgentFailure {
    AgentFailure::new("key_group_not_allowed", message)
}

/// The key groups this host takes part in, and the markers of their keys.
pub struct KeyGroups {
    /// `key_groups` from the agent's config: the only groups it acts for.
    allowed: Vec<String>,
    /// `state_dir/key-groups`: one marker per group key.
    dir: PathBuf,
    /// The identity (host id, identity key) envelopes are sealed from and opened with.
    identity: Files,
}

impl KeyGroups {
    pub fn new(config: &AgentConfig) -> Self {
        Self {
            allowed: config.key_groups.clone(),
            dir: config.state_dir.join("key-groups"),
            identity: Files::new(&config.state_dir),
        }
    }

    /// Refuses a group this host's config does not list.
    pub fn allow(&self, group: &str) -> Result<(), AgentFailure> {
        if group.is_empty() {
            return Err(AgentFailure::bad_request("key_group is empty"));
        }
        if self.allowed.iter().any(|g| g == group) {
            return Ok(());
        }
        let shown: String = group.chars().take(MAX_GROUP_NAME + 1).collect();
        Err(not_allowed(format!(
            "this host does not take part in key group {shown:?}: its agent config does not list it; to let this host share the group's key, add it to key_groups in the agent's config (key_groups = [{shown:?}]) and restart the agent"
        )))
    }

    fn marker(&self, spki_sha256: &str) -> PathBuf {
        self.dir.join(spki_sha256)
    }

    /// Remembers that the key whose public key has SHA-256 `spki_sha256` belongs to `group`.
    pub fn mark(&self, spki_sha256: &str, group: &str) -> Result<(), AgentFailure> {
        let failed = |p: &std::path::Path, e| {
            AgentFailure::new("write_failed", format!("{}: {e}", p.display()))
        };
        create_dir_with_mode(&self.dir, 0o700).map_err(|e| failed(&self.dir, e))?;
        let path = self.marker(spki_sha256);
        write_atomic(&path, format!("{group}\n").as_bytes(), 0o600).map_err(|e| failed(&path, e))
    }

    /// The group the key with this public key's SHA-256 was made or imported for.
    pub fn group_of(&self, spki_sha256: &str) -> Option<String> {
        if !is_sha256_hex(spki_sha256) {
            return None;
        }
        let bytes = read_limited(&self.marker(spki_sha256), 256).ok()?;
        let group = String::from_utf8(bytes).ok()?.trim().to_owned();
        valid_group_name(&group).then_some(group)
    }

    /// After `CreateCsr` for `group` made a key (its CSR `csr_der`): marks the key as the
    /// group's. Without the marker the key could never be shared, so a failure removes it.
    pub fn mark_new_key(
        &self,
        csr_der: &[u8],
        group: &str,
        pending: &PendingKeys,
        targets: &BTreeMap<String, Target>,
    ) -> Result<(), AgentFailure> {
        let spki = CsrInfo::from_der(csr_der)
            .map_err(|e| AgentFailure::new("internal", format!("reading our own CSR: {e}")))?
            .spki_der;
        // Markers never outnumber the keys here (pending keys are capped), whatever the
        // coordinator sends between two orders' ends.
        self.sweep(pending, targets);
        self.mark(&sha256_hex(&spki), group)
            .inspect_err(|_| pending.remove(&spki))
    }

    /// Removes the markers of keys this host no longer holds (neither pending nor in a
    /// target) and what a crash left of a marker write. Returns how many markers went.
    ///
    /// Pending keys are looked at before targets: an install puts the key in its target
    /// before it removes the pending key, so a key being installed is always seen.
    pub fn sweep(&self, pending: &PendingKeys, targets: &BTreeMap<String, Target>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut unheld = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            } else if is_sha256_hex(&name) && !pending.holds_sha256(&name) {
                unheld.push(name);
            }
        }
        if unheld.is_empty() {
            return 0;
        }
        let in_targets: HashSet<String> = targets
            .values()
            .filter_map(held_key)
            .filter_map(|k| key_fingerprint(&Zeroizing::new(k.0)))
            .collect();
        unheld
            .iter()
            .filter(|sha| !in_targets.contains(*sha))
            .filter(|sha| std::fs::remove_file(self.marker(sha)).is_ok())
            .count()
    }

    /// This host's id, from its enrollment.
    fn own_id(&self) -> Result<HostId, AgentFailure> {
        self.identity
            .load()
            .map(|e| e.host_id)
            .map_err(|e| AgentFailure::new("internal", format!("{e:#}")))
    }

    /// `SealKey`: seals the group's key with this public key to another member's identity.
    pub fn seal(
        &self,
        s: pb::SealKey,
        pending: &PendingKeys,
        targets: &BTreeMap<String, Target>,
    ) -> Result<pb::SealedKey, AgentFailure> {
        self.allow(&s.key_group)?;
        let (group, sha) = (s.key_group, s.key_spki_sha256);
        if !is_sha256_hex(&sha) {
            return Err(AgentFailure::bad_request(
                "key_spki_sha256: the SHA-256 of the key's SubjectPublicKeyInfo, 64 lower-case hex digits",
            ));
        }
        let recipient = HostId::parse(&s.recipient_host_id)
            .map_err(|e| AgentFailure::bad_request(format!("recipient_host_id: {e}")))?;
        match self.group_of(&sha) {
            Some(g) if g == group => {}
            Some(other) => return Err(not_allowed(format!(
                "the key with public key SHA-256 {sha} belongs to key group {other:?} on this host, not {group:?}; a key is sealed only for its own group"
            ))),
            None => return Err(not_allowed(format!(
                "the key with public key SHA-256 {sha} was not made or imported for key group {group:?} on this host; only a group's own key is ever sealed"
            ))),
        }
        let key = find_key(&sha, pending, targets, None).ok_or_else(|| {
            AgentFailure::new(
                "no_matching_key",
                format!("no key with public key SHA-256 {sha} is on this host any more (no pending key, no target holds it); ask another member of {group:?} that holds it, or issue a new certificate for the group"),
            )
        })?;
        let key = Zeroizing::new(key.0);
        let sender = self.own_id()?;
        let ctx = Context {
            group,
            recipient: recipient.to_string(),
            sender: sender.to_string(),
        };
        let env = envelope::seal(&s.recipient_identity_spki_der, &ctx, &key)
            .map_err(|e| AgentFailure::bad_request(e.to_string()))?;
        tracing::info!(group = %ctx.group, key_sha256 = %env.key_sha256, recipient = %ctx.recipient, "key group key sealed to another member");
        Ok(pb::SealedKey {
            suite_id: env.suite_id,
            enc: env.enc,
            ciphertext: env.ciphertext,
            key_spki_sha256: env.key_sha256,
            sender_host_id: ctx.sender,
        })
    }

    /// `ImportKey`: opens a member's envelope with this host's identity key and files the
    /// key as a pending key of the certificate, marked as the group's. Importing a key
    /// again writes the same file: a success.
    pub fn import(
        &self,
        i: pb::ImportKey,
        pending: &PendingKeys,
        targets: &BTreeMap<String, Target>,
    ) -> Result<(), AgentFailure> {
        self.allow(&i.key_group)?;
        let group = i.key_group;
        let cert = CertId::parse(&i.cert_id).map_err(|e| {
            AgentFailure::bad_request(format!(
                "ImportKey needs the certificate id the key is for: {e}"
            ))
        })?;
        let Some(sealed) = i.envelope else {
            return Err(AgentFailure::bad_request("ImportKey without an envelope"));
        };
        let sha = sealed.key_spki_sha256;
        if !is_sha256_hex(&sha) {
            return Err(AgentFailure::bad_request(
                "envelope key_spki_sha256: 64 lower-case hex digits",
            ));
        }
        let sender = HostId::parse(&sealed.sender_host_id)
            .map_err(|e| AgentFailure::bad_request(format!("envelope sender_host_id: {e}")))?;
        if let Some(other) = self.group_of(&sha).filter(|g| *g != group) {
            return Err(not_allowed(format!(
                "the key with public key SHA-256 {sha} belongs to key group {other:?} on this host, not {group:?}"
            )));
        }
        let me = self.own_id()?;
        let identity_key = read_limited(&self.identity.key(), 64 * 1024)
            .map_err(|e| {
                AgentFailure::new(
                    "internal",
                    format!("{}: {e}", self.identity.key().display()),
                )
            })
            .map(Zeroizing::new)?;
        let identity_key = std::str::from_utf8(&identity_key).map_err(|_| {
            AgentFailure::new(
                "internal",
                format!("{} is not PEM", self.identity.key().display()),
            )
        })?;
        let ctx = Context {
            group,
            recipient: me.to_string(),
            sender: sender.to_string(),
        };
        let env = Envelope {
            suite_id: sealed.suite_id,
            enc: sealed.enc,
            ciphertext: sealed.ciphertext,
            key_sha256: sha,
        };
        let key = envelope::open(identity_key, &ctx, &env).map_err(open_failure)?;
        // `open` checked the fingerprint; the key must also be what every key file here is:
        // one PKCS#8 PEM block (kept as re-encoded, whatever else the envelope held).
        let key = match certfleet_shared::x509::pkcs8_key_pem(&key) {
            Some(k) if key_fingerprint(&k).as_deref() == Some(env.key_sha256.as_str()) => {
                Zeroizing::new(k)
            }
            _ => {
                return Err(AgentFailure::new(
                    "envelope_not_opened",
                    format!("the envelope from {sender} opened, but what it holds is not a PKCS#8 PEM private key with public key SHA-256 {}; refused", env.key_sha256),
                ))
            }
        };
        pending.keep(&key, &env.key_sha256, Some(&cert))?;
        self.sweep(pending, targets);
        self.mark(&env.key_sha256, &ctx.group)?;
        tracing::info!(group = %ctx.group, key_sha256 = %env.key_sha256, sender = %sender, cert = %cert, "key group key imported");
        Ok(())
    }
}

/// The failure for an envelope `open` refused: malformed → `bad_request`; this host's
/// own identity key unreadable → `internal`; anything else → `envelope_not_opened`.
fn open_failure(e: EnvelopeError) -> AgentFailure {
    match e {
        EnvelopeError::Malformed(_) | EnvelopeError::UnknownSuite(_) => {
            AgentFailure::bad_request(e.to_string())
        }
        EnvelopeError::IdentityKey(_) => AgentFailure::new("internal", e.to_string()),
        _ => AgentFailure::new(
            "envelope_not_opened",
            format!("{e}; have it sealed again to this host's current identity"),
        ),
    }
}

#[cfg(test)]
#[path = "keygroup_tests.rs"]
mod tests;
