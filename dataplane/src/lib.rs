//! Ferrogate's dataplane: the proxy that serves traffic from a routing
//! snapshot.
//!
//! ```text
//!            Snapshot ──▶ Table::build (off the request path: router,
//!                           clusters, balancers, TLS resolver)
//!                              │ one ArcSwap::store
//!                              ▼
//!  client ──▶ server (TCP, TLS by SNI, HTTP/1.1 + HTTP/2)
//!                 ──▶ proxy::handle: one table load, then the phases
//!                     (see `proxy`) ──▶ upstream pools ──▶ backends
//! ```
//!
//! - [`Dataplane::apply`] builds a table from a snapshot and swaps it in;
//!   a snapshot that does not build is refused and the last good table
//!   stays.
//! - Certificates rotate with the table: new handshakes use the new
//!   resolver, established connections are untouched.
//! - The admin listener serves `/healthz`, `/readyz`, `/config`,
//!   `/metrics`.

/// `Box::pin($future)`, with the allocation made before the future, so
/// that the future can be built in it: `Box::pin(f())` builds it on the
/// stack and then copies all of its bytes (the size of its largest state,
/// kilobytes for the request path) into the box.
macro_rules! boxed {
    ($future:expr) => {
        Box::into_pin(Box::write(Box::new_uninit(), $future))
    };
}

pub mod accesslog;
pub mod admin;
pub mod aggregate;
pub mod auth;
pub mod balance;
pub mod body;
pub mod cache;
pub mod client;
pub mod connpool;
pub mod device;
pub mod error;
pub mod filters;
pub mod forwarded;
pub mod h1client;
pub mod h1server;
mod headermaps;
pub mod health;
pub mod ids;
pub mod metrics;
pub mod observe;
pub mod persist;
pub mod proxy;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod table;
pub mod telemetry;
pub mod tls;
pub mod transform;
pub mod upstream;

use arc_swap::ArcSwap;
use metrics::Metrics;
use server::ListenerLimits;
use snapshot::Snapshot;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use table::{BuildError, Table};
use tokio::net::TcpListener;
use tokio::sync::watch;
use upstream::Clients;

/// Task polls between two looks at the sockets and timers, for the
/// runtimes that serve traffic (`tokio::runtime::Builder::event_interval`;
/// tokio's default is 61). Requests forwarded over the gateway's own
/// HTTP/1.1 client leave for the upstream in batches: each upstream write
/// waits behind the tasks that were ready before it (`h1client`), so a
/// batch is about what became ready between two looks at the sockets, and
/// its first request waits for the others. With tokio's `yield_now` in
/// that place, 16 instead of 61 kept most of the batching's gain and cut
/// p99 by about 7% at the same req/s in `bench/proxy.py`'s placement; with
/// the self-wake that replaced it, 16, 24 and 32 measured the same within
/// the noise (bench/RESULTS.md, 2026-11-27).
const EVENT_INTERVAL: u32 = 16;

/// The runtime that serves traffic, for `serve` and `dataplane`: `threads`
/// workers (`None`: one per core; 1: a single-threaded scheduler), timers
/// and IO on, sockets looked at every `EVENT_INTERVAL` task polls.
pub fn serving_runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n.max(1));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.event_interval(EVENT_INTERVAL).enable_all().build()
}

/// A network range, for trusted proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?),
            None => {
                let addr = text.parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Dataplane settings.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Plain HTTP listener.
    pub http_addr: Option<SocketAddr>,
    /// HTTPS listener.
    pub https_addr: Option<SocketAddr>,
    /// Admin listener.
    pub admin_addr: Option<SocketAddr>,
    /// Port used in HTTP -> HTTPS redirects (the public HTTPS port).
    pub https_redirect_port: u16,
    /// Peers whose `X-Forwarded-*` headers are trusted.
    pub trusted_proxies: Vec<Cidr>,
    /// Connection and request limits.
    pub limits: ListenerLimits,
    /// Redis for global rate limits (`redis://host:port/db`).
    pub redis_url: Option<String>,
    /// Time limit of one Redis call; past it, global limits follow their
    /// `failureMode`.
    pub redis_timeout: std::time::Duration,
    /// Most keys the local rate limiter tracks (about 40 bytes each).
    pub rate_limit_max_keys: usize,
    /// Total size of the response cache.
    pub cache_max_bytes: u64,
    /// The access log.
    pub access_log: accesslog::AccessLogConfig,
    /// Trace export.
    pub telemetry: telemetry::TelemetryConfig,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            http_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            https_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            https_redirect_port: 443,
            trusted_proxies: Vec::new(),
            limits: ListenerLimits::default(),
            redis_url: None,
            redis_timeout: std::time::Duration::from_millis(100),
            rate_limit_max_keys: 1_000_000,
            cache_max_bytes: cache::DEFAULT_MAX_BYTES,
            access_log: accesslog::AccessLogConfig::default(),
            telemetry: telemetry::TelemetryConfig::default(),
        }
    }
}

