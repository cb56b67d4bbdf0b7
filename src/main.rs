//! The `ferrogate` command line: parses arguments and calls library code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ferrogate::cli::Cli::parse();
    ferrogate::cli::run(cli)
}
