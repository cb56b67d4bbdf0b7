//! The compile loop: index changes in, published snapshots and statuses out.
//!
//! ```text
//! wait until every watcher listed once and referenced Secrets were read
//! loop:
//!   compile revision ticks ─► wait the debounce window (a few ms, so that a
//!                             `kubectl apply` of many objects compiles once)
//!   Index::resources() ─► snapshot::compile(resources, previous, now)
//!                          (on a blocking thread; `previous` keeps invalid
//!                           edits falling back to their accepted version)
//!   hash changed? ─► version = max(last + 1, now in ms) ─► Publisher::publish
//!   statuses + history (hash -> generations) ─► status writer
//! ```
//!
//! The loop also recompiles every `resync` interval without a change,
//! because certificate validity depends on the clock. Versions start from
//! the wall clock in milliseconds, so they keep increasing across
//! controller restarts and are close between replicas (which compile the
//! same snapshot; dataplanes compare hashes, not versions).

use crate::index::SharedIndex;
use crate::stream::Publisher;
use snapshot::compile::{compile, Compiled, ObjectKey, ResourceStatusReport};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How many published snapshots the controller remembers the generations
/// of. A dataplane that ACKed an older one counts as not serving anything.
pub const HISTORY: usize = 32;

/// Generations (by `Kind/namespace/name`) of one published snapshot.
pub type Generations = Arc<BTreeMap<String, i64>>;

/// What the status writer needs from one compile.
#[derive(Debug, Default)]
pub struct CompileOutput {
    /// Version of the current published snapshot.
    pub version: u64,
    /// Its content hash.
    pub hash: String,
    /// A status for every Ferrogate resource.
    pub statuses: BTreeMap<ObjectKey, ResourceStatusReport>,
    /// Recently published snapshots, oldest first: hash and generations.
    pub history: VecDeque<(String, Generations)>,
}

impl CompileOutput {
    /// The generations of the published snapshot with this hash, if it is
    /// recent enough to be remembered.
    pub fn generations_of(&self, hash: &str) -> Option<&Generations> {
        self.history
            .iter()
            .rev()
            .find(|(h, _)| h == hash)
            .map(|(_, g)| g)
    }
}

/// Timing of the compile loop.
#[derive(Clone, Debug)]
pub struct CompileTiming {
    /// How long to gather changes before compiling.
    pub debounce: Duration,
    /// Recompile this often even without changes.
    pub resync: Duration,
}

/// Runs the loop until `shutdown` turns true.
pub async fn run(
    shared: Arc<SharedIndex>,
    publisher: Publisher,
    timing: CompileTiming,
    output: watch::Sender<Option<Arc<CompileOutput>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ready = shared.ready();
    tokio::select! {
        _ = ready.wait_for(|s| *s) => {}
        _ = shutdown.wait_for(|s| *s) => return,
    }
    tracing::info!("every watcher listed and referenced Secrets read; compiling");

    let mut changes = shared.compile_changes();
    let mut previous: Option<Compiled> = None;
    let mut history: VecDeque<(String, Generations)> = VecDeque::new();
    let mut version: u64 = 0;
    loop {
        changes.borrow_and_update();
        let started = Instant::now();
        let resources = shared.read(|index| index.resources());
        let routes = resources.api_routes.len();
        let prev = previous.take();
        let now = unix_now();
        let joined = tokio::task::spawn_blocking(move || {
            let compiled = compile(&resources, prev.as_ref(), now);
            drop(resources);
            compiled
        })
        .await;
        let mut compiled = match joined {
            Ok(compiled) => compiled,
            Err(error) => {
                // The compiler is total; a panic there is a bug, and the
                // last published snapshot stays in place.
                tracing::error!(error = %error, "compile panicked; keeping the last snapshot");
                tokio::time::sleep(timing.resync).await;
                continue;
            }
        };
        let mut snapshot = std::mem::take(&mut compiled.snapshot);
        let statuses = std::mem::take(&mut compiled.statuses);
        previous = Some(compiled);
        let compile_ms = started.elapsed().as_secs_f64() * 1000.0;

        let changed = history
            .back()
            .is_none_or(|(hash, _)| *hash != snapshot.hash);
        if changed {
            version = (version + 1).max(unix_now_ms());
            snapshot.version = version;
            let generations = Arc::new(snapshot.generations.clone());
            history.retain(|(hash, _)| *hash != snapshot.hash);
            history.push_back((snapshot.hash.clone(), generations));
            while history.len() > HISTORY {
                history.pop_front();
            }
            tracing::info!(
                version,
                hash = %snapshot.hash,
                routes,
                compile_ms,
                rejected = statuses.values().filter(|s| !s.is_accepted()).count(),
                "publishing snapshot"
            );
            publisher.publish(Arc::new(snapshot));
        } else {
            tracing::debug!(compile_ms, "compiled; snapshot unchanged");
        }
        let hash = history.back().map(|(h, _)| h.clone()).unwrap_or_default();
        output.send_replace(Some(Arc::new(CompileOutput {
            version,
            hash,
            statuses,
            history: history.clone(),
        })));

        let changed = tokio::select! {
            result = changes.changed() => {
                if result.is_err() {
                    return;
                }
                true
            }
            _ = tokio::time::sleep(timing.resync) => false,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if changed {
            tokio::select! {
                _ = tokio::time::sleep(timing.debounce) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
