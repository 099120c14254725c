//! The web view in a real browser (Debian `chromium`, headless) against a running fleet:
//! two hosts with served certificates, one labelled with markup. Pages are refused without
//! an operator identity, a login link works once and its session shows the real hosts and
//! certificates, markup stays text, and an operator's client certificate — with curl, and
//! as its PKCS#12 imported into the browser's NSS database, with no login link — works until
//! the operator is revoked. Screenshots of every page go to `$CERTFLEET_TEST_ARTIFACTS/web/`
//! (default `target/test-artifacts/web/`).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::{Agent, ChildGuard, Coordinator, PebbleOptions};

use crate::support::{pebble_and_coordinator_with, ISSUE_TIMEOUT};

mod client_cert;

const MARKUP: &str = "<script>alert(1)</script>";

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("CERTFLEET_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts"))
        .join("web");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Longest one chromium run may take. A local page loads in a second or two; a site that
/// asks for a client certificate makes headless chromium wait forever for a choice nobody
/// can make, unless an `AutoSelectCertificateForUrls` policy matches the site.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

/// Headless chromium on one profile (its cookies kept between runs), with its own HOME so
/// that it reads its own NSS database (client certificates), never the machine user's.
struct Browser {
    dir: tempfile::TempDir,
    /// Chromium runs so far: names each run's logs in `dir`.
    runs: Cell<u32>,
    _auto_select: Option<client_cert::AutoSelectPolicy>,
}

impl Browser {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("browser dir");
        std::fs::create_dir(dir.path().join("home")).expect("browser HOME");
        Self {
            dir,
            runs: Cell::new(0),
            _auto_select: None,
        }
    }

    /// A browser holding the operator's PKCS#12 (imported as a user would) that presents it
    /// to `origin` without a prompt, for as long as it lives.
    fn with_client_cert(p12: &Path, password_file: &Path, origin: &str) -> Self {
        let mut browser = Self::new();
        client_cert::import_p12(&browser.home(), p12, password_file);
        browser._auto_select = Some(client_cert::AutoSelectPolicy::for_origin(origin));
        browser
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn run(&self, extra: &[&str], url: &str) -> String {
        self.output(extra, url).0
    }

    /// Chromium's stdout and stderr; a failed run panics with its stderr, and so does a run
    /// that is still going after [`CHROMIUM_TIMEOUT`] (then killed).
    fn output(&self, extra: &[&str], url: &str) -> (String, String) {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            // The coordinator's certificate is from the fleet CA, which this profile
            // does not trust; the page content is what is checked.
            "--ignore-certificate-errors",
            "--window-size=1280,1000",
        ])
        .env("HOME", self.home())
        .arg(format!(
            "--user-data-dir={}",
            self.dir.path().join("profile").display()
        ))
        .args(extra)
        .arg(url);
        self.runs.set(self.runs.get() + 1);
        let name = format!("chromium-{}", self.runs.get());
        let mut child = ChildGuard::spawn(&name, &mut cmd, self.dir.path())
            .expect("chromium runs (apt-get install chromium; tests/run.sh installs it)");
        let Some(status) = exit_within(&mut child, CHROMIUM_TIMEOUT) else {
            panic!(
                "chromium {url}: still running after {CHROMIUM_TIMEOUT:?}, killed — if the site \
                 asks for a client certificate, no AutoSelectCertificateForUrls policy matched \
                 it; its stderr: {}",
                child.stderr()
            )
        };
        assert!(status.success(), "chromium {url}: {}", child.stderr());
        (child.stdout(), child.stderr())
    }

    /// The page's DOM after load. Headless chromium now and then exits with success before
    /// it has printed the DOM (seen once in CI on a busy machine, on a 401 page): an empty
    /// dump is taken again, up to three times, and its stderr shown if it stays empty.
    fn dom(&self, url: &str) -> String {
        let mut stderr = String::new();
        for _ in 0..3 {
            let (dom, err) = self.output(&["--dump-dom"], url);
            if !dom.trim().is_empty() {
                return dom;
            }
            stderr = err;
        }
        panic!("chromium printed no DOM for {url} three times; its stderr: {stderr}")
    }

    /// A screenshot into the artifacts, and the DOM. Like the DOM dump, headless chromium
    /// now and then exits with success without having written the screenshot (seen once in
    /// CI on a busy machine): a missing file is taken again, up to three times.
    fn shot(&self, name: &str, url: &str) -> String {
        let file = artifacts().join(format!("{name}.png"));
        // An earlier run's file must not pass for this one's.
        let _ = std::fs::remove_file(&file);
        let mut stderr = String::new();
        for _ in 0..3 {
            let (_, err) = self.output(&[&format!("--screenshot={}", file.display())], url);
            if file.is_file() {
                return self.dom(url);
            }
            stderr = err;
        }
        panic!("{name}: chromium wrote no screenshot of {url} three times; its stderr: {stderr}")
    }
}

