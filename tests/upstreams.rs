//! Upstream behaviour end to end: balancing over several endpoints, retries,
//! timeouts, passive health checking, and the error responses.
//!
//! Several endpoints of one backend come from a Service with Endpoints on
//! loopback ports. Endpoints on 127.0.0.1 are fine for `ferrogate serve`
//! (only a real apiserver refuses them).

mod support;

use std::time::{Duration, Instant};
use support::{upstream, Behavior, Client, Gateway, Upstream};

/// A route to Service `svc` (port 80) whose Endpoints are `upstreams`.
fn service_route(host: &str, upstreams: &[&Upstream], rule_extra: &str) -> String {
    let addresses: String = upstreams
        .iter()
        .enumerate()
        .map(|(i, _)| format!("      - ip: 127.0.0.{}\n", i + 1))
        .collect();
    // Each upstream listens on its own port, so every endpoint gets its own
    // subset (an Endpoints subset shares one port list).
    let subsets: String = upstreams
        .iter()
        .map(|u| {
            format!(
                "  - addresses: [{{ip: \"127.0.0.1\"}}]\n    ports: [{{name: http, port: {}}}]\n",
                u.addr.port()
            )
        })
        .collect();
    let _ = addresses;
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: svc, namespace: default}}
subsets:
{subsets}---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: r, namespace: default}}
spec:
  hosts: ["{host}"]
  rules:
  - backends: [{{name: svc, port: 80}}]
{rule_extra}"#
    )
}

