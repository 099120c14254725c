//! [`VenvSpec`]: a Python venv the harness creates once per machine and reuses — the one
//! way acme2certifier ([`crate::acme2certifier`]) and moto ([`crate::moto`]) get installed.
//!
//! A venv lives at `/var/cache/certfleet-tests/<name>-venv` unless its env override names
//! another directory. [`VenvSpec::ensure`] takes an exclusive lock on `<venv>.lock` (test
//! processes running at once wait for each other), reuses the venv when it is whole and
//! otherwise removes it and builds it again: `python3 -m venv`, then `pip install` of the
//! pinned requirements. Whole means: the marker file holds exactly this spec's requirement
//! set (so a changed pin rebuilds it), the venv's python imports the spec's modules and
//! reports each pinned version, and the spec's files exist. Creating one needs PyPI and
//! `python3-venv` (tests/run.sh installs the latter).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Where the venvs live unless a spec's env override says otherwise.
pub const CACHE_DIR: &str = "/var/cache/certfleet-tests";

/// One venv: what goes into it and how to tell that it is whole.
#[derive(Debug, Clone, Copy)]
pub struct VenvSpec {
    /// The default directory is `<CACHE_DIR>/<name>-venv`.
    pub name: &'static str,
    /// The environment variable that names another directory.
    pub dir_env: &'static str,
    /// What pip installs, each pinned exactly: `package[extras]==version`.
    pub requirements: &'static [&'static str],
    /// Modules the venv's python must import.
    pub imports: &'static [&'static str],
    /// Files under the venv that must exist (e.g. `bin/moto_server`).
    pub files: &'static [&'static str],
}

impl VenvSpec {
    /// The venv directory: the env override, else `<CACHE_DIR>/<name>-venv`.
    pub fn dir(&self) -> PathBuf {
        std::env::var_os(self.dir_env)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(CACHE_DIR).join(format!("{}-venv", self.name)))
    }

    /// Returns the venv, creating it first if it is missing, broken or made for other
    /// requirements (then also how long that took). Blocking.
    pub fn ensure(&self) -> anyhow::Result<(PathBuf, Option<Duration>)> {
        let pins = self.pins()?;
        let venv = self.dir();
        let parent = venv
            .parent()
            .context("the venv path has no parent directory")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let lock_path = venv.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;

        if self.check(&venv, &pins).is_ok() {
            return Ok((venv, None));
        }
        let started = Instant::now();
        if venv.exists() {
            std::fs::remove_dir_all(&venv)
                .with_context(|| format!("removing the stale venv {}", venv.display()))?;
        }
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .context(
                "running `python3 -m venv` (install python3 and python3-venv; tests/run.sh does)",
            )?;
        anyhow::ensure!(
            out.status.success(),
            "`python3 -m venv {}` failed (is python3-venv installed? tests/run.sh installs it): {}",
            venv.display(),
            crate::process::describe_output(&out)
        );
        let out = Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(self.requirements)
            .output()
            .context("running pip in the new venv")?;
        anyhow::ensure!(
            out.status.success(),
            "pip install {} into {} failed (needs PyPI): {}",
            self.requirements.join(" "),
            venv.display(),
            crate::process::describe_output(&out)
        );
        self.probe(&venv, &pins)
            .with_context(|| format!("the new venv {} is not usable", venv.display()))?;
        std::fs::write(self.marker(&venv), self.marker_text())
            .with_context(|| format!("writing the marker into {}", venv.display()))?;
        Ok((venv, Some(started.elapsed())))
    }

    /// The marker file, written after a complete install and holding [`Self::marker_text`].
    /// Its name (`.certfleet-<name>-ok`) is the one the harness used before it recorded
    /// the requirement set, so a venv this writes is also accepted by older checkouts
    /// running on the same machine (no rebuilding it back and forth).
    fn marker(&self, venv: &Path) -> PathBuf {
        venv.join(format!(".certfleet-{}-ok", self.name))
    }

    /// The requirement set as the marker holds it: sorted, one a line.
    pub fn marker_text(&self) -> String {
        let mut reqs: Vec<&str> = self.requirements.to_vec();
        reqs.sort_unstable();
        reqs.iter().map(|r| format!("{r}\n")).collect()
    }

    /// `(distribution, version)` of each requirement; an unpinned one is an error.
    fn pins(&self) -> anyhow::Result<Vec<(&'static str, &'static str)>> {
        self.requirements
            .iter()
            .map(|req| {
                let (name, version) = req.split_once("==").with_context(|| {
                    format!(
                        "venv {}: requirement {req:?} is not pinned with ==",
                        self.name
                    )
                })?;
                let dist = name.split('[').next().unwrap_or(name).trim();
                anyhow::ensure!(
                    !dist.is_empty() && !version.trim().is_empty(),
                    "venv {}: requirement {req:?} names no package or version",
                    self.name
                );
                Ok((dist, version.trim()))
            })
            .collect()
    }

    /// Whether `venv` is whole for this spec; the error says what is not.
    fn check(&self, venv: &Path, pins: &[(&str, &str)]) -> anyhow::Result<()> {
        let marker = std::fs::read_to_string(self.marker(venv)).unwrap_or_default();
        anyhow::ensure!(
            marker == self.marker_text(),
            "the venv {} was made for other requirements ({marker:?})",
            venv.display()
        );
        self.probe(venv, pins)
    }

    /// The venv's python imports the modules and reports the pinned versions; the files
    /// exist.
    fn probe(&self, venv: &Path, pins: &[(&str, &str)]) -> anyhow::Result<()> {
        for file in self.files {
            let path = venv.join(file);
            anyhow::ensure!(path.is_file(), "{} is missing", path.display());
        }
        let out = Command::new(venv.join("bin/python"))
            .args(["-c", &probe_script(self.imports, pins)])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .with_context(|| format!("running {}/bin/python", venv.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "its python does not import {:?} with {:?}: {}",
            self.imports,
            pins,
            crate::process::describe_output(&out)
        );
        Ok(())
    }
}

