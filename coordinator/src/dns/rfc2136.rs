//! The `rfc2136` provider: dynamic updates (RFC 2136) signed with TSIG (RFC 8945,
//! HMAC-SHA256/384/512), sent over TCP to the zone's primary (`server`). All values of
//! one record go into one update, so they land in one RRset together; removal deletes
//! exactly our values (class NONE), which is a no-op when they are gone.
//!
//! The answer's TSIG is verified on success (an unsigned or forged "NOERROR" is an error).
//! NOTAUTH, REFUSED and NOTZONE are configuration errors naming server, zone and key.

use super::error::{CallError, DnsErrorKind};
use super::query::{tcp_exchange, wire_name};
use super::secret::{read_secret_env, read_secret_file, Secret};
use crate::config::{DnsProviderConfig, TsigAlgorithmName};
use base64::Engine as _;
use certfleet_shared::clock::Clock;
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{update_message, Message, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, RData, RecordSet, RecordType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Allowed clock difference with the server (RFC 8945 recommends 300 s).
const FUDGE_SECS: u16 = 300;

pub(crate) struct Rfc2136 {
    server: String,
    key_name: String,
    algorithm: TsigAlgorithmName,
    signer: TSigner,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Rfc2136 {
    /// Reads the key's secret (file or environment) and checks it is base64.
    pub fn new(cfg: &DnsProviderConfig, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let server = cfg.server.clone().ok_or("server is not set")?;
        let key_name = cfg
            .tsig_key_name
            .clone()
            .ok_or("tsig_key_name is not set")?;
        let secret: Secret = match (&cfg.tsig_secret_file, &cfg.tsig_secret_env) {
            (Some(path), _) => read_secret_file(path, "tsig_secret_file")?,
            (None, Some(var)) => read_secret_env(var, "tsig_secret_env")?,
            (None, None) => return Err("tsig_secret_file or tsig_secret_env is needed".into()),
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.expose())
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or(
                "the TSIG secret is not base64 (as `keymgr -t NAME hmac-sha256` or \
                 `tsig-keygen` print it)",
            )?;
        let algorithm = cfg.tsig_algorithm.unwrap_or(TsigAlgorithmName::HmacSha256);
        let hickory_alg = match algorithm {
            TsigAlgorithmName::HmacSha256 => TsigAlgorithm::HmacSha256,
            TsigAlgorithmName::HmacSha384 => TsigAlgorithm::HmacSha384,
            TsigAlgorithmName::HmacSha512 => TsigAlgorithm::HmacSha512,
        };
        let signer_name = wire_name(&key_name).map_err(|e| e.cause)?;
        let signer = TSigner::new(key, hickory_alg, signer_name, FUDGE_SECS)
            .map_err(|e| format!("cannot use the TSIG key: {e}"))?;
        Ok(Self {
            server,
            key_name,
            algorithm,
            signer,
            timeout: cfg.timeout(),
            clock,
        })
    }

    /// Adds `values` to the TXT RRset at `fqdn` in one update.
    pub async fn add(
        &self,
        zone: &str,
        fqdn: &str,
        values: &[String],
        ttl: u32,
    ) -> Result<(), CallError> {
        let (zone_name, rrset) = txt_rrset(zone, fqdn, values, ttl)?;
        let msg = update_message::append(rrset, zone_name, false, false);
        self.send(zone, msg).await
    }

    /// Deletes exactly `values` from the TXT RRset at `fqdn` (absent ones are fine).
    pub async fn remove(&self, zone: &str, fqdn: &str, values: &[String]) -> Result<(), CallError> {
        let (zone_name, rrset) = txt_rrset(zone, fqdn, values, 0)?;
        let msg = update_message::delete_by_rdata(rrset, zone_name, false);
        self.send(zone, msg).await
    }

    async fn server_addr(&self) -> Result<SocketAddr, CallError> {
        let mut addrs = tokio::net::lookup_host(&self.server).await.map_err(|e| {
            CallError::transient(format!("cannot resolve server {}: {e}", self.server))
        })?;
        addrs.next().ok_or_else(|| {
            CallError::transient(format!("server {} resolves to no address", self.server))
        })
    }

    async fn send(&self, zone: &str, mut msg: Message) -> Result<(), CallError> {
        let now = u32::try_from(self.clock.now_unix()).unwrap_or(0);
        let mut verify = msg
            .finalize(&self.signer, now)
            .map_err(|e| CallError::config(format!("cannot sign the update: {e}")))?;
        let bytes = msg
            .to_vec()
            .map_err(|e| CallError::transient(format!("cannot encode the update: {e}")))?;
        let addr = self.server_addr().await?;
        let raw = tcp_exchange(addr, &bytes, self.timeout)
            .await
            .map_err(|e| {
                CallError::new(e.kind, format!("update to {}: {}", self.server, e.cause))
            })?;
        let reply = Message::from_vec(&raw).map_err(|e| {
            CallError::transient(format!("{} sent an unreadable answer: {e}", self.server))
        })?;
        if reply.id() != msg.id() {
            return Err(CallError::transient(format!(
                "{} answered another update (id {} for {})",
                self.server,
                reply.id(),
                msg.id()
            )));
        }
        let rcode = reply.response_code();
        if rcode != ResponseCode::NoError {
            return Err(self.refusal(zone, rcode));
        }
        match verify.as_mut() {
            Some(verify) => verify(&raw).map(|_| ()).map_err(|e| {
                CallError::config(format!(
                    "{} answered without a valid TSIG signature of key {:?} ({e}); the \
                     answer cannot be trusted",
                    self.server, self.key_name
                ))
            }),
            None => Err(CallError::config("the update was not signed")),
        }
    }

    fn refusal(&self, zone: &str, rcode: ResponseCode) -> CallError {
        let key = &self.key_name;
        let alg = match self.algorithm {
            TsigAlgorithmName::HmacSha256 => "hmac-sha256",
            TsigAlgorithmName::HmacSha384 => "hmac-sha384",
            TsigAlgorithmName::HmacSha512 => "hmac-sha512",
        };
        let server = &self.server;
        match rcode {
            ResponseCode::NotAuth => CallError::config(format!(
                "server {server} answered NOTAUTH to the update of zone {zone} signed with \
                 TSIG key {key:?} ({alg}): it does not know this key or the signature does not \
                 match (BADKEY/BADSIG), or the clocks differ by more than {FUDGE_SECS} s \
                 (BADTIME), or it is not authoritative for the zone; check tsig_key_name, \
                 tsig_algorithm and the secret against the server's key"
            )),
            ResponseCode::Refused => CallError::config(format!(
                "server {server} REFUSED the update of zone {zone} with TSIG key {key:?}: the \
                 key is not allowed to update this zone (the server's update ACL / \
                 update-policy), or the server is not the zone's primary"
            )),
            ResponseCode::NotZone => CallError::config(format!(
                "server {server} says the record is not in zone {zone} (NOTZONE); check the \
                 provider's zones"
            )),
            ResponseCode::ServFail => CallError::transient(format!(
                "server {server} failed the update of zone {zone} (SERVFAIL)"
            )),
            other => CallError::new(
                DnsErrorKind::Transient,
                format!(
                    "server {server} answered {other} to the update of zone {zone} with TSIG \
                     key {key:?}"
                ),
            ),
        }
    }
}

/// The zone's name and the TXT RRset; refuses a record outside the zone (hickory's update
/// builders assert it, and a daemon must not panic).
fn txt_rrset(
    zone: &str,
    fqdn: &str,
    values: &[String],
    ttl: u32,
) -> Result<(hickory_proto::rr::Name, RecordSet), CallError> {
    let zone_name = wire_name(zone)?;
    let name = wire_name(fqdn)?;
    if !zone_name.zone_of(&name) {
        return Err(CallError::config(format!("{fqdn} is not in zone {zone}")));
    }
    let mut rrset = RecordSet::with_ttl(name, RecordType::TXT, ttl);
    rrset.set_dns_class(DNSClass::IN);
    for v in values {
        rrset.add_rdata(RData::TXT(TXT::new(vec![v.clone()])));
    }
    Ok((zone_name, rrset))
}
