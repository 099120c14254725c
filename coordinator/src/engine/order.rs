//! The ACME order driver: a new order (profile, `replaces`, budget), resuming one after a
//! restart, and driving it — challenges and CSR in parallel, finalize, check the leaf, store
//! the chain, then install.

use super::challenge::{choice, clear_tokens};
use super::csr::CsrWant;
use super::{Engine, IssueError, AGENT_QUICK};
use crate::acme::{AcmeError, AcmeIssuer};
use crate::audit::{Entry, Kind};
use crate::config::ChallengeKind;
use crate::model::{CertRecord, CertState, HostRecord, IssuedCert, OrderInFlight};
use crate::sessions::AgentHandle;
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};
use certfleet_shared::identifier::{check_issuable, check_sans, Identifier};
use certfleet_shared::ratelimit::Event;
use certfleet_shared::renewal::RenewReason;
use certfleet_shared::x509::{parse_pem_chain, CertInfo};
use instant_acme::OrderStatus;
use std::time::Duration;

/// An order older than this is abandoned rather than resumed (CAs expire them within days).
const ORDER_MAX_AGE_SECS: i64 = 24 * 3600;

impl Engine {
    pub(super) async fn issue(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
        host: &HostRecord,
        reason: RenewReason,
    ) -> Result<(), IssueError> {
        let now = self.clock.now_unix();
        let spec = rec.spec.clone();
        // The challenge type: the spec's next one (from the index) the host can serve.
        let (at, challenge) = choice::choose(
            &spec.challenge_order(),
            rec.schedule.challenge_index,
            &host.challenge_modes,
        )
        .map_err(IssueError::Policy)?;
        rec.schedule.challenge_index = at;
        let names: Vec<&str> = spec.issuers().collect();
        let issuer = self.issuer(names[rec.schedule.issuer_index % names.len()])?;
        let dns01 = challenge == ChallengeKind::Dns01;
        let dns = self.live().dns.clone();
        for id in &spec.identifiers {
            let refused = match id {
                Identifier::Ip(_) if dns01 => Some(
                    "an IP address is never validated by DNS-01 (Let's Encrypt refuses it); \
                     give addresses a certificate with http-01 or tls-alpn-01"
                        .to_owned(),
                ),
                Identifier::Ip(ip) => check_issuable(*ip, issuer.cfg.allow_private_ips)
                    .err()
                    .map(|e| e.to_string()),
                Identifier::Dns(n) if dns01 => dns.zone_for(n).is_none().then(|| {
                    format!("no [[dns_provider]] serves a zone {n} is in; add its zone to a provider's zones or delegated_zones")
                }),
                Identifier::Dns(_) => None,
                Identifier::Wildcard(n) if dns01 => dns.zone_for(n).is_none().then(|| {
                    format!("no [[dns_provider]] serves a zone {n} is in; add its zone to a provider's zones or delegated_zones")
                }),
                Identifier::Wildcard(_) => Some(format!(
                    "a wildcard is validated only by DNS-01, and this order answers {}; set \
                     the certificate's challenges = [\"dns-01\"]",
                    challenge.as_str()
                )),
            };
            if let Some(why) = refused {
                return Err(IssueError::Policy(format!(
                    "cannot ask {} for {id}: {why}",
                    issuer.cfg.name
                )));
            }
        }
        let has_ip = spec.identifiers.iter().any(Identifier::is_ip);
        let profile = issuer
            .choose_profile(spec.required_profile.as_deref(), has_ip)
            .await?;
        // ARI: a renewal names the certificate it replaces; inside the CA's window it is exempt
        // from the per-certificate limits.
        let replaces = match reason {
            RenewReason::AriWindow
            | RenewReason::LifetimeFraction
            | RenewReason::Forced
            | RenewReason::Expired
                if rec
                    .observed
                    .current
                    .as_ref()
                    .is_some_and(|c| c.identifiers == spec.identifiers)
                    && issuer.has_ari() =>
            {
                rec.observed.current.as_ref().and_then(|c| c.ari_id.clone())
            }
            _ => None,
        };
        let exempt = replaces.is_some()
            && rec
                .observed
                .ari
                .as_ref()
                .is_some_and(|a| now >= a.start && now < a.end);
        self.budget_check(&issuer, &spec.identifiers, now, exempt)?;

        let (order, kept, orders_created) = issuer
            .new_order(&spec.identifiers, profile.as_deref(), replaces.as_deref())
            .await?;
        let url = order.url().to_owned();
        // Durable before anything else (the authorizations, the audit): a coordinator that
        // dies from here on leaves an order the next one resumes by its URL, never orders
        // again.
        rec.observed.last_order_url = Some(url.clone());
        rec.observed.order = Some(OrderInFlight {
            validated_by: Default::default(),
            challenge: Some(challenge),
            url: url.clone(),
            issuer: issuer.cfg.name.clone(),
            identifiers: spec.identifiers.clone(),
            profile: profile.clone(),
            replaces: if kept { replaces.clone() } else { None },
            reason: reason.to_string(),
            started: now,
            challenges_announced: false,
            presented: Vec::new(),
            dns_records: None,
            recorded: false,
        });
        rec.state = CertState::Ordering;
        rec.updated = now;
        self.save(rec)?;
        if replaces.is_some() && !kept {
            tracing::warn!(cert = %rec.id, "the CA did not accept `replaces`; renewing without it");
        }
        self.record_order(rec, &issuer, orders_created, replaces.is_some() && !kept)
            .await?;
        tracing::info!(host = %rec.host_id, cert = %rec.id, order = %url, ids = ?spec.identifiers,
            profile = ?profile, challenge = challenge.as_str(), reason = %reason, "order created");
        let driver = issuer.drive_order(order, challenge).await?;
        self.drive(agent, rec, &issuer, driver).await
    }