fn url_route(host: &str, url: &str, rule_extra: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  hosts: [\"{host}\"]\n  rules:\n  - backends: [{{url: \"{url}\"}}]\n{rule_extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let a = upstream("a", Behavior::default()).await;
    let b = upstream("b", Behavior::default()).await;
    let c = upstream("c", Behavior::default()).await;
    let gateway = Gateway::start(&[("r.yaml", &service_route("rr.test", &[&a, &b, &c], ""))]);
    let client = Client::new(gateway.http);
    for _ in 0..300 {
        assert_eq!(client.get("rr.test", "/").await.status, 200);
    }
    for u in [&a, &b, &c] {
        assert_eq!(u.hits(), 100, "round robin gives each endpoint a third");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_slow_endpoint() {
    let slow = upstream(
        "slow",
        Behavior {
            delay: Some(Duration::from_millis(200)),
            ..Behavior::default()
        },
    )
    .await;
    let fast = upstream("fast", Behavior::default()).await;
    let gateway = Gateway::start(&[(
        "r.yaml",
        &service_route(
            "lr.test",
            &[&slow, &fast],
            "    loadBalancer: {type: LeastRequest}\n",
        ),
    )]);
    let client = std::sync::Arc::new(Client::new(gateway.http));
    // 8 concurrent clients for about a second: the fast endpoint finishes
    // requests quickly, so it is almost always the less loaded one.
    let deadline = Instant::now() + Duration::from_millis(1200);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                assert_eq!(client.get("lr.test", "/").await.status, 200);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    assert!(
        fast.hits() > slow.hits() * 5,
        "fast {} slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_key_on_one_endpoint() {
    let ups = [
        upstream("a", Behavior::default()).await,
        upstream("b", Behavior::default()).await,
        upstream("c", Behavior::default()).await,
    ];
    let refs: Vec<&Upstream> = ups.iter().collect();
    let gateway = Gateway::start(&[(
        "r.yaml",
        &service_route(
            "ch.test",
            &refs,
            "    loadBalancer: {type: ConsistentHash, hashOn: {header: x-user}}\n",
        ),
    )]);
    let client = Client::new(gateway.http);
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let first = client
            .send("GET", "ch.test", "/", &[("x-user", &user)])
            .await
            .upstream()
            .map(str::to_owned);
        for _ in 0..5 {
            let again = client
                .send("GET", "ch.test", "/", &[("x-user", &user)])
                .await;
            assert_eq!(again.upstream().map(str::to_owned), first, "{user} moved");
        }
        owners.insert(first);
    }
    assert!(owners.len() >= 2, "30 keys all landed on one endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_from_gateway_errors() {
    let flaky = upstream(
        "flaky",
        Behavior {
            fail_first: Some((2, 503)),
            ..Behavior::default()
        },
    )
    .await;
    let gateway = Gateway::start(&[(
        "r.yaml",
        &url_route(
            "retry.test",
            &format!("http://{}", flaky.addr),
            "    retry: {attempts: 2, retryOn: [GatewayError], backoff: 1ms}\n",
        ),
    )]);
    let client = Client::new(gateway.http);
    let answer = client.get("retry.test", "/").await;
    assert_eq!(answer.status, 200, "two 503s then a 200: retried twice");
    assert_eq!(flaky.hits(), 3);
    // Non-idempotent requests are not retried after the upstream answered.
    let flaky_post = upstream(
        "flaky-post",
        Behavior {
            fail_first: Some((1, 503)),
            ..Behavior::default()
        },
    )
    .await;
    gateway.write(
        "r.yaml",
        &url_route(
            "retry.test",
            &format!("http://{}", flaky_post.addr),
            "    retry: {attempts: 2, retryOn: [GatewayError], backoff: 1ms}\n",
        ),
    );
    gateway.wait_for_version_above(1);
    let answer = client.send("POST", "retry.test", "/", &[]).await;
    assert_eq!(answer.status, 503);
    assert_eq!(flaky_post.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_endpoint() {
    let alive = upstream("alive", Behavior::default()).await;
    // A port with nothing listening.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: default}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: svc, namespace: default}}
subsets:
- addresses: [{{ip: "127.0.0.1"}}]
  ports: [{{name: http, port: {dead}}}]
- addresses: [{{ip: "127.0.0.1"}}]
  ports: [{{name: http, port: {alive}}}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: r, namespace: default}}
spec:
  hosts: [cf.test]
  rules:
  - backends: [{{name: svc, port: 80}}]
    retry: {{attempts: 1, backoff: 1ms}}
"#,
        dead = dead.port(),
        alive = alive.addr.port()
    );
    let gateway = Gateway::start(&[("r.yaml", &yaml)]);
    let client = Client::new(gateway.http);
    for _ in 0..20 {
        let answer = client.send("POST", "cf.test", "/", &[]).await;
        assert_eq!(answer.status, 200, "connect failures are safe to retry");
    }
    assert_eq!(alive.hits(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_502_503_504() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let slow = upstream(
        "slow",
        Behavior {
            delay: Some(Duration::from_secs(2)),
            ..Behavior::default()
        },
    )
    .await;
    let yaml = format!(
        r#"apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: r, namespace: default}}
spec:
  hosts: [err.test]
  rules:
  - matches: [{{path: {{type: Exact, value: /dead}}}}]
    backends: [{{url: "http://{dead}"}}]
  - matches: [{{path: {{type: Exact, value: /slow}}}}]
    backends: [{{url: "http://{slow}"}}]
    timeouts: {{request: 300ms}}
  - matches: [{{path: {{type: Exact, value: /empty}}}}]
    backends: [{{name: no-endpoints, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: no-endpoints, namespace: default}}
spec:
  ports: [{{port: 80}}]
"#,
        slow = slow.addr
    );
    let gateway = Gateway::start(&[("r.yaml", &yaml)]);
    let client = Client::new(gateway.http);
    let answer = client.get("err.test", "/dead").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["error"], "upstream_connect_failure");
    assert!(
        !answer.body.contains(&dead.port().to_string()),
        "no internal details"
    );
    let started = Instant::now();
    let answer = client.get("err.test", "/slow").await;
    assert_eq!(answer.status, 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
    let answer = client.get("err.test", "/empty").await;
    assert_eq!(answer.status, 503, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_ejects_and_recovers() {
    let good = upstream("good", Behavior::default()).await;
    let bad = upstream(
        "bad",
        Behavior {
            status: Some(500),
            ..Behavior::default()
        },
    )
    .await;
    let gateway = Gateway::start(&[(
        "r.yaml",
        &service_route(
            "ph.test",
            &[&good, &bad],
            "    outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 1s, maxEjectionPercent: 50}\n",
        ),
    )]);
    let client = Client::new(gateway.http);
    for _ in 0..40 {
        client.get("ph.test", "/").await;
    }
    // Round robin sends every other request to `bad` until it fails 3 times
    // in a row; then it is out for a second.
    assert_eq!(bad.hits(), 3, "ejected after 3 consecutive failures");
    let bad_before = bad.hits();
    for _ in 0..20 {
        assert_eq!(client.get("ph.test", "/").await.status, 200);
    }
    assert_eq!(bad.hits(), bad_before, "ejected endpoint gets no traffic");
    // After the ejection time it gets traffic again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        client.get("ph.test", "/").await;
    }
    assert!(
        bad.hits() > bad_before,
        "endpoint came back after its ejection"
    );
}

/// An upstream that closes a kept-alive connection while it is idle in the
/// gateway's pool gets the gateway's side closed by the pool's periodic
/// sweep (every 5 s), not only when the next request would pick it: no
/// connection stays half-closed (CLOSE_WAIT on the gateway) after traffic
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_upstream_closed_while_idle_are_closed_by_the_gateway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // One exchange, then the upstream closes its side and waits for the
    // gateway's end of file: how long after its own close, or None.
    let upstream = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read request");
            assert!(n > 0, "the gateway closed before sending a request");
            head.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.shutdown().await.expect("close the upstream's side");
        let closed = Instant::now();
        match tokio::time::timeout(Duration::from_secs(12), stream.read(&mut buf)).await {
            Ok(Ok(0)) => Some(closed.elapsed()),
            Ok(Ok(n)) => panic!("the gateway sent {n} more bytes on a closed connection"),
            Ok(Err(_)) => Some(closed.elapsed()),
            Err(_) => None,
        }
    });
    let gateway = Gateway::start(&[(
        "r.yaml",
        &url_route("idle.test", &format!("http://{addr}"), ""),
    )]);
    let client = Client::new(gateway.http);
    let answer = client.get("idle.test", "/").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "ok");
    let waited = upstream.await.expect("upstream task");
    let Some(waited) = waited else {
        panic!("the gateway kept its side of the closed idle connection open for 12 s");
    };
    assert!(
        waited <= Duration::from_secs(8),
        "the gateway closed its side only after {waited:?} (sweep every 5 s)"
    );
}
