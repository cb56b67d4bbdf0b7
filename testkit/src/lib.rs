//! Test support for Ferrogate's end-to-end tests.
//!
//! The main piece is [`KubeApiserver`]: a real kube-apiserver (1.20, built
//! from Debian's source package by `scripts/test-deps.sh`) backed by a real
//! etcd, started as child processes on free loopback ports with fresh
//! certificates, for one test. Tests share nothing: each starts its own
//! (about 4 s, more under load) and drops it at the end, which stops both
//! processes and removes their files.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let api = testkit::KubeApiserver::start().await?;
//! api.kubectl_apply_stdin("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n")?;
//! let out = api.kubectl(&["get", "namespace", "demo", "-o", "name"])?;
//! assert_eq!(out.trim(), "namespace/demo");
//! # Ok(())
//! # }
//! ```
//!
//! The tools (kube-apiserver, etcd, kubectl, helm) come from
//! [`tools_bin`]: `$FERROGATE_TOOLS_BIN`, else `~/.cache/ferrogate/bin`.
//! When they are missing, starting fails with a message that says to run
//! `scripts/test-deps.sh`; tests never skip silently.
//!
//! What the 1.20 apiserver lacks (CEL validation rules, EndpointSlice v1,
//! strict field validation) is listed in `shared/recipes/kube-apiserver.md`.

mod apiserver;
pub mod kubeconfig;
pub mod netns;
pub mod pki;
mod tools;

pub use apiserver::{KubeApiserver, KubectlOutput, ADMIN_USER, KEEP_DIR_ENV};
pub use tools::{tools_bin, REQUIRED_TOOLS, TOOLS_BIN_ENV};
