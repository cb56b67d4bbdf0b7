//! The gateway's own HTTP/1.1 server path for the common request: HTTP/1.1,
//! no body, no upgrade, no expectation.
//!
//! hyper's HTTP/1 server costs about a quarter of the gateway's CPU per
//! proxied request (`bench/RESULTS.md`): its dispatcher is polled three
//! times per request, each time checking the clock for the `date` field,
//! and it arms a boxed header-read timer for every request. This path
//! reads the request head with httparse (as hyper does), calls
//! [`crate::proxy::handle`] in the connection's own task, and writes the
//! answer with one write when the body is already there. The header read
//! deadline is one timer per connection, moved lazily.
//!
//! Anything else is handed to hyper, for the rest of the connection, with
//! the bytes already read: HTTP/1.0, a body (`content-length` or
//! `transfer-encoding`), `expect`, `upgrade` or `te`, `CONNECT`, a head
//! httparse refuses or that breaks a limit (hyper answers 400 or 431), a
//! target `http::Uri` refuses. So the request framing this module decides
//! is only ever "no body", and every error answer to a malformed head is
//! hyper's.
//!
//! ```text
//!  read ──▶ httparse ──▶ plain? ──no──▶ hyper (bytes read so far replayed)
//!                          │yes
//!                          ▼
//!          proxy::handle ──▶ head + body (content-length or chunked) ──▶ write
//!                          └─▶ next request on the same bytes (pipelining)
//! ```

use crate::body::RequestBody;
use crate::forwarded::X_REQUEST_ID;
use crate::h1client::{content_length, decimal, has_token, last_token_is};
use crate::proxy::{self, ConnInfo};
use crate::server::Stop;
use crate::Shared;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use smallvec::SmallVec;
use std::future::Future;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Most header fields this path parses; a request with more (when the
/// listener allows more) goes to hyper.
const MAX_HEADERS: usize = 128;
/// Longest request target hyper accepts; longer ones get its 414.
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// Room made in the read buffer when it runs low.
const READ_SIZE: usize = 2 * 1024;
const MIN_READ_ROOM: usize = 512;
/// Body bytes gathered behind the head before a write.
const COALESCE: usize = 16 * 1024;
/// The write buffer of a connection, and the most it keeps between
/// requests.
const OUT_SIZE: usize = 1024;
const KEEP_OUT: usize = 4 * 1024;

/// How a connection served by this path ended.
pub(crate) enum End<IO> {
    /// Closed (by either side, a timeout or shutdown).
    Closed,
    /// A request this path does not serve: hyper takes the connection,
    /// starting with these bytes, already read from it.
    HandOff(IO, Bytes),
}

/// A request head read from the client.
// Returned once per request and taken apart at once: boxing the request
// would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// More bytes are needed.
    Partial,
    /// A request this path serves, and whether the client keeps the
    /// connection open after it.
    Ready(Request<RequestBody>, bool),
    /// For hyper.
    HandOff,
}

/// Serves requests on `io` until it closes, or until a request comes that
/// hyper has to serve.
pub(crate) async fn serve<IO>(
    mut io: IO,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    stop: &mut Stop<'_>,
) -> End<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &shared.config.limits;
    let (max_headers, max_head) = (limits.max_headers, limits.max_header_bytes);
    let mut deadline = Deadline::new(limits.header_read_timeout);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = Vec::with_capacity(OUT_SIZE);
    loop {
        deadline.restart();
        let (handled, method, client_keeps) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, max_headers, max_head) {
                    Head::Ready(request, keep) => {
                        let method = request.method().clone();
                        // On the heap for the time of the request: inline,
                        // its 4 KB would stay resident with every idle
                        // keep-alive connection. Made here, the request
                        // goes from the parse straight into it (each move
                        // of its 264 bytes writes to memory not in cache).
                        let handled = boxed!(proxy::respond(request, info.clone(), shared.clone()));
                        break (handled, method, keep);
                    }
                    Head::HandOff => return End::HandOff(io, buf.freeze()),
                    Head::Partial => {}
                }
            }
            match read(&mut io, &mut buf, &mut deadline, stop).await {
                Read::Data => {}
                Read::Closed => return End::Closed,
            }
        };
        let (response, id) = handled.await;
        let closing = !client_keeps || stop.started();
        let keep = {
            // Pinned in place: see `proxy::handle`.
            let writing = std::pin::pin!(write_response(
                &mut io,
                &mut out,
                &method,
                response,
                Some(&id),
                closing
            ));
            writing.await
        };
        if !keep {
            let _ = io.shutdown().await;
            return End::Closed;
        }
        // Buffers grown for a large answer or head are not kept by an idle
        // keep-alive connection.
        if out.capacity() > KEEP_OUT {
            out = Vec::with_capacity(OUT_SIZE);
        }
        if buf.is_empty() && buf.capacity() > 2 * READ_SIZE {
            buf = BytesMut::with_capacity(READ_SIZE);
        }
    }
}

