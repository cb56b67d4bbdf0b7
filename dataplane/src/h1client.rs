//! HTTP/1.1 exchanges with plain-text upstreams, run by the request's own
//! task.
//!
//! hyper's client connection is a task of its own: the request is handed
//! to it through a channel, the response head comes back through another,
//! and every body chunk through a third. On the proxy benchmark that
//! hand-off cost about 2 µs of the 6.5 µs of user CPU per request
//! (`bench/RESULTS.md`), more than parsing and encoding together. Here the
//! task that serves the client writes the request and reads the response
//! on the upstream socket itself; the response body reads from the same
//! socket and gives the connection back to its pool when it ends. hyper
//! still serves the clients, and still carries what this module leaves to
//! it (`proxy::send`): streamed request bodies, protocol upgrades, TLS and
//! HTTP/2 upstreams.
//!
//! ```text
//!  head + buffered body ──▶ encode_request ──▶ one write
//!  socket ──▶ parse_head (httparse; 1xx skipped) ──▶ framing
//!      ├─ no body / whole body already read ──▶ connection back to the pool now
//!      └─ otherwise ──▶ ResponseBody::Raw reads Content-Length bytes,
//!                       chunks (ChunkedDecoder) or up to close;
//!                       at the end: connection back to the pool
//! ```
//!
//! Parsing is httparse's, as in hyper; what is written here is the message
//! framing of RFC 9112 §6 (`framing`, `ChunkedDecoder`), kept free of IO so
//! that it is tested on bytes alone.

use crate::connpool::EndpointPool;
use crate::forwarded::Added;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use smallvec::SmallVec;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Largest response head (status line and header fields) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in a response head.
const MAX_HEADERS: usize = 128;
/// Largest chunk-size line and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// Largest write buffer a connection keeps for its next request.
const KEEP_WRITE_BUFFER: usize = 4 * 1024;
/// Bodies up to this size are written with the head in one write.
const COALESCE_BODY: usize = 16 * 1024;

/// Error of a body read from an upstream (or built by the dataplane).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What the upstream sent that is not HTTP/1.1 as RFC 9112 allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The status line or a header field is malformed.
    #[error("malformed response head: {0}")]
    Head(String),
    /// The response head is larger than we accept.
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// Content-Length is not one number.
    #[error("invalid content-length")]
    ContentLength,
    /// A 101 answer to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedUpgrade,
    /// A chunk-size line, chunk end or trailer section is malformed.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A reused connection was closed by the upstream before any byte of a
    /// response came back: the upstream dropped it while it was idle, and
    /// the request can be sent on another connection.
    #[error("upstream closed an idle connection")]
    Stale,
    /// Reading or writing failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before the response head ended.
    #[error("upstream closed the connection before the response head")]
    Closed,
    /// The upstream's answer is not valid HTTP/1.1.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The response head did not come before the deadline.
    #[error("upstream timed out")]
    TimedOut,
}

