//! End to end: Prometheus metrics after known traffic, the JSON access log,
//! W3C trace context to upstreams, and OTLP export to a collector.

mod scripted;
mod support;

use scripted::{metric, rule_yaml, scripted, RawClient, Reply};
use std::time::{Duration, Instant};
use support::{
    blocking_get, eventually, make_cert, tls_certificate_yaml, tls_secret_yaml, Gateway,
};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

/// Echoes the request headers it got, as JSON.
async fn echo() -> scripted::Scripted {
    scripted(|seen, _| {
        let headers: serde_json::Map<String, serde_json::Value> = seen
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let reply = Reply::json(serde_json::json!({ "headers": headers }).to_string());
        match seen.uri.split('?').next().unwrap_or("") {
            "/cached" => reply.header("cache-control", "max-age=60"),
            "/fail" => reply.status(503),
            "/slow" => reply.delay(Duration::from_secs(2)),
            "/chunked" => reply.chunked(),
            _ => reply,
        }
    })
    .await
}

fn obs_yaml(url: &str) -> String {
    rule_yaml(
        "obs",
        "obs.test",
        "/",
        url,
        "    timeouts: {request: 500ms}\n    filters:\n      cache: {keyDevice: true}\n",
    )
}

/// Known traffic, then the expected series with the expected values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    let upstream = echo().await;
    let (_, chain, key) = make_cert(&["obs.test"]);
    let gateway = Gateway::start(&[
        ("route.yaml", &obs_yaml(&upstream.url())),
        ("secret.yaml", &tls_secret_yaml("obs-tls", &chain, &key)),
        (
            "cert.yaml",
            &tls_certificate_yaml("obs", "obs.test", "obs-tls"),
        ),
    ]);
    let client = RawClient::new(gateway.http);
    // The route is plain-HTTP only when allowed; a certificate covers it,
    // so plain requests are redirected (308). Use the redirect as traffic
    // too: it is counted under the route.
    let redirect = client
        .get("obs.test", "/a", &[("user-agent", DESKTOP)])
        .await;
    assert_eq!(redirect.status, 308);

    let yaml = obs_yaml(&upstream.url()).replace(
        "  hosts: [obs.test]",
        "  hosts: [obs.test]\n  allowPlainHttp: true",
    );
    let version = gateway.version();
    gateway.write("route.yaml", &yaml);
    gateway.wait_for_version_above(version);

    for _ in 0..3 {
        assert_eq!(
            client
                .get("obs.test", "/a", &[("user-agent", IPHONE)])
                .await
                .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            client
                .get("obs.test", "/cached", &[("user-agent", DESKTOP)])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        client
            .get("obs.test", "/fail", &[("user-agent", DESKTOP)])
            .await
            .status,
        503
    );
    assert_eq!(
        client
            .get("obs.test", "/slow", &[("user-agent", DESKTOP)])
            .await
            .status,
        504
    );
    assert_eq!(client.get("nowhere.test", "/", &[]).await.status, 404);

    let text = blocking_get(gateway.admin, "/metrics");
    let duration = |class: &str, device: &str| {
        metric(
            &text,
            "ferrogate_request_duration_seconds_count",
            &format!(
                "route=\"default/obs\",rule=\"api\",status_class=\"{class}\",device=\"{device}\""
            ),
        )
    };
    assert_eq!(duration("2xx", "mobile"), 3.0, "{text}");
    assert_eq!(duration("2xx", "desktop"), 2.0, "{text}");
    assert_eq!(duration("3xx", "desktop"), 1.0, "{text}");
    assert_eq!(duration("5xx", "desktop"), 2.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "ferrogate_request_duration_seconds_count",
            "route=\"none\",rule=\"none\",status_class=\"4xx\",device=\"desktop\""
        ),
        1.0,
        "{text}"
    );
    assert!(
        !text.contains("device=\"tablet\""),
        "series appear on first use only"
    );
    let requests = |class: &str| {
        metric(
            &text,
            "ferrogate_requests_total",
            &format!("route=\"default/obs\",rule=\"api\",status_class=\"{class}\""),
        )
    };
    assert_eq!(requests("2xx"), 5.0);
    assert_eq!(requests("5xx"), 2.0);
    let cache = |result: &str| {
        metric(
            &text,
            "ferrogate_cache_lookups_total",
            &format!("route=\"default/obs\",rule=\"api\",result=\"{result}\""),
        )
    };
    assert_eq!(cache("hit"), 1.0, "{text}");
    // /a three times (no freshness: not stored), /cached once, /fail (the
    // timed-out /slow never got an answer to look at).
    assert_eq!(cache("miss"), 5.0, "{text}");
    assert!(metric(&text, "ferrogate_cache_bytes", "") > 0.0);
    assert_eq!(metric(&text, "ferrogate_cache_entries", ""), 1.0);
    let cluster = text
        .lines()
        .find(|l| l.starts_with("ferrogate_upstream_timeouts_total{"))
        .expect("timeouts series");
    assert!(cluster.ends_with(" 1"), "{cluster}");
    let attempts: f64 = text
        .lines()
        .filter(|l| l.starts_with("ferrogate_upstream_attempts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(attempts, 6.0, "3 + 1 + 1 + 1 upstream attempts");
    assert!(metric(&text, "ferrogate_snapshot_apply_seconds_count", "") >= 2.0);
    let expiry = metric(
        &text,
        "ferrogate_certificate_expiry_timestamp_seconds",
        "certificate=\"default/obs\"",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(expiry > now, "{expiry} vs {now}\n{text}");
}

fn access_lines(gateway: &Gateway) -> Vec<serde_json::Value> {
    gateway
        .stdout_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// One JSON line per request with the documented fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_describe_each_request() {
    let upstream = echo().await;
    let yaml = obs_yaml(&upstream.url());
    let gateway = Gateway::start(&[("route.yaml", &yaml)]);
    let client = RawClient::new(gateway.http);
    client
        .get(
            "obs.test",
            "/cached?q=1",
            &[("user-agent", IPHONE), ("x-request-id", "req-1")],
        )
        .await;
    client
        .get(
            "obs.test",
            "/cached?q=1",
            &[("user-agent", IPHONE), ("x-request-id", "req-2")],
        )
        .await;
    client
        .get("obs.test", "/fail", &[("x-request-id", "req-3")])
        .await;
    client
        .get("other.test", "/", &[("x-request-id", "req-4")])
        .await;

    let deadline = Instant::now() + Duration::from_secs(5);
    while access_lines(&gateway).len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = access_lines(&gateway);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["route"], "default/obs");
    assert_eq!(first["rule"], "api");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "obs.test");
    assert_eq!(first["path"], "/cached");
    assert_eq!(first["status"], 200);
    assert_eq!(first["device"], "mobile");
    assert_eq!(first["cache"], "miss");
    assert_eq!(first["bytes_in"], 0);
    assert!(first["bytes_out"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(first["upstream"], upstream.addr.to_string());
    assert!(first["upstream_cluster"].is_string());
    assert!(first["upstream_duration_ms"].as_f64().is_some());
    assert!(first["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["trace_id"].as_str().map(str::len), Some(32));
    assert!(first["time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.len() == 24));
    for key in ["consumer", "rate_limit"] {
        assert!(first.get(key).is_some(), "field {key} is present");
    }
    assert_eq!(lines[1]["cache"], "hit");
    assert_eq!(lines[1]["upstream"], serde_json::Value::Null);
    assert_eq!(lines[2]["status"], 503);
    assert_eq!(lines[3]["status"], 404);
    assert_eq!(lines[3]["error"], "no_route");
    assert_eq!(lines[3]["route"], serde_json::Value::Null);
}

/// A body that streams (no `Content-Length`) is counted as it is sent:
/// its line is written when it ends, with the bytes sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_counts_streamed_bodies() {
    let upstream = echo().await;
    let gateway = Gateway::start(&[("route.yaml", &obs_yaml(&upstream.url()))]);
    let client = RawClient::new(gateway.http);
    let answer = client
        .get("obs.test", "/chunked", &[("x-request-id", "streamed")])
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-length"), None, "the body streamed");
    assert!(!answer.body.is_empty());
    eventually(Duration::from_secs(5), "the access log line", async || {
        !gateway.stdout_lines().is_empty()
    })
    .await;
    let lines = access_lines(&gateway);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["request_id"], "streamed");
    assert_eq!(lines[0]["bytes_out"], answer.body.len() as u64, "{lines:?}");
}

/// Sampling 0 keeps only 5xx lines; `--access-log off` keeps none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_sampling_and_off() {
    let upstream = echo().await;
    let yaml = obs_yaml(&upstream.url());
    let sampled = Gateway::start_with_args(&[("route.yaml", &yaml)], &["--access-log-sample", "0"]);
    let off = Gateway::start_with_args(&[("route.yaml", &yaml)], &["--access-log", "off"]);
    for gateway in [&sampled, &off] {
        let client = RawClient::new(gateway.http);
        for _ in 0..5 {
            client.get("obs.test", "/a", &[]).await;
        }
        client.get("obs.test", "/fail", &[]).await;
    }
    eventually(Duration::from_secs(5), "the 5xx line", async || {
        !sampled.stdout_lines().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = access_lines(&sampled);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 503);
    assert!(off.stdout_lines().is_empty());
}

/// The client's trace continues to the upstream with a new parent span;
/// without one, a new trace starts; tracestate passes unchanged with the
/// client's trace and is dropped with a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_the_upstream() {
    let upstream = echo().await;
    let gateway = Gateway::start(&[("route.yaml", &obs_yaml(&upstream.url()))]);
    let client = RawClient::new(gateway.http);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = client
        .get(
            "obs.test",
            "/a",
            &[("traceparent", parent), ("tracestate", "vendor=1")],
        )
        .await;
    let headers = &answer.json()["headers"];
    let sent = headers["traceparent"]
        .as_str()
        .expect("traceparent upstream");
    assert_eq!(&sent[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-");
    assert_ne!(&sent[36..52], "00f067aa0ba902b7", "the gateway's own span");
    assert!(sent.ends_with("-01"));
    assert_eq!(headers["tracestate"], "vendor=1");

    let answer = client.get("obs.test", "/a", &[]).await;
    let sent = answer.json()["headers"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_ne!(parts[1], "0".repeat(32));
    assert_eq!(parts[2].len(), 16);

    // An invalid traceparent is replaced, not passed on, and the
    // tracestate of that unknown trace is dropped.
    let answer = client
        .get(
            "obs.test",
            "/a",
            &[("traceparent", "garbage"), ("tracestate", "vendor=2")],
        )
        .await;
    let headers = &answer.json()["headers"];
    let sent = headers["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_owned();
    assert_eq!(sent.len(), 55);
    assert!(headers.get("tracestate").is_none(), "{headers}");
}

/// With an OTLP endpoint, spans of sampled requests reach the collector
/// (OTLP/HTTP protobuf): the request span and the upstream attempt span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp() {
    let upstream = echo().await;
    let collector =
        scripted(|_, _| Reply::json("{}").header("content-type", "application/x-protobuf")).await;
    let endpoint = collector.url();
    let gateway = Gateway::start_with_args(
        &[("route.yaml", &obs_yaml(&upstream.url()))],
        &["--otlp-endpoint", &endpoint],
    );
    let client = RawClient::new(gateway.http);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = client
        .get("obs.test", "/a", &[("traceparent", parent)])
        .await;
    assert_eq!(answer.status, 200);
    let sent = answer.json()["headers"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_owned();
    let attempt_span = &sent[36..52];

    let trace_id: Vec<u8> = (0..16)
        .map(|i| {
            u8::from_str_radix(&"4bf92f3577b34da6a3ce929d0e0e4736"[i * 2..i * 2 + 2], 16)
                .expect("hex")
        })
        .collect();
    let span_id: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&attempt_span[i * 2..i * 2 + 2], 16).expect("hex"))
        .collect();
    eventually(Duration::from_secs(10), "an OTLP export", async || {
        collector
            .seen()
            .iter()
            .any(|s| s.body.windows(16).any(|w| w == trace_id.as_slice()))
    })
    .await;
    let exports = collector.seen();
    let export = exports
        .iter()
        .find(|s| s.body.windows(16).any(|w| w == trace_id.as_slice()))
        .expect("export");
    assert_eq!(export.method, "POST");
    assert_eq!(export.uri, "/v1/traces");
    assert_eq!(
        export
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    let body = &export.body;
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"ferrogate.request"), "request span");
    assert!(has(b"ferrogate.upstream"), "attempt span");
    assert!(
        has(&span_id),
        "the attempt span is the one the upstream saw as parent"
    );
    assert!(has(b"default/obs"), "route attribute");
}

/// Spans still queued for export when the gateway is told to stop
/// (SIGTERM) reach the collector before it exits. The export delay is a
/// minute here, so only the flush at shutdown can send them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_spans_are_flushed_at_shutdown() {
    let upstream = echo().await;
    let collector =
        scripted(|_, _| Reply::json("{}").header("content-type", "application/x-protobuf")).await;
    let endpoint = collector.url();
    let mut gateway = Gateway::start_with_env(
        &[("route.yaml", &obs_yaml(&upstream.url()))],
        // One thread, as in production benchmarks: the export then needs
        // the runtime's only thread while the process stops.
        &["--otlp-endpoint", &endpoint, "--threads", "1"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "60000")],
    );
    let client = RawClient::new(gateway.http);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = client
        .get("obs.test", "/a", &[("traceparent", parent)])
        .await;
    assert_eq!(answer.status, 200);
    let trace_id: Vec<u8> = (0..16)
        .map(|i| {
            u8::from_str_radix(&"0af7651916cd43dd8448eb211c80319c"[i * 2..i * 2 + 2], 16)
                .expect("hex")
        })
        .collect();
    let exported = || {
        collector
            .seen()
            .iter()
            .any(|s| s.body.windows(16).any(|w| w == trace_id.as_slice()))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!exported(), "nothing is exported before the delay");

    gateway.terminate();
    let status = tokio::task::block_in_place(|| gateway.wait_exit(Duration::from_secs(20)));
    assert!(status.is_some(), "the gateway exits after SIGTERM");
    assert!(exported(), "the queued spans were flushed at shutdown");
}
