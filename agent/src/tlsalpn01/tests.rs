use super::*;
use crate::config::TlsAlpn01Config;
use rustls::pki_types::ServerName;
use sha2::Digest;
use tokio::io::AsyncReadExt;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const HOST_V4: &str = "192.0.2.10";
const HOST_V6: &str = "2001:db8::10";

fn challenge(identifier: &str, token: &str) -> Challenge {
    Challenge {
        identifier: identifier.into(),
        token: token.into(),
        key_authorization: format!("{token}.thumbprint_abc-DEF_123"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback responder on a free port, for a host with [`HOST_V4`] and [`HOST_V6`].
fn loopback() -> (Responder, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = TlsAlpn01Config {
        mode: TlsAlpn01Mode::Loopback,
        port: None,
        listen: Some(listen),
    };
    let ips = vec![HOST_V4.parse().unwrap(), HOST_V6.parse().unwrap()];
    let r = Responder::new(ips, &config, Counter::default()).unwrap();
    (r, listen)
}

/// One handshake as a CA makes it: SNI `sni`, ALPN `alpn`; the leaf it got and the
/// negotiated protocol, or why it failed. Trusts nothing, checks nothing: the caller does.
async fn handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    // The responder closes the connection after the handshake, sending nothing.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the connection must close without data: {read:?} {rest:?}"
    );
    Ok((leaf, alpn))
}

/// Accepts any certificate but checks the handshake signature against its public key, as
/// a CA's TLS-ALPN-01 client does (webpki would refuse the unknown critical extension).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| rustls::Error::General(format!("certificate: {e}")))?;
        let spki = rustls::pki_types::SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &spki,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks a validation certificate: its SANs are exactly `want_san`, and it has the
/// critical acmeIdentifier extension holding the DER OCTET STRING of SHA-256(`key_auth`).
fn assert_validation_cert(der: &[u8], want_san: &GeneralName<'_>, key_auth: &str) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![want_san.clone()]);
    let acme = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .expect("acmeIdentifier extension");
    assert!(acme.critical, "acmeIdentifier must be critical");
    let digest = sha2::Sha256::digest(key_auth.as_bytes());
    let mut want = vec![0x04, 0x20];
    want.extend_from_slice(&digest);
    assert_eq!(
        acme.value,
        &want[..],
        "OCTET STRING of SHA-256(key authorization)"
    );
    // Self-signed.
    assert_eq!(cert.subject(), cert.issuer());
    assert!(cert.verify_signature(None).is_ok());
}

#[test]
fn identifiers_and_their_sni() {
    let ok = |s: &str| sni_of(&parse_identifier(s).unwrap());
    assert_eq!(ok("192.0.2.10"), "10.2.0.192.in-addr.arpa");
    assert_eq!(
        ok("4321:0:1:2:3:4:567:89ab"),
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa"
    );
    assert_eq!(ok("www.example.org"), "www.example.org");
    assert_eq!(ok("xn--bcher-kva.example"), "xn--bcher-kva.example");
    let long_label = format!("{}.example", "a".repeat(64));
    for (bad, want) in [
        ("192.000.2.10", "leading zeros"),
        ("2001:DB8::10", "canonical form"),
        ("*.example.org", "wildcard"),
        ("WWW.example.org", "canonical form"),
        ("www.example.org.", "canonical form"),
        ("bücher.example", "canonical form"),
        ("localhost", "localhost"),
        ("-a.example", "-a.example"),
        ("a_b.example", "a_b.example"),
        (&long_label, "63"),
        ("", "challenge identifier"),
    ] {
        let err = parse_identifier(bad).unwrap_err();
        assert_eq!(err.code, "bad_request");
        assert!(err.message.contains(want), "{bad:?}: {}", err.message);
    }
}

#[tokio::test]
async fn answers_a_name_and_ips_with_the_validation_certificate() {
    let (r, addr) = loopback();
    assert!(!r.is_listening(), "nothing live, nothing listening");
    let cs = [
        challenge("www.example.org", "token_name_0123456789"),
        challenge(HOST_V4, "token_ipv4_0123456789"),
        challenge(HOST_V6, "token_ipv6_0123456789"),
    ];
    let fresh = r.present(&cs).await.unwrap();
    assert_eq!(fresh.len(), 3);
    assert!(r.is_listening());

    let (leaf, alpn) = handshake(addr, "www.example.org", &[ACME_TLS_ALPN])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(ACME_TLS_ALPN));
    assert_validation_cert(
        &leaf,
        &GeneralName::DNSName("www.example.org"),
        &cs[0].key_authorization,
    );

    // RFC 8738: the SNI of an IP is its reverse name; the SAN is the address itself.
    let (leaf4, _) = handshake(addr, "10.2.0.192.in-addr.arpa", &[ACME_TLS_ALPN])
        .await
        .unwrap();
    assert_validation_cert(
        &leaf4,
        &GeneralName::IPAddress(&[192, 0, 2, 10]),
        &cs[1].key_authorization,
    );
    let v6: std::net::Ipv6Addr = HOST_V6.parse().unwrap();
    let sni6 = reverse_name(IpAddr::V6(v6));
    let (leaf6, _) = handshake(addr, &sni6, &[ACME_TLS_ALPN]).await.unwrap();
    assert_validation_cert(
        &leaf6,
        &GeneralName::IPAddress(&v6.octets()),
        &cs[2].key_authorization,
    );

    // SNI is matched case-insensitively (DNS names are).
    assert!(handshake(addr, "WWW.Example.ORG", &[ACME_TLS_ALPN])
        .await
        .is_ok());

    // A fresh key per challenge.
    let spki = |der: &[u8]| {
        let (_, c) = X509Certificate::from_der(der).unwrap();
        c.public_key().raw.to_vec()
    };
    assert_ne!(spki(&leaf), spki(&leaf4));
    assert_ne!(spki(&leaf4), spki(&leaf6));
}

