//! The `ferrogate` binary's library: one function per subcommand, wiring the
//! workspace crates together.

pub mod cli;
pub mod explain;
pub mod manifests;
pub mod serve;
pub mod validate;
