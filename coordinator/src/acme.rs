//! ACME issuers: the only place that talks to a CA (design invariant 1).
//!
//! [`AcmeIssuer`] owns one configured issuer: it loads the account from the store or
//! creates it and flushes its credentials before first use, knows which profiles the
//! directory offers, and drives an order through [`OrderDriver`]. It knows nothing about
//! agents: the caller supplies the challenge responder and the CSR.

use crate::config::IssuerConfig;
use crate::store::{AccountRecord, Store, StoreError};
use certfleet_shared::clock::SharedClock;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Bound on any single request to a CA: a CA that hangs must not hang us.
const ACME_CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("CA {issuer}: {detail}")]
    Ca { issuer: String, detail: String },
    #[error("CA {issuer} did not answer within {secs} s ({what})")]
    Timeout {
        issuer: String,
        secs: u64,
        what: &'static str,
    },
    #[error("CA {issuer} does not offer profile {wanted:?} (it offers: {offered}); change ip_profile or the issuer")]
    ProfileUnavailable {
        issuer: String,
        wanted: String,
        offered: String,
    },
    #[error("validation failed: {0}")]
    Validation(String),
    #[error("CA {issuer} offers no http-01 challenge for {identifier}")]
    NoHttp01 { issuer: String, identifier: String },
    #[error("stored ACME account for {issuer} is unreadable: {detail}")]
    BadStoredAccount { issuer: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One HTTP-01 challenge to present.
#[derive(Debug, Clone)]
pub struct PendingChallenge {
    pub identifier: String,
    pub token: String,
    pub key_authorization: String,
}

pub struct AcmeIssuer {
    pub cfg: IssuerConfig,
    store: Arc<dyn Store>,
    clock: SharedClock,
    account: OnceCell<Account>,
}

impl AcmeIssuer {
    pub fn new(cfg: IssuerConfig, store: Arc<dyn Store>, clock: SharedClock) -> Self {
        Self {
            cfg,
            store,
            clock,
            account: OnceCell::new(),
        }
    }

    fn ca_err(&self, e: impl std::fmt::Display) -> AcmeError {
        AcmeError::Ca {
            issuer: self.cfg.name.clone(),
            detail: e.to_string(),
        }
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, instant_acme::Error>>,
    ) -> Result<T, AcmeError> {
        match tokio::time::timeout(ACME_CALL_TIMEOUT, fut).await {
            Ok(r) => r.map_err(|e| self.ca_err(describe(&e))),
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
                .map_err(|e| self.ca_err(format!("trust_root {}: {e}", root.display()))),
            None => Account::builder().map_err(|e| self.ca_err(e)),
        }
    }

    /// The account, loaded from the store or created (and stored) on first use.
    pub async fn account(&self) -> Result<&Account, AcmeError> {
        self.account.get_or_try_init(|| self.load_or_create()).await
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

    /// The profile to ask for, given the identifiers: `ip_profile` for IP identifiers when
    /// the directory offers profiles at all; none when it offers none.
    pub async fn profile_for(&self, has_ip: bool) -> Result<Option<String>, AcmeError> {
        let account = self.account().await?;
        let offered: Vec<String> = account.profiles().map(|p| p.name.to_owned()).collect();
        let wanted = &self.cfg.ip_profile;
        if !has_ip || wanted.is_empty() || offered.is_empty() {
            return Ok(None);
        }
        if offered.iter().any(|p| p == wanted) {
            Ok(Some(wanted.clone()))
        } else {
            Err(AcmeError::ProfileUnavailable {
                issuer: self.cfg.name.clone(),
                wanted: wanted.clone(),
                offered: offered.join(", "),
            })
        }
    }

    /// Creates an order and returns its pending HTTP-01 challenges.
    pub async fn new_order(
        &self,
        ips: &[IpAddr],
        profile: Option<&str>,
    ) -> Result<OrderDriver<'_>, AcmeError> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = ips.iter().map(|ip| Identifier::Ip(*ip)).collect();
        let mut req = NewOrder::new(&ids);
        if let Some(p) = profile {
            req = req.profile(p);
        }
        let mut order = self.timed("new order", account.new_order(&req)).await?;
        let mut challenges = Vec::new();
        let mut authzs = order.authorizations();
        while let Some(next) = tokio::time::timeout(ACME_CALL_TIMEOUT, authzs.next())
            .await
            .map_err(|_| AcmeError::Timeout {
                issuer: self.cfg.name.clone(),
                secs: ACME_CALL_TIMEOUT.as_secs(),
                what: "fetch authorization",
            })?
        {
            let mut authz = next.map_err(|e| self.ca_err(describe(&e)))?;
            let identifier = authz.identifier().identifier.clone();
            let ident = identifier_text(&identifier);
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(self.ca_err(format!("authorization for {ident} is {other:?}"))),
            }
            let ch = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| AcmeError::NoHttp01 {
                    issuer: self.cfg.name.clone(),
                    identifier: ident.clone(),
                })?;
            challenges.push((
                PendingChallenge {
                    identifier: ident,
                    token: ch.token.clone(),
                    key_authorization: ch.key_authorization().as_str().to_owned(),
                },
                ch.url.clone(),
            ));
        }
        Ok(OrderDriver {
            issuer: self,
            order,
            challenges,
        })
    }
}

