//! Listeners: accept TCP connections, terminate TLS, serve HTTP/1.1 (plain
//! requests on the gateway's own path, `crate::h1server`, the rest with
//! hyper) and HTTP/2 with hyper, and drain gracefully on shutdown.
//!
//! Safe defaults, all configurable in [`ListenerLimits`]: a bounded number of
//! connections (new ones beyond it are closed at once), a header read
//! timeout that also bounds how long an idle HTTP/1 keep-alive connection is
//! held, limits on header count and size (hyper answers 431), at most 100
//! concurrent HTTP/2 streams, a TLS handshake timeout, and a drain period on
//! shutdown during which open connections finish their requests.

use crate::body::RequestBody;
use crate::h1server;
use crate::proxy::{self, ConnInfo};
use crate::Shared;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
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

/// HTTP/2 connection preface: a connection starting with it speaks h2c.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connection builders for HTTP/1 and HTTP/2. The protocol is decided
/// before hyper sees the connection (ALPN on TLS, the first bytes on plain
/// TCP, under the header read timeout), instead of hyper-util's automatic
/// detection, which waits for the first bytes without any timeout and would
/// let silent connections pile up. HTTP/1's header read timer then runs from
/// the first moment of the connection.
pub(crate) struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &ListenerLimits) -> Builders {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders { http1, http2 }
    }

    /// Serves one connection until it ends or the drain watcher closes it.
    /// HTTP/1 connections start on the gateway's own path
    /// (`crate::h1server`), which hands them to hyper at the first request
    /// it does not serve.
    async fn serve<IO>(
        &self,
        io: IO,
        h2: bool,
        info: Arc<ConnInfo>,
        shared: Arc<Shared>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let probe = shutdown.clone();
        let mut stopped = std::pin::pin!(stopped(&mut shutdown));
        let mut stop = Stop::new(stopped.as_mut(), probe);
        if h2 {
            std::pin::pin!(self.serve_hyper(io, true, info, shared, &mut stop)).await;
            return;
        }
        // Futures pinned in place, not awaited as temporaries, which would
        // double the connection task's size (see `crate::proxy::handle`).
        let end = {
            let served =
                std::pin::pin!(h1server::serve(io, info.clone(), shared.clone(), &mut stop));
            served.await
        };
        match end {
            h1server::End::Closed => {}
            h1server::End::HandOff(io, read) => {
                shared.metrics.http1_handoffs.inc();
                let io = h1server::Rewind::new(io, read);
                std::pin::pin!(self.serve_hyper(io, false, info, shared, &mut stop)).await;
            }
        }
    }

    /// Serves one connection with hyper.
    async fn serve_hyper<IO>(
        &self,
        io: IO,
        h2: bool,
        info: Arc<ConnInfo>,
        shared: Arc<Shared>,
        stop: &mut Stop<'_>,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = info.peer;
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            proxy::handle(req.map(RequestBody::Hyper), info.clone(), shared.clone())
        });
        let io = TokioIo::new(io);
        // On shutdown: finish the requests in flight, accept no new ones,
        // then close (HTTP/2 sends GOAWAY).
        let result = if h2 {
            let mut conn = std::pin::pin!(self.http2.serve_connection(io, service));
            match until_stopped(conn.as_mut(), stop).await {
                Some(result) => result,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        } else {
            let mut conn = std::pin::pin!(self.http1.serve_connection(io, service).with_upgrades());
            match until_stopped(conn.as_mut(), stop).await {
                Some(result) => result,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, %peer, "connection ended with an error");
        }
    }
}

/// Resolves when shutdown starts (never, if the sender is gone without
/// starting it).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The start of a listener's shutdown, as seen by one connection task.
///
/// The task wakes at least twice per request; polling the watch each time
/// (a lock in its notifier) is wasted work. Once the watch holds this
/// task's waker it is only polled again when a probe (an atomic load) sees
/// a new value, or when the waker changed.
pub(crate) struct Stop<'a> {
    stopped: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    probe: watch::Receiver<bool>,
    registered: Option<Waker>,
}

impl<'a> Stop<'a> {
    /// Watches `stopped` (which resolves when shutdown starts); `probe` is
    /// a clone of the watch it waits on.
    pub(crate) fn new(
        stopped: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
        probe: watch::Receiver<bool>,
    ) -> Stop<'a> {
        Stop {
            stopped,
            probe,
            registered: None,
        }
    }

    /// Whether shutdown has started; wakes the task when it starts.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let stale = self
            .registered
            .as_ref()
            .is_none_or(|waker| !waker.will_wake(cx.waker()));
        if stale || self.probe.has_changed().unwrap_or(false) {
            if self.stopped.as_mut().poll(cx).is_ready() {
                return true;
            }
            if stale {
                self.registered = Some(cx.waker().clone());
            }
        }
        false
    }

    /// Whether shutdown has started (no waker involved).
    pub(crate) fn started(&self) -> bool {
        *self.probe.borrow()
    }
}

/// Drives `conn` to its end (`Some`), or until shutdown starts (`None`).
async fn until_stopped<C: Future>(mut conn: Pin<&mut C>, stop: &mut Stop<'_>) -> Option<C::Output> {
    std::future::poll_fn(|cx| {
        if stop.poll(cx) {
            return Poll::Ready(None);
        }
        conn.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Waits (up to `timeout`) until the connection's first bytes tell whether
/// it speaks h2c. `None` when the client closed or stayed silent.
async fn sniff_h2c(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // A partial preface: wait a moment for the rest (rare).
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
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
    let builder = Arc::new(Builders::new(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
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
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            std::pin::pin!(serve_connection(
                stream, peer, local, tls, shared, builder, stop
            ))
            .await;
        });
    }
    drop(listener);
    // Every connection holds a permit until it ends: having them all back
    // means the drain is complete.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => {}
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
    builders: Arc<Builders>,
    shutdown: watch::Receiver<bool>,
) {
    if !tls {
        let timeout = shared.config.limits.header_read_timeout;
        let Some(h2) = sniff_h2c(&stream, timeout).await else {
            return;
        };
        let info = Arc::new(ConnInfo::new(peer, local, false, None));
        std::pin::pin!(builders.serve(stream, h2, info, shared, shutdown)).await;
        return;
    }
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
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let info = Arc::new(ConnInfo::new(peer, local, true, sni));
    std::pin::pin!(builders.serve(stream, h2, info, shared, shutdown)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection holds its task's future for as long as it
    /// stays open (10,000 per listener by default), and every request
    /// copies the request future inside it. Awaited as temporaries, the
    /// futures doubled at each level of async calls: the task was 81 KB and
    /// the request future in it 17.8 KB.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let dataplane =
            crate::Dataplane::new(crate::DataplaneConfig::default()).expect("dataplane");
        let shared = dataplane.shared.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let (_stop, shutdown) = watch::channel(false);
        let builders = Arc::new(Builders::new(&shared.config.limits));
        let task = serve_connection(
            stream,
            peer,
            None,
            false,
            shared.clone(),
            builders,
            shutdown,
        );
        let size = std::mem::size_of_val(&task);
        let request = proxy::handle(
            http::Request::new(RequestBody::Empty),
            Arc::new(ConnInfo::new(peer, None, false, None)),
            shared,
        );
        let request_size = std::mem::size_of_val(&request);
        eprintln!("connection task {size} bytes, request future {request_size} bytes");
        assert!(size <= 16 * 1024, "the connection task is {size} bytes");
        assert!(
            request_size <= 6 * 1024,
            "the request future is {request_size} bytes"
        );
    }
}
