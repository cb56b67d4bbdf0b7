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
