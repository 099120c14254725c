//! The `route53` provider: the AWS Route53 REST API (version 2013-04-01), requests signed
//! with SigV4 (`aws-sigv4`) and sent with hyper's HTTP/1.1 client, one connection per request
//! driven inside the call (no spawned task, no pool).
//!
//! Present: read the TXT RRset (ListResourceRecordSets), UPSERT it with our values added,
//! wait until the change is INSYNC (GetChange). Cleanup: read it again, UPSERT what remains
//! without our values, or DELETE it (exactly as it stands) when only ours were left;
//! nothing to do when they are gone. The hosted zone is `hosted_zone_id`, or the zone of
//! that exact name found with ListHostedZonesByName (cached).
//!
//! Credentials, read on every request (so a rotated key is picked up): the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`), else the
//! shared credentials file (`credentials_file`, env `AWS_SHARED_CREDENTIALS_FILE`, or
//! `~/.aws/credentials`) at `profile` (env `AWS_PROFILE`, or `default`).

use super::error::{CallError, DnsErrorKind};
use super::secret::{read_secret_file, Secret};
use crate::config::DnsProviderConfig;
use certfleet_shared::clock::Clock;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

const DEFAULT_ENDPOINT: &str = "https://route53.amazonaws.com";
const DEFAULT_REGION: &str = "us-east-1";
const API: &str = "/2013-04-01";
const XMLNS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";
/// Largest API answer read.
const MAX_BODY: usize = 1024 * 1024;

pub(crate) struct Route53 {
    endpoint: String,
    region: String,
    hosted_zone_id: Option<String>,
    profile: Option<String>,
    credentials_file: Option<PathBuf>,
    timeout: Duration,
    poll_interval: Duration,
    insync_timeout: Duration,
    clock: Arc<dyn Clock>,
    /// TLS for an https endpoint (system roots).
    tls: Arc<rustls::ClientConfig>,
    /// Zone apex → hosted zone id, found once.
    zone_ids: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Route53 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route53")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("hosted_zone_id", &self.hosted_zone_id)
            .field("profile", &self.profile)
            .field("credentials_file", &self.credentials_file)
            .finish()
    }
}

/// One set of AWS credentials; the secret parts redacted in `Debug`.
#[derive(Debug)]
struct Creds {
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
}

impl Route53 {
    pub fn new(cfg: &DnsProviderConfig, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let tls = tls_config(&endpoint)?;
        Ok(Self {
            endpoint,
            region: cfg
                .region
                .clone()
                .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            hosted_zone_id: cfg
                .hosted_zone_id
                .as_deref()
                .map(|id| id.trim_start_matches("/hostedzone/").to_owned()),
            profile: cfg.profile.clone(),
            credentials_file: cfg.credentials_file.clone(),
            timeout: cfg.timeout(),
            poll_interval: cfg.poll_interval(),
            insync_timeout: cfg.propagation_timeout(),
            clock,
            tls,
            zone_ids: Mutex::new(HashMap::new()),
        })
    }

    /// Adds `values` to the TXT RRset at `fqdn` and waits until the change is INSYNC.
    pub async fn add(
        &self,
        zone: &str,
        fqdn: &str,
        values: &[String],
        ttl: u32,
    ) -> Result<(), CallError> {
        let zone_id = self.zone_id(zone).await?;
        let mut all = self
            .current(&zone_id, fqdn)
            .await?
            .map(|(_, values)| values)
            .unwrap_or_default();
        for v in values {
            if !all.contains(v) {
                all.push(v.clone());
            }
        }
        let change = self.change(&zone_id, "UPSERT", fqdn, ttl, &all).await?;
        self.wait_insync(&change).await
    }

    /// Removes exactly `values` from the TXT RRset at `fqdn` (nothing to do when gone).
    pub async fn remove(&self, zone: &str, fqdn: &str, values: &[String]) -> Result<(), CallError> {
        let zone_id = self.zone_id(zone).await?;
        let Some((ttl, current)) = self.current(&zone_id, fqdn).await? else {
            return Ok(());
        };
        let rest: Vec<String> = current
            .iter()
            .filter(|v| !values.contains(v))
            .cloned()
            .collect();
        if rest.len() == current.len() {
            return Ok(());
        }
        let change = if rest.is_empty() {
            self.change(&zone_id, "DELETE", fqdn, ttl, &current).await?
        } else {
            self.change(&zone_id, "UPSERT", fqdn, ttl, &rest).await?
        };
        self.wait_insync(&change).await
    }

