//! DNS-01 by the coordinator along the other paths of issue #12, each through the whole
//! engine to a certificate installed and served on a namespace host, with no TXT record
//! left behind:
//! - acme2certifier (the second CA) validating `_acme-challenge` through our knot;
//! - the `exec` provider: a script the test writes updates knot with `knsupdate`, and its
//!   calls (action, FQDN, value) are checked;
//! - CNAME delegation: `_acme-challenge.example.test` is a CNAME into `validation.test`,
//!   the only provider writes there (`delegated_zones = ["example.test"]`), and its key
//!   cannot update `example.test`; pebble follows the CNAME through a recursive resolver
//!   (unbound) in front of knot.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certfleet_tests::acme2certifier::{A2c, A2cOptions};
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::dns::{KnotOptions, KnotServer, RData, Record, ZONE};
use certfleet_tests::fleet::{Challenge, FleetHost, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::resolver::Resolver;
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::{pki, tlsutil, CertRow, Coordinator};

use crate::wildcard::{rfc2136_provider, secret_file, world_on, World, WILDCARD_POLICY};

/// The zone the CNAMEs point into (the only one the coordinator may write to there).
const VALIDATION_ZONE: &str = "validation.test";
const SERVE_TIMEOUT: Duration = Duration::from_secs(120);

/// A name certificate into `default` and the wildcard + apex into `wild` (port 8443).
const NAME_AND_WILDCARD_POLICY: &str = r#"
[[policy]]
name = "dns"

[[policy.certificate]]
name = "www"
names = ["www.example.test"]
challenges = ["dns-01"]
targets = ["default"]

[[policy.certificate]]
name = "wildcard"
names = ["*.example.test", "example.test"]
challenges = ["dns-01"]
targets = ["wild"]
"#;

/// One nginx host, enrolled and running.
async fn nginx_host(w: &World, lan: &Lan, name: &str) -> FleetHost {
    w.enrolled_host(
        lan,
        HostSpec::new(name, ServerKind::Nginx, Challenge::Webroot),
    )
    .await
}

/// `row` was validated by DNS-01 for every identifier (row and audit), and each of `addrs`
/// serves its serial for every SNI in `snis`, the chain verifying for that name.
async fn check_dns01_served(
    w: &World,
    row: &CertRow,
    addrs: &[std::net::SocketAddr],
    snis: &[&str],
) {
    for id in &row.identifiers {
        assert_eq!(
            row.validated_by.get(id).map(String::as_str),
            Some("dns-01"),
            "{id}: {row:?}"
        );
    }
    let want = pki::normalize_serial(row.serial.as_deref().expect("serial"));
    for addr in addrs {
        for sni in snis {
            tlsutil::served_leaf_for_name(*addr, sni, &w.root, &want)
                .await
                .unwrap_or_else(|e| panic!("{addr} ({sni}): {e:#}"));
        }
    }
    w.assert_validated_by_dns01(&row.cert_id).await;
}

/// No TXT record at any of `names` in knot.
async fn assert_no_txt(knot: &KnotServer, names: &[String]) {
    for name in names {
        let left = knot.resolve(name, "TXT").await.expect("kdig");
        assert!(left.values.is_empty(), "TXT left at {name}: {left:?}");
    }
}

/// Waits until the host has `n` certificates served; returns them sorted by target.
async fn wait_n_served(w: &World, h: &mut FleetHost, n: usize) -> Vec<CertRow> {
    let mut rows = certfleet_tests::fleet::wait_all_served_n(&w.coord, &mut [h], n, SERVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            w.coord.dump_logs();
            eprintln!("--- knotd log:\n{}", w.knot.logs());
            panic!("{e:#}")
        });
    rows.sort_by(|a, b| a.target.cmp(&b.target));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_by_acme2certifier_for_a_name_and_a_wildcard() {
    let Some(lan) = require_namespaces("dns01_paths::acme2certifier") else {
        return;
    };
    certfleet_tests::install_crypto_provider();
    // acme2certifier asks `dns_server_list` on port 53 only (dnspython takes no port there).
    let knot = KnotServer::start_with(KnotOptions {
        port: Some(53),
        ..KnotOptions::default()
    })
    .await
    .expect("knot on port 53");
    let a2c = A2c::start(A2cOptions {
        dns_servers: vec![knot.addr().ip()],
        ..A2cOptions::default()
    })
    .await
    .expect("acme2certifier");
    assert!(
        a2c.config_text()
            .contains(&format!("dns_server_list: [\"{}\"]", knot.addr().ip())),
        "{}",
        a2c.config_text()
    );
    let secrets = tempfile::tempdir().expect("tempdir");
    let file = secret_file(secrets.path(), &knot.tsig_key().secret);
    let provider = rfc2136_provider(&knot, &file, None, "20s");
    let coord = Coordinator::start_with(
        &a2c,
        CoordinatorOptions {
            server_ips: vec![IpAddr::V4(lan.gateway_v4())],
            retry_base_secs: Some(2),
            extra_config: format!("{provider}{NAME_AND_WILDCARD_POLICY}"),
            ..Default::default()
        },
    )
    .await
    .expect("coordinator");
    let w = World {
        coord,
        root: a2c.issuing_ca_der().clone(),
        _ca: Box::new(a2c),
        knot,
        _secrets: secrets,
    };
    let mut h = FleetHost::new(
        &lan,
        HostSpec::new("a2cdns", ServerKind::Nginx, Challenge::Webroot),
    )
    .await
    .expect("host");
    let wild_web = h
        .add_second_target("wild", 8443)
        .await
        .expect("second target");
    h.enroll(&w.coord, &lan).await.expect("enroll");
    h.agent.start().expect("agent start");
    let rows = wait_n_served(&w, &mut h, 2).await;
    let (www, wild) = (&rows[0], &rows[1]);
    assert_eq!(
        (www.target.as_str(), wild.target.as_str()),
        ("default", "wild")
    );
    assert_eq!(www.identifiers, vec![format!("www.{ZONE}")], "{www:?}");
    assert_eq!(www.issuer, "a2c");
    check_dns01_served(&w, www, &h.https_addrs(), &[&format!("www.{ZONE}")]).await;
    check_dns01_served(
        &w,
        wild,
        &wild_web.https_addrs(),
        &[ZONE, &format!("api.{ZONE}")],
    )
    .await;
    assert_no_txt(
        &w.knot,
        &[
            format!("_acme-challenge.{ZONE}"),
            format!("_acme-challenge.www.{ZONE}"),
        ],
    )
    .await;
    w.coord.audit_verify().await.expect("audit chain intact");
}

/// The exec program: lego's interface (`present|cleanup FQDN. VALUE`), each call logged,
/// the change sent with `knsupdate` signed by the key in `key_file`.
fn exec_script(dir: &Path, knot: &KnotServer, key_file: &Path, log: &Path) -> PathBuf {
    let knsupdate = ["/usr/bin/knsupdate", "/bin/knsupdate"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("knsupdate installed (knot-dnsutils)");
    let script = dir.join("dns-hook");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -eu\n\
             printf '%s %s %s\\n' \"$1\" \"$2\" \"$3\" >> {log}\n\
             case \"$1\" in present) verb=add ;; cleanup) verb=delete ;; \
             *) echo \"unknown action $1\" >&2; exit 2 ;; esac\n\
             printf 'server {ip} {port}\\nzone {ZONE}.\\nupdate %s %s 60 TXT \"%s\"\\nsend\\n' \
             \"$verb\" \"$2\" \"$3\" | {knsupdate} -t 5 -k {key}\n",
            log = log.display(),
            ip = knot.addr().ip(),
            port = knot.addr().port(),
            key = key_file.display(),
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_by_the_exec_provider_through_the_engine() {
    let Some(lan) = require_namespaces("dns01_paths::exec") else {
        return;
    };
    let knot = KnotServer::start().await.expect("knot");
    let dns = knot.addr();
    let log = std::sync::OnceLock::new();
    let w = world_on(
        &lan,
        knot,
        dns,
        |knot, dir| {
            let key = knot.tsig_key();
            let key_file = dir.join("update.key");
            std::fs::write(
                &key_file,
                format!("{}:{}:{}\n", key.algorithm, key.name, key.secret),
            )
            .expect("key file");
            std::fs::set_permissions(
                &key_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod");
            let calls = dir.join("calls.log");
            let script = exec_script(dir, knot, &key_file, &calls);
            log.set(calls).expect("once");
            format!(
                "[[dns_provider]]\nname = \"hook\"\nzones = [\"{ZONE}\"]\nkind = \"exec\"\n\
                 command = [\"{}\"]\ntimeout = \"20s\"\ncheck_nameservers = [\"{}\"]\n\
                 propagation_timeout = \"20s\"\npoll_interval = \"200ms\"\n",
                script.display(),
                knot.addr()
            )
        },
        WILDCARD_POLICY,
    )
    .await;
    let log = log.get().expect("provider written").clone();
    let mut h = nginx_host(&w, &lan, "execdns").await;
    let row = w.wait_served(&mut h).await;
    check_dns01_served(&w, &row, &h.https_addrs(), &[ZONE, &format!("www.{ZONE}")]).await;
    let fqdn = format!("_acme-challenge.{ZONE}");
    assert_no_txt(&w.knot, std::slice::from_ref(&fqdn)).await;

    // The program was called as lego calls it: present each value (the wildcard's and the
    // apex's, at the one name), then cleanup exactly those.
    let text = std::fs::read_to_string(&log).expect("the program ran");
    let calls: Vec<(String, String, String)> = text
        .lines()
        .map(|l| {
            let mut p = l.split(' ');
            let mut next = || p.next().unwrap_or_default().to_owned();
            (next(), next(), next())
        })
        .collect();
    let values = |action: &str| -> Vec<String> {
        calls
            .iter()
            .filter(|(a, _, _)| a == action)
            .map(|(_, f, v)| {
                assert_eq!(f, &format!("{fqdn}."), "{text}");
                assert!(
                    v.len() == 43
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "a DNS-01 value is base64url of a SHA-256: {v:?}"
                );
                v.clone()
            })
            .collect()
    };
    let presented = values("present");
    let cleaned = values("cleanup");
    assert_eq!(presented.len(), 2, "one present per value: {text}");
    assert_eq!(
        presented.iter().collect::<BTreeSet<_>>(),
        cleaned.iter().collect::<BTreeSet<_>>(),
        "every value presented was cleaned up: {text}"
    );
    assert_eq!(calls.len(), 4, "{text}");
    w.coord.audit_verify().await.expect("audit chain intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_through_a_cname_into_a_validation_zone() {
    let Some(lan) = require_namespaces("dns01_paths::cname") else {
        return;
    };
    let acme = format!("_acme-challenge.{ZONE}");
    let target = format!("{ZONE}.{VALIDATION_ZONE}");
    // The key the coordinator gets may update validation.test only.
    let knot = KnotServer::start_with(KnotOptions {
        zones: vec![ZONE.to_owned(), VALIDATION_ZONE.to_owned()],
        records: vec![Record::new(&acme, RData::Cname(target.clone()))],
        update_zones: Some(vec![VALIDATION_ZONE.to_owned()]),
        ..KnotOptions::default()
    })
    .await
    .expect("knot");
    // knot answers the CNAME but does not chase it into its other zone; a recursive
    // resolver does, as a CA's resolver would.
    let resolver = Resolver::start(&[(ZONE, knot.addr()), (VALIDATION_ZONE, knot.addr())])
        .await
        .expect("unbound");
    let dns = resolver.addr();
    let w = world_on(
        &lan,
        knot,
        dns,
        |knot, dir| {
            let file = secret_file(dir, &knot.tsig_key().secret);
            rfc2136_provider(knot, &file, None, "20s").replace(
                &format!("zones = [\"{ZONE}\"]"),
                &format!("zones = [\"{VALIDATION_ZONE}\"]\ndelegated_zones = [\"{ZONE}\"]"),
            )
        },
        WILDCARD_POLICY,
    )
    .await;
    // The coordinator's key cannot write to example.test.
    let err = w
        .knot
        .add_records(&[Record::txt(&format!("probe.{ZONE}"), "x")])
        .await
        .expect_err("the key must not update example.test");
    assert!(format!("{err:#}").contains("refused or failed"), "{err:#}");

    let mut h = nginx_host(&w, &lan, "cnamedns").await;
    // Watch the validation zone while the order runs: the values appear at the target.
    let seen = std::sync::Mutex::new(BTreeSet::new());
    let watch = async {
        loop {
            if let Ok(l) = w.knot.resolve(&target, "TXT").await {
                seen.lock().expect("lock").extend(l.values);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let row = tokio::select! {
        row = w.wait_served(&mut h) => row,
        () = watch => unreachable!("the watch never ends"),
    };
    check_dns01_served(&w, &row, &h.https_addrs(), &[ZONE, &format!("www.{ZONE}")]).await;
    let seen = seen.into_inner().expect("lock");
    assert_eq!(
        seen.len(),
        2,
        "the wildcard's and the apex's values were written at {target}: {seen:?}"
    );
    // Nothing left at the target, nothing ever written at the delegated name, the CNAME
    // untouched.
    assert_no_txt(&w.knot, &[target.clone(), acme.clone()]).await;
    let cname = w.knot.resolve(&acme, "CNAME").await.expect("kdig");
    assert_eq!(cname.values, vec![format!("{target}.")]);
    // The coordinator says where it wrote.
    let logs = w.coord.logs();
    assert!(
        logs.contains(&target),
        "the coordinator's log names the record it wrote at {target}"
    );
    drop(resolver);
    w.coord.audit_verify().await.expect("audit chain intact");
}
