//! `ferrogate serve --manifests DIR`: the compiler and the dataplane in one
//! process, fed from a folder of YAML instead of a cluster.
//!
//! The folder is watched (inotify through `notify`, plus a slow fingerprint
//! poll as a safety net); a change is debounced for a few milliseconds,
//! compiled against the previous result (so an invalid edit keeps the last
//! accepted version of that resource serving), and swapped in when the
//! snapshot's content hash changed. Problems are printed the same way
//! `ferrogate validate` prints them.

use crate::manifests;
use anyhow::Context;
use dataplane::{Cidr, Dataplane, DataplaneConfig, Listeners};
use notify::Watcher;
use snapshot::compile::{compile, Compiled};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Options of `ferrogate serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Folder (or file) of manifests to serve; watched for changes.
    #[arg(long, default_value = "examples")]
    pub manifests: PathBuf,
    /// Plain HTTP listener (`none` to disable).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: String,
    /// HTTPS listener (`none` to disable).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub https: String,
    /// Admin listener (`none` to disable).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: String,
    /// Port named in HTTP -> HTTPS redirects; defaults to the HTTPS
    /// listener's port (set 443 when a load balancer maps 443 to it).
    #[arg(long)]
    pub https_redirect_port: Option<u16>,
    /// Peers whose X-Forwarded-* headers are trusted (CIDR; repeatable).
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<String>,
    /// Worker threads (default: one per core). 1 gives a single-threaded
    /// runtime, as used by the benchmarks.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Time a client has to send a complete request head; also how long an
    /// idle keep-alive connection is kept (e.g. `30s`, `500ms`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Connections served at once per listener.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Rate-limit settings.
    #[command(flatten)]
    pub rate_limits: RateLimitArgs,
    /// Response cache, access log and trace settings.
    #[command(flatten)]
    pub observability: crate::observability_args::ObservabilityArgs,
}

/// Rate-limit settings, shared by `serve` and `dataplane`.
#[derive(clap::Args, Debug, Clone)]
pub struct RateLimitArgs {
    /// Redis for `scope: Global` rate limits (`redis://host:port/db`),
    /// shared by every dataplane. Without it, Global limits follow their
    /// failureMode (Open: count locally; Closed: refuse with 429).
    #[arg(long, env = "FERROGATE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Time limit of one Redis call; past it, Global limits follow their
    /// failureMode.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// Most client keys the local rate limiter tracks (about 40 bytes
    /// each); past it, the keys closest to idle are forgotten first.
    #[arg(long, default_value_t = 1_000_000)]
    pub rate_limit_max_keys: usize,
}

