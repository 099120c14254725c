//! Many hosts on one machine: a [`Lan`] (a Linux bridge with its own subnet) and
//! [`NsHost`]s (network namespaces plugged into it by a veth pair), per the namespace
//! recipe in `shared/TESTING.md`.
//!
//! This module owns every kernel object it creates — bridge, veth pairs, namespaces — and
//! the processes left running inside its namespaces. Guards remove them on drop, also
//! when a test panics:
//! - dropping an [`NsHost`] kills (SIGKILL) whatever still runs in its namespace, then
//!   deletes its veth and the namespace;
//! - dropping the [`Lan`] does the same for every host still alive, then deletes the bridge.
//!
//! ## Addresses and names
//! Each `Lan` gets a subnet index `k` (1..=254) that no address on this machine uses yet,
//! chosen under a machine-wide file lock so that concurrently running test processes never
//! pick the same one: the bridge (the root namespace, the "gateway") is `10.99.k.1/24` and
//! `fd99:k::1/64`; host `i` (1, 2, ...) starts with `10.99.k.(10+i)` and `fd99:k::(10+i)`
//! (`k` and `10+i` written with decimal digits in both families, so `10.99.7.11` pairs with
//! `fd99:7::11`). IPv6 addresses are added with `nodad`, so they are usable at once.
//!
//! Kernel object names carry the creating process's pid and a per-process counter
//! (`tag` = `{pid:06x}{counter:02x}`): bridge `cfb<tag>`, namespaces `cfn<tag>h<i>`, host
//! side of the veth `cfv<tag><i:02x>` (the namespace side is `eth0`). Objects whose pid no
//! longer runs (a test process that was SIGKILLed) are removed by the next [`Lan::new`].
//!
//! Processes run "on a host" through [`NsHost::command`] / [`NsHost::std_command`]
//! (`ip netns exec <ns> <program>`). The root namespace reaches every host over the
//! bridge; a host reaches the root namespace at [`Lan::gateway_v4`] / [`Lan::gateway_v6`]
//! (its default route), so anything a host must talk to (pebble, the coordinator) has to
//! listen on those addresses or on the wildcard — `127.0.0.1` inside a namespace is the
//! namespace's own loopback.
//!
//! ## Skipping
//! Tests that need namespaces start with
//! ```ignore
//! let Some(lan) = certfleet_tests::netns::require_namespaces("my_test") else { return };
//! ```
//! When namespaces cannot be created (not root, no `ip`, no CAP_SYS_ADMIN/CAP_NET_ADMIN),
//! this prints `SKIPPED: my_test: network namespaces unavailable: <reason>` straight to the
//! process's stderr (past the test harness's output capture) and returns `None`. With
//! `CERTFLEET_REQUIRE_NETNS=1` (set by `tests/run.sh`) it panics instead, so CI can never
//! skip silently.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Set to `1` to turn "namespaces unavailable" into a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "CERTFLEET_REQUIRE_NETNS";

/// Machine-wide lock serialising subnet choice and stale-object cleanup between test
/// processes.
const LOCK_FILE: &str = "certfleet-netns.lock";

/// Host indices map to `.(10+i)`, so at most this many hosts per LAN.
const MAX_HOSTS: u32 = 244;

/// How long one `ip` invocation may take.
const IP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a [`Lan`] could not be created, when the machine (not the code) is the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsError {
    /// Network namespaces cannot be used here (not root, no `ip`, no capability, ...).
    NamespacesUnavailable(String),
}

impl fmt::Display for NetnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NamespacesUnavailable(reason) => {
                write!(f, "network namespaces unavailable: {reason}")
            }
        }
    }
}

impl std::error::Error for NetnsError {}

/// Whether `CERTFLEET_REQUIRE_NETNS=1` is set.
pub fn namespaces_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Whether this process can create network namespaces and bridges: root, `ip` present, and
/// a probe namespace and a probe bridge can be created and deleted. Checked once per
/// process; `Err` carries a human-readable reason.
pub fn available() -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("not running as root".to_owned());
    }
    match StdCommand::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(format!("`ip -V` failed: {}", stderr_of(&out))),
        Err(e) => return Err(format!("cannot run `ip` (install iproute2): {e}")),
    }
    let tag = new_tag();
    let ns = format!("cfp{tag}");
    ip(&["netns", "add", &ns]).map_err(|e| format!("`ip netns add` failed: {e:#}"))?;
    let _ = ip(&["netns", "del", &ns]);
    let br = format!("cfq{tag}");
    ip(&["link", "add", "name", &br, "type", "bridge"])
        .map_err(|e| format!("creating a bridge failed: {e:#}"))?;
    let _ = ip(&["link", "del", &br]);
    Ok(())
}

