//! TLS-ALPN-01 on a running agent behind the shipped nginx front: the agent (enrolled with
//! the real coordinator, then driven by a stand-in that sends TLS-ALPN-01 challenges
//! directly; the real coordinator ordering them is in `challenge_fallback`, and behind this
//! front on a namespace host in `names_alpn`) answers `acme-tls/1` through
//! `deploy/nginx/acme-tls-alpn.conf` on a real nginx, while browsers' h2 and http/1.1
//! handshakes through the same port reach the web server. And pebble itself validates
//! TLS-ALPN-01 answered by the agent in standalone mode.

use std::net::IpAddr;
use std::time::Duration;

use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};
use certfleet_tests::alpn_front::{handshake, AlpnFront};
use certfleet_tests::fake_coordinator::FakeCoordinator;
use certfleet_tests::{Agent, Coordinator, Pebble, RestartMode};
use sha2::Digest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::support::pebble_and_coordinator;

const ACME_TLS: &[u8] = b"acme-tls/1";
const STEP: Duration = Duration::from_secs(30);

/// RFC 8738's SNI for an address: `d.c.b.a.in-addr.arpa` or the `ip6.arpa` nibble name.
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(String::from).collect();
            format!("{}.ip6.arpa", nibbles.join("."))
        }
    }
}

/// The leaf is a validation certificate for exactly `ip` with the critical
/// acmeIdentifier extension holding SHA-256(`key_auth`).
fn assert_validation_cert(der: &[u8], ip: IpAddr, key_auth: &str) {
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    let san = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("a SAN extension");
    let octets = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::IPAddress(&octets)],
        "only the address validated"
    );
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .expect("acmeIdentifier extension");
    assert!(ext.critical);
    let mut want = vec![0x04, 0x20];
    want.extend_from_slice(&sha2::Sha256::digest(key_auth.as_bytes()));
    assert_eq!(ext.value, &want[..]);
}

/// pebble, a coordinator that enrolled a fresh agent with `extra` in its config, then was
/// replaced by a stand-in on its address; the agent not started yet.
async fn enrolled_agent_behind_a_stand_in(
    extra: impl FnOnce(&Pebble) -> String,
) -> (Pebble, Coordinator, Agent, FakeCoordinator) {
    let (pebble, mut coord) = pebble_and_coordinator().await;
    let agent = Agent::new("alpn", pebble.http_port()).expect("agent");
    agent.append_config(&extra(&pebble)).expect("config");
    let mut agent = agent;
    agent.enroll_with(&coord).await.expect("enroll");
    // The stand-in takes the coordinator's place (same address, same server certificate).
    coord.stop_current(RestartMode::Term).await.expect("stop");
    let fake = FakeCoordinator::start(coord.addr(), coord.state_dir())
        .await
        .expect("stand-in coordinator");
    (pebble, coord, agent, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_through_the_nginx_front_reaches_the_running_agent() {
    let listen = std::net::SocketAddr::from((
        [127, 0, 0, 1],
        certfleet_tests::net::free_port().expect("port"),
    ));
    let (_pebble, _coord, mut agent, mut fake) = enrolled_agent_behind_a_stand_in(|_| {
        format!("\n[tls_alpn01]\nmode = \"loopback\"\nlisten = \"{listen}\"\n")
    })
    .await;
    let front = AlpnFront::start(listen).await.expect("nginx front");
    agent.start().expect("agent start");

    let hello = fake.hello(STEP).await.expect("hello");
    assert!(
        hello
            .challenge_modes
            .contains(&"tls-alpn-01/loopback".to_owned()),
        "{:?}",
        hello.challenge_modes
    );
    let ips = agent.ips();
    let snis: Vec<String> = ips.iter().map(|ip| reverse_name(*ip)).collect();
    // Nothing live: the agent does not listen, nginx gets no upstream, no handshake.
    assert!(handshake(front.addr(), &snis[0], &[ACME_TLS], false)
        .await
        .is_err());

    let challenges: Vec<pb::TlsAlpn01Challenge> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let token = format!("alpn_e2e_token_{i}_0123456789");
            pb::TlsAlpn01Challenge {
                identifier: ip.to_string(),
                key_authorization: format!("{token}.e2e_thumbprint"),
                token,
            }
        })
        .collect();
    let r = fake
        .request(
            Cmd::PresentChallenges(pb::PresentChallenges {
                challenges: vec![],
                tls_alpn01: challenges.clone(),
            }),
            STEP,
        )
        .await
        .expect("present");
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");

    // The CA's handshake, for each address (IPv4 and IPv6 reverse names).
    for ((ip, sni), c) in ips.iter().zip(&snis).zip(&challenges) {
        let h = handshake(front.addr(), sni, &[ACME_TLS], false)
            .await
            .unwrap_or_else(|e| panic!("acme-tls/1 for {ip} through nginx: {e:#}"));
        assert_eq!(h.alpn.as_deref(), Some(ACME_TLS));
        assert_eq!(h.after, Some(vec![]), "closed without application data");
        assert_validation_cert(&h.leaf, *ip, &c.key_authorization);
    }
    // A name the agent holds nothing for: refused, through the front too.
    assert!(
        handshake(front.addr(), "other.example.org", &[ACME_TLS], false)
            .await
            .is_err()
    );

    // Browsers reach the web server through the same port.
    let web = handshake(front.addr(), "web.test", &[b"http/1.1"], true)
        .await
        .expect("http/1.1 through the front");
    assert_eq!(web.leaf, front.web_cert);
    let page = String::from_utf8_lossy(web.after.as_deref().unwrap_or_default());
    assert!(
        page.starts_with("HTTP/1.1 200") && page.ends_with("web\n"),
        "{page}"
    );
    let h2 = handshake(front.addr(), "web.test", &[b"h2", b"http/1.1"], false)
        .await
        .expect("h2 through the front");
    assert_eq!(h2.leaf, front.web_cert);
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));

    // Cleared: the agent stops listening; acme-tls/1 gets no handshake any more.
    let r = fake
        .request(
            Cmd::ClearChallenges(pb::ClearChallenges {
                tokens: challenges.iter().map(|c| c.token.clone()).collect(),
            }),
            STEP,
        )
        .await
        .expect("clear");
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");
    assert!(handshake(front.addr(), &snis[0], &[ACME_TLS], false)
        .await
        .is_err());
    assert!(handshake(front.addr(), "web.test", &[b"http/1.1"], true)
        .await
        .is_ok());
}

