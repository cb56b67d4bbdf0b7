//! Aggregation: one request, several upstream calls in parallel, one JSON
//! answer.
//!
//! ```text
//!  GET / ─▶ parts (at most max_parallel in flight) ─┬─▶ featured: GET /products/featured
//!                                                   ├─▶ cart:     GET /cart  (+ Authorization)
//!                                                   └─▶ user:     GET /users/me
//!        ◀── {"featured": <its JSON>, "cart": <its JSON>, "user": <its JSON>}
//! ```
//!
//! - Each part is a `GET` of its path on its cluster (endpoint picked by
//!   the cluster's balancer and passive health, as for forwarding), with
//!   the request headers the part lists in `forwardHeaders`, the request
//!   id and a `traceparent` naming the part's own span. Parts are not
//!   retried.
//! - A part fails when it does not answer within its `timeout` (head and
//!   body), cannot be reached, answers a non-2xx status, or answers
//!   something that is not JSON (or is larger than [`MAX_PART_BYTES`]).
//!   `gzip` and `br` answers are decoded.
//! - Answers are merged byte for byte under their part's name, in the
//!   rule's order (numbers and strings are not re-encoded).
//! - `onPartFailure: Omit` leaves failed parts out and names them, in the
//!   rule's order, in `x-ferrogate-partial`; when every part failed the
//!   answer is 502. `Fail` answers 502 when any part failed, naming the
//!   failed parts the same way.

use crate::body::{read_limited, ReadError};
use crate::error::error_response;
use crate::proxy::{Body, RequestInfo, UpstreamAttempt};
use crate::table::{ClusterRuntime, RouteRuntime};
use crate::transform::{self, Coding};
use bytes::Bytes;
use crds::route::PartFailurePolicy;
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use serde_json::value::RawValue;
use snapshot::model::{Aggregate, AggregatePart};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest answer of one part.
pub const MAX_PART_BYTES: usize = 4 << 20;

/// The header naming failed parts.
pub const PARTIAL: HeaderName = HeaderName::from_static("x-ferrogate-partial");

/// Why a part failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartError {
    /// No answer (head and body) within the part's timeout.
    Timeout,
    /// The cluster has no healthy endpoint, or the connection failed.
    Unreachable,
    /// A non-2xx answer.
    Status,
    /// Not JSON, not decodable, or too large.
    Invalid,
}

impl PartError {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PartError::Timeout => "timeout",
            PartError::Unreachable => "error",
            PartError::Status => "status",
            PartError::Invalid => "invalid",
        }
    }
}

/// The outcome of one part.
struct PartResult {
    index: usize,
    answer: Result<Bytes, PartError>,
    attempt: Option<UpstreamAttempt>,
}

/// Serves an aggregate rule.
pub async fn serve(
    aggregate: &Aggregate,
    headers: &HeaderMap,
    runtime: &RouteRuntime,
    request_id: &str,
    info: &mut RequestInfo,
) -> Response<Body> {
    let trace = info.trace.clone();
    // Built eagerly (a Vec, not a lazy iterator) so that the request's
    // future stays Send: a lazy map closure over borrowed parts trips
    // the compiler's higher-ranked lifetime check.
    let calls: Vec<_> = aggregate
        .parts
        .iter()
        .enumerate()
        .map(|(index, part)| {
            let cluster = runtime.backend(index).cloned();
            let trace = trace.clone();
            async move {
                let Some(cluster) = cluster else {
                    return PartResult {
                        index,
                        answer: Err(PartError::Unreachable),
                        attempt: None,
                    };
                };
                call(part, index, cluster, headers, request_id, trace.as_ref()).await
            }
        })
        .collect();
    let parallel = usize::try_from(aggregate.max_parallel)
        .unwrap_or(16)
        .clamp(1, 16);
    let mut results: Vec<PartResult> = futures::stream::iter(calls)
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.sort_by_key(|r| r.index);

    let mut merged = Vec::with_capacity(
        2 + results
            .iter()
            .map(|r| r.answer.as_ref().map_or(0, |b| b.len() + 8))
            .sum::<usize>(),
    );
    merged.push(b'{');
    let mut failed: Vec<&str> = Vec::new();
    let mut first = true;
    for result in &mut results {
        let name = aggregate
            .parts
            .get(result.index)
            .map_or("", |p| p.name.as_str());
        runtime.metrics.part(
            name,
            match &result.answer {
                Ok(_) => "ok",
                Err(e) => e.as_str(),
            },
        );
        if let Some(attempt) = result.attempt.take() {
            info.record_attempt(attempt);
        }
        match &result.answer {
            Ok(json) => {
                if !first {
                    merged.push(b',');
                }
                first = false;
                // Part names are plain strings; encoding cannot fail.
                let _ = serde_json::to_writer(&mut merged, name);
                merged.push(b':');
                merged.extend_from_slice(json);
            }
            Err(_) => failed.push(name),
        }
    }
    merged.push(b'}');

    let fail = !failed.is_empty()
        && (aggregate.on_part_failure == PartFailurePolicy::Fail || failed.len() == results.len());
    let mut response = if fail {
        info.error = Some("aggregate_part_failed");
        error_response(StatusCode::BAD_GATEWAY, "aggregate_part_failed", request_id)
            .map(|b| Either::Right(crate::body::LocalBody::full(b)))
    } else {
        let mut response: Response<Body> = Response::new(Either::Right(
            crate::body::LocalBody::full(Bytes::from(merged)),
        ));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    if !failed.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&failed.join(", ")) {
            response.headers_mut().insert(PARTIAL, value);
        }
    }
    response
}