/// For tests: a fresh [`Lan`], or `None` after printing
/// `SKIPPED: <test_name>: network namespaces unavailable: <reason>` to stderr when this
/// machine cannot create namespaces.
///
/// # Panics
/// When namespaces are unavailable and `CERTFLEET_REQUIRE_NETNS=1` is set, and when
/// creating the LAN fails for any other reason (that is a bug or a broken machine, not a
/// reason to skip).
pub fn require_namespaces(test_name: &str) -> Option<Lan> {
    match Lan::new() {
        Ok(lan) => Some(lan),
        Err(e) => match e.downcast_ref::<NetnsError>() {
            Some(NetnsError::NamespacesUnavailable(reason)) => {
                if namespaces_required() {
                    panic!(
                        "{test_name}: network namespaces unavailable ({reason}) and \
                         {REQUIRE_ENV}=1 forbids skipping"
                    );
                }
                report_skip(&format!(
                    "SKIPPED: {test_name}: network namespaces unavailable: {reason}"
                ));
                None
            }
            None => panic!("{test_name}: creating the test LAN failed: {e:#}"),
        },
    }
}

/// Prints `line` where a person sees it even when the test passes: libtest captures
/// `eprintln!` of passing tests, but not writes to the `std::io::stderr()` handle.
fn report_skip(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Every namespace and link on this machine whose name carries `tag` (see
/// [`Lan::tag`]). Empty once a LAN and its hosts are dropped.
pub fn leftovers(tag: &str) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for ns in list_netns()? {
        if ns.contains(tag) {
            found.push(format!("netns {ns}"));
        }
    }
    for link in list_links()? {
        if link.contains(tag) {
            found.push(format!("link {link}"));
        }
    }
    Ok(found)
}

static NEXT_TAG: AtomicU32 = AtomicU32::new(0);

/// `{pid:06x}{counter:02x}`: unique among live processes (pid_max ≤ 2^22 fits 6 hex digits).
fn new_tag() -> String {
    let n = NEXT_TAG.fetch_add(1, Ordering::Relaxed) & 0xff;
    format!("{:06x}{n:02x}", std::process::id())
}

#[derive(Debug)]
struct HostRecord {
    ns: String,
    veth: String,
}

#[derive(Debug)]
struct LanShared {
    tag: String,
    bridge: String,
    k: u8,
    next_host: AtomicU32,
    /// Hosts not yet torn down (by their own drop), for the LAN's drop.
    hosts: Mutex<Vec<HostRecord>>,
}

impl LanShared {
    fn v4(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.k, n)
    }

    fn v6(&self, n: u8) -> Ipv6Addr {
        lan_v6(self.k, n)
    }

    fn forget_host(&self, ns: &str) {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.retain(|h| h.ns != ns);
        }
    }
}

/// `fd99:<k>::<n>` with `k` and `n` written in decimal digits.
fn lan_v6(k: u8, n: u8) -> Ipv6Addr {
    // Decimal digits are valid hex digits: "fd99:7::11" parses as 0x0007 / 0x0011.
    let hextet = |d: u8| u16::from_str_radix(&d.to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0xfd99, hextet(k), 0, 0, 0, 0, 0, hextet(n))
}

/// One test's LAN: a bridge in the root namespace with `10.99.k.1/24` and `fd99:k::1/64`.
/// Dropping it tears down every host still attached, then the bridge.
#[derive(Debug)]
pub struct Lan {
    shared: Arc<LanShared>,
}

