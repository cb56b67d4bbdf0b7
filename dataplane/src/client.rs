//! The snapshot client: keeps a [`Dataplane`] fed from the controller's
//! snapshot stream (the protocol is documented in `controller::stream`).
//!
//! ```text
//!  connect (mTLS, h2) ──▶ POST /v1/stream?dataplane=ID
//!     ◀── snapshot frame ──▶ verify hash ──▶ Dataplane::apply (blocking pool)
//!                                   ok │            │ error
//!                     ACK (version, hash)            NACK (version, error);
//!                     persist (latest only)          the last good table stays
//!  stream ends / fails ──▶ wait 100 ms .. 10 s (exponential, jittered) ──▶ connect
//! ```
//!
//! The certificate, key and CA files are read again on every connection
//! attempt, so a rotated client certificate (a Secret mounted as files) is
//! used from the next reconnect on without a restart.

use crate::persist::{self, StateDir};
use crate::Dataplane;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig as TlsConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use snapshot::Snapshot;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;

/// Largest snapshot frame accepted (the controller's limit too).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Longest error message sent in a NACK (the controller accepts answer
/// frames up to 64 KiB).
pub const MAX_NACK_MESSAGE: usize = 8 * 1024;

/// How to reach the controller.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://HOST:PORT` of the controller's snapshot stream.
    pub controller: String,
    /// This dataplane's name (its pod name).
    pub id: String,
    /// Client certificate chain (PEM file).
    pub cert_file: PathBuf,
    /// Client private key (PEM file).
    pub key_file: PathBuf,
    /// CA that signed the controller's certificate (PEM file).
    pub ca_file: PathBuf,
    /// Where the last good snapshot is kept, if anywhere.
    pub state: Option<StateDir>,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long a TCP connect plus TLS handshake may take.
    pub connect_timeout: Duration,
    /// How often the connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
}

