//! Keep-alive connections to plain-text HTTP/1.1 upstreams.
//!
//! Most clusters are plain HTTP/1.1 to endpoint IPs inside the cluster, and
//! that is the path every request of a busy gateway takes. hyper-util's
//! generic pooled client costs more than we need there: per request it
//! clones the connector, looks the pool up by a hashed scheme+authority
//! key, and spawns a task to hand the connection back once the response
//! has been read. This pool does less. Each endpoint keeps two idle lists:
//!
//! ```text
//!  table build ──▶ Pools::endpoint(authority) ──▶ Arc<EndpointPool>, one per endpoint,
//!                                                   kept across snapshot swaps
//!  buffered request ──▶ send_buffered: newest idle Connection with nothing
//!      (no upgrade)       unread on it, or connect ──▶ h1client exchange on
//!                         this task ──▶ back in the list when the body ends
//!  other request ──▶ send: newest idle hyper connection that is ready, or
//!                    connect + handshake + spawned connection task
//!                    ──▶ back in the list as soon as the head arrives
//! ```
//!
//! Requests whose body was read before sending (small bodies, and every
//! request without one) take the first path; streamed bodies and protocol
//! upgrades take hyper's connection, which handles them. A hyper
//! connection goes back to its list as soon as the response head arrives,
//! while its body may still be streaming: hyper reports it ready only once
//! the body has been read to the end, and checkout skips it until then. On
//! both paths a response body that is dropped unread closes the connection,
//! and a request that met a connection the upstream had closed while idle
//! is sent again on another one (for the direct path: only requests that
//! may be repeated, as the upstream might have seen it).
//!
//! HTTPS and HTTP/2 clusters keep hyper-util's client (`upstream.rs`).

use crate::h1client::{Connection, ExchangeError, ResponseBody};
use crate::upstream::UpstreamBody;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per endpoint; more are closed when they finish.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// A connection unused for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the idle list is swept for expired connections.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// TCP keepalive on upstream connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Sends tried on connections that turned out closed before a new
/// connection is used.
const MAX_STALE_TRIES: usize = 4;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, timed out).
    #[error("connect to {authority}: {reason}")]
    Connect {
        /// The endpoint.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// The connection failed while the request was sent or the response
    /// head awaited.
    #[error("{0}")]
    Request(#[from] hyper::Error),
    /// The same, on a connection `h1client` drives.
    #[error("{0}")]
    Exchange(#[from] ExchangeError),
}

impl SendError {
    /// Whether the request never reached the upstream.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }

    /// Whether the deadline passed before the response head came.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendError::Exchange(ExchangeError::TimedOut))
    }
}

/// The pools of all endpoints, shared by every table so that connections
/// survive snapshot swaps.
#[derive(Default)]
pub struct Pools {
    endpoints: Mutex<HashMap<(String, u64), Arc<EndpointPool>>>,
}

impl Pools {
    /// Drops the pools (and their connections) that no table uses any
    /// more. Called once per table build.
    pub fn prune(&self) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        endpoints.retain(|_, pool| Arc::strong_count(pool) > 1);
    }

    /// Sweeps every endpoint's idle lists: connections the upstream closed
    /// (they would sit in CLOSE_WAIT until the endpoint's next request) or
    /// left unused for [`IDLE_TIMEOUT`] are closed. Runs every
    /// [`SWEEP_EVERY`] while the dataplane serves ([`Pools::reap`]).
    pub fn sweep_idle(&self) {
        let pools: Vec<Arc<EndpointPool>> = {
            let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            endpoints.values().cloned().collect()
        };
        let now = Instant::now();
        for pool in pools {
            pool.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sweep(now);
        }
    }

    /// Sweeps the idle lists every `every` ([`SWEEP_EVERY`] in the
    /// dataplane), until the task running it is aborted.
    pub async fn reap(&self, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sweep_idle();
        }
    }

    /// The pool of one endpoint (`host:port`), created on first use.
    /// Called while building a table, never on the request path.
    pub fn endpoint(&self, authority: &Authority, connect_timeout: Duration) -> Arc<EndpointPool> {
        let timeout_ms = u64::try_from(connect_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        endpoints
            .entry((authority.as_str().to_owned(), timeout_ms))
            .or_insert_with(|| {
                Arc::new(EndpointPool {
                    authority: authority.clone(),
                    connect_timeout,
                    idle: Mutex::new(Idle {
                        connections: Vec::new(),
                        raw: Vec::new(),
                        swept: Instant::now(),
                    }),
                })
            })
            .clone()
    }
}

