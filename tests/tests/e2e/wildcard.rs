//! Wildcards by DNS-01, done by the coordinator alone: a real knot server takes the
//! coordinator's TSIG-signed updates (`[[dns_provider]] kind = "rfc2136"`), pebble resolves
//! `_acme-challenge` through it, and the namespace hosts (nginx on one, apache on the
//! other) only make their keys, install and serve. No host holds a DNS credential.

use std::path::Path;
use std::time::{Duration, Instant};

use certfleet_tests::dns::{KnotServer, ZONE};
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{pki, tlsutil};

use crate::world::SERVE_TIMEOUT;

pub(crate) use crate::world::World;

/// The `[[dns_provider]]` for knot's zones, its TSIG secret in a 0600 file; propagation
/// checked on `check` (default: knot itself).
pub(crate) fn rfc2136_provider(
    knot: &KnotServer,
    secret_file: &Path,
    check: Option<std::net::SocketAddr>,
    propagation_timeout: &str,
) -> String {
    let key = knot.tsig_key();
    format!(
        r#"
[[dns_provider]]
name = "knot"
zones = ["{ZONE}"]
kind = "rfc2136"
server = "{addr}"
tsig_key_name = "{name}"
tsig_algorithm = "{alg}"
tsig_secret_file = "{file}"
check_nameservers = ["{check}"]
propagation_timeout = "{propagation_timeout}"
poll_interval = "200ms"
"#,
        addr = knot.addr(),
        check = check.unwrap_or(knot.addr()),
        name = key.name,
        alg = key.algorithm,
        file = secret_file.display(),
    )
}

/// Writes `secret` as a 0600 file in `dir`.
pub(crate) fn secret_file(dir: &Path, secret: &str) -> std::path::PathBuf {
    let file = dir.join("tsig.secret");
    std::fs::write(&file, format!("{secret}\n")).expect("secret");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    file
}

/// The shared [`World`] whose coordinator config ends with the providers
/// `providers(knot, secrets dir)` returns and `policy`.
pub(crate) async fn world_with(
    lan: &Lan,
    providers: impl FnOnce(&KnotServer, &Path) -> String,
    policy: &str,
) -> World {
    World::start(lan, |knot, dir| format!("{}{policy}", providers(knot, dir))).await
}

/// [`world_with`] on a `knot` the caller started, pebble resolving through `ca_dns` (knot,
/// or a resolver in front of it).
pub(crate) async fn world_on(
    lan: &Lan,
    knot: KnotServer,
    ca_dns: std::net::SocketAddr,
    providers: impl FnOnce(&KnotServer, &Path) -> String,
    policy: &str,
) -> World {
    World::start_on(lan, knot, ca_dns, |knot, dir| {
        format!("{}{policy}", providers(knot, dir))
    })
    .await
}

async fn world(lan: &Lan, policy: &str) -> World {
    world_with(
        lan,
        |knot, dir| {
            let file = secret_file(dir, &knot.tsig_key().secret);
            rfc2136_provider(knot, &file, None, "20s")
        },
        policy,
    )
    .await
}

pub(crate) const WILDCARD_POLICY: &str = r#"
[[policy]]
name = "wild"

[[policy.certificate]]
name = "wildcard"
names = ["*.example.test", "example.test"]
challenges = ["dns-01"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_apex_by_rfc2136_are_served_by_nginx_and_apache_and_renewed() {
    let Some(lan) = require_namespaces("wildcard::rfc2136") else {
        return;
    };
    let w = world(&lan, WILDCARD_POLICY).await;
    let mut hosts = Vec::new();
    for (name, kind) in [
        ("wnginx", ServerKind::Nginx),
        ("wapache", ServerKind::Apache),
    ] {
        let mut h = FleetHost::new(&lan, HostSpec::new(name, kind, Challenge::Webroot))
            .await
            .expect("host");
        h.enroll(&w.coord, &lan).await.expect("enroll");
        h.agent.start().expect("agent start");
        hosts.push(h);
    }
    let wild = format!("*.{ZONE}");
    for h in &mut hosts {
        let row = w.wait_served(h).await;
        let mut ids = row.identifiers.clone();
        ids.sort();
        assert_eq!(ids, vec![wild.clone(), ZONE.to_owned()], "{row:?}");
        for id in [&wild, &ZONE.to_owned()] {
            assert_eq!(
                row.validated_by.get(id).map(String::as_str),
                Some("dns-01"),
                "{row:?}"
            );
        }
        // Served for the apex and for a name under the wildcard, on every address.
        let want = pki::normalize_serial(row.serial.as_deref().expect("serial"));
        for addr in h.https_addrs() {
            for sni in [ZONE.to_owned(), format!("www.{ZONE}")] {
                tlsutil::served_leaf_for_name(addr, &sni, &w.root, &want)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:#}", h.spec.name));
            }
        }
        // The audit says DNS-01 validated it, and names no address.
        w.assert_validated_by_dns01(&row.cert_id).await;
    }
    // A renewal of the wildcard goes the same way: a new certificate, served, by DNS-01.
    let first = w.wait_served(&mut hosts[0]).await;
    let out = w.coord.renew(&[&first.cert_id]).await.expect("certs renew");
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let renewed = loop {
        let row = w.coord.cert(&first.cert_id).await.expect("cert");
        if row.state == "served" && row.serial != first.serial {
            break row;
        }
        if Instant::now() > deadline {
            w.coord.dump_logs();
            panic!("the wildcard was not renewed and served: {row:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every authorization the renewal validated was by DNS-01. Both hosts order the same
    // two names under one account, so pebble may hand the renewal an authorization the
    // other host's order validated moments ago (already valid: nothing to validate, so
    // the record names no challenge for it) — a CA may do that, as Let's Encrypt does.
    assert!(
        !renewed.validated_by.is_empty() && renewed.validated_by.values().all(|k| k == "dns-01"),
        "{renewed:?}"
    );
    if !renewed.validated_by.contains_key(&wild) {
        eprintln!("the CA reused a valid authorization for {wild} in the renewal");
    }
    tlsutil::served_leaf_for_name(
        hosts[0].https_addrs()[0],
        &format!("www.{ZONE}"),
        &w.root,
        renewed.serial.as_deref().expect("serial"),
    )
    .await
    .expect("served after renewal");
    // Every TXT record written was removed.
    let left = w
        .knot
        .resolve(&format!("_acme-challenge.{ZONE}"), "TXT")
        .await
        .expect("kdig");
    assert!(left.values.is_empty(), "TXT records left behind: {left:?}");
    // No DNS credential reached a host, and none was logged: the TSIG secret is in no
    // file of the hosts' agents, nor in any log.
    let needles = vec![(
        "the TSIG secret".to_owned(),
        w.knot.tsig_key().secret.clone().into_bytes(),
    )];
    let mut logs = vec![("coordinator logs".to_owned(), w.coord.logs().into_bytes())];
    for h in &hosts {
        logs.push((
            format!("{} agent logs", h.spec.name),
            h.agent.logs().into_bytes(),
        ));
        let dir = h.agent.state_dir().parent().unwrap_or(h.agent.state_dir());
        let (found, files) = pki::scan_for_needles(dir, &logs, &needles).expect("scan");
        assert!(files > 0, "scanned nothing under {}", dir.display());
        assert!(
            found.is_empty(),
            "DNS credential outside the coordinator:\n{}",
            found.join("\n")
        );
    }
    w.coord.audit_verify().await.expect("audit chain intact");
}
