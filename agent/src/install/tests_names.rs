//! Name certificates, RSA keys, one certificate into several targets, and the served
//! check's SNI, against a real TLS server that picks its certificate by SNI.

use super::*;
use crate::target::TargetConfig;
use certfleet_proto::v1::KeyType;
use certfleet_shared::identifier::Identifier;
use rcgen::{CertificateParams, Issuer, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateSigningRequestDer, PrivateKeyDer};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

/// Signs a CSR with a throwaway CA, the leaf naming what the CSR asks for.
pub(crate) fn sign(csr_der: &[u8]) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let csr = rcgen::CertificateSigningRequestParams::from_der(
        &CertificateSigningRequestDer::from(csr_der),
    )
    .unwrap();
    let leaf = csr.signed_by(&issuer).unwrap();
    format!("{}{}", leaf.pem(), ca_cert.pem())
}

fn named(name: &str, toml_text: &str) -> Target {
    let cfg: TargetConfig = toml::from_str(toml_text).unwrap();
    cfg.resolve(name, &ips()).unwrap()
}

fn ips() -> Vec<IpAddr> {
    vec!["127.0.0.1".parse().unwrap()]
}

fn ids(texts: &[&str]) -> Vec<Identifier> {
    texts
        .iter()
        .map(|t| Identifier::parse(t).unwrap())
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn one_certificate_goes_into_several_targets_with_its_key_also_after_a_restart() {
    for key_type in [KeyType::EcdsaP256, KeyType::Rsa2048] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let state = dir.path().join("state");
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state).unwrap();
        let mut targets = BTreeMap::new();
        targets.insert(
            "nginx".to_owned(),
            named(
                "nginx",
                &format!("fullchain = \"{d}/n/f.pem\"\nkey = \"{d}/n/k.pem\"\nverify = []"),
            ),
        );
        targets.insert(
            "haproxy".to_owned(),
            named(
                "haproxy",
                &format!(
                    "preset = \"haproxy\"\ndir = \"{d}/h\"\ncheck = []\nreload = []\nverify = []"
                ),
            ),
        );
        targets.insert(
            "lego".to_owned(),
            named(
                "lego",
                &format!("preset = \"lego\"\ndir = \"{d}/l\"\nverify = []"),
            ),
        );
        let identifiers = ids(&["127.0.0.1", "web-1.example.net"]);
        let csr = pending.create_csr(&identifiers, key_type, None).unwrap();
        let chain = sign(&csr);
        let first = inst
            .install(&targets["nginx"], &chain, &ips(), &pending, &targets)
            .await
            .unwrap();
        assert_eq!(
            pending.count(),
            0,
            "the first install removes the pending key"
        );
        // Without a target that holds the key, the second target cannot be served.
        let alone = inst
            .install(
                &targets["haproxy"],
                &chain,
                &ips(),
                &pending,
                &BTreeMap::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(alone.code, "no_matching_key", "{key_type:?}");
        let second = inst
            .install(&targets["haproxy"], &chain, &ips(), &pending, &targets)
            .await
            .unwrap_or_else(|e| panic!("{key_type:?}: {}", e.message));
        assert_eq!(second.serial, first.serial);
        // After a restart (new installer, pending keys read afresh) the same holds.
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state).unwrap();
        let third = inst
            .install(&targets["lego"], &chain, &ips(), &pending, &targets)
            .await
            .unwrap_or_else(|e| panic!("{key_type:?}: {}", e.message));
        assert_eq!(third.serial, first.serial);
        for (name, t) in &targets {
            let got = inspect(t).unwrap_or_else(|| panic!("{key_type:?}: {name} holds it"));
            assert_eq!(got.serial, first.serial);
            assert_eq!(got.identifiers(), ["127.0.0.1", "web-1.example.net"]);
            assert_eq!(mode(&t.key_source().unwrap().path), 0o600, "{name}");
        }
        let key = std::fs::read_to_string(dir.path().join("n/k.pem")).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("l/certificates/lego.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta["domains"],
            serde_json::json!(["127.0.0.1", "web-1.example.net"])
        );
    }
}

