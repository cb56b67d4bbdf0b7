//! The gateway's own HTTP/1.1 path (`dataplane/src/h1server.rs`) through
//! the real `ferrogate serve`: it answers as hyper's server does, serves
//! pipelined requests in order (large answers included), and hands a
//! connection to hyper at the first request with a body, which then keeps
//! serving it.

mod scripted;
mod support;

use scripted::metric;
use std::time::{Duration, Instant};
use support::{blocking_get, upstream, Behavior, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "shop.test";

/// Size of the large direct response (more than the 16 KB gathered
/// behind the head before a write).
const BIG: usize = 40_000;

/// The routes: an upstream under /api, a redirect, a direct response and
/// a large direct response.
fn routes(backend: &str) -> String {
    let big = "x".repeat(BIG);
    format!(
        r#"apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: shop, namespace: default}}
spec:
  hosts: [{HOST}]
  rules:
  - name: api
    matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backends: [{{url: "http://{backend}"}}]
  - name: moved
    matches: [{{path: {{type: Exact, value: /moved}}}}]
    filters:
      redirect: {{scheme: https, hostname: new.test, statusCode: 301}}
  - name: maintenance
    matches: [{{path: {{type: Exact, value: /status}}}}]
    filters:
      directResponse: {{status: 503, body: '{{"maintenance":true}}', contentType: application/json}}
  - name: big
    matches: [{{path: {{type: Exact, value: /big}}}}]
    filters:
      directResponse: {{status: 200, body: "{big}", contentType: text/plain}}
"#
    )
}

/// Connections the gateway handed from its own path to hyper so far.
fn handoffs(gw: &Gateway) -> f64 {
    metric(
        &blocking_get(gw.admin, "/metrics"),
        "ferrogate_http1_handoffs_total",
        "",
    )
}

/// Writes `bytes` on `stream` and reads until the gateway closes it.
async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    stream.write_all(bytes).await.expect("send the requests");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(error)) => panic!("read failed: {error}; so far: {out:?}"),
            Err(_) => panic!(
                "the gateway did not close the connection within 5 s; so far:\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// One response split off the front of `bytes`: its head (lowercase field
/// names) and its body (content-length or chunked; none after HEAD).
fn next_response(bytes: &mut Vec<u8>, head_request: bool) -> (String, Vec<u8>) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let rest = bytes.split_off(end + 4);
    let field = |name: &str| {
        head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let status: u16 = head[9..12].parse().expect("status code");
    let mut rest = rest;
    let body = if head_request || status == 204 || status == 304 {
        Vec::new()
    } else if let Some(length) = field("content-length") {
        let length: usize = length.parse().expect("content-length");
        let tail = rest.split_off(length);
        std::mem::replace(&mut rest, tail)
    } else {
        assert_eq!(
            field("transfer-encoding").as_deref(),
            Some("chunked"),
            "neither length nor chunked: {head}"
        );
        let mut body = Vec::new();
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk line");
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..line_end]).expect("chunk size"),
                16,
            )
            .expect("hex chunk size");
            let data = rest.split_off(line_end + 2);
            rest = data;
            if size == 0 {
                let end = rest
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("last CRLF");
                rest = rest.split_off(end + 2);
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = rest.split_off(size + 2);
        }
        body
    };
    *bytes = rest;
    (head, body)
}