/// A keep-alive connection to an upstream, with what was read from it but
/// not yet used.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    read: BytesMut,
    /// The request being written (kept for the next one's bytes).
    write: BytesMut,
    /// The connection carried an exchange before this one.
    reused: bool,
    /// The deadline of the exchange under way, kept from one exchange to
    /// the next (see [`Connection::exchange`]).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    /// A new connection.
    pub fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            read: BytesMut::new(),
            write: BytesMut::new(),
            reused: false,
            timer: None,
        }
    }

    /// Whether the idle connection may carry a request: nothing arrived on
    /// it since its last response (neither data nor the upstream's close).
    /// Costs a system call only when the socket was reported readable.
    pub fn is_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends one request and reads the response head, which must come
    /// before `deadline`. The body (already read, or to be read through the
    /// connection) is in the response; the connection goes back to `pool`
    /// when the body has ended, if the upstream keeps it open.
    ///
    /// The deadline is the connection's timer, moved for each exchange: a
    /// timer registered for every request was a timer-wheel insertion and
    /// removal each time, and moving a registered timer later is one atomic
    /// update (tokio's timers move later lazily).
    pub async fn exchange(
        mut self,
        head: &request::Parts,
        added: &Added,
        body: &Bytes,
        pool: &Arc<EndpointPool>,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, ExchangeError> {
        let mut timer = match self.timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let head_read = {
            let mut read = std::pin::pin!(self.send_and_read_head(head, added, body));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = read.as_mut().poll(cx) {
                    return Poll::Ready(result);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(ExchangeError::TimedOut)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        self.timer = Some(timer);
        let parsed = head_read?;
        let head_request = head.method == Method::HEAD;
        let (kind, keep_alive) = framing(&parsed, head_request)?;
        let (status, version, mut headers) = parsed.into_parts();
        if matches!(kind, BodyKind::Chunked | BodyKind::UntilClose) {
            // The length is ours to set again (or to leave to the client
            // side's chunking); a Content-Length beside chunking is void.
            headers.remove(header::CONTENT_LENGTH);
        }
        let body = match kind {
            BodyKind::Empty => {
                if keep_alive {
                    pool.put_raw(self);
                }
                ResponseBody::Raw(RawBody::done())
            }
            BodyKind::Length(n) if self.read.len() as u64 >= n => {
                let bytes = self.read.split_to(n as usize).freeze();
                if keep_alive {
                    pool.put_raw(self);
                }
                ResponseBody::Raw(RawBody::whole(bytes))
            }
            kind => ResponseBody::Raw(RawBody {
                state: match kind {
                    BodyKind::Length(n) => State::Length(n),
                    BodyKind::Chunked => State::Chunked(ChunkedDecoder::default()),
                    _ => State::UntilClose,
                },
                conn: Some(Box::new(self)),
                pool: keep_alive.then(|| pool.clone()),
            }),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// Writes the request, then reads the response head (1xx skipped).
    async fn send_and_read_head(
        &mut self,
        head: &request::Parts,
        added: &Added,
        body: &Bytes,
    ) -> Result<ResponseHead, ExchangeError> {
        let reused = self.reused;
        self.reused = true;
        let mut out = std::mem::take(&mut self.write);
        out.clear();
        out.reserve(256 + body.len().min(COALESCE_BODY));
        encode_request(head, added, body.len(), &mut out);
        // Let the other requests that are ready run up to this point first,
        // so that the writes to upstreams leave together at the end of the
        // scheduler's pass. An upstream on the same CPU (a busy node) then
        // finds several requests each time it runs instead of preempting
        // the gateway for each one: in bench/proxy.py's placement this
        // halves the context switches per request (0.78 -> 0.44) and adds
        // about 13% req/s; with the upstream on another CPU the CPU per
        // request is unchanged (bench/RESULTS.md, 2026-11-27). The first
        // request of a batch waits for the rest; `crate::EVENT_INTERVAL`
        // keeps batches short.
        behind_ready_tasks().await;
        let written = if body.len() <= COALESCE_BODY {
            out.extend_from_slice(body);
            self.stream.write_all(&out).await
        } else {
            match self.stream.write_all(&out).await {
                Ok(()) => self.stream.write_all(body).await,
                Err(error) => Err(error),
            }
        };
        // Small heads are the rule; a buffer grown for a body is let go
        // rather than held by an idle pooled connection.
        if out.capacity() <= KEEP_WRITE_BUFFER {
            self.write = out;
        }
        if let Err(error) = written {
            return Err(if reused && gone(&error) {
                ExchangeError::Stale
            } else {
                ExchangeError::Io(error)
            });
        }
        let mut received = false;
        loop {
            match parse_head(&mut self.read)? {
                Some(parsed) if parsed.status.is_informational() => {
                    if parsed.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ProtocolError::UnexpectedUpgrade.into());
                    }
                    continue;
                }
                Some(parsed) => return Ok(parsed),
                None if self.read.len() >= MAX_HEAD_BYTES => {
                    return Err(ProtocolError::HeadTooLarge.into())
                }
                None => {}
            }
            let read = std::future::poll_fn(|cx| poll_fill(&self.stream, &mut self.read, cx)).await;
            match read {
                Ok(0) if reused && !received => return Err(ExchangeError::Stale),
                Ok(0) => return Err(ExchangeError::Closed),
                Ok(_) => received = true,
                Err(error) if reused && !received && gone(&error) => {
                    return Err(ExchangeError::Stale)
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Errors that mean the upstream closed the connection.
fn gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// Puts the task at the back of its worker's run queue once: it runs
/// again after the tasks that are ready now, in the same pass.
///
/// `tokio::task::yield_now` defers further: until the runtime has next
/// polled the sockets, behind every task that poll makes ready. A
/// request's upstream write then also waited for the next batch's
/// parsing. In bench/proxy.py's placement, same binary, interleaved
/// 10 s rounds: more req/s in 8 of 9 rounds; over the 6 with full
/// percentiles, median 72.1k vs 68.8k req/s and p99 1.12 vs 1.30 ms
/// (bench/RESULTS.md, 2026-11-27 evening).
///
/// A task that wakes itself while it is being polled is queued at the back
/// by both of tokio's schedulers (not in the multi-thread one's LIFO
/// slot), so this does not spin.
fn behind_ready_tasks() -> impl Future<Output = ()> {
    let mut queued = false;
    std::future::poll_fn(move |cx| {
        if queued {
            return Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

/// Reads what the socket has into `buf`. When the read did not fill the
/// room it had, the socket is drained: its readiness is cleared without a
/// second read, so that the next wait (or the idle check) does not start
/// with a read that can only say "nothing yet".
fn poll_fill(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 2 {
        buf.reserve(READ_SIZE);
    }
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let room = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Ok(n) => {
                if n > 0 && n < room {
                    let _ = stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                return Poll::Ready(Ok(n));
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
}

/// Writes the request line and header fields, the `added` ones after the
/// head's. The body is `body_len` bytes sent with a Content-Length; any
/// Content-Length or Transfer-Encoding the head has is replaced by that.
pub fn encode_request(head: &request::Parts, added: &Added, body_len: usize, out: &mut BytesMut) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    match head.uri.path_and_query() {
        Some(path) => out.extend_from_slice(path.as_str().as_bytes()),
        None => out.extend_from_slice(b"/"),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    added.encode(out);
    // Methods whose requests are expected to carry content say "0" when
    // they have none; some servers answer 411 otherwise.
    if body_len > 0 || matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(decimal(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n` without a heap allocation.
pub(crate) fn decimal(mut n: usize) -> Digits {
    let mut digits = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        digits.start -= 1;
        digits.buf[digits.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return digits;
        }
    }
}

pub(crate) struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Parses a response head at the start of `buf`. When complete, its bytes
/// are taken out of `buf`; `None` means more bytes are needed.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(ProtocolError::Head(error.to_string())),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| ProtocolError::Head("invalid status code".to_owned()))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Header values are slices of the head's bytes, not copies.
    let base = buf.as_ptr() as usize;
    let mut spans: SmallVec<[(HeaderName, usize, usize); 16]> = SmallVec::new();
    let mut connection = ConnectionField::default();
    for field in response.headers.iter() {
        let name = crate::headermaps::name(field.name.as_bytes())
            .map_err(|_| ProtocolError::Head(format!("invalid header name {:?}", field.name)))?;
        // `Connection` is about this connection only: read here, never
        // passed on.
        if name == header::CONNECTION {
            connection.note(field.value);
            continue;
        }
        let start = field.value.as_ptr() as usize - base;
        spans.push((name, start, start + field.value.len()));
    }
    let head = buf.split_to(len).freeze();
    // The proxy adds a field or two (x-request-id, rate-limit fields).
    let mut headers = crate::headermaps::take(spans.len() + 2);
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| ProtocolError::Head(format!("invalid value of header {name}")))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        connection,
    }))
}

/// A parsed response head.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// The fields but `Connection`.
    pub headers: HeaderMap,
    pub connection: ConnectionField,
}

impl ResponseHead {
    /// The head to pass on: without the fields `Connection` named, which
    /// are this connection's too. Taken out only after the framing was
    /// read, so that a `Connection` naming a framing field cannot change
    /// how the body is delimited.
    pub fn into_parts(self) -> (StatusCode, Version, HeaderMap) {
        let mut headers = self.headers;
        for name in &self.connection.listed {
            headers.remove(name);
        }
        (self.status, self.version, headers)
    }
}

/// What a response's `Connection` fields said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionField {
    /// `close` was listed.
    pub close: bool,
    /// `keep-alive` was listed.
    pub keep_alive: bool,
    /// Other fields it named, to be removed (hop-by-hop); `upgrade` is
    /// among them only if listed.
    pub listed: Vec<HeaderName>,
}

impl ConnectionField {
    /// Takes in one `Connection` value. Items that are not field names
    /// are ignored.
    pub fn note(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if let Ok(name) = HeaderName::from_bytes(token) {
                self.listed.push(name);
            }
        }
    }
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// The body framing of a response, and whether the connection can carry
/// another request afterwards.
pub fn framing(head: &ResponseHead, head_request: bool) -> Result<(BodyKind, bool), ProtocolError> {
    let ResponseHead {
        status,
        version,
        ref headers,
        ref connection,
    } = *head;
    let mut keep_alive = version == Version::HTTP_11;
    if connection.close {
        keep_alive = false;
    } else if version == Version::HTTP_10 && connection.keep_alive {
        keep_alive = true;
    }
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyKind::Empty, keep_alive));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let chunked = codings
            .next_back()
            .is_some_and(|value| last_token_is(value.as_bytes(), "chunked"));
        // A Content-Length next to Transfer-Encoding may be a smuggling
        // attempt: the body is read by the coding and the connection is
        // not used again.
        if headers.contains_key(header::CONTENT_LENGTH) {
            keep_alive = false;
        }
        return Ok(if chunked && version == Version::HTTP_11 {
            (BodyKind::Chunked, keep_alive)
        } else {
            (BodyKind::UntilClose, false)
        });
    }
    Ok(match content_length(headers)? {
        Some(0) => (BodyKind::Empty, keep_alive),
        Some(n) => (BodyKind::Length(n), keep_alive),
        None => (BodyKind::UntilClose, false),
    })
}

/// The `Content-Length` of a message: `None` without the field; an error
/// unless every value (repeated fields and comma lists included) is the
/// same decimal number.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ProtocolError> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() {
                return Err(ProtocolError::ContentLength);
            }
            let mut n = 0u64;
            for &b in part {
                n = match (b.is_ascii_digit(), n.checked_mul(10)) {
                    (true, Some(tens)) => tens
                        .checked_add(u64::from(b - b'0'))
                        .ok_or(ProtocolError::ContentLength)?,
                    _ => return Err(ProtocolError::ContentLength),
                };
            }
            if length.is_some_and(|seen| seen != n) {
                return Err(ProtocolError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the comma-separated field value `value` lists `token`
/// (case-insensitive; spaces around items ignored).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether the last item of the comma-separated field value `value` is
/// `token` (case-insensitive).
pub(crate) fn last_token_is(value: &[u8], token: &str) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// What the chunked decoder got out of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// Nothing more can be decoded until more bytes arrive.
    NeedMore,
    /// The body ended, with the trailer fields if there were any.
    End(Option<HeaderMap>),
}

/// Decodes the chunked transfer coding (RFC 9112 §7.1), without IO.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    step: Step,
}

#[derive(Debug, Default, Clone, Copy)]
enum Step {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields and the final CRLF.
    Trailers,
    /// Finished.
    Done,
}

impl ChunkedDecoder {
    /// Takes what it can from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self.step {
                Step::Size => {
                    let size = match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            let _ = buf.split_to(used);
                            size
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {
                            return Ok(Decoded::NeedMore)
                        }
                        _ => return Err(ProtocolError::Chunked("invalid chunk size line")),
                    };
                    self.step = if size == 0 {
                        Step::Trailers
                    } else {
                        Step::Data(size)
                    };
                }
                Step::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.step = if n == left {
                        Step::DataEnd
                    } else {
                        Step::Data(left - n)
                    };
                    return Ok(Decoded::Data(data));
                }
                Step::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::Chunked("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.step = Step::Size;
                }
                Step::Trailers => {
                    if buf.len() >= 2 && &buf[..2] == b"\r\n" {
                        let _ = buf.split_to(2);
                        self.step = Step::Done;
                        return Ok(Decoded::End(None));
                    }
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for field in fields {
                                let name = HeaderName::from_bytes(field.name.as_bytes());
                                let value = HeaderValue::from_bytes(field.value);
                                match (name, value) {
                                    (Ok(name), Ok(value)) => {
                                        trailers.append(name, value);
                                    }
                                    _ => {
                                        return Err(ProtocolError::Chunked("invalid trailer field"))
                                    }
                                }
                            }
                            let _ = buf.split_to(used);
                            self.step = Step::Done;
                            return Ok(Decoded::End(Some(trailers)));
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILER_BYTES => {
                            return Ok(Decoded::NeedMore)
                        }
                        _ => return Err(ProtocolError::Chunked("invalid trailer section")),
                    }
                }
                Step::Done => return Ok(Decoded::End(None)),
            }
        }
    }
}

/// The body of a response from an upstream.
#[derive(Debug)]
pub enum ResponseBody {
    /// Read by hyper's client.
    Hyper(Incoming),
    /// Read by this module.
    Raw(RawBody),
}

impl From<Incoming> for ResponseBody {
    fn from(body: Incoming) -> ResponseBody {
        ResponseBody::Hyper(body)
    }
}

/// A response body read from the connection it came on.
pub struct RawBody {
    state: State,
    /// Boxed: inline, its 112 bytes were in every response moved through
    /// the proxy, though most bodies arrive whole with their head.
    conn: Option<Box<Connection>>,
    /// Where the connection goes when the body has ended; `None` when the
    /// upstream will not take another request on it.
    pool: Option<Arc<EndpointPool>>,
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBody")
            .field("state", &self.state)
            .field("reusable", &self.pool.is_some())
            .finish()
    }
}

#[derive(Debug)]
enum State {
    /// The whole body, already read (taken by the first poll).
    Whole(Option<Bytes>),
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl RawBody {
    fn done() -> RawBody {
        RawBody {
            state: State::Done,
            conn: None,
            pool: None,
        }
    }

    fn whole(bytes: Bytes) -> RawBody {
        RawBody {
            state: State::Whole(Some(bytes)),
            conn: None,
            pool: None,
        }
    }

    /// The body ended: the connection may carry the next request.
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            if conn.read.is_empty() {
                pool.put_raw(*conn);
            }
        }
    }

    fn fail(
        &mut self,
        error: impl Into<BodyError>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error.into())))
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Whole(bytes) => {
                    let bytes = bytes.take();
                    this.state = State::Done;
                    return Poll::Ready(bytes.map(|b| Ok(Frame::data(b))));
                }
                State::Length(left) => {
                    let left = *left;
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if conn.read.is_empty() {
                        match ready!(poll_fill(&conn.stream, &mut conn.read, cx)) {
                            Ok(0) => {
                                return this.fail("upstream closed the connection inside the body")
                            }
                            Ok(_) => {}
                            Err(error) => return this.fail(error),
                        }
                    }
                    let n = left.min(conn.read.len() as u64);
                    let data = conn.read.split_to(n as usize).freeze();
                    if n == left {
                        this.finish();
                    } else {
                        this.state = State::Length(left - n);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match decoder.decode(&mut conn.read) {
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::End(trailers)) => {
                            this.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(error) => return this.fail(error),
                    }
                    match ready!(poll_fill(&conn.stream, &mut conn.read, cx)) {
                        Ok(0) => {
                            return this
                                .fail("upstream closed the connection inside a chunked body")
                        }
                        Ok(_) => {}
                        Err(error) => return this.fail(error),
                    }
                }
                State::UntilClose => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if conn.read.is_empty() {
                        match ready!(poll_fill(&conn.stream, &mut conn.read, cx)) {
                            Ok(0) => {
                                this.state = State::Done;
                                this.conn = None;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(error) => return this.fail(error),
                        }
                    }
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Done => true,
            State::Whole(bytes) => bytes.is_none(),
            State::Length(left) => *left == 0,
            State::Chunked(_) | State::UntilClose => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            State::Length(left) => SizeHint::with_exact(*left),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BodyError::from))),
            ResponseBody::Raw(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Hyper(body) => body.is_end_stream(),
            ResponseBody::Raw(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Hyper(body) => body.size_hint(),
            ResponseBody::Raw(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connpool::Pools;
    use http::uri::Authority;
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    /// The framing of a response with these fields, through the parser
    /// (which reads and takes out `Connection`).
    fn frame(
        status: u16,
        version: Version,
        head: bool,
        fields: &[(&str, &str)],
    ) -> Result<(BodyKind, bool), ProtocolError> {
        let mut text = format!(
            "HTTP/1.{} {status} X\r\n",
            u8::from(version == Version::HTTP_11)
        );
        for (name, value) in fields {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        let mut buf = BytesMut::from(text.as_bytes());
        let parsed = parse_head(&mut buf)?.expect("complete");
        framing(&parsed, head)
    }

    #[test]
    fn connection_is_read_and_taken_out_with_the_fields_it_names() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\nconnection: Close, a b\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert!(head.connection.close && head.connection.keep_alive);
        assert!(!head.headers.contains_key(header::CONNECTION));
        assert_eq!(framing(&head, false), Ok((BodyKind::Empty, false)));
        let (_, _, headers) = head.into_parts();
        assert!(!headers.contains_key("x-hop"), "named by Connection");
        assert_eq!(headers["x-end"], "2");
        assert_eq!(headers.len(), 2, "{headers:?}");

        // A Connection naming a framing field does not change the framing.
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\nabc"[..],
        );
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert_eq!(framing(&head, false), Ok((BodyKind::Length(3), true)));
        assert!(!head.into_parts().2.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use BodyKind::*;
        let v11 = Version::HTTP_11;
        assert_eq!(
            frame(200, v11, false, &[("content-length", "5")]),
            Ok((Length(5), true))
        );
        assert_eq!(
            frame(200, v11, false, &[("content-length", "0")]),
            Ok((Empty, true))
        );
        // HEAD, 204 and 304 have no body whatever the fields say.
        assert_eq!(
            frame(200, v11, true, &[("content-length", "5")]),
            Ok((Empty, true))
        );
        assert_eq!(frame(204, v11, false, &[]), Ok((Empty, true)));
        assert_eq!(
            frame(304, v11, false, &[("content-length", "9")]),
            Ok((Empty, true))
        );
        // Repeated equal lengths are one length; different ones are an error.
        assert_eq!(
            frame(
                200,
                v11,
                false,
                &[("content-length", "3"), ("content-length", "3, 3")]
            ),
            Ok((Length(3), true))
        );
        assert_eq!(
            frame(
                200,
                v11,
                false,
                &[("content-length", "18446744073709551615")]
            ),
            Ok((Length(u64::MAX), true))
        );
        for bad in [
            &[("content-length", "3"), ("content-length", "4")][..],
            &[("content-length", "+3")],
            &[("content-length", "")],
            &[("content-length", "0x10")],
            &[("content-length", "3,,3")],
            &[("content-length", "3 3")],
            &[("content-length", "18446744073709551616")],
        ] {
            assert_eq!(
                frame(200, v11, false, bad),
                Err(ProtocolError::ContentLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            frame(200, v11, false, &[("transfer-encoding", "chunked")]),
            Ok((Chunked, true))
        );
        assert_eq!(
            frame(200, v11, false, &[("transfer-encoding", "gzip, chunked")]),
            Ok((Chunked, true))
        );
        // Transfer-Encoding wins over Content-Length, and the connection is
        // not used again after such a message.
        assert_eq!(
            frame(
                200,
                v11,
                false,
                &[("transfer-encoding", "chunked"), ("content-length", "4")]
            ),
            Ok((Chunked, false))
        );
        assert_eq!(
            frame(200, v11, false, &[("transfer-encoding", "gzip")]),
            Ok((UntilClose, false))
        );
        assert_eq!(frame(200, v11, false, &[]), Ok((UntilClose, false)));
        assert_eq!(
            frame(
                200,
                v11,
                false,
                &[("connection", "close"), ("content-length", "1")]
            ),
            Ok((Length(1), false))
        );
        let v10 = Version::HTTP_10;
        assert_eq!(
            frame(200, v10, false, &[("content-length", "1")]),
            Ok((Length(1), false))
        );
        assert_eq!(
            frame(
                200,
                v10,
                false,
                &[("connection", "Keep-Alive"), ("content-length", "1")]
            ),
            Ok((Length(1), true))
        );
        // `close` wins wherever it stands.
        assert_eq!(
            frame(
                200,
                v10,
                false,
                &[("connection", "close, keep-alive"), ("content-length", "1")]
            ),
            Ok((Length(1), false))
        );
    }

    #[test]
    fn field_value_tokens() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(!has_token(b"keep-alive, upgrades", "upgrade"));
        assert!(last_token_is(b"gzip ,  CHUNKED ", "chunked"));
        assert!(!last_token_is(b"chunked, gzip", "chunked"));
    }

    #[test]
    fn heads_are_parsed_once_complete_and_values_are_kept_exactly() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nX-A: one\r\nx-a: two\r\nContent-Length: 2"[..],
        );
        assert_eq!(parse_head(&mut buf), Ok(None));
        buf.extend_from_slice(b"\r\n\r\nhi");
        let parsed = parse_head(&mut buf).expect("valid").expect("complete");
        assert_eq!(parsed.status, StatusCode::CREATED);
        assert_eq!(parsed.version, Version::HTTP_11);
        let values: Vec<_> = parsed.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["one", "two"]);
        assert_eq!(&buf[..], b"hi", "the body stays in the buffer");

        for bad in [
            &b"HTTP/1.1 999x OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                matches!(parse_head(&mut buf), Err(ProtocolError::Head(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn requests_are_encoded_with_the_length_of_their_body() {
        let encode = |method: Method, fields: &[(&str, &str)], len: usize| {
            let (mut head, ()) = http::Request::new(()).into_parts();
            head.method = method;
            head.uri = "/p?q=1".parse().expect("uri");
            head.headers = headers(fields);
            let mut out = BytesMut::new();
            encode_request(&head, &Added::default(), len, &mut out);
            String::from_utf8(out.to_vec()).expect("text")
        };
        assert_eq!(
            encode(Method::GET, &[("host", "a.example")], 0),
            "GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\n\r\n"
        );
        assert_eq!(
            encode(
                Method::POST,
                &[("host", "a"), ("transfer-encoding", "chunked")],
                0
            ),
            "POST /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            encode(
                Method::PUT,
                &[("content-length", "99"), ("host", "a")],
                12345
            ),
            "PUT /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 12345\r\n\r\n"
        );
    }

    /// Decodes `input` fed in pieces of `step` bytes.
    fn decode_in_steps(
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ProtocolError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End(trailers) => return Ok((body, trailers)),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(ProtocolError::Chunked("input ended"));
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let input = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-sum: 3\r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            let (body, trailers) = decode_in_steps(input, step).expect("valid");
            assert_eq!(body, b"hello 0123456789");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers.get("x-sum").expect("x-sum"), "3");
        }
        let (body, trailers) = decode_in_steps(b"0\r\n\r\n", 1).expect("empty");
        assert!(body.is_empty() && trailers.is_none());
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(decode_in_steps(bad, 1).is_err(), "{bad:?}");
        }
        // An endless chunk-size line is refused, not buffered without end.
        let long = [b'0'; MAX_CHUNK_LINE + 1];
        assert!(decode_in_steps(&long, 512).is_err());
    }

    proptest! {
        #[test]
        fn chunked_round_trips(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8), step in 1usize..64) {
            let mut input = Vec::new();
            for chunk in &chunks {
                input.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                input.extend_from_slice(chunk);
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(b"0\r\n\r\n");
            let (body, _) = decode_in_steps(&input, step).expect("valid");
            prop_assert_eq!(body, chunks.concat());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_in_steps(&bytes, 7);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse_head(&mut buf);
        }
    }

    /// An upstream that answers the n-th request on each connection with
    /// `answers[n]` (the last one repeats), and, when `close_after` says
    /// so, closes the connection after that many answers without a word.
    async fn scripted(
        answers: Vec<&'static [u8]>,
        close_after: Option<usize>,
    ) -> (Authority, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority");
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (answers, seen) = (answers.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|n| n.parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() < end + 4 + length {
                                break;
                            }
                            buf.drain(..end + 4 + length);
                            seen.lock().expect("heads").push(head);
                            let answer = answers[served.min(answers.len() - 1)];
                            served += 1;
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                            if close_after == Some(served) {
                                return;
                            }
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (authority, accepted, heads)
    }

    /// A deadline no test reaches.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// The upstream write waits for the tasks that are ready, once, on both
    /// of tokio's schedulers: a task woken while it runs goes to the back
    /// of the queue, not to the multi-thread scheduler's LIFO slot (which
    /// would run it again at once, before the others).
    #[test]
    fn the_write_waits_once_for_the_tasks_that_are_ready() {
        let current = tokio::runtime::Builder::new_current_thread().build();
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build();
        for runtime in [current, multi] {
            let runtime = runtime.expect("runtime");
            let order = runtime.block_on(async {
                let order = Arc::new(Mutex::new(Vec::new()));
                let log = order.clone();
                let outer = tokio::spawn(async move {
                    let inner_log = log.clone();
                    let inner = tokio::spawn(async move {
                        inner_log.lock().expect("log").push("ready task");
                    });
                    log.lock().expect("log").push("before");
                    behind_ready_tasks().await;
                    log.lock().expect("log").push("after");
                    inner.await.expect("ready task");
                });
                outer.await.expect("task");
                let order = order.lock().expect("log").clone();
                order
            });
            assert_eq!(order, ["before", "ready task", "after"]);
        }
    }

    /// A connection keeps one timer from exchange to exchange: moved later
    /// for a later deadline (lazily, by tokio), earlier for an earlier one,
    /// and set again after it fired while the connection was idle. Each
    /// exchange still times out at its own deadline, not at an earlier
    /// exchange's.
    #[tokio::test]
    async fn each_exchange_times_out_at_its_own_deadline() {
        // The second request on a connection gets no answer.
        let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let timed = |pool: Arc<EndpointPool>, first: Duration, second: Duration| async move {
            let start = Instant::now();
            let response = pool
                .send_buffered(
                    &request(Method::GET, "/a"),
                    &Added::default(),
                    &Bytes::new(),
                    start + first,
                )
                .await
                .expect("first answer");
            assert_eq!(read(response).await.0, b"ok");
            let start = Instant::now();
            let error = pool
                .send_buffered(
                    &request(Method::GET, "/b"),
                    &Added::default(),
                    &Bytes::new(),
                    start + second,
                )
                .await
                .expect_err("no second answer");
            assert!(error.is_timeout(), "{error}");
            start.elapsed()
        };
        for (first, second) in [
            // Later: the timer still stands at the first deadline when it
            // fires, and must not end the second exchange then.
            (Duration::from_millis(300), Duration::from_millis(700)),
            // Earlier: the timer moves back.
            (Duration::from_secs(60), Duration::from_millis(300)),
        ] {
            let (authority, _, _) = scripted(vec![ok, b""], None).await;
            let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
            let waited = timed(pool, first, second).await;
            assert!(
                waited >= second - Duration::from_millis(20)
                    && waited < second + Duration::from_secs(2),
                "{first:?} then {second:?}: timed out after {waited:?}"
            );
        }
        // Fired while idle: set again for the next exchange.
        let (authority, _, _) = scripted(vec![ok, b""], None).await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        let response = pool
            .send_buffered(
                &request(Method::GET, "/a"),
                &Added::default(),
                &Bytes::new(),
                Instant::now() + Duration::from_millis(50),
            )
            .await
            .expect("first answer");
        assert_eq!(read(response).await.0, b"ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let start = Instant::now();
        let error = pool
            .send_buffered(
                &request(Method::GET, "/b"),
                &Added::default(),
                &Bytes::new(),
                start + Duration::from_millis(300),
            )
            .await
            .expect_err("no second answer");
        assert!(error.is_timeout(), "{error}");
        assert!(
            start.elapsed() >= Duration::from_millis(280),
            "{:?}",
            start.elapsed()
        );
    }

    fn request(method: Method, path: &str) -> request::Parts {
        let (mut head, ()) = http::Request::new(()).into_parts();
        head.method = method;
        head.uri = path.parse().expect("uri");
        head.headers
            .insert(header::HOST, HeaderValue::from_static("up.example"));
        head
    }

    async fn read(response: Response<ResponseBody>) -> (Vec<u8>, Option<HeaderMap>) {
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn keep_alive_connections_carry_one_exchange_at_a_time() {
        let (authority, accepted, heads) = scripted(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"],
            None,
        )
        .await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        for i in 0..3 {
            let response = pool
                .send_buffered(
                    &request(Method::POST, &format!("/r{i}")),
                    &Added::default(),
                    &Bytes::from_static(b"abc"),
                    later(),
                )
                .await
                .expect("send");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(read(response).await.0, b"hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
        let heads = heads.lock().expect("heads").clone();
        assert_eq!(
            heads[2],
            "POST /r2 HTTP/1.1\r\nhost: up.example\r\ncontent-length: 3"
        );

        // A body still unread holds its connection: a second request opens another.
        let big: &'static [u8] = Box::leak(
            [
                &b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n"[..],
                &vec![b'x'; 1_000_000],
            ]
            .concat()
            .into_boxed_slice(),
        );
        let (authority, accepted, _) = scripted(vec![big], None).await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        let first = pool
            .send_buffered(
                &request(Method::GET, "/a"),
                &Added::default(),
                &Bytes::new(),
                later(),
            )
            .await
            .expect("first");
        let second = pool
            .send_buffered(
                &request(Method::GET, "/b"),
                &Added::default(),
                &Bytes::new(),
                later(),
            )
            .await
            .expect("second");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(read(first).await.0.len(), 1_000_000);
        assert_eq!(read(second).await.0.len(), 1_000_000);
        let third = pool
            .send_buffered(
                &request(Method::GET, "/c"),
                &Added::default(),
                &Bytes::new(),
                later(),
            )
            .await
            .expect("third");
        assert_eq!(read(third).await.0.len(), 1_000_000);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "reused once read to the end"
        );

        // A body dropped before its end closes its connection.
        drop(
            pool.send_buffered(
                &request(Method::GET, "/d"),
                &Added::default(),
                &Bytes::new(),
                later(),
            )
            .await
            .expect("fourth"),
        );
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn chunked_bodies_and_trailers_pass_and_interim_answers_are_skipped() {
        let (authority, accepted, _) = scripted(
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\ngrpc-status: 0\r\n\r\n"],
            None,
        )
        .await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        for _ in 0..2 {
            let response = pool
                .send_buffered(
                    &request(Method::GET, "/"),
                    &Added::default(),
                    &Bytes::new(),
                    later(),
                )
                .await
                .expect("send");
            assert_eq!(response.status(), StatusCode::OK);
            let (body, trailers) = read(response).await;
            assert_eq!(body, b"abcde");
            assert_eq!(
                trailers
                    .expect("trailers")
                    .get("grpc-status")
                    .expect("grpc-status"),
                "0"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bodies_delimited_by_close_and_connection_close_are_not_reused() {
        let (authority, accepted, _) =
            scripted(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], Some(1)).await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        for _ in 0..2 {
            let response = pool
                .send_buffered(
                    &request(Method::GET, "/"),
                    &Added::default(),
                    &Bytes::new(),
                    later(),
                )
                .await
                .expect("send");
            assert_eq!(read(response).await.0, b"until the end");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        let (authority, accepted, _) = scripted(
            vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"],
            None,
        )
        .await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        for _ in 0..2 {
            let response = pool
                .send_buffered(
                    &request(Method::GET, "/"),
                    &Added::default(),
                    &Bytes::new(),
                    later(),
                )
                .await
                .expect("send");
            assert_eq!(read(response).await.0, b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_replaced_for_repeatable_requests() {
        let (authority, accepted, _) = scripted(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
            Some(1),
        )
        .await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        for _ in 0..3 {
            let response = pool
                .send_buffered(
                    &request(Method::GET, "/"),
                    &Added::default(),
                    &Bytes::new(),
                    later(),
                )
                .await
                .expect("send");
            assert_eq!(read(response).await.0, b"ok");
            // Let the close arrive.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // The close has not been seen when the next request is written: a
        // GET goes again on a new connection.
        let (authority, accepted, _) = scripted(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
            Some(1),
        )
        .await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        for _ in 0..3 {
            let response = pool
                .send_buffered(
                    &request(Method::GET, "/"),
                    &Added::default(),
                    &Bytes::new(),
                    later(),
                )
                .await
                .expect("send");
            assert_eq!(read(response).await.0, b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn broken_answers_are_errors_that_say_why() {
        let cases: [(&'static [u8], &str); 4] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
                "content-length",
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
            (b"NOT HTTP\r\n\r\n", "malformed response head"),
            (
                b"HTTP/1.1 200 OK\r\ncont",
                "closed the connection before the response head",
            ),
        ];
        for (answer, says) in cases {
            let (authority, _, _) = scripted(vec![answer], Some(1)).await;
            let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
            let error = pool
                .send_buffered(
                    &request(Method::GET, "/"),
                    &Added::default(),
                    &Bytes::new(),
                    later(),
                )
                .await
                .expect_err("broken");
            assert!(!error.is_connect());
            assert!(
                error.to_string().contains(says),
                "{error} should say {says}"
            );
        }
        // A body cut short is an error of the body, not a short body.
        let (authority, _, _) = scripted(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
            Some(1),
        )
        .await;
        let pool = Pools::default().endpoint(&authority, Duration::from_secs(1));
        let response = pool
            .send_buffered(
                &request(Method::GET, "/"),
                &Added::default(),
                &Bytes::new(),
                later(),
            )
            .await
            .expect("head");
        let error = response.into_body().collect().await.expect_err("cut short");
        assert!(error.to_string().contains("inside the body"), "{error}");
    }
}