/// Parses the head at the start of `buf`; a request this path serves is
/// split off `buf`, its header values slices of the same bytes.
fn parse(buf: &mut BytesMut, max_headers: usize, max_head: usize) -> Head {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed
        .parse_with_uninit_headers(buf, &mut slots[..max_headers.clamp(1, MAX_HEADERS)])
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Head::Partial,
        // Too large, too many fields or malformed: hyper's answer.
        Ok(httparse::Status::Partial) | Err(_) => return Head::HandOff,
    };
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Head::HandOff;
    };
    if len > max_head || target.len() > MAX_TARGET {
        return Head::HandOff;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Head::HandOff;
    };
    if method == Method::CONNECT {
        return Head::HandOff;
    }
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        (
            s.as_ptr() as usize - base,
            s.as_ptr() as usize - base + s.len(),
        )
    };
    let target = span(target.as_bytes());
    let mut keep = true;
    let mut fields: SmallVec<[(HeaderName, (usize, usize)); 16]> = SmallVec::new();
    for field in parsed.headers.iter() {
        let Ok(name) = crate::headermaps::name(field.name.as_bytes()) else {
            return Head::HandOff;
        };
        match name {
            header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::EXPECT
            | header::UPGRADE
            | header::TE => return Head::HandOff,
            header::CONNECTION => {
                if has_token(field.value, "upgrade") {
                    return Head::HandOff;
                }
                keep &= !has_token(field.value, "close");
            }
            _ => {}
        }
        fields.push((name, span(field.value)));
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target.0..target.1)) else {
        return hand_back(buf, head);
    };
    let mut request = Request::new(RequestBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    // Room for what the proxy may insert: Host, and the forwarding fields
    // when route header changes or filters need them in the map.
    let headers = request.headers_mut();
    *headers = crate::headermaps::take(fields.len() + 6);
    for (name, (start, end)) in fields {
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(start..end)) else {
            return hand_back(buf, head);
        };
        headers.append(name, value);
    }
    Head::Ready(request, keep)
}

/// Puts a split-off head back in front of `buf` (a rare path: a target or
/// value httparse took and `http` refuses).
fn hand_back(buf: &mut BytesMut, head: Bytes) -> Head {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Head::HandOff
}

enum Read {
    Data,
    Closed,
}

/// Reads more of a request head, until the header read deadline. While
/// nothing of a request has arrived, shutdown closes the connection.
async fn read<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    deadline: &mut Deadline,
    stop: &mut Stop<'_>,
) -> Read
where
    IO: AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < MIN_READ_ROOM {
        buf.reserve(READ_SIZE);
    }
    let idle = buf.is_empty();
    let mut reading = std::pin::pin!(io.read_buf(buf));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(read) = reading.as_mut().poll(cx) {
            return Poll::Ready(match read {
                Ok(n) if n > 0 => Read::Data,
                _ => Read::Closed,
            });
        }
        if deadline.expired(cx) || (idle && stop.poll(cx)) {
            return Poll::Ready(Read::Closed);
        }
        Poll::Pending
    })
    .await
}

/// The header read deadline of a connection. Restarting it per request is
/// a clock read; its one timer is moved only when it fires early.
struct Deadline {
    timeout: Duration,
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(timeout: Duration) -> Deadline {
        Deadline {
            timeout,
            at: Instant::now() + timeout,
            timer: None,
        }
    }

    fn restart(&mut self) {
        self.at = Instant::now() + self.timeout;
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if timer.deadline() >= at {
                return true;
            }
            timer.as_mut().reset(at);
        }
    }
}

/// How the body of a response is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Nothing after the head (HEAD, 204, 304).
    None,
    /// `content-length` bytes.
    Length(u64),
    Chunked,
}

