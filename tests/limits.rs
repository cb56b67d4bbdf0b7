//! The gateway's safe defaults and error answers, through the real
//! `ferrogate serve`: oversized request heads get 431, a client that never
//! finishes its request head is disconnected, unknown hosts, dead backends
//! and slow backends get 404 / 502 / 504 with a JSON body carrying the
//! request id, and SIGTERM lets a request in flight finish before the
//! process exits 0.

mod support;

use std::time::{Duration, Instant};
use support::{
    make_cert, route_yaml, tls_certificate_yaml, tls_connect, tls_secret_yaml, upstream, Answer,
    Behavior, Client, Gateway,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "shop.test";

/// Sends `head` on a new connection and reads until the gateway closes it
/// (or 5 s pass). Write errors are ignored: the gateway may refuse the
/// request and close before reading all of it.
async fn raw_exchange(addr: std::net::SocketAddr, head: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    let _ = stream.write_all(head).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
        // One response is all we want; the gateway may keep the connection.
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let body_len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + body_len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// Checks an error answer: the status, a JSON body naming the request id
/// (the same as the `x-request-id` header), and no internal details.
fn assert_error_answer(answer: &Answer, status: u16, secret: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    let body = answer.json();
    let id = body["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the {status} body has no request_id: {}", answer.body));
    assert!(!id.is_empty(), "empty request_id: {}", answer.body);
    assert_eq!(
        answer.headers.get("x-request-id").map(String::as_str),
        Some(id),
        "the body's request_id is not the x-request-id header"
    );
    assert!(
        answer
            .headers
            .get("content-type")
            .is_some_and(|v| v.contains("json")),
        "the {status} body is not labelled JSON: {answer:?}"
    );
    assert!(
        !answer.body.contains(secret),
        "the {status} body leaks an internal detail ({secret}): {}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let backend = upstream("shop", Behavior::default()).await;
    let gw = Gateway::start(&[(
        "shop.yaml",
        &route_yaml("shop", HOST, "/api", &format!("http://{}", backend.addr)),
    )]);

    let mut many = format!("GET /api HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-Header-{i}: value\r\n"));
    }
    many.push_str("\r\n");
    let response = raw_exchange(gw.http, many.as_bytes()).await;
    assert!(
        status_line(&response).starts_with("HTTP/1.1 431"),
        "200 headers: expected 431, got {:?}",
        status_line(&response)
    );

    let big = format!(
        "GET /api HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let response = raw_exchange(gw.http, big.as_bytes()).await;
    assert!(
        status_line(&response).starts_with("HTTP/1.1 431"),
        "a 100 KiB header: expected 431, got {:?}",
        status_line(&response)
    );
    assert_eq!(backend.hits(), 0, "a refused request reached the backend");

    // Ordinary requests are unaffected.
    let ok = raw_exchange(
        gw.http,
        format!("GET /api HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(status_line(&ok).starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_is_cut_off_after_the_header_read_timeout() {
    let backend = upstream("shop", Behavior::default()).await;
    let gw = Gateway::start_with_args(
        &[(
            "shop.yaml",
            &route_yaml("shop", HOST, "/api", &format!("http://{}", backend.addr)),
        )],
        &["--header-read-timeout", "1s"],
    );
    let mut stream = TcpStream::connect(gw.http)
        .await
        .expect("connect to the gateway");
    let sent = Instant::now();
    stream
        .write_all(format!("GET /api HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ").as_bytes())
        .await
        .expect("send half a request head");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let waited = sent.elapsed();
    assert!(
        read.is_ok(),
        "the connection was still open 10 s after half a request head (timeout 1 s)"
    );
    println!("half-sent request head: disconnected after {waited:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "disconnected after {waited:?}, expected about 1 s"
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || status_line(&text).starts_with("HTTP/1.1 408"),
        "unexpected answer to a half-sent head: {text:?}"
    );
    assert_eq!(backend.hits(), 0);
    assert_eq!(Client::new(gw.http).get(HOST, "/api").await.status, 200);
}

/// How long until the peer closes `stream` (EOF or reset), or an error
/// saying what came instead / that it stayed open for 10 s.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    mut stream: S,
    since: Instant,
) -> Result<Duration, String> {
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await {
        Err(_) => Err("still open after 10 s".to_owned()),
        Ok(_)
            if !out.is_empty() && !status_line(&String::from_utf8_lossy(&out)).contains(" 408") =>
        {
            Err(format!("answered {:?}", String::from_utf8_lossy(&out)))
        }
        Ok(_) => Ok(since.elapsed()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_after_the_header_read_timeout() {
    let backend = upstream("shop", Behavior::default()).await;
    let (ca, chain, key) = make_cert(&[HOST]);
    let gw = Gateway::start_with_args(
        &[
            (
                "shop.yaml",
                &route_yaml("shop", HOST, "/api", &format!("http://{}", backend.addr)),
            ),
            ("secret.yaml", &tls_secret_yaml("shop-tls", &chain, &key)),
            ("cert.yaml", &tls_certificate_yaml("shop", HOST, "shop-tls")),
        ],
        &["--header-read-timeout", "1s"],
    );

    // Connected, never sends a byte.
    let started = Instant::now();
    let silent = TcpStream::connect(gw.http).await.expect("connect");
    // TLS handshake done, then never sends a request.
    let silent_tls = tls_connect(gw.https, HOST, &ca, &[b"http/1.1"])
        .await
        .unwrap_or_else(|e| panic!("TLS to the gateway: {e}; log:\n{}", gw.log()));
    // One request answered, then idle on keep-alive. (The redirect answer
    // is enough: the host has a certificate.)
    let mut idle = TcpStream::connect(gw.http).await.expect("connect");
    idle.write_all(format!("GET /api HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("send a request");
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        idle.read_exact(&mut byte).await.expect("read the answer");
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(status_line(&answer).starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-length: 0\r\n"),
        "{answer}"
    );
    let idle_since = Instant::now();

    let (silent, silent_tls, idle) = tokio::join!(
        closed_after(silent, started),
        closed_after(silent_tls, started),
        closed_after(idle, idle_since),
    );
    println!(
        "closed after: silent {silent:?}, silent TLS {silent_tls:?}, idle keep-alive {idle:?}"
    );
    let mut failures = Vec::new();
    for (what, result) in [
        ("a plain connection that sends nothing", silent),
        ("a TLS connection that sends no request", silent_tls),
        ("an idle keep-alive connection", idle),
    ] {
        match result {
            Ok(after) if after < Duration::from_secs(3) => {}
            Ok(after) => failures.push(format!("{what}: closed only after {after:?}")),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "with --header-read-timeout 1s:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_gets_404_with_request_id() {
    let backend = upstream("shop", Behavior::default()).await;
    let gw = Gateway::start(&[(
        "shop.yaml",
        &route_yaml("shop", HOST, "/api", &format!("http://{}", backend.addr)),
    )]);
    let client = Client::new(gw.http);
    let answer = client.get("unknown.test", "/api").await;
    assert_error_answer(&answer, 404, &backend.addr.to_string());
    // A sane client request id is kept, so logs on both sides correlate.
    let answer = client
        .send(
            "GET",
            "unknown.test",
            "/",
            &[("x-request-id", "client-id-42")],
        )
        .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["request_id"], "client-id-42", "{answer:?}");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_backend_port_gets_502() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let gw = Gateway::start(&[(
        "dead.yaml",
        &route_yaml("dead", HOST, "/api", &format!("http://127.0.0.1:{port}")),
    )]);
    let started = Instant::now();
    let answer = Client::new(gw.http).get(HOST, "/api").await;
    assert_error_answer(&answer, 502, &port.to_string());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a refused connection took {:?} to report",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gets_504_at_the_request_timeout() {
    let slow = upstream(
        "slow",
        Behavior {
            delay: Some(Duration::from_secs(3)),
            ..Behavior::default()
        },
    )
    .await;
    let route = format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: slow, namespace: default}}
spec:
  hosts: [{HOST}]
  rules:
  - name: api
    matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backends: [{{url: \"http://{}\"}}]
    timeouts: {{request: 300ms}}
",
        slow.addr
    );
    let gw = Gateway::start(&[("slow.yaml", &route)]);
    let started = Instant::now();
    let answer = Client::new(gw.http).get(HOST, "/api").await;
    let took = started.elapsed();
    println!("504 after {took:?} (request timeout 300ms)");
    assert_error_answer(&answer, 504, &slow.addr.to_string());
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1500),
        "the 504 came after {took:?}, expected about 300 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let slow = upstream(
        "slow",
        Behavior {
            delay: Some(Duration::from_millis(500)),
            ..Behavior::default()
        },
    )
    .await;
    let mut gw = Gateway::start(&[(
        "slow.yaml",
        &route_yaml("slow", HOST, "/api", &format!("http://{}", slow.addr)),
    )]);
    let addr = gw.http;
    // An idle keep-alive connection (one request answered, the socket kept
    // open) must not hold the exit back until the drain timeout (15 s).
    let mut idle = std::net::TcpStream::connect(addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    std::io::Write::write_all(
        &mut idle,
        format!("GET /nothing-here HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
    )
    .expect("send");
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut idle, &mut head).expect("answer on the idle connection");
    assert_eq!(&head, b"HTTP/1.1 404", "{}", String::from_utf8_lossy(&head));
    let in_flight = tokio::spawn(async move { Client::new(addr).get(HOST, "/api").await });
    support::eventually(
        Duration::from_secs(5),
        "the request to reach the upstream",
        async || slow.hits() == 1,
    )
    .await;
    let signalled = Instant::now();
    gw.terminate();
    let answer = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight request ends within 5 s of SIGTERM")
        .unwrap_or_else(|e| panic!("the in-flight request failed after SIGTERM: {e}"));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.upstream(), Some("slow"));
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(5)));
    let exited = signalled.elapsed();
    println!("SIGTERM -> exit: {exited:?}");
    let status =
        status.unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", gw.log()));
    assert!(
        status.success(),
        "exit status {status:?} after SIGTERM; log:\n{}",
        gw.log()
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener still accepts after the process exited"
    );
    drop(idle);
}
