//! The training traffic of the profile-guided build (`scripts/pgo-train.sh`,
//! run by `scripts/build-pgo.sh` on an instrumented binary), run here on
//! the debug build: every step of it gets answers, with none broken, and
//! both gateway processes exit cleanly on SIGTERM, which is when an
//! instrumented binary writes its counts. The two release builds around it
//! are too slow for CI; `tests/dockerfile.rs` checks their flags.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_training_traffic_is_answered_and_the_gateway_stops_cleanly() -> anyhow::Result<()> {
    support::require_tool("h2load");
    support::require_tool("curl");
    let base = support::free_port_run(8)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pgo-train.sh");
    let child = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_ferrogate"))
        .env("PGO_PORT_BASE", base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let output = support::wait_output(child, Duration::from_secs(600), "pgo-train.sh");
    anyhow::ensure!(
        output.contains("pgo-train.sh: done"),
        "scripts/pgo-train.sh did not finish:\n{output}"
    );
    Ok(())
}