#[tokio::test]
async fn refuses_other_handshakes() {
    let (r, addr) = loopback();
    r.present(&[challenge("www.example.org", "token_name_0123456789")])
        .await
        .unwrap();
    for (sni, alpn, why) in [
        ("www.example.org", &[][..], "no ALPN"),
        (
            "www.example.org",
            &[&b"h2"[..], b"http/1.1"][..],
            "web ALPN only",
        ),
        ("other.example.org", &[ACME_TLS_ALPN][..], "unknown SNI"),
        (
            "10.2.0.192.in-addr.arpa",
            &[ACME_TLS_ALPN][..],
            "IP not presented",
        ),
    ] {
        let got = handshake(addr, sni, alpn).await;
        assert!(got.is_err(), "{why}: must be refused, got {got:?}");
    }
    // Still answering the right one after all that.
    assert!(handshake(addr, "www.example.org", &[b"h2", ACME_TLS_ALPN])
        .await
        .is_ok());
}

#[tokio::test]
async fn clear_and_expiry_stop_answering() {
    let (r, addr) = loopback();
    let a = challenge("a.example.org", "token_aaaa_0123456789");
    let b = challenge("b.example.org", "token_bbbb_0123456789");
    r.present(&[a.clone(), b.clone()]).await.unwrap();
    r.clear(&[a.token.clone(), "not_held_token_000000".into()]);
    assert!(handshake(addr, "a.example.org", &[ACME_TLS_ALPN])
        .await
        .is_err());
    assert!(handshake(addr, "b.example.org", &[ACME_TLS_ALPN])
        .await
        .is_ok());
    r.clear(std::slice::from_ref(&b.token));
    assert!(!r.is_listening(), "stops listening with nothing live");
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "port closed after the last clear");

    // Expiry: refused as soon as the TTL is over, and the sweep stops the listener.
    let (r, addr) = loopback();
    let r = r.with_ttl(Duration::from_millis(300));
    r.present(&[challenge(HOST_V4, "token_ttl_00123456789")])
        .await
        .unwrap();
    assert!(handshake(addr, "10.2.0.192.in-addr.arpa", &[ACME_TLS_ALPN])
        .await
        .is_ok());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(handshake(addr, "10.2.0.192.in-addr.arpa", &[ACME_TLS_ALPN])
        .await
        .is_err());
    assert!(r.is_listening());
    r.expire();
    assert!(!r.is_listening());
}

#[tokio::test]
async fn bad_input_presents_nothing() {
    let (r, _) = loopback();
    let good = challenge("www.example.org", "token_good_0123456789");
    let mut bad_key_auth = challenge("x.example.org", "token_bad1_0123456789");
    bad_key_auth.key_authorization = "other_token_123456789.thumb".into();
    for (bad, code) in [
        (
            challenge("198.51.100.7", "token_bad0_0123456789"),
            "not_my_ip",
        ),
        (bad_key_auth, "bad_request"),
        (challenge("x.example.org", "short"), "bad_request"),
        (
            challenge("*.example.org", "token_bad2_0123456789"),
            "bad_request",
        ),
    ] {
        let err = r.present(&[good.clone(), bad]).await.unwrap_err();
        assert_eq!(err.code, code, "{}", err.message);
        assert!(lock(&r.table).is_empty(), "all or nothing");
        assert!(!r.is_listening());
    }
}

#[tokio::test]
async fn a_held_port_in_standalone_names_the_fix() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let config = TlsAlpn01Config {
        mode: TlsAlpn01Mode::Standalone,
        port: Some(port),
        listen: None,
    };
    let r = Responder::new(
        vec!["127.0.0.1".parse().unwrap()],
        &config,
        Counter::default(),
    )
    .unwrap();
    assert_eq!(r.mode(), TlsAlpn01Mode::Standalone);
    let err = r
        .present(&[challenge("127.0.0.1", "token_port_0123456789")])
        .await
        .unwrap_err();
    assert_eq!(err.code, "bind_failed");
    for want in [
        format!("port {port} on 127.0.0.1 is held by another process"),
        "mode = \"loopback\"".into(),
        "deploy/nginx/acme-tls-alpn.conf".into(),
    ] {
        assert!(
            err.message.contains(&want),
            "{:?} should contain {want:?}",
            err.message
        );
    }
    assert!(lock(&r.table).is_empty(), "nothing left presented");
    // Once the port is free, the same challenge is answered on it.
    drop(held);
    r.present(&[challenge("127.0.0.1", "token_port_0123456789")])
        .await
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (leaf, _) = handshake(addr, "1.0.0.127.in-addr.arpa", &[ACME_TLS_ALPN])
        .await
        .unwrap();
    assert_validation_cert(
        &leaf,
        &GeneralName::IPAddress(&[127, 0, 0, 1]),
        "token_port_0123456789.thumbprint_abc-DEF_123",
    );
    r.clear_all();
    assert!(!r.is_listening());
}

#[tokio::test]
async fn close_at_shutdown_ends_listening_for_good() {
    let (r, addr) = loopback();
    let c = challenge("www.example.org", "token_close_123456789");
    r.present(std::slice::from_ref(&c)).await.unwrap();
    r.close(Duration::from_secs(2)).await;
    assert!(!r.is_listening());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let err = r.present(&[c]).await.unwrap_err();
    assert!(
        err.message.contains("the agent is stopping"),
        "{}",
        err.message
    );
    assert!(lock(&r.table).is_empty());
}
