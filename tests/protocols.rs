//! Protocols through the real `ferrogate serve`: a WebSocket upgrade that
//! carries frames both ways, gRPC-style HTTP/2 with trailers to an h2c
//! backend, HTTP/2 negotiated by ALPN over TLS (curl), and h2load as an
//! h2c client.
//!
//! Needs curl and h2load (`scripts/test-deps.sh` installs them); without
//! them the tests fail saying so.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::{Duration, Instant};
use support::{
    curl, h2load, make_cert, require_tool, route_yaml, tls_certificate_yaml, tls_secret_yaml,
    upstream, Behavior, Client, Gateway,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "shop.test";

/// Bounds every read in these tests: a hung gateway fails, never hangs.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One client-to-server WebSocket frame (FIN set, masked as RFC 6455
/// requires of clients).
fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads an HTTP/1 response head (up to the blank line); returns it and any
/// bytes that came after it.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("response head within 5 s")
            .expect("read response head");
        assert!(n > 0, "connection closed before the response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_carries_frames_both_ways() {
    let echo = upstream("ws", Behavior::default()).await;
    let route = route_yaml("chat", HOST, "/ws", &format!("http://{}", echo.addr));
    let gw = Gateway::start(&[("chat.yaml", &route)]);

    let mut stream = TcpStream::connect(gw.http)
        .await
        .expect("connect to the gateway");
    stream
        .write_all(
            format!(
                "GET /ws/room HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send the upgrade request");
    let (head, early) = read_head(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "expected 101 Switching Protocols, got:\n{head}\nlog:\n{}",
        gw.log()
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nupgrade: websocket"),
        "101 without Upgrade: websocket:\n{head}"
    );
    assert!(
        lower.contains("\r\nconnection: upgrade"),
        "101 without Connection: upgrade:\n{head}"
    );
    assert!(
        early.is_empty(),
        "unexpected bytes after the 101: {early:?}"
    );

    // A small text frame and a 60 KB binary frame (extended length), each
    // echoed byte for byte by the upstream through the tunnel.
    let text = masked_frame(0x1, b"hello through ferrogate", [1, 2, 3, 4]);
    let big_payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let binary = masked_frame(0x2, &big_payload, [9, 8, 7, 6]);
    for frame in [&text, &binary] {
        stream.write_all(frame).await.expect("send a frame");
        let mut back = vec![0u8; frame.len()];
        tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut back))
            .await
            .expect("echo within 5 s")
            .expect("read the echo");
        assert!(back == *frame, "the echoed frame differs from the one sent");
    }

    // Closing our side closes the tunnel: the upstream's EOF comes back.
    let close = masked_frame(0x8, &1000u16.to_be_bytes(), [5, 5, 5, 5]);
    stream.write_all(&close).await.expect("send close frame");
    stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes within 5 s after the client closes")
        .expect("read to the end");
    assert_eq!(
        rest, close,
        "after close, only the echoed close frame comes back"
    );
}

