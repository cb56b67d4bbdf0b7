//! Routing end to end: every match type, precedence, weighted splits,
//! filters and the headers the gateway adds, through the real binary.

mod support;

use support::{curl, upstream, Behavior, Client, Gateway};

fn route(name: &str, host: &str, rules: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1\nkind: ApiRoute\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts: [\"{host}\"]\n  rules:\n{rules}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_types_and_precedence() {
    let exact = upstream("exact", Behavior::default()).await;
    let long = upstream("long-prefix", Behavior::default()).await;
    let short = upstream("short-prefix", Behavior::default()).await;
    let regex = upstream("regex", Behavior::default()).await;
    let header = upstream("header", Behavior::default()).await;
    let query = upstream("query", Behavior::default()).await;
    let method = upstream("method", Behavior::default()).await;
    let mobile = upstream("mobile", Behavior::default()).await;
    let rules = format!(
        r#"  - name: exact
    matches: [{{path: {{type: Exact, value: /api/items/special}}}}]
    backends: [{{url: "http://{exact}"}}]
  - name: long
    matches: [{{path: {{type: PathPrefix, value: /api/items}}}}]
    backends: [{{url: "http://{long}"}}]
  - name: short
    matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backends: [{{url: "http://{short}"}}]
  - name: regex
    matches: [{{path: {{type: RegularExpression, value: "/v[0-9]+/.*"}}}}]
    backends: [{{url: "http://{regex}"}}]
  - name: header
    matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: X-Canary, value: "yes"}}]}}]
    backends: [{{url: "http://{header}"}}]
  - name: query
    matches: [{{path: {{type: PathPrefix, value: /api}}, queryParams: [{{name: beta, value: "1"}}]}}]
    backends: [{{url: "http://{query}"}}]
  - name: method
    matches: [{{path: {{type: PathPrefix, value: /api}}, methods: [DELETE]}}]
    backends: [{{url: "http://{method}"}}]
  - name: mobile
    matches: [{{path: {{type: PathPrefix, value: /app}}, devices: [mobile]}}]
    backends: [{{url: "http://{mobile}"}}]
