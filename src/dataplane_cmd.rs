//! `ferrogate dataplane --controller URL`: the proxy, fed by a controller's
//! snapshot stream instead of a folder.
//!
//! Start-up order matters for availability: bind the listeners, load the
//! persisted last good snapshot (if `--state-dir` has one and it passes its
//! hash check) and serve it, print the listening line, and only then
//! connect to the controller. So a dataplane restarted while the
//! controller is down serves what it served before; one with no state
//! starts empty (404 for everything, `/readyz` not ready) until its first
//! snapshot.

use anyhow::Context;
use dataplane::client::{self, ClientConfig};
use dataplane::persist::StateDir;
use dataplane::{Cidr, Dataplane, DataplaneConfig, Listeners};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::watch;

/// Options of `ferrogate dataplane`.
#[derive(clap::Args, Debug, Clone)]
pub struct DataplaneArgs {
    /// The controller's snapshot stream, `https://HOST:PORT`.
    #[arg(long, env = "FERROGATE_CONTROLLER")]
    pub controller: String,
    /// Client certificate (PEM) presented to the controller.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// Private key (PEM) of the client certificate.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// CA (PEM) that signed the controller's certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// This dataplane's name, as the controller reports it (default: the
    /// POD_NAME or HOSTNAME environment variable).
    #[arg(long)]
    pub id: Option<String>,
    /// Folder where the last good snapshot is kept (it holds private keys:
    /// written with mode 0600); served at start-up when present.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
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
    /// listener's port.
    #[arg(long)]
    pub https_redirect_port: Option<u16>,
    /// Peers whose X-Forwarded-* headers are trusted (CIDR; repeatable).
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<String>,
    /// Worker threads (default: one per core). 1 gives a single-threaded
    /// runtime.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Rate-limit settings.
    #[command(flatten)]
    pub rate_limits: crate::serve::RateLimitArgs,
    /// Response cache, access log and trace settings.
    #[command(flatten)]
    pub observability: crate::observability_args::ObservabilityArgs,
}

fn parse_addr(flag: &str, text: &str) -> anyhow::Result<Option<SocketAddr>> {
    if text == "none" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .with_context(|| format!("--{flag}: {text:?} is not an address like 127.0.0.1:8080"))
}

fn default_id() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.is_empty())
        .unwrap_or_else(|| "dataplane".to_owned())
}

/// Runs `dataplane` until SIGINT or SIGTERM.
pub fn run(args: DataplaneArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let runtime = dataplane::serving_runtime(args.threads).context("starting the runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: DataplaneArgs) -> anyhow::Result<()> {
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
    let id = args.id.clone().unwrap_or_else(default_id);
    let id_ok = (1..=253).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        anyhow::bail!("--id {id:?}: use 1 to 253 characters of A-Z a-z 0-9 . _ - (a pod name)");
    }
    let mut client_config = ClientConfig::new(
        &args.controller,
        &id,
        &args.tls_cert,
        &args.tls_key,
        &args.ca,
    );
    // Bad credentials are a configuration error: say so now rather than
    // retrying forever.
    client::tls_config(&client_config)?;
    let state = match &args.state_dir {
        Some(dir) => Some(StateDir::open(dir).context("--state-dir")?),
        None => None,
    };
    client_config.state = state.clone();

    let config = DataplaneConfig {
        http_addr: http,
        https_addr: https,
        admin_addr: admin,
        trusted_proxies: trusted,
        redis_url: args.rate_limits.redis_url()?,
        redis_timeout: args.rate_limits.redis_timeout,
        rate_limit_max_keys: args.rate_limits.rate_limit_max_keys,
        cache_max_bytes: args.observability.cache_max_bytes,
        access_log: args.observability.access_log()?,
        telemetry: args.observability.telemetry()?,
        ..DataplaneConfig::default()
    };
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

    let mut restored = None;
    if let Some(state) = &state {
        match state.load() {
            Ok(Some(snapshot)) => {
                let (version, hash) = (snapshot.version, snapshot.hash.clone());
                match dataplane.apply(snapshot) {
                    Ok(()) => {
                        eprintln!(
                            "serving the persisted snapshot version {version} ({hash}) from {}",
                            state.path().display()
                        );
                        restored = Some((version, hash));
                    }
                    Err(error) => eprintln!(
                        "error: the persisted snapshot {} does not build, starting empty: {error}",
                        state.path().display()
                    ),
                }
            }
            Ok(None) => {}
            Err(error) => {
                eprintln!("error: ignoring the persisted snapshot, starting empty: {error}")
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "event": "listening",
            "http": addrs.http,
            "https": addrs.https,
            "admin": addrs.admin,
            "id": id,
            "version": restored.as_ref().map(|(v, _)| v),
            "hash": restored.as_ref().map(|(_, h)| h),
        })
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let server = {
        let dataplane = dataplane.clone();
        let shutdown = shutdown_rx.clone();
        tokio::spawn(async move { dataplane.serve(listeners, shutdown).await })
    };
    let stream = tokio::spawn(client::run(client_config, dataplane, shutdown_rx));
    let mut signals = Signals::new()?;
    signals.recv().await;
    eprintln!("shutting down: draining connections");
    let _ = shutdown_tx.send(true);
    let _ = stream.await;
    let _ = server.await;
    Ok(())
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
