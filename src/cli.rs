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
    /// Watch the cluster, compile, serve the snapshot stream to dataplanes
    /// and (as the elected leader) write status and issued certificates.
    Controller(crate::controller_cmd::ControllerArgs),
    /// Proxy traffic with routing snapshots streamed from a controller;
    /// serves its persisted last good snapshot while the controller is
    /// unreachable.
    Dataplane(crate::dataplane_cmd::DataplaneArgs),
    /// Create (or renew) the CA and the server and client certificates of
    /// the controller -> dataplane snapshot stream, as Secrets or files.
    Certgen(crate::certgen::CertgenArgs),
    /// Run the example shop on loopback: the gateway on examples/, four
    /// sample services, and the curl commands to try.
    Demo(crate::demo::DemoArgs),
    /// Print the API reference (docs/reference.md) generated from the CRDs.
    #[command(hide = true)]
    Docs,
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
        Command::Demo(args) => match crate::demo::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Dataplane(args) => match crate::dataplane_cmd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Certgen(args) => match crate::certgen::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Controller(args) => match crate::controller_cmd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Docs => {
            print!("{}", crate::docs::reference());
            ExitCode::SUCCESS
        }
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
