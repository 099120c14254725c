//! ACME issuers: the only place that talks to a CA (design invariant 1).
//!
//! [`AcmeIssuer`] owns one configured issuer: it loads the account from the store or
//! creates it and flushes its credentials before first use (and creates a new one if the CA
//! has forgotten it), knows which profiles the directory offers, fetches ARI renewal
//! windows, and creates or resumes orders as [`OrderDriver`]s. It knows nothing about
//! agents: the caller supplies the challenge responder and the CSR.

mod error;

pub use error::{AcmeError, Problem};

use crate::config::{ChallengeKind, IssuerConfig};
use crate::store::{AccountRecord, Store, StoreError};
use certfleet_shared::clock::SharedClock;
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Bound on any single request to a CA: a CA that hangs must not hang us.
pub const ACME_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failed order's report waits for the CA to finish validating its other
/// announced challenges (see `identifier_problems`).
const PROBLEMS_SETTLE: Duration = Duration::from_secs(10);

/// One challenge to present, of the order's type.
#[derive(Debug, Clone)]
pub struct PendingChallenge {
    pub kind: ChallengeKind,
    pub identifier: String,
    pub token: String,
    /// `token.thumbprint` (RFC 8555 §8.1); for TLS-ALPN-01 the agent puts its SHA-256
    /// digest into the validation certificate (RFC 8737 §3).
    pub key_authorization: String,
    /// For DNS-01: the TXT value, base64url(SHA-256(key authorization)) (RFC 8555 §8.4).
    pub dns_value: String,
}

/// instant-acme's name for one of our challenge kinds.
fn acme_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    }
}

/// An ARI renewal window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: i64,
    pub end: i64,
    pub retry_after_secs: i64,
    pub explanation_url: Option<String>,
}

pub struct AcmeIssuer {
    pub cfg: IssuerConfig,
    metrics: Arc<crate::metrics::Metrics>,
    store: Arc<dyn Store>,
    clock: SharedClock,
    account: Mutex<Option<Account>>,
    /// Set once the directory turned out to have no renewalInfo.
    no_ari: std::sync::atomic::AtomicBool,
}

