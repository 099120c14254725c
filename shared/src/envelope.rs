//! Key-group envelopes: a certificate's private key sealed to one host's identity key, so
//! that the coordinator can relay it without ever being able to read it.
//!
//! RFC 9180 HPKE, base mode, suite DHKEM(P-256, HKDF-SHA256) + HKDF-SHA256 + AES-128-GCM
//! (`hpke` crate, rust-hpke). The recipient key is the host's mTLS identity key (ECDSA
//! P-256, made by rcgen at enrollment or rotation), taken from its identity certificate's
//! SubjectPublicKeyInfo; only the host's `identity.key` opens what was sealed to it, so a
//! rotated identity cannot open an envelope sealed to the old one (seal again).
//!
//! What an envelope is bound to (a change to any of it makes [`open`] fail):
//! - `info`: the label `certfleet key-group v1`, the group (certificate) name, the
//!   recipient host id and the SHA-256 fingerprint of the sealed key's SPKI;
//! - `aad`: the sender host id.
//!
//! [`open`] also checks that the key it opened has the fingerprint the envelope names, so
//! what a host installs is the key the audit trail records. Errors never hold key material;
//! plaintext buffers are zeroized when dropped.
//!
//! Mechanism only: who seals to whom, and when, is the key-group flow's business.

use crate::x509::sha256_hex;
use hpke::{aead::AesGcm128, kdf::HkdfSha256, kem::DhP256HkdfSha256};
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

type Kem = DhP256HkdfSha256;
type Kdf = HkdfSha256;
type Aead = AesGcm128;

/// RFC 9180 `suite_id` of the one suite we use: "HPKE" ‖ kem 0x0010 ‖ kdf 0x0001 ‖
/// aead 0x0001. An envelope names it so a later suite can be told apart.
pub const SUITE_ID: [u8; 10] = *b"HPKE\x00\x10\x00\x01\x00\x01";
/// The label every `info` and `aad` starts with.
pub const LABEL: &[u8] = b"certfleet key-group v1";
/// Largest sealed key accepted (an RSA-4096 PKCS#8 PEM is about 3.3 KiB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;
const TAG_LEN: usize = 16;

/// What an envelope is for: the group's certificate, who receives it, who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The key group's certificate name.
    pub group: String,
    /// Host id of the host the key is sealed to.
    pub recipient: String,
    /// Host id of the host that made (or holds) the key and sealed it.
    pub sender: String,
}

/// A sealed private key. Plain bytes and strings, so it maps one to one onto a proto
/// message and onto JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// RFC 9180 `suite_id` ([`SUITE_ID`]).
    pub suite_id: Vec<u8>,
    /// HPKE encapsulated key (uncompressed P-256 point, 65 bytes).
    pub enc: Vec<u8>,
    /// The key PEM, encrypted, followed by the 16-byte AES-GCM tag.
    pub ciphertext: Vec<u8>,
    /// SHA-256 (hex) of the sealed key's SubjectPublicKeyInfo.
    pub key_sha256: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("the recipient's identity public key is not a P-256 SubjectPublicKeyInfo ({0}); seal to the SPKI of the host's current identity certificate")]
    RecipientKey(String),
    #[error("this host's identity key is not a PKCS#8 P-256 private key ({0}); is the identity.key file intact?")]
    IdentityKey(String),
    #[error("the key to seal is not a PKCS#8 PEM private key of at most {MAX_KEY_BYTES} bytes")]
    KeyToSeal,
    #[error("envelope uses HPKE suite {0}, this build knows only DHKEM(P-256, HKDF-SHA256) + HKDF-SHA256 + AES-128-GCM")]
    UnknownSuite(String),
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    #[error("sealing failed: {0}")]
    Seal(String),
    #[error("the envelope does not open with this host's identity key for group {group:?}, recipient {recipient}, sender {sender}: sealed to another key or context, or altered on the way")]
    Open {
        group: String,
        recipient: String,
        sender: String,
    },
    #[error("the opened key is not a PKCS#8 PEM private key")]
    NotAKey,
    #[error("the opened key has SPKI fingerprint {got}, the envelope names {expected}; refused")]
    FingerprintMismatch { expected: String, got: String },
}

/// SHA-256 (hex) of the SubjectPublicKeyInfo of a PKCS#8 PEM private key (ECDSA or RSA).
pub fn key_fingerprint(key_pem: &str) -> Option<String> {
    let kp = rcgen::KeyPair::from_pem(key_pem).ok()?;
    Some(sha256_hex(&rcgen::PublicKeyData::subject_public_key_info(
        &kp,
    )))
}

