//! [`SimFleet`]: many simulated agents in one process, for the scale benchmark
//! (`benches/scale.rs`) and the `certfleet-loadgen` binary.
//!
//! Each simulated agent is a real fleet member as the coordinator sees it: its own
//! identity (an ECDSA key + CSR enrolled through the real `Enrollment/Enroll` RPC with a
//! multi-use join token, [`enroll_all`]), its own mutual-TLS connection and
//! `AgentSession/Session` stream, a Hello with its own address (`10.64.0.0/10`, one per
//! agent, [`sim_ip`]) and its inventory, and answers to every command:
//! * `PresentChallenges` / `ClearChallenges` → `Done`: nothing is served — the benchmark runs
//!   pebble with `PEBBLE_VA_ALWAYS_VALID=1`, so no challenge is fetched;
//! * `CreateCsr` → a real CSR (fresh ECDSA P-256/P-384 key) for exactly the identifiers
//!   asked; the key is kept in memory only (nothing uses it: the certificate is never served);
//! * `InstallCertificate` → an `InstallReport` for the leaf's serial with
//!   `verify_disabled = true` — what a real agent whose target has `verify = []` reports —
//!   so the certificate ends `installed` (not `served`: no TLS listener presents it);
//!   the leaf goes into the Hello inventory of the next session, as a real agent's would;
//! * `DiscardPendingKeys` → `Done`; key-group commands → `key_group_not_allowed` (Hello
//!   lists no key groups).
//!
//! On a lost session an agent reconnects with the real agent's backoff
//! (`Backoff::RECONNECT`, jittered) to the next coordinator address, as agents do.
//! [`Stats`] counts live sessions, sessions established, installs and failures.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use certfleet_proto::v1::agent_message::Msg;
use certfleet_proto::v1::agent_session_client::AgentSessionClient;
use certfleet_proto::v1::enrollment_client::EnrollmentClient;
use certfleet_proto::v1::{
    self as pb, coordinator_message::Cmd, reply, AgentMessage, CoordinatorMessage, FailureCode,
};
use certfleet_proto::MAX_MESSAGE_BYTES;
use certfleet_shared::backoff::Backoff;
use certfleet_shared::x509::{parse_pem_chain, CertInfo};
use futures::StreamExt as _;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

/// The one install target every simulated agent has.
pub const TARGET: &str = "default";

/// Agent `index`'s address: `10.64.0.1` upward (10.64.0.0/10 holds 4 million).
pub fn sim_ip(index: usize) -> IpAddr {
    let n = 0x0a40_0000u32 + 1 + index as u32;
    IpAddr::V4(Ipv4Addr::from(n))
}

/// An enrolled simulated host: its id and the mTLS client config of its identity.
pub struct SimIdentity {
    pub index: usize,
    pub host_id: String,
    pub hostname: String,
    pub ip: IpAddr,
    tls: Arc<rustls::ClientConfig>,
}

/// Enrolls `n` hosts (`sim-00000`…) with `token` (made with `--uses n` or more), `parallel`
/// at a time, spread over `urls`. The identity key and CSR are each host's own.
pub async fn enroll_all(
    urls: &[String],
    ca_sha256: &str,
    token: &str,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<SimIdentity>> {
    anyhow::ensure!(!urls.is_empty(), "no coordinator URL");
    let pin = certfleet_shared::tls::parse_fingerprint(ca_sha256)?;
    let pinned = certfleet_shared::tls::pinned_client_config(pin)?;
    let mut channels = Vec::new();
    for url in urls {
        channels.push(
            certfleet_shared::transport::connect(url, pinned.clone())
                .await
                .with_context(|| format!("enrollment connection to {url}"))?,
        );
    }
    let mut out: Vec<SimIdentity> = futures::stream::iter(0..n)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            async move { enroll_one(channel, token, i).await }
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    out.sort_by_key(|s| s.index);
    Ok(out)
}

async fn enroll_one(
    channel: tonic::transport::Channel,
    token: &str,
    index: usize,
) -> anyhow::Result<SimIdentity> {
    let hostname = format!("sim-{index:05}");
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, hostname.clone());
    let csr = params.serialize_request(&key)?;
    let resp = EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.to_owned(),
            csr_der: csr.der().to_vec(),
            hostname: hostname.clone(),
            labels: Default::default(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("enroll {hostname}: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    let tls = certfleet_shared::tls::fleet_client_config(
        &resp.ca_cert_pem,
        &resp.client_cert_pem,
        &key.serialize_pem(),
    )?;
    Ok(SimIdentity {
        index,
        host_id: resp.host_id,
        hostname,
        ip: sim_ip(index),
        tls,
    })
}

/// Counters over the whole simulated fleet.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions open right now (Hello sent and the stream accepted).
    pub connected: AtomicUsize,
    /// Sessions established since the start.
    pub sessions: AtomicU64,
    /// Sessions that ended (closed or failed).
    pub session_ends: AtomicU64,
    /// Connections or session opens that failed before a session.
    pub connect_failures: AtomicU64,
    /// `InstallReport`s sent.
    pub installs: AtomicU64,
    /// Agents that hold an installed certificate.
    pub agents_installed: AtomicUsize,
    pub csrs: AtomicU64,
    pub commands: AtomicU64,
    /// Commands answered with a `Failure`.
    pub failures: AtomicU64,
}

