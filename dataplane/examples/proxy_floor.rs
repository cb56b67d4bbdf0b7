//! The least a tokio HTTP/1 reverse proxy does per request, to place the
//! gateway between that floor and nginx on the same placement
//! (`bench/floor.py` runs it). Per client connection one kept-alive
//! upstream connection; the request head is parsed with httparse and
//! passed on as read; the response head is parsed for its Content-Length
//! and passed back with its body. No routing, no header changes, no
//! timers, no pools, no error answers: not a proxy anyone should run.
//!
//! Options:
//! - `--yield`: yield to the scheduler before writing upstream, as the
//!   gateway's direct exchange does.
//! - `--spin-request N` / `--spin-response N`: N rounds of busy work per
//!   request, after reading the request / after reading the upstream's
//!   answer, to see how extra CPU per request and where it sits change
//!   throughput and context switches.
//!
//! Run: `cargo run --release -p dataplane --example proxy_floor --
//! UPSTREAM [--yield] [--spin-request N] [--spin-response N]` (prints the
//! port it listens on).

use bytes::BytesMut;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
struct Options {
    upstream: SocketAddr,
    yields: bool,
    spin_request: u64,
    spin_response: u64,
}

const USAGE: &str = "usage: proxy_floor UPSTREAM [--yield] [--spin-request N] [--spin-response N]";

fn options() -> Result<Options, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        upstream: args.next().ok_or(USAGE)?.parse()?,
        yields: false,
        spin_request: 0,
        spin_response: 0,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--yield" => options.yields = true,
            "--spin-request" => options.spin_request = args.next().ok_or(USAGE)?.parse()?,
            "--spin-response" => options.spin_response = args.next().ok_or(USAGE)?.parse()?,
            _ => return Err(USAGE.into()),
        }
    }
    Ok(options)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(serve(stream, options));
        }
    })
}

/// Busy work the optimizer cannot remove.
fn spin(rounds: u64) {
    let mut x = 0u64;
    for i in 0..rounds {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
}

/// Reads until `buf` holds a whole message (head and Content-Length body)
/// and splits it off.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    request: bool,
) -> Option<BytesMut> {
    let (head, body) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let (status, fields) = if request {
            let mut head = httparse::Request::new(&mut headers);
            let status = head.parse(buf).ok()?;
            (status, head.headers.len())
        } else {
            let mut head = httparse::Response::new(&mut headers);
            let status = head.parse(buf).ok()?;
            (status, head.headers.len())
        };
        if let httparse::Status::Complete(len) = status {
            let body: usize = headers[..fields]
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case("content-length"))
                .map(|f| std::str::from_utf8(f.value).ok()?.trim().parse().ok())
                .unwrap_or(Some(0))?;
            break (len, body);
        }
        if !matches!(stream.read_buf(buf).await, Ok(n) if n > 0) {
            return None;
        }
    };
    while buf.len() < head + body {
        if !matches!(stream.read_buf(buf).await, Ok(n) if n > 0) {
            return None;
        }
    }
    Some(buf.split_to(head + body))
}

async fn serve(mut client: TcpStream, options: Options) {
    let Ok(mut upstream) = TcpStream::connect(options.upstream).await else {
        return;
    };
    if upstream.set_nodelay(true).is_err() {
        return;
    }
    let mut inbound = BytesMut::with_capacity(8192);
    let mut outbound = BytesMut::with_capacity(8192);
    loop {
        let Some(request) = read_message(&mut client, &mut inbound, true).await else {
            return;
        };
        spin(options.spin_request);
        if options.yields {
            tokio::task::yield_now().await;
        }
        if upstream.write_all(&request).await.is_err() {
            return;
        }
        let Some(response) = read_message(&mut upstream, &mut outbound, false).await else {
            return;
        };
        spin(options.spin_response);
        if client.write_all(&response).await.is_err() {
            return;
        }
    }
}
