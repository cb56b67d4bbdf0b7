//! RateLimitPolicy end to end: the real `ferrogate serve` (one, or three
//! sharing a real Redis), a real upstream, short periods.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{upstream, Answer, Behavior, Client, Gateway, Upstream};

const HOST: &str = "api.test";

fn route(backend: &Upstream) -> String {
    support::route_yaml("api", HOST, "/", &format!("http://{}", backend.addr))
}

/// A RateLimitPolicy `limits` on the route `api`; `body` holds scope,
/// failureMode and limits (indented two spaces under `spec:`).
fn limits(body: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: limits, namespace: default}}
spec:
  targetRefs: [{{kind: ApiRoute, name: api}}]
{body}"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A throwaway `redis-server` on 127.0.0.1 (no persistence, own folder).
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let binary = support::require_tool("redis-server");
        let dir = tempfile::tempdir().expect("redis dir");
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir,
            binary,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port.
    fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `n` requests at once; returns the answers.
async fn burst(
    client: &Arc<Client>,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<Answer> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let headers = headers.clone();
            let path = path.to_owned();
            tokio::spawn(async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                client.send("GET", HOST, &path, &h).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

fn passed(answers: &[Answer]) -> usize {
    answers.iter().filter(|a| a.status == 200).count()
}

/// The sum of the rate-limit decision counters whose labels contain
/// `needle`.
fn metric(gateway: &Gateway, needle: &str) -> u64 {
    let text = support::blocking_get(gateway.admin, "/metrics");
    text.lines()
        .filter(|l| l.starts_with("ferrogate_ratelimit_decisions_total") && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_limit_admits_exactly_its_bucket_per_key() {
    let backend = upstream("backend", Behavior::default()).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "limits.yaml",
            &limits(
                "  limits:
  - name: per-user
    requests: 5
    period: 4s
    key: [{source: Header, name: x-user}]
",
            ),
        ),
    ]);
    let client = Arc::new(Client::new(gateway.http));
    let alice = burst(&client, 12, "/cart", &[("x-user", "alice")]).await;
    assert_eq!(passed(&alice), 5, "{alice:?}\n{}", gateway.log());
    let ok = alice.iter().find(|a| a.status == 200).expect("a pass");
    assert_eq!(ok.headers["ratelimit-policy"], "\"per-user\";q=5;w=4");
    assert!(
        ok.headers["ratelimit"].starts_with("\"per-user\";r="),
        "{:?}",
        ok.headers
    );
    let refused = alice.iter().find(|a| a.status == 429).expect("a refusal");
    assert_eq!(refused.json()["error"], "rate_limited");
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.headers["ratelimit"], "\"per-user\";r=0;t=1");
    assert_eq!(backend.hits(), 5, "refused requests reached the upstream");

    // Another key has its own bucket.
    let bob = burst(&client, 12, "/cart", &[("x-user", "bob")]).await;
    assert_eq!(passed(&bob), 5);

    // The bucket refills at 5 per 4 s: after 4 s, 5 more.
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    let again = burst(&client, 12, "/cart", &[("x-user", "alice")]).await;
    assert_eq!(passed(&again), 5);
    assert_eq!(metric(&gateway, "decision=\"limited\""), 7 + 7 + 7);
    assert_eq!(metric(&gateway, "decision=\"allowed\""), 15);
}

#[tokio::test]
async fn bursts_at_the_window_edge_do_not_exceed_the_bucket() {
    let backend = upstream("backend", Behavior::default()).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "limits.yaml",
            &limits(
                "  limits:
  - name: per-user
    requests: 5
    period: 5s
    key: [{source: Header, name: x-user}]
",
            ),
        ),
    ]);
    let client = Arc::new(Client::new(gateway.http));
    let user = [("x-user", "edge")];
    let start = Instant::now();
    assert_eq!(passed(&burst(&client, 20, "/", &user).await), 5);
    // A fixed 5 s window would let 5 through just before its end and 5 more
    // just after. Here the bucket refills one per second, continuously.
    tokio::time::sleep(Duration::from_millis(4_800).saturating_sub(start.elapsed())).await;
    let before = passed(&burst(&client, 20, "/", &user).await);
    tokio::time::sleep(Duration::from_millis(5_200).saturating_sub(start.elapsed())).await;
    let after = passed(&burst(&client, 20, "/", &user).await);
    assert!(
        before + after <= 5,
        "{before} + {after} passed around the edge"
    );
    assert!(
        before + after >= 4,
        "{before} + {after}: the bucket did not refill"
    );
}