/// Python that imports each module and exits non-zero naming any distribution whose
/// installed version is not the pinned one (or that is not installed).
fn probe_script(imports: &[&str], pins: &[(&str, &str)]) -> String {
    let imports = serde_json::to_string(imports).expect("strings serialise");
    let pins = serde_json::to_string(pins).expect("strings serialise");
    format!(
        "import importlib, importlib.metadata as m, sys\n\
         for mod in {imports}: importlib.import_module(mod)\n\
         bad = [f'{{d}} {{m.version(d)}} (pinned {{v}})' for d, v in {pins} if m.version(d) != v]\n\
         sys.exit('wrong versions: ' + ', '.join(bad) if bad else 0)\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: VenvSpec = VenvSpec {
        name: "unit",
        dir_env: "CERTFLEET_UNIT_TEST_VENV_UNSET",
        requirements: &["moto[server]==5.2.5", "acme2certifier==0.46.3"],
        imports: &["json"],
        files: &[],
    };

    #[test]
    fn pins_strip_extras_and_refuse_unpinned() {
        assert_eq!(
            SPEC.pins().unwrap(),
            [("moto", "5.2.5"), ("acme2certifier", "0.46.3")]
        );
        let loose = VenvSpec {
            requirements: &["moto>=5"],
            ..SPEC
        };
        let err = loose.pins().unwrap_err().to_string();
        assert!(err.contains("not pinned"), "{err}");
    }

    #[test]
    fn default_dir_is_under_the_cache() {
        assert_eq!(
            SPEC.dir(),
            Path::new("/var/cache/certfleet-tests/unit-venv")
        );
    }

    /// A venv whose python works but whose marker names another pin is not reused, and
    /// one whose marker matches is (the probe runs the system python through a link).
    #[test]
    fn a_changed_pin_makes_the_venv_stale() {
        let Ok(python) = which_python3() else {
            panic!("python3 is needed for this test (tests/run.sh installs it)");
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(python, dir.path().join("bin/python")).unwrap();
        let spec = VenvSpec {
            requirements: &[],
            ..SPEC
        };
        // The marker of the harness before it recorded requirements: a bare version.
        std::fs::write(spec.marker(dir.path()), "5.2.5").unwrap();
        let err = spec.check(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("other requirements"), "{err}");
        std::fs::write(spec.marker(dir.path()), "moto[server]==5.2.4\n").unwrap();
        let err = spec.check(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("other requirements"), "{err}");
        std::fs::write(spec.marker(dir.path()), spec.marker_text()).unwrap();
        spec.check(dir.path(), &[]).unwrap();
        // A pinned version the python does not have fails the probe, naming it.
        let err = format!(
            "{:#}",
            spec.probe(dir.path(), &[("certfleet-no-such-dist", "1.0")])
                .unwrap_err()
        );
        assert!(err.contains("certfleet-no-such-dist"), "{err}");
        // A module that does not import fails it too.
        let broken = VenvSpec {
            imports: &["certfleet_no_such_module"],
            ..spec
        };
        assert!(broken.probe(dir.path(), &[]).is_err());
    }

    #[test]
    fn marker_text_is_order_independent() {
        let swapped = VenvSpec {
            requirements: &["acme2certifier==0.46.3", "moto[server]==5.2.5"],
            ..SPEC
        };
        assert_eq!(SPEC.marker_text(), swapped.marker_text());
        assert_eq!(
            SPEC.marker_text(),
            "acme2certifier==0.46.3\nmoto[server]==5.2.5\n"
        );
    }

    fn which_python3() -> anyhow::Result<PathBuf> {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()?;
        anyhow::ensure!(out.status.success(), "python3 failed");
        Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
    }
}
