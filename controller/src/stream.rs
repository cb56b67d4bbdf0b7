//! The snapshot stream: how the controller hands routing snapshots to
//! dataplanes and learns which ones serve which version.
//!
//! ```text
//!  compile ──▶ Publisher::publish(snapshot)           (latest only: a watch)
//!                   │
//!                   ▼  one session per connected dataplane
//!  dataplane ══ mTLS, HTTP/2 ══▶ POST /v1/stream?dataplane=ID
//!     ◀── response body: snapshot frames (current one at once, then each
//!                        new version; a slow reader skips to the newest)
//!     ──▶ request body:  ACK / NACK frames ──▶ AckTracker ──▶ status
//! ```
//!
//! # Protocol
//!
//! One TLS connection (TLS 1.2+, ALPN `h2` only) carrying one HTTP/2
//! request, `POST /v1/stream?dataplane=ID`, that stays open both ways:
//!
//! - The **response** body (status 200) is a sequence of frames from the
//!   controller, each a 4-byte big-endian length followed by that many bytes
//!   of JSON: `{"snapshot": <Snapshot>}`. The current snapshot is sent as
//!   soon as the request arrives (or as soon as there is one), then every
//!   newer one. Frames are at most [`MAX_FRAME_BYTES`] (64 MiB).
//! - The **request** body carries the dataplane's answers in the same
//!   framing: `{"ack": {"version": V, "hash": H}}` when it serves that
//!   snapshot, `{"nack": {"version": V, "hash": H, "error": "..."}}` when it
//!   refused it (and kept its previous table). Answer frames are at most
//!   [`MAX_ANSWER_BYTES`] (64 KiB).
//! - `ID` is 1 to 253 characters of `[A-Za-z0-9._-]` (a pod name). A second
//!   stream with the same ID replaces the first (a dataplane that
//!   reconnected before the old connection was noticed dead).
//! - Refusals are plain HTTP: 400 bad ID, 404 other paths, 405 other
//!   methods, 503 too many dataplanes.
//!
//! Why one bidirectional stream rather than a `GET` for snapshots plus a
//! `POST` per ACK: the stream's lifetime *is* the dataplane's presence, so
//! a dataplane is in [`AckTracker::dataplanes`] exactly while its stream is
//! open, and an ACK can never arrive for a dataplane that already left, or
//! on a different connection (or controller replica) than its snapshot.
//! HTTP/2 gives framing per direction, flow control (a dataplane that stops
//! reading stops the writer, which then only keeps the newest snapshot) and
//! PING keepalive, which notices a dead peer whose TCP connection stays
//! silently open (a partitioned node) within
//! `keepalive_interval + keepalive_timeout`.
//!
//! # Bounds
//!
//! - Per dataplane at most three older frames are in flight (one in the
//!   session's queue, one taken by hyper waiting for flow-control window,
//!   one in HTTP/2's send buffer); newer snapshots replace older unsent ones
//!   (`tokio::sync::watch`), so memory never grows with a slow consumer, and
//!   when it reads again it jumps to the newest version.
//! - Each snapshot is serialized once, by the first session that sends it,
//!   and the bytes (reference-counted) are shared by all sessions.
//! - At most [`StreamOptions::max_dataplanes`] streams (503 beyond), and at
//!   most that many plus 64 connections, including TLS handshakes, which
//!   time out after 10 s.
//!
//! The framing is written here and in `dataplane::client` by hand: it is a
//! length prefix, and no crate would be smaller than the twenty lines it
//! takes. A gRPC stack would bring protobuf code generation for one message
//! type whose content is already a serde model.

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use snapshot::Snapshot;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Largest snapshot frame sent (and accepted by dataplanes).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Largest ACK / NACK frame accepted from a dataplane.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The stream's path.
pub const STREAM_PATH: &str = "/v1/stream";

/// A published snapshot and, once a session needed it, its encoded frame.
struct Published {
    snapshot: Arc<Snapshot>,
    frame: OnceLock<Result<Bytes, String>>,
}

