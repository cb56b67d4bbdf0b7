//! A scripted upstream for the filter tests (cache, transform, aggregate,
//! traces): a closure decides each answer from the request, and every
//! request is recorded. Also a raw client that returns body bytes as sent.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// How to answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait before answering.
    pub delay: Option<Duration>,
    /// Send the body in chunks without Content-Length.
    pub chunked: bool,
    /// Trailers sent after a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Reply {
    /// A 200 JSON answer.
    pub fn json(body: impl Into<String>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into().into_bytes(),
            delay: None,
            chunked: false,
            trailers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the status.
    pub fn status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    /// Answers after `delay`.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    /// Sends the body chunked.
    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }

    /// Adds a trailer (the body is then sent chunked).
    pub fn trailer(mut self, name: &str, value: &str) -> Reply {
        self.chunked = true;
        self.trailers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body with raw bytes.
    pub fn bytes(mut self, body: Vec<u8>) -> Reply {
        self.body = body;
        self
    }
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// A running scripted upstream.
pub struct Scripted {
    /// Its address.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// Requests received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts an upstream that answers with `script(request, n)` (n counts
/// from 0).
pub async fn scripted(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script: Arc<Script> = Arc::new(script);
    let (h, s) = (hits.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (script, hits, seen) = (script.clone(), h.clone(), s.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (script, hits, seen) = (script.clone(), hits.clone(), seen.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let request = Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        };
                        let n = hits.fetch_add(1, Ordering::SeqCst);
                        seen.lock().expect("lock").push(request.clone());
                        let reply = script(&request, n);
                        if let Some(delay) = reply.delay {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, std::convert::Infallible>(build(reply))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Scripted {
        addr,
        hits,
        seen,
        task,
    }
}

type ReplyBody = http_body_util::Either<
    Full<Bytes>,
    StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >,
>;

fn build(reply: Reply) -> Response<ReplyBody> {
    let body = if reply.chunked {
        let mut frames: Vec<_> = reply
            .body
            .chunks(1000)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        if !reply.trailers.is_empty() {
            let mut trailers = http::HeaderMap::new();
            for (name, value) in &reply.trailers {
                trailers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(value).expect("value"),
                );
            }
            frames.push(Ok(Frame::trailers(trailers)));
        }
        http_body_util::Either::Right(StreamBody::new(futures::stream::iter(frames)))
    } else {
        http_body_util::Either::Left(Full::new(Bytes::from(reply.body)))
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(reply.status).expect("status");
    for (name, value) in reply.headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            http::HeaderValue::from_str(&value).expect("value"),
        );
    }
    response
}

/// A response with its body as raw bytes.
#[derive(Debug)]
pub struct Raw {
    /// Status.
    pub status: u16,
    /// Headers (lowercase names; repeated headers joined by ", ").
    pub headers: BTreeMap<String, String>,
    /// Body bytes.
    pub body: Bytes,
}

impl Raw {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A keep-alive client to the gateway that keeps bodies as bytes.
#[derive(Clone)]
pub struct RawClient {
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: SocketAddr,
}

impl RawClient {
    /// A client for the gateway's plain listener.
    pub fn new(addr: SocketAddr) -> RawClient {
        RawClient {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    /// `GET path` with `Host: host` and headers.
    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
        self.send("GET", host, path, headers).await
    }

    /// Sends a bodiless request.
    pub async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Raw {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("host", host);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            self.inner
                .request(builder.body(Full::new(Bytes::new())).expect("request")),
        )
        .await
        .expect("the gateway answers within 20 s")
        .expect("request to the gateway");
        let status = response.status().as_u16();
        let mut headers = BTreeMap::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.to_string())
                .and_modify(|v: &mut String| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .expect("response body");
        Raw {
            status,
            headers,
            body,
        }
    }
}

/// The value of a metric series in Prometheus text output: `name` followed
/// by exactly `labels` (in the rendered order), or 0 when absent.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(&series)?;
            rest.strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// An ApiRoute with one rule `name` on `host` under `prefix`, to `backend`,
/// with `extra` YAML appended to the rule (indented by 4 spaces).
pub fn rule_yaml(route: &str, host: &str, prefix: &str, backend: &str, extra: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {route}, namespace: default}}
spec:
  hosts: [{host}]
  rules:
  - name: api
    matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backends: [{{url: \"{backend}\"}}]
{extra}"
    )
}
