//! The snapshot stream: the controller side (work in progress; the
//! protocol is documented here once the server is in).

use snapshot::Snapshot;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Hands new snapshots to every connected dataplane. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    latest: Arc<watch::Sender<Option<Arc<Snapshot>>>>,
}

impl Publisher {
    /// A publisher with nothing published yet, and the tracker of the
    /// dataplanes that will connect to it.
    pub fn new() -> (Publisher, AckTracker) {
        let (latest, _) = watch::channel(None);
        (
            Publisher {
                latest: Arc::new(latest),
            },
            AckTracker::new(),
        )
    }

    /// Makes `snapshot` the current one: every connected dataplane gets it
    /// next (a slow one skips the versions it had no time for).
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        self.latest.send_replace(Some(snapshot));
    }

    /// The current snapshot, if any.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.latest.borrow().clone()
    }
}

/// What the controller knows about one connected dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneState {
    /// The name the dataplane connected with (`?dataplane=ID`).
    pub id: String,
    /// Hash of the last snapshot it applied.
    pub acked_hash: Option<String>,
    /// Version of the last snapshot it applied.
    pub acked_version: Option<u64>,
    /// The last version it refused and why; cleared by a later ACK.
    pub nack: Option<(u64, String)>,
}

/// The connected dataplanes and what they acknowledged. Cheap to clone.
#[derive(Clone)]
pub struct AckTracker {
    inner: Arc<TrackerInner>,
}

struct TrackerInner {
    dataplanes: Mutex<BTreeMap<String, DataplaneState>>,
    changed: watch::Sender<u64>,
}

impl AckTracker {
    fn new() -> AckTracker {
        let (changed, _) = watch::channel(0);
        AckTracker {
            inner: Arc::new(TrackerInner {
                dataplanes: Mutex::new(BTreeMap::new()),
                changed,
            }),
        }
    }

    /// The connected dataplanes, sorted by id.
    pub fn dataplanes(&self) -> Vec<DataplaneState> {
        let map = self
            .inner
            .dataplanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.values().cloned().collect()
    }

    /// A counter that goes up on every connect, disconnect, ACK and NACK.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

/// Where and how the stream is served.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Listening address.
    pub listen: SocketAddr,
    /// The server certificate chain (PEM).
    pub server_cert_pem: String,
    /// The server private key (PEM).
    pub server_key_pem: String,
    /// The CA that dataplane client certificates must chain to (PEM).
    pub client_ca_pem: String,
}

/// Serves the snapshot stream until `shutdown` turns true.
pub async fn serve(
    config: StreamConfig,
    publisher: Publisher,
    tracker: AckTracker,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let _ = (config, publisher, tracker);
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    Ok(())
}
