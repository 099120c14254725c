use super::*;
use rcgen::{KeyPair, PublicKeyData};

/// An identity key as the agent makes it (rcgen, P-256), and its SPKI.
fn identity() -> (String, Vec<u8>) {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (kp.serialize_pem(), kp.subject_public_key_info())
}

fn cert_key(alg: &'static rcgen::SignatureAlgorithm) -> String {
    KeyPair::generate_for(alg).unwrap().serialize_pem()
}

fn ctx() -> Context {
    Context {
        group: "www-wildcard".into(),
        recipient: "h-recipient".into(),
        sender: "h-sender".into(),
    }
}

#[test]
fn round_trip_opens_the_same_key_and_checks_its_fingerprint() {
    let (id_key, id_spki) = identity();
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    ] {
        let key = cert_key(alg);
        let env = seal(&id_spki, &ctx(), &key).unwrap();
        assert_eq!(env.suite_id, SUITE_ID);
        assert_eq!(env.enc.len(), 65);
        assert_eq!(env.key_sha256, key_fingerprint(&key).unwrap());
        assert!(!env
            .ciphertext
            .windows(10)
            .any(|w| key.as_bytes().windows(10).any(|k| k == w)));
        let opened = open(&id_key, &ctx(), &env).unwrap();
        assert_eq!(opened.as_str(), key);
    }
}

#[test]
fn two_seals_of_one_key_differ() {
    let (_, id_spki) = identity();
    let key = cert_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let a = seal(&id_spki, &ctx(), &key).unwrap();
    let b = seal(&id_spki, &ctx(), &key).unwrap();
    assert_ne!(a.enc, b.enc);
    assert_ne!(a.ciphertext, b.ciphertext);
}

#[test]
fn another_hosts_identity_key_cannot_open() {
    let (_, id_spki) = identity();
    let (other_key, _) = identity();
    let env = seal(&id_spki, &ctx(), &cert_key(&rcgen::PKCS_ECDSA_P256_SHA256)).unwrap();
    let err = open(&other_key, &ctx(), &env).unwrap_err();
    assert!(matches!(err, EnvelopeError::Open { .. }), "{err}");
}

#[test]
fn tampering_with_any_part_or_the_context_fails() {
    let (id_key, id_spki) = identity();
    let key = cert_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let env = seal(&id_spki, &ctx(), &key).unwrap();
    let open_err = |e: &Envelope, c: &Context| open(&id_key, c, e).unwrap_err();

    for i in [0, env.ciphertext.len() / 2, env.ciphertext.len() - 1] {
        let mut bad = env.clone();
        bad.ciphertext[i] ^= 1;
        assert!(matches!(open_err(&bad, &ctx()), EnvelopeError::Open { .. }));
    }
    let mut bad = env.clone();
    bad.ciphertext.truncate(bad.ciphertext.len() - 1);
    assert!(matches!(open_err(&bad, &ctx()), EnvelopeError::Open { .. }));

    // A different valid point: decapsulates to another secret.
    let mut bad = env.clone();
    bad.enc = seal(&id_spki, &ctx(), &key).unwrap().enc;
    assert!(matches!(open_err(&bad, &ctx()), EnvelopeError::Open { .. }));
    // Not a point at all.
    let mut bad = env.clone();
    bad.enc[10] ^= 0xff;
    assert!(matches!(
        open_err(&bad, &ctx()),
        EnvelopeError::Malformed(_) | EnvelopeError::Open { .. }
    ));

    // Every part of the context is bound: info (group, recipient) and aad (sender).
    for c in [
        Context {
            group: "other".into(),
            ..ctx()
        },
        Context {
            recipient: "h-other".into(),
            ..ctx()
        },
        Context {
            sender: "h-other".into(),
            ..ctx()
        },
    ] {
        assert!(
            matches!(open_err(&env, &c), EnvelopeError::Open { .. }),
            "{c:?}"
        );
    }
    // The fingerprint is in info: a changed one does not open either.
    let mut bad = env.clone();
    bad.key_sha256 = "0".repeat(64);
    assert!(matches!(open_err(&bad, &ctx()), EnvelopeError::Open { .. }));

    let mut bad = env.clone();
    bad.suite_id[5] = 0x11;
    assert!(matches!(
        open_err(&bad, &ctx()),
        EnvelopeError::UnknownSuite(_)
    ));
}

