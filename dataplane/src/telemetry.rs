//! Distributed tracing: W3C Trace Context propagation and OTLP export.
//!
//! Every request gets a [`TraceContext`]: the trace of the client's valid
//! `traceparent` header, or a new one. The request is a server span with
//! its own id; every upstream attempt (and every aggregate part) is a
//! client span, and the upstream receives `traceparent` naming that
//! attempt's span as its parent, with the client's `tracestate` passed on
//! unchanged. Propagation always happens, with or without export.
//!
//! Export is on when `--otlp-endpoint` is set: finished spans go to the
//! OpenTelemetry SDK's batch processor and its OTLP exporter over
//! HTTP/protobuf (`POST {endpoint}/v1/traces`), every 500 ms
//! (`OTEL_BSP_SCHEDULE_DELAY`, in milliseconds, changes that) and once
//! more when the dataplane stops: [`Telemetry::shutdown`] runs after the
//! connections are drained, so spans of the last requests are not lost. Spans are recorded after
//! the fact from timestamps the request path takes anyway, so tracing
//! adds no span objects, locks or allocations to the request path unless
//! the request is sampled and export is on.
//!
//! Sampling: a client's sampled flag is honoured (parent-based); requests
//! without a trace context are sampled with `--trace-sample` (default 1.0
//! when export is on).
//!
//! The SDK's batch processor exports from its own thread, which has no
//! Tokio runtime; [`RuntimeClient`] runs the exporter's HTTP requests on
//! the dataplane's runtime with its hyper client.

use crate::ids::hex_into;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// The `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A request's place in a trace.
#[derive(Clone, Debug)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The client's span, when the client sent a trace context.
    pub parent: Option<[u8; 8]>,
    /// This request's server span.
    pub span_id: [u8; 8],
    /// Whether the trace is sampled.
    pub sampled: bool,
    /// The client's `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Continues the client's trace (a valid `traceparent`), or starts one
    /// sampled with probability `sample`.
    pub fn from_request(headers: &HeaderMap, sample: f64) -> TraceContext {
        TraceContext::from_traceparent(headers.get(TRACEPARENT), headers, sample)
    }

    /// [`TraceContext::from_request`] with the request's `traceparent`
    /// already looked up (`None` when it has none).
    pub fn from_traceparent(
        traceparent: Option<&HeaderValue>,
        headers: &HeaderMap,
        sample: f64,
    ) -> TraceContext {
        if let Some((trace_id, parent, flags)) =
            traceparent.and_then(|v| parse_traceparent(v.as_bytes()))
        {
            return TraceContext {
                trace_id,
                parent: Some(parent),
                span_id: new_span_id(),
                sampled: flags & 1 == 1,
                tracestate: headers.get(TRACESTATE).cloned(),
            };
        }
        // One draw: an array is drawn byte by byte, a generator step each.
        let mut trace_id = crate::ids::random::<u128>().to_be_bytes();
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        TraceContext {
            trace_id,
            parent: None,
            span_id: new_span_id(),
            sampled: sample >= 1.0 || (sample > 0.0 && crate::ids::random::<f64>() < sample),
            tracestate: None,
        }
    }

    /// The trace id in hex (for logs).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` value naming `span_id` as the parent:
    /// `00-{trace id}-{span id}-{flags}`, written in place (this runs for
    /// every upstream attempt).
    pub fn traceparent(&self, span_id: &[u8; 8]) -> [u8; crate::forwarded::TRACEPARENT_LEN] {
        let mut text = [0u8; crate::forwarded::TRACEPARENT_LEN];
        text[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut text[3..35]);
        text[35] = b'-';
        hex_into(span_id, &mut text[36..52]);
        text[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        text
    }

    /// Sets `traceparent` (naming `span_id` as the parent) on an outgoing
    /// request, and the client's `tracestate` when this continues the
    /// client's trace. A `tracestate` already in `headers` is the caller's
    /// to remove (it belongs to no trace of ours). Forwarded requests
    /// carry these in [`crate::forwarded::Added`] instead.
    pub fn inject(&self, headers: &mut HeaderMap, span_id: &[u8; 8]) {
        if let Ok(value) = HeaderValue::from_bytes(&self.traceparent(span_id)) {
            headers.insert(TRACEPARENT, value);
        }
        if let Some(state) = &self.tracestate {
            headers.insert(TRACESTATE, state.clone());
        }
    }
}

/// A new random, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    let mut id = crate::ids::random::<u64>().to_be_bytes();
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Parses a W3C `traceparent` (version 00, or a later version read as
/// 00): returns (trace id, parent span id, flags). All-zero ids, uppercase
/// hex and version `ff` are invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let text = value.trim_ascii();
    if text.len() < 55 {
        return None;
    }
    let version: [u8; 1] = unhex(&text[0..2])?;
    if version[0] == 0xff || (version[0] == 0 && text.len() != 55) {
        return None;
    }
    if text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    if text.len() > 55 && text[55] != b'-' {
        return None;
    }
    let trace_id: [u8; 16] = unhex(&text[3..35])?;
    let parent: [u8; 8] = unhex(&text[36..52])?;
    let flags: [u8; 1] = unhex(&text[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags[0]))
}

/// One finished span, described after the fact.
pub struct SpanRecord<'a> {
    /// Span name.
    pub name: &'static str,
    /// Server (the request) or client (an upstream attempt).
    pub kind: SpanKind,
    /// The span's id.
    pub span_id: [u8; 8],
    /// The parent span (the client's for the request span, the request
    /// span for attempts).
    pub parent: Option<[u8; 8]>,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Vec<KeyValue>,
    /// Whether the span failed.
    pub error: Option<&'a str>,
}