/// The route with a backend spoken to in HTTP/2 (h2c).
fn h2_route(backend: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: grpc, namespace: default}}
spec:
  hosts: [{HOST}]
  rules:
  - name: echo
    matches: [{{path: {{type: PathPrefix, value: /echo.Echo}}}}]
    backends: [{{url: \"{backend}\", protocol: HTTP2}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_passes_data_and_trailers() {
    let backend = upstream("grpc-backend", Behavior::default()).await;
    let gw = Gateway::start(&[("grpc.yaml", &h2_route(&format!("http://{}", backend.addr)))]);

    // Prior-knowledge HTTP/2 to the plain listener, like a gRPC client.
    let stream = TcpStream::connect(gw.http)
        .await
        .expect("connect to the gateway");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake with the gateway");
    tokio::spawn(conn);

    // Ten calls multiplexed on the one connection.
    let mut calls = Vec::new();
    for i in 0..10u8 {
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            // A gRPC message: uncompressed flag, length, payload.
            let payload = [b'p', b'i', b'n', b'g', b'0' + i];
            let mut message = vec![0u8];
            message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            message.extend_from_slice(&payload);
            let request = http::Request::post(format!("http://{HOST}/echo.Echo/Say"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from(message)))
                .expect("request");
            let response = tokio::time::timeout(IO_TIMEOUT, sender.send_request(request))
                .await
                .expect("response within 5 s")
                .expect("HTTP/2 response");
            let status = response.status();
            let content_type = response.headers().get("content-type").cloned();
            let request_id = response.headers().get("x-request-id").cloned();
            let collected = tokio::time::timeout(IO_TIMEOUT, response.into_body().collect())
                .await
                .expect("body within 5 s")
                .expect("read the body and trailers");
            let trailers = collected.trailers().cloned();
            (
                status,
                content_type,
                request_id,
                collected.to_bytes(),
                trailers,
            )
        }));
    }
    for call in calls {
        let (status, content_type, request_id, data, trailers) = call.await.expect("call task");
        assert_eq!(status, 200, "body: {data:?}; log:\n{}", gw.log());
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/grpc")
        );
        let trailers =
            trailers.unwrap_or_else(|| panic!("no trailers reached the client; data {data:?}"));
        assert_eq!(
            trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
            Some("0"),
            "trailers: {trailers:?}"
        );
        assert_eq!(
            trailers.get("x-upstream").and_then(|v| v.to_str().ok()),
            Some("grpc-backend")
        );
        let seen: serde_json::Value = serde_json::from_slice(&data).expect("upstream JSON");
        assert_eq!(
            seen["version"], "HTTP/2.0",
            "the backend must be spoken to in HTTP/2: {seen}"
        );
        assert_eq!(seen["method"], "POST");
        // Heads that go through hyper's client get the forwarding fields
        // inserted (`dataplane::forwarded`), each once; the answer carries
        // the same request id.
        let headers = &seen["headers"];
        assert_eq!(seen["repeated"], serde_json::json!([]), "{seen}");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{seen}");
        assert_eq!(headers["x-forwarded-proto"], "http", "{seen}");
        assert_eq!(headers["x-forwarded-host"], HOST, "{seen}");
        let id = headers["x-request-id"].as_str().expect("x-request-id sent");
        assert_eq!(
            request_id.as_ref().and_then(|v| v.to_str().ok()),
            Some(id),
            "{seen}"
        );
        assert_eq!(
            headers["traceparent"].as_str().map(str::len),
            Some(55),
            "{seen}"
        );
        assert_eq!(
            seen["body_len"], 10,
            "the request body reaches the backend whole: {seen}"
        );
        assert!(
            seen["uri"]
                .as_str()
                .is_some_and(|u| u.ends_with("/echo.Echo/Say")),
            "{seen}"
        );
    }
    assert_eq!(backend.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_negotiates_http2_by_alpn() {
    require_tool("curl");
    let backend = upstream("shop", Behavior::default()).await;
    let (ca, chain, key) = make_cert(&[HOST]);
    let gw = Gateway::start(&[
        (
            "shop.yaml",
            &route_yaml("shop", HOST, "/api", &format!("http://{}", backend.addr)),
        ),
        ("secret.yaml", &tls_secret_yaml("shop-tls", &chain, &key)),
        ("cert.yaml", &tls_certificate_yaml("shop", HOST, "shop-tls")),
    ]);
    let files = tempfile::tempdir().expect("temp dir");
    let ca_path = files.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).expect("write CA");
    let ca_path = ca_path.to_str().expect("utf-8 path");
    let port = gw.https.port();
    let resolve = format!("{HOST}:{port}:127.0.0.1");
    let url = format!("https://{HOST}:{port}/api/items");

    for (flag, want) in [("--http2", "2 200"), ("--http1.1", "1.1 200")] {
        let (code, out) = curl(&[
            flag,
            "--resolve",
            &resolve,
            "--cacert",
            ca_path,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &url,
        ]);
        assert_eq!(
            code,
            0,
            "curl {flag} {url} failed: {out}\nlog:\n{}",
            gw.log()
        );
        assert_eq!(out.trim(), want, "curl {flag} {url}");
    }
    // The certificate covers the host, so plain HTTP is redirected to it.
    let answer = Client::new(gw.http).get(HOST, "/api/items?x=1").await;
    assert_eq!(answer.status, 308, "{answer:?}");
    assert_eq!(
        answer.headers.get("location").map(String::as_str),
        Some(format!("https://{HOST}:{port}/api/items?x=1").as_str())
    );
    assert_eq!(
        backend.hits(),
        2,
        "only the two HTTPS requests reach the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_h2c_gets_every_response() {
    let backend = upstream("shop", Behavior::default()).await;
    let gw = Gateway::start(&[(
        "shop.yaml",
        &route_yaml("shop", HOST, "/api", &format!("http://{}", backend.addr)),
    )]);
    let port = gw.http.port();
    let started = Instant::now();
    let (report, output) = tokio::task::spawn_blocking(move || {
        h2load(
            &[
                "-n",
                "2000",
                "-c",
                "10",
                "-m",
                "10",
                &format!("--connect-to=127.0.0.1:{port}"),
                &format!("http://{HOST}:{port}/api"),
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .expect("h2load task");
    println!("h2load h2c: 2000 requests in {:?}", started.elapsed());
    assert!(
        report.all_ok(),
        "h2load over h2c: {report:?}\n{output}\nlog:\n{}",
        gw.log()
    );
    assert_eq!(report.total, 2000);
    assert_eq!(
        backend.hits(),
        2000,
        "every request reaches the backend once"
    );
}

#[test]
fn h2load_reports_are_read_whole() {
    let ok = "finished in 369.74ms, 5409.15 req/s, 2.09MB/s\n\
              requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout\n\
              status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx\n";
    let report = support::H2loadReport::parse(ok).expect("report");
    assert!(report.all_ok(), "{report:?}");
    assert_eq!(report.total, 2000);
    let bad = "requests: 2000 total, 2000 started, 1990 done, 1990 succeeded, 10 failed, 10 errored, 0 timeout\n\
               status codes: 1980 2xx, 0 3xx, 0 4xx, 10 5xx\n";
    let report = support::H2loadReport::parse(bad).expect("report");
    assert!(!report.all_ok());
    assert_eq!(
        (report.failed, report.errored, report.status_2xx),
        (10, 10, 1980)
    );
    assert!(support::H2loadReport::parse("connect: Connection refused").is_none());
}

/// A request whose body is not forwarded (here: no route, 404) still gets
/// its answer: over HTTP/2 the gateway reads the rest of the body instead of
/// resetting the stream (which curl reports as error 92, "stream was not
/// closed cleanly"); over HTTP/1.1 both answers arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unforwarded_request_bodies_do_not_break_the_answer() {
    require_tool("curl");
    let backend = upstream("shop", Behavior::default()).await;
    let gw = Gateway::start(&[(
        "shop.yaml",
        &route_yaml("shop", HOST, "/api", &format!("http://{}", backend.addr)),
    )]);
    let files = tempfile::tempdir().expect("temp dir");
    let body = files.path().join("body.bin");
    std::fs::write(&body, vec![b'x'; 256 * 1024]).expect("write body");
    let data = format!("@{}", body.display());
    let port = gw.http.port();
    let unrouted = format!("http://127.0.0.1:{port}/elsewhere");
    let host = format!("Host: {HOST}");
    let results = tokio::task::spawn_blocking(move || {
        let h2: Vec<(i32, String)> = (0..20)
            .map(|_| {
                curl(&[
                    "--http2-prior-knowledge",
                    "-H",
                    &host,
                    "--data-binary",
                    &data,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &unrouted,
                ])
            })
            .collect();
        let h1 = curl(&[
            "--http1.1",
            "-H",
            &host,
            "--data-binary",
            &data,
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            &unrouted,
            &unrouted,
        ]);
        (h2, h1)
    })
    .await
    .expect("curl runs");
    let (h2, h1) = results;
    for (i, (code, out)) in h2.iter().enumerate() {
        assert_eq!(
            (*code, out.trim()),
            (0, "404"),
            "HTTP/2 request {i}: the 404 must arrive whole"
        );
    }
    // (Whether curl then reuses the connection is curl's choice: it closes
    // one whose answer came before its upload finished.)
    assert_eq!(h1.0, 0, "{}", h1.1);
    assert_eq!(
        h1.1.lines()
            .map(|line| line.split(' ').next().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["404", "404"],
        "HTTP/1.1: {}",
        h1.1
    );
    assert_eq!(backend.hits(), 0);
}