impl Published {
    fn frame(&self) -> &Result<Bytes, String> {
        self.frame.get_or_init(|| encode_snapshot(&self.snapshot))
    }
}

fn encode_snapshot(snapshot: &Snapshot) -> Result<Bytes, String> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        snapshot: &'a Snapshot,
    }
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, &Envelope { snapshot }).map_err(|e| e.to_string())?;
    let len = out.len() - 4;
    if len > MAX_FRAME_BYTES {
        return Err(format!(
            "snapshot version {} is {len} bytes encoded, over the {MAX_FRAME_BYTES}-byte frame limit",
            snapshot.version
        ));
    }
    // len <= 64 MiB, so it fits the 4-byte prefix.
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(Bytes::from(out))
}

/// Hands new snapshots to every connected dataplane. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    latest: Arc<watch::Sender<Option<Arc<Published>>>>,
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
    /// next (a slow one skips the versions it had no time for), and every
    /// dataplane that connects later gets it first.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        tracing::debug!(version = snapshot.version, hash = %snapshot.hash, "publishing snapshot");
        self.latest.send_replace(Some(Arc::new(Published {
            snapshot,
            frame: OnceLock::new(),
        })));
    }

    /// The current snapshot, if any.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.latest.borrow().as_ref().map(|p| p.snapshot.clone())
    }

    fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.latest.subscribe()
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
    sessions: Mutex<BTreeMap<String, Session>>,
    next_token: AtomicU64,
    changed: watch::Sender<u64>,
}

struct Session {
    token: u64,
    state: DataplaneState,
    /// Tells the session's task that a newer stream took its ID.
    replaced: Arc<Notify>,
}

/// A dataplane's answer to one snapshot, as sent on the wire.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Answer {
    Ack {
        version: u64,
        hash: String,
    },
    Nack {
        version: u64,
        #[serde(default)]
        hash: String,
        error: String,
    },
}

impl AckTracker {
    fn new() -> AckTracker {
        let (changed, _) = watch::channel(0);
        AckTracker {
            inner: Arc::new(TrackerInner {
                sessions: Mutex::new(BTreeMap::new()),
                next_token: AtomicU64::new(1),
                changed,
            }),
        }
    }

    /// The connected dataplanes, sorted by id.
    pub fn dataplanes(&self) -> Vec<DataplaneState> {
        self.lock().values().map(|s| s.state.clone()).collect()
    }

    /// A counter that goes up on every connect, disconnect, ACK and NACK.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Session>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Registers a stream for `id`; `None` when `max` other dataplanes are
    /// connected. Replaces (and stops) an older stream with the same ID.
    fn connect(&self, id: &str, max: usize) -> Option<(u64, Arc<Notify>)> {
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        {
            let mut sessions = self.lock();
            if !sessions.contains_key(id) && sessions.len() >= max {
                return None;
            }
            let session = Session {
                token,
                state: DataplaneState {
                    id: id.to_owned(),
                    acked_hash: None,
                    acked_version: None,
                    nack: None,
                },
                replaced: replaced.clone(),
            };
            if let Some(old) = sessions.insert(id.to_owned(), session) {
                old.replaced.notify_one();
            }
        }
        self.bump();
        Some((token, replaced))
    }

    fn answer(&self, id: &str, token: u64, answer: Answer) {
        {
            let mut sessions = self.lock();
            let Some(session) = sessions.get_mut(id).filter(|s| s.token == token) else {
                return;
            };
            match answer {
                Answer::Ack { version, hash } => {
                    tracing::info!(dataplane = id, version, %hash, "snapshot acknowledged");
                    session.state.acked_hash = Some(hash);
                    session.state.acked_version = Some(version);
                    session.state.nack = None;
                }
                Answer::Nack { version, error, .. } => {
                    tracing::warn!(dataplane = id, version, %error, "snapshot refused");
                    session.state.nack = Some((version, error));
                }
            }
        }
        self.bump();
    }

    fn disconnect(&self, id: &str, token: u64) {
        let removed = {
            let mut sessions = self.lock();
            if sessions.get(id).is_some_and(|s| s.token == token) {
                sessions.remove(id);
                true
            } else {
                false
            }
        };
        if removed {
            self.bump();
        }
    }
}

