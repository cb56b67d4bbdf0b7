//! Subcommands of `ferrogate`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Ferrogate: a Kubernetes-native API gateway.
#[derive(Parser, Debug)]
#[command(name = "ferrogate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compile manifests from a folder and serve traffic with them, hot
    /// reloading on change (no cluster needed).
    Serve(crate::serve::ServeArgs),
    /// Print the CustomResourceDefinitions as multi-document YAML.
    Crds,
    /// Check manifest files with the real compiler; exit 1 on any rejected
    /// resource or unreadable file.
    Validate(crate::validate::ValidateArgs),
    /// Which route, rule, backends and policies a request would get, or
    /// why nothing matches; exit 1 when nothing matches.
    Explain(crate::explain::ExplainArgs),
}

/// Runs one parsed command line; the return value is the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => match crate::serve::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Validate(args) => crate::validate::run(&args),
        Command::Explain(args) => crate::explain::run(&args),
        Command::Crds => match crds::definitions_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRDs: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