/// Writes `response` to the client, with `request_id` as its
/// `x-request-id`. Returns whether the connection can carry another
/// request.
///
/// An `async move` block, not an `async fn`: see `proxy::handle`.
#[allow(clippy::manual_async_fn)]
fn write_response<'a, IO, B>(
    io: &'a mut IO,
    out: &'a mut Vec<u8>,
    method: &'a Method,
    response: Response<B>,
    request_id: Option<&'a HeaderValue>,
    closing: bool,
) -> impl Future<Output = bool> + 'a
where
    IO: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin + 'a,
{
    async move {
        let (parts, mut body) = response.into_parts();
        out.clear();
        let (mut framing, mut keep) = encode_head(out, method, &parts, &body, request_id, closing);
        crate::headermaps::give(parts.headers);
        if framing == Framing::None {
            drop(body);
            return io.write_all(out).await.is_ok() && io.flush().await.is_ok() && keep;
        }
        loop {
            let frame = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending if !out.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
            })
            .await;
            let data = match frame {
                // The body is not ready: send what is there meanwhile.
                None => {
                    if io.write_all(out).await.is_err() || io.flush().await.is_err() {
                        return false;
                    }
                    out.clear();
                    continue;
                }
                Some(None) => break,
                // The answer cannot be completed: the client sees the
                // connection close before the end of the body.
                Some(Some(Err(_))) => {
                    let _ = io.write_all(out).await;
                    return false;
                }
                Some(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers are not sent (this path serves no `te:
                    // trailers` request).
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            let data = match &mut framing {
                Framing::Length(left) => {
                    let n = (data.len() as u64).min(*left);
                    *left -= n;
                    if n < data.len() as u64 {
                        // More than announced: the rest is not sent.
                        keep = false;
                    }
                    data.slice(..n as usize)
                }
                Framing::Chunked => {
                    // Writing to a Vec cannot fail.
                    let _ = write!(out, "{:x}\r\n", data.len());
                    data
                }
                Framing::None => continue,
            };
            if out.len() + data.len() <= COALESCE {
                out.extend_from_slice(&data);
            } else {
                if io.write_all(out).await.is_err() || io.write_all(&data).await.is_err() {
                    return false;
                }
                out.clear();
            }
            if framing == Framing::Chunked {
                out.extend_from_slice(b"\r\n");
            }
        }
        match framing {
            Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
            // Less than announced: the client sees the connection close short.
            Framing::Length(left) if left > 0 => keep = false,
            _ => {}
        }
        io.write_all(out).await.is_ok() && io.flush().await.is_ok() && keep
    }
}

/// Writes the status line and header fields, with the framing and field
/// order hyper's server would choose: `transfer-encoding` as given (with
/// `chunked` last), else the body's exact length, else a given
/// `content-length`, else chunked; none of them where a body is not
/// allowed, except the length on a HEAD answer. A length replaces the
/// first given `content-length` field in place; values of `connection`
/// and `transfer-encoding` are joined on one line; `connection: close` is
/// added when the connection ends after this answer (`closing`), and
/// `date` when absent. A `request_id` is written after the map's fields,
/// in place of any `x-request-id` among them. Returns the framing and
/// whether the connection can carry another request.
fn encode_head<B: Body>(
    out: &mut Vec<u8>,
    method: &Method,
    parts: &http::response::Parts,
    body: &B,
    request_id: Option<&HeaderValue>,
    closing: bool,
) -> (Framing, bool) {
    let status = parts.status;
    let headers = &parts.headers;
    let mut keep = !closing;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status.is_informational() {
        // Only an upgrade answers with 1xx, and upgrades are hyper's.
        keep = false;
    }
    let no_content = status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let head_request = method == Method::HEAD;
    let body_allowed = !no_content && !head_request;
    let coded = body_allowed && headers.contains_key(header::TRANSFER_ENCODING);
    let exact = body.size_hint().exact();
    // A body of known size is framed by that size whatever the field says,
    // so the field is read only when the size is unknown, or for the
    // length a HEAD answer announces.
    let read_field = exact.is_none() || head_request;
    let given = match read_field {
        true => content_length(headers).ok().flatten(),
        false => None,
    };
    if read_field && given.is_none() && body_allowed && headers.contains_key(header::CONTENT_LENGTH)
    {
        // Conflicting or malformed lengths from the handler and no size
        // of the body's own: its framing is written (chunked), and the
        // connection ends after it.
        keep = false;
    }
    let framing = match (body_allowed, coded, exact.or(given)) {
        (false, _, _) => Framing::None,
        (true, true, _) => Framing::Chunked,
        (true, false, Some(n)) => Framing::Length(n),
        (true, false, None) => Framing::Chunked,
    };
    let length = match framing {
        Framing::Length(n) => Some(n),
        Framing::None if head_request && !no_content => given.or(exact.filter(|&n| n > 0)),
        _ => None,
    };
    let (mut wrote_length, mut wrote_coding, mut wrote_connection, mut date) =
        (false, false, false, false);
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                if let (Some(n), false) = (length, wrote_length) {
                    write_length(out, n);
                    wrote_length = true;
                }
                continue;
            }
            header::TRANSFER_ENCODING => {
                if coded && !wrote_coding {
                    let codings = joined(out, b"transfer-encoding: ", headers, name);
                    if !last_token_is(codings, "chunked") {
                        out.extend_from_slice(b", chunked");
                    }
                    out.extend_from_slice(b"\r\n");
                    wrote_coding = true;
                }
                continue;
            }
            header::CONNECTION => {
                if !wrote_connection {
                    if has_token(joined(out, b"connection: ", headers, name), "close") {
                        keep = false;
                    } else if closing {
                        out.extend_from_slice(b", close");
                    }
                    out.extend_from_slice(b"\r\n");
                    wrote_connection = true;
                }
                continue;
            }
            header::DATE => date = true,
            ref other if request_id.is_some() && *other == X_REQUEST_ID => continue,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(id) = request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if closing && !wrote_connection {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_length && !wrote_coding {
        match (framing, length) {
            (Framing::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            (_, Some(n)) => write_length(out, n),
            _ => {}
        }
    }
    if !date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep)
}