async fn call(
    part: &AggregatePart,
    index: usize,
    cluster: Arc<ClusterRuntime>,
    headers: &HeaderMap,
    request_id: &str,
    trace: Option<&crate::telemetry::TraceContext>,
) -> PartResult {
    let fail = |answer: PartError, attempt: Option<UpstreamAttempt>| PartResult {
        index,
        answer: Err(answer),
        attempt,
    };
    let Some(endpoint) = cluster.pick(None, None) else {
        return fail(PartError::Unreachable, None);
    };
    let Some(authority) = cluster.authority(endpoint) else {
        return fail(PartError::Unreachable, None);
    };
    let mut uri = String::with_capacity(16 + authority.len() + part.path.len());
    uri.push_str(cluster.scheme());
    uri.push_str("://");
    uri.push_str(authority);
    if let Some(prefix) = &cluster.config.path_prefix {
        uri.push_str(prefix.trim_end_matches('/'));
    }
    uri.push_str(&part.path);
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return fail(PartError::Unreachable, None);
    };
    let mut request = Request::new(Either::Right(Full::new(Bytes::new())));
    *request.uri_mut() = uri;
    let out = request.headers_mut();
    for name in &part.forward_headers {
        for value in headers.get_all(name.as_str()) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                out.append(name, value.clone());
            }
        }
    }
    let host = cluster
        .config
        .tls
        .as_ref()
        .map(|t| t.server_name.as_str())
        .unwrap_or(authority);
    if let Ok(value) = HeaderValue::from_str(host) {
        out.insert(header::HOST, value);
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        out.insert(HeaderName::from_static("x-request-id"), value);
    }
    out.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let span_id = crate::telemetry::new_span_id();
    // A forwarded `tracestate` belongs to the client's trace, which the
    // part continues only if `inject` sets it again.
    out.remove(crate::telemetry::TRACESTATE);
    if let Some(trace) = trace {
        trace.inject(out, &span_id);
    }

    cluster.count_attempt();
    let started = Instant::now();
    let guard = cluster.begin(endpoint);
    let timeout = Duration::from_millis(part.timeout_ms.max(1));
    let exchange = async {
        let response = cluster
            .client
            .request(request)
            .await
            .map_err(|_| PartError::Unreachable)?;
        let status = response.status();
        let coding = Coding::parse(
            response
                .headers()
                .get(header::CONTENT_ENCODING)
                .map(HeaderValue::as_bytes),
        );
        // A part's trailers have no place in the merged JSON.
        let body = match read_limited(response.into_body().into(), MAX_PART_BYTES).await {
            Ok((body, _trailers)) => body,
            Err(ReadError::TooLarge(_)) => return Err(PartError::Invalid),
            Err(ReadError::Failed(_)) => return Err(PartError::Unreachable),
        };
        Ok((status, coding, body))
    };
    let outcome = tokio::time::timeout(timeout, exchange).await;
    let elapsed = started.elapsed();
    cluster.observe_attempt(elapsed.as_secs_f64());
    let mut attempt = UpstreamAttempt {
        cluster: cluster.clone(),
        endpoint,
        span_id,
        start: started,
        duration: elapsed,
        status: None,
        error: None,
    };
    let (status, coding, body) = match outcome {
        Err(_) => {
            cluster.count_timeout();
            guard.failure();
            attempt.error = Some("timeout");
            return fail(PartError::Timeout, Some(attempt));
        }
        Ok(Err(error)) => {
            guard.failure();
            attempt.error = Some(error.as_str());
            return fail(error, Some(attempt));
        }
        Ok(Ok(answer)) => answer,
    };
    attempt.status = Some(status.as_u16());
    if status.is_server_error() {
        guard.failure();
    } else {
        guard.success();
    }
    if !status.is_success() {
        return fail(PartError::Status, Some(attempt));
    }
    let plain = match coding {
        Some(Coding::Identity) => body,
        Some(coding) => match transform::decode(&body, coding, MAX_PART_BYTES) {
            Ok(plain) => Bytes::from(plain),
            Err(_) => return fail(PartError::Invalid, Some(attempt)),
        },
        None => return fail(PartError::Invalid, Some(attempt)),
    };
    match serde_json::from_slice::<&RawValue>(&plain) {
        Ok(raw) => {
            let json = Bytes::copy_from_slice(raw.get().as_bytes());
            PartResult {
                index,
                answer: Ok(json),
                attempt: Some(attempt),
            }
        }
        Err(_) => fail(PartError::Invalid, Some(attempt)),
    }
}
