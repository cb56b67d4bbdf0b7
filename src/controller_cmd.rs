//! `ferrogate controller`: watches the cluster, compiles, serves the
//! snapshot stream, and (as the leader) writes status and issued
//! certificates. Options map one to one onto [`controller::ControllerConfig`].
//!
//! On start it prints one JSON line on stdout,
//! `{"event":"started","id":ID,"stream":"ADDR"|null}`, so that scripts and
//! tests using `--stream-listen 127.0.0.1:0` learn the port. Logs go to
//! stderr (`RUST_LOG`, default `info`). SIGTERM or SIGINT stops it; a
//! leader releases its Lease on the way out.

use anyhow::{bail, Context};
use controller::compiler::CompileTiming;
use controller::leader::LeaseSettings;
use controller::status::StatusSettings;
use controller::{ControllerConfig, StreamSettings, StreamTls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// Options of `ferrogate controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (comma-separated or repeated); default all.
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Address of the snapshot stream (mutual TLS, HTTP/2).
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub stream_listen: SocketAddr,
    /// `NAMESPACE/NAME` of a Secret with the stream's `tls.crt`, `tls.key`
    /// and `ca.crt` (the CA of dataplane client certificates), as
    /// `ferrogate certgen` writes it (`PREFIX-server`). Read again every
    /// 10 s: a renewed certificate is used for new connections.
    #[arg(long, conflicts_with_all = ["stream_cert", "stream_key", "stream_client_ca"])]
    pub stream_tls_secret: Option<String>,
    /// The stream's server certificate chain (PEM file). The three files
    /// are read again every 10 s: a renewed certificate is used for new
    /// connections.
    #[arg(long, requires_all = ["stream_key", "stream_client_ca"])]
    pub stream_cert: Option<PathBuf>,
    /// The stream's server key (PEM file).
    #[arg(long, requires = "stream_cert")]
    pub stream_key: Option<PathBuf>,
    /// CA (PEM file) that dataplane client certificates must chain to.
    #[arg(long, requires = "stream_cert")]
    pub stream_client_ca: Option<PathBuf>,
    /// Run without the snapshot stream (status only; nothing is served).
    #[arg(long, conflicts_with_all = ["stream_tls_secret", "stream_cert"])]
    pub no_stream: bool,
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE,
    /// else `default`).
    #[arg(long)]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "ferrogate-controller")]
    pub leader_election_name: String,
    /// This replica's identity (default: $POD_NAME, else host name and
    /// process id).
    #[arg(long)]
    pub id: Option<String>,
    /// How long a Lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews the Lease.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lease_renew: Duration,
    /// How often a follower checks the Lease.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub lease_retry: Duration,
    /// How long changes are gathered before a compile.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Recompile this often without changes (certificate validity).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub resync: Duration,
    /// Average status writes per second.
    #[arg(long, default_value_t = 50.0)]
    pub status_qps: f64,
    /// Status writes allowed at once.
    #[arg(long, default_value_t = 100)]
    pub status_burst: u32,
    /// Re-check time-dependent conditions and retry failed writes this often.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub status_tick: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crds::common::parse_duration_ms(text)
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration like 15s, 500ms or 1m"))
}

fn default_id() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "controller".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Turns the options into the controller's configuration.
pub fn config(args: &ControllerArgs) -> anyhow::Result<ControllerConfig> {
    let id = args.id.clone().unwrap_or_else(default_id);
    let id_ok = (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        bail!("--id {id:?}: use 1 to 100 characters of A-Z a-z 0-9 . _ - (a pod name)");
    }
    if args.lease_renew >= args.lease_duration || args.lease_retry >= args.lease_duration {
        bail!("--lease-renew and --lease-retry must be shorter than --lease-duration");
    }
    let tls = if let Some(secret) = &args.stream_tls_secret {
        let Some((namespace, name)) = secret.split_once('/') else {
            bail!("--stream-tls-secret {secret:?}: expected NAMESPACE/NAME");
        };
        Some(StreamTls::Secret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    } else if let (Some(cert), Some(key), Some(ca)) =
        (&args.stream_cert, &args.stream_key, &args.stream_client_ca)
    {
        Some(StreamTls::Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: ca.clone(),
        })
    } else if args.no_stream {
        None
    } else {
        bail!(
            "the snapshot stream needs certificates: --stream-tls-secret NAMESPACE/NAME, or \
             --stream-cert, --stream-key and --stream-client-ca (or --no-stream)"
        );
    };
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "default".to_owned());
    Ok(ControllerConfig {
        kubeconfig: args.kubeconfig.clone(),
        namespaces: args
            .namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect(),
        stream: tls.map(|tls| StreamSettings {
            listen: args.stream_listen,
            tls,
            reload_interval: controller::STREAM_TLS_RELOAD,
        }),
        lease: LeaseSettings {
            namespace,
            name: args.leader_election_name.clone(),
            identity: id.clone(),
            lease_duration: args.lease_duration,
            renew_interval: args.lease_renew,
            retry_period: args.lease_retry,
        },
        timing: CompileTiming {
            debounce: args.debounce,
            resync: args.resync,
        },
        status: StatusSettings {
            field_manager: format!("ferrogate-controller.{id}"),
            instance: id,
            qps: args.status_qps,
            burst: args.status_burst,
            tick: args.status_tick,
        },
        issuer_tick: args.resync,
    })
}

/// Runs `controller` until SIGINT or SIGTERM.
pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let config = config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down");
            shutdown_tx.send_replace(true);
            // Keep the sender alive until the process exits.
            std::future::pending::<()>().await;
        });
        let id = config.lease.identity.clone();
        controller::run(config, shutdown_rx, |started| {
            let line = serde_json::json!({
                "event": "started",
                "id": id,
                "stream": started.stream.map(|a| a.to_string()),
            });
            println!("{line}");
        })
        .await
        .map_err(anyhow::Error::from)
    })
}