"#,
        exact = exact.addr,
        long = long.addr,
        short = short.addr,
        regex = regex.addr,
        header = header.addr,
        query = query.addr,
        method = method.addr,
        mobile = mobile.addr,
    );
    let gateway = Gateway::start(&[("route.yaml", &route("shop", "shop.test", &rules))]);
    let client = Client::new(gateway.http);
    /// Method, path, request headers, and the upstream expected (None: 404).
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        ("GET", "/api/items/special", &[], Some("exact")),
        ("GET", "/api/items/special/x", &[], Some("long-prefix")),
        ("GET", "/api/items", &[], Some("long-prefix")),
        ("GET", "/api/items/1", &[], Some("long-prefix")),
        ("GET", "/api/itemsx", &[], Some("short-prefix")),
        ("GET", "/api/other", &[], Some("short-prefix")),
        ("GET", "/apix", &[], None),
        ("GET", "/v2/things", &[], Some("regex")),
        ("GET", "/v2", &[], None),
        ("GET", "/api/other", &[("x-canary", "yes")], Some("header")),
        ("GET", "/api/other", &[("x-canary", "no")], Some("short-prefix")),
        ("GET", "/api/other?beta=1", &[], Some("query")),
        ("GET", "/api/other?beta=2", &[], Some("short-prefix")),
        ("DELETE", "/api/other", &[], Some("method")),
        (
            "GET",
            "/app/home",
            &[(
                "user-agent",
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            )],
            Some("mobile"),
        ),
        (
            "GET",
            "/app/home",
            &[(
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            )],
            None,
        ),
    ];
    for (method, path, headers, expected) in cases {
        let answer = client.send(method, "shop.test", path, headers).await;
        match expected {
            Some(name) => {
                assert_eq!(
                    answer.status, 200,
                    "{method} {path} {headers:?}: {answer:?}"
                );
                assert_eq!(
                    answer.upstream(),
                    Some(*name),
                    "{method} {path} {headers:?}"
                );
            }
            None => {
                assert_eq!(
                    answer.status, 404,
                    "{method} {path} {headers:?}: {answer:?}"
                );
                let body = answer.json();
                assert_eq!(body["error"], "no_route");
                assert_eq!(
                    body["request_id"].as_str(),
                    answer.headers.get("x-request-id").map(String::as_str)
                );
            }
        }
    }
    // Unknown host: 404 too, and the upstreams saw nothing of it.
    let before = short.hits();
    let answer = client.get("other.test", "/api/x").await;
    assert_eq!(answer.status, 404);
    assert_eq!(short.hits(), before);
    // Host matching ignores case and port.
    let answer = client.get("SHOP.test:8080", "/api/other").await;
    assert_eq!(answer.upstream(), Some("short-prefix"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_holds_within_five_percent() {
    let stable = upstream("stable", Behavior::default()).await;
    let canary = upstream("canary", Behavior::default()).await;
    let rules = format!(
        "  - backends:\n    - {{url: \"http://{}\", weight: 80}}\n    - {{url: \"http://{}\", weight: 20}}\n",
        stable.addr, canary.addr
    );
    let gateway = Gateway::start(&[("route.yaml", &route("split", "split.test", &rules))]);
    let client = Client::new(gateway.http);
    let total = 2000;
    let mut canary_count = 0;
    for _ in 0..total {
        let answer = client.get("split.test", "/").await;
        assert_eq!(answer.status, 200);
        if answer.upstream() == Some("canary") {
            canary_count += 1;
        }
    }
    let share = f64::from(canary_count) / f64::from(total);
    assert!(
        (0.15..=0.25).contains(&share),
        "canary share {share} out of 20% +- 5%"
    );
    assert_eq!(stable.hits() + canary.hits(), total as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_forwarded_headers() {
    let app = upstream("app", Behavior::default()).await;
    let rules = format!(
        r#"  - name: rewrite
    matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    backends: [{{url: "http://{app}"}}]
    filters:
      urlRewrite: {{hostname: internal.test, path: {{type: ReplacePrefixMatch, value: /new}}}}
      requestHeaders: {{set: [{{name: X-Env, value: prod}}], add: [{{name: X-Tag, value: a}}], remove: [X-Debug]}}
      responseHeaders: {{set: [{{name: X-Served-By, value: ferrogate}}], remove: [X-Upstream-Secret]}}
  - name: moved
    matches: [{{path: {{type: Exact, value: /moved}}}}]
    filters:
      redirect: {{scheme: https, hostname: new.test, statusCode: 301}}
  - name: maintenance
    matches: [{{path: {{type: Exact, value: /status}}}}]
    filters:
      directResponse: {{status: 503, body: '{{"maintenance":true}}', contentType: application/json}}
  - name: rest
    backends: [{{url: "http://{app}"}}]
"#,
        app = app.addr
    );
    let gateway = Gateway::start(&[("route.yaml", &route("filters", "f.test", &rules))]);
    let client = Client::new(gateway.http);

    let answer = client
        .send(
            "GET",
            "f.test",
            "/old/items?x=1",
            &[
                ("x-debug", "1"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-request-id", "client-id-1"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = answer.json();
    assert_eq!(seen["uri"], "/new/items?x=1");
    assert_eq!(seen["repeated"], serde_json::json!([]), "{seen}");
    let headers = &seen["headers"];
    assert_eq!(headers["host"], "internal.test");
    assert_eq!(headers["x-env"], "prod");
    assert_eq!(headers["x-tag"], "a");
    assert!(
        headers.get("x-debug").is_none(),
        "removed header reached the upstream"
    );
    assert!(
        headers.get("x-hop").is_none(),
        "hop-by-hop header reached the upstream"
    );
    // Client-supplied X-Forwarded-For is not trusted by default.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "f.test");
    assert_eq!(headers["x-request-id"], "client-id-1");
    assert_eq!(answer.headers["x-request-id"], "client-id-1");
    assert_eq!(answer.headers["x-served-by"], "ferrogate");

    let answer = client.get("f.test", "/moved?a=b").await;
    assert_eq!(answer.status, 301);
    assert_eq!(answer.headers["location"], "https://new.test/moved?a=b");

    let answer = client.get("f.test", "/status").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.json()["maintenance"], true);

    // A request id is generated when the client sends none, and reaches the
    // upstream.
    let answer = client.get("f.test", "/anything").await;
    let id = answer.headers["x-request-id"].clone();
    assert_eq!(id.len(), 32);
    assert_eq!(answer.json()["headers"]["x-request-id"], id.as_str());

    // `Expect: 100-continue` is answered by the gateway (curl waits for the
    // 100 before it sends the body) and not passed on: the body reaches the
    // upstream whole, without the expectation.
    let body = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(body.path(), "b".repeat(200_000)).expect("write body");
    let (code, out) = curl(&[
        "-H",
        "Host: f.test",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "5",
        "--data-binary",
        &format!("@{}", body.path().display()),
        &format!("http://{}/upload", gateway.http),
    ]);
    assert_eq!(code, 0, "{out}");
    let seen: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(seen["method"], "POST", "{out}");
    assert_eq!(seen["body_len"], 200_000, "{out}");
    assert!(seen["headers"].get("expect").is_none(), "{out}");
}

/// A route without header changes or filters: the forwarding fields are
/// written by the gateway's own upstream client, apart from the client's
/// fields (`dataplane::forwarded`). Each reaches the upstream once, with
/// the gateway's value, whatever the client sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_replace_the_clients_and_are_sent_once() {
    let app = upstream("app", Behavior::default()).await;
    let rules = format!("  - backends: [{{url: \"http://{}\"}}]\n", app.addr);
    let gateway = Gateway::start(&[("route.yaml", &route("plain", "p.test", &rules))]);
    let client = Client::new(gateway.http);
    let client_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = client
        .send(
            "GET",
            "p.test",
            "/",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("X-Forwarded-Proto", "https"),
                ("x-forwarded-host", "evil.test"),
                ("x-request-id", "not sane"),
                ("traceparent", client_trace),
                ("tracestate", "vendor=x"),
                ("x-other", "kept"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = answer.json();
    let headers = &seen["headers"];
    assert_eq!(seen["repeated"], serde_json::json!([]), "{seen}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "p.test");
    assert_eq!(headers["x-other"], "kept");
    // An id that is not sane is replaced by a new one, the same both ways.
    let id = answer.headers["x-request-id"].clone();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(headers["x-request-id"], id.as_str());
    // The client's trace continues: same trace id, the gateway's span as
    // the parent, the client's tracestate with it.
    let sent = headers["traceparent"].as_str().expect("traceparent sent");
    assert_eq!(sent.len(), 55, "{sent}");
    assert_eq!(&sent[..36], &client_trace[..36]);
    assert_ne!(&sent[36..52], &client_trace[36..52]);
    assert_eq!(headers["tracestate"], "vendor=x");

    // A sane client id is kept and sent once.
    let answer = client
        .send("GET", "p.test", "/", &[("x-request-id", "client-id-2")])
        .await;
    let seen = answer.json();
    assert_eq!(seen["repeated"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["headers"]["x-request-id"], "client-id-2");
    assert_eq!(answer.headers["x-request-id"], "client-id-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_extend_forwarded_for() {
    let app = upstream("app", Behavior::default()).await;
    let rules = format!("  - backends: [{{url: \"http://{}\"}}]\n", app.addr);
    let gateway = Gateway::start_with_args(
        &[("route.yaml", &route("trust", "t.test", &rules))],
        &["--trusted-proxy", "127.0.0.0/8"],
    );
    let client = Client::new(gateway.http);
    let answer = client
        .send(
            "GET",
            "t.test",
            "/",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    let seen = answer.json();
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(seen["repeated"], serde_json::json!([]), "{seen}");
}