/// Keep-alive connections to one endpoint.
pub struct EndpointPool {
    authority: Authority,
    connect_timeout: Duration,
    idle: Mutex<Idle>,
}

struct Idle {
    connections: Vec<Pooled>,
    /// Connections whose exchanges `h1client` runs, newest last.
    raw: Vec<(Connection, Instant)>,
    swept: Instant,
}

impl Idle {
    /// Drops connections that closed or were idle too long.
    fn sweep(&mut self, now: Instant) {
        self.swept = now;
        self.connections
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
        self.raw.retain_mut(|(conn, since)| {
            now.duration_since(*since) < IDLE_TIMEOUT && conn.is_usable()
        });
    }
}

struct Pooled {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl EndpointPool {
    /// Sends `request` (its URI is reduced to origin form; the Host header
    /// is sent as the request has it) and returns the response head.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
        for _ in 0..MAX_STALE_TRIES {
            let Some(mut sender) = self.checkout() else {
                break;
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.put_back(sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    // Closed before the request was written: safe to send
                    // it on another connection.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Request(error.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.try_send_request(request).await {
            Ok(response) => {
                self.put_back(sender);
                Ok(response)
            }
            Err(error) => Err(SendError::Request(error.into_error())),
        }
    }

    /// Sends a request whose body is already read, on a connection this
    /// task drives itself (`h1client`): no connection task, no channel.
    /// The URI is sent in origin form. An idle connection that the
    /// upstream turns out to have closed is replaced, for requests that
    /// may be repeated; others get the error.
    pub async fn send_buffered(
        self: &Arc<Self>,
        head: &http::request::Parts,
        added: &crate::forwarded::Added,
        body: &Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Response<ResponseBody>, SendError> {
        let repeatable = head.method.is_idempotent();
        for _ in 0..MAX_STALE_TRIES {
            let Some(conn) = self.checkout_raw() else {
                break;
            };
            // Pinned in place: see `crate::proxy::handle`.
            match std::pin::pin!(conn.exchange(head, added, body, self, deadline)).await {
                Err(ExchangeError::Stale) if repeatable => continue,
                outcome => return outcome.map_err(SendError::from),
            }
        }
        let stream = match tokio::time::timeout_at(deadline, self.connect_tcp()).await {
            Ok(connected) => connected?,
            Err(_) => return Err(SendError::Exchange(ExchangeError::TimedOut)),
        };
        Connection::new(stream)
            .exchange(head, added, body, self, deadline)
            .await
            .map_err(SendError::from)
    }

    /// Idle connections (including ones still streaming a response).
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.connections.len() + idle.raw.len())
            .unwrap_or(0)
    }

    fn checkout_raw(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((mut conn, _)) = idle.raw.pop() {
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Takes back a connection whose response has ended.
    pub(crate) fn put_raw(&self, conn: Connection) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(idle.swept) >= SWEEP_EVERY {
            idle.sweep(now);
        }
        if idle.raw.len() < MAX_IDLE_PER_ENDPOINT {
            idle.raw.push((conn, now));
        }
    }

    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut i = idle.connections.len();
        while i > 0 {
            i -= 1;
            let sender = &idle.connections[i].sender;
            if sender.is_closed() {
                idle.connections.swap_remove(i);
            } else if sender.is_ready() {
                return Some(idle.connections.swap_remove(i).sender);
            }
        }
        None
    }