impl ClientConfig {
    /// Settings with the default timers.
    pub fn new(
        controller: impl Into<String>,
        id: impl Into<String>,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
        ca_file: impl Into<PathBuf>,
    ) -> ClientConfig {
        ClientConfig {
            controller: controller.into(),
            id: id.into(),
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            ca_file: ca_file.into(),
            state: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection to the controller ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller URL is unusable.
    #[error("--controller {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A certificate, key or CA file is unreadable or invalid.
    #[error("{what} {path}: {reason}")]
    Credentials {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// TCP connect or TLS handshake failed.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    /// The controller answered with an error status.
    #[error("the controller refused the stream: {status} {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// Body text.
        message: String,
    },
    /// The controller sent something that is not a frame.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The controller ended the stream.
    #[error("the controller closed the stream")]
    Closed,
}

/// Exponential backoff with jitter: each delay is drawn from
/// `[d/2, d]` where `d` doubles from `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Back to `min` (after a connection that worked).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Runs the client until `shutdown` turns true: connects, applies every
/// snapshot, answers, reconnects on failure. Errors are logged, never
/// returned: a dataplane keeps serving its last good table whatever the
/// controller does.
pub async fn run(config: ClientConfig, dataplane: Dataplane, mut shutdown: watch::Receiver<bool>) {
    let persist = spawn_persister(config.state.clone());
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    loop {
        let mut received = false;
        let result = tokio::select! {
            result = session(&config, &dataplane, &persist, &mut received) => result,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        if received {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match result {
            Ok(()) => {}
            Err(error) => tracing::warn!(
                controller = %config.controller,
                %error,
                retry_in_ms = delay.as_millis() as u64,
                "snapshot stream lost"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Writes the newest applied snapshot to the state directory in the
/// background; a burst of versions writes only the last.
fn spawn_persister(state: Option<StateDir>) -> watch::Sender<Option<Arc<Snapshot>>> {
    let (tx, mut rx) = watch::channel::<Option<Arc<Snapshot>>>(None);
    if let Some(state) = state {
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(snapshot) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let state = state.clone();
                let version = snapshot.version;
                let stored = tokio::task::spawn_blocking(move || state.store(&snapshot)).await;
                match stored {
                    Ok(Ok(())) => tracing::debug!(version, "snapshot persisted"),
                    Ok(Err(error)) => {
                        tracing::error!(version, %error, "persisting the snapshot failed")
                    }
                    Err(error) => {
                        tracing::error!(version, %error, "persisting the snapshot failed")
                    }
                }
            }
        });
    }
    tx
}

fn read_file(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Credentials {
        what,
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// The TLS settings for the stream: trust only `ca_file`, present the
/// client certificate, speak HTTP/2.
pub fn tls_config(config: &ClientConfig) -> Result<TlsConfig, ClientError> {
    let bad = |what: &'static str, path: &PathBuf, reason: String| ClientError::Credentials {
        what,
        path: path.clone(),
        reason,
    };
    let ca = read_file("CA file", &config.ca_file)?;
    let cert = read_file("certificate file", &config.cert_file)?;
    let key = read_file("key file", &config.key_file)?;
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca) {
        let der = der.map_err(|e| bad("CA file", &config.ca_file, e.to_string()))?;
        roots
            .add(der)
            .map_err(|e| bad("CA file", &config.ca_file, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad(
            "CA file",
            &config.ca_file,
            "no CERTIFICATE PEM block".into(),
        ));
    }
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate file", &config.cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "certificate file",
            &config.cert_file,
            "no CERTIFICATE PEM block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| bad("key file", &config.key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = TlsConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("certificate file", &config.cert_file, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("key file", &config.key_file, e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

struct Target {
    host: String,
    port: u16,
    authority: String,
}

fn target(url: &str) -> Result<Target, ClientError> {
    let bad = |reason| ClientError::Url {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must start with https://"));
    }
    let authority = uri.authority().ok_or(bad("no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Target {
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(443),
        authority: authority.as_str().to_owned(),
    })
}

/// The request body: answer frames.
struct AnswerBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for AnswerBody {
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

/// A dataplane's answer, as sent on the wire.
#[derive(Serialize, Debug)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ack {
        version: u64,
        hash: String,
    },
    Nack {
        version: u64,
        hash: String,
        error: String,
    },
}

fn encode(answer: &Answer) -> Bytes {
    let mut out = vec![0u8; 4];
    // Plain data with string fields: serialization cannot fail.
    let _ = serde_json::to_writer(&mut out, answer);
    let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&len.to_be_bytes());
    Bytes::from(out)
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_NACK_MESSAGE {
        let mut end = MAX_NACK_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    snapshot: Snapshot,
}

/// Just enough of a frame to name it in a NACK when the rest does not
/// parse.
#[derive(Deserialize)]
struct EnvelopeHead {
    snapshot: Head,
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    hash: String,
}

/// Decodes and checks one snapshot frame; the error is the NACK to send.
pub fn decode_frame(bytes: &[u8]) -> Result<Snapshot, (u64, String, String)> {
    match serde_json::from_slice::<Envelope>(bytes) {
        Ok(Envelope { snapshot }) => match persist::verify(&snapshot) {
            Ok(()) => Ok(snapshot),
            Err(error) => Err((snapshot.version, snapshot.hash.clone(), error.to_string())),
        },
        Err(error) => {
            let (version, hash) = serde_json::from_slice::<EnvelopeHead>(bytes)
                .map(|h| (h.snapshot.version, h.snapshot.hash))
                .unwrap_or_default();
            Err((version, hash, format!("unreadable snapshot: {error}")))
        }
    }
}

async fn session(
    config: &ClientConfig,
    dataplane: &Dataplane,
    persist: &watch::Sender<Option<Arc<Snapshot>>>,
    received: &mut bool,
) -> Result<(), ClientError> {
    let target = target(&config.controller)?;
    let tls = tls_config(config)?;
    let addr = format!("{}:{}", target.host, target.port);
    let connect_error = |reason: String| ClientError::Connect {
        addr: addr.clone(),
        reason,
    };
    let server_name = ServerName::try_from(target.host.clone())
        .map_err(|_| connect_error("not a valid TLS server name".into()))?;
    let connector = TlsConnector::from(Arc::new(tls));
    let stream = tokio::time::timeout(config.connect_timeout, async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| connect_error(format!("TLS: {e}")))
    })
    .await
    .map_err(|_| connect_error("timed out".into()))??;

    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .handshake::<_, AnswerBody>(TokioIo::new(stream))
        .await?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "snapshot stream connection ended");
        }
    });
    // Abort the connection task however this session ends.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _driver = AbortOnDrop(driver);

