//! Listeners: accept TCP connections, terminate TLS, serve HTTP/1.1 and
//! HTTP/2 with hyper, and drain gracefully on shutdown.
//!
//! Safe defaults, all configurable in [`ListenerLimits`]: a bounded number of
//! connections (new ones beyond it are closed at once), a header read
//! timeout that also bounds how long an idle HTTP/1 keep-alive connection is
//! held, limits on header count and size (hyper answers 431), at most 100
//! concurrent HTTP/2 streams, a TLS handshake timeout, and a drain period on
//! shutdown during which open connections finish their requests.

use crate::proxy::{self, ConnInfo};
use crate::Shared;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Limits that protect a listener from clients.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Connections served at once per listener.
    pub max_connections: usize,
    /// Time to receive a complete request head (HTTP/1); also the idle
    /// keep-alive timeout.
    pub header_read_timeout: Duration,
    /// Most request headers.
    pub max_headers: usize,
    /// Most bytes of request head (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// Time to complete a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time open connections get to finish after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(30),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 100,
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(15),
        }
    }
}

pub(crate) fn http_builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Accepts connections on `listener` until `shutdown` turns true, then
/// drains. `tls` is set for HTTPS listeners: the certificate (and its TLS
/// settings) is chosen by SNI from the current resolver.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: bool,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = shared.config.limits.clone();
    let builder = Arc::new(http_builder(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and similar: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, local, tls, shared, builder, watcher).await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    tls: bool,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    match tls {
        false => {
            let info = Arc::new(ConnInfo {
                peer,
                local,
                tls: false,
                sni: None,
            });
            let service = service_fn(move |req| proxy::handle(req, info.clone(), shared.clone()));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        }
        true => {
            let timeout = shared.config.limits.tls_handshake_timeout;
            let stream = match tokio::time::timeout(timeout, shared.tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    shared.metrics.tls_handshake_failures.inc();
                    tracing::debug!(%error, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let sni = stream
                .get_ref()
                .1
                .server_name()
                .map(|name| Arc::<str>::from(name.to_ascii_lowercase()));
            let info = Arc::new(ConnInfo {
                peer,
                local,
                tls: true,
                sni,
            });
            let service = service_fn(move |req| proxy::handle(req, info.clone(), shared.clone()));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        }
    }
}