    async fn zone_id(&self, zone: &str) -> Result<String, CallError> {
        if let Some(id) = &self.hosted_zone_id {
            return Ok(id.clone());
        }
        if let Some(id) = self.zone_ids.lock().ok().and_then(|m| m.get(zone).cloned()) {
            return Ok(id);
        }
        let body = self
            .call(
                "GET",
                &format!("{API}/hostedzonesbyname?dnsname={zone}.&maxitems=10"),
                None,
            )
            .await?;
        let id = parse_zone_id(&body, zone)?.ok_or_else(|| {
            CallError::config(format!(
                "no Route53 hosted zone named {zone} in this account; create it, or set \
                 hosted_zone_id"
            ))
        })?;
        if let Ok(mut m) = self.zone_ids.lock() {
            m.insert(zone.to_owned(), id.clone());
        }
        Ok(id)
    }

    /// The TTL and values of the TXT RRset at `fqdn`, if there is one.
    async fn current(
        &self,
        zone_id: &str,
        fqdn: &str,
    ) -> Result<Option<(u32, Vec<String>)>, CallError> {
        let body = self
            .call(
                "GET",
                &format!("{API}/hostedzone/{zone_id}/rrset?name={fqdn}.&type=TXT&maxitems=1"),
                None,
            )
            .await?;
        parse_rrset(&body, fqdn)
    }