    /// Puts the order in flight in the rate-limit budget and the audit (`order_created`),
    /// once: a resumed order whose record a crash interrupted is recorded then, unless the
    /// audit already has it (the crash came between the audit and the store).
    pub(super) async fn record_order(
        &self,
        rec: &mut CertRecord,
        issuer: &crate::acme::AcmeIssuer,
        orders_created: usize,
        replaces_ignored: bool,
    ) -> Result<(), IssueError> {
        let Some(order) = rec.observed.order.clone() else {
            return Ok(());
        };
        if order.recorded {
            return Ok(());
        }
        if !self.audit_has(rec, Kind::OrderCreated, &order.url)? {
            self.budget_record(issuer, &vec![Event::OrderCreated; orders_created])?;
            let account = issuer.account_url().await.unwrap_or_default();
            self.record(
                Kind::OrderCreated,
                rec,
                Entry::by("coordinator")
                    .ids(&order.identifiers)
                    .issuer(issuer.cfg.name.clone())
                    .detail("account", account)
                    .detail("order_url", &order.url)
                    .detail("profile", &order.profile)
                    .detail("challenge", order.challenge_kind().as_str())
                    .detail("replaces", &order.replaces)
                    .detail("replaces_ignored_by_ca", replaces_ignored)
                    .detail("reason", &order.reason),
            )?;
        }
        if let Some(o) = rec.observed.order.as_mut() {
            o.recorded = true;
        }
        self.save(rec)?;
        Ok(())
    }

    /// Whether the audit has a `kind` record of order `url` for this host already (a node
    /// killed between appending it and saving the record leaves it there for the node
    /// that resumes the order).
    fn audit_has(&self, rec: &CertRecord, kind: Kind, url: &str) -> Result<bool, IssueError> {
        let q = crate::audit::Query {
            host_id: Some(rec.host_id.to_string()),
            kinds: vec![kind],
            ..Default::default()
        };
        let found = self.audit.query(&q)?;
        Ok(found
            .iter()
            .rev()
            .any(|r| r.entry.details.get("order_url").and_then(|v| v.as_str()) == Some(url)))
    }

    /// Continues the order in flight after a restart, or abandons it when the CA says it is
    /// dead (the next attempt orders anew).
    pub(super) async fn resume(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
    ) -> Result<(), IssueError> {
        let Some(order) = rec.observed.order.clone() else {
            return Ok(());
        };
        let issuer = self.issuer(&order.issuer)?;
        match issuer
            .resume_order(&order.url, order.challenge_kind())
            .await
            .map(|mut d| (d.status(), d))
        {
            Ok((status, driver)) if status != OrderStatus::Invalid => {
                tracing::info!(cert = %rec.id, order = %order.url, status = ?status, "resuming order");
                // Created, then the coordinator died before recording it (the CA made one
                // order, whatever `replaces` did: counted once).
                self.record_order(rec, &issuer, 1, false).await?;
                self.drive(agent, rec, &issuer, driver).await
            }
            Ok(_) => {
                tracing::info!(cert = %rec.id, order = %order.url, "order in flight is invalid; abandoning it");
                clear_tokens(agent, order.presented.clone()).await;
                self.remove_dns(rec).await;
                rec.observed.order = None;
                Err(IssueError::Acme(AcmeError::Validation(vec![(
                    String::new(),
                    "the interrupted order became invalid".into(),
                )])))
            }
            Err(e)
                if e.is_transient()
                    && self.clock.now_unix() - order.started < ORDER_MAX_AGE_SECS =>
            {
                tracing::info!(cert = %rec.id, order = %order.url, error = %e, "cannot reach the order now; will resume it later");
                Err(e.into())
            }
            Err(e) => {
                tracing::info!(cert = %rec.id, order = %order.url, error = %e, "cannot resume order; abandoning it");
                clear_tokens(agent, order.presented.clone()).await;
                self.remove_dns(rec).await;
                rec.observed.order = None;
                Err(e.into())
            }
        }
    }

