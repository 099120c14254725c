//! What an agent says about itself (Hello): checked, bounded, and recorded on its host.

use super::{internal, Services, MAX_IPS, MAX_TARGETS};
use crate::model::InstalledRecord;
use crate::requests::valid_name;
use certfleet_proto::v1 as pb;
use certfleet_shared::identifier::{parse_host_ip, DnsName};
use certfleet_shared::ids::HostId;
use tonic::Status;

impl Services {
    /// After a Hello was recorded: addresses of `before` the host no longer has are
    /// handed to [`crate::lifecycle::addresses_lost`] (audit, revocation at the CA) in a
    /// tracked task, so the session does not wait for the CA.
    pub(super) fn after_hello(&self, host: &HostId, before: &[std::net::IpAddr]) {
        let after = match self.store.host(host) {
            Ok(Some(h)) => h.ips,
            _ => return,
        };
        let gone = crate::lifecycle::lost(before, &after);
        if gone.is_empty() {
            return;
        }
        let (engine, host) = (self.engine.clone(), host.clone());
        self.tracker.spawn(async move {
            match crate::lifecycle::addresses_lost(&engine, &host, &gone).await {
                Ok(revoked) if !revoked.is_empty() => {
                    tracing::warn!(host = %host, ips = ?gone, revoked = ?revoked, "certificates for addresses the host lost revoked")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(host = %host, ips = ?gone, error = %e, "revoking the certificates of lost addresses failed; revoke them with `certs revoke`")
                }
            }
        });
    }

    /// Validates and records what the agent says about itself. `pub` for the fuzz targets
    /// (`fuzz/`), which feed it decoded messages; not an API.
    #[doc(hidden)]
    pub fn apply_hello(&self, host: &HostId, hello: pb::Hello) -> Result<(), Status> {
        if hello.ips.len() > MAX_IPS
            || hello.targets.len() > MAX_TARGETS
            || hello.inventory.len() > MAX_TARGETS
        {
            return Err(Status::invalid_argument(format!(
                "Hello: at most {MAX_IPS} IPs and {MAX_TARGETS} targets"
            )));
        }
        let ips = hello
            .ips
            .iter()
            .map(|s| parse_host_ip(s).map_err(|e| Status::invalid_argument(format!("Hello: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = hello.targets.iter().find(|t| !valid_name(t, 64)) {
            return Err(Status::invalid_argument(format!(
                "Hello: target name {:?} is not valid",
                bad.chars().take(80).collect::<String>()
            )));
        }
        if hello.key_groups.len() > MAX_TARGETS {
            return Err(Status::invalid_argument(format!(
                "Hello: at most {MAX_TARGETS} key groups"
            )));
        }
        if let Some(bad) = hello.key_groups.iter().find(|g| !valid_name(g, 64)) {
            return Err(Status::invalid_argument(format!(
                "Hello: key group name {:?} is not valid",
                bad.chars().take(80).collect::<String>()
            )));
        }
        let mut rec = self
            .store
            .host(host)
            .map_err(internal)?
            .ok_or_else(|| Status::permission_denied("host not enrolled"))?;
        rec.key_groups = hello.key_groups;
        rec.ips = certfleet_shared::identifier::canonical_set(ips);
        rec.targets = hello.targets;
        // What the host can answer, for choosing a challenge type; unknown modes are kept
        // (a newer agent) but bounded.
        // Names the agent asks for: canonical names only (the agent canonicalises at load),
        // bounded; whether the host gets them is the policy's decision (`spec`).
        if hello.requested_names.len() > MAX_IPS {
            return Err(Status::invalid_argument(format!(
                "Hello: at most {MAX_IPS} requested names"
            )));
        }
        rec.requested_names = hello
            .requested_names
            .iter()
            .map(|n| match DnsName::parse(n) {
                Ok(name) if name.as_str() == n => Ok(n.clone()),
                Ok(name) => Err(format!("{n:?} is not canonical; the agent sends {name}")),
                Err(e) => Err(e.to_string()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("Hello: requested name: {e}")))?;
        rec.challenge_modes = hello
            .challenge_modes
            .into_iter()
            .filter(|m| m.len() <= 64)
            .take(MAX_TARGETS)
            .collect();
        rec.inventory = hello
            .inventory
            .into_iter()
            .filter(|i| valid_name(&i.target, 64) && i.serial.len() <= 64)
            .map(|i| InstalledRecord {
                target: i.target,
                serial: i.serial,
                not_after: i.not_after_unix,
                identifiers: i.identifiers.into_iter().take(MAX_IPS).collect(),
            })
            .collect();
        rec.last_seen = Some(self.clock.now_unix());
        // Everything written here the next Hello says again: not worth an fsync each.
        self.store.put_host_unflushed(&rec).map_err(internal)
    }
}
