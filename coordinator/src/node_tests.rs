//! Tests of `node.rs`: the bundle round trip, its refusals, and what a joined node holds.

use super::*;
use crate::fleet_ca::{init, FleetCa};
use certfleet_shared::ids::HostId;
use x509_parser::prelude::{FromDer, X509Certificate};

const NOW: i64 = 1_750_000_000;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn first_der(pem: &str) -> Vec<u8> {
    parse_pem_chain(pem).unwrap()[0].to_vec()
}

/// Whether the certificate in `cert_pem` is signed by the one in `ca_pem`.
fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (cert_der, ca_der) = (first_der(cert_pem), first_der(ca_pem));
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// A first node (`init`) and its exported bundle.
const L: i64 = crate::fleet_ca::SERVER_LIFETIME_SECS;

fn first_node(tmp: &Path) -> (StateDir, std::path::PathBuf, String) {
    let a = StateDir::new(&tmp.join("a"));
    let fp = init(
        &a,
        &["a.example".into()],
        &["10.0.0.1".parse().unwrap()],
        L,
        NOW,
    )
    .unwrap();
    let out = tmp.join("node.bundle");
    export(&a, &out, NOW).unwrap();
    (a, out, fp)
}

#[test]
fn a_second_node_joins_from_the_bundle_with_its_own_server_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, out, fp) = first_node(tmp.path());
    assert_eq!(mode(&out), 0o600, "the bundle holds the CA key");
    let b = StateDir::new(&tmp.path().join("b"));
    let bundle = read_bundle(&out).unwrap();
    assert_eq!(bundle.ca_sha256, fp);
    let joined = join(
        &b,
        &bundle,
        &["b.example".into()],
        &["10.0.0.2".parse().unwrap()],
        L,
        NOW,
    )
    .unwrap();
    assert_eq!(
        joined,
        Joined::Joined {
            ca_sha256: fp.clone()
        }
    );
    assert_eq!(b.ca_fingerprint().unwrap(), fp, "one fleet CA");
    assert_eq!(mode(&b.root), 0o700);
    for key in [b.ca_key(), b.server_key(), b.admin_key()] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    // Its own server certificate: its own key and names, signed by the fleet CA.
    let (a_server, b_server) = (
        a.read(&a.server_cert()).unwrap(),
        b.read(&b.server_cert()).unwrap(),
    );
    let ca_pem = b.read(&b.ca_cert()).unwrap();
    assert!(signed_by(&b_server, &ca_pem));
    let info = CertInfo::from_der(&first_der(&b_server)).unwrap();
    assert_eq!(info.dns_names, ["b.example"]);
    assert_eq!(info.ips, ["10.0.0.2".parse::<IpAddr>().unwrap()]);
    assert_ne!(
        info.spki_der,
        CertInfo::from_der(&first_der(&a_server)).unwrap().spki_der,
        "no server key is shared"
    );
    assert_ne!(
        a.read(&a.admin_key()).unwrap(),
        b.read(&b.admin_key()).unwrap()
    );
    assert!(signed_by(&b.read(&b.admin_cert()).unwrap(), &ca_pem));

    // The joined node signs agent identities the first node's sessions accept.
    let ca = FleetCa::load(&b).unwrap();
    let agent_key = KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&agent_key)
        .unwrap();
    let (pem, _) = ca.sign_agent(csr.der(), &HostId::generate(), NOW).unwrap();
    assert!(signed_by(&pem, &a.read(&a.ca_cert()).unwrap()));

    // Joining again changes nothing.
    let again = join(&b, &bundle, &["other.example".into()], &[], L, NOW).unwrap();
    assert_eq!(again, Joined::AlreadyMember { ca_sha256: fp });
    assert_eq!(b.read(&b.server_cert()).unwrap(), b_server);
}

#[test]
fn another_fleets_state_directory_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, out, fp) = first_node(tmp.path());
    let other = StateDir::new(&tmp.path().join("other"));
    let other_fp = init(&other, &["o.example".into()], &[], L, NOW).unwrap();
    let server = other.read(&other.server_cert()).unwrap();
    let err = join(&other, &read_bundle(&out).unwrap(), &[], &[], L, NOW)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another fleet CA") && err.contains(&other_fp) && err.contains(&fp),
        "{err}"
    );
    assert!(
        err.contains("move") && err.contains("node join"),
        "names the fix: {err}"
    );
    assert_eq!(other.ca_fingerprint().unwrap(), other_fp);
    assert_eq!(other.read(&other.server_cert()).unwrap(), server);
}

#[test]
fn a_bad_or_exposed_bundle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, out, _) = first_node(tmp.path());
    let good = read_bundle(&out).unwrap();

    // An existing --out is not overwritten.
    let err = export(&a, &out, NOW).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");

    // Readable by others: refused, naming chmod.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = read_bundle(&out).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");

    let refused = |b: Bundle, needle: &str| {
        let err = b.check().unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    };
    let other = StateDir::new(&tmp.path().join("other"));
    init(&other, &[], &[], L, NOW).unwrap();
    refused(
        Bundle {
            ca_key_pem: other.read(&other.ca_key()).unwrap(),
            ..good.clone()
        },
        "not the key of ca_cert_pem",
    );
    refused(
        Bundle {
            ca_sha256: "00".repeat(32),
            ..good.clone()
        },
        "is not the certificate's",
    );
    refused(
        Bundle {
            format: "certfleet-node-bundle/9".into(),
            ..good.clone()
        },
        "this coordinator reads",
    );
    refused(
        Bundle {
            ca_cert_pem: a.read(&a.server_cert()).unwrap(),
            ca_key_pem: a.read(&a.server_key()).unwrap(),
            ..good.clone()
        },
        "not a CA certificate",
    );
    let shown = format!("{good:?}");
    assert!(
        shown.contains("<redacted>") && !shown.contains("PRIVATE KEY"),
        "{shown}"
    );
}
