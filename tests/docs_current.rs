//! The committed API reference (`docs/reference.md`) is what the CRD
//! schemas generate today. Regenerate with `cargo run -- docs > docs/reference.md`.

use anyhow::{ensure, Context, Result};

#[test]
fn reference_is_current() -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md");
    let committed = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let generated = ferrogate::docs::reference();
    ensure!(
        committed == generated,
        "docs/reference.md is stale: run `{}`",
        ferrogate::docs::REGENERATE
    );
    Ok(())
}

#[test]
fn the_hidden_subcommand_prints_the_reference() -> Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .arg("docs")
        .output()?;
    ensure!(out.status.success(), "ferrogate docs failed: {out:?}");
    ensure!(String::from_utf8(out.stdout)? == ferrogate::docs::reference());
    Ok(())
}

/// The Ferrogate manifests in README.md's YAML blocks, as one file per
/// block.
fn readme_manifests() -> Result<Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(block), "```") => {
                if block.contains("apiVersion: ferrogate.dev/") {
                    blocks.push(block.clone());
                }
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    Ok(blocks)
}

#[test]
fn readme_examples_are_accepted_by_the_compiler() -> Result<()> {
    let blocks = readme_manifests()?;
    ensure!(
        blocks.len() == 4,
        "expected one example per kind in README.md, found {}",
        blocks.len()
    );
    let dir = tempfile::tempdir()?;
    for (i, block) in blocks.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.yaml")), block)?;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .arg("validate")
        .arg(dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Services and Secrets are not in the README, so those references are
    // warnings; everything else must be clean.
    ensure!(
        out.status.success() && stdout.contains("4 accepted, 0 rejected"),
        "README examples:\n{stdout}{stderr}"
    );
    for kind in [
        "ApiRoute",
        "AuthPolicy",
        "RateLimitPolicy",
        "TlsCertificate",
    ] {
        ensure!(
            blocks
                .iter()
                .any(|b| b.contains(&format!("kind: {kind}\n"))),
            "no {kind} example in README.md"
        );
    }
    Ok(())
}