#[tokio::test]
async fn shadow_limits_count_but_never_refuse_and_conditions_select_requests() {
    let backend = upstream("backend", Behavior::default()).await;
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "limits.yaml",
            &limits(
                "  limits:
  - name: trial
    requests: 2
    period: 1m
    mode: Shadow
  - name: checkout
    requests: 1
    period: 1m
    when: {methods: [POST], paths: [/checkout]}
",
            ),
        ),
    ]);
    let client = Arc::new(Client::new(gateway.http));
    for _ in 0..5 {
        let answer = client.get(HOST, "/browse").await;
        assert_eq!(answer.status, 200);
        assert!(
            !answer.headers.contains_key("ratelimit"),
            "shadow limits are not advertised"
        );
    }
    assert_eq!(metric(&gateway, "decision=\"shadow_limited\""), 3);
    // The checkout limit only counts POST /checkout.
    assert_eq!(client.get(HOST, "/checkout").await.status, 200);
    assert_eq!(
        client.send("POST", HOST, "/checkout", &[]).await.status,
        200
    );
    let second = client.send("POST", HOST, "/checkout/pay", &[]).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.headers["ratelimit-policy"], "\"checkout\";q=1;w=60");
    assert_eq!(
        client.send("POST", HOST, "/checkoutx", &[]).await.status,
        200
    );
}

