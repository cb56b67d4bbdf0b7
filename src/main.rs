//! The `ferrogate` command line: parses arguments and calls library code.

use clap::Parser;

// The proxy allocates and frees small objects on every request (header
// maps, buffers, futures); mimalloc does that in about half the CPU time of
// glibc's allocator and returns freed memory to the system more readily
// (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = ferrogate::cli::Cli::parse();
    ferrogate::cli::run(cli)
}
