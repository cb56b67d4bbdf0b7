//! Ferrogate's controller: Kubernetes IO around the pure compiler.
//!
//! ```text
//!  apiserver ──watch──▶ watch (kube-runtime watchers with backoff)
//!                         │ synchronous apply/delete
//!                         ▼
//!                       index ──▶ compiler (debounced; publish on hash change)
//!                         │            │                    │
//!                         │            ▼                    ▼
//!                         │        statuses           stream::Publisher ══▶ dataplanes
//!                         │            │                    ▲  ACK / NACK
//!                         ▼            ▼                    │
//!                       issuer ──▶ status writer ◀── stream::AckTracker
//!                         │            │
//!                         └─ leader only (leader: coordination.k8s.io Lease)
//!                                      ▼
//!                        Secrets, status subresource, Events
//! ```
//!
//! - [`watch`]: what is watched (Secrets: metadata only).
//! - [`secrets`]: reading the data of referenced Secrets only.
//! - [`index`]: the synchronous store the watchers feed.
//! - [`compiler`]: the debounced compile loop and publishing.
//! - [`status`]: the truthful status (`Programmed` from ACKs) and its writer.
//! - [`leader`]: Lease-based leader election.
//! - [`issuer`]: certificate issuance and renewal.
//! - [`replicas`]: each replica's dataplanes, reported to the leader.
//! - [`stream`]: the snapshot stream to dataplanes (mutual TLS, HTTP/2).
//!
//! Every replica watches, compiles and serves the stream (the compiler is
//! deterministic, so all replicas publish the same snapshot); only the
//! leader writes status, Events and issued Secrets.

pub mod compiler;
pub mod index;
pub mod issuer;
pub mod leader;
pub mod replicas;
pub mod secrets;
pub mod status;
pub mod stream;
pub mod throttle;
pub mod watch;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch as channel;
use tokio::task::JoinSet;

/// Where the snapshot stream's certificate, key and client CA come from.
#[derive(Clone, Debug)]
pub enum StreamTls {
    /// A Secret with `tls.crt`, `tls.key` and `ca.crt` (the CA that signs
    /// dataplane client certificates).
    Secret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// PEM text read from files.
    Pem {
        /// Server certificate chain.
        cert: String,
        /// Server private key.
        key: String,
        /// Client CA.
        client_ca: String,
    },
}

/// The snapshot stream's listener and TLS.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// Address to listen on (port 0 picks one; it is reported on start).
    pub listen: SocketAddr,
    /// Certificates.
    pub tls: StreamTls,
}

/// Everything `ferrogate controller` is configured with.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// A kubeconfig file; `None` infers (`$KUBECONFIG`, `~/.kube/config`,
    /// in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch; empty watches all.
    pub namespaces: Vec<String>,
    /// The snapshot stream; `None` serves none (status then says no
    /// dataplane is connected).
    pub stream: Option<StreamSettings>,
    /// Leader election.
    pub lease: leader::LeaseSettings,
    /// Compile loop timing.
    pub timing: compiler::CompileTiming,
    /// Status writer settings.
    pub status: status::StatusSettings,
    /// How often the issuer re-checks certificates without a change.
    pub issuer_tick: Duration,
}

/// Why the controller could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The Kubernetes client could not be built.
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// Discovery failed.
    #[error("API discovery: {0}")]
    Discovery(#[source] kube::Error),
    /// The stream's certificates could not be loaded.
    #[error("snapshot stream certificates: {0}")]
    StreamTls(String),
    /// The stream server failed.
    #[error("snapshot stream: {0}")]
    Stream(#[source] std::io::Error),
}

/// What the controller reports once running.
#[derive(Clone, Debug)]
pub struct Started {
    /// The stream's bound address, if served.
    pub stream: Option<SocketAddr>,
}

/// Builds a client from a kubeconfig path, or infers the configuration.
pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?
        }
        None => Config::infer()
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(Error::Client)
}