/// Where and how the stream is served.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Limits and timers of the stream server; [`serve`] uses the defaults.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Most dataplanes connected at once.
    pub max_dataplanes: usize,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            max_dataplanes: 1024,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

fn invalid(what: &str, reason: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("snapshot stream: {what}: {reason}"),
    )
}

/// The server's TLS settings: its certificate, and a verifier that
/// requires a client certificate chaining to `client_ca_pem`.
pub fn server_tls_config(config: &StreamConfig) -> std::io::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(config.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("server certificate", e))?;
    if chain.is_empty() {
        return Err(invalid("server certificate", "no CERTIFICATE PEM block"));
    }
    let key = PrivateKeyDer::from_pem_slice(config.server_key_pem.as_bytes())
        .map_err(|e| invalid("server key", e))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(config.client_ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| invalid("client CA", e))?;
        roots.add(cert).map_err(|e| invalid("client CA", e))?;
    }
    if roots.is_empty() {
        return Err(invalid("client CA", "no CERTIFICATE PEM block"));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid("client CA", e))?;
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("server certificate and key", e))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

/// Serves the snapshot stream until `shutdown` turns true.
pub async fn serve(
    config: StreamConfig,
    publisher: Publisher,
    tracker: AckTracker,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    serve_listener(
        listener,
        &config,
        StreamOptions::default(),
        publisher,
        tracker,
        shutdown,
    )
    .await
}

/// Like [`serve`], on an already bound listener and with explicit options
/// (tests bind port 0 and shorten the keepalive).
pub async fn serve_listener(
    listener: TcpListener,
    config: &StreamConfig,
    options: StreamOptions,
    publisher: Publisher,
    tracker: AckTracker,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (_fixed, tls) = watch::channel(Arc::new(server_tls_config(config)?));
    serve_listener_with_tls(listener, tls, options, publisher, tracker, shutdown).await
}

/// Like [`serve_listener`], with TLS settings that may change while it
/// serves (a renewed certificate or client CA): each new connection is
/// accepted with the latest value of `tls`; connections already open keep
/// the settings they were accepted with.
pub async fn serve_listener_with_tls(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    options: StreamOptions,
    publisher: Publisher,
    tracker: AckTracker,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(options.max_dataplanes.saturating_add(64)));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .max_concurrent_streams(4)
        .max_header_list_size(16 * 1024);
    let builder = Arc::new(builder);
    let options = Arc::new(options);
    tracing::info!(listen = ?listener.local_addr().ok(), "snapshot stream listening");
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "snapshot stream: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = wait_true(&mut shutdown) => break,
        };
        // Reap finished connection tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "snapshot stream: too many connections, refusing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.borrow().clone());
        let builder = builder.clone();
        let publisher = publisher.clone();
        let tracker = tracker.clone();
        let options = options.clone();
        let mut shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::warn!(%peer, %error, "snapshot stream: TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "snapshot stream: TLS handshake timed out");
                        return;
                    }
                };
            let service = {
                let shutdown = shutdown.clone();
                hyper::service::service_fn(move |request| {
                    let response =
                        handle(request, &publisher, &tracker, &options, shutdown.clone());
                    async move { Ok::<_, Infallible>(response) }
                })
            };
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "snapshot stream: connection closed");
                    }
                }
                _ = wait_true(&mut shutdown) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
    }
    // Sessions end on the same shutdown signal; give connections a moment
    // to send GOAWAY, then drop them.
    let _ = tokio::time::timeout(Duration::from_secs(6), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

async fn wait_true(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender counts as shutdown.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

type StreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, message: &str) -> Response<StreamBody> {
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(format!("{message}\n"))).boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// Valid dataplane IDs: what a pod name can be.
fn valid_id(id: &str) -> bool {
    (1..=253).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn dataplane_id(request: &Request<Incoming>) -> Option<String> {
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "dataplane").then(|| value.to_owned())
    })
}

