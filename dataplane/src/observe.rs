//! The first and last phases of every request: what is noted when it
//! arrives ([`Started`]) and what is recorded when its response head is
//! ready ([`finish`]): the duration histogram (by route, rule, status class
//! and device), the access log line (or, for a body that streams, a
//! counter around the body that writes the line when it ends), and the
//! trace spans.

use crate::accesslog::{rfc3339, Line};
use crate::body::{Counted, LocalBody};
use crate::proxy::{Body, RequestInfo};
use crate::table::Table;
use crate::telemetry::{SpanRecord, TraceContext};
use crate::Shared;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::Either;
use hyper::body::Body as _;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use std::time::{Duration, Instant, SystemTime};

/// What is known when a request arrives.
pub struct Started {
    at: Instant,
    /// What the access log line and the trace spans need; only noted when
    /// either is on.
    noted: Option<Box<Noted>>,
}

struct Noted {
    time: SystemTime,
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    bytes_in: Option<u64>,
}

impl Started {
    /// Notes the request's arrival and gives it a trace context (its
    /// `traceparent` field, if it has one, looked up by the caller).
    pub fn now<B: hyper::body::Body>(
        req: &Request<B>,
        traceparent: Option<&HeaderValue>,
        shared: &Shared,
        info: &mut RequestInfo,
    ) -> Started {
        info.trace = Some(TraceContext::from_traceparent(
            traceparent,
            req.headers(),
            shared.telemetry.sample_ratio(),
        ));
        let noted = (shared.access_log.enabled() || shared.telemetry.exporting()).then(|| {
            let body = req.body();
            let bytes_in = if body.is_end_stream() {
                Some(0)
            } else {
                body.size_hint().exact()
            };
            Box::new(Noted {
                time: SystemTime::now(),
                method: req.method().clone(),
                uri: req.uri().clone(),
                host: req.headers().get(header::HOST).cloned(),
                bytes_in,
            })
        });
        Started {
            at: Instant::now(),
            noted,
        }
    }
}

