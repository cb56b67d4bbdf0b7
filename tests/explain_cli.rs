//! `ferrogate explain` through the real binary, against a folder of
//! manifests written here: a matched route, a device-dependent one, an
//! unknown host and a host whose routes all fail.

use std::path::Path;
use std::process::Command;

const ROUTES: &str = r#"
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata:
  name: shop
  namespace: default
spec:
  hosts: ["api.example.com"]
  rules:
  - name: users
    matches:
    - path: {type: PathPrefix, value: /v1/users}
      methods: [GET]
    backends:
    - {url: "http://127.0.0.1:9001", weight: 3}
    - {url: "http://127.0.0.1:9002", weight: 1}
  - name: orders
    matches:
    - path: {type: Exact, value: /v1/orders}
      methods: [POST]
      headers: [{name: X-Tenant, value: acme}]
    backends:
    - {url: "http://127.0.0.1:9003"}
  - name: health
    matches:
    - path: {type: Exact, value: /health}
    filters:
      directResponse: {status: 200, body: "ok"}
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata:
  name: feed
  namespace: media
spec:
  hosts: ["*.media.example.com"]
  rules:
  - name: phones
    matches:
    - path: {type: PathPrefix, value: /feed}
      devices: [mobile]
    backends:
    - {url: "http://127.0.0.1:9010"}
  - name: others
    matches:
    - path: {type: PathPrefix, value: /feed}
    backends:
    - {url: "http://127.0.0.1:9011"}
"#;

const IPHONE: &str = "User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) \
     AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const DESKTOP: &str = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn explain(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .arg("explain")
        .arg("--manifests")
        .arg(dir)
        .args(args)
        .output()
        .expect("run ferrogate explain");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn manifests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("routes.yaml"), ROUTES).expect("write manifests");
    dir
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", run.stdout, run.stderr))
}

#[test]
fn a_matching_request_shows_route_backends_and_weights() {
    let dir = manifests();
    let run = explain(
        dir.path(),
        &["GET", "https://API.example.com:8443/v1/users/42?x=1"],
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(out.contains("vhost:    api.example.com"), "{out}");
    assert!(
        out.contains("route:    default/shop rule users match 0"),
        "{out}"
    );
    assert!(out.contains("path prefix /v1/users"), "{out}");
    assert!(out.contains("weight 3 (75%) -> 127.0.0.1:9001"), "{out}");
    assert!(out.contains("weight 1 (25%) -> 127.0.0.1:9002"), "{out}");
    assert!(out.contains("device:   desktop"), "{out}");
    assert!(out.contains("plain HTTP is served"), "{out}");
    assert!(out.contains("auth:     none"), "{out}");

    let run = explain(dir.path(), &["GET", "https://api.example.com/health"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("direct response 200"), "{}", run.stdout);

    let run = explain(
        dir.path(),
        &[
            "--output",
            "json",
            "GET",
            "https://api.example.com/v1/users",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let v = json(&run);
    assert_eq!(v["outcome"]["result"], "matched");
    assert_eq!(v["outcome"]["route"], "default/shop");
    assert_eq!(v["outcome"]["rule"], "users");
    assert_eq!(v["outcome"]["action"]["type"], "forward");
    assert_eq!(v["outcome"]["action"]["backends"][0]["weight"], 3);
    assert_eq!(
        v["outcome"]["action"]["backends"][0]["endpoints"][0],
        "127.0.0.1:9001"
    );
}

#[test]
fn the_device_class_picks_the_rule() {
    let dir = manifests();
    let mobile = explain(
        dir.path(),
        &["GET", "https://m.media.example.com/feed", "-H", IPHONE],
    );
    assert_eq!(mobile.code, Some(0), "{}\n{}", mobile.stdout, mobile.stderr);
    assert!(
        mobile.stdout.contains("device:   mobile"),
        "{}",
        mobile.stdout
    );
    assert!(
        mobile.stdout.contains("vhost:    *.media.example.com"),
        "{}",
        mobile.stdout
    );
    assert!(
        mobile.stdout.contains("media/feed rule phones"),
        "{}",
        mobile.stdout
    );
    assert!(
        mobile.stdout.contains("127.0.0.1:9010"),
        "{}",
        mobile.stdout
    );

    let desktop = explain(
        dir.path(),
        &[
            "--output",
            "json",
            "GET",
            "https://www.media.example.com/feed/1",
            "-H",
            DESKTOP,
        ],
    );
    assert_eq!(desktop.code, Some(0), "{}", desktop.stderr);
    let v = json(&desktop);
    assert_eq!(v["request"]["device"], "desktop");
    assert_eq!(v["outcome"]["rule"], "others");

    // The client hint alone makes a phone.
    let hint = explain(
        dir.path(),
        &[
            "GET",
            "https://a.media.example.com/feed",
            "-H",
            "Sec-CH-UA-Mobile: ?1",
        ],
    );
    assert!(hint.stdout.contains("rule phones"), "{}", hint.stdout);
}

#[test]
fn an_unknown_host_lists_the_known_ones() {
    let dir = manifests();
    let run = explain(dir.path(), &["GET", "http://apj.example.com/v1/users"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("no virtual host serves apj.example.com"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("close hosts: api.example.com"),
        "{}",
        run.stdout
    );
    // `*.media.example.com` needs a label in front.
    let run = explain(
        dir.path(),
        &["--output", "json", "GET", "https://media.example.com/feed"],
    );
    assert_eq!(run.code, Some(1));
    let v = json(&run);
    assert_eq!(v["outcome"]["result"], "no_host");
    let known = v["outcome"]["known_hosts"].to_string();
    assert!(known.contains("*.media.example.com"), "{known}");
    assert!(known.contains("api.example.com"), "{known}");
}

#[test]
fn no_route_says_why_each_route_failed() {
    let dir = manifests();
    let run = explain(dir.path(), &["GET", "https://api.example.com/v1/orders"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(
        out.contains("no match: virtual host api.example.com"),
        "{out}"
    );
    assert!(
        out.contains("rule users match 0: path /v1/orders does not match"),
        "{out}"
    );
    assert!(
        out.contains("rule orders match 0: method GET is not POST"),
        "{out}"
    );

    let run = explain(
        dir.path(),
        &[
            "--output",
            "json",
            "POST",
            "https://api.example.com/v1/orders",
            "-H",
            "X-Tenant: other",
        ],
    );
    assert_eq!(run.code, Some(1));
    let v = json(&run);
    assert_eq!(v["outcome"]["result"], "no_route");
    let routes = v["outcome"]["routes"].as_array().expect("routes");
    let orders = routes
        .iter()
        .find(|r| r["rule"] == "orders")
        .expect("orders rule listed");
    let reason = orders["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("x-tenant") && reason.contains("\"other\""),
        "{reason}"
    );

    // With the header it matches.
    let run = explain(
        dir.path(),
        &[
            "POST",
            "https://api.example.com/v1/orders",
            "-H",
            "X-Tenant: acme",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stdout);
}

#[test]
fn bad_input_fails_clearly() {
    let dir = manifests();
    let run = explain(dir.path(), &["GET", "ftp://api.example.com/"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("http or https"), "{}", run.stderr);
    let run = explain(
        dir.path(),
        &["GET", "https://api.example.com/", "-H", "no colon"],
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("Name: value"), "{}", run.stderr);
}
