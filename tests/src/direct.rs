//! The baseline: a minimal direct instant-acme client that issues an IP certificate from
//! pebble with nothing in between (its own HTTP-01 responder, its own key and CSR). The
//! benchmark compares a full certfleet issuance against this, and a harness test uses it
//! to prove pebble + addresses + checks work without the binaries under test.
//! [`DirectClient::issue_for`] orders any identifiers (IPs or DNS names) and leaves
//! answering HTTP-01 to the caller (e.g. a namespace host's web server webroot).

use std::net::IpAddr;

use anyhow::Context as _;
use instant_acme::{
    Account, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

use crate::http01::Http01Responder;
use crate::pebble::Pebble;

pub struct DirectClient {
    account: Account,
    http_port: u16,
}

/// What one direct issuance produced.
#[derive(Debug)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

impl DirectClient {
    /// Creates a fresh ACME account on `pebble`.
    pub async fn new(pebble: &Pebble) -> anyhow::Result<Self> {
        let (account, _creds) = Account::builder_with_root(pebble.ca_pem_path())?
            .create(
                &NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                pebble.directory_url(),
                None,
            )
            .await
            .context("creating the direct client's ACME account")?;
        Ok(Self {
            account,
            http_port: pebble.http_port(),
        })
    }

    /// One certificate for exactly `ips`: serve HTTP-01 on each at pebble's httpPort,
    /// order, validate, finalize with a CN-less CSR, download.
    pub async fn issue(&self, ips: &[IpAddr], retry: &RetryPolicy) -> anyhow::Result<Issued> {
        let responder = Http01Responder::bind(ips, self.http_port).await?;
        let identifiers: Vec<Identifier> = ips.iter().map(|ip| Identifier::Ip(*ip)).collect();
        let issued = self
            .issue_for(&identifiers, retry, |token, key_auth| {
                responder.insert(token, key_auth);
                Ok(())
            })
            .await;
        drop(responder);
        issued
    }

    /// One certificate for exactly `identifiers` (IPs and/or DNS names) over HTTP-01:
    /// `present(token, key_authorization)` must make `key_authorization` answer at
    /// `http://<identifier>/.well-known/acme-challenge/<token>` on pebble's httpPort
    /// before it returns. Then validate, finalize with a CN-less CSR naming exactly the
    /// identifiers, download.
    pub async fn issue_for(
        &self,
        identifiers: &[Identifier],
        retry: &RetryPolicy,
        mut present: impl FnMut(&str, &str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Issued> {
        let mut sans = Vec::new();
        for id in identifiers {
            sans.push(match id {
                Identifier::Ip(ip) => SanType::IpAddress(*ip),
                Identifier::Dns(name) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .with_context(|| format!("not a DNS name: {name:?}"))?,
                ),
                other => anyhow::bail!("the direct client cannot order {other:?}"),
            });
        }
        let mut order = self
            .account
            .new_order(&NewOrder::new(identifiers))
            .await
            .context("new order")?;
        {
            let mut auths = order.authorizations();
            while let Some(auth) = auths.next().await {
                let mut auth = auth.context("authorization")?;
                let mut ch = auth
                    .challenge(ChallengeType::Http01)
                    .context("no http-01 challenge offered")?;
                present(&ch.token, ch.key_authorization().as_str())
                    .context("presenting the HTTP-01 challenge")?;
                ch.set_ready().await.context("set_ready")?;
            }
        }
        let status = order.poll_ready(retry).await.context("poll_ready")?;
        anyhow::ensure!(
            status == OrderStatus::Ready,
            "order is {status:?}, not ready"
        );

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        let csr = params.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await.context("finalize")?;
        let chain_pem = order
            .poll_certificate(retry)
            .await
            .context("poll_certificate")?;
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
}