async fn stream_config(
    client: &Client,
    settings: &StreamSettings,
) -> Result<stream::StreamConfig, Error> {
    let (cert, key, client_ca) = match &settings.tls {
        StreamTls::Pem {
            cert,
            key,
            client_ca,
        } => (cert.clone(), key.clone(), client_ca.clone()),
        StreamTls::Secret { namespace, name } => {
            let api: Api<k8s_openapi::api::core::v1::Secret> =
                Api::namespaced(client.clone(), namespace);
            let secret = api
                .get(name)
                .await
                .map_err(|e| Error::StreamTls(format!("Secret {namespace}/{name}: {e}")))?;
            let field = |key: &str| -> Result<String, Error> {
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .ok_or_else(|| {
                        Error::StreamTls(format!("Secret {namespace}/{name} has no {key}"))
                    })?;
                String::from_utf8(bytes.0.clone()).map_err(|_| {
                    Error::StreamTls(format!("Secret {namespace}/{name}: {key} is not PEM text"))
                })
            };
            (field("tls.crt")?, field("tls.key")?, field("ca.crt")?)
        }
    };
    Ok(stream::StreamConfig {
        listen: settings.listen,
        server_cert_pem: cert,
        server_key_pem: key,
        client_ca_pem: client_ca,
    })
}

/// Runs the controller until `shutdown` turns true; `on_start` is called
/// once everything is started (the binary prints the stream address).
pub async fn run(
    config: ControllerConfig,
    shutdown: channel::Receiver<bool>,
    on_start: impl FnOnce(Started),
) -> Result<(), Error> {
    // kube's TLS and the stream use rustls with ring; another part of the
    // process may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = client(config.kubeconfig.as_ref()).await?;
    let endpoints = watch::endpoint_source(&client)
        .await
        .map_err(Error::Discovery)?;
    tracing::info!(
        endpoints = ?endpoints,
        namespaces = ?config.namespaces,
        identity = %config.lease.identity,
        "starting"
    );

    let shared = Arc::new(index::SharedIndex::default());
    let (publisher, tracker) = stream::Publisher::new();
    let mut tasks = JoinSet::new();

    let mut stream_task = None;
    let mut stream_addr = None;
    if let Some(settings) = &config.stream {
        let stream_config = stream_config(&client, settings).await?;
        // Check the certificates before binding, for a clear error.
        stream::server_tls_config(&stream_config).map_err(Error::Stream)?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(Error::Stream)?;
        stream_addr = listener.local_addr().ok();
        let (publisher, tracker, shutdown) = (publisher.clone(), tracker.clone(), shutdown.clone());
        stream_task = Some(tokio::spawn(async move {
            stream::serve_listener(
                listener,
                &stream_config,
                stream::StreamOptions::default(),
                publisher,
                tracker,
                shutdown,
            )
            .await
        }));
    }

    watch::spawn_all(&mut tasks, &client, &config.namespaces, endpoints, &shared);
    tasks.spawn(secrets::run(
        client.clone(),
        shared.clone(),
        shutdown.clone(),
    ));

    let (leader_tx, leader_rx) = channel::channel(false);
    let leader_task = tokio::spawn(leader::run(
        client.clone(),
        config.lease.clone(),
        leader_tx,
        shutdown.clone(),
    ));

    let (compiled_tx, compiled_rx) = channel::channel(None);
    tasks.spawn(compiler::run(
        shared.clone(),
        publisher.clone(),
        config.timing.clone(),
        compiled_tx,
        shutdown.clone(),
    ));
    let reports = Arc::new(replicas::Reports::default());
    let reporter = tokio::spawn(replicas::publish(
        client.clone(),
        config.lease.clone(),
        tracker.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(replicas::watch_reports(
        client.clone(),
        config.lease.clone(),
        reports.clone(),
        shutdown.clone(),
    ));
    let issuers = Arc::new(issuer::IssuerStates::default());
    tasks.spawn(status::run(
        client.clone(),
        shared.clone(),
        compiled_rx,
        tracker.clone(),
        reports,
        issuers.clone(),
        leader_rx.clone(),
        config.status.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(issuer::run(
        client.clone(),
        shared.clone(),
        issuers,
        leader_rx,
        config.issuer_tick,
        shutdown.clone(),
    ));

    on_start(Started {
        stream: stream_addr,
    });

    let mut shutdown_rx = shutdown.clone();
    let result = match stream_task {
        Some(mut task) => {
            tokio::select! {
                joined = &mut task => match joined {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(Error::Stream(error)),
                    Err(error) => Err(Error::Stream(std::io::Error::other(error))),
                },
                _ = shutdown_rx.wait_for(|s| *s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                    Ok(())
                }
            }
        }
        None => {
            let _ = shutdown_rx.wait_for(|s| *s).await;
            Ok(())
        }
    };
    // The leader releases its lease on the way out, so that another
    // replica takes over at its next retry instead of after expiry.
    let _ = tokio::time::timeout(Duration::from_secs(5), leader_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), reporter).await;
    tasks.abort_all();
    result
}