    /// Validates, finalizes, downloads, stores, installs.
    pub(super) async fn drive(
        &self,
        agent: &AgentHandle,
        rec: &mut CertRecord,
        issuer: &AcmeIssuer,
        mut driver: crate::acme::OrderDriver<'_>,
    ) -> Result<(), IssueError> {
        let Some(order) = rec.observed.order.clone() else {
            return Ok(());
        };
        let status = driver.status();
        let needs_csr = matches!(status, OrderStatus::Pending | OrderStatus::Ready);
        let timeout = Duration::from_secs(self.live().config.issuance.validation_timeout_secs);
        let want = needs_csr.then(|| CsrWant::new(rec, &order));
        let challenges = if status == OrderStatus::Pending {
            driver.challenges()
        } else {
            Vec::new()
        };
        // Served before a crash, and the CA is done with them: stop serving them now.
        let leftover: Vec<String> = order
            .presented
            .iter()
            .filter(|t| !challenges.iter().any(|c| &c.token == *t))
            .cloned()
            .collect();
        if !leftover.is_empty() {
            clear_tokens(agent, leftover).await;
        }
        // DNS-01 records written before a crash: removed; those still needed are written
        // again (the values are the same) and waited for.
        self.remove_dns(rec).await;
        let on_host = challenges
            .first()
            .is_some_and(|c| c.kind != ChallengeKind::Dns01);
        if on_host {
            // Durable before the agent serves them, so a crash cannot leave them behind.
            if let Some(o) = rec.observed.order.as_mut() {
                for c in &challenges {
                    if !o.presented.contains(&c.token) {
                        o.presented.push(c.token.clone());
                    }
                }
            }
            self.save(rec)?;
        }
        let csr = if challenges.is_empty() {
            match want {
                Some(w) => Some(w.fetch(agent).await?),
                None => None,
            }
        } else {
            self.present(agent, rec, &challenges).await?;
            // The key is made only once the challenges are served, while the CA validates.
            let csr = async {
                match want {
                    Some(w) => w.fetch(agent).await.map(Some),
                    None => Ok(None),
                }
            };
            let (validated, csr) = tokio::join!(
                self.validate(agent, rec, issuer, &mut driver, &challenges, timeout),
                csr
            );
            validated?;
            csr?
        };
        if let Some(c) = &csr {
            rec.remember_key(&c.spki_sha256);
        }
        let (csr_der, spki) = match csr {
            Some(c) => (Some(c.der), Some(c.spki_der)),
            None => (None, None),
        };
        let chain_pem = driver
            .finalize(csr_der.as_deref(), timeout)
            .await
            .inspect_err(|_| {
                // An order that fails at finalize is not resumable in any useful way.
            })?;
        let chain = parse_pem_chain(&chain_pem).map_err(|e| IssueError::BadCert(e.to_string()))?;
        let leaf = check_leaf(&chain[0], &order.identifiers, spki.as_deref())?;
        let now = self.clock.now_unix();
        let renewed = rec.observed.current.is_some();
        let validated_by = rec
            .observed
            .order
            .as_ref()
            .map(|o| o.validated_by.clone())
            .unwrap_or_default();
        rec.observed.current = Some(IssuedCert {
            validated_by,
            identifiers: order.identifiers.clone(),
            issuer: issuer.cfg.name.clone(),
            profile: driver.profile().or(order.profile.clone()),
            serial: leaf.serial_hex.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            chain_pem,
            ari_id: AcmeIssuer::ari_id(&chain[0]),
            renew_unit: rand::random(),
            issued_at: now,
        });
        rec.observed.order = None;
        rec.observed.ari = None;
        if rec.spec.key_group.is_some() {
            // This host made the group's key: the other members get it from here.
            rec.observed.group_key = Some(super::csr::key_digest(&leaf.spki_der));
        }
        rec.schedule.ari_retry_at = None;
        rec.schedule.forced_by = None;
        if renewed {
            rec.schedule.renewals += 1;
            self.metrics
                .renewals
                .get_or_create(&crate::metrics::IssuerReason {
                    issuer: issuer.cfg.name.clone(),
                    reason: order.reason.clone(),
                })
                .inc();
        }
        rec.schedule.last_renewal_reason = Some(order.reason.clone());
        rec.observed.revoked_serial = None;
        rec.state = CertState::Issued;
        rec.updated = now;
        let issuer_chain_sha256: Vec<String> = chain[1..]
            .iter()
            .map(|c| certfleet_shared::x509::sha256_hex(c))
            .collect();
        if self.audit_has(rec, Kind::CertificateIssued, &order.url)? {
            tracing::info!(cert = %rec.id, order = %order.url, "the issuance of this order is in the audit already (recorded before a crash)");
        } else {
            self.record(
                Kind::CertificateIssued,
                rec,
                Entry::by("coordinator")
                    .ids(&order.identifiers)
                    .serial(leaf.serial_hex.clone())
                    .issuer(issuer.cfg.name.clone())
                    .detail("not_before", leaf.not_before)
                    .detail("not_after", leaf.not_after)
                    .detail(
                        "sans",
                        leaf.ips
                            .iter()
                            .map(|i| i.to_string())
                            .chain(leaf.dns_names.iter().cloned())
                            .collect::<Vec<_>>(),
                    )
                    .detail("issuer_chain_sha256", issuer_chain_sha256)
                    .detail("order_url", &order.url)
                    .detail(
                        "profile",
                        rec.observed
                            .current
                            .as_ref()
                            .and_then(|c| c.profile.clone()),
                    )
                    .detail("reason", &order.reason)
                    .detail("key_group", &rec.spec.key_group)
                    .detail("key_sha256", super::csr::key_digest(&leaf.spki_der)),
            )?;
        }
        // Durable before the install is asked for.
        self.save(rec)?;
        self.budget_record(
            issuer,
            &[Event::CertIssued {
                identifiers: order.identifiers.clone(),
            }],
        )?;
        tracing::info!(host = %rec.host_id, cert = %rec.id, serial = %leaf.serial_hex, not_after = leaf.not_after,
            lifetime_h = (leaf.not_after - leaf.not_before) / 3600, reason = %order.reason, "certificate issued");
        self.install(agent, rec).await
    }