    /// Sends one change; returns the change id.
    async fn change(
        &self,
        zone_id: &str,
        action: &str,
        fqdn: &str,
        ttl: u32,
        values: &[String],
    ) -> Result<String, CallError> {
        let records: String = values
            .iter()
            .map(|v| {
                format!(
                    "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                    xml_escape(&quote_txt(v))
                )
            })
            .collect();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <ChangeResourceRecordSetsRequest xmlns=\"{XMLNS}\"><ChangeBatch>\
             <Comment>certfleet DNS-01</Comment><Changes><Change><Action>{action}</Action>\
             <ResourceRecordSet><Name>{}.</Name><Type>TXT</Type><TTL>{ttl}</TTL>\
             <ResourceRecords>{records}</ResourceRecords></ResourceRecordSet></Change>\
             </Changes></ChangeBatch></ChangeResourceRecordSetsRequest>",
            xml_escape(fqdn)
        );
        let reply = self
            .call(
                "POST",
                &format!("{API}/hostedzone/{zone_id}/rrset/"),
                Some(body),
            )
            .await?;
        let (id, _status) = parse_change(&reply)?;
        Ok(id)
    }

    async fn wait_insync(&self, change_id: &str) -> Result<(), CallError> {
        let start = Instant::now();
        loop {
            let body = self
                .call("GET", &format!("{API}/change/{change_id}"), None)
                .await?;
            let (_, status) = parse_change(&body)?;
            if status == "INSYNC" {
                return Ok(());
            }
            if start.elapsed() >= self.insync_timeout {
                return Err(CallError::new(
                    DnsErrorKind::NotPropagated,
                    format!(
                        "Route53 change {change_id} is still {status} after {:?} \
                         (propagation_timeout)",
                        self.insync_timeout
                    ),
                ));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    fn credentials(&self) -> Result<Creds, CallError> {
        if let (Ok(id), Ok(secret)) = (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            if !id.is_empty() && !secret.is_empty() {
                return Ok(Creds {
                    access_key_id: id,
                    secret_access_key: Secret::new(secret),
                    session_token: std::env::var("AWS_SESSION_TOKEN")
                        .ok()
                        .filter(|t| !t.is_empty())
                        .map(Secret::new),
                });
            }
        }
        let path = self
            .credentials_file
            .clone()
            .or_else(|| std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))
            .ok_or_else(|| {
                CallError::config(
                    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the \
                     coordinator's environment, or credentials_file",
                )
            })?;
        let profile = self
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok())
            .unwrap_or_else(|| "default".to_owned());
        let text = read_secret_file(&path, "AWS credentials file").map_err(|e| {
            CallError::config(format!(
                "no AWS credentials in the environment (AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY), and the shared credentials file: {e}"
            ))
        })?;
        parse_credentials(text.expose(), &profile).ok_or_else(|| {
            CallError::config(format!(
                "{} has no profile [{profile}] with aws_access_key_id and \
                 aws_secret_access_key",
                path.display()
            ))
        })
    }

    /// One signed API call; the body of a 2xx answer, else the API's error mapped.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<String, CallError> {
        let creds = self.credentials()?;
        let url = format!("{}{path}", self.endpoint);
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| CallError::config(format!("bad request URL {url}: {e}")))?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| CallError::config(format!("endpoint {} has no host", self.endpoint)))?;
        let body_bytes = body.unwrap_or_default().into_bytes();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", &host);
        if method == "POST" {
            req = req.header("content-type", "application/xml");
        }
        let mut req = req
            .body(Full::new(Bytes::from(body_bytes.clone())))
            .map_err(|e| CallError::config(format!("bad request: {e}")))?;
        self.sign(&mut req, &creds, &body_bytes)?;
        let what = format!("Route53 {method} {path}");
        let send = async {
            let (status, body) = self
                .exchange(req)
                .await
                .map_err(|e| CallError::transient(format!("{what} at {}: {e}", self.endpoint)))?;
            Ok::<_, CallError>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let (status, text) = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| {
                CallError::timeout(format!(
                    "{what} at {} did not answer within {:?}",
                    self.endpoint, self.timeout
                ))
            })??;
        if status.is_success() {
            return Ok(text);
        }
        Err(api_error(&what, status.as_u16(), &text))
    }

    /// One request on its own connection (plain or TLS), driven inside this future: no
    /// task is spawned, nothing outlives the call. Route53 calls are few per order, so
    /// there is no pool to keep.
    async fn exchange(
        &self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let uri = req.uri().clone();
        let host = uri.host().ok_or("no host in the URL")?.to_owned();
        let bare = host.trim_matches(['[', ']']).to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        if https {
            let name = rustls::pki_types::ServerName::try_from(bare)
                .map_err(|e| format!("bad server name {host}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            http1_exchange(hyper_util::rt::TokioIo::new(stream), req).await
        } else {
            http1_exchange(hyper_util::rt::TokioIo::new(tcp), req).await
        }
    }

    fn sign(
        &self,
        req: &mut hyper::Request<Full<Bytes>>,
        creds: &Creds,
        body: &[u8],
    ) -> Result<(), CallError> {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let identity = aws_smithy_runtime_api::client::identity::Identity::from(
            aws_credential_types::Credentials::new(
                &creds.access_key_id,
                creds.secret_access_key.expose(),
                creds.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "certfleet",
            ),
        );
        let now =
            UNIX_EPOCH + Duration::from_secs(u64::try_from(self.clock.now_unix()).unwrap_or(0));
        let bad = |e: String| CallError::config(format!("cannot sign the Route53 request: {e}"));
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("route53")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| bad(e.to_string()))?
            .into();
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
            .collect();
        let uri = req.uri().to_string();
        let signable = SignableRequest::new(
            req.method().as_str(),
            &uri,
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| bad(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| bad(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(req);
        Ok(())
    }
}

/// TLS to an https endpoint, trusting the system's roots. Without any (no
/// ca-certificates), only a plain-HTTP endpoint (a mock) works.
fn tls_config(endpoint: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system root rustls cannot use is skipped, as every rustls client does.
        let _ = roots.add(cert);
    }
    if roots.is_empty() && endpoint.starts_with("https://") {
        return Err(format!(
            "no system CA certificates to check {endpoint}; install the ca-certificates \
             package"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends `req` over `io` (HTTP/1.1) and reads the whole answer (at most [`MAX_BODY`]),
/// polling the connection in the same future.
async fn http1_exchange<I>(
    io: I,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let work = async move {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    let mut work = std::pin::pin!(work);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = &mut work => result,
        closed = &mut conn => {
            closed.map_err(|e| format!("connection: {e}"))?;
            work.await
        }
    }
}

/// Maps an API error answer (`<ErrorResponse><Error><Code>…`) to a [`CallError`].
fn api_error(what: &str, status: u16, body: &str) -> CallError {
    let doc = roxmltree::Document::parse(body).ok();
    let field = |name: &str| {
        doc.as_ref()
            .and_then(|d| find_text(d.root(), name))
            .unwrap_or_default()
    };
    let code = field("Code");
    let message = field("Message");
    let detail = if code.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status} {code}: {message}")
    };
    let kind = match code.as_str() {
        "Throttling" | "PriorRequestNotComplete" | "ServiceUnavailable" => DnsErrorKind::Transient,
        "AccessDenied"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "NoSuchHostedZone"
        | "InvalidInput"
        | "ExpiredToken" => DnsErrorKind::Config,
        _ if status >= 500 || status == 429 => DnsErrorKind::Transient,
        _ if status == 403 || status == 401 => DnsErrorKind::Config,
        _ => DnsErrorKind::Transient,
    };
    let hint = match kind {
        DnsErrorKind::Config
            if status == 403 || code.contains("Signature") || code.contains("Token") =>
        {
            "; check the AWS credentials and that they may change this hosted zone"
        }
        _ => "",
    };
    CallError::new(kind, format!("{detail}{hint}"))
}

fn find_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    node.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .map(|n| n.text().unwrap_or_default().trim().to_owned())
}

fn parse_xml(body: &str) -> Result<roxmltree::Document<'_>, CallError> {
    roxmltree::Document::parse(body)
        .map_err(|e| CallError::transient(format!("Route53 answered unreadable XML: {e}")))
}

/// The id of the hosted zone named exactly `zone` in a ListHostedZonesByName answer; a
/// public zone before a private one of the same name (public resolvers see the public one).
fn parse_zone_id(body: &str, zone: &str) -> Result<Option<String>, CallError> {
    let doc = parse_xml(body)?;
    let mut zones: Vec<(bool, String)> = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "HostedZone")
        .filter(|hz| {
            find_text(*hz, "Name")
                .is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(zone))
        })
        .filter_map(|hz| {
            let private = find_text(hz, "PrivateZone").as_deref() == Some("true");
            let id = find_text(hz, "Id")?;
            Some((private, id.trim_start_matches("/hostedzone/").to_owned()))
        })
        .collect();
    zones.sort_by_key(|(private, _)| *private);
    Ok(zones.into_iter().next().map(|(_, id)| id))
}

