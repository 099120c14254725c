//! Ports and per-host addresses on this machine.
//!
//! Each simulated host gets its own IPv4 loopback address (`127.X.Y.Z`, X in 100..=250;
//! Linux routes all of 127/8 to `lo` without configuration) and its own IPv6 address
//! `fdcf:PPPP:PPPP::N/128` added to `lo` with `nodad`. The /48-ish prefix is random per
//! test process, N counts up. [`Ipv6Guard`] removes the address on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng as _;

/// Ports handed out by [`free_port`]: below Linux's default ephemeral range
/// (32768–60999), so an outgoing connection of another test cannot take the port in the
/// moment between this check and the process under test binding it (seen in CI: a
/// TLS-ALPN-01 listener refused with "address in use").
const PICK_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A TCP port that was free on 127.0.0.1 a moment ago: a random one outside the
/// ephemeral range that binds now (then closed), else one the kernel picks.
pub fn free_port() -> anyhow::Result<u16> {
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(PICK_PORTS);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let l = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Hold all listeners until every port is picked so they are distinct.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<_, _>>()
        .context("binding 127.0.0.1:0")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A random IPv4 loopback address whose `port` can be bound right now.
pub fn random_loopback_v4(port: u16) -> anyhow::Result<Ipv4Addr> {
    random_loopback_v4_ports(&[port])
}

/// A random IPv4 loopback address on which every one of `ports` can be bound right now.
pub fn random_loopback_v4_ports(ports: &[u16]) -> anyhow::Result<Ipv4Addr> {
    let mut rng = rand::rng();
    for _ in 0..64 {
        let ip = Ipv4Addr::new(
            127,
            rng.random_range(100..=250),
            rng.random_range(0..=255),
            rng.random_range(1..=254),
        );
        if ports.iter().all(|p| TcpListener::bind((ip, *p)).is_ok()) {
            return Ok(ip);
        }
    }
    anyhow::bail!("no free 127.X.Y.Z address with ports {ports:?} after 64 tries")
}

fn run_prefix() -> (u16, u16) {
    static PREFIX: OnceLock<(u16, u16)> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        let mut rng = rand::rng();
        (rng.random(), rng.random())
    })
}

static NEXT_V6: AtomicU16 = AtomicU16::new(0);

/// An IPv6 address added to `lo` for the lifetime of the guard.
#[derive(Debug)]
pub struct Ipv6Guard {
    addr: Ipv6Addr,
}

impl Ipv6Guard {
    /// Adds a fresh `fdcf:PPPP:PPPP::N/128` to `lo` and waits until `port` on it can be
    /// bound (so the caller can hand it to a process straight away).
    pub fn add(port: u16) -> anyhow::Result<Self> {
        Self::add_ports(&[port])
    }

    /// Like [`Self::add`], waiting until every one of `ports` can be bound.
    pub fn add_ports(ports: &[u16]) -> anyhow::Result<Self> {
        let (a, b) = run_prefix();
        for _ in 0..32 {
            let n = NEXT_V6.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            // Mix in the pid so two processes sharing a prefix (unlikely) still differ.
            let host = (std::process::id() as u16).wrapping_mul(31) ^ n.rotate_left(7);
            let addr = Ipv6Addr::new(0xfdcf, a, b, 0, 0, 0, host, n);
            let cidr = format!("{addr}/128");
            let out = Command::new("ip")
                .args(["-6", "addr", "add", &cidr, "dev", "lo", "nodad"])
                .output()
                .context("running `ip -6 addr add` (is iproute2 installed?)")?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                if err.contains("exists") {
                    continue;
                }
                anyhow::bail!("ip -6 addr add {cidr} dev lo nodad failed: {}", err.trim());
            }
            let guard = Self { addr };
            for port in ports {
                guard.wait_bindable(*port, Duration::from_secs(3))?;
            }
            return Ok(guard);
        }
        anyhow::bail!("could not add a free IPv6 address to lo")
    }

    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    fn wait_bindable(&self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            match TcpListener::bind(SocketAddr::new(IpAddr::V6(self.addr), port)) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() >= timeout => {
                    return Err(e).with_context(|| {
                        format!(
                            "[{}]:{port} not bindable {timeout:?} after adding it",
                            self.addr
                        )
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Ipv6Guard {
    fn drop(&mut self) {
        let cidr = format!("{}/128", self.addr);
        let _ = Command::new("ip")
            .args(["-6", "addr", "del", &cidr, "dev", "lo"])
            .output();
    }
}

/// The addresses of one simulated host: an IPv4 loopback address and an IPv6 address on
/// `lo` (removed on drop).
#[derive(Debug)]
pub struct HostAddrs {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Guard,
}

impl HostAddrs {
    /// Fresh addresses on which `port` (pebble's httpPort) is free.
    pub fn allocate(port: u16) -> anyhow::Result<Self> {
        Self::allocate_ports(&[port])
    }

    /// Fresh addresses on which every one of `ports` is free.
    pub fn allocate_ports(ports: &[u16]) -> anyhow::Result<Self> {
        let v4 = random_loopback_v4_ports(ports)?;
        let v6 = Ipv6Guard::add_ports(ports)?;
        Ok(Self { v4, v6 })
    }

    /// IPv4 first, then IPv6.
    pub fn ips(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.v4), IpAddr::V6(self.v6.addr())]
    }
}

/// Waits until a TCP connect to `addr` succeeds.
pub async fn wait_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    crate::wait_for(
        &format!("TCP {addr} to accept"),
        timeout,
        Duration::from_millis(25),
        || async move { Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())) },
    )
    .await
}

/// Whether something accepts TCP connections on `addr` right now: `false` when the
/// connection is refused (nothing bound) or does not complete within `timeout`.
pub async fn tcp_accepts(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
