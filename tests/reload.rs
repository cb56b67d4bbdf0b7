//! Hot reload of `ferrogate serve --manifests DIR` under load: route
//! changes while wrk runs (no failed request on an unchanged route, and the
//! reload latency), an invalid edit that keeps the last good version
//! serving, and certificate rotations while h2load runs over HTTPS (no
//! failed request, new handshakes see the new certificate, established
//! connections keep working).
//!
//! Needs wrk and h2load (`scripts/test-deps.sh` installs them); without
//! them the tests fail saying so.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    h2load, make_cert, require_tool, route_yaml, tls_certificate_yaml, tls_connect,
    tls_secret_yaml, upstream, wait_output, Behavior, Client, Gateway, H2loadReport,
};

const HOST: &str = "shop.test";

/// What wrk reported.
#[derive(Debug, Default)]
struct WrkReport {
    requests: u64,
    non_2xx_3xx: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    timeouts: u64,
}

impl WrkReport {
    /// Parses wrk's summary. The "Non-2xx" and "Socket errors" lines are only
    /// printed when there are some.
    fn parse(output: &str) -> Option<WrkReport> {
        let mut report = WrkReport::default();
        let number = |text: &str| text.trim().trim_end_matches(',').parse::<u64>().ok();
        let mut saw_requests = false;
        for line in output.lines().map(str::trim) {
            if let Some((count, _)) = line.split_once(" requests in ") {
                report.requests = number(count)?;
                saw_requests = true;
            } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
                report.non_2xx_3xx = number(count)?;
            } else if let Some(errors) = line.strip_prefix("Socket errors:") {
                // "connect 0, read 1, write 0, timeout 0"
                for part in errors.split(',') {
                    let mut words = part.split_whitespace();
                    let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                        return None;
                    };
                    let count = number(count)?;
                    match kind {
                        "connect" => report.connect_errors = count,
                        "read" => report.read_errors = count,
                        "write" => report.write_errors = count,
                        "timeout" => report.timeouts = count,
                        _ => return None,
                    }
                }
            }
        }
        saw_requests.then_some(report)
    }
}