impl DataplaneConfig {
    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|cidr| cidr.contains(ip))
    }
}

/// State shared by all connections.
pub struct Shared {
    /// Settings.
    pub config: DataplaneConfig,
    /// The current table; requests `load` it once.
    pub table: ArcSwap<Table>,
    /// Certificates for new TLS handshakes.
    pub tls: Arc<tls::SwappableResolver>,
    /// Pooled upstream clients.
    pub clients: Clients,
    /// Metrics.
    pub metrics: Metrics,
    /// Authentication state kept across snapshots (JWKS caches).
    pub auth: auth::AuthState,
    /// Rate-limit counters kept across snapshots, and Redis.
    pub limits: ratelimit::LimitState,
    /// The response cache (kept across snapshots).
    pub cache: cache::Store,
    /// The access log.
    pub access_log: accesslog::AccessLog,
    /// Trace export.
    pub telemetry: telemetry::Telemetry,
    /// A snapshot has been loaded.
    pub ready: AtomicBool,
    apply_lock: Mutex<()>,
}

/// Addresses the listeners are bound to.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BoundAddrs {
    /// Plain HTTP.
    pub http: Option<SocketAddr>,
    /// HTTPS.
    pub https: Option<SocketAddr>,
    /// Admin.
    pub admin: Option<SocketAddr>,
}

/// A running dataplane.
#[derive(Clone)]
pub struct Dataplane {
    shared: Arc<Shared>,
}

impl Dataplane {
    /// A dataplane with an empty table (every request gets 404 and
    /// `/readyz` says not ready until the first [`apply`](Self::apply)).
    pub fn new(config: DataplaneConfig) -> Result<Dataplane, BuildError> {
        let metrics = Metrics::default();
        let clients = Clients::default();
        let auth = auth::AuthState::default();
        let limits = ratelimit::LimitState::new(&config);
        let table = Table::empty(&clients, &metrics, &auth)?;
        let tls = Arc::new(tls::SwappableResolver::new(table.tls.clone()));
        let cache = cache::Store::new(
            config.cache_max_bytes,
            metrics.cache_bytes.clone(),
            metrics.cache_entries.clone(),
        );
        let access_log =
            accesslog::AccessLog::new(&config.access_log, metrics.access_log_lines.clone());
        let telemetry = telemetry::Telemetry::new(&config.telemetry).unwrap_or_else(|error| {
            eprintln!("error: {error}; traces are not exported");
            telemetry::Telemetry::disabled()
        });
        Ok(Dataplane {
            shared: Arc::new(Shared {
                config,
                table: ArcSwap::from_pointee(table),
                tls,
                clients,
                metrics,
                auth,
                limits,
                cache,
                access_log,
                telemetry,
                ready: AtomicBool::new(false),
                apply_lock: Mutex::new(()),
            }),
        })
    }