impl Lan {
    /// Creates the bridge on a subnet no address on this machine uses yet. Fails with
    /// [`NetnsError::NamespacesUnavailable`] (inside the `anyhow::Error`) when this machine
    /// cannot do namespaces at all; see [`require_namespaces`] for tests.
    pub fn new() -> anyhow::Result<Self> {
        available().map_err(NetnsError::NamespacesUnavailable)?;
        let _lock = lock_machine()?;
        reap_stale();
        for _ in 0..8 {
            let tag = new_tag();
            let bridge = format!("cfb{tag}");
            let k = pick_subnet()?;
            match ip(&[
                "link",
                "add",
                "name",
                &bridge,
                "type",
                "bridge",
                "forward_delay",
                "0",
            ]) {
                Ok(_) => {}
                // A stale bridge of an earlier process with our pid: take the next tag.
                Err(e) if format!("{e:#}").contains("exists") => continue,
                Err(e) => return Err(e.context(format!("creating bridge {bridge}"))),
            }
            let lan = Self {
                shared: Arc::new(LanShared {
                    tag,
                    bridge,
                    k,
                    next_host: AtomicU32::new(1),
                    hosts: Mutex::new(Vec::new()),
                }),
            };
            // On error `lan` drops here and deletes the bridge.
            lan.configure_bridge()?;
            return Ok(lan);
        }
        anyhow::bail!("could not create a uniquely named bridge after 8 tries")
    }

    fn configure_bridge(&self) -> anyhow::Result<()> {
        let br = &self.shared.bridge;
        // IPv6 must be on for the bridge even where the machine's default disables it.
        let sysctl = format!("/proc/sys/net/ipv6/conf/{br}/disable_ipv6");
        std::fs::write(&sysctl, "0").with_context(|| format!("writing {sysctl}"))?;
        // A fixed (locally administered) MAC: otherwise the bridge takes the lowest MAC of
        // its ports and changes it as hosts are added, leaving hosts that already resolved
        // the gateway with a stale neighbour entry — their next connection to the gateway
        // went unanswered for many seconds (seen as enrollment timeouts in the benchmark).
        ip(&[
            "link",
            "set",
            br,
            "address",
            &format!("02:cf:99:00:{:02x}:01", self.shared.k),
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway_v4()),
            "dev",
            br,
        ])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", self.gateway_v6()),
            "dev",
            br,
            "nodad",
        ])?;
        ip(&["link", "set", br, "up"])?;
        Ok(())
    }

    /// `{pid:06x}{counter:02x}`: part of every kernel object name of this LAN.
    pub fn tag(&self) -> &str {
        &self.shared.tag
    }

    pub fn bridge_name(&self) -> &str {
        &self.shared.bridge
    }

    /// The `k` in `10.99.k.0/24` / `fd99:k::/64`.
    pub fn subnet_index(&self) -> u8 {
        self.shared.k
    }

    /// `10.99.k.1`: the root namespace's address on the LAN.
    pub fn gateway_v4(&self) -> Ipv4Addr {
        self.shared.v4(1)
    }

    /// `fd99:k::1`: the root namespace's address on the LAN.
    pub fn gateway_v6(&self) -> Ipv6Addr {
        self.shared.v6(1)
    }

    /// `10.99.k.n`, e.g. a spare address for an IP-change test (hosts use `10+i`).
    pub fn v4(&self, n: u8) -> Ipv4Addr {
        self.shared.v4(n)
    }

    /// `fd99:k::n` (decimal digits), the IPv6 twin of [`Lan::v4`].
    pub fn v6(&self, n: u8) -> Ipv6Addr {
        self.shared.v6(n)
    }

    /// A new namespace `cfn<tag>h<i>` plugged into the bridge, with `10.99.k.(10+i)/24`
    /// and `fd99:k::(10+i)/64` on its `eth0`, `lo` up, default routes via the gateway.
    /// `name` is only a label (for logs and work dirs).
    pub fn add_host(&self, name: &str) -> anyhow::Result<NsHost> {
        let i = self.shared.next_host.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(i <= MAX_HOSTS, "at most {MAX_HOSTS} hosts per LAN");
        let n = u8::try_from(10 + i).context("host index out of range")?;
        let tag = &self.shared.tag;
        let host = NsHost {
            shared: Arc::clone(&self.shared),
            name: name.to_owned(),
            index: i,
            ns: format!("cfn{tag}h{i}"),
            veth: format!("cfv{tag}{i:02x}"),
            ips: vec![IpAddr::V4(self.shared.v4(n)), IpAddr::V6(self.shared.v6(n))],
        };
        ip(&["netns", "add", &host.ns]).with_context(|| format!("adding namespace {}", host.ns))?;
        // From here on, `host`'s drop cleans up whatever was created.
        self.shared
            .hosts
            .lock()
            .map_err(|_| anyhow::anyhow!("LAN host list poisoned"))?
            .push(HostRecord {
                ns: host.ns.clone(),
                veth: host.veth.clone(),
            });
        host.plug_in(&self.shared.bridge)
            .with_context(|| format!("setting up host {name} ({})", host.ns))?;
        Ok(host)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let hosts = match self.shared.hosts.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for h in hosts {
            teardown_host(&h.ns, &h.veth);
        }
        if let Err(e) = ip(&["link", "del", &self.shared.bridge]) {
            eprintln!(
                "[harness] deleting bridge {} failed: {e:#}",
                self.shared.bridge
            );
        }
    }
}