/// One order in flight.
pub struct OrderDriver<'a> {
    issuer: &'a AcmeIssuer,
    order: Order,
    challenges: Vec<(PendingChallenge, String)>,
}

impl OrderDriver<'_> {
    pub fn url(&self) -> &str {
        self.order.url()
    }

    pub fn challenges(&self) -> Vec<PendingChallenge> {
        self.challenges.iter().map(|(c, _)| c.clone()).collect()
    }

    fn poll_policy(timeout: Duration) -> RetryPolicy {
        RetryPolicy::new()
            .initial_delay(Duration::from_millis(50))
            .backoff(1.5)
            .timeout(timeout)
    }

    /// Tells the CA every challenge is ready, waits until the order is ready. On failure the
    /// error carries the CA's problem text per identifier.
    pub async fn validate(&mut self, timeout: Duration) -> Result<(), AcmeError> {
        let issuer = self.issuer;
        let pending: Vec<String> = self
            .challenges
            .iter()
            .map(|(c, _)| c.token.clone())
            .collect();
        let mut authzs = self.order.authorizations();
        while let Some(next) = authzs.next().await {
            let mut authz = next.map_err(|e| issuer.ca_err(describe(&e)))?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut ch) = authz.challenge(ChallengeType::Http01) {
                if pending.contains(&ch.token) {
                    issuer.timed("set challenge ready", ch.set_ready()).await?;
                }
            }
        }
        let polled = tokio::time::timeout(
            timeout + Duration::from_secs(5),
            self.order.poll_ready(&Self::poll_policy(timeout)),
        )
        .await;
        let status = match polled {
            Err(_) | Ok(Err(instant_acme::Error::Timeout(_))) => {
                return Err(AcmeError::Validation(format!(
                    "the CA did not finish validating within {} s; is the agent's HTTP-01 responder reachable from the CA?",
                    timeout.as_secs()
                )))
            }
            Ok(Err(instant_acme::Error::Api(problem))) => {
                let per_id = self.identifier_problems().await;
                return Err(AcmeError::Validation(if per_id.is_empty() { problem_text(&problem) } else { per_id }));
            }
            Ok(Err(e)) => return Err(issuer.ca_err(describe(&e))),
            Ok(Ok(s)) => s,
        };
        match status {
            OrderStatus::Ready => Ok(()),
            other => {
                let per_id = self.identifier_problems().await;
                Err(AcmeError::Validation(if per_id.is_empty() {
                    format!("order is {other:?}")
                } else {
                    per_id
                }))
            }
        }
    }

    /// "IP: problem (type)" for every identifier whose challenge failed.
    async fn identifier_problems(&mut self) -> String {
        let mut out = Vec::new();
        let mut authzs = self.order.authorizations();
        while let Some(Ok(mut authz)) = authzs.next().await {
            if tokio::time::timeout(ACME_CALL_TIMEOUT, authz.refresh())
                .await
                .is_err()
            {
                continue;
            }
            let ident = identifier_text(&authz.identifier().identifier.clone());
            for ch in &authz.challenges {
                if let Some(problem) = &ch.error {
                    out.push(format!("{ident}: {}", problem_text(problem)));
                }
            }
            if authz.status == AuthorizationStatus::Invalid
                && !out.iter().any(|l| l.starts_with(&format!("{ident}:")))
            {
                out.push(format!("{ident}: authorization invalid"));
            }
        }
        out.join("; ")
    }

    /// Finalizes with the host's CSR and downloads the chain (PEM, leaf first).
    pub async fn finalize(
        &mut self,
        csr_der: &[u8],
        timeout: Duration,
    ) -> Result<String, AcmeError> {
        let issuer = self.issuer;
        issuer
            .timed("finalize", self.order.finalize_csr(csr_der))
            .await?;
        match tokio::time::timeout(
            timeout + Duration::from_secs(5),
            self.order.poll_certificate(&Self::poll_policy(timeout)),
        )
        .await
        {
            Ok(Ok(chain)) => Ok(chain),
            Ok(Err(e)) => Err(issuer.ca_err(describe(&e))),
            Err(_) => Err(AcmeError::Timeout {
                issuer: issuer.cfg.name.clone(),
                secs: timeout.as_secs(),
                what: "certificate",
            }),
        }
    }
}

fn identifier_text(id: &Identifier) -> String {
    match id {
        Identifier::Ip(ip) => ip.to_string(),
        Identifier::Dns(d) => d.clone(),
        other => format!("{other:?}"),
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

fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem_text(p),
        other => certfleet_shared::transport::error_chain(other),
    }
}
