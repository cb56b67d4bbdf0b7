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
//!
//! The stream's own certificate, key and client CA (a Secret or files) are
//! read again every [`StreamSettings::reload_interval`]; when they changed
//! and are valid, new connections are accepted with them (open streams
//! keep theirs), so a renewal needs no restart.

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
use std::path::{Path, PathBuf};
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
    /// PEM files, read again every [`StreamSettings::reload_interval`]:
    /// a renewed certificate is served without a restart.
    Files {
        /// Server certificate chain.
        cert: PathBuf,
        /// Server private key.
        key: PathBuf,
        /// Client CA.
        client_ca: PathBuf,
    },
    /// PEM text, fixed for the process's lifetime.
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
    /// How often a Secret or files are read again for a renewed
    /// certificate or client CA ([`STREAM_TLS_RELOAD`] by default).
    pub reload_interval: Duration,
}

/// How often the stream's certificate source is read again.
pub const STREAM_TLS_RELOAD: Duration = Duration::from_secs(10);

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

/// Reads the stream's certificates from their source.
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
        StreamTls::Files {
            cert,
            key,
            client_ca,
        } => (
            read_pem(cert).await?,
            read_pem(key).await?,
            read_pem(client_ca).await?,
        ),
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

async fn read_pem(path: &Path) -> Result<String, Error> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| Error::StreamTls(format!("{}: {e}", path.display())))
}

/// Reads the stream's certificate source again every `interval` (from
/// `last`, the one being served) and publishes new TLS settings on `tls`
/// when the content changed and is valid. An unreadable or invalid source
/// is logged and the last good settings stay: a half-written renewal never
/// takes the stream down.
async fn reload_stream_tls<F, Fut>(
    mut load: F,
    mut last: stream::StreamConfig,
    interval: Duration,
    tls: channel::Sender<Arc<rustls::ServerConfig>>,
    mut shutdown: channel::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<stream::StreamConfig, Error>>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let config = match load().await {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(%error, "snapshot stream: certificates not reloaded");
                continue;
            }
        };
        if config == last {
            continue;
        }
        match stream::server_tls_config(&config) {
            Ok(server) => {
                tls.send_replace(Arc::new(server));
                tracing::info!("snapshot stream: certificates reloaded");
                last = config;
            }
            Err(error) => {
                tracing::warn!(%error, "snapshot stream: new certificates refused; serving the previous ones");
                // Not remembered as `last`: once fixed, the same content
                // as before the bad one is taken again.
            }
        }
    }
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
        let current = stream_config(&client, settings).await?;
        // Check the certificates before binding, for a clear error.
        let server_tls = stream::server_tls_config(&current).map_err(Error::Stream)?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(Error::Stream)?;
        stream_addr = listener.local_addr().ok();
        let (tls_tx, tls_rx) = channel::channel(Arc::new(server_tls));
        if !matches!(settings.tls, StreamTls::Pem { .. }) {
            let interval = settings.reload_interval;
            let (client, settings) = (client.clone(), settings.clone());
            tasks.spawn(reload_stream_tls(
                move || {
                    let (client, settings) = (client.clone(), settings.clone());
                    async move { stream_config(&client, &settings).await }
                },
                current,
                interval,
                tls_tx,
                shutdown.clone(),
            ));
        }
        let (publisher, tracker, shutdown) = (publisher.clone(), tracker.clone(), shutdown.clone());
        stream_task = Some(tokio::spawn(async move {
            stream::serve_listener_with_tls(
                listener,
                tls_rx,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A self-signed certificate serving as its own client CA.
    fn self_signed() -> stream::StreamConfig {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("certificate");
        stream::StreamConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            client_ca_pem: cert.pem(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stream_certificates_are_published_again_only_when_changed_and_valid() {
        let interval = Duration::from_secs(10);
        let first = self_signed();
        let source: Arc<Mutex<Result<stream::StreamConfig, String>>> =
            Arc::new(Mutex::new(Ok(first.clone())));
        let set = |value: Result<stream::StreamConfig, String>| {
            *source.lock().expect("lock") = value;
        };
        let tls = stream::server_tls_config(&first).expect("valid");
        let (tls_tx, mut tls_rx) = channel::channel(Arc::new(tls));
        let (stop, shutdown) = channel::channel(false);
        let reader = source.clone();
        let task = tokio::spawn(reload_stream_tls(
            move || {
                let current = reader.lock().expect("lock").clone();
                async move { current.map_err(Error::StreamTls) }
            },
            first.clone(),
            interval,
            tls_tx,
            shutdown,
        ));

        // Read again, unchanged: nothing is published.
        tokio::time::sleep(interval * 3).await;
        assert!(!tls_rx.has_changed().expect("open"));

        // Unreadable, then half-written: the served settings stay.
        set(Err("Secret default/stream-tls: not found".to_owned()));
        tokio::time::sleep(interval * 2).await;
        let half_written = stream::StreamConfig {
            server_cert_pem: String::new(),
            ..self_signed()
        };
        set(Ok(half_written));
        tokio::time::sleep(interval * 2).await;
        assert!(!tls_rx.has_changed().expect("open"));

        // Renewed: published once, within one interval.
        set(Ok(self_signed()));
        tokio::time::timeout(interval * 2, tls_rx.changed())
            .await
            .expect("the renewed certificate is published")
            .expect("open");
        tokio::time::sleep(interval * 3).await;
        assert!(!tls_rx.has_changed().expect("open"));

        // Back to the first one (a rollback) is a change too.
        set(Ok(first));
        tokio::time::timeout(interval * 2, tls_rx.changed())
            .await
            .expect("the rollback is published")
            .expect("open");

        stop.send_replace(true);
        tokio::time::timeout(interval * 2, task)
            .await
            .expect("stops on shutdown")
            .expect("no panic");
    }
}
