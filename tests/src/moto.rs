//! [`MotoServer`]: moto's mock AWS server for one test, to drive the coordinator's
//! `route53` DNS provider against a real HTTP API (the Route53 REST/XML protocol).
//!
//! moto is Python (PyPI `moto[server]`, pinned in [`VENV`]). The harness installs it once
//! per machine into that venv (`/var/cache/certfleet-tests/moto-venv`,
//! override with env `MOTO_VENV`; see [`crate::venv`]).
//!
//! Each instance runs `moto_server -H 127.0.0.1 -p <free port>` in its own temp dir, killed
//! by PID on drop ([`ChildGuard`]). moto does not check request signatures: any dummy
//! credentials do. The helpers here talk to it with a minimal HTTP/1.1 client (plain HTTP
//! on loopback, `Connection: close`) with a dummy `Authorization` header: moto routes a
//! request to a service by its credential scope and checks no signature.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::process::ChildGuard;
use crate::venv::VenvSpec;
use crate::workdir::WorkDir;

/// The venv moto runs from (shared by every test run on the machine).
pub const VENV: VenvSpec = VenvSpec {
    name: "moto",
    dir_env: "MOTO_VENV",
    requirements: &["moto[server]==5.2.5"],
    imports: &["moto.server"],
    files: &["bin/moto_server"],
};
const START_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const XMLNS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";
/// moto's server finds the service of a request by the credential scope of its
/// `Authorization` header (it checks no signature): a dummy one naming route53.
const UNSIGNED_AUTH: &str = "AWS4-HMAC-SHA256 \
    Credential=AKIDEXAMPLE/20260101/us-east-1/route53/aws4_request, SignedHeaders=host, \
    Signature=0";

/// A running `moto_server`, stopped (by PID) when dropped.
#[derive(Debug)]
pub struct MotoServer {
    // Field order is drop order: the process dies before its directory goes.
    child: ChildGuard,
    addr: SocketAddr,
    venv_created_in: Option<Duration>,
    dir: WorkDir,
}

impl MotoServer {
    /// Makes sure the venv exists, starts moto on a free loopback port and waits until it
    /// answers Route53 requests.
    pub async fn start() -> anyhow::Result<Self> {
        let (venv, venv_created_in) = tokio::task::spawn_blocking(|| VENV.ensure())
            .await
            .context("venv task panicked")??;
        let dir = WorkDir::new("moto")?;
        let port = crate::net::free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(venv.join("bin/moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(dir.path());
        let child = ChildGuard::spawn("moto", &mut cmd, dir.path())?;
        let mut moto = Self {
            child,
            addr,
            venv_created_in,
            dir,
        };
        moto.wait_ready().await?;
        Ok(moto)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                anyhow::bail!(
                    "moto_server exited during startup ({st}); its log:\n{}",
                    self.logs()
                );
            }
            if let Ok((200, _)) = self.request("GET", "/2013-04-01/hostedzone", "").await {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                anyhow::bail!(
                    "moto_server on {} did not answer within {START_TIMEOUT:?}; its log:\n{}",
                    self.addr,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The endpoint to give the route53 provider (`endpoint = ...`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How long creating the venv took, when this start created it.
    pub fn venv_created_in(&self) -> Option<Duration> {
        self.venv_created_in
    }

    pub fn logs(&self) -> String {
        self.child.logs()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a public hosted zone; returns its id (`Z…`, without `/hostedzone/`).
    pub async fn create_hosted_zone(&self, zone: &str) -> anyhow::Result<String> {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <CreateHostedZoneRequest xmlns=\"{XMLNS}\"><Name>{zone}.</Name>\
             <CallerReference>certfleet-{}</CallerReference></CreateHostedZoneRequest>",
            rand::random::<u64>()
        );
        let (status, reply) = self
            .request("POST", "/2013-04-01/hostedzone", &body)
            .await?;
        anyhow::ensure!(
            status == 201 || status == 200,
            "CreateHostedZone: HTTP {status}: {reply}"
        );
        let id = between(&reply, "<Id>", "</Id>")
            .with_context(|| format!("no <Id> in CreateHostedZone's answer: {reply}"))?;
        Ok(id.trim_start_matches("/hostedzone/").to_owned())
    }

    /// The TXT values at `fqdn` in the hosted zone (quotes removed), sorted.
    pub async fn txt_values(&self, zone_id: &str, fqdn: &str) -> anyhow::Result<Vec<String>> {
        let (status, reply) = self
            .request(
                "GET",
                &format!("/2013-04-01/hostedzone/{zone_id}/rrset?name={fqdn}.&type=TXT"),
                "",
            )
            .await?;
        anyhow::ensure!(
            status == 200,
            "ListResourceRecordSets: HTTP {status}: {reply}"
        );
        let mut values = Vec::new();
        for set in reply.split("<ResourceRecordSet>").skip(1) {
            let name = between(set, "<Name>", "</Name>").unwrap_or_default();
            let rtype = between(set, "<Type>", "</Type>").unwrap_or_default();
            if name.trim_end_matches('.').eq_ignore_ascii_case(fqdn) && rtype == "TXT" {
                for v in set.split("<Value>").skip(1) {
                    let v = v.split("</Value>").next().unwrap_or_default();
                    values.push(unescape_xml(v).trim_matches('"').to_owned());
                }
            }
        }
        values.sort();
        Ok(values)
    }

    /// UPSERTs the TXT RRset at `fqdn` to exactly `values` (a record someone else wrote).
    pub async fn upsert_txt(
        &self,
        zone_id: &str,
        fqdn: &str,
        values: &[&str],
    ) -> anyhow::Result<()> {
        let records: String = values
            .iter()
            .map(|v| format!("<ResourceRecord><Value>&quot;{v}&quot;</Value></ResourceRecord>"))
            .collect();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <ChangeResourceRecordSetsRequest xmlns=\"{XMLNS}\"><ChangeBatch><Changes><Change>\
             <Action>UPSERT</Action><ResourceRecordSet><Name>{fqdn}.</Name><Type>TXT</Type>\
             <TTL>60</TTL><ResourceRecords>{records}</ResourceRecords></ResourceRecordSet>\
             </Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"
        );
        let (status, reply) = self
            .request(
                "POST",
                &format!("/2013-04-01/hostedzone/{zone_id}/rrset/"),
                &body,
            )
            .await?;
        anyhow::ensure!(
            status == 200,
            "ChangeResourceRecordSets: HTTP {status}: {reply}"
        );
        Ok(())
    }

    /// One plain HTTP/1.1 request; returns the status and the body.
    async fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let run = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
                 Authorization: {UNSIGNED_AUTH}\r\n\
                 Content-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                self.addr,
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            parse_response(&raw)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, run)
            .await
            .with_context(|| {
                format!("moto {method} {path}: no answer within {REQUEST_TIMEOUT:?}")
            })?
    }
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP answer without a header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

fn unescape_xml(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_are_read_plain_and_chunked() {
        let plain = b"HTTP/1.1 201 CREATED\r\nContent-Length: 5\r\n\r\n<a/>\n";
        assert_eq!(parse_response(plain).unwrap(), (201, "<a/>\n".to_owned()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n<a>\r\n4\r\n</a>\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, "<a></a>".to_owned())
        );
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn xml_fields_are_found() {
        assert_eq!(
            between("<Id>/hostedzone/Z1</Id>", "<Id>", "</Id>"),
            Some("/hostedzone/Z1")
        );
        assert_eq!(unescape_xml("&quot;v&quot;"), "\"v\"");
    }
}