    fn put_back(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(idle.swept) >= SWEEP_EVERY {
            idle.sweep(now);
        }
        if idle.connections.len() < MAX_IDLE_PER_ENDPOINT {
            idle.connections.push(Pooled { sender, since: now });
        }
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, SendError> {
        let stream = self.connect_tcp().await?;
        let (sender, connection) = Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| SendError::Connect {
                authority: self.authority.as_str().to_owned(),
                reason: error.to_string(),
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_tcp(&self) -> Result<TcpStream, SendError> {
        let failed = |reason: String| SendError::Connect {
            authority: self.authority.as_str().to_owned(),
            reason,
        };
        let host = self.authority.host();
        // An IPv6 authority is bracketed; the resolver wants it bare.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = self.authority.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(failed(error.to_string())),
            Err(_) => return Err(failed("timed out".to_owned())),
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream that answers every request on a connection with `body`
    /// and counts the connections it accepted and the request lines it saw.
    async fn upstream(
        body: &'static str,
        close_after: Option<usize>,
    ) -> (Authority, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), lines.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            seen.lock()
                                .expect("lines")
                                .push(head.lines().next().unwrap_or("").to_owned());
                            served += 1;
                            let last = close_after == Some(served);
                            let response = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n{}",
                                body.len(),
                                if last { "connection: close\r\n" } else { "" },
                                body
                            );
                            if stream.write_all(response.as_bytes()).await.is_err() || last {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (
            addr.to_string().parse().expect("authority"),
            accepted,
            lines,
        )
    }

    fn get(path: &str) -> Request<UpstreamBody> {
        Request::builder()
            .uri(format!("http://upstream.test{path}"))
            .header("host", "upstream.test")
            .body(Either::Right(Full::new(Bytes::new())))
            .expect("request")
    }

    async fn text(response: Response<Incoming>) -> String {
        let body = response.into_body().collect().await.expect("body");
        String::from_utf8_lossy(&body.to_bytes()).into_owned()
    }

    #[tokio::test]
    async fn reuses_a_connection_once_its_response_was_read() {
        let (authority, accepted, lines) = upstream("hello", None).await;
        let pools = Pools::default();
        let pool = pools.endpoint(&authority, Duration::from_secs(1));
        for i in 0..5 {
            let response = pool.send(get(&format!("/r{i}?q=1"))).await.expect("send");
            assert_eq!(text(response).await, "hello");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one keep-alive connection"
        );
        let lines = lines.lock().expect("lines").clone();
        assert_eq!(lines[0], "GET /r0?q=1 HTTP/1.1", "origin form on the wire");
        assert_eq!(lines.len(), 5);
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_shared() {
        // A body far larger than what a connection buffers on its own.
        let big: &'static str = Box::leak("x".repeat(4 << 20).into_boxed_str());
        let (authority, accepted, _) = upstream(big, None).await;
        let pools = Pools::default();
        let pool = pools.endpoint(&authority, Duration::from_secs(1));
        // The first body is not read yet: its connection is busy.
        let first = pool.send(get("/a")).await.expect("first");
        let second = pool.send(get("/b")).await.expect("second");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(text(first).await.len(), big.len());
        assert_eq!(text(second).await.len(), big.len());
        // Let the connection tasks see that the bodies were read.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let third = pool.send(get("/c")).await.expect("third");
        assert_eq!(text(third).await.len(), big.len());
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "reused after reading");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let (authority, accepted, _) = upstream("ok", Some(1)).await;
        let pools = Pools::default();
        let pool = pools.endpoint(&authority, Duration::from_secs(1));
        for _ in 0..3 {
            let response = pool.send(get("/")).await.expect("send");
            assert_eq!(text(response).await, "ok");
            // Let the connection task see the close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert!(pool.idle_count() <= 1);
    }

    #[tokio::test]
    async fn idle_connections_the_upstream_closed_are_swept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority: Authority = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority");
        let pools = Pools::default();
        let pool = pools.endpoint(&authority, Duration::from_secs(1));
        let (ours, theirs) = tokio::join!(pool.connect_tcp(), listener.accept());
        let ours = ours.expect("connect");
        let (theirs, _) = theirs.expect("accept");
        pool.put_raw(Connection::new(ours));
        pools.sweep_idle();
        assert_eq!(pool.idle_count(), 1, "an open idle connection stays");
        // The upstream closes it while idle: the reaper's next sweep, not
        // the next request, closes our side.
        let pools = Arc::new(pools);
        let reaping = pools.clone();
        let reaper = tokio::spawn(async move { reaping.reap(Duration::from_millis(10)).await });
        drop(theirs);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.idle_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reaper.abort();
        assert_eq!(pool.idle_count(), 0, "the closed connection was swept");
    }

    #[tokio::test]
    async fn connect_failures_say_so() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pools = Pools::default();
        let pool = pools.endpoint(
            &addr.to_string().parse().expect("authority"),
            Duration::from_secs(1),
        );
        let error = pool.send(get("/")).await.expect_err("refused");
        assert!(error.is_connect(), "{error}");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    #[tokio::test]
    async fn pools_are_shared_by_endpoint_and_dropped_when_unused() {
        let pools = Pools::default();
        let a: Authority = "10.0.0.1:80".parse().expect("authority");
        let b: Authority = "10.0.0.2:80".parse().expect("authority");
        let first = pools.endpoint(&a, Duration::from_secs(1));
        let again = pools.endpoint(&a, Duration::from_secs(1));
        assert!(Arc::ptr_eq(&first, &again));
        drop((first, again));
        let _other = pools.endpoint(&b, Duration::from_secs(1));
        assert_eq!(pools.endpoints.lock().expect("pools").len(), 2);
        pools.prune();
        assert_eq!(pools.endpoints.lock().expect("pools").len(), 1);
    }
}
