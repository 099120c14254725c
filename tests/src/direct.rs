//! The baseline: a minimal direct instant-acme client that issues a certificate from
//! pebble with nothing in between (its own HTTP-01 or TLS-ALPN-01 responder, its own key
//! and CSR). The benchmark compares a full certfleet issuance against this, and a harness
//! test uses it to prove pebble + addresses + checks work without the binaries under test.
//! [`DirectClient::issue`] is an IP certificate over HTTP-01; [`DirectClient::issue_http01_on`]
//! and [`DirectClient::issue_tls_alpn01_on`] order any identifiers (IPs or DNS names that
//! resolve, for pebble, to the given addresses) and answer on those addresses;
//! [`DirectClient::issue_for`] leaves answering HTTP-01 to the caller (e.g. a namespace
//! host's web server webroot); [`DirectClient::issue_dns01_via`] answers DNS-01 (wildcards
//! too) by writing every TXT value of the order into a knot server in one update.

use std::net::IpAddr;

use anyhow::Context as _;
use instant_acme::{
    Account, ChallengeType, Identifier, KeyAuthorization, NewAccount, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

use crate::dns::{KnotServer, Record};
use crate::http01::Http01Responder;
use crate::pebble::Pebble;
use crate::tlsalpn01::TlsAlpn01Responder;

pub struct DirectClient {
    account: Account,
    http_port: u16,
    tls_port: u16,
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
            tls_port: pebble.tls_port(),
        })
    }

    /// One certificate for exactly `ips`: serve HTTP-01 on each at pebble's httpPort,
    /// order, validate, finalize with a CN-less CSR, download.
    pub async fn issue(&self, ips: &[IpAddr], retry: &RetryPolicy) -> anyhow::Result<Issued> {
        let identifiers: Vec<Identifier> = ips.iter().map(|ip| Identifier::Ip(*ip)).collect();
        self.issue_http01_on(&identifiers, ips, retry).await
    }

    /// One certificate for exactly `identifiers` over HTTP-01, answered on `ips` at
    /// pebble's httpPort (every name among `identifiers` must resolve, for pebble, to
    /// addresses among `ips`). The responder is bound before the order and dropped after.
    pub async fn issue_http01_on(
        &self,
        identifiers: &[Identifier],
        ips: &[IpAddr],
        retry: &RetryPolicy,
    ) -> anyhow::Result<Issued> {
        let responder = Http01Responder::bind(ips, self.http_port).await?;
        let issued = self
            .issue_for(identifiers, retry, |token, key_auth| {
                responder.insert(token, key_auth);
                Ok(())
            })
            .await;
        drop(responder);
        issued
    }

    /// One certificate for exactly `identifiers` over TLS-ALPN-01, answered on `ips` at
    /// pebble's tlsPort with a validation certificate per identifier (see
    /// [`TlsAlpn01Responder`]); names must resolve, for pebble, to addresses among `ips`.
    pub async fn issue_tls_alpn01_on(
        &self,
        identifiers: &[Identifier],
        ips: &[IpAddr],
        retry: &RetryPolicy,
    ) -> anyhow::Result<Issued> {
        let responder = TlsAlpn01Responder::bind(ips, self.tls_port).await?;
        let issued = self
            .issue_with(
                identifiers,
                ChallengeType::TlsAlpn01,
                retry,
                |id, _token, key_auth| responder.insert(id, key_auth.digest().as_ref()),
            )
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
        self.issue_with(
            identifiers,
            ChallengeType::Http01,
            retry,
            |_id, token, key_auth| present(token, key_auth.as_str()),
        )
        .await
    }

    /// One certificate for `names` (DNS names and `*.` wildcards) by DNS-01: every TXT
    /// value of the order is written into `knot` in one TSIG-signed update (a wildcard and
    /// its apex share `_acme-challenge.<base>`), then every challenge is set ready;
    /// finalize, download, and the records are removed again.
    pub async fn issue_dns01_via(
        &self,
        knot: &KnotServer,
        names: &[String],
        retry: &RetryPolicy,
    ) -> anyhow::Result<Issued> {
        let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
        let sans = sans_of(&identifiers)?;
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("new order")?;
        let mut records = Vec::new();
        {
            let mut auths = order.authorizations();
            while let Some(auth) = auths.next().await {
                let mut auth = auth.context("authorization")?;
                let base = match &auth.identifier().identifier {
                    Identifier::Dns(d) => d.clone(),
                    other => anyhow::bail!("DNS-01 for {other:?}"),
                };
                let ch = auth
                    .challenge(ChallengeType::Dns01)
                    .context("no dns-01 challenge offered")?;
                records.push(Record::txt(
                    &format!("_acme-challenge.{base}"),
                    &ch.key_authorization().dns_value(),
                ));
            }
        }
        knot.add_records(&records)
            .await
            .context("writing the TXT records")?;
        let result = async {
            let mut auths = order.authorizations();
            while let Some(auth) = auths.next().await {
                let mut auth = auth.context("authorization")?;
                let mut ch = auth
                    .challenge(ChallengeType::Dns01)
                    .context("no dns-01 challenge offered")?;
                ch.set_ready().await.context("set_ready")?;
            }
            finish(&mut order, sans, retry).await
        }
        .await;
        knot.remove_records(&records)
            .await
            .context("removing the TXT records")?;
        result
    }

    /// The order itself, for challenges of `kind`: `present(identifier, token,
    /// key_authorization)` must make the challenge answerable before it returns.
    async fn issue_with(
        &self,
        identifiers: &[Identifier],
        kind: ChallengeType,
        retry: &RetryPolicy,
        mut present: impl FnMut(&Identifier, &str, &KeyAuthorization) -> anyhow::Result<()>,
    ) -> anyhow::Result<Issued> {
        let sans = sans_of(identifiers)?;
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
                    .challenge(kind.clone())
                    .with_context(|| format!("no {kind:?} challenge offered"))?;
                let id = ch.identifier().identifier.clone();
                present(&id, &ch.token, &ch.key_authorization())
                    .with_context(|| format!("presenting the {kind:?} challenge for {id:?}"))?;
                ch.set_ready().await.context("set_ready")?;
            }
        }
        finish(&mut order, sans, retry).await
    }
}

/// The CSR's SANs for `identifiers`: iPAddress for IPs, dNSName for names and wildcards.
fn sans_of(identifiers: &[Identifier]) -> anyhow::Result<Vec<SanType>> {
    identifiers
        .iter()
        .map(|id| {
            Ok(match id {
                Identifier::Ip(ip) => SanType::IpAddress(*ip),
                Identifier::Dns(name) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .with_context(|| format!("not a DNS name: {name:?}"))?,
                ),
                other => anyhow::bail!("the direct client cannot order {other:?}"),
            })
        })
        .collect()
}

/// Every challenge is set ready: wait until the order is ready, finalize with a fresh key
/// and a CN-less CSR naming exactly `sans`, download the chain.
async fn finish(
    order: &mut Order,
    sans: Vec<SanType>,
    retry: &RetryPolicy,
) -> anyhow::Result<Issued> {
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
