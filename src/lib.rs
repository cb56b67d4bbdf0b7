//! The `ferrogate` binary's library: one function per subcommand, wiring the
//! workspace crates together.

pub mod certgen;
pub mod cli;
pub mod controller_cmd;
pub mod dataplane_cmd;
pub mod demo;
pub mod docs;
pub mod explain;
pub mod manifests;
pub mod observability_args;
pub mod serve;
pub mod validate;