fn handle(
    request: Request<Incoming>,
    publisher: &Publisher,
    tracker: &AckTracker,
    options: &StreamOptions,
    shutdown: watch::Receiver<bool>,
) -> Response<StreamBody> {
    if request.uri().path() != STREAM_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; the stream is POST /v1/stream",
        );
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let Some(id) = dataplane_id(&request).filter(|id| valid_id(id)) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "?dataplane=ID is required: 1 to 253 characters of A-Z a-z 0-9 . _ -",
        );
    };
    let Some((token, replaced)) = tracker.connect(&id, options.max_dataplanes) else {
        tracing::warn!(dataplane = %id, max = options.max_dataplanes, "snapshot stream: too many dataplanes");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dataplanes connected",
        );
    };
    tracing::info!(dataplane = %id, "dataplane connected");
    let (frames_tx, frames_rx) = mpsc::channel(1);
    let session = SessionTask {
        id,
        token,
        replaced,
        tracker: tracker.clone(),
        latest: publisher.subscribe(),
        frames: frames_tx,
        answers: request.into_body(),
        shutdown,
    };
    tokio::spawn(session.run());
    let mut response = Response::new(FrameBody { rx: frames_rx }.boxed_unsync());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ferrogate-snapshot-stream"),
    );
    response
}

/// The response body: frames handed over by the session task.
struct FrameBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|frame| frame.map(|b| Ok(Frame::data(b))))
    }
}

struct SessionTask {
    id: String,
    token: u64,
    replaced: Arc<Notify>,
    tracker: AckTracker,
    latest: watch::Receiver<Option<Arc<Published>>>,
    frames: mpsc::Sender<Bytes>,
    answers: Incoming,
    shutdown: watch::Receiver<bool>,
}

impl SessionTask {
    async fn run(self) {
        let SessionTask {
            id,
            token,
            replaced,
            tracker,
            mut latest,
            frames,
            mut answers,
            mut shutdown,
        } = self;
        let writer = async {
            // The current snapshot goes out at once.
            latest.mark_changed();
            loop {
                // Room first, then the newest snapshot: what was published
                // while the peer was slow is skipped, never queued.
                let Ok(permit) = frames.reserve().await else {
                    return "the dataplane stopped reading";
                };
                if latest.changed().await.is_err() {
                    return "the publisher is gone";
                }
                let Some(published) = latest.borrow_and_update().clone() else {
                    continue;
                };
                match published.frame() {
                    Ok(frame) => {
                        tracing::debug!(dataplane = %id, version = published.snapshot.version, "sending snapshot");
                        permit.send(frame.clone());
                    }
                    Err(error) => {
                        tracing::error!(dataplane = %id, %error, "snapshot not sent");
                    }
                }
            }
        };
        let reader = async {
            let mut decoder = FrameDecoder::new(MAX_ANSWER_BYTES);
            loop {
                let frame = match answers.frame().await {
                    // A half-closed request (no more answers) still reads
                    // snapshots; its departure shows on the response side.
                    None => return std::future::pending::<String>().await,
                    Some(Err(error)) => return format!("stream error: {error}"),
                    Some(Ok(frame)) => frame,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                decoder.push(data);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(bytes)) => match serde_json::from_slice::<Answer>(&bytes) {
                            Ok(answer) => tracker.answer(&id, token, answer),
                            Err(error) => return format!("unreadable answer frame: {error}"),
                        },
                        Ok(None) => break,
                        Err(error) => return error.to_string(),
                    }
                }
            }
        };
        let reason: String = tokio::select! {
            reason = writer => reason.to_owned(),
            reason = reader => reason,
            _ = frames.closed() => "the dataplane went away".to_owned(),
            _ = replaced.notified() => "a newer stream took over this dataplane ID".to_owned(),
            _ = wait_true(&mut shutdown) => "the server is shutting down".to_owned(),
        };
        tracker.disconnect(&id, token);
        tracing::info!(dataplane = %id, %reason, "dataplane disconnected");
    }
}

/// Frame larger than allowed.
#[derive(Debug, thiserror::Error)]
#[error("frame of {len} bytes is over the {max}-byte limit")]
pub struct FrameTooLarge {
    len: usize,
    max: usize,
}

