//! End to end: aggregate rules call several upstreams in parallel and
//! merge their JSON; slow and failing parts under both failure policies.

mod scripted;
mod support;

use scripted::{metric, scripted, RawClient, Reply, Scripted};
use std::time::{Duration, Instant};
use support::{blocking_get, Gateway};

struct Parts {
    featured: Scripted,
    cart: Scripted,
    slow: Scripted,
    broken: Scripted,
}

async fn parts() -> Parts {
    Parts {
        featured: scripted(|_, _| {
            Reply::json(r#"{"items":[1,2,3],"big":123456789012345678901234567890}"#)
        })
        .await,
        cart: scripted(|seen, _| {
            let auth = seen
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            Reply::json(format!("{{\"count\":2,\"auth\":\"{auth}\"}}"))
        })
        .await,
        slow: scripted(|_, _| Reply::json("{\"late\":true}").delay(Duration::from_secs(2))).await,
        broken: scripted(|_, _| Reply::json("{\"error\":true}").status(500)).await,
    }
}

fn home_yaml(p: &Parts, policy: &str, with_failures: bool) -> String {
    let failing = if with_failures {
        format!(
            "      - name: recommendations
        backend: {{url: \"{}\"}}
        path: /recommendations
        timeout: 300ms
      - name: user
        backend: {{url: \"{}\"}}
        path: /users/me
        timeout: 1s
",
            p.slow.url(),
            p.broken.url()
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: home, namespace: default}}
spec:
  hosts: [home.test]
  rules:
  - name: home
    matches: [{{path: {{type: Exact, value: /}}}}]
    aggregate:
      onPartFailure: {policy}
      parts:
      - name: featured
        backend: {{url: \"{}\"}}
        path: /products/featured?limit=3
        timeout: 1s
      - name: cart
        backend: {{url: \"{}\"}}
        path: /cart
        timeout: 1s
        forwardHeaders: [Authorization]
{failing}",
        p.featured.url(),
        p.cart.url()
    )
}

/// Answers are merged under their part names, byte for byte; forwarded
/// headers reach only the parts that list them; every part gets the trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_merged_by_part_name() {
    let p = parts().await;
    let gateway = Gateway::start(&[("home.yaml", &home_yaml(&p, "Omit", false))]);
    let client = RawClient::new(gateway.http);
    let answer = client
        .get(
            "home.test",
            "/",
            &[("authorization", "Bearer abc"), ("cookie", "s=1")],
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(answer.header("x-ferrogate-partial").is_none());
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(
        text.contains("123456789012345678901234567890"),
        "numbers are copied, not re-encoded: {text}"
    );
    let json = answer.json();
    assert_eq!(json["featured"]["items"], serde_json::json!([1, 2, 3]));
    assert_eq!(
        json["cart"],
        serde_json::json!({"count": 2, "auth": "Bearer abc"})
    );

    let featured = &p.featured.seen()[0];
    assert_eq!(featured.uri, "/products/featured?limit=3");
    assert!(
        featured.headers.get("authorization").is_none(),
        "not forwarded to featured"
    );
    assert!(featured.headers.get("cookie").is_none());
    let cart = &p.cart.seen()[0];
    let request_id = answer.header("x-request-id").expect("request id");
    for seen in [featured, cart] {
        assert_eq!(
            seen.headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            Some(request_id)
        );
        assert!(seen.headers.contains_key("traceparent"));
    }
    let a = featured.headers["traceparent"].to_str().expect("ascii");
    let b = cart.headers["traceparent"].to_str().expect("ascii");
    assert_eq!(a[3..35], b[3..35], "one trace");
    assert_ne!(a[36..52], b[36..52], "a span per part");
}

/// Omit: a part past its timeout and a failing part are left out and named
/// in x-ferrogate-partial; the answer does not wait for the slow part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omit_leaves_out_slow_and_failing_parts() {
    let p = parts().await;
    let gateway = Gateway::start(&[("home.yaml", &home_yaml(&p, "Omit", true))]);
    let client = RawClient::new(gateway.http);
    let started = Instant::now();
    let answer = client.get("home.test", "/", &[]).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        took < Duration::from_millis(1500),
        "waited {took:?} for a 300ms part"
    );
    assert_eq!(
        answer.header("x-ferrogate-partial"),
        Some("recommendations, user")
    );
    let json = answer.json();
    assert!(json.get("featured").is_some());
    assert!(json.get("cart").is_some());
    assert!(json.get("recommendations").is_none());
    assert!(json.get("user").is_none());

    let metrics = blocking_get(gateway.admin, "/metrics");
    let part = |name: &str, result: &str| {
        metric(
            &metrics,
            "ferrogate_aggregate_parts_total",
            &format!("route=\"default/home\",rule=\"home\",part=\"{name}\",result=\"{result}\""),
        )
    };
    assert_eq!(part("featured", "ok"), 1.0, "{metrics}");
    assert_eq!(part("recommendations", "timeout"), 1.0, "{metrics}");
    assert_eq!(part("user", "status"), 1.0, "{metrics}");
}

/// Fail: any failed part makes the whole answer a 502 naming the parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_answers_502() {
    let p = parts().await;
    let gateway = Gateway::start(&[("home.yaml", &home_yaml(&p, "Fail", true))]);
    let client = RawClient::new(gateway.http);
    let started = Instant::now();
    let answer = client.get("home.test", "/", &[]).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(
        answer.header("x-ferrogate-partial"),
        Some("recommendations, user")
    );
    assert_eq!(answer.json()["error"], "aggregate_part_failed");
}

/// Omit with every part failing is a 502 as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omit_with_nothing_left_is_502() {
    let broken = scripted(|_, _| Reply::json("not json").status(200)).await;
    let yaml = format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: home, namespace: default}}
spec:
  hosts: [home.test]
  rules:
  - name: home
    aggregate:
      parts:
      - name: only
        backend: {{url: \"{}\"}}
        path: /x
",
        broken.url()
    );
    let gateway = Gateway::start(&[("home.yaml", &yaml)]);
    let answer = RawClient::new(gateway.http)
        .get("home.test", "/", &[])
        .await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-ferrogate-partial"), Some("only"));
}