/// pebble orders, the agent (standalone on pebble's tlsPort of its own addresses) answers,
/// pebble validates every address by TLS-ALPN-01 and the order becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_validates_tls_alpn01_answered_by_the_agent() {
    use instant_acme::{
        Account, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
    };
    let (pebble, _coord, mut agent, mut fake) = enrolled_agent_behind_a_stand_in(|p| {
        format!(
            "\n[tls_alpn01]\nmode = \"standalone\"\nport = {}\n",
            p.tls_port()
        )
    })
    .await;
    agent.start().expect("agent start");
    let hello = fake.hello(STEP).await.expect("hello");
    assert!(
        hello
            .challenge_modes
            .contains(&"tls-alpn-01/standalone".to_owned()),
        "{:?}",
        hello.challenge_modes
    );
    let (account, _) = Account::builder_with_root(pebble.ca_pem_path())
        .expect("ACME client")
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            pebble.directory_url(),
            None,
        )
        .await
        .expect("account");
    let ips = agent.ips();
    let ids: Vec<Identifier> = ips.iter().map(|ip| Identifier::Ip(*ip)).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .expect("order");
    let mut tokens = Vec::new();
    {
        let mut auths = order.authorizations();
        while let Some(auth) = auths.next().await {
            let mut auth = auth.expect("authorization");
            let mut ch = auth
                .challenge(ChallengeType::TlsAlpn01)
                .expect("pebble offers tls-alpn-01");
            let Identifier::Ip(ip) = ch.identifier().identifier else {
                panic!("not an IP: {:?}", ch.identifier());
            };
            let c = pb::TlsAlpn01Challenge {
                identifier: ip.to_string(),
                token: ch.token.clone(),
                key_authorization: ch.key_authorization().as_str().to_owned(),
            };
            tokens.push(c.token.clone());
            let r = fake
                .request(
                    Cmd::PresentChallenges(pb::PresentChallenges {
                        challenges: vec![],
                        tls_alpn01: vec![c],
                    }),
                    STEP,
                )
                .await
                .expect("present");
            assert!(matches!(r, reply::Result::Done(_)), "{ip}: {r:?}");
            ch.set_ready().await.expect("ready");
        }
    }
    let retry = RetryPolicy::default();
    let status = order.poll_ready(&retry).await.expect("poll");
    assert_eq!(status, OrderStatus::Ready, "pebble validated {ips:?}");
    let r = fake
        .request(Cmd::ClearChallenges(pb::ClearChallenges { tokens }), STEP)
        .await
        .expect("clear");
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");
    // Nothing live: the agent let go of the port.
    let addr = std::net::SocketAddr::new(ips[0], pebble.tls_port());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