/// Records a finished request (its response head is ready). When the
/// request is logged and its body's size is not known yet, the body is
/// wrapped to count it, and the line is written when it ends.
pub fn finish(
    shared: &Shared,
    table: &Table,
    started: Started,
    info: &RequestInfo,
    request_id: &str,
    response: &mut Response<Body>,
) {
    let at = started.at;
    let elapsed = at.elapsed();
    let status = response.status();
    let device = info.device.unwrap_or(crds::DeviceClass::Desktop);
    let runtime = info.route_index.map(|index| table.route_runtime(index));
    match runtime {
        Some(runtime) => runtime
            .metrics
            .observe(status, device, elapsed.as_secs_f64()),
        None => table
            .unmatched
            .observe(status, device, elapsed.as_secs_f64()),
    }

    if let Some(consumer) = &info.consumer {
        shared.metrics.count_consumer(consumer, status);
    }

    let logged = shared.access_log.wants(status.as_u16());
    let traced = info
        .trace
        .as_ref()
        .filter(|t| t.sampled && shared.telemetry.exporting());
    if !logged && traced.is_none() {
        return;
    }
    let Some(started) = started.noted else {
        return;
    };
    let host = started.uri.host().map(str::to_owned).or_else(|| {
        started
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(|h| {
                h.rsplit_once(':')
                    .map_or(h, |(name, _)| name)
                    .to_ascii_lowercase()
            })
    });
    let (route, rule) = match runtime {
        Some(runtime) => (Some(&*runtime.route_label), Some(&*runtime.rule_label)),
        None => (None, None),
    };
    let last = info.attempts.last();
    let upstream_time: Option<Duration> = (!info.attempts.is_empty()).then(|| {
        info.attempts
            .iter()
            .map(|a| a.duration)
            .max()
            .unwrap_or_default()
    });

    if logged {
        let authority = last.and_then(|a| a.cluster.authority(a.endpoint));
        let bytes_out = if response.body().is_end_stream() {
            Some(0)
        } else {
            response.body().size_hint().exact().or_else(|| {
                response
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
            })
        };
        let line = Line {
            time: rfc3339(started.time),
            request_id,
            trace_id: info.trace.as_ref().map(TraceContext::trace_id_hex),
            route,
            rule,
            method: started.method.as_str(),
            host: host.as_deref(),
            path: started.uri.path(),
            status: status.as_u16(),
            error: info.error,
            bytes_in: started.bytes_in,
            bytes_out,
            duration_ms: millis(elapsed),
            upstream: authority,
            upstream_cluster: last.map(|a| a.cluster.name.as_str()),
            upstream_duration_ms: upstream_time.map(millis),
            attempts: u32::try_from(info.attempts.len()).unwrap_or(u32::MAX),
            device: info.device.map(crds::DeviceClass::as_str),
            consumer: info.consumer.as_deref(),
            cache: info.cache.map(crate::metrics::CacheResult::as_str),
            rate_limit: info.rate_limit.as_ref().map(|r| {
                if r.limited_by.is_some() {
                    "limited"
                } else if !r.shadow_exceeded.is_empty() {
                    "shadow_exceeded"
                } else if r.store_unavailable {
                    "allowed_store_unavailable"
                } else {
                    "allowed"
                }
            }),
            rate_limited_by: info
                .rate_limit
                .as_ref()
                .and_then(|r| r.limited_by.as_deref()),
        };
        if line.bytes_out.is_some() {
            shared.access_log.write(&line);
        } else if let Some(pending) = shared.access_log.pending(&line) {
            let body = std::mem::replace(
                response.body_mut(),
                Either::Right(LocalBody::full(Bytes::new())),
            );
            *response.body_mut() =
                Either::Right(LocalBody::Counted(Box::new(Counted::new(body, pending))));
        }
    }

    if let Some(trace) = traced {
        let end = started.time + elapsed;
        let mut attributes = vec![
            KeyValue::new("http.request.method", started.method.as_str().to_owned()),
            KeyValue::new("url.path", started.uri.path().to_owned()),
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
            KeyValue::new("ferrogate.request_id", request_id.to_owned()),
            KeyValue::new("ferrogate.device", device.as_str()),
        ];
        if let Some(host) = &host {
            attributes.push(KeyValue::new("server.address", host.clone()));
        }
        if let (Some(route), Some(rule)) = (route, rule) {
            attributes.push(KeyValue::new("ferrogate.route", route.to_owned()));
            attributes.push(KeyValue::new("ferrogate.rule", rule.to_owned()));
        }
        if let Some(cache) = info.cache {
            attributes.push(KeyValue::new("ferrogate.cache", cache.as_str()));
        }
        if let Some(consumer) = &info.consumer {
            attributes.push(KeyValue::new("ferrogate.consumer", consumer.to_string()));
        }
        let mut spans = Vec::with_capacity(1 + info.attempts.len());
        spans.push(SpanRecord {
            name: "ferrogate.request",
            kind: SpanKind::Server,
            span_id: trace.span_id,
            parent: trace.parent,
            start: started.time,
            end,
            attributes,
            error: info.error.filter(|_| status.is_server_error()),
        });
        for attempt in &info.attempts {
            let start = started.time + attempt.start.saturating_duration_since(at);
            let mut attributes = vec![KeyValue::new(
                "ferrogate.cluster",
                attempt.cluster.name.clone(),
            )];
            if let Some(authority) = attempt.cluster.authority(attempt.endpoint) {
                attributes.push(KeyValue::new("server.address", authority.to_owned()));
            }
            if let Some(code) = attempt.status {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
            }
            spans.push(SpanRecord {
                name: "ferrogate.upstream",
                kind: SpanKind::Client,
                span_id: attempt.span_id,
                parent: Some(trace.span_id),
                start,
                end: start + attempt.duration,
                attributes,
                error: attempt.error,
            });
        }
        shared.telemetry.record(trace, &spans);
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The request future must stay `Send` (hyper serves it on any worker).
    #[allow(dead_code)]
    fn handle_is_send(
        req: Request<crate::body::RequestBody>,
        conn: std::sync::Arc<crate::proxy::ConnInfo>,
        shared: std::sync::Arc<Shared>,
    ) {
        fn is_send<T: Send>(_: &T) {}
        let future = crate::proxy::handle(req, conn, shared);
        is_send(&future);
    }
}