/// Export settings.
#[derive(Clone, Debug, Default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint (`http://collector:4318`); none disables export.
    pub otlp_endpoint: Option<String>,
    /// Probability of sampling a trace that the client did not start.
    pub sample: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// The exporter, when configured.
pub struct Telemetry {
    tracer: Option<(SdkTracerProvider, SdkTracer)>,
    /// Sampling probability for new traces.
    pub sample: f64,
}

impl Telemetry {
    /// No export.
    pub fn disabled() -> Telemetry {
        Telemetry {
            tracer: None,
            sample: 0.0,
        }
    }

    /// Builds the exporter. Must be called inside a Tokio runtime, whose
    /// handle the exporter's HTTP client uses.
    pub fn new(config: &TelemetryConfig) -> Result<Telemetry, String> {
        let Some(endpoint) = config.otlp_endpoint.as_deref() else {
            return Ok(Telemetry::disabled());
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("--otlp-endpoint {endpoint:?}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
            return Err(format!(
                "--otlp-endpoint {endpoint:?}: use an http:// or https:// URL"
            ));
        }
        let traces_url = if uri.path() == "/" || uri.path().is_empty() {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        } else {
            endpoint.to_owned()
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "the trace exporter needs a Tokio runtime".to_owned())?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url)
            .with_timeout(Duration::from_secs(10))
            .with_http_client(RuntimeClient::new(handle))
            .build()
            .map_err(|e| format!("--otlp-endpoint: {e}"))?;
        // `BatchConfigBuilder::default` reads the standard `OTEL_BSP_*`
        // variables; the export delay is 500 ms unless one sets it.
        let mut batch =
            opentelemetry_sdk::trace::BatchConfigBuilder::default().with_max_queue_size(8192);
        if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
            batch = batch.with_scheduled_delay(Duration::from_millis(500));
        }
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", config.service_name.clone())])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("ferrogate");
        Ok(Telemetry {
            tracer: Some((provider, tracer)),
            sample: config.sample.clamp(0.0, 1.0),
        })
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Sampling probability for traces the client did not start; 0 when
    /// nothing is exported.
    pub fn sample_ratio(&self) -> f64 {
        if self.tracer.is_some() {
            self.sample
        } else {
            0.0
        }
    }

    /// Hands finished spans of one sampled trace to the exporter.
    pub fn record(&self, trace: &TraceContext, spans: &[SpanRecord<'_>]) {
        let Some((_, tracer)) = &self.tracer else {
            return;
        };
        if !trace.sampled {
            return;
        }
        let trace_id = TraceId::from_bytes(trace.trace_id);
        for span in spans {
            let parent_cx = match span.parent {
                Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                    trace_id,
                    SpanId::from_bytes(parent),
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::default(),
                )),
                None => Context::new(),
            };
            let mut builder = tracer
                .span_builder(span.name)
                .with_kind(span.kind.clone())
                .with_trace_id(trace_id)
                .with_span_id(SpanId::from_bytes(span.span_id))
                .with_start_time(span.start)
                .with_attributes(span.attributes.clone());
            if let Some(error) = span.error {
                builder = builder.with_status(Status::error(error.to_owned()));
            }
            let mut started = builder.start_with_context(tracer, &parent_cx);
            opentelemetry::trace::Span::end_with_timestamp(&mut started, span.end);
        }
    }

    /// Flushes and stops the exporter. Blocks until the export is done
    /// (at most the exporter's 10 s timeout): call it off the runtime's
    /// threads, as the export itself runs on the runtime.
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.tracer {
            let _ = provider.shutdown();
        }
    }
}

/// An OTLP HTTP client that runs its requests on the dataplane's Tokio
/// runtime, whatever thread asks.
#[derive(Clone)]
pub struct RuntimeClient {
    handle: tokio::runtime::Handle,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeClient")
    }
}

impl RuntimeClient {
    fn new(handle: tokio::runtime::Handle) -> RuntimeClient {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        RuntimeClient { handle, client }
    }
}

impl HttpClient for RuntimeClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let client = self.client.clone();
        let task = self.handle.spawn(async move {
            use http_body_util::BodyExt;
            let request = request.map(http_body_util::Full::new);
            let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
                .await
                .map_err(|_| HttpError::from("OTLP export timed out"))?
                .map_err(|e| HttpError::from(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| HttpError::from(e.to_string()))?
                .to_bytes();
            if !parts.status.is_success() {
                return Err(HttpError::from(format!(
                    "OTLP collector answered {}",
                    parts.status
                )));
            }
            Ok(http::Response::from_parts(parts, body))
        });
        Box::pin(async move { task.await.map_err(|e| HttpError::from(e.to_string()))? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_traceparents() {
        let (trace, parent, flags) = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent), "00f067aa0ba902b7");
        assert_eq!(flags, 1);
        // A future version may append fields.
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(future.as_bytes()).is_some());
    }

    #[test]
    fn refuses_invalid_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn continues_or_starts_traces_and_injects() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let trace = TraceContext::from_request(&headers, 0.0);
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(trace.sampled);
        let mut out = HeaderMap::new();
        let span = new_span_id();
        trace.inject(&mut out, &span);
        let value = out[TRACEPARENT].to_str().unwrap();
        assert_eq!(
            value,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", hex(&span))
        );
        assert_eq!(out[TRACESTATE], "vendor=x");

        let fresh = TraceContext::from_request(&HeaderMap::new(), 0.0);
        assert!(!fresh.sampled);
        assert!(fresh.parent.is_none());
        let mut out = HeaderMap::new();
        fresh.inject(&mut out, &fresh.span_id);
        let (trace_id, parent, flags) = parse_traceparent(out[TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(trace_id, fresh.trace_id);
        assert_eq!(parent, fresh.span_id);
        assert_eq!(flags, 0);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = parse_traceparent(&bytes);
        }
    }
}