/// The TTL and values of the TXT RRset named `fqdn` in a ListResourceRecordSets answer.
fn parse_rrset(body: &str, fqdn: &str) -> Result<Option<(u32, Vec<String>)>, CallError> {
    let doc = parse_xml(body)?;
    let Some(set) = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "ResourceRecordSet")
        .find(|s| {
            find_text(*s, "Name")
                .is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(fqdn))
                && find_text(*s, "Type").as_deref() == Some("TXT")
        })
    else {
        return Ok(None);
    };
    let ttl = find_text(set, "TTL")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let values: Vec<String> = set
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "Value")
        .map(|n| unquote_txt(n.text().unwrap_or_default().trim()))
        .collect();
    Ok((!values.is_empty()).then_some((ttl, values)))
}

/// The change's id and status from a ChangeResourceRecordSets or GetChange answer.
fn parse_change(body: &str) -> Result<(String, String), CallError> {
    let doc = parse_xml(body)?;
    let info = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "ChangeInfo")
        .ok_or_else(|| CallError::transient("Route53's answer has no ChangeInfo"))?;
    let id = find_text(info, "Id").unwrap_or_default();
    let id = id.trim_start_matches("/change/").to_owned();
    let status = find_text(info, "Status").unwrap_or_default();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(CallError::transient(format!(
            "Route53 sent a change id {id:?}"
        )));
    }
    Ok((id, status))
}

/// Every reader of Route53 answers on one text (the fuzz target's entry).
pub(crate) fn parse_untrusted(body: &str) {
    std::hint::black_box(parse_zone_id(body, "example.net").ok());
    std::hint::black_box(parse_rrset(body, "_acme-challenge.example.net").ok());
    std::hint::black_box(parse_change(body).ok());
    std::hint::black_box(api_error("Route53 GET /", 400, body));
    std::hint::black_box(unquote_txt(body));
}

/// A TXT value in Route53's presentation form: one quoted string, `"` and `\` escaped.
fn quote_txt(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The inverse of [`quote_txt`], also joining several quoted strings (`"a" "b"` → `ab`).
fn unquote_txt(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    let mut inside = false;
    while let Some(c) = chars.next() {
        match (inside, c) {
            (false, '"') => inside = true,
            (false, _) => {}
            (true, '"') => inside = false,
            (true, '\\') => out.extend(chars.next()),
            (true, c) => out.push(c),
        }
    }
    if out.is_empty() && !v.starts_with('"') {
        v.to_owned()
    } else {
        out
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The keys of `[profile]` in a shared credentials file (INI).
fn parse_credentials(text: &str, profile: &str) -> Option<Creds> {
    let mut in_profile = false;
    let mut map = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            in_profile = section == profile || section.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if in_profile {
            if let Some((k, v)) = line.split_once('=') {
                map.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
    }
    Some(Creds {
        access_key_id: map.remove("aws_access_key_id").filter(|v| !v.is_empty())?,
        secret_access_key: Secret::new(
            map.remove("aws_secret_access_key")
                .filter(|v| !v.is_empty())?,
        ),
        session_token: map
            .remove("aws_session_token")
            .filter(|v| !v.is_empty())
            .map(Secret::new),
    })
}

#[cfg(test)]
#[path = "route53_tests.rs"]
mod tests;
