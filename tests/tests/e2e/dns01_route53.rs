//! The second story of DNS-01: an issuer that requires external account binding, the
//! Route53 provider (moto's mock of the AWS API), and a deploy hook on the host that
//! records what it was told — how teams use lego with Route53, EAB and `--renew-hook`
//! today, with the credentials on the coordinator only.
//!
//! moto serves the Route53 API but no DNS, so a small mirror in the test copies the TXT
//! records of the hosted zone into knot, where pebble (and the coordinator's propagation
//! check) look them up — what Route53's own nameservers do for a real zone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::dns::{KnotServer, Record, ZONE};
use certfleet_tests::fleet::{wait_all_served, Challenge, FleetHost, HostSpec};
use certfleet_tests::moto::MotoServer;
use certfleet_tests::netns::require_namespaces;
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{pki, tlsutil, Coordinator, Pebble, PebbleOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::wildcard::WILDCARD_POLICY;

const KID: &str = "kid-route53";
const SERVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Copies the TXT values at `fqdn` from moto's hosted zone into knot until `stop`.
fn mirror(
    moto: Arc<MotoServer>,
    zone_id: String,
    knot: Arc<KnotServer>,
    fqdn: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut shown: BTreeSet<String> = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(now) = moto.txt_values(&zone_id, &fqdn).await {
                let now: BTreeSet<String> = now.into_iter().collect();
                let gone: Vec<Record> = shown
                    .difference(&now)
                    .map(|v| Record::txt(&fqdn, v))
                    .collect();
                let new: Vec<Record> = now
                    .difference(&shown)
                    .map(|v| Record::txt(&fqdn, v))
                    .collect();
                let ok_gone = gone.is_empty() || knot.remove_records(&gone).await.is_ok();
                let ok_new = new.is_empty() || knot.add_records(&new).await.is_ok();
                if ok_gone && ok_new {
                    shown = now;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route53_with_eab_and_a_deploy_hook() {
    let Some(lan) = require_namespaces("dns01_route53::story") else {
        return;
    };
    certfleet_tests::install_crypto_provider();
    let knot = Arc::new(KnotServer::start().await.expect("knot"));
    let moto = Arc::new(MotoServer::start().await.expect("moto"));
    let zone_id = moto.create_hosted_zone(ZONE).await.expect("hosted zone");
    let fqdn = format!("_acme-challenge.{ZONE}");
    let stop = Arc::new(AtomicBool::new(false));
    let mirrored = mirror(
        moto.clone(),
        zone_id.clone(),
        knot.clone(),
        fqdn.clone(),
        stop.clone(),
    );

    let hmac: [u8; 32] = rand::random();
    let hmac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hmac);
    let pebble = Pebble::start_with(PebbleOptions {
        validation_ports: Some((80, 443)),
        dns_server: Some(knot.addr()),
        eab_required: true,
        eab_keys: BTreeMap::from([(KID.to_owned(), hmac.clone())]),
        ..Default::default()
    })
    .await
    .expect("pebble");
    let root = pebble.issuing_root_der().await.expect("root");
    let provider = format!(
        r#"
[[dns_provider]]
name = "aws"
zones = ["{ZONE}"]
kind = "route53"
endpoint = "{endpoint}"
hosted_zone_id = "{zone_id}"
check_nameservers = ["{check}"]
propagation_timeout = "20s"
poll_interval = "200ms"
"#,
        endpoint = moto.endpoint(),
        check = knot.addr(),
    );
    // Credentials from the usual AWS environment variables, as on a real coordinator.
    let env = BTreeMap::from([
        (
            "AWS_ACCESS_KEY_ID".to_owned(),
            "AKIDCERTFLEETTEST".to_owned(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_owned(),
            "certfleet-test-secret-access-key-0123456789".to_owned(),
        ),
    ]);
    let coord = Coordinator::start_with(
        &pebble,
        CoordinatorOptions {
            server_ips: vec![IpAddr::V4(lan.gateway_v4())],
            retry_base_secs: Some(2),
            eab_kid: Some(KID.to_owned()),
            eab_hmac_key: Some(hmac),
            env,
            extra_config: format!("{provider}{WILDCARD_POLICY}"),
            ..Default::default()
        },
    )
    .await
    .expect("coordinator");

    // A host whose target runs a hook that records its environment.
    let mut h = FleetHost::new(
        &lan,
        HostSpec::new("r53web", ServerKind::Nginx, Challenge::Webroot),
    )
    .await
    .expect("host");
    let out = h.agent.state_dir().join("hook.env");
    let hook = format!(
        "\"/bin/sh\", \"-c\", \"env > {}\", \"deploy-hook\"",
        out.display()
    );
    // The body ends inside [targets.default].
    let body = format!("{}deploy_hook = [{hook}]\n", h.config_body());
    let ips = h.ns.ips();
    h.agent.set_netns_ips(ips, &body).expect("agent config");
    h.enroll(&coord, &lan).await.expect("enroll");
    h.agent.start().expect("agent start");
    let rows = wait_all_served(&coord, &mut [&mut h], SERVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            h.agent.dump_logs();
            coord.dump_logs();
            eprintln!("--- moto log:\n{}", moto.logs());
            panic!("{e:#}")
        });
    let row = &rows[0];
    let wild = format!("*.{ZONE}");
    assert_eq!(
        row.validated_by.get(&wild).map(String::as_str),
        Some("dns-01"),
        "{row:?}"
    );
    let want = row.serial.as_deref().expect("serial");
    let chain =
        tlsutil::served_leaf_for_name(h.https_addrs()[0], &format!("api.{ZONE}"), &root, want)
            .await
            .expect("served under the wildcard");
    let serial = pki::leaf_info(&chain[0]).expect("leaf").serial_hex;

    // The hook saw what was installed, under certfleet's, certbot's and lego's names.
    let env: BTreeMap<String, String> = std::fs::read_to_string(&out)
        .expect("the hook ran")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let ids = env
        .get("CERTFLEET_IDENTIFIERS")
        .cloned()
        .unwrap_or_default();
    assert!(ids.contains(&wild) && ids.contains(ZONE), "{env:?}");
    assert_eq!(
        env.get("CERTFLEET_SERIAL")
            .map(|s| pki::normalize_serial(s)),
        Some(serial.clone()),
        "{env:?}"
    );
    assert!(env.contains_key("RENEWED_LINEAGE"), "{env:?}");
    assert!(env.contains_key("LEGO_CERT_PATH"), "{env:?}");
    // The coordinator's AWS credentials reach no host (the agent gets the test's own
    // environment, which has none of them).
    assert!(
        !env.contains_key("AWS_ACCESS_KEY_ID")
            && !env
                .values()
                .any(|v| v.contains("certfleet-test-secret-access-key")),
        "an AWS credential reached the host: {env:?}"
    );

    // Nothing left in the hosted zone (nor, through the mirror, in DNS).
    let left = moto.txt_values(&zone_id, &fqdn).await.expect("moto");
    assert!(left.is_empty(), "TXT left in Route53: {left:?}");
    stop.store(true, Ordering::Relaxed);
    let _ = mirrored.await;
    coord.audit_verify().await.expect("audit chain intact");
}