/// The child's exit status, or `None` if it is still running after `timeout`.
fn exit_within(child: &mut ChildGuard, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `curl` with optional client certificate: (status, headers + body).
fn curl(url: &str, cred: Option<&Path>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-D", "-", "-w", "\n%{http_code}"]);
    if let Some(dir) = cred {
        cmd.arg("--cert").arg(dir.join("operator.pem"));
        cmd.arg("--key").arg(dir.join("operator.key"));
    }
    let out = cmd.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.trim_end().rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

async fn login_link(coord: &Coordinator) -> String {
    let text = coord
        .cli_ok(&["web", "login", "--ttl", "5m"])
        .await
        .expect("web login");
    text.lines()
        .find(|l| l.starts_with("https://"))
        .unwrap_or_else(|| panic!("no link in {text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_in_a_browser_shows_the_fleet_to_operators_only() {
    let port = certfleet_tests::net::free_port().expect("port");
    let base = format!("https://127.0.0.1:{port}");
    let (pebble, coord) = pebble_and_coordinator_with(
        PebbleOptions::default(),
        CoordinatorOptions {
            extra_config: format!("\n[web]\nlisten = \"127.0.0.1:{port}\"\nurl = \"{base}\"\n"),
            ..CoordinatorOptions::default()
        },
    )
    .await;
    let mut alpha = Agent::new("alpha", pebble.http_port()).expect("agent alpha");
    alpha
        .enroll_with_labels(&coord, &[("note", MARKUP)])
        .await
        .expect("enroll alpha");
    let mut beta = Agent::new("beta", pebble.http_port()).expect("agent beta");
    beta.enroll_with(&coord).await.expect("enroll beta");
    for a in [&mut alpha, &mut beta] {
        a.start().expect("start agent");
        a.wait_installed(&coord, ISSUE_TIMEOUT)
            .await
            .expect("certificate installed");
    }
    let alpha_id = alpha.id().expect("alpha enrolled");
    let certs = coord.certs().await.expect("certs --json");
    let alpha_cert = certs
        .iter()
        .find(|c| c.host_id == alpha_id)
        .expect("alpha's certificate")
        .clone();

    // Nothing without an operator: the 401 page says how to log in.
    let (status, text) = curl(&format!("{base}/"), None);
    assert_eq!(status, 401, "{text}");
    for h in [
        "content-security-policy: default-src 'none'",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "x-frame-options: DENY",
    ] {
        assert!(
            text.to_lowercase().contains(&h.to_lowercase()),
            "{h}: {text}"
        );
    }
    let stranger = Browser::new();
    let dom = stranger.shot("01-unauthenticated", &format!("{base}/hosts"));
    assert!(
        dom.contains("Log in to see the fleet") && dom.contains("web login"),
        "{dom}"
    );
    assert!(!dom.contains("alpha"), "no fleet data without login: {dom}");

    // A login link: once, then the session shows the real fleet.
    let link = login_link(&coord).await;
    let browser = Browser::new();
    let landed = artifacts().join("02-login-link.png");
    let _ = std::fs::remove_file(&landed);
    browser.run(&[&format!("--screenshot={}", landed.display())], &link);
    assert!(landed.is_file());
    // The session cookie is the profile's now: the overview, without the token.
    let dom = browser.shot("02-overview", &format!("{base}/"));
    assert!(dom.contains("Fleet overview"), "{dom}");
    assert!(
        dom.contains("<b>2</b> hosts") && dom.contains("<b>2</b> connected"),
        "{dom}"
    );
    assert!(
        dom.contains(&alpha_cert.cert_id),
        "soonest expiries list it: {dom}"
    );
    let again = Browser::new().dom(&link);
    assert!(again.contains("already used"), "a link works once: {again}");

    let dom = browser.shot("03-hosts", &format!("{base}/hosts"));
    assert!(dom.contains("alpha") && dom.contains("beta"), "{dom}");
    // Markup in a label is shown as text: escaped in the DOM, never an element.
    assert!(
        dom.contains("note=&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!dom.contains(MARKUP), "{dom}");
    let dom = browser.shot("04-host", &format!("{base}/hosts/{alpha_id}"));
    assert!(
        dom.contains(&alpha_cert.cert_id) && dom.contains("host_enrolled"),
        "{dom}"
    );
    assert!(dom.contains("certificate_installed"), "timeline: {dom}");
    assert!(!dom.contains(MARKUP), "{dom}");
    let dom = browser.shot(
        "05-certificate",
        &format!("{base}/certs/{}", alpha_cert.cert_id),
    );
    let serial = alpha_cert.serial.clone().expect("issued");
    assert!(
        dom.contains(&serial) && dom.contains("Renewal plan"),
        "{dom}"
    );
    assert!(
        dom.contains("Pebble"),
        "the chain names pebble's intermediate: {dom}"
    );
    let dom = browser.shot("06-certificates", &format!("{base}/certs"));
    assert!(dom.contains(&alpha_cert.cert_id), "{dom}");
    let dom = browser.shot(
        "07-audit-search",
        &format!("{base}/audit?host=alpha&kind=certificate_issued"),
    );
    assert!(
        dom.contains("certificate_issued") && dom.contains(&serial),
        "{dom}"
    );
    assert!(
        !dom.contains("host_enrolled</td>"),
        "filtered by kind: {dom}"
    );
    browser.shot("08-audit", &format!("{base}/audit"));

    // The export: JSON Lines of the same search (the session's cookie is the browser's,
    // so the client certificate path below is used for it).
    let viewer = coord.dir().join("op-viewer");
    let out = viewer.to_string_lossy().into_owned();
    coord
        .cli_ok(&[
            "operators",
            "add",
            "ann",
            "--role",
            "viewer",
            "--out",
            &out,
            "--p12",
        ])
        .await
        .expect("operators add --p12");
    assert!(
        viewer.join("operator.p12").is_file() && viewer.join("operator.p12.password").is_file()
    );
    let (status, text) = curl(&format!("{base}/"), Some(&viewer));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("ann (viewer, client certificate)"), "{text}");
    let (status, text) = curl(
        &format!("{base}/audit.jsonl?host={alpha_id}&kind=certificate_issued"),
        Some(&viewer),
    );
    assert_eq!(status, 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).expect("body");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!lines.is_empty(), "{body}");
    assert!(lines.iter().all(|r| r["kind"] == "certificate_issued"
        && r["host_id"].as_str() == Some(alpha_id.to_string().as_str())));

    // The same credential as a user holds it: the PKCS#12 imported into a browser, which
    // opens the web view with no login link (a fresh profile, no cookie) and sees the fleet.
    let holder = Browser::with_client_cert(
        &viewer.join("operator.p12"),
        &viewer.join("operator.p12.password"),
        &base,
    );
    let dom = holder.shot("09-client-certificate", &format!("{base}/"));
    assert!(
        dom.contains("Fleet overview") && dom.contains("ann (viewer, client certificate)"),
        "{dom}"
    );
    assert!(
        dom.contains("<b>2</b> hosts") && dom.contains(&alpha_cert.cert_id),
        "{dom}"
    );
    let dom = holder.dom(&format!("{base}/hosts"));
    assert!(dom.contains("alpha") && dom.contains("beta"), "{dom}");

    // Revoked: the certificate is refused at the next request, by curl and by the browser
    // (which still presents it: the refusal names it, not a missing certificate).
    coord
        .cli_ok(&["operators", "revoke", "ann"])
        .await
        .expect("revoke");
    let (status, text) = curl(&format!("{base}/"), Some(&viewer));
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("revoked"), "{text}");
    let dom = holder.shot("10-client-certificate-revoked", &format!("{base}/"));
    assert!(
        dom.contains("Log in to see the fleet")
            && dom.contains("client certificate refused")
            && dom.contains("revoked"),
        "{dom}"
    );
    assert!(
        !dom.contains("Fleet overview") && !dom.contains(&alpha_cert.cert_id),
        "no fleet data once revoked: {dom}"
    );
}