/// One simulated host: a network namespace on a [`Lan`]. Dropping it kills what still
/// runs in the namespace and deletes the namespace and its veth.
#[derive(Debug)]
pub struct NsHost {
    shared: Arc<LanShared>,
    name: String,
    index: u32,
    ns: String,
    veth: String,
    ips: Vec<IpAddr>,
}

impl NsHost {
    fn plug_in(&self, bridge: &str) -> anyhow::Result<()> {
        let ns = self.ns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &self.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["link", "set", &self.veth, "master", bridge])?;
        ip(&["link", "set", &self.veth, "up"])?;
        // IPv6 on (whatever the machine's default), and keep addresses if eth0 is ever set
        // down inside the namespace. /proc/sys/net is per network namespace of the reader.
        let out = self.run_blocking(
            "sh",
            &[
                "-c",
                "echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 && \
                 echo 1 > /proc/sys/net/ipv6/conf/eth0/keep_addr_on_down",
            ],
        )?;
        anyhow::ensure!(
            out.status.success(),
            "ipv6 sysctls in {ns}: {}",
            stderr_of(&out)
        );
        for addr in &self.ips {
            self.ip_addr("add", *addr)?;
        }
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        let gw4 = self.shared.v4(1).to_string();
        let gw6 = self.shared.v6(1).to_string();
        ip(&["-n", ns, "route", "add", "default", "via", &gw4])?;
        ip(&["-n", ns, "-6", "route", "add", "default", "via", &gw6])?;
        self.wait_forwarding(Duration::from_secs(5))
    }

    /// Waits until the bridge forwards on this host's port (sysfs state 3 = forwarding).
    fn wait_forwarding(&self, timeout: Duration) -> anyhow::Result<()> {
        let path = format!("/sys/class/net/{}/brport/state", self.veth);
        let start = Instant::now();
        loop {
            let state = std::fs::read_to_string(&path).unwrap_or_default();
            if state.trim() == "3" {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "bridge port {} not forwarding after {timeout:?} (state {:?})",
                self.veth,
                state.trim()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ip_addr(&self, op: &str, addr: IpAddr) -> anyhow::Result<()> {
        match addr {
            IpAddr::V4(a) => ip(&[
                "-n",
                &self.ns,
                "addr",
                op,
                &format!("{a}/24"),
                "dev",
                "eth0",
            ])?,
            IpAddr::V6(a) => {
                let cidr = format!("{a}/64");
                let mut args = vec![
                    "-n",
                    self.ns.as_str(),
                    "-6",
                    "addr",
                    op,
                    &cidr,
                    "dev",
                    "eth0",
                ];
                if op == "add" {
                    args.push("nodad");
                }
                ip(&args)?
            }
        };
        Ok(())
    }

    /// The label given to [`Lan::add_host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `i` in `cfn<tag>h<i>` (1 for the first host of a LAN).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The network namespace's name (for `ip netns exec`).
    pub fn ns_name(&self) -> &str {
        &self.ns
    }

    /// The root-namespace end of this host's veth pair.
    pub fn veth_name(&self) -> &str {
        &self.veth
    }

    /// The host's current addresses: IPv4 first, then IPv6 (as set by this guard).
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips = self.ips.clone();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips
    }

    /// The first IPv4 address, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
    }

    /// The first IPv6 address, if any.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
    }

    /// `ip netns exec <ns> <program>` as a tokio command: the program runs on this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.std_command(program))
    }

    /// Like [`NsHost::command`], as a `std::process::Command` (what
    /// [`crate::ChildGuard::spawn`] takes).
    pub fn std_command(&self, program: impl AsRef<std::ffi::OsStr>) -> StdCommand {
        ns_std_command(&self.ns, program)
    }

    /// Runs `program args...` on this host to completion (timeout 60 s).
    pub async fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args);
        crate::process::run_output(&mut cmd, Duration::from_secs(60)).await
    }

    fn run_blocking(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.std_command(program);
        cmd.args(args);
        cmd.output()
            .with_context(|| format!("running {program} in {}", self.ns))
    }

    /// Partitions the host: its cable is unplugged (the bridge side of its veth goes
    /// down). The host keeps its addresses and routes; traffic to and from it times out.
    pub fn link_down(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.veth, "down"]).map(|_| ())
    }

    /// Ends a [`NsHost::link_down`] partition; returns once the bridge forwards again.
    pub fn link_up(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.veth, "up"])?;
        // Forget neighbour entries that failed during the partition.
        for addr in &self.ips {
            let _ = ip(&[
                "neigh",
                "flush",
                "to",
                &addr.to_string(),
                "dev",
                &self.shared.bridge,
            ]);
        }
        self.wait_forwarding(Duration::from_secs(5))
    }

    /// Whether the host is partitioned (bridge side of its veth down).
    pub fn is_link_down(&self) -> bool {
        std::fs::read_to_string(format!("/sys/class/net/{}/operstate", self.veth))
            .map(|s| s.trim() == "down")
            .unwrap_or(true)
    }

    /// Replaces the host's addresses with `ips` (addresses already present stay, so
    /// sockets bound to them survive). Use [`Lan::v4`] / [`Lan::v6`] for new ones.
    pub fn set_ips(&mut self, ips: &[IpAddr]) -> anyhow::Result<()> {
        let want: BTreeSet<IpAddr> = ips.iter().copied().collect();
        let have: BTreeSet<IpAddr> = self.ips.iter().copied().collect();
        for gone in have.difference(&want) {
            self.remove_ip(*gone)?;
        }
        for new in ips {
            if !self.ips.contains(new) {
                self.add_ip(*new)?;
            }
        }
        Ok(())
    }

    /// Adds an address (`/24` for IPv4, `/64 nodad` for IPv6) to the host's `eth0`.
    pub fn add_ip(&mut self, addr: IpAddr) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.ips.contains(&addr),
            "{} already has {addr}",
            self.name
        );
        self.ip_addr("add", addr)?;
        self.ips.push(addr);
        Ok(())
    }

    /// Removes an address from the host's `eth0`.
    pub fn remove_ip(&mut self, addr: IpAddr) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.ips.contains(&addr),
            "{} does not have {addr}",
            self.name
        );
        self.ip_addr("del", addr)?;
        self.ips.retain(|a| *a != addr);
        Ok(())
    }

    /// PIDs of the processes running in this namespace (`ip netns pids`).
    pub fn pids(&self) -> anyhow::Result<Vec<i32>> {
        ns_pids(&self.ns)
    }

    /// SIGKILLs every process in this namespace and waits (up to 5 s) until none is left.
    pub fn kill_all(&self) -> anyhow::Result<()> {
        kill_ns_processes(&self.ns)
    }
}