    /// The order ended (or none is in flight): the agent removes the pending keys it made
    /// for this certificate, except the key of a certificate issued but not yet installed.
    /// Best effort: the agent's age limit is the safety net.
    pub(super) async fn discard_pending_keys(&self, agent: &AgentHandle, rec: &CertRecord) {
        let keep = rec
            .observed
            .current
            .as_ref()
            .filter(|c| rec.observed.installed_serial.as_ref() != Some(&c.serial))
            .and_then(|c| parse_pem_chain(&c.chain_pem).ok())
            .and_then(|chain| CertInfo::from_der(&chain[0]).ok())
            .map(|leaf| vec![certfleet_shared::x509::sha256_hex(&leaf.spki_der)])
            .unwrap_or_default();
        let cmd = Cmd::DiscardPendingKeys(pb::DiscardPendingKeys {
            cert_id: rec.id.to_string(),
            keep_spki_sha256: keep,
        });
        match agent
            .request(cmd, "discard pending keys", AGENT_QUICK)
            .await
        {
            Ok(reply::Result::Done(d)) if d.discarded > 0 => {
                tracing::info!(host = %rec.host_id, cert = %rec.id, discarded = d.discarded, "pending keys of the ended order removed on the host")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(host = %rec.host_id, cert = %rec.id, error = %e, "could not have the host remove pending keys; its age limit will")
            }
        }
    }
}

/// The leaf must cover exactly `ids` and, when we made the CSR, carry its public key.
fn check_leaf(der: &[u8], ids: &[Identifier], spki: Option<&[u8]>) -> Result<CertInfo, IssueError> {
    let leaf = CertInfo::from_der(der).map_err(|e| IssueError::BadCert(e.to_string()))?;
    check_sans(&leaf.ips, &leaf.dns_names, ids).map_err(IssueError::BadCert)?;
    if spki.is_some_and(|s| s != leaf.spki_der) {
        return Err(IssueError::BadCert(
            "its public key is not the one in our CSR".into(),
        ));
    }
    Ok(leaf)
}