/// The response's text with what differs between two answers to the same
/// request left out: the `date` field, the request id (in its field and
/// in bodies) and the `traceparent` the upstream echoes.
fn normalized(response: &[u8], head_request: bool) -> String {
    let mut bytes = response.to_vec();
    let (head, body) = next_response(&mut bytes, head_request);
    assert!(bytes.is_empty(), "bytes after the response: {bytes:?}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no x-request-id in\n{head}"))
        .to_owned();
    let head: Vec<&str> = head
        .lines()
        .filter(|line| !line.starts_with("date: "))
        .collect();
    let mut text =
        format!("{}\n\n{}", head.join("\n"), String::from_utf8_lossy(&body)).replace(&id, "<id>");
    let key = "\"traceparent\":\"";
    if let Some(at) = text.find(key) {
        let start = at + key.len();
        let end = text[start..].find('"').map_or(text.len(), |n| start + n);
        text.replace_range(start..end, "<trace>");
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_the_same_as_hypers() {
    let app = upstream("app", Behavior::default()).await;
    let gw = Gateway::start(&[("shop.yaml", &routes(&app.addr.to_string()))]);
    let cases: [(&str, &str, &str, &str); 7] = [
        ("GET", "/api/items?page=2", HOST, ""),
        ("HEAD", "/api/items", HOST, ""),
        // The test upstream answers gRPC-typed requests with a body of
        // unknown length: chunked.
        (
            "GET",
            "/api/stream",
            HOST,
            "content-type: application/grpc\r\n",
        ),
        ("GET", "/", "nowhere.test", ""),
        ("GET", "/moved", HOST, ""),
        ("GET", "/status", HOST, ""),
        ("GET", "/big", HOST, ""),
    ];
    for (method, target, host, extra) in cases {
        let head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}");
        // `content-length: 0` makes the request one with a body as far
        // as framing goes: hyper serves it.
        // The counter shows which path served each: the comparison is
        // between the two, not of one path with itself.
        let mut answers = Vec::new();
        for (hand_off, counted) in [("", 0.0), ("content-length: 0\r\n", 1.0)] {
            let before = handoffs(&gw);
            let mut stream = TcpStream::connect(gw.http).await.expect("connect");
            let request = format!("{head}{hand_off}connection: close\r\n\r\n");
            answers.push(exchange(&mut stream, request.as_bytes()).await);
            assert_eq!(
                handoffs(&gw) - before,
                counted,
                "{method} {target} with {hand_off:?}: hand-offs to hyper"
            );
        }
        let head_request = method == "HEAD";
        let (ours, hypers) = (
            normalized(&answers[0], head_request),
            normalized(&answers[1], head_request),
        );
        assert_eq!(
            ours, hypers,
            "{method} {target} (host {host}): the gateway's path answered differently from hyper"
        );
        assert!(
            ours.lines().any(|l| l.starts_with("x-request-id: ")),
            "{ours}"
        );
        if head_request {
            assert!(ours.starts_with("HTTP/1.1 200 OK\n"), "{ours}");
            assert!(ours.ends_with("\n\n"), "a HEAD answer with a body: {ours}");
            assert!(ours.contains("\ncontent-length: "), "{ours}");
        }
    }
    // Both paths went through the upstream for the three /api requests.
    assert_eq!(app.hits(), 6);
    let log = gw.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let app = upstream("app", Behavior::default()).await;
    let gw = Gateway::start(&[("shop.yaml", &routes(&app.addr.to_string()))]);
    let mut stream = TcpStream::connect(gw.http).await.expect("connect");
    let requests = format!(
        "GET /api/1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         GET /status HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         HEAD /api/2 HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         GET /api/3 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let mut bytes = exchange(&mut stream, requests.as_bytes()).await;
    let (head, body) = next_response(&mut bytes, false);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains(r#""uri":"/api/1""#));
    let (head, body) = next_response(&mut bytes, false);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(body, br#"{"maintenance":true}"#);
    let (head, body) = next_response(&mut bytes, false);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains(&format!("content-length: {BIG}")), "{head}");
    assert!(body.len() == BIG && body.iter().all(|&b| b == b'x'));
    let (head, body) = next_response(&mut bytes, true);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(body.is_empty());
    let (head, body) = next_response(&mut bytes, false);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains(r#""uri":"/api/3""#));
    assert!(bytes.is_empty(), "more than five answers: {bytes:?}");
    assert_eq!(app.hits(), 3);
    assert_eq!(handoffs(&gw), 0.0, "served on the gateway's own path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_hands_the_connection_to_hyper_which_keeps_serving_it() {
    let app = upstream("app", Behavior::default()).await;
    let gw = Gateway::start(&[("shop.yaml", &routes(&app.addr.to_string()))]);
    let mut stream = TcpStream::connect(gw.http).await.expect("connect");
    // The POST and the GET after it arrive in the same write as the first
    // GET: the bytes already read go to hyper with the connection.
    let requests = format!(
        "GET /api/before HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         POST /api/orders HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 11\r\n\r\n{{\"qty\": 35}}\
         GET /api/after HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    );
    stream
        .write_all(requests.as_bytes())
        .await
        .expect("send the requests");
    // Then one more request, later, on the same connection.
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while bytes.windows(8).filter(|w| w == b"HTTP/1.1").count() < 3 || !bytes.ends_with(b"}") {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut chunk))
            .await
            .expect("three answers within 5 s")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&chunk[..n]);
    }
    let late = format!("GET /api/later HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    bytes.extend(exchange(&mut stream, late.as_bytes()).await);
    for (path, body_len) in [
        ("/api/before", 0),
        ("/api/orders", 11),
        ("/api/after", 0),
        ("/api/later", 0),
    ] {
        let (head, body) = next_response(&mut bytes, false);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{path}: {head}");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON from upstream");
        assert_eq!(json["uri"], path);
        assert_eq!(json["body_len"], body_len, "{path}: {json}");
    }
    assert!(bytes.is_empty());
    assert_eq!(app.hits(), 4);
    assert_eq!(handoffs(&gw), 1.0, "one hand-off, at the POST");
}