impl Drop for NsHost {
    fn drop(&mut self) {
        teardown_host(&self.ns, &self.veth);
        self.shared.forget_host(&self.ns);
    }
}

/// `ip netns exec <ns> <program>`.
pub fn ns_std_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> StdCommand {
    let mut cmd = StdCommand::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Kills what runs in `ns`, deletes the veth (both ends at once) and the namespace.
/// Idempotent; errors are reported, not raised (runs in drops).
fn teardown_host(ns: &str, veth: &str) {
    if !list_netns()
        .map(|l| l.iter().any(|n| n == ns))
        .unwrap_or(true)
    {
        return;
    }
    if let Err(e) = kill_ns_processes(ns) {
        eprintln!("[harness] killing processes in {ns}: {e:#}");
    }
    let _ = ip(&["link", "del", veth]);
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("[harness] deleting namespace {ns} failed: {e:#}");
    }
}

fn ns_pids(ns: &str) -> anyhow::Result<Vec<i32>> {
    let out = ip(&["netns", "pids", ns])?;
    out.split_whitespace()
        .map(|p| p.parse::<i32>().with_context(|| format!("bad pid {p:?}")))
        .collect()
}

fn kill_ns_processes(ns: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        // Zombies (killed, not yet reaped by their ChildGuard) are not listed.
        let pids = ns_pids(ns)?;
        if pids.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(5),
            "processes {pids:?} in {ns} survive SIGKILL"
        );
        for pid in pids {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => anyhow::bail!("kill -9 {pid} (in {ns}): {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ip ARGS` (with a timeout); returns stdout or fails with stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let mut child = StdCommand::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running `ip` (is iproute2 installed?)")?;
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > IP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "`ip {}` did not finish within {IP_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        stderr_of(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// Names from `ip netns list` (which may append ` (id: N)`).
fn list_netns() -> anyhow::Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Interface names in the root namespace (without the `@peer` suffix).
fn list_links() -> anyhow::Result<Vec<String>> {
    Ok(ip(&["-br", "link"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// Holds the machine-wide lock (released on drop).
struct MachineLock {
    _lock: nix::fcntl::Flock<File>,
}

fn lock_dir() -> PathBuf {
    let run = Path::new("/run");
    if run.is_dir() {
        run.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn lock_machine() -> anyhow::Result<MachineLock> {
    let path = lock_dir().join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("flock {}: {e}", path.display()))?;
    Ok(MachineLock { _lock: lock })
}

/// A subnet index `k` with no `10.99.k.*` / `fd99:k:*` address anywhere in the root
/// namespace, starting from a point derived from pid and counter. Call under the lock.
fn pick_subnet() -> anyhow::Result<u8> {
    let addrs = ip(&["-o", "addr", "show"])?;
    let mut used = BTreeSet::new();
    for word in addrs.split_whitespace() {
        let addr = word.split('/').next().unwrap_or(word);
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if a.octets()[..2] == [10, 99] => {
                used.insert(a.octets()[2]);
            }
            Ok(IpAddr::V6(a)) if a.segments()[0] == 0xfd99 => {
                if let Ok(k) = format!("{:x}", a.segments()[1]).parse::<u8>() {
                    used.insert(k);
                }
            }
            _ => {}
        }
    }
    let seed = std::process::id()
        .wrapping_mul(7)
        .wrapping_add(NEXT_TAG.load(Ordering::Relaxed).wrapping_mul(37));
    // 1..=254; 0 is left to hand-run recipes (TESTING.md uses 10.99.0.0/24).
    (0..254u32)
        .map(|off| ((seed.wrapping_add(off)) % 254 + 1) as u8)
        .find(|k| !used.contains(k))
        .context("every 10.99.k.0/24 subnet (k = 1..=254) is in use")
}

/// The pid encoded in one of our object names (`cf` + kind letter + 6 hex pid + 2 hex
/// counter + suffix), if `name` is one.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("cf")?;
    let mut chars = rest.chars();
    let kind = chars.next()?;
    if !matches!(kind, 'b' | 'v' | 'n' | 'p' | 'q') {
        return None;
    }
    let hex = rest.get(1..9)?;
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    i32::from_str_radix(&hex[..6], 16).ok()
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and links left by test processes that no longer run (killed before
/// their guards could clean up). Best effort; call under the lock.
fn reap_stale() {
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| pid != me && !pid_alive(pid));
    for ns in list_netns().unwrap_or_default() {
        if stale(&ns) {
            eprintln!("[harness] removing stale namespace {ns}");
            let _ = kill_ns_processes(&ns);
            let _ = ip(&["netns", "del", &ns]);
        }
    }
    for link in list_links().unwrap_or_default() {
        if stale(&link) {
            eprintln!("[harness] removing stale link {link}");
            let _ = ip(&["link", "del", &link]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_addresses_use_decimal_digits() {
        assert_eq!(lan_v6(7, 11).to_string(), "fd99:7::11");
        assert_eq!(lan_v6(254, 1).to_string(), "fd99:254::1");
    }

    #[test]
    fn owner_pid_parses_our_names_only() {
        assert_eq!(owner_pid("cfb0012ab03"), Some(0x0012ab));
        assert_eq!(owner_pid("cfn0012ab03h2"), Some(0x0012ab));
        assert_eq!(owner_pid("cfv0012ab0301"), Some(0x0012ab));
        assert_eq!(owner_pid("cfx0012ab03"), None);
        assert_eq!(owner_pid("eth0"), None);
        assert_eq!(owner_pid("cfbzz"), None);
    }

    #[test]
    fn names_fit_ifnamsiz() {
        let tag = new_tag();
        assert!(format!("cfb{tag}").len() <= 15);
        assert!(format!("cfv{tag}{MAX_HOSTS:02x}").len() <= 15);
    }
}
