//! The setup the namespace (LAN) tests share: pebble validating on the hosts' own ports, a
//! coordinator the namespaces reach through the LAN's gateway, and — for DNS names —
//! knot, which pebble resolves through ([`World`]). Also waiting for a host's certificate
//! rows and dumping every log when that fails.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::dns::KnotServer;
use certfleet_tests::fleet::{FleetHost, HostSpec};
use certfleet_tests::netns::Lan;
use certfleet_tests::{CertRow, Coordinator, Pebble, PebbleOptions};
use rustls_pki_types::CertificateDer;

/// How long [`World::wait_rows`] waits.
pub(crate) const SERVE_TIMEOUT: Duration = Duration::from_secs(120);

/// pebble started with `pebble_opts`, and a coordinator started with `coord_opts` and
/// listening on the LAN's gateway address (so agents in the namespaces reach it).
pub(crate) async fn lan_pebble_and_coordinator(
    lan: &Lan,
    pebble_opts: PebbleOptions,
    coord_opts: CoordinatorOptions,
) -> (Pebble, Coordinator) {
    certfleet_tests::install_crypto_provider();
    let pebble = Pebble::start_with(pebble_opts).await.expect("pebble");
    let coord = Coordinator::start_with(
        &pebble,
        CoordinatorOptions {
            server_ips: vec![IpAddr::V4(lan.gateway_v4())],
            ..coord_opts
        },
    )
    .await
    .expect("coordinator");
    (pebble, coord)
}

/// pebble validating on ports 80 and 443 of the hosts, the usual pair.
pub(crate) fn pebble_on_80_443() -> PebbleOptions {
    PebbleOptions {
        validation_ports: Some((80, 443)),
        ..Default::default()
    }
}

/// knot, pebble validating on the hosts' ports 80/443 and resolving through knot, and a
/// coordinator reachable from the namespaces (retries after 2 s) whose config ends with
/// what `extra_config` returns.
pub(crate) struct World {
    pub(crate) coord: Coordinator,
    /// The CA's issuing root (what served chains are checked against).
    pub(crate) root: CertificateDer<'static>,
    pub(crate) knot: KnotServer,
    /// The ACME server (pebble, or acme2certifier), kept running.
    pub(crate) _ca: Box<dyn std::any::Any + Send + Sync>,
    /// Where `extra_config` may write secret files (removed with the world).
    pub(crate) _secrets: tempfile::TempDir,
}

impl World {
    /// `extra_config(knot, secrets dir)` is appended to the coordinator's config
    /// (`[[dns_provider]]` tables, `[[policy]]` tables).
    pub(crate) async fn start(
        lan: &Lan,
        extra_config: impl FnOnce(&KnotServer, &Path) -> String,
    ) -> World {
        certfleet_tests::install_crypto_provider();
        let knot = KnotServer::start().await.expect("knot");
        let dns = knot.addr();
        Self::start_on(lan, knot, dns, extra_config).await
    }

    /// [`World::start`] on a `knot` the caller started, pebble resolving through `ca_dns`
    /// (knot, or a resolver in front of it).
    pub(crate) async fn start_on(
        lan: &Lan,
        knot: KnotServer,
        ca_dns: std::net::SocketAddr,
        extra_config: impl FnOnce(&KnotServer, &Path) -> String,
    ) -> World {
        certfleet_tests::install_crypto_provider();
        let secrets = tempfile::tempdir().expect("tempdir");
        let extra_config = extra_config(&knot, secrets.path());
        let (pebble, coord) = lan_pebble_and_coordinator(
            lan,
            PebbleOptions {
                dns_server: Some(ca_dns),
                ..pebble_on_80_443()
            },
            CoordinatorOptions {
                retry_base_secs: Some(2),
                extra_config,
                ..Default::default()
            },
        )
        .await;
        let root = pebble.issuing_root_der().await.expect("root");
        World {
            coord,
            root,
            knot,
            _ca: Box::new(pebble),
            _secrets: secrets,
        }
    }

    /// A namespace host made from `spec` (webroot HTTP-01 unless the spec says otherwise),
    /// enrolled, its agent running.
    pub(crate) async fn enrolled_host(&self, lan: &Lan, spec: HostSpec) -> FleetHost {
        let mut h = FleetHost::new(lan, spec).await.expect("host");
        h.enroll(&self.coord, lan).await.expect("enroll");
        h.agent.start().expect("agent start");
        h
    }

    /// Panics unless the audit has a `challenge_validated` of type dns-01 for `cert_id`.
    pub(crate) async fn assert_validated_by_dns01(&self, cert_id: &str) {
        let records: Vec<serde_json::Value> = self
            .coord
            .audit_records()
            .await
            .expect("audit")
            .into_iter()
            .filter(|r| r["cert_id"] == cert_id)
            .collect();
        assert!(
            records
                .iter()
                .any(|r| r["kind"] == "challenge_validated" && r["details"]["type"] == "dns-01"),
            "{records:#?}"
        );
    }

    /// Prints the hosts' agent and web server logs, the coordinator's and knot's.
    pub(crate) fn dump(&self, hosts: &[&FleetHost]) {
        for h in hosts {
            h.agent.dump_logs();
            eprintln!("--- {} error log:\n{}", h.spec.name, h.web.error_log());
            eprintln!("--- {} access log:\n{}", h.spec.name, h.web.access_log());
        }
        self.coord.dump_logs();
        eprintln!("--- knotd log:\n{}", self.knot.logs());
    }

    /// Waits for `n` rows of `h` for which `want` holds; panics with every row of the host
    /// (and the logs) after [`SERVE_TIMEOUT`] or when its agent exits.
    pub(crate) async fn wait_rows(
        &self,
        h: &mut FleetHost,
        n: usize,
        what: &str,
        want: impl Fn(&CertRow) -> bool,
    ) -> Vec<CertRow> {
        let id = h.agent.host_id().expect("enrolled").to_owned();
        let deadline = Instant::now() + SERVE_TIMEOUT;
        loop {
            if let Some(child) = h.agent.child() {
                if let Some(st) = child.try_wait().expect("try_wait") {
                    self.dump(&[&*h]);
                    panic!("agent {} exited: {st}", h.spec.name);
                }
            }
            let rows: Vec<CertRow> = self
                .coord
                .certs()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.host_id == id)
                .collect();
            let good: Vec<CertRow> = rows.iter().filter(|r| want(r)).cloned().collect();
            if good.len() >= n {
                return good;
            }
            if Instant::now() > deadline {
                self.dump(&[&*h]);
                panic!(
                    "{}: no {n} rows {what} after {SERVE_TIMEOUT:?}: {rows:#?}",
                    h.spec.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `h` has a served certificate; returns its row.
    pub(crate) async fn wait_served(&self, h: &mut FleetHost) -> CertRow {
        self.wait_rows(h, 1, "served", served).await.remove(0)
    }
}

pub(crate) fn served(r: &CertRow) -> bool {
    r.state == "served"
}