/// Seals `key_pem` (PKCS#8 PEM) to the host whose identity SubjectPublicKeyInfo is
/// `recipient_spki_der`, for `ctx`.
pub fn seal(
    recipient_spki_der: &[u8],
    ctx: &Context,
    key_pem: &str,
) -> Result<Envelope, EnvelopeError> {
    let recipient = p256::PublicKey::from_public_key_der(recipient_spki_der)
        .map_err(|e| EnvelopeError::RecipientKey(e.to_string()))?;
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&recipient, false);
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(point.as_bytes())
        .map_err(|e| EnvelopeError::RecipientKey(e.to_string()))?;
    if key_pem.len() > MAX_KEY_BYTES {
        return Err(EnvelopeError::KeyToSeal);
    }
    let key_sha256 = key_fingerprint(key_pem).ok_or(EnvelopeError::KeyToSeal)?;
    let info = info(ctx, &key_sha256);
    let mut buf = Zeroizing::new(key_pem.as_bytes().to_vec());
    let (enc, tag) = hpke::single_shot_seal_in_place_detached::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &pk,
        &info,
        &mut buf,
        &aad(ctx),
        &mut rand::rng(),
    )
    .map_err(|e| EnvelopeError::Seal(e.to_string()))?;
    // `buf` now holds ciphertext only.
    let mut ciphertext = buf.to_vec();
    ciphertext.extend_from_slice(&tag.to_bytes());
    Ok(Envelope {
        suite_id: SUITE_ID.to_vec(),
        enc: enc.to_bytes().to_vec(),
        ciphertext,
        key_sha256,
    })
}

/// Opens `env` with this host's identity key (`identity_key_pem`, PKCS#8 PEM) for `ctx`,
/// and checks that the key inside has the fingerprint the envelope names.
pub fn open(
    identity_key_pem: &str,
    ctx: &Context,
    env: &Envelope,
) -> Result<Zeroizing<String>, EnvelopeError> {
    if env.suite_id != SUITE_ID {
        return Err(EnvelopeError::UnknownSuite(hex::encode(
            &env.suite_id[..env.suite_id.len().min(16)],
        )));
    }
    if env.ciphertext.len() < TAG_LEN {
        return Err(EnvelopeError::Malformed("ciphertext shorter than its tag"));
    }
    if env.ciphertext.len() > MAX_KEY_BYTES + TAG_LEN {
        return Err(EnvelopeError::Malformed("ciphertext longer than any key"));
    }
    if env.key_sha256.len() != 64
        || !env
            .key_sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(EnvelopeError::Malformed(
            "key_sha256 is not 64 lower-case hex digits",
        ));
    }
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&env.enc)
        .map_err(|_| EnvelopeError::Malformed("enc is not an uncompressed P-256 point"))?;
    let sk = identity_private_key(identity_key_pem)?;
    let (body, tag) = env.ciphertext.split_at(env.ciphertext.len() - TAG_LEN);
    let tag = hpke::aead::AeadTag::<Aead>::from_bytes(tag)
        .map_err(|_| EnvelopeError::Malformed("bad tag length"))?;
    let mut buf = Zeroizing::new(body.to_vec());
    hpke::single_shot_open_in_place_detached::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        &info(ctx, &env.key_sha256),
        &mut buf,
        &aad(ctx),
        &tag,
    )
    .map_err(|_| EnvelopeError::Open {
        group: ctx.group.clone(),
        recipient: ctx.recipient.clone(),
        sender: ctx.sender.clone(),
    })?;
    let key = match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(s) => Zeroizing::new(s),
        Err(e) => {
            e.into_bytes().zeroize();
            return Err(EnvelopeError::NotAKey);
        }
    };
    let got = key_fingerprint(&key).ok_or(EnvelopeError::NotAKey)?;
    if got != env.key_sha256 {
        return Err(EnvelopeError::FingerprintMismatch {
            expected: env.key_sha256.clone(),
            got,
        });
    }
    Ok(key)
}

/// The HPKE private key of a PKCS#8 PEM P-256 identity key.
fn identity_private_key(pem: &str) -> Result<<Kem as hpke::Kem>::PrivateKey, EnvelopeError> {
    let sk = p256::SecretKey::from_pkcs8_pem(pem)
        .map_err(|e| EnvelopeError::IdentityKey(e.to_string()))?;
    let scalar = Zeroizing::new(sk.to_bytes());
    <Kem as hpke::Kem>::PrivateKey::from_bytes(scalar.as_slice())
        .map_err(|e| EnvelopeError::IdentityKey(e.to_string()))
}

/// `info`: label, group, recipient, key fingerprint — each length-prefixed, so no two
/// contexts share an encoding.
fn info(ctx: &Context, key_sha256: &str) -> Vec<u8> {
    let mut out = LABEL.to_vec();
    for part in [
        ctx.group.as_bytes(),
        ctx.recipient.as_bytes(),
        key_sha256.as_bytes(),
    ] {
        push_field(&mut out, part);
    }
    out
}

/// `aad`: label and the sender host id.
fn aad(ctx: &Context) -> Vec<u8> {
    let mut out = LABEL.to_vec();
    push_field(&mut out, b"sender");
    push_field(&mut out, ctx.sender.as_bytes());
    out
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

#[cfg(test)]
#[path = "envelope_tests.rs"]
mod tests;
