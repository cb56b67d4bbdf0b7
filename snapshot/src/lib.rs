//! The contract between controller and dataplane: the [`Snapshot`] model,
//! and the pure compiler that turns Kubernetes resources into it.
//!
//! Pure: no Kubernetes client, no sockets, no clock (time is an argument),
//! no randomness. The same resources in any order give byte-identical
//! snapshots.
#![warn(missing_docs)]

pub mod certs;
pub mod compile;
pub mod model;
pub mod resources;

pub use compile::{compile, Compiled, ObjectKey, ResourceStatusReport};
pub use model::Snapshot;
pub use resources::Resources;
