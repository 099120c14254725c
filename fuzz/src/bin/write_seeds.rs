//! Writes the seed corpus of every fuzz target from real messages, configs, certificates
//! and CSRs (made here with rcgen): `write-seeds [DIR]` (default `corpus`, i.e.
//! `fuzz/corpus/<target>/<seed>` when run from `fuzz/`). Keys are fresh on every run, so
//! re-running changes the certificate seeds' bytes, not their shape.

// Built with the fuzz targets' coverage flags: libFuzzer provides the coverage callbacks.
extern crate libfuzzer_sys;

use certfleet_coordinator::audit::Kind;
use certfleet_fuzz::{
    DNS_ANSWER_SEEDS, ENV_MARKER, HOST_IPS, IDENTIFIER_SEEDS, LIVE_KEY_AUTHORIZATION, LIVE_TOKEN,
    TARGET,
};
use certfleet_proto::v1::{self as pb, agent_message::Msg, coordinator_message::Cmd, reply};
use prost::Message;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType,
    SignatureAlgorithm,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let w = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    };
    let ips: Vec<IpAddr> = HOST_IPS[..2]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    let csr_p256 = csr(&ips, &rcgen::PKCS_ECDSA_P256_SHA256);
    let csr_p384 = csr(&ips, &rcgen::PKCS_ECDSA_P384_SHA384);
    let csr_ed25519 = csr(&ips[..1], &rcgen::PKCS_ED25519);
    let (chain_pem, leaf_der, key_pem) = chain(&ips);

    // coordinator_agent_message
    let t = "coordinator_agent_message";
    let agent_msg = |m: Msg| pb::AgentMessage { msg: Some(m) }.encode_to_vec();
    let hello = pb::Hello {
        agent_version: "0.1.0".into(),
        ips: HOST_IPS.iter().map(|s| s.to_string()).collect(),
        targets: vec![TARGET.into(), "mail".into()],
        challenge_modes: vec!["http-01/webroot".into()],
        inventory: vec![pb::InstalledCert {
            target: TARGET.into(),
            serial: "0a1b2c".into(),
            not_after_unix: 1_900_000_000,
            identifiers: vec![HOST_IPS[0].into()],
        }],
        requested_names: vec!["api.example.net".into()],
        key_groups: vec!["edge".into()],
    };
    w(t, "hello", &agent_msg(Msg::Hello(hello.clone())));
    let bad_hello = pb::Hello {
        ips: vec!["192.0.2.010".into(), "::ffff:192.0.2.1".into()],
        targets: vec!["../etc".into()],
        ..hello
    };
    w(t, "hello-bad", &agent_msg(Msg::Hello(bad_hello)));
    let reply_msg = |r: reply::Result| {
        agent_msg(Msg::Reply(pb::Reply {
            request_id: "r1-1".into(),
            result: Some(r),
        }))
    };
    w(
        t,
        "reply-csr",
        &reply_msg(reply::Result::Csr(pb::Csr {
            csr_der: csr_p256.clone(),
        })),
    );
    w(
        t,
        "reply-csr-p384",
        &reply_msg(reply::Result::Csr(pb::Csr {
            csr_der: csr_p384.clone(),
        })),
    );
    w(
        t,
        "reply-done",
        &reply_msg(reply::Result::Done(pb::Done {
            warnings: vec!["self-check: 301 redirect".into()],
            discarded: 1,
        })),
    );
    w(
        t,
        "reply-failure",
        &reply_msg(reply::Result::Failure(pb::Failure {
            message: "nginx -t failed".into(),
            code: "config_test_failed".into(),
            rolled_back: true,
            current_serial: "0a1b".into(),
            kind: pb::FailureCode::ConfigTestFailed as i32,
        })),
    );
    w(
        t,
        "reply-installed",
        &reply_msg(reply::Result::Installed(pb::InstallReport {
            deploy_hook: Some(pb::DeployHookReport {
                ok: false,
                status: "exit status 3".into(),
                exit_code: Some(3),
                stderr_tail: "push failed".into(),
                duration_ms: 12,
            }),
            target: TARGET.into(),
            serial: "0a1b".into(),
            not_after_unix: 1_900_000_000,
            reload_output: "ok".into(),
            served_on: vec!["192.0.2.10:443".into()],
            verify_disabled: false,
            warnings: vec![],
        })),
    );
    w(t, "empty", &pb::AgentMessage { msg: None }.encode_to_vec());

    // coordinator_identity
    let t = "coordinator_identity";
    let tagged = |tag: u8, m: Vec<u8>| [vec![tag], m].concat();
    let enroll = pb::EnrollRequest {
        token: "cf1_3b9d0c5e7a1f4e2d8c6b0a9f1e3d5c7b".into(),
        csr_der: csr_p256.clone(),
        hostname: "web-1.example.net".into(),
        labels: [("role".to_owned(), "web".to_owned())].into(),
    };
    w(t, "enroll", &tagged(0, enroll.encode_to_vec()));
    let rotate = |der: &[u8]| {
        tagged(
            1,
            pb::RotateIdentityRequest {
                csr_der: der.to_vec(),
            }
            .encode_to_vec(),
        )
    };
    w(t, "rotate-p256", &rotate(&csr_p256));
    w(t, "rotate-p384", &rotate(&csr_p384));
    w(t, "rotate-ed25519", &rotate(&csr_ed25519));

    // coordinator_admin: the first byte picks the request (ADMIN_REQUESTS in fuzz/src/lib.rs).
    let t = "coordinator_admin";
    let host = "h-abcdefghijk23456";
    let cert = "c-abcdefghijk23456";
    let admin: [(&str, Vec<u8>); 16] = [
        (
            "create-token",
            pb::CreateTokenRequest {
                ttl_seconds: 600,
                uses: 3,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("list-hosts", pb::ListHostsRequest::default().encode_to_vec()),
        ("list-certs", pb::ListCertsRequest::default().encode_to_vec()),
        (
            "renew-certs",
            pb::RenewCertsRequest {
                cert_ids: vec![cert.into()],
                host_id: host.into(),
            }
            .encode_to_vec(),
        ),
        (
            "query-audit",
            pb::QueryAuditRequest {
                host_id: "h-fuzz0000000000".into(),
                network: "192.0.2.0/24".into(),
                serial: "0A1B".into(),
                kinds: vec![
                    Kind::CertificateIssued.as_str(),
                    Kind::HostEnrolled.as_str(),
                ],
                since_unix: 1_600_000_000,
                until_unix: 2_000_000_000,
                limit: 5,
                name: "*.example.net".into(),
                page_size: 2,
                page_token: "a:12".into(),
            }
            .encode_to_vec(),
        ),
        ("verify-audit", pb::VerifyAuditRequest {}.encode_to_vec()),
        ("list-tokens", pb::ListTokensRequest::default().encode_to_vec()),
        (
            "revoke-cert",
            pb::RevokeCertRequest {
                cert_id: cert.into(),
                reason: "keyCompromise".into(),
            }
            .encode_to_vec(),
        ),
        (
            "remove-host",
            pb::RemoveHostRequest {
                host_id: host.into(),
                keep_certificates: true,
            }
            .encode_to_vec(),
        ),
        (
            "revoke-token",
            pb::RevokeTokenRequest {
                id: "0123abcdEF".into(),
            }
            .encode_to_vec(),
        ),
        (
            "release-ip",
            pb::ReleaseIpRequest {
                host_id: host.into(),
                ip: "2001:db8::10".into(),
            }
            .encode_to_vec(),
        ),
        (
            "add-operator",
            pb::AddOperatorRequest {
                name: "vera".into(),
                role: "viewer".into(),
                lifetime_seconds: 86_400,
                csr_der: csr_p256.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "renew-operator",
            pb::RenewOperatorRequest {
                csr_der: csr_p384.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "list-operators",
            pb::ListOperatorsRequest {}.encode_to_vec(),
        ),
        (
            "revoke-operator",
            pb::RevokeOperatorRequest {
                name: "vera".into(),
            }
            .encode_to_vec(),
        ),
        (
            "get-credentials",
            pb::GetCredentialsRequest {}.encode_to_vec(),
        ),
    ];
    for (i, (name, body)) in admin.into_iter().enumerate() {
        w(t, name, &tagged(i as u8, body));
    }
    let v6_query = pb::QueryAuditRequest {
        network: "2001:db8::/32".into(),
        ..Default::default()
    };
    w(t, "query-audit-v6", &tagged(4, v6_query.encode_to_vec()));

    // coordinator_config / agent_config: the example configs, a minimal one, env overrides.
    let read = |p: &str| std::fs::read_to_string(repo.join(p)).expect("example config");
    let t = "coordinator_config";
    let example = read("deploy/coordinator.example.toml");
    w(t, "example", example.as_bytes());
    let minimal = "version = 1\nstate_dir = \"/var/lib/cf\"\n[server]\nlisten = \"127.0.0.1:7443\"\n\
        [[issuer]]\nname = \"pebble\"\ndirectory = \"https://127.0.0.1:14000/dir\"\nallow_private_ips = true\n";
    w(t, "minimal", minimal.as_bytes());
    let env = format!(
        "{minimal}{ENV_MARKER}CERTFLEET_SERVER__LISTEN=0.0.0.0:1\nCERTFLEET_SERVER__IPS=[\"::1\"]\nCERTFLEET_ISSUANCE__KEY_TYPE=ecdsa-p384\n"
    );
    w(t, "minimal-env", env.as_bytes());
    let t = "agent_config";
    w(t, "example", read("deploy/agent.example.toml").as_bytes());
    let webroot = "version = 1\nstate_dir = \"/var/lib/cfa\"\nips = [\"192.0.2.10\", \"2001:db8::10\"]\n\
        [http01]\nmode = \"webroot\"\nwebroot = \"/var/www/html\"\n\
        [targets.web]\npreset = \"apache\"\ndir = \"/etc/apache2/certfleet\"\nverify = [\"192.0.2.10:8443\", \"[2001:db8::10]:443\"]\n\
        [targets.lb]\npreset = \"haproxy\"\ndir = \"/etc/haproxy/certs\"\nreload_signal = \"HUP\"\npid_file = \"/run/haproxy.pid\"\nreload = []\n";
    w(t, "webroot", webroot.as_bytes());
    let proxy = "version = 1\nstate_dir = \"/var/lib/cfa\"\nips = [\"203.0.113.10\"]\n\
        [http01]\nmode = \"proxy\"\nlisten = \"127.0.0.1:8402\"\nself_check = false\n\
        [targets.custom]\ncert = \"/etc/ssl/c.pem\"\nkey = \"/etc/ssl/k.pem\"\nchain = \"/etc/ssl/ch.pem\"\n\
        files.key = { owner = \"root\", group = \"ssl-cert\", mode = \"0640\" }\ncheck = []\nreload = [\"/bin/true\"]\nverify = []\n\
        [targets.cb]\npreset = \"certbot\"\ndir = \"/etc/letsencrypt\"\nname = \"example\"\n\
        [targets.lego]\npreset = \"lego\"\ndir = \"/var/lib/lego\"\n";
    w(t, "proxy", proxy.as_bytes());
    let env = format!(
        "{proxy}{ENV_MARKER}CERTFLEET_AGENT_HTTP01__PORT=8080\nCERTFLEET_AGENT_IPS=[\"198.51.100.7\"]\n"
    );
    w(t, "proxy-env", env.as_bytes());

    // agent_command
    let t = "agent_command";
    let command = |id: &str, cmd: Option<Cmd>| {
        pb::CoordinatorMessage {
            request_id: id.into(),
            cmd,
        }
        .encode_to_vec()
    };
    let present = pb::PresentChallenges {
        challenges: HOST_IPS[..2]
            .iter()
            .map(|ip| pb::Http01Challenge {
                identifier: ip.to_string(),
                token: LIVE_TOKEN.into(),
                key_authorization: LIVE_KEY_AUTHORIZATION.into(),
            })
            .collect(),
        tls_alpn01: Vec::new(),
    };
    w(
        t,
        "present",
        &command("r1-1", Some(Cmd::PresentChallenges(present))),
    );
    w(
        t,
        "clear",
        &command(
            "r1-2",
            Some(Cmd::ClearChallenges(pb::ClearChallenges {
                tokens: vec![LIVE_TOKEN.into()],
            })),
        ),
    );
    let create = |key_type: pb::KeyType| {
        Some(Cmd::CreateCsr(pb::CreateCsr {
            identifiers: HOST_IPS[..2].iter().map(|s| s.to_string()).collect(),
            key_type: key_type as i32,
            target: TARGET.into(),
            cert_id: "c-abcdefghijk23456".into(),
            key_group: String::new(),
        }))
    };
    w(
        t,
        "create-csr-p256",
        &command("r1-3", create(pb::KeyType::EcdsaP256)),
    );
    w(
        t,
        "create-csr-p384",
        &command("r1-4", create(pb::KeyType::EcdsaP384)),
    );
    let install = Some(Cmd::Install(pb::InstallCertificate {
        target: TARGET.into(),
        chain_pem: chain_pem.clone(),
    }));
    w(t, "install", &command("r1-5", install));
    w(t, "no-command", &command("r1-6", None));
    let discard = pb::DiscardPendingKeys {
        cert_id: "c-abcdefghijk23456".into(),
        keep_spki_sha256: vec![
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        ],
    };
    w(
        t,
        "discard-pending-keys",
        &command("r1-7", Some(Cmd::DiscardPendingKeys(discard))),
    );
    // Key groups: a CSR for the fixture's group, the fixture's envelope imported (it opens
    // with the agent's identity key), and the imported key sealed to another member.
    let f = certfleet_fuzz::envelope_fixture();
    let group_csr = pb::CreateCsr {
        identifiers: vec!["*.example.net".into(), "example.net".into()],
        key_type: pb::KeyType::EcdsaP256 as i32,
        target: TARGET.into(),
        cert_id: "c-abcdefghijk23456".into(),
        key_group: f.ctx.group.clone(),
    };
    w(
        t,
        "create-csr-key-group",
        &command("r1-8", Some(Cmd::CreateCsr(group_csr))),
    );
    let sealed =
        certfleet_shared::envelope::seal(&f.identity_spki, &f.ctx, &key_pem).expect("seal");
    let import = pb::ImportKey {
        key_group: f.ctx.group.clone(),
        cert_id: "c-abcdefghijk23456".into(),
        envelope: Some(pb::SealedKey {
            suite_id: sealed.suite_id.clone(),
            enc: sealed.enc.clone(),
            ciphertext: sealed.ciphertext.clone(),
            key_spki_sha256: sealed.key_sha256.clone(),
            sender_host_id: f.ctx.sender.clone(),
        }),
    };
    w(
        t,
        "import-key",
        &command("r1-9", Some(Cmd::ImportKey(import))),
    );
    let seal = pb::SealKey {
        key_group: f.ctx.group.clone(),
        key_spki_sha256: sealed.key_sha256.clone(),
        recipient_host_id: f.ctx.sender.clone(),
        recipient_identity_spki_der: f.identity_spki.clone(),
    };
    w(t, "seal-key", &command("r1-10", Some(Cmd::SealKey(seal))));

    // agent_http01
    let t = "agent_http01";
    let get = format!(
        "GET /.well-known/acme-challenge/{LIVE_TOKEN} HTTP/1.1\r\nHost: 192.0.2.10\r\nUser-Agent: acme\r\nAccept: */*\r\n\r\n"
    );
    w(t, "get-live", get.as_bytes());
    w(
        t,
        "head-live-http10",
        format!("HEAD /.well-known/acme-challenge/{LIVE_TOKEN} HTTP/1.0\r\n\r\n").as_bytes(),
    );
    w(
        t,
        "get-absolute-pipelined",
        format!(
            "GET http://[2001:db8::10]/.well-known/acme-challenge/{LIVE_TOKEN}?x=1 HTTP/1.1\r\nHost: [2001:db8::10]\r\n\r\n\
             GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    w(
        t,
        "post-chunked",
        b"POST /.well-known/acme-challenge/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );

    // x509
    let t = "x509";
    w(t, "cert.der", &leaf_der);
    w(t, "csr-p256.der", &csr_p256);
    w(t, "csr-ed25519.der", &csr_ed25519);
    w(t, "chain.pem", chain_pem.as_bytes());
    w(t, "key.pem", key_pem.as_bytes());

    // identifier
    for (name, text) in IDENTIFIER_SEEDS {
        w("identifier", name, text.as_bytes());
    }

    // coordinator_dns_answer
    for (name, bytes) in DNS_ANSWER_SEEDS {
        w("coordinator_dns_answer", name, bytes);
    }
    // envelope: sealed to the fixture's identity (opens), and the same with a bit flipped.
    let f = certfleet_fuzz::envelope_fixture();
    let sealed =
        certfleet_shared::envelope::seal(&f.identity_spki, &f.ctx, &key_pem).expect("seal");
    let good = certfleet_fuzz::envelope_input(&sealed);
    w("envelope", "sealed", &good);
    let mut flipped = good.clone();
    if let Some(last) = flipped.last_mut() {
        *last ^= 1;
    }
    w("envelope", "tampered", &flipped);
}

/// A CSR for `ips` (IP SANs, no subject) with a fresh key of `alg`.
fn csr(ips: &[IpAddr], alg: &'static SignatureAlgorithm) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    params.serialize_request(&key).expect("CSR").der().to_vec()
}

/// A leaf for `ips` signed by a fresh CA: (chain PEM, leaf DER, leaf key PEM).
fn chain(ips: &[IpAddr]) -> (String, Vec<u8>, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "fuzz seed CA");
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("leaf key");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    let leaf = leaf.signed_by(&key, &issuer).expect("leaf");
    (
        format!("{}{}", leaf.pem(), ca_cert.pem()),
        leaf.der().to_vec(),
        key.serialize_pem(),
    )
}