/// A sender that names one fingerprint in info but seals another key (so the AEAD
/// opens) is refused by the fingerprint check.
#[test]
fn a_key_that_is_not_the_named_one_is_refused() {
    let (id_key, id_spki) = identity();
    let real = cert_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let claimed = key_fingerprint(&cert_key(&rcgen::PKCS_ECDSA_P256_SHA256)).unwrap();
    let recipient = p256::PublicKey::from_public_key_der(&id_spki).unwrap();
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&recipient, false);
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(point.as_bytes()).unwrap();
    let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &pk,
        &info(&ctx(), &claimed),
        real.as_bytes(),
        &aad(&ctx()),
        &mut rand::rng(),
    )
    .unwrap();
    let env = Envelope {
        suite_id: SUITE_ID.to_vec(),
        enc: enc.to_bytes().to_vec(),
        ciphertext,
        key_sha256: claimed.clone(),
    };
    let err = open(&id_key, &ctx(), &env).unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::FingerprintMismatch {
            expected: claimed,
            got: key_fingerprint(&real).unwrap()
        }
    );
    assert!(!err.to_string().contains("PRIVATE KEY"));
}

#[test]
fn bad_inputs_are_named_and_hold_no_key_material() {
    let (id_key, id_spki) = identity();
    let key = cert_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    // Recipient: an RSA or P-384 SPKI is not a P-256 identity.
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let e = seal(&p384.subject_public_key_info(), &ctx(), &key).unwrap_err();
    assert!(matches!(e, EnvelopeError::RecipientKey(_)), "{e}");
    assert!(matches!(
        seal(b"garbage", &ctx(), &key).unwrap_err(),
        EnvelopeError::RecipientKey(_)
    ));
    // The key to seal must be a key.
    assert_eq!(
        seal(&id_spki, &ctx(), "not a key").unwrap_err(),
        EnvelopeError::KeyToSeal
    );
    // The identity key must be P-256 PKCS#8; the message does not echo it.
    let env = seal(&id_spki, &ctx(), &key).unwrap();
    let p384_pem = p384.serialize_pem();
    let e = open(&p384_pem, &ctx(), &env).unwrap_err();
    assert!(matches!(e, EnvelopeError::IdentityKey(_)), "{e}");
    let text = e.to_string();
    assert!(!text.contains("PRIVATE KEY") && !text.contains(&id_key[30..60]));
    // Hostile shapes.
    let mut bad = env.clone();
    bad.ciphertext = vec![0; 3];
    assert!(matches!(
        open(&id_key, &ctx(), &bad).unwrap_err(),
        EnvelopeError::Malformed(_)
    ));
    bad.ciphertext = vec![0; MAX_KEY_BYTES + TAG_LEN + 1];
    assert!(matches!(
        open(&id_key, &ctx(), &bad).unwrap_err(),
        EnvelopeError::Malformed(_)
    ));
    let mut bad = env.clone();
    bad.enc = vec![4; 3];
    assert!(matches!(
        open(&id_key, &ctx(), &bad).unwrap_err(),
        EnvelopeError::Malformed(_)
    ));
    let mut bad = env.clone();
    bad.key_sha256 = "ZZ".into();
    assert!(matches!(
        open(&id_key, &ctx(), &bad).unwrap_err(),
        EnvelopeError::Malformed(_)
    ));
}

#[test]
fn an_identity_certificate_spki_is_a_recipient() {
    // The recipient key comes from the host's identity certificate, as the key-group
    // flow will take it.
    let (id_key, _) = identity();
    let kp = KeyPair::from_pem(&id_key).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let info = crate::x509::CertInfo::from_der(cert.der()).unwrap();
    let key = cert_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let env = seal(&info.spki_der, &ctx(), &key).unwrap();
    assert_eq!(open(&id_key, &ctx(), &env).unwrap().as_str(), key);
    // And the envelope survives JSON.
    let json = serde_json::to_string(&env).unwrap();
    let back: Envelope = serde_json::from_str(&json).unwrap();
    assert_eq!(open(&id_key, &ctx(), &back).unwrap().as_str(), key);
}