    let (answers, answers_rx) = mpsc::channel::<Bytes>(8);
    let uri = format!(
        "https://{}/v1/stream?dataplane={}",
        target.authority, config.id
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-ferrogate-snapshot-stream",
        )
        .body(AnswerBody { rx: answers_rx })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    if status != StatusCode::OK {
        let message = read_error_body(&mut body).await;
        return Err(ClientError::Refused { status, message });
    }
    tracing::info!(controller = %config.controller, id = %config.id, "snapshot stream connected");

    let mut buffer = BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => return Err(ClientError::Closed),
            Some(frame) => frame?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(frame) = next_frame(&mut buffer)? {
            *received = true;
            let answer = handle_frame(&frame, dataplane, persist).await;
            if answers.send(encode(&answer)).await.is_err() {
                return Err(ClientError::Closed);
            }
        }
    }
}

fn next_frame(buffer: &mut BytesMut) -> Result<Option<Bytes>, ClientError> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let mut prefix = [0u8; 4];
    prefix.copy_from_slice(&buffer[..4]);
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(ClientError::Protocol(format!(
            "frame of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit"
        )));
    }
    if buffer.len() < 4 + len {
        buffer.reserve(4 + len - buffer.len());
        return Ok(None);
    }
    buffer.advance(4);
    Ok(Some(buffer.split_to(len).freeze()))
}

async fn read_error_body(body: &mut Incoming) -> String {
    let mut text = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
            if text.len() > 4096 {
                text.truncate(4096);
                break;
            }
        }
    }
    String::from_utf8_lossy(&text).trim().to_owned()
}

async fn handle_frame(
    frame: &[u8],
    dataplane: &Dataplane,
    persist: &watch::Sender<Option<Arc<Snapshot>>>,
) -> Answer {
    let snapshot = match decode_frame(frame) {
        Ok(snapshot) => snapshot,
        Err((version, hash, error)) => {
            tracing::error!(version, %error, "snapshot refused");
            return Answer::Nack {
                version,
                hash,
                error: truncate(error),
            };
        }
    };
    let version = snapshot.version;
    let hash = snapshot.hash.clone();
    let current = dataplane.current();
    if current.version == version && current.hash == hash {
        return Answer::Ack { version, hash };
    }
    let applier = dataplane.clone();
    let applied = tokio::task::spawn_blocking(move || applier.apply(snapshot)).await;
    match applied {
        Ok(Ok(())) => {
            tracing::info!(version, %hash, "snapshot applied");
            persist.send_replace(Some(dataplane.current()));
            Answer::Ack { version, hash }
        }
        Ok(Err(error)) => {
            tracing::error!(version, %hash, %error, "snapshot refused; keeping the last good one");
            Answer::Nack {
                version,
                hash,
                error: truncate(error.to_string()),
            }
        }
        Err(error) => Answer::Nack {
            version,
            hash,
            error: format!("applying the snapshot failed: {error}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let mut last = first;
        for _ in 0..20 {
            last = backoff.next_delay();
            assert!(last <= Duration::from_secs(10));
        }
        assert!(last >= Duration::from_secs(5));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn urls_must_be_https() {
        assert!(target("http://a:1").is_err());
        assert!(target("nonsense").is_err());
        let t = target("https://[::1]:9443").expect("ok");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9443));
        let t = target("https://controller.ns.svc").expect("ok");
        assert_eq!(t.port, 443);
    }

    #[test]
    fn frames_with_bad_hashes_are_nacked_with_their_version() {
        let mut snapshot = Snapshot {
            version: 9,
            ..Snapshot::default()
        };
        snapshot.seal();
        let good = serde_json::json!({ "snapshot": snapshot }).to_string();
        assert!(decode_frame(good.as_bytes()).is_ok());
        snapshot.hash = "00".into();
        let bad = serde_json::json!({ "snapshot": snapshot }).to_string();
        let (version, _, error) = decode_frame(bad.as_bytes()).expect_err("refused");
        assert_eq!(version, 9);
        assert!(error.contains("content hashes to"), "{error}");
        let (version, _, error) =
            decode_frame(br#"{"snapshot":{"version":4,"virtual_hosts":7}}"#).expect_err("refused");
        assert_eq!(version, 4);
        assert!(error.starts_with("unreadable snapshot"), "{error}");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let message = "é".repeat(MAX_NACK_MESSAGE);
        let cut = truncate(message);
        assert!(cut.len() <= MAX_NACK_MESSAGE + 3);
        assert!(cut.ends_with("..."));
    }
}
