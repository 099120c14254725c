//! Where the binaries under test live.
//!
//! Cargo only exposes `CARGO_BIN_EXE_*` for the package's own binaries, so the harness
//! looks next to the running executable: `target/<profile>/deps/<test>` →
//! `target/<profile>/`. `CERTFLEET_BIN_DIR` overrides this.

use std::path::PathBuf;

use anyhow::Context as _;

pub const COORDINATOR: &str = "certfleet-coordinator";
pub const AGENT: &str = "certfleet-agent";

/// The directory holding the certfleet binaries.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CERTFLEET_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe
        .parent()
        .context("current_exe has no parent")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Full path of binary `name`, or a clear error telling how to build it.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if !path.is_file() {
        let release_hint = if dir.ends_with("release") {
            " (benchmarks use the release profile: `cargo build --release --workspace --bins`)"
        } else {
            ""
        };
        anyhow::bail!(
            "{} not found: run `cargo build --workspace --bins` first, or tests/run.sh{} \
             (or set CERTFLEET_BIN_DIR)",
            path.display(),
            release_hint
        );
    }
    Ok(path)
}

pub fn coordinator() -> anyhow::Result<PathBuf> {
    bin_path(COORDINATOR)
}

pub fn agent() -> anyhow::Result<PathBuf> {
    bin_path(AGENT)
}
