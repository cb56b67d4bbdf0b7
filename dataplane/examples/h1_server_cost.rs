//! What hyper's HTTP/1 server costs per request, against the least a
//! server must do: `bench/h1server.py` runs both modes of this program on
//! one CPU with wrk on the other and prints CPU microseconds per request.
//!
//! - `hyper`: hyper's HTTP/1 connection with the settings the gateway uses
//!   (keep-alive, a header read timeout on tokio's timer, upgrades on), a
//!   service answering 200 with an empty body and one extra header.
//! - `minimal`: the same answer from a loop that parses the head with
//!   httparse, builds the `HeaderMap` and `Uri` the proxy would need, resets
//!   one header-read timer per request and writes a fixed response.
//!
//! The difference is the most an own HTTP/1 server path could save (it
//! would still parse, build the request and encode the response).
//!
//! Run: `cargo run --release -p dataplane --example h1_server_cost -- MODE`
//! (prints the port it listens on).

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let minimal = match mode.as_str() {
        "hyper" => false,
        "minimal" => true,
        _ => return Err("usage: h1_server_cost hyper|minimal".into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                if minimal {
                    serve_minimal(stream).await;
                } else {
                    serve_hyper(stream).await;
                }
            });
        }
    })
}

async fn serve_hyper(stream: TcpStream) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let service = service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        let mut response = http::Response::new(Full::new(Bytes::new()));
        response
            .headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static("bench"));
        Ok::<_, Infallible>(response)
    });
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

async fn serve_minimal(mut stream: TcpStream) {
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\
        x-request-id: bench\r\ndate: Thu, 26 Nov 2026 00:00:00 GMT\r\n\r\n";
    let mut buf = BytesMut::with_capacity(8192);
    let timer = tokio::time::sleep(HEADER_READ_TIMEOUT);
    tokio::pin!(timer);
    loop {
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut head = httparse::Request::new(&mut headers);
            match head.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut map = http::HeaderMap::with_capacity(head.headers.len());
                    for field in head.headers.iter() {
                        let (Ok(name), Ok(value)) = (
                            http::HeaderName::from_bytes(field.name.as_bytes()),
                            http::HeaderValue::from_bytes(field.value),
                        ) else {
                            return;
                        };
                        map.append(name, value);
                    }
                    let Ok(uri) = head.path.unwrap_or("/").parse::<http::Uri>() else {
                        return;
                    };
                    let raw = buf.split_to(len).freeze();
                    std::hint::black_box((map, uri, raw));
                    break;
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = &mut timer => return,
            }
        }
        if stream.write_all(RESPONSE).await.is_err() {
            return;
        }
    }
}