/// A web server on 127.0.0.1 that presents the target's files to handshakes with the SNI
/// `serve_for` (none: without SNI) and a certificate of its own to every other one, the
/// way a virtual host for a name and a default server behave. Records each SNI seen.
struct ByName {
    files: (PathBuf, PathBuf),
    serve_for: Option<String>,
    other: Arc<CertifiedKey>,
    seen: Mutex<Vec<Option<String>>>,
}

impl std::fmt::Debug for ByName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByName")
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_owned);
        self.seen.lock().unwrap().push(sni.clone());
        if sni != self.serve_for {
            return Some(self.other.clone());
        }
        let chain = parse_pem_chain(&std::fs::read_to_string(&self.files.0).ok()?).ok()?;
        let key_pem = std::fs::read_to_string(&self.files.1).ok()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
        Some(Arc::new(CertifiedKey::new(chain, signer)))
    }
}

async fn serve(resolver: Arc<ByName>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    (addr, task)
}

fn other_cert() -> Arc<CertifiedKey> {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["default.invalid".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
    Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer))
}

#[tokio::test]
async fn the_served_check_asks_for_a_name_with_sni_and_for_an_ip_without() {
    let cases: [(&[&str], KeyType, Option<&str>); 3] = [
        (
            &["127.0.0.1", "web-1.example.net", "web-2.example.net"],
            KeyType::Rsa2048,
            Some("web-1.example.net"),
        ),
        (
            &["api.example.net"],
            KeyType::EcdsaP384,
            Some("api.example.net"),
        ),
        (&["127.0.0.1"], KeyType::EcdsaP256, None),
    ];
    for (texts, key_type, sni) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let state = dir.path().join("state");
        let pending = PendingKeys::new(&state);
        let inst = Installer::new(&state).unwrap();
        let files = (dir.path().join("f.pem"), dir.path().join("k.pem"));
        let resolver = Arc::new(ByName {
            files: files.clone(),
            serve_for: sni.map(str::to_owned),
            other: other_cert(),
            seen: Mutex::new(Vec::new()),
        });
        let (addr, server) = serve(resolver.clone()).await;
        let t = named(
            "web",
            &format!("fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = [\"{addr}\"]\nverify_grace_secs = 5"),
        );
        let csr = pending.create_csr(&ids(texts), key_type, None).unwrap();
        let out = inst
            .install(&t, &sign(&csr), &ips(), &pending, &BTreeMap::new())
            .await
            .unwrap_or_else(|e| panic!("{texts:?}: {}", e.message));
        assert_eq!(out.served_on, vec![addr]);
        let seen = resolver.seen.lock().unwrap().clone();
        assert!(seen.len() >= STABLE_ROUNDS as usize, "{seen:?}");
        assert!(
            seen.iter().all(|s| s.as_deref() == sni),
            "{texts:?}: every handshake asks with SNI {sni:?}, saw {seen:?}"
        );
        // The same check against a server with the certificate on another name fails.
        let wrong = Arc::new(ByName {
            files,
            serve_for: Some("elsewhere.example.net".to_owned()),
            other: other_cert(),
            seen: Mutex::new(Vec::new()),
        });
        let (addr2, server2) = serve(wrong).await;
        let t2 = named(
            "web",
            &format!("fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = [\"{addr2}\"]\nverify_grace_secs = 1"),
        );
        let leaf =
            parse_pem_chain(&std::fs::read_to_string(dir.path().join("f.pem")).unwrap()).unwrap();
        let sni_owned = sni.map(str::to_owned);
        let err = inst
            .verify(&t2, leaf[0].as_ref(), &sni_owned)
            .await
            .unwrap_err();
        assert_eq!(err.code, "not_served");
        if let Some(name) = sni {
            assert!(
                err.message.contains(&format!("asked with SNI {name}")),
                "{}",
                err.message
            );
        }
        server.abort();
        server2.abort();
    }
}