impl Stats {
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
    pub fn session_ends(&self) -> u64 {
        self.session_ends.load(Ordering::Relaxed)
    }
    pub fn installs(&self) -> u64 {
        self.installs.load(Ordering::Relaxed)
    }
    pub fn agents_installed(&self) -> usize {
        self.agents_installed.load(Ordering::Relaxed)
    }
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }
}

/// The running simulated agents; dropping it ends every session.
pub struct SimFleet {
    pub stats: Arc<Stats>,
    tasks: JoinSet<()>,
}

impl SimFleet {
    /// Starts one task per identity; agent `i` connects first to `urls[i % len]`.
    pub fn start(identities: Vec<SimIdentity>, urls: &[String]) -> Self {
        let stats = Arc::new(Stats::default());
        let urls: Arc<[String]> = urls.into();
        let mut tasks = JoinSet::new();
        for id in identities {
            let agent = SimAgent {
                id,
                urls: urls.clone(),
                stats: stats.clone(),
                installed: Mutex::new(None),
            };
            tasks.spawn(async move { agent.run().await });
        }
        Self { stats, tasks }
    }

    /// Ends every session (the tasks are aborted; their connections close).
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

struct SimAgent {
    id: SimIdentity,
    urls: Arc<[String]>,
    stats: Arc<Stats>,
    /// What the target holds (the Hello inventory).
    installed: Mutex<Option<pb::InstalledCert>>,
}

impl SimAgent {
    async fn run(self) {
        let mut next = self.id.index % self.urls.len();
        let mut attempt = 0u32;
        loop {
            let url = &self.urls[next];
            let established = self.session(url).await;
            if established {
                attempt = 0;
            }
            next = (next + 1) % self.urls.len();
            tokio::time::sleep(Backoff::RECONNECT.delay_random(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    fn hello(&self) -> pb::Hello {
        pb::Hello {
            agent_version: concat!("loadgen-", env!("CARGO_PKG_VERSION")).to_owned(),
            ips: vec![self.id.ip.to_string()],
            targets: vec![TARGET.to_owned()],
            challenge_modes: vec!["http-01/standalone".to_owned()],
            inventory: lock(&self.installed).iter().cloned().collect(),
            requested_names: Vec::new(),
            key_groups: Vec::new(),
        }
    }

    /// One session; whether it was established.
    async fn session(&self, url: &str) -> bool {
        let channel = match certfleet_shared::transport::connect(url, self.id.tls.clone()).await {
            Ok(c) => c,
            Err(_) => {
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        let mut client = AgentSessionClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<AgentMessage>(8);
        if tx
            .send(AgentMessage {
                msg: Some(Msg::Hello(self.hello())),
            })
            .await
            .is_err()
        {
            return false;
        }
        let mut inbound = match client.session(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.fetch_add(1, Ordering::Relaxed);
        while let Ok(Some(msg)) = inbound.message().await {
            self.stats.commands.fetch_add(1, Ordering::Relaxed);
            let request_id = msg.request_id.clone();
            let result = self.handle(msg);
            if matches!(result, reply::Result::Failure(_)) {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
            let reply = AgentMessage {
                msg: Some(Msg::Reply(pb::Reply {
                    request_id,
                    result: Some(result),
                })),
            };
            if tx.send(reply).await.is_err() {
                break;
            }
        }
        self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        self.stats.session_ends.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn handle(&self, msg: CoordinatorMessage) -> reply::Result {
        let done = || reply::Result::Done(pb::Done::default());
        match msg.cmd {
            Some(Cmd::PresentChallenges(_)) | Some(Cmd::ClearChallenges(_)) => done(),
            Some(Cmd::DiscardPendingKeys(_)) => done(),
            Some(Cmd::CreateCsr(c)) => match make_csr(&c) {
                Ok(der) => {
                    self.stats.csrs.fetch_add(1, Ordering::Relaxed);
                    reply::Result::Csr(pb::Csr { csr_der: der })
                }
                Err(e) => failure(FailureCode::BadRequest, "bad_request", e),
            },
            Some(Cmd::Install(i)) => self.install(i),
            Some(Cmd::SealKey(_)) | Some(Cmd::ImportKey(_)) => failure(
                FailureCode::KeyGroupNotAllowed,
                "key_group_not_allowed",
                "a simulated agent takes part in no key group".to_owned(),
            ),
            None => failure(
                FailureCode::BadRequest,
                "bad_request",
                "empty command".to_owned(),
            ),
        }
    }

    fn install(&self, i: pb::InstallCertificate) -> reply::Result {
        if i.target != TARGET {
            return failure(
                FailureCode::UnknownTarget,
                "unknown_target",
                format!("this host has no target {:?}", i.target),
            );
        }
        let leaf = match parse_pem_chain(&i.chain_pem)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let first = c.first().ok_or_else(|| "empty chain".to_owned())?;
                CertInfo::from_der(first).map_err(|e| e.to_string())
            }) {
            Ok(l) => l,
            Err(e) => {
                return failure(
                    FailureCode::BadRequest,
                    "bad_request",
                    format!("chain: {e}"),
                )
            }
        };
        let mut identifiers: Vec<String> = leaf.ips.iter().map(|ip| ip.to_string()).collect();
        identifiers.extend(leaf.dns_names.iter().cloned());
        let previous = lock(&self.installed).replace(pb::InstalledCert {
            target: TARGET.to_owned(),
            serial: leaf.serial_hex.clone(),
            not_after_unix: leaf.not_after,
            identifiers,
        });
        if previous.is_none() {
            self.stats.agents_installed.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.installs.fetch_add(1, Ordering::Relaxed);
        reply::Result::Installed(pb::InstallReport {
            target: i.target,
            serial: leaf.serial_hex,
            not_after_unix: leaf.not_after,
            verify_disabled: true,
            ..Default::default()
        })
    }
}

fn make_csr(c: &pb::CreateCsr) -> Result<Vec<u8>, String> {
    let alg = match pb::KeyType::try_from(c.key_type) {
        Ok(pb::KeyType::Unspecified) | Ok(pb::KeyType::EcdsaP256) => &rcgen::PKCS_ECDSA_P256_SHA256,
        Ok(pb::KeyType::EcdsaP384) => &rcgen::PKCS_ECDSA_P384_SHA384,
        other => {
            return Err(format!(
                "the load generator makes ECDSA keys only, not {other:?}"
            ))
        }
    };
    let key = KeyPair::generate_for(alg).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for id in &c.identifiers {
        params.subject_alt_names.push(match id.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                id.clone()
                    .try_into()
                    .map_err(|e| format!("identifier {id:?}: {e}"))?,
            ),
        });
    }
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok(csr.der().to_vec())
}

fn failure(kind: FailureCode, code: &str, message: String) -> reply::Result {
    reply::Result::Failure(pb::Failure {
        message,
        code: code.to_owned(),
        kind: kind as i32,
        ..Default::default()
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A process's CPU time (user + system) and resident set, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_kib: u64,
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ: 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Reads `/proc/PID/stat` (utime + stime) and `/proc/PID/status` (VmRSS).
pub fn proc_sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<u64>()?)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    let ticks = tick(11)? + tick(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        cpu: Duration::from_secs_f64(ticks as f64 / USER_HZ),
        rss_kib,
    })
}

/// CPU use of `pid` over `window`, in percent of one core.
pub async fn cpu_percent_over(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let a = proc_sample(pid)?;
    tokio::time::sleep(window).await;
    let b = proc_sample(pid)?;
    Ok((b.cpu.saturating_sub(a.cpu)).as_secs_f64() / window.as_secs_f64() * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_shared::x509::CsrInfo;

    #[test]
    fn addresses_are_distinct_and_inside_10_64_0_0_10() {
        assert_eq!(sim_ip(0), "10.64.0.1".parse::<IpAddr>().unwrap());
        let all: std::collections::BTreeSet<IpAddr> = (0..20_000).map(sim_ip).collect();
        assert_eq!(all.len(), 20_000);
        let last = match sim_ip(19_999) {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => unreachable!(),
        };
        assert_eq!((last[0], last[1] & 0xc0), (10, 64));
    }

    #[test]
    fn csr_asks_for_exactly_the_identifiers_and_refuses_rsa() {
        let c = pb::CreateCsr {
            identifiers: vec!["10.64.0.7".into(), "sim-7.example.test".into()],
            key_type: pb::KeyType::EcdsaP384 as i32,
            ..Default::default()
        };
        let info = CsrInfo::from_der(&make_csr(&c).unwrap()).unwrap();
        assert_eq!(info.ips, vec!["10.64.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(info.dns_names, vec!["sim-7.example.test".to_owned()]);
        assert_eq!(info.subject_cn, None);
        let rsa = pb::CreateCsr {
            key_type: pb::KeyType::Rsa2048 as i32,
            ..c
        };
        assert!(make_csr(&rsa).unwrap_err().contains("ECDSA keys only"));
    }
}
