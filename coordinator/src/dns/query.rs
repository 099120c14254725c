//! DNS on the wire for the providers: one question to one server (UDP, TCP when the answer
//! is truncated), one signed update over TCP, and the lookups built on them — TXT values
//! at a nameserver, `_acme-challenge` CNAMEs, a zone's nameservers through the system
//! resolver (`/etc/resolv.conf`).
//!
//! Messages are encoded and decoded by `hickory-proto`; this module only moves bytes, with
//! a deadline on every exchange and the reply's id checked. Nothing here spawns a task.

use super::error::CallError;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

/// Bound of one question (per try).
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest UDP answer we ask for (EDNS, the DNS Flag Day 2020 size).
const UDP_PAYLOAD: u16 = 1232;
/// How many CNAMEs are followed from `_acme-challenge.NAME`.
pub(crate) const MAX_CNAME_HOPS: usize = 8;

/// `name` as an absolute hickory name (`a.example.net` → `a.example.net.`).
pub(crate) fn wire_name(name: &str) -> Result<Name, CallError> {
    let mut n = Name::from_ascii(name)
        .map_err(|e| CallError::config(format!("{name:?} is not a DNS name: {e}")))?;
    n.set_fqdn(true);
    Ok(n)
}

/// A name as text, lower case, without the trailing dot.
pub(crate) fn text_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Asks `server` one question. `recurse` sets RD (for a recursive resolver); without it the
/// server must answer from its own zones.
pub(crate) async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    recurse: bool,
    timeout: Duration,
) -> Result<Message, CallError> {
    let mut msg = Message::new();
    msg.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(recurse)
        .add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD).set_version(0);
    msg.set_edns(edns);
    let bytes = msg
        .to_vec()
        .map_err(|e| CallError::transient(format!("cannot encode the question: {e}")))?;
    let reply = match tokio::time::timeout(timeout, udp_exchange(server, &bytes, msg.id())).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(CallError::timeout(format!(
                "{server} did not answer {} {rtype} within {timeout:?}",
                text_name(name)
            )))
        }
    };
    let reply = if reply.truncated() {
        let raw = tcp_exchange(server, &bytes, timeout).await?;
        decode_reply(server, &raw, msg.id())?
    } else {
        reply
    };
    Ok(reply)
}

async fn udp_exchange(server: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, CallError> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let io = |e: std::io::Error| CallError::transient(format!("UDP to {server}: {e}"));
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    sock.send(bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        // A stray datagram (late answer to someone else) is skipped, not trusted.
        if let Ok(reply) = decode_reply(server, &buf[..n], id) {
            return Ok(reply);
        }
    }
}

fn decode_reply(server: SocketAddr, raw: &[u8], id: u16) -> Result<Message, CallError> {
    let reply = Message::from_vec(raw)
        .map_err(|e| CallError::transient(format!("{server} sent an unreadable answer: {e}")))?;
    if reply.id() != id || reply.message_type() != MessageType::Response {
        return Err(CallError::transient(format!(
            "{server} answered another question (id {} for {id})",
            reply.id()
        )));
    }
    Ok(reply)
}

/// Sends one length-prefixed message over TCP and returns the raw reply.
pub(crate) async fn tcp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let run = async {
        let io = |what: &str, e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                CallError::timeout(format!(
                    "{server} refused the TCP connection (is the DNS server running there?)"
                ))
            } else {
                CallError::transient(format!("TCP {what} {server}: {e}"))
            }
        };
        let len = u16::try_from(bytes.len())
            .map_err(|_| CallError::transient("message larger than 65535 bytes"))?;
        let mut stream = TcpStream::connect(server)
            .await
            .map_err(|e| io("connect to", e))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream
            .write_all(&framed)
            .await
            .map_err(|e| io("write to", e))?;
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| io("read from", e))?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut reply)
            .await
            .map_err(|e| io("read from", e))?;
        Ok(reply)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(CallError::timeout(format!(
            "{server} did not answer over TCP within {timeout:?}"
        ))),
    }
}

/// The TXT values `server` serves at `name` (each record's strings joined), asked without
/// recursion: the answer must come from the server's own zone data.
pub(crate) async fn txt_values(server: SocketAddr, name: &Name) -> Result<Vec<String>, CallError> {
    let reply = query(server, name, RecordType::TXT, false, QUERY_TIMEOUT).await?;
    match reply.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        other => {
            return Err(CallError::transient(format!(
                "{server} answered {other} for {} TXT",
                text_name(name)
            )))
        }
    }
    Ok(txt_answers(&reply, name))
}

