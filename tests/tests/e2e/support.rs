//! Shared setup and checks for the e2e tests.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Output;
use std::time::Duration;

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::pki::{self, normalize_serial};
use certfleet_tests::{require_root, Agent, CertRow, Coordinator, Pebble, PebbleOptions};
use rustls_pki_types::CertificateDer;

/// Upper bound for one host's issuance (pebble with NOSLEEP takes about a second).
pub const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a test watches for something that must *not* happen (an install, an order, a
/// renewal): absence can only be shown by waiting. Several issuance round trips long.
pub const QUIET_PERIOD: Duration = Duration::from_secs(3);

/// Root check + pebble + an initialised, serving coordinator.
pub async fn pebble_and_coordinator() -> (Pebble, Coordinator) {
    require_root().expect("root");
    certfleet_tests::install_crypto_provider();
    let pebble = Pebble::start().await.expect("start pebble");
    let coord = Coordinator::start(&pebble)
        .await
        .expect("start coordinator");
    (pebble, coord)
}

/// Like [`pebble_and_coordinator`], with options for both.
pub async fn pebble_and_coordinator_with(
    pebble_opts: PebbleOptions,
    coord_opts: CoordinatorOptions,
) -> (Pebble, Coordinator) {
    require_root().expect("root");
    certfleet_tests::install_crypto_provider();
    let pebble = Pebble::start_with(pebble_opts).await.expect("start pebble");
    let coord = Coordinator::start_with(&pebble, coord_opts)
        .await
        .expect("start coordinator");
    (pebble, coord)
}

/// The coordinator is still serving: its `serve` process runs and `hosts --json` answers.
/// Returns the hosts.
pub async fn assert_still_serving(coord: &mut Coordinator) -> Vec<certfleet_tests::HostRow> {
    if let Some(child) = coord.child() {
        if let Some(st) = child.try_wait().expect("try_wait coordinator") {
            panic!("the coordinator exited: {st}");
        }
    } else {
        panic!("the coordinator is not running");
    }
    coord.hosts().await.expect("hosts --json must still work")
}

/// The `; `-separated parts of a `last_error` that start with `ip:` (one per failed
/// identifier in "validation failed: IP: detail (type); IP: ..." messages).
pub fn error_parts_for<'a>(last_error: &'a str, ip: &IpAddr) -> Vec<&'a str> {
    let prefix = format!("{ip}: ");
    last_error
        .split("; ")
        .map(|p| p.trim_start_matches("validation failed: "))
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn ip_set(ips: &[String]) -> BTreeSet<IpAddr> {
    ips.iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .unwrap_or_else(|e| panic!("not an IP: {s:?}: {e}"))
        })
        .collect()
}

/// Everything that must hold for a host whose certificate is installed: leaf SANs are
/// exactly the host's IPs, the chain verifies to pebble's issuing root for each IP, the
/// key file matches the leaf and is 0600, the reload ran, and the coordinator's row
/// (serial, not_after) describes the installed leaf.
pub fn check_installed(agent: &Agent, row: &CertRow, root: &CertificateDer<'static>) {
    let name = agent.name();
    let want: BTreeSet<IpAddr> = agent.ips().into_iter().collect();

    let chain =
        certfleet_tests::tlsutil::certs_from_file(&agent.fullchain_path()).expect("read fullchain");
    assert!(
        chain.len() >= 2,
        "{name}: fullchain should hold leaf + intermediate, has {}",
        chain.len()
    );
    let leaf = pki::leaf_info(&chain[0]).expect("parse leaf");
    assert_eq!(
        leaf.ip_sans, want,
        "{name}: leaf IP SANs must be exactly the host's IPs"
    );
    assert!(
        leaf.dns_sans.is_empty(),
        "{name}: unexpected DNS SANs {:?}",
        leaf.dns_sans
    );
    assert!(
        leaf.other_sans.is_empty(),
        "{name}: unexpected SANs {:?}",
        leaf.other_sans
    );
    for ip in &want {
        pki::verify_chain_for_ip(&chain, root, *ip).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }

    // cert.pem is the leaf alone; chain.pem the rest.
    let cert =
        certfleet_tests::tlsutil::certs_from_file(&agent.cert_path()).expect("read cert.pem");
    assert_eq!(cert.len(), 1, "{name}: cert.pem should hold only the leaf");
    assert_eq!(
        cert[0], chain[0],
        "{name}: cert.pem differs from fullchain's leaf"
    );
    let intermediates =
        certfleet_tests::tlsutil::certs_from_file(&agent.chain_path()).expect("read chain.pem");
    assert_eq!(
        intermediates.as_slice(),
        &chain[1..],
        "{name}: chain.pem != fullchain minus leaf"
    );

    let key_pem = std::fs::read_to_string(agent.key_path()).expect("read key.pem");
    let key_spki = pki::key_spki_from_pem(&key_pem).expect("parse key.pem");
    assert_eq!(
        key_spki, leaf.spki_der,
        "{name}: key.pem does not match the leaf's public key"
    );
    let mode = pki::file_mode(&agent.key_path()).expect("stat key.pem");
    assert_eq!(mode, 0o600, "{name}: key.pem mode is {mode:o}, want 600");

    assert!(
        agent.reload_count() >= 1,
        "{name}: reload command did not run (reload.log empty)"
    );

    assert_eq!(row.state, "installed", "{name}: {row:?}");
    let serial = row
        .serial
        .as_deref()
        .unwrap_or_else(|| panic!("{name}: no serial in {row:?}"));
    assert!(
        serial
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{name}: serial {serial:?} should be lowercase hex without colons"
    );
    assert_eq!(
        normalize_serial(serial),
        leaf.serial_hex,
        "{name}: serial in certs --json != leaf serial"
    );
    let not_after = row
        .not_after
        .as_deref()
        .unwrap_or_else(|| panic!("{name}: no not_after in {row:?}"));
    assert_eq!(
        pki::rfc3339_unix(not_after).expect("not_after"),
        leaf.not_after_unix,
        "{name}: not_after in certs --json != leaf notAfter"
    );
    assert_eq!(
        ip_set(&row.identifiers),
        want,
        "{name}: cert row identifiers"
    );
    assert_eq!(row.target, "default", "{name}: cert row target");
}

/// Root check + acme2certifier + an initialised, serving coordinator whose only issuer it
/// is. Prints how long acme2certifier took to come up.
pub async fn a2c_and_coordinator_with(
    a2c_opts: certfleet_tests::acme2certifier::A2cOptions,
    coord_opts: CoordinatorOptions,
) -> (certfleet_tests::acme2certifier::A2c, Coordinator) {
    require_root().expect("root");
    certfleet_tests::install_crypto_provider();
    let a2c = certfleet_tests::acme2certifier::A2c::start(a2c_opts)
        .await
        .expect("start acme2certifier");
    eprintln!(
        "acme2certifier {} up in {:?}{}",
        a2c.directory_url(),
        a2c.startup(),
        a2c.venv_created_in()
            .map(|d| format!(" (venv created in {d:?})"))
            .unwrap_or_default()
    );
    let coord = Coordinator::start_with(&a2c, coord_opts)
        .await
        .expect("start coordinator");
    (a2c, coord)
}