/// Splits a byte stream into length-prefixed frames.
struct FrameDecoder {
    buffer: BytesMut,
    max: usize,
}

impl FrameDecoder {
    fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buffer: BytesMut::new(),
            max,
        }
    }

    fn push(&mut self, data: Bytes) {
        self.buffer.extend_from_slice(&data);
    }

    fn next_frame(&mut self) -> Result<Option<Bytes>, FrameTooLarge> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&self.buffer[..4]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max {
            return Err(FrameTooLarge { len, max: self.max });
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        self.buffer.advance(4);
        Ok(Some(self.buffer.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut snapshot = Snapshot {
            version: 7,
            ..Snapshot::default()
        };
        snapshot.seal();
        let frame = encode_snapshot(&snapshot).expect("encode");
        let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        let mut twice = frame.to_vec();
        twice.extend_from_slice(&frame);
        for chunk in twice.chunks(3) {
            decoder.push(Bytes::copy_from_slice(chunk));
        }
        for _ in 0..2 {
            let body = decoder.next_frame().expect("ok").expect("a frame");
            let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(value["snapshot"]["version"], 7);
            assert_eq!(value["snapshot"]["hash"], snapshot.hash.as_str());
        }
        assert!(decoder.next_frame().expect("ok").is_none());
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut decoder = FrameDecoder::new(16);
        decoder.push(Bytes::from_static(&[0, 0, 1, 0]));
        assert!(decoder.next_frame().is_err());
    }

    #[test]
    fn answers_parse() {
        let ack: Answer =
            serde_json::from_str(r#"{"ack":{"version":3,"hash":"ab"}}"#).expect("ack");
        assert_eq!(
            ack,
            Answer::Ack {
                version: 3,
                hash: "ab".into()
            }
        );
        let nack: Answer =
            serde_json::from_str(r#"{"nack":{"version":4,"hash":"cd","error":"bad regex"}}"#)
                .expect("nack");
        assert!(matches!(nack, Answer::Nack { version: 4, .. }));
        assert!(serde_json::from_str::<Answer>(r#"{"hello":{}}"#).is_err());
    }

    #[test]
    fn tracker_replaces_and_removes_by_session() {
        let (_publisher, tracker) = Publisher::new();
        let mut changed = tracker.changed();
        let (first, _) = tracker.connect("dp-1", 2).expect("room");
        let (second, _) = tracker.connect("dp-1", 2).expect("same id replaces");
        assert_eq!(tracker.dataplanes().len(), 1);
        tracker.answer(
            "dp-1",
            first,
            Answer::Ack {
                version: 1,
                hash: "h".into(),
            },
        );
        assert_eq!(
            tracker.dataplanes()[0].acked_version,
            None,
            "stale session ignored"
        );
        tracker.answer(
            "dp-1",
            second,
            Answer::Ack {
                version: 2,
                hash: "h2".into(),
            },
        );
        assert_eq!(tracker.dataplanes()[0].acked_version, Some(2));
        tracker.answer(
            "dp-1",
            second,
            Answer::Nack {
                version: 3,
                hash: String::new(),
                error: "no".into(),
            },
        );
        assert_eq!(tracker.dataplanes()[0].nack, Some((3, "no".into())));
        assert_eq!(tracker.dataplanes()[0].acked_hash.as_deref(), Some("h2"));
        tracker.connect("dp-2", 2).expect("room");
        assert!(tracker.connect("dp-3", 2).is_none(), "limit");
        tracker.disconnect("dp-1", first);
        assert_eq!(
            tracker.dataplanes().len(),
            2,
            "old session leaving removes nothing"
        );
        tracker.disconnect("dp-1", second);
        assert_eq!(tracker.dataplanes().len(), 1);
        assert!(changed.has_changed().expect("open"));
        assert!(*changed.borrow_and_update() >= 6);
    }

    #[test]
    fn ids_are_pod_names() {
        assert!(valid_id("ferrogate-dataplane-7d9f-x2"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"a".repeat(254)));
    }
}
