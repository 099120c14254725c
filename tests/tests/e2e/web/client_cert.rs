//! An operator's PKCS#12 (`operators add --p12`) in headless Chromium, the way a user puts it
//! there. Chromium on Linux takes client certificates from the NSS database in
//! `$HOME/.pki/nssdb` (each test browser has its own HOME), imported with Debian
//! `libnss3-tools` (`certutil`, `pk12util`), and presents one without a prompt — which a
//! headless browser could not answer — only where the managed policy
//! `AutoSelectCertificateForUrls` matches the site.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's Chromium reads managed (machine-wide) policies at start.
const POLICY_DIR: &str = "/etc/chromium/policies/managed";

/// A new NSS database in `home/.pki/nssdb` holding the PKCS#12 file's key and certificates,
/// imported with its password file as `operators add --p12` wrote it.
pub fn import_p12(home: &Path, p12: &Path, password_file: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb dir");
    let db = format!("sql:{}", db.display());
    nss_tool("certutil", &["-N", "-d", &db, "--empty-password"]);
    let (p12, password_file) = (p12.to_string_lossy(), password_file.to_string_lossy());
    nss_tool("pk12util", &["-i", &p12, "-d", &db, "-w", &password_file]);
    // The key is what makes it a client certificate for Chromium, not only the chain.
    let keys = nss_tool("certutil", &["-K", "-d", &db]);
    assert!(
        keys.lines().any(|l| l.starts_with('<')),
        "no private key in the NSS database after the import: {keys}"
    );
}

/// Runs one NSS tool; its stdout, or a panic with what it said.
fn nss_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool}: {e} (apt-get install libnss3-tools; tests/run.sh installs it)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The policy file that makes every Chromium on this machine present its client
/// certificate to `origin` without asking; removed on drop. Its name is unique to this test
/// process and origin, and its pattern is that one `https://ip:port`, so browsers of tests
/// running in parallel (their own ports) are not affected.
pub struct AutoSelectPolicy {
    file: PathBuf,
}

impl AutoSelectPolicy {
    pub fn for_origin(origin: &str) -> Self {
        let dir = Path::new(POLICY_DIR);
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("{POLICY_DIR}: {e} (the e2e tests run as root)"));
        let tag: String = origin
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let file = dir.join(format!("certfleet-test-{}-{tag}.json", std::process::id()));
        // Each list item is itself JSON text: Chromium's format for this policy.
        let rule = serde_json::json!({"pattern": origin, "filter": {}}).to_string();
        let policy = serde_json::json!({ "AutoSelectCertificateForUrls": [rule] });
        std::fs::write(&file, policy.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Self { file }
    }
}

impl Drop for AutoSelectPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}