#[tokio::test]
async fn client_addresses_come_from_forwarded_for_only_behind_trusted_proxies() {
    let backend = upstream("backend", Behavior::default()).await;
    let files = [
        ("route.yaml", route(&backend)),
        (
            "limits.yaml",
            limits(
                "  limits:
  - name: per-ip
    requests: 2
    period: 1m
    key: [{source: ClientIp}]
",
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, y)| (*n, y.as_str())).collect();

    // Untrusted peer: X-Forwarded-For is ignored, every request is 127.0.0.1.
    let gateway = Gateway::start(&files);
    let client = Client::new(gateway.http);
    let mut codes = Vec::new();
    for i in 0..4 {
        let xff = format!("203.0.113.{i}");
        codes.push(
            client
                .send("GET", HOST, "/", &[("x-forwarded-for", &xff)])
                .await
                .status,
        );
    }
    assert_eq!(codes, [200, 200, 429, 429]);

    // Behind a trusted proxy, each forwarded client has its own bucket.
    let gateway = Gateway::start_with_args(&files, &["--trusted-proxy", "127.0.0.1/32"]);
    let client = Client::new(gateway.http);
    for i in 0..4 {
        let xff = format!("203.0.113.{i}, 127.0.0.1");
        let answer = client
            .send("GET", HOST, "/", &[("x-forwarded-for", &xff)])
            .await;
        assert_eq!(answer.status, 200, "client {i}");
    }
    let third: Vec<u16> = futures::future::join_all(
        (0..3).map(|_| client.send("GET", HOST, "/", &[("x-forwarded-for", "198.51.100.9")])),
    )
    .await
    .iter()
    .map(|a| a.status)
    .collect();
    assert_eq!(third.iter().filter(|s| **s == 200).count(), 2, "{third:?}");
}

#[tokio::test]
async fn consumers_are_limited_separately_and_a_reload_keeps_the_counts() {
    let backend = upstream("backend", Behavior::default()).await;
    let secret = |name: &str, key: &str| {
        format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: default, labels: {{consumer: \"yes\"}}}}
stringData: {{api-key: {key}, consumer: {name}}}
"
        )
    };
    let auth = "apiVersion: ferrogate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: auth, namespace: default}
spec:
  targetRefs: [{kind: ApiRoute, name: api}]
  authentication:
    methods:
    - apiKey: {secretSelector: {consumer: \"yes\"}}
";
    let policy = |requests: u32| {
        limits(&format!(
            "  limits:
  - name: per-consumer
    requests: {requests}
    period: 1h
    key: [{{source: Consumer}}]
"
        ))
    };
    let gateway = Gateway::start(&[
        ("route.yaml", &route(&backend)),
        (
            "secrets.yaml",
            &format!(
                "{}---\n{}",
                secret("alice", "ka-0123456789"),
                secret("bob", "kb-0123456789")
            ),
        ),
        ("auth.yaml", auth),
        ("limits.yaml", &policy(3)),
    ]);
    let client = Arc::new(Client::new(gateway.http));
    let alice = burst(&client, 6, "/", &[("x-api-key", "ka-0123456789")]).await;
    assert_eq!(passed(&alice), 3, "{}", gateway.log());
    let bob = burst(&client, 6, "/", &[("x-api-key", "kb-0123456789")]).await;
    assert_eq!(passed(&bob), 3);
    // Unauthenticated requests are refused before they count.
    assert_eq!(client.get(HOST, "/").await.status, 401);

    // A new snapshot (the limit raised to 4) keeps alice's count: one more.
    let version = gateway.version();
    gateway.write("limits.yaml", &policy(4));
    gateway.wait_for_version_above(version);
    let after = burst(&client, 6, "/", &[("x-api-key", "ka-0123456789")]).await;
    assert!(
        passed(&after) <= 1,
        "{} passed after the reload",
        passed(&after)
    );
}

#[tokio::test]
async fn three_dataplanes_sharing_redis_admit_at_most_the_limit() {
    let redis = Redis::start();
    let backend = upstream("backend", Behavior::default()).await;
    let files = [
        ("route.yaml", route(&backend)),
        (
            "limits.yaml",
            limits(
                "  scope: Global
  failureMode: Closed
  limits:
  - name: shared
    requests: 10
    period: 1h
    key: [{source: Header, name: x-user}]
",
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, y)| (*n, y.as_str())).collect();
    let url = redis.url();
    let gateways: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start_with_args(&files, &["--redis-url", &url]))
        .collect();
    let clients: Vec<Arc<Client>> = gateways
        .iter()
        .map(|g| Arc::new(Client::new(g.http)))
        .collect();

    let mut tasks = Vec::new();
    for i in 0..60 {
        let client = clients[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            client
                .send("GET", HOST, "/", &[("x-user", "shared-user")])
                .await
                .status
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.expect("request"));
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert_eq!(ok, 10, "{codes:?}\n{}", gateways[0].log());
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    assert_eq!(backend.hits(), 10);
    // Each dataplane took part.
    for g in &gateways {
        assert!(metric(g, "decision=\"limited\"") + metric(g, "decision=\"allowed\"") > 0);
    }
}

#[tokio::test]
async fn redis_stopped_mid_test_follows_the_failure_mode() {
    let mut redis = Redis::start();
    let backend = upstream("backend", Behavior::default()).await;
    let route = format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: api, namespace: default}}
spec:
  hosts: [{HOST}]
  rules:
  - name: open
    matches: [{{path: {{type: PathPrefix, value: /open}}}}]
    backends: [{{url: \"http://{0}\"}}]
  - name: closed
    matches: [{{path: {{type: PathPrefix, value: /closed}}}}]
    backends: [{{url: \"http://{0}\"}}]
",
        backend.addr
    );
    let policy = |name: &str, mode: &str| {
        format!(
            "apiVersion: ferrogate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{kind: ApiRoute, name: api, sectionName: {name}}}]
  scope: Global
  failureMode: {mode}
  limits:
  - name: {name}
    requests: 3
    period: 1h
"
        )
    };
    let url = redis.url();
    let gateway = Gateway::start_with_args(
        &[
            ("route.yaml", &route),
            ("open.yaml", &policy("open", "Open")),
            ("closed.yaml", &policy("closed", "Closed")),
        ],
        &["--redis-url", &url, "--redis-timeout", "200ms"],
    );
    let client = Arc::new(Client::new(gateway.http));
    // Redis up: 3 each, counted in Redis.
    assert_eq!(
        passed(&burst(&client, 5, "/closed", &[]).await),
        3,
        "{}",
        gateway.log()
    );
    assert_eq!(passed(&burst(&client, 5, "/open", &[]).await), 3);

    redis.stop();
    // Closed: every request is refused, quickly.
    let started = Instant::now();
    let closed = burst(&client, 5, "/closed", &[]).await;
    assert!(closed.iter().all(|a| a.status == 429), "{closed:?}");
    assert_eq!(closed[0].json()["error"], "rate_limit_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // Open: counted locally instead (a fresh local bucket of 3).
    let open = burst(&client, 5, "/open", &[]).await;
    assert_eq!(passed(&open), 3, "{open:?}");
    assert!(metric(&gateway, "decision=\"store_unavailable\"") >= 10);

    // Redis back (empty): global counting resumes.
    redis.restart();
    support::eventually(
        Duration::from_secs(10),
        "Redis to be used again",
        async || client.get(HOST, "/closed").await.status == 200,
    )
    .await;
}