impl RateLimitArgs {
    /// The Redis URL, checked.
    pub fn redis_url(&self) -> anyhow::Result<Option<String>> {
        match &self.redis_url {
            Some(url) => {
                dataplane::ratelimit::redis::check_url(url)
                    .map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?;
                Ok(Some(url.clone()))
            }
            None => Ok(None),
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crds::common::parse_duration_ms(text)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is not a duration like 30s, 500ms or 1m"))
}

fn parse_addr(flag: &str, text: &str) -> anyhow::Result<Option<SocketAddr>> {
    if text == "none" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .with_context(|| format!("--{flag}: {text:?} is not an address like 127.0.0.1:8080"))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs `serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = dataplane::serving_runtime(args.threads).context("starting the runtime")?;
    runtime.block_on(serve(args))
}

/// One compile of the folder; prints problems. Returns the new result.
fn compile_folder(dir: &Path, previous: Option<&Compiled>) -> Compiled {
    let (resources, load_errors) = manifests::load(&[dir.to_path_buf()]);
    let compiled = compile(&resources, previous, now_unix());
    for line in crate::validate::problem_lines(&compiled, &load_errors) {
        eprintln!("{line}");
    }
    compiled
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let http = parse_addr("http", &args.http)?;
    let https = parse_addr("https", &args.https)?;
    let admin = parse_addr("admin", &args.admin)?;
    let mut trusted = Vec::new();
    for text in &args.trusted_proxies {
        trusted.push(
            Cidr::parse(text)
                .with_context(|| format!("--trusted-proxy: {text:?} is not a CIDR"))?,
        );
    }
    if !args.manifests.exists() {
        anyhow::bail!("--manifests: {} does not exist", args.manifests.display());
    }
    let config = DataplaneConfig {
        http_addr: http,
        https_addr: https,
        admin_addr: admin,
        trusted_proxies: trusted,
        limits: dataplane::server::ListenerLimits {
            header_read_timeout: args.header_read_timeout,
            max_connections: args.max_connections,
            ..Default::default()
        },
        redis_url: args.rate_limits.redis_url()?,
        redis_timeout: args.rate_limits.redis_timeout,
        rate_limit_max_keys: args.rate_limits.rate_limit_max_keys,
        cache_max_bytes: args.observability.cache_max_bytes,
        access_log: args.observability.access_log()?,
        telemetry: args.observability.telemetry()?,
        ..DataplaneConfig::default()
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listeners = Listeners::bind(&config)
        .await
        .context("binding listeners")?;
    let addrs = listeners.addrs();
    let config = DataplaneConfig {
        https_redirect_port: args
            .https_redirect_port
            .or(addrs.https.map(|a| a.port()))
            .unwrap_or(443),
        ..config
    };
    let dataplane = Dataplane::new(config).context("building the dataplane")?;

    let mut compiled = compile_folder(&args.manifests, None);
    let mut version = 1u64;
    let mut snapshot = compiled.snapshot.clone();
    snapshot.version = version;
    if let Err(error) = dataplane.apply(snapshot) {
        eprintln!("error: the compiled snapshot was refused by the dataplane: {error}");
    }
    println!(
        "{}",
        serde_json::json!({
            "event": "listening",
            "http": addrs.http,
            "https": addrs.https,
            "admin": addrs.admin,
            "version": version,
            "hash": compiled.snapshot.hash,
        })
    );

    let (changed_tx, mut changed_rx) = mpsc::channel::<()>(1);
    let watch_tx = changed_tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = watch_tx.try_send(());
        }
    })
    .context("starting the file watcher")?;
    watcher
        .watch(&args.manifests, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", args.manifests.display()))?;
    let poll_dir = args.manifests.clone();
    let poll_tx = changed_tx;
    tokio::spawn(async move {
        let mut last = fingerprint(&poll_dir);
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = fingerprint(&poll_dir);
            if now != last {
                last = now;
                let _ = poll_tx.try_send(());
            }
        }
    });

    let server = {
        let dataplane = dataplane.clone();
        tokio::spawn(async move { dataplane.serve(listeners, shutdown_rx).await })
    };
    let mut signals = Signals::new()?;
    loop {
        tokio::select! {
            _ = changed_rx.recv() => {
                // Debounce: editors write files in several steps.
                tokio::time::sleep(Duration::from_millis(10)).await;
                while changed_rx.try_recv().is_ok() {}
                let next = compile_folder(&args.manifests, Some(&compiled));
                if next.snapshot.hash != compiled.snapshot.hash {
                    let mut snapshot = next.snapshot.clone();
                    snapshot.version = version + 1;
                    match dataplane.apply(snapshot) {
                        Ok(()) => {
                            version += 1;
                            eprintln!("applied snapshot version {version} ({})", next.snapshot.hash);
                            compiled = next;
                        }
                        Err(error) => eprintln!("error: snapshot refused, keeping version {version}: {error}"),
                    }
                } else {
                    compiled = next;
                }
            }
            _ = signals.recv() => break,
        }
    }
    eprintln!("shutting down: draining connections");
    let _ = shutdown_tx.send(true);
    drop(watcher);
    let _ = server.await;
    Ok(())
}

/// Names, sizes and modification times of the files under `dir`.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                for entry in entries.flatten() {
                    stack.push(entry.path());
                }
            }
        } else {
            out.push((path, meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    out
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