    /// Builds a table from `snapshot` and swaps it in. On error nothing
    /// changes.
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), BuildError> {
        let shared = &self.shared;
        let _serialized = shared
            .apply_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = shared.table.load_full();
        let version = snapshot.version;
        let started = std::time::Instant::now();
        let built = Table::build(
            Arc::new(snapshot),
            &shared.clients,
            Some(&previous),
            &shared.metrics,
            &shared.auth,
        );
        match built {
            Ok(table) => {
                let resolver = table.tls.clone();
                let certificates: Vec<(String, i64)> = table
                    .snapshot
                    .certificates
                    .iter()
                    .map(|c| (c.name.clone(), c.not_after))
                    .collect();
                // Certificates first: once the table (and so the version
                // `/config` reports) is visible, new handshakes already get
                // the new certificates.
                shared.tls.store(resolver);
                shared.table.store(Arc::new(table));
                shared
                    .metrics
                    .snapshot_apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                shared.metrics.certificate_expiry.clear();
                for (name, not_after) in certificates {
                    shared
                        .metrics
                        .certificate_expiry
                        .get_or_create(&metrics::CertificateLabels { certificate: name })
                        .set(not_after);
                }
                shared.metrics.snapshot_version.set(version);
                shared.metrics.snapshot_applied.inc();
                shared.ready.store(true, Ordering::Release);
                Ok(())
            }
            Err(error) => {
                shared.metrics.snapshot_failures.inc();
                Err(error)
            }
        }
    }

    /// The snapshot being served.
    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.table.load().snapshot.clone()
    }

    /// Serves on `listeners` until `shutdown` turns true, then drains and
    /// flushes the trace exporter.
    pub async fn serve(&self, listeners: Listeners, shutdown: watch::Receiver<bool>) {
        let shared = self.shared.clone();
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = listeners.http {
            tasks.spawn(server::serve(
                listener,
                false,
                shared.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = listeners.https {
            tasks.spawn(server::serve(
                listener,
                true,
                shared.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = listeners.admin {
            tasks.spawn(admin::serve(listener, shared.clone(), shutdown.clone()));
        }
        // Closes idle upstream connections until the drain below is over.
        let reaping = shared.clone();
        let reaper = tokio::spawn(async move {
            reaping.clients.pools.reap(connpool::SWEEP_EVERY).await;
        });
        while tasks.join_next().await.is_some() {}
        reaper.abort();
        // Drained: spans still queued for export leave now. The flush
        // blocks, and the export runs on this runtime, so it waits on a
        // blocking thread.
        if shared.telemetry.exporting() {
            let flushing = shared.clone();
            let _ = tokio::task::spawn_blocking(move || flushing.telemetry.shutdown()).await;
        }
    }
}

/// Accept queue length asked of the kernel (it caps it at
/// `net.core.somaxconn`). The usual default of 128 overflows when a few
/// hundred clients connect at once; the dropped SYNs are retried by the
/// clients only after a second.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The bound listening sockets, before serving starts.
pub struct Listeners {
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses configured in `config` (port 0 picks a free
    /// port).
    pub async fn bind(config: &DataplaneConfig) -> std::io::Result<Listeners> {
        fn one(addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
            addr.map(listen).transpose()
        }
        Ok(Listeners {
            http: one(config.http_addr)?,
            https: one(config.https_addr)?,
            admin: one(config.admin_addr)?,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        BoundAddrs {
            http: addr(&self.http),
            https: addr(&self.https),
            admin: addr(&self.admin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cidr;

    /// `--threads 1` gets the single-threaded scheduler, `--threads N` N
    /// workers, no value one per core; each runs timers and IO.
    #[test]
    fn the_serving_runtime_has_the_workers_asked_for() {
        use tokio::runtime::RuntimeFlavor;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (threads, flavor, workers) in [
            (Some(1), RuntimeFlavor::CurrentThread, 1),
            (Some(3), RuntimeFlavor::MultiThread, 3),
            (None, RuntimeFlavor::MultiThread, cores),
        ] {
            let runtime = super::serving_runtime(threads).expect("runtime");
            assert_eq!(runtime.handle().runtime_flavor(), flavor, "{threads:?}");
            assert_eq!(runtime.metrics().num_workers(), workers, "{threads:?}");
            let slept = runtime.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    tokio::time::sleep(std::time::Duration::from_millis(1)),
                )
                .await
            });
            assert!(slept.is_ok(), "timers run on {threads:?}");
        }
    }

    /// A listener's accept queue is the long one asked for (as far as
    /// `net.core.somaxconn` allows), not the usual 128. `ss` shows it as the
    /// Send-Q of a listening socket.
    #[tokio::test]
    async fn listeners_ask_for_a_long_accept_queue() {
        let listener = super::listen("127.0.0.1:0".parse().expect("address")).expect("listen");
        let port = listener.local_addr().expect("bound").port();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) is installed");
        let text = String::from_utf8_lossy(&out.stdout);
        let queue: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|q| q.parse().ok())
            .unwrap_or_else(|| panic!("no Send-Q in ss output: {text:?}"));
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("somaxconn")
            .trim()
            .parse()
            .expect("a number");
        assert_eq!(queue, super::LISTEN_BACKLOG.min(somaxconn));
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let net = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        let any = Cidr::parse("0.0.0.0/0").expect("cidr");
        assert!(any.contains("192.0.2.1".parse().expect("ip")));
        let one = Cidr::parse("::1").expect("cidr");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.1".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
    }
}