fn problem_parts(e: &instant_acme::Error) -> (String, Option<String>) {
    match e {
        instant_acme::Error::Api(p) => (problem_text(p), p.r#type.clone()),
        other => (certfleet_shared::transport::error_chain(other), None),
    }
}

impl AcmeIssuer {
    pub fn new(
        cfg: IssuerConfig,
        store: Arc<dyn Store>,
        clock: SharedClock,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            cfg,
            metrics,
            store,
            clock,
            account: Mutex::new(None),
            no_ari: Default::default(),
        }
    }

    fn ca_err(&self, e: &instant_acme::Error) -> AcmeError {
        let (detail, problem_type) = problem_parts(e);
        AcmeError::Ca {
            issuer: self.cfg.name.clone(),
            problem: Problem::classify(problem_type.as_deref(), &detail),
            detail,
            problem_type,
        }
    }

    fn ca_msg(&self, detail: impl Into<String>) -> AcmeError {
        AcmeError::Ca {
            issuer: self.cfg.name.clone(),
            detail: detail.into(),
            problem_type: None,
            problem: Problem::Unreachable,
        }
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, instant_acme::Error>>,
    ) -> Result<T, AcmeError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(ACME_CALL_TIMEOUT, fut).await;
        self.metrics
            .observe_acme(&self.cfg.name, what, started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = self.ca_err(&e);
                if err.is_account_gone() && what != "create account" {
                    // The CA no longer knows our account (reset, wiped, deactivated):
                    // forget it so the next attempt creates a new one.
                    tracing::warn!(issuer = %self.cfg.name, error = %err, "ACME account rejected; a new one will be created");
                    *self.account.lock().await = None;
                    let _ = self.store.delete_account(&self.cfg.name);
                }
                Err(err)
            }
            Err(_) => Err(AcmeError::Timeout {
                issuer: self.cfg.name.clone(),
                secs: ACME_CALL_TIMEOUT.as_secs(),
                what,
            }),
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        match &self.cfg.trust_root {
            Some(root) => Account::builder_with_root(root)
                .map_err(|e| self.ca_msg(format!("trust_root {}: {e}", root.display()))),
            None => Account::builder().map_err(|e| self.ca_err(&e)),
        }
    }

    /// The account, loaded from the store or created (and stored) on first use.
    pub async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let account = self.load_or_create().await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    async fn load_or_create(&self) -> Result<Account, AcmeError> {
        let name = &self.cfg.name;
        if let Some(rec) = self.store.account(name)? {
            if rec.directory == self.cfg.directory {
                let creds: instant_acme::AccountCredentials =
                    serde_json::from_value(rec.credentials.clone()).map_err(|e| {
                        AcmeError::BadStoredAccount {
                            issuer: name.clone(),
                            detail: e.to_string(),
                        }
                    })?;
                let account = self
                    .timed("load account", self.builder()?.from_credentials(creds))
                    .await?;
                tracing::info!(issuer = %name, account_url = %account.id(), "ACME account loaded");
                return Ok(account);
            }
            tracing::warn!(issuer = %name, old = %rec.directory, new = %self.cfg.directory,
                "issuer directory changed; creating a new ACME account");
        }
        let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let eab = self
            .cfg
            .eab()
            .map(|(kid, key)| ExternalAccountKey::new(kid, &key));
        let (account, creds) = self
            .timed(
                "create account",
                self.builder()?
                    .create(&new, self.cfg.directory.clone(), eab.as_ref()),
            )
            .await?;
        let rec = AccountRecord {
            directory: self.cfg.directory.clone(),
            account_id: account.id().to_owned(),
            created: self.clock.now_unix(),
            credentials: serde_json::to_value(&creds).map_err(StoreError::from)?,
        };
        // Durable before first use.
        self.store.put_account(name, &rec)?;
        tracing::info!(issuer = %name, account_url = %account.id(), "ACME account created");
        Ok(account)
    }

    /// The profile to ask for. A required profile must be offered; otherwise the issuer's
    /// `ip_profile` is used when the directory offers it, and no profile when it offers none.
    pub async fn choose_profile(
        &self,
        required: Option<&str>,
        has_ip: bool,
    ) -> Result<Option<String>, AcmeError> {
        let account = self.account().await?;
        let mut offered: Vec<String> = account.profiles().map(|p| p.name.to_owned()).collect();
        offered.sort();
        if let Some(wanted) = required {
            return if offered.iter().any(|p| p == wanted) {
                Ok(Some(wanted.to_owned()))
            } else {
                Err(AcmeError::ProfileUnavailable {
                    issuer: self.cfg.name.clone(),
                    wanted: wanted.to_owned(),
                    offered: if offered.is_empty() {
                        "no profiles".into()
                    } else {
                        offered.join(", ")
                    },
                })
            };
        }
        let default = &self.cfg.ip_profile;
        Ok(
            (has_ip && !default.is_empty() && offered.iter().any(|p| p == default))
                .then(|| default.clone()),
        )
    }

    /// The account's URL at the CA, for the audit trail.
    pub async fn account_url(&self) -> Option<String> {
        self.account
            .lock()
            .await
            .as_ref()
            .map(|a| a.id().to_owned())
    }

    /// Whether the CA offers ARI, as far as we know (assumed until it says otherwise).
    pub fn has_ari(&self) -> bool {
        !self.no_ari.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Revokes a certificate this account obtained.
    pub async fn revoke(
        &self,
        leaf_der: &[u8],
        reason: instant_acme::RevocationReason,
    ) -> Result<(), AcmeError> {
        let account = self.account().await?;
        let cert = CertificateDer::from(leaf_der.to_vec());
        let req = instant_acme::RevocationRequest {
            certificate: &cert,
            reason: Some(reason),
        };
        self.timed("revoke", account.revoke(&req)).await
    }

    /// The RFC 9773 identifier of a certificate.
    pub fn ari_id(leaf: &CertificateDer<'_>) -> Option<String> {
        CertificateIdentifier::try_from(leaf)
            .ok()
            .map(|id| id.to_string())
    }

    /// The CA's suggested renewal window, or `None` when the CA has no ARI.
    pub async fn renewal_window(&self, ari_id: &str) -> Result<Option<RenewalWindow>, AcmeError> {
        let account = self.account().await?;
        let id = parse_ari_id(ari_id)
            .ok_or_else(|| self.ca_msg(format!("bad stored ARI id {ari_id:?}")))?;
        match tokio::time::timeout(ACME_CALL_TIMEOUT, account.renewal_info(&id)).await {
            Err(_) => Err(AcmeError::Timeout {
                issuer: self.cfg.name.clone(),
                secs: ACME_CALL_TIMEOUT.as_secs(),
                what: "renewal info",
            }),
            Ok(Err(instant_acme::Error::Unsupported(_))) => {
                self.no_ari
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(None)
            }
            Ok(Err(e)) => Err(self.ca_err(&e)),
            Ok(Ok((info, retry))) => Ok(Some(RenewalWindow {
                start: info.suggested_window.start.unix_timestamp(),
                end: info.suggested_window.end.unix_timestamp(),
                retry_after_secs: retry.as_secs() as i64,
                explanation_url: info.explanation_url,
            })),
        }
    }

    /// Creates an order (nothing more: the caller stores its URL before anything else, so
    /// a crash from then on resumes it instead of ordering again; then [`Self::drive_order`]).
    /// With `replaces`, a server that refuses or ignores it (some do) gets the order again
    /// without it; the returned flag says whether `replaces` was kept, the count how many
    /// orders the CA created.
    pub async fn new_order(
        &self,
        identifiers: &[certfleet_shared::identifier::Identifier],
        profile: Option<&str>,
        replaces: Option<&str>,
    ) -> Result<(Order, bool, usize), AcmeError> {
        use certfleet_shared::identifier::Identifier as Ours;
        let account = self.account().await?;
        let ids: Vec<Identifier> = identifiers
            .iter()
            .map(|i| match i {
                Ours::Ip(ip) => Identifier::Ip(*ip),
                // A wildcard goes to the CA as written ("*.example.net"), RFC 8555 §7.1.3.
                other => Identifier::Dns(other.to_string()),
            })
            .collect();
        let base = || {
            let mut req = NewOrder::new(&ids);
            if let Some(p) = profile {
                req = req.profile(p);
            }
            req
        };
        let mut kept = false;
        let mut created = 1;
        let order = match replaces.and_then(parse_ari_id) {
            Some(id) => match self
                .timed("new order", account.new_order(&base().replaces(id)))
                .await
            {
                Ok(o) => {
                    kept = true;
                    o
                }
                Err(e)
                    if !e.is_bad_nonce()
                        && !e.is_rate_limited()
                        && !matches!(e, AcmeError::Timeout { .. }) =>
                {
                    tracing::warn!(issuer = %self.cfg.name, error = %e, "order with `replaces` failed; ordering again without it");
                    // A CA that ignores `replaces` created the first order anyway (the check that
                    // failed is ours); a CA that refused it sent a problem document.
                    if e.problem_type().is_none() {
                        created = 2;
                    }
                    self.timed("new order", account.new_order(&base())).await?
                }
                Err(e) => return Err(e),
            },
            None => self.timed("new order", account.new_order(&base())).await?,
        };
        Ok((order, kept, created))
    }

    /// The driver of an order [`Self::new_order`] created, answering challenges of type
    /// `kind` (fetches its authorizations).
    pub async fn drive_order(
        &self,
        order: Order,
        kind: ChallengeKind,
    ) -> Result<OrderDriver<'_>, AcmeError> {
        self.driver(order, kind).await
    }

    /// Re-opens an order created before a restart; its challenges of type `kind` are the
    /// ones answered.
    pub async fn resume_order(
        &self,
        url: &str,
        kind: ChallengeKind,
    ) -> Result<OrderDriver<'_>, AcmeError> {
        let account = self.account().await?;
        let order = self
            .timed("load order", account.order(url.to_owned()))
            .await?;
        self.driver(order, kind).await
    }

    async fn driver(
        &self,
        mut order: Order,
        kind: ChallengeKind,
    ) -> Result<OrderDriver<'_>, AcmeError> {
        let mut challenges = Vec::new();
        let mut authzs = order.authorizations();
        loop {
            let next = tokio::time::timeout(ACME_CALL_TIMEOUT, authzs.next())
                .await
                .map_err(|_| AcmeError::Timeout {
                    issuer: self.cfg.name.clone(),
                    secs: ACME_CALL_TIMEOUT.as_secs(),
                    what: "fetch authorization",
                })?;
            let Some(next) = next else { break };
            let mut authz = next.map_err(|e| self.ca_err(&e))?;
            let ident = identifier_text(&authz.identifier());
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                // An invalid authorization means the order is dead; the caller sees it in status.
                _ => continue,
            }
            let ch = authz
                .challenge(acme_type(kind))
                .ok_or_else(|| AcmeError::NoChallenge {
                    issuer: self.cfg.name.clone(),
                    identifier: ident.clone(),
                    kind: kind.as_str(),
                })?;
            challenges.push(PendingChallenge {
                kind,
                identifier: ident,
                token: ch.token.clone(),
                key_authorization: ch.key_authorization().as_str().to_owned(),
                dns_value: ch.key_authorization().dns_value(),
            });
        }
        Ok(OrderDriver {
            issuer: self,
            order,
            kind,
            challenges,
        })
    }
}