/// The TXT values at `name` in an answer (each record's strings joined).
pub(crate) fn txt_answers(reply: &Message, name: &Name) -> Vec<String> {
    reply
        .answers()
        .iter()
        .filter(|r| r.name() == name)
        .filter_map(|r| match r.data() {
            RData::TXT(txt) => Some(
                txt.txt_data()
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

/// The CNAME target of `name` in an answer.
pub(crate) fn cname_answer(reply: &Message, name: &Name) -> Option<Name> {
    reply.answers().iter().find_map(|r| match r.data() {
        RData::CNAME(target) if r.name() == name => Some(target.0.clone()),
        _ => None,
    })
}

/// The CNAME target of `name` as the first answering server of `servers` sees it (`None`:
/// no CNAME there). `recurse`: the servers are recursive resolvers.
pub(crate) async fn cname_target(
    servers: &[SocketAddr],
    name: &Name,
    recurse: bool,
) -> Result<Option<Name>, CallError> {
    let reply = ask_first(servers, name, RecordType::CNAME, recurse).await?;
    Ok(cname_answer(&reply, name))
}

/// Asks each server in turn until one answers (NOERROR or NXDOMAIN).
async fn ask_first(
    servers: &[SocketAddr],
    name: &Name,
    rtype: RecordType,
    recurse: bool,
) -> Result<Message, CallError> {
    let mut last = CallError::config("no nameserver to ask (empty /etc/resolv.conf?)");
    for server in servers {
        match query(*server, name, rtype, recurse, QUERY_TIMEOUT).await {
            Ok(r)
                if matches!(
                    r.response_code(),
                    ResponseCode::NoError | ResponseCode::NXDomain
                ) =>
            {
                return Ok(r)
            }
            Ok(r) => {
                last = CallError::transient(format!(
                    "{server} answered {} for {} {rtype}",
                    r.response_code(),
                    text_name(name)
                ))
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The system resolver's nameservers (`nameserver` lines of `/etc/resolv.conf`, port 53).
pub(crate) fn system_nameservers() -> Result<Vec<SocketAddr>, CallError> {
    let path = "/etc/resolv.conf";
    let text = std::fs::read_to_string(path).map_err(|e| {
        CallError::config(format!(
            "cannot read {path} ({e}) to find the system resolver; set check_nameservers"
        ))
    })?;
    let servers = parse_resolv_conf(&text);
    if servers.is_empty() {
        return Err(CallError::config(format!(
            "{path} names no nameserver; set check_nameservers"
        )));
    }
    Ok(servers)
}

pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("nameserver")).then(|| parts.next())?
        })
        .filter_map(|ip| {
            // A link-local IPv6 address may carry a zone (`fe80::1%eth0`); skip those.
            ip.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The authoritative nameservers of `zone`: its NS records and their addresses, through
/// the system resolver, port 53.
pub(crate) async fn zone_nameservers(zone: &str) -> Result<Vec<SocketAddr>, CallError> {
    let resolvers = system_nameservers()?;
    let zone_name = wire_name(zone)?;
    let reply = ask_first(&resolvers, &zone_name, RecordType::NS, true).await?;
    let hosts: Vec<Name> = reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::NS(ns) => Some(ns.0.clone()),
            _ => None,
        })
        .collect();
    if hosts.is_empty() {
        return Err(CallError::config(format!(
            "the system resolver has no NS records for {zone}; set check_nameservers"
        )));
    }
    let mut addrs = Vec::new();
    for host in &hosts {
        for rtype in [RecordType::A, RecordType::AAAA] {
            let Ok(reply) = ask_first(&resolvers, host, rtype, true).await else {
                continue;
            };
            addrs.extend(reply.answers().iter().filter_map(|r| match r.data() {
                RData::A(a) => Some(SocketAddr::new(IpAddr::V4(a.0), 53)),
                RData::AAAA(a) => Some(SocketAddr::new(IpAddr::V6(a.0), 53)),
                _ => None,
            }));
        }
    }
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(CallError::transient(format!(
            "no address found for the nameservers of {zone} ({})",
            hosts.iter().map(text_name).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let text = "# comment\nsearch example.net\nnameserver 127.0.0.53\n\
                    nameserver ::1\nnameserver fe80::1%eth0\noptions edns0\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn names_go_to_the_wire_absolute_and_back_lower_case() {
        let n = wire_name("_acme-challenge.Example.NET").unwrap();
        assert!(n.is_fqdn());
        assert_eq!(text_name(&n), "_acme-challenge.example.net");
    }
}
