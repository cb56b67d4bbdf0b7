//! Where the test tools live: kube-apiserver, etcd, kubectl (and helm).
//!
//! `scripts/test-deps.sh` installs them into one directory and prints it;
//! `scripts/test.sh` exports that directory as `FERROGATE_TOOLS_BIN`. Tests
//! find the tools there, never on `PATH`, so a developer's own kubectl or a
//! system etcd of another version cannot change what a test exercises.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable naming the tools directory.
pub const TOOLS_BIN_ENV: &str = "FERROGATE_TOOLS_BIN";

/// Tools the apiserver harness needs, by file name in the tools directory.
pub const REQUIRED_TOOLS: [&str; 3] = ["kube-apiserver", "etcd", "kubectl"];

/// The directory holding kube-apiserver, etcd and kubectl:
/// `$FERROGATE_TOOLS_BIN`, or `~/.cache/ferrogate/bin` when that is unset.
///
/// Fails, naming every missing tool and saying to run
/// `scripts/test-deps.sh`, when any of [`REQUIRED_TOOLS`] is not an
/// executable file there.
pub fn tools_bin() -> Result<PathBuf> {
    let dir = tools_dir_from(
        std::env::var_os(TOOLS_BIN_ENV),
        std::env::var_os("HOME").map(PathBuf::from),
    )?;
    check_tools(&dir)?;
    Ok(dir)
}

/// Resolves the tools directory from the value of `FERROGATE_TOOLS_BIN` and
/// the home directory, without touching the file system.
pub(crate) fn tools_dir_from(env: Option<OsString>, home: Option<PathBuf>) -> Result<PathBuf> {
    match env {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => {
            let home = home.filter(|h| !h.as_os_str().is_empty()).context(
                "neither FERROGATE_TOOLS_BIN nor HOME is set, so the test tools cannot be found; \
                 run scripts/test-deps.sh and export FERROGATE_TOOLS_BIN to the directory it prints",
            )?;
            Ok(home.join(".cache").join("ferrogate").join("bin"))
        }
    }
}

/// Checks that every required tool is an executable file in `dir`.
pub(crate) fn check_tools(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|tool| !is_executable(&dir.join(tool)))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing test tools in {}: {} (this directory comes from ${TOOLS_BIN_ENV} or \
             defaults to ~/.cache/ferrogate/bin); run scripts/test-deps.sh to install them \
             (the first run builds kube-apiserver, about 5 minutes), or run the tests through \
             scripts/test.sh which does that for you",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // `metadata` follows symlinks: test-deps.sh links etcd and kube-apiserver.
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_var_wins_over_home() -> Result<()> {
        let dir = tools_dir_from(Some("/opt/tools".into()), Some("/home/me".into()))?;
        assert_eq!(dir, PathBuf::from("/opt/tools"));
        Ok(())
    }

    #[test]
    fn empty_env_var_falls_back_to_the_cache_in_home() -> Result<()> {
        let dir = tools_dir_from(Some("".into()), Some("/home/me".into()))?;
        assert_eq!(dir, PathBuf::from("/home/me/.cache/ferrogate/bin"));
        let dir = tools_dir_from(None, Some("/home/me".into()))?;
        assert_eq!(dir, PathBuf::from("/home/me/.cache/ferrogate/bin"));
        Ok(())
    }

    #[test]
    fn no_env_and_no_home_is_a_clear_error() {
        let err = tools_dir_from(None, None)
            .map(|_| ())
            .expect_err("no HOME and no env var must fail");
        assert!(
            format!("{err:#}").contains("scripts/test-deps.sh"),
            "{err:#}"
        );
    }

    #[test]
    fn missing_tools_are_named_with_the_fix() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let etcd = dir.path().join("etcd");
        std::fs::write(&etcd, "#!/bin/sh\n")?;
        std::fs::set_permissions(&etcd, std::fs::Permissions::from_mode(0o755))?;
        // Present but not executable counts as missing.
        std::fs::write(dir.path().join("kubectl"), "")?;

        let err = check_tools(dir.path())
            .map(|_| ())
            .expect_err("missing tools must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("kube-apiserver, kubectl"), "{msg}");
        assert!(!msg.contains("etcd,"), "{msg}");
        assert!(msg.contains("run scripts/test-deps.sh"), "{msg}");
        Ok(())
    }

    #[test]
    fn complete_tools_dir_passes() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        for tool in REQUIRED_TOOLS {
            let path = dir.path().join(tool);
            std::fs::write(&path, "#!/bin/sh\n")?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        check_tools(dir.path())
    }
}