/// Writes `prefix` and the values of `name`, joined by ", "; returns the
/// bytes of the values as written.
fn joined<'a>(
    out: &'a mut Vec<u8>,
    prefix: &[u8],
    headers: &http::HeaderMap,
    name: &HeaderName,
) -> &'a [u8] {
    out.extend_from_slice(prefix);
    let start = out.len();
    for (i, value) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(value.as_bytes());
    }
    &out[start..]
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(decimal(n as usize).as_bytes());
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` value of the current second.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

/// Appends the current time as an HTTP date, formatted once per second.
fn http_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == cached.1.len() {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = second;
            }
        }
        out.extend_from_slice(&cached.1);
    });
}

/// A connection whose first bytes were already read: they are read again
/// first, then the rest from the connection.
pub(crate) struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    pub(crate) fn new(io: IO, prefix: Bytes) -> Rewind<IO> {
        Rewind { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(dst.remaining());
            dst.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, dst)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, src)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::LocalBody;

    fn parsed(bytes: &[u8]) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let head = parse(&mut buf, 100, 64 * 1024);
        (head, buf)
    }

    #[test]
    fn a_plain_get_is_served_here_with_values_sharing_the_read_bytes() {
        let (head, rest) = parsed(
            b"GET /items?page=2 HTTP/1.1\r\nHost: shop.test\r\nX-Tag: a\r\nX-Tag: b\r\n\r\nGET /next",
        );
        let Head::Ready(request, keep) = head else {
            panic!("not served here");
        };
        assert!(keep);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/items?page=2");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "shop.test");
        let tags: Vec<_> = request.headers().get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        assert!(request.body().is_end_stream());
        // The next pipelined request stays in the buffer.
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn connection_close_ends_the_connection_after_the_answer() {
        let (head, _) =
            parsed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(matches!(head, Head::Ready(_, false)));
    }

    #[test]
    fn requests_this_path_does_not_serve_go_to_hyper_with_every_byte() {
        let cases: [&[u8]; 11] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            // Malformed: hyper answers 400.
            b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for bytes in cases {
            let (head, rest) = parsed(bytes);
            assert!(
                matches!(head, Head::HandOff),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(&rest[..], bytes, "bytes were lost");
        }
    }

    #[test]
    fn heads_over_the_limits_go_to_hyper_for_its_431() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parsed(&many).0, Head::HandOff));
        // An unfinished head as large as the limit.
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nx: "[..]);
        buf.extend_from_slice(&[b'a'; 100]);
        assert!(matches!(parse(&mut buf, 100, 64), Head::HandOff));
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nx: aa"[..]);
        assert!(matches!(parse(&mut buf, 100, 64 * 1024), Head::Partial));
        assert_eq!(buf.len(), 21, "a partial head is left as it is");
    }

    /// The head `encode_head` writes, its framing and whether the
    /// connection stays open.
    fn encoded(
        status: u16,
        fields: &[(&str, &str)],
        body: LocalBody,
        method: Method,
        closing: bool,
    ) -> (Framing, bool, String) {
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).expect("status");
        for (name, value) in fields {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        let (parts, body) = response.into_parts();
        let mut out = Vec::new();
        let (framing, keep) = encode_head(&mut out, &method, &parts, &body, None, closing);
        (framing, keep, String::from_utf8(out).expect("ASCII"))
    }

    /// `encoded` in one line, without the `date` field, for a connection
    /// that stays open.
    fn head_of(status: u16, fields: &[(&str, &str)], body: LocalBody, method: Method) -> String {
        let (framing, keep, text) = encoded(status, fields, body, method, false);
        let text: Vec<&str> = text.lines().filter(|l| !l.starts_with("date: ")).collect();
        format!("{framing:?} {keep} | {}", text.join("|"))
    }

    #[test]
    fn the_request_id_is_written_once_after_the_maps_fields() {
        let mut response = Response::new(LocalBody::full(Bytes::from_static(b"hi")));
        for (name, value) in [("x-request-id", "upstream"), ("x-a", "1")] {
            response.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let (parts, body) = response.into_parts();
        let id = HeaderValue::from_static("gateway-id");
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, &parts, &body, Some(&id), false);
        let text = String::from_utf8(out).expect("ASCII");
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("date: ")).collect();
        assert_eq!(
            lines,
            [
                "HTTP/1.1 200 OK",
                "x-a: 1",
                "x-request-id: gateway-id",
                "content-length: 2",
                ""
            ]
        );
        // Without an id the map's field is written as it is.
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, &parts, &body, None, false);
        let text = String::from_utf8(out).expect("ASCII");
        assert!(
            text.contains("\r\nx-request-id: upstream\r\nx-a: 1\r\n"),
            "{text}"
        );
    }

    #[test]
    fn framing_follows_hypers_rules() {
        let full = || LocalBody::full(Bytes::from_static(b"hello"));
        // The body's exact length, in place of a given one.
        assert_eq!(
            head_of(
                200,
                &[("content-length", "5"), ("x-a", "1")],
                full(),
                Method::GET
            ),
            "Length(5) true | HTTP/1.1 200 OK|content-length: 5|x-a: 1|"
        );
        assert_eq!(
            head_of(404, &[], full(), Method::GET),
            "Length(5) true | HTTP/1.1 404 Not Found|content-length: 5|"
        );
        assert_eq!(
            head_of(200, &[], LocalBody::full(Bytes::new()), Method::GET),
            "Length(0) true | HTTP/1.1 200 OK|content-length: 0|"
        );
        // HEAD: the given length is kept, no body.
        assert_eq!(
            head_of(200, &[("content-length", "42")], full(), Method::HEAD),
            "None true | HTTP/1.1 200 OK|content-length: 42|"
        );
        // 204 and 304 carry no length.
        assert_eq!(
            head_of(204, &[("content-length", "5")], full(), Method::GET),
            "None true | HTTP/1.1 204 No Content|"
        );
        assert_eq!(
            head_of(304, &[("etag", "\"x\"")], full(), Method::GET),
            "None true | HTTP/1.1 304 Not Modified|etag: \"x\"|"
        );
        // A given coding gets chunked last; values joined on one line.
        assert_eq!(
            head_of(200, &[("transfer-encoding", "gzip")], full(), Method::GET),
            "Chunked true | HTTP/1.1 200 OK|transfer-encoding: gzip, chunked|"
        );
        // A malformed or conflicting given length: a body of known size is
        // framed by its size and the connection stays open; without one,
        // the body goes chunked and the connection ends after it.
        for given in ["5x", "5, 6"] {
            assert_eq!(
                head_of(200, &[("content-length", given)], full(), Method::GET),
                "Length(5) true | HTTP/1.1 200 OK|content-length: 5|"
            );
            let unsized_body = LocalBody::Trailed {
                data: Some(Bytes::from_static(b"hello")),
                trailers: None,
            };
            assert_eq!(
                head_of(200, &[("content-length", given)], unsized_body, Method::GET),
                "Chunked false | HTTP/1.1 200 OK|transfer-encoding: chunked|"
            );
        }
        // The answer closes the connection.
        assert_eq!(
            head_of(200, &[("connection", "close")], full(), Method::GET),
            "Length(5) false | HTTP/1.1 200 OK|connection: close|content-length: 5|"
        );
        // A date given is kept, none added; a closing connection says so.
        let date = "Tue, 01 Dec 2026 00:00:00 GMT";
        let (_, keep, text) = encoded(200, &[("date", date)], full(), Method::GET, true);
        assert_eq!(text.matches("date: ").count(), 1, "{text}");
        assert!(text.contains(date), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(!keep);
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut out = Vec::new();
        http_date(&mut out);
        let text = String::from_utf8(out).expect("ASCII");
        let parsed = httpdate::parse_http_date(&text).expect("an HTTP date");
        let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(age < Duration::from_secs(2), "{text}");
    }

    #[tokio::test]
    async fn rewind_reads_the_given_bytes_first() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = Rewind::new(client, Bytes::from_static(b"GET / "));
        server.write_all(b"HTTP/1.1\r\n").await.expect("write");
        drop(server);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_sent_chunked_and_ended() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut client = client;
        let frames = vec![
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                b"hello",
            ))),
            Ok(hyper::body::Frame::data(Bytes::from_static(b" world"))),
        ];
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let keep = write_response(
            &mut client,
            &mut Vec::new(),
            &Method::GET,
            Response::new(body),
            None,
            false,
        )
        .await;
        assert!(keep);
        drop(client);
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.expect("read");
        let text = String::from_utf8(all).expect("ASCII");
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: "),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "{text}"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const FRAMING: [&str; 5] = [
            "content-length",
            "transfer-encoding",
            "expect",
            "te",
            "upgrade",
        ];

        fn field() -> impl Strategy<Value = (String, String)> {
            let names = prop::sample::select(vec![
                "Host",
                "x-a",
                "Content-Length",
                "transfer-encoding",
                "Transfer-Encoding",
                "connection",
                "Expect",
                "TE",
                "upgrade",
                "user-agent",
            ]);
            (names.prop_map(str::to_owned), "[!-~][ -~]{0,12}")
        }

        proptest! {
            #[test]
            fn requests_with_framing_fields_always_go_to_hyper_and_no_byte_is_lost(
                method in prop::sample::select(vec!["GET", "HEAD", "POST", "DELETE", "CONNECT"]),
                version in prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
                fields in prop::collection::vec(field(), 0..8),
                tail in prop::collection::vec(any::<u8>(), 0..40),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut head = format!("{method} /p?q=1 {version}\r\n");
                for (name, value) in &fields {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let mut bytes = head.clone().into_bytes();
                bytes.extend_from_slice(&tail);
                let framed = fields.iter().any(|(name, value)| {
                    FRAMING.iter().any(|f| name.eq_ignore_ascii_case(f))
                        || (name.eq_ignore_ascii_case("connection")
                            && value.to_ascii_lowercase().split(',').any(|t| t.trim() == "upgrade"))
                });
                let mut buf = BytesMut::from(&bytes[..]);
                match parse(&mut buf, 100, 64 * 1024) {
                    Head::Ready(request, _) => {
                        prop_assert!(!framed, "served here: {head:?}");
                        prop_assert_eq!(version, "HTTP/1.1");
                        prop_assert!(method != "CONNECT");
                        prop_assert_eq!(request.headers().len(), fields.len());
                        prop_assert_eq!(&buf[..], &tail[..], "the next request's bytes");
                    }
                    Head::HandOff => prop_assert_eq!(&buf[..], &bytes[..]),
                    Head::Partial => prop_assert!(false, "a whole head taken as partial"),
                }
                // Any prefix: never a panic; a head not yet whole is left
                // as it is.
                let cut = cut.index(bytes.len() + 1);
                let mut buf = BytesMut::from(&bytes[..cut]);
                match parse(&mut buf, 100, 64 * 1024) {
                    Head::Ready(..) => prop_assert!(cut >= head.len()),
                    Head::Partial | Head::HandOff => prop_assert_eq!(&buf[..], &bytes[..cut]),
                }
            }

            #[test]
            fn any_bytes_are_served_here_only_as_a_whole_plain_head(
                bytes in prop::collection::vec(any::<u8>(), 0..200),
            ) {
                let mut buf = BytesMut::from(&bytes[..]);
                match parse(&mut buf, 100, 64 * 1024) {
                    Head::Ready(request, _) => {
                        prop_assert!(bytes.ends_with(&buf));
                        let plain = request
                            .headers()
                            .keys()
                            .all(|name| !FRAMING.contains(&name.as_str()));
                        prop_assert!(plain);
                    }
                    Head::Partial | Head::HandOff => prop_assert_eq!(&buf[..], &bytes[..]),
                }
            }
        }
    }
}
