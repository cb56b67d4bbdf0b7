//! Response bodies the dataplane builds or buffers itself, and bounded
//! reading of upstream bodies.
//!
//! Filters that need a whole body (JSON transform, cache store, aggregate
//! parts) read it with [`read_limited`], which never holds more than the
//! limit in memory. When a body turns out larger than the limit, the bytes
//! already read and the unread rest are handed back as one
//! [`LocalBody::Prefixed`] body, so the client still gets every byte,
//! unchanged, without the gateway buffering it.
//!
//! A response body whose size is unknown when its head is sent is wrapped
//! in [`LocalBody::Counted`] when the request is logged: the bytes are
//! counted as they stream, and the access log line is written at the end.

use crate::accesslog::PendingLine;
use crate::h1client::{BodyError, ResponseBody};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{BodyExt, Either};
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A body built by the dataplane: whole bytes, or buffered bytes followed
/// by the unread rest of an upstream body, or another body counted for
/// the access log.
#[derive(Debug)]
pub enum LocalBody {
    /// A complete body (taken on the first poll).
    Full(Option<Bytes>),
    /// Bytes already read from `rest`, then `rest` itself.
    Prefixed {
        /// Read, not yet sent.
        prefix: Option<Bytes>,
        /// The unread part of the upstream body (boxed, like the trailers
        /// below: the variants are rare, and inline they made every
        /// response the proxy moves larger).
        rest: Box<ResponseBody>,
    },
    /// A read body and the trailers that followed it.
    Trailed {
        /// Not yet sent.
        data: Option<Bytes>,
        /// Sent after the data.
        trailers: Option<Box<HeaderMap>>,
    },
    /// A response body counted as it streams.
    Counted(Box<Counted>),
}

/// A response body and its access log line, written with the bytes sent
/// when the body ends, fails, or is dropped (the client went away).
#[derive(Debug)]
pub struct Counted {
    inner: Either<ResponseBody, LocalBody>,
    sent: u64,
    line: Option<PendingLine>,
}

impl Counted {
    /// Counts `inner` for `line`.
    pub fn new(inner: Either<ResponseBody, LocalBody>, line: PendingLine) -> Counted {
        Counted {
            inner,
            sent: 0,
            line: Some(line),
        }
    }

    fn finish(&mut self) {
        if let Some(line) = self.line.take() {
            line.finish(self.sent);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}

impl LocalBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> LocalBody {
        LocalBody::Full(if bytes.is_empty() { None } else { Some(bytes) })
    }
}

impl Body for LocalBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            LocalBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            LocalBody::Prefixed { prefix, rest } => {
                if let Some(bytes) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Pin::new(rest.as_mut()).poll_frame(cx)
            }
            LocalBody::Trailed { data, trailers } => {
                if let Some(bytes) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            LocalBody::Counted(counted) => {
                let polled = match &mut counted.inner {
                    Either::Left(body) => Pin::new(body).poll_frame(cx),
                    Either::Right(body) => Pin::new(body).poll_frame(cx),
                };
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            counted.sent += data.len() as u64;
                        }
                    }
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => counted.finish(),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LocalBody::Full(bytes) => bytes.is_none(),
            LocalBody::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            LocalBody::Trailed { data, trailers } => data.is_none() && trailers.is_none(),
            LocalBody::Counted(counted) => match &counted.inner {
                Either::Left(body) => body.is_end_stream(),
                Either::Right(body) => body.is_end_stream(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LocalBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            LocalBody::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
            LocalBody::Trailed { data, .. } => {
                // Not exact: an exact size would become a Content-Length,
                // and HTTP/1.1 sends trailers only with chunked bodies.
                let mut hint = SizeHint::new();
                hint.set_lower(data.as_ref().map_or(0, |b| b.len() as u64));
                hint
            }
            LocalBody::Counted(counted) => match &counted.inner {
                Either::Left(body) => body.size_hint(),
                Either::Right(body) => body.size_hint(),
            },
        }
    }
}

/// Why a body was not read whole.
#[derive(Debug)]
pub enum ReadError {
    /// The body is larger than the limit: here is all of it, unread part
    /// included, to pass through.
    TooLarge(LocalBody),
    /// The upstream failed while sending the body; what was read is lost.
    Failed(BodyError),
}

/// Reads `body` whole if it has at most `limit` bytes, with its trailers
/// if any.
pub async fn read_limited(
    mut body: ResponseBody,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), ReadError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge(LocalBody::Prefixed {
            prefix: None,
            rest: Box::new(body),
        }));
    }
    let mut buf = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Failed)?;
        let frame = match frame.into_data() {
            Ok(data) => {
                if buf.len() + data.len() > limit {
                    buf.extend_from_slice(&data);
                    return Err(ReadError::TooLarge(LocalBody::Prefixed {
                        prefix: Some(buf.freeze()),
                        rest: Box::new(body),
                    }));
                }
                buf.extend_from_slice(&data);
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(more) = frame.into_trailers() {
            match &mut trailers {
                Some(all) => all.extend(more),
                None => trailers = Some(more),
            }
        }
    }
    Ok((buf.freeze(), trailers))
}

/// A client's request body: hyper's, for requests hyper read, or none, for
/// the bodiless requests read by the gateway's own HTTP/1 path
/// (`crate::h1server`).
#[derive(Debug)]
pub enum RequestBody {
    /// Read by hyper (HTTP/2, and HTTP/1 requests with a body).
    Hyper(hyper::body::Incoming),
    /// The request had no body.
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