fn parse_ari_id(s: &str) -> Option<CertificateIdentifier<'static>> {
    let quoted = serde_json::to_string(s).ok()?;
    serde_json::from_str::<CertificateIdentifier<'_>>(&quoted)
        .ok()
        .map(|id| id.into_owned())
}

/// One order in flight.
pub struct OrderDriver<'a> {
    issuer: &'a AcmeIssuer,
    order: Order,
    /// The challenge type answered for this order.
    kind: ChallengeKind,
    challenges: Vec<PendingChallenge>,
}

impl OrderDriver<'_> {
    pub fn url(&self) -> &str {
        self.order.url()
    }

    pub fn status(&mut self) -> OrderStatus {
        self.order.state().status
    }

    pub fn profile(&mut self) -> Option<String> {
        self.order.state().profile.clone()
    }

    pub fn challenges(&self) -> Vec<PendingChallenge> {
        self.challenges.clone()
    }

    fn poll_policy(timeout: Duration) -> RetryPolicy {
        RetryPolicy::new()
            .initial_delay(Duration::from_millis(50))
            .backoff(1.5)
            .timeout(timeout)
    }

    /// Tells the CA every pending challenge is ready and waits until the order is ready.
    /// On failure the error carries the CA's problem per identifier.
    pub async fn validate(&mut self, timeout: Duration) -> Result<(), AcmeError> {
        let issuer = self.issuer;
        let tokens: Vec<String> = self.challenges.iter().map(|c| c.token.clone()).collect();
        let mut refused = None;
        // Challenges the CA is validating for this order: announced now, or (an order
        // resumed after a restart) already processing.
        let mut announced: Vec<String> = Vec::new();
        let mut authzs = self.order.authorizations();
        while let Some(next) = authzs.next().await {
            let mut authz = next.map_err(|e| issuer.ca_err(&e))?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut ch) = authz.challenge(acme_type(self.kind)) {
                // Only a pending challenge is announced: one the CA is already processing
                // (e.g. an order resumed after a restart) must not be validated twice.
                if tokens.contains(&ch.token)
                    && ch.status == instant_acme::ChallengeStatus::Processing
                {
                    announced.push(ch.token.clone());
                }
                if tokens.contains(&ch.token) && ch.status == instant_acme::ChallengeStatus::Pending
                {
                    match issuer.timed("set challenge ready", ch.set_ready()).await {
                        Ok(_) => announced.push(ch.token.clone()),
                        // The CA answers with the validation's own problem when the
                        // authorization already failed (pebble, validating at once): that
                        // is a failed validation of this order, reported per identifier
                        // below — not a CA outage to retry.
                        Err(
                            e @ AcmeError::Ca {
                                problem: Problem::Other,
                                ..
                            },
                        ) => {
                            refused = Some(e);
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if let Some(e) = refused {
            let per_id = self.identifier_problems(&announced).await;
            return Err(AcmeError::Validation(if per_id.is_empty() {
                vec![(String::new(), e.to_string())]
            } else {
                per_id
            }));
        }
        let polled = tokio::time::timeout(
            timeout + Duration::from_secs(5),
            self.order.poll_ready(&Self::poll_policy(timeout)),
        )
        .await;
        let status = match polled {
            Err(_) | Ok(Err(instant_acme::Error::Timeout(_))) => {
                // Give the stuck authorizations back so the CA does not keep them pending.
                let mut authzs = self.order.authorizations();
                while let Some(Ok(mut authz)) = authzs.next().await {
                    if authz.status == AuthorizationStatus::Pending {
                        let _ = tokio::time::timeout(ACME_CALL_TIMEOUT, authz.deactivate()).await;
                    }
                }
                return Err(AcmeError::Validation(vec![(
                    String::new(),
                    format!(
                        "the CA did not finish validating in time (about {} s); is the agent's {} responder reachable from the CA?",
                        timeout.as_secs(),
                        self.kind.as_str()
                    ),
                )]));
            }
            // A transient problem while polling (badNonce, rate limit) is not a failed
            // validation: the order stays in flight and is resumed.
            Ok(Err(e @ instant_acme::Error::Api(_))) if issuer.ca_err(&e).is_transient() => {
                return Err(issuer.ca_err(&e))
            }
            Ok(Err(instant_acme::Error::Api(problem))) => {
                let per_id = self.identifier_problems(&announced).await;
                return Err(AcmeError::Validation(if per_id.is_empty() {
                    vec![(String::new(), problem_text(&problem))]
                } else {
                    per_id
                }));
            }
            Ok(Err(e)) => return Err(issuer.ca_err(&e)),
            Ok(Ok(s)) => s,
        };
        match status {
            OrderStatus::Ready => Ok(()),
            other => {
                let per_id = self.identifier_problems(&announced).await;
                Err(AcmeError::Validation(if per_id.is_empty() {
                    vec![(String::new(), format!("order is {other:?}"))]
                } else {
                    per_id
                }))
            }
        }
    }

    /// (identifier, problem) for every identifier whose challenge failed.
    ///
    /// The CA marks the order invalid as soon as one authorization fails, while the
    /// others it is still validating go on: their outcome counts against the CA's
    /// failed-validation limit all the same, so it is waited for (briefly) and reported,
    /// or the budget would undercount and the operator would see half the story.
    async fn identifier_problems(&mut self, announced: &[String]) -> Vec<(String, String)> {
        let settle_until = tokio::time::Instant::now() + PROBLEMS_SETTLE;
        let mut pause = Duration::from_millis(100);
        loop {
            let (out, validating) = self.identifier_problems_once(announced).await;
            if !validating || tokio::time::Instant::now() + pause > settle_until {
                return out;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// One look at the authorizations: the problems so far, and whether the CA is still
    /// validating one of this order's announced challenges (pending authorization; the
    /// challenge `processing`, or still `pending` at a CA that does not show processing,
    /// as pebble).
    async fn identifier_problems_once(
        &mut self,
        announced: &[String],
    ) -> (Vec<(String, String)>, bool) {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut validating = false;
        let mut authzs = self.order.authorizations();
        while let Some(Ok(mut authz)) = authzs.next().await {
            if tokio::time::timeout(ACME_CALL_TIMEOUT, authz.refresh())
                .await
                .is_err()
            {
                continue;
            }
            let ident = identifier_text(&authz.identifier());
            for ch in &authz.challenges {
                if let Some(problem) = &ch.error {
                    out.push((ident.clone(), problem_text(problem)));
                }
                if authz.status == AuthorizationStatus::Pending
                    && (ch.status == instant_acme::ChallengeStatus::Processing
                        || announced.contains(&ch.token))
                {
                    validating = true;
                }
            }
            if authz.status == AuthorizationStatus::Invalid && !out.iter().any(|(i, _)| *i == ident)
            {
                out.push((ident, "authorization invalid".into()));
            }
        }
        (out, validating)
    }

    /// Finalizes with the host's CSR (when the order still needs one) and downloads the
    /// chain (PEM, leaf first).
    pub async fn finalize(
        &mut self,
        csr_der: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<String, AcmeError> {
        let issuer = self.issuer;
        if let Some(csr) = csr_der {
            issuer
                .timed("finalize", self.order.finalize_csr(csr))
                .await?;
        }
        match tokio::time::timeout(
            timeout + Duration::from_secs(5),
            self.order.poll_certificate(&Self::poll_policy(timeout)),
        )
        .await
        {
            Ok(Ok(chain)) => Ok(chain),
            Ok(Err(e)) => Err(issuer.ca_err(&e)),
            Err(_) => Err(AcmeError::Timeout {
                issuer: issuer.cfg.name.clone(),
                secs: timeout.as_secs(),
                what: "certificate",
            }),
        }
    }
}

/// An authorization's identifier in our canonical text: a wildcard's authorization is
/// for its base name with the wildcard flag (RFC 8555 §7.1.4), shown as `*.base`.
fn identifier_text(id: &instant_acme::AuthorizedIdentifier<'_>) -> String {
    match (id.wildcard, id.identifier) {
        (_, Identifier::Ip(ip)) => ip.to_string(),
        (true, Identifier::Dns(d)) => format!("*.{d}"),
        (false, Identifier::Dns(d)) => d.clone(),
        (_, other) => format!("{other:?}"),
    }
}

fn problem_text(p: &instant_acme::Problem) -> String {
    let mut s = p.detail.clone().unwrap_or_else(|| "no detail".into());
    if let Some(t) = &p.r#type {
        s.push_str(&format!(" ({t})"));
    }
    for sub in &p.subproblems {
        s.push_str(&format!("; {sub}"));
    }
    s
}