/// Median, 90th percentile and maximum.
fn summary(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), at(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_while_wrk_runs_fail_no_request() {
    let wrk = require_tool("wrk");
    let shop = upstream("shop", Behavior::default()).await;
    let other = upstream("other", Behavior::default()).await;
    let other_url = format!("http://{}", other.addr);
    let gw = Gateway::start(&[
        (
            "shop.yaml",
            &route_yaml("shop", HOST, "/api", &format!("http://{}", shop.addr)),
        ),
        (
            "other.yaml",
            &route_yaml("other", "r0.test", "/v0", &other_url),
        ),
    ]);
    let client = Client::new(gw.http);
    assert_eq!(
        client.get(HOST, "/api").await.status,
        200,
        "log:\n{}",
        gw.log()
    );

    // wrk runs until we interrupt it (it prints its summary on SIGINT); the
    // duration only bounds it should the test die.
    let load = Command::new(wrk)
        .args(["-t1", "-c10", "-d90s", "-H", &format!("Host: {HOST}")])
        .arg(format!("http://{}/api", gw.http))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wrk");
    let before = shop.hits();
    support::eventually(Duration::from_secs(5), "wrk to send requests", async || {
        shop.hits() > before + 100
    })
    .await;

    let start_version = gw.version();
    let mut version = start_version;
    let mut latencies = Vec::new();
    let mut previous = ("r0.test".to_owned(), "/v0".to_owned());
    for i in 1..=100 {
        let (host, path) = (format!("r{i}.test"), format!("/v{i}"));
        let written = Instant::now();
        gw.write("other.yaml", &route_yaml("other", &host, &path, &other_url));
        loop {
            let answer = client.get(&host, &path).await;
            if answer.status == 200 {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "reload {i}: GET {host}{path} still answers {} 5 s after the write; log:\n{}",
                answer.status,
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(written.elapsed());
        version = tokio::task::block_in_place(|| gw.wait_for_version_above(version));
        let gone = client.get(&previous.0, &previous.1).await;
        assert_eq!(
            gone.status, 404,
            "reload {i}: the replaced route still answers: {gone:?}"
        );
        previous = (host, path);
    }

    let mut load = load;
    assert!(
        load.try_wait().expect("wrk status").is_none(),
        "wrk stopped before the reloads finished"
    );
    let stopped = Command::new("kill")
        .args(["-INT", &load.id().to_string()])
        .status()
        .expect("run kill");
    assert!(stopped.success(), "could not interrupt wrk");
    let output = wait_output(load, Duration::from_secs(10), "wrk");
    let report =
        WrkReport::parse(&output).unwrap_or_else(|| panic!("cannot read wrk's report:\n{output}"));

    let (p50, p90, max) = summary(latencies.clone());
    println!(
        "reload latency (write -> new route answers 200) over {} reloads under wrk: \
         median {p50:?}, p90 {p90:?}, max {max:?}; wrk: {} requests",
        latencies.len(),
        report.requests
    );
    println!("{output}");
    assert!(
        version - start_version >= 100,
        "the version advanced by {} over 100 changes",
        version - start_version
    );
    assert!(
        report.requests > 1000,
        "wrk sent too few requests to mean anything: {output}"
    );
    assert_eq!(
        report.non_2xx_3xx, 0,
        "an unchanged route failed during reloads:\n{output}"
    );
    assert_eq!(
        (
            report.connect_errors,
            report.read_errors,
            report.write_errors,
            report.timeouts
        ),
        (0, 0, 0, 0),
        "socket errors (connect, read, write, timeout) during reloads:\n{output}"
    );
    assert!(
        max < Duration::from_secs(2),
        "a reload took {max:?} (p50 {p50:?}, p90 {p90:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_keeps_the_last_good_version_serving() {
    let shop = upstream("shop", Behavior::default()).await;
    let url = format!("http://{}", shop.addr);
    let gw = Gateway::start(&[("shop.yaml", &route_yaml("shop", HOST, "/api", &url))]);
    let client = Client::new(gw.http);
    assert_eq!(
        client.get(HOST, "/api/items").await.status,
        200,
        "log:\n{}",
        gw.log()
    );
    let good_version = gw.version();

    // The edit moves the route to /v2 and breaks a regex: none of it applies.
    let broken = format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: shop, namespace: default}}
spec:
  hosts: [{HOST}]
  rules:
  - name: api
    matches: [{{path: {{type: PathPrefix, value: /v2}}}}]
    backends: [{{url: \"{url}\"}}]
  - name: search
    matches: [{{path: {{type: RegularExpression, value: \"/search/[\"}}}}]
    backends: [{{url: \"{url}\"}}]
"
    );
    gw.write("shop.yaml", &broken);
    let field = "spec.rules[1].matches[0].path.value";
    support::eventually(
        Duration::from_secs(5),
        "the invalid edit to be reported",
        async || gw.log().contains(field),
    )
    .await;
    let log = gw.log();
    let line = log.lines().find(|l| l.contains(field)).unwrap_or_default();
    assert!(
        line.contains("shop"),
        "the message does not name the resource: {line}"
    );
    assert!(
        line.to_ascii_lowercase().contains("regex"),
        "the message does not say why: {line}"
    );

    let answer = client.get(HOST, "/api/items").await;
    assert_eq!(
        answer.status, 200,
        "the last good version stopped serving: {answer:?}"
    );
    assert_eq!(answer.upstream(), Some("shop"));
    assert_eq!(
        client.get(HOST, "/v2/items").await.status,
        404,
        "part of the invalid edit applied"
    );
    assert_eq!(
        gw.version(),
        good_version,
        "an invalid edit must not publish a new version"
    );

    // Fixing the file applies it.
    gw.write("shop.yaml", &route_yaml("shop", HOST, "/v2", &url));
    tokio::task::block_in_place(|| gw.wait_for_version_above(good_version));
    assert_eq!(client.get(HOST, "/v2/items").await.status, 200);
    assert_eq!(client.get(HOST, "/api/items").await.status, 404);
}

async fn keepalive_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    what: &str,
) -> u16 {
    tokio::time::timeout(Duration::from_secs(5), sender.ready())
        .await
        .unwrap_or_else(|_| panic!("{what}: keep-alive connection not ready within 5 s"))
        .unwrap_or_else(|e| panic!("{what}: the keep-alive connection was closed: {e}"));
    let request = http::Request::get("/api/keepalive")
        .header("host", HOST)
        .body(Empty::new())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("{what}: no response within 5 s"))
        .unwrap_or_else(|e| panic!("{what}: request on the keep-alive connection failed: {e}"));
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_certificate_rotations_while_h2load_runs_fail_no_request() {
    require_tool("h2load");
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

    // An HTTP/1.1 keep-alive connection opened before any rotation.
    let tls = tls_connect(gw.https, HOST, &ca, &[b"http/1.1"])
        .await
        .unwrap_or_else(|e| panic!("TLS to the gateway: {e}; log:\n{}", gw.log()));
    let (mut keepalive, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 over TLS");
    tokio::spawn(conn);
    assert_eq!(keepalive_get(&mut keepalive, "before rotating").await, 200);

    // h2load in a loop: each run makes 4 new TLS connections (h2 by ALPN)
    // and multiplexes 400 requests on them.
    let port = gw.https.port();
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut runs: Vec<(H2loadReport, String)> = Vec::new();
            while !stop.load(Ordering::SeqCst) || runs.is_empty() {
                runs.push(h2load(
                    &[
                        "-n",
                        "400",
                        "-c",
                        "4",
                        "-m",
                        "10",
                        &format!("--connect-to=127.0.0.1:{port}"),
                        &format!("https://{HOST}:{port}/api"),
                    ],
                    Duration::from_secs(30),
                ));
            }
            runs
        })
    };

    let started = Instant::now();
    let mut version = gw.version();
    for i in 1..=20 {
        let (ca, chain, key) = make_cert(&[HOST]);
        gw.write("secret.yaml", &tls_secret_yaml("shop-tls", &chain, &key));
        version = tokio::task::block_in_place(|| gw.wait_for_version_above(version));
        let tls = tls_connect(gw.https, HOST, &ca, &[b"h2", b"http/1.1"])
            .await
            .unwrap_or_else(|e| {
                panic!("rotation {i}: a new handshake does not present the new certificate: {e}")
            });
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned());
        let expected = CertificateDer::from_pem_slice(chain.as_bytes()).expect("certificate PEM");
        assert!(
            served == Some(expected),
            "rotation {i}: another certificate was served"
        );
        assert_eq!(
            keepalive_get(&mut keepalive, &format!("after rotation {i}")).await,
            200,
            "rotation {i}: the connection opened before the rotations"
        );
    }
    let rotating = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let runs = tokio::task::spawn_blocking(move || runner.join())
        .await
        .expect("join task")
        .expect("h2load runner");

    let requests: u64 = runs.iter().map(|(r, _)| r.total).sum();
    println!(
        "20 certificate rotations in {rotating:?}; h2load: {} runs, {requests} requests",
        runs.len()
    );
    for (report, output) in &runs {
        assert!(
            report.all_ok(),
            "h2load failed requests across certificate rotations: {report:?}\n{output}"
        );
        assert!(
            output.contains("Application protocol: h2"),
            "h2 was not negotiated:\n{output}"
        );
    }
}

#[test]
fn wrk_reports_are_read_whole() {
    let clean = "Running 2s test @ http://127.0.0.1:1/api\n  1 threads and 10 connections\n  \
                 9080 requests in 2.10s, 3.68MB read\nRequests/sec:   4318.05\n";
    let report = WrkReport::parse(clean).expect("clean report");
    assert_eq!(report.requests, 9080);
    assert_eq!((report.non_2xx_3xx, report.read_errors), (0, 0));
    let failing = "  9080 requests in 2.10s, 3.68MB read\n  \
                   Socket errors: connect 1, read 2, write 3, timeout 4\n  \
                   Non-2xx or 3xx responses: 5\n";
    let report = WrkReport::parse(failing).expect("failing report");
    assert_eq!(
        (
            report.connect_errors,
            report.read_errors,
            report.write_errors,
            report.timeouts,
            report.non_2xx_3xx
        ),
        (1, 2, 3, 4, 5)
    );
    assert!(WrkReport::parse("unable to connect to 127.0.0.1:1").is_none());
}
