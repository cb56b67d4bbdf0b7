//! HTTPS end to end with curl as the client: certificates chosen by SNI,
//! unknown names refused, 421 for a Host that another certificate serves,
//! HTTP -> HTTPS redirects, and rotation by replacing the Secret.

mod support;

use support::{curl, make_cert, tls_secret_yaml, upstream, Behavior, Gateway};

fn manifests(
    a_chain: &str,
    a_key: &str,
    b_chain: &str,
    b_key: &str,
    backend: &str,
) -> Vec<(String, String)> {
    let routes = format!(
        r#"apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: a, namespace: default}}
spec:
  hosts: [a.test]
  rules:
  - backends: [{{url: "http://{backend}"}}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: b, namespace: default}}
spec:
  hosts: [b.test]
  rules:
  - backends: [{{url: "http://{backend}"}}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: plain, namespace: default}}
spec:
  hosts: [plain.a.test]
  allowPlainHttp: true
  rules:
  - backends: [{{url: "http://{backend}"}}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {{name: a, namespace: default}}
spec: {{hosts: [a.test, "*.a.test"], secretName: a-tls}}
---
apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {{name: b, namespace: default}}
spec: {{hosts: [b.test], secretName: b-tls}}
"#
    );
    vec![
        ("routes.yaml".into(), routes),
        (
            "a-tls.yaml".into(),
            tls_secret_yaml("a-tls", a_chain, a_key),
        ),
        (
            "b-tls.yaml".into(),
            tls_secret_yaml("b-tls", b_chain, b_key),
        ),
    ]
}

fn resolve(host: &str, port: u16) -> String {
    format!("{host}:{port}:127.0.0.1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_redirects_and_421() {
    let app = upstream("app", Behavior::default()).await;
    let (ca_a, chain_a, key_a) = make_cert(&["a.test", "*.a.test"]);
    let (ca_b, chain_b, key_b) = make_cert(&["b.test"]);
    let files = manifests(&chain_a, &key_a, &chain_b, &key_b, &app.addr.to_string());
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, y)| (n.as_str(), y.as_str()))
        .collect();
    let gateway = Gateway::start(&refs);
    let dir = gateway.dir.path().to_owned();
    let ca_a_path = dir.join("ca-a.pem");
    let ca_b_path = dir.join("ca-b.pem");
    std::fs::write(&ca_a_path, &ca_a).expect("write ca");
    std::fs::write(&ca_b_path, &ca_b).expect("write ca");
    let port = gateway.https.port();
    let ca_a = ca_a_path.to_str().expect("path");
    let ca_b = ca_b_path.to_str().expect("path");

    // Each host gets its own certificate (verified against its own CA), and
    // HTTP/2 is negotiated by ALPN.
    for (host, ca) in [("a.test", ca_a), ("b.test", ca_b), ("plain.a.test", ca_a)] {
        let (code, out) = curl(&[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--resolve",
            &resolve(host, port),
            "--cacert",
            ca,
            &format!("https://{host}:{port}/"),
        ]);
        assert_eq!(code, 0, "curl https://{host}: {out}");
        assert_eq!(out.trim(), "200 2", "{host}");
    }
    // The wrong CA fails verification: b.test is not served with a's cert.
    let (code, _) = curl(&[
        "--resolve",
        &resolve("b.test", port),
        "--cacert",
        ca_a,
        &format!("https://b.test:{port}/"),
    ]);
    assert_ne!(code, 0);
    // An unknown SNI gets no certificate at all: the handshake fails even
    // without verification.
    let (code, out) = curl(&[
        "-k",
        "--resolve",
        &resolve("unknown.test", port),
        &format!("https://unknown.test:{port}/"),
    ]);
    assert_ne!(code, 0, "unknown SNI must not get any certificate: {out}");
    // TLS 1.1 is refused.
    let (code, _) = curl(&[
        "-k",
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "--resolve",
        &resolve("a.test", port),
        &format!("https://a.test:{port}/"),
    ]);
    assert_ne!(code, 0, "TLS 1.1 must be refused");
    // A request for b.test on a connection made for a.test: 421.
    let (code, out) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &resolve("a.test", port),
        "--cacert",
        ca_a,
        "-H",
        "Host: b.test",
        &format!("https://a.test:{port}/"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "421");

    // Plain HTTP to a host with a certificate: 308 to HTTPS on the listener's
    // port, path and query kept; the upstream sees nothing.
    let before = app.hits();
    let (code, out) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: a.test",
        &format!("http://127.0.0.1:{}/cart?id=7", gateway.http.port()),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), format!("308 https://a.test:{port}/cart?id=7"));
    assert_eq!(app.hits(), before);
    // ... unless the route allows plain HTTP.
    let (_, out) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: plain.a.test",
        &format!("http://127.0.0.1:{}/", gateway.http.port()),
    ]);
    assert_eq!(out.trim(), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_secret_rotates_the_certificate() {
    let app = upstream("app", Behavior::default()).await;
    let (ca_1, chain_1, key_1) = make_cert(&["a.test", "*.a.test"]);
    let (_, chain_b, key_b) = make_cert(&["b.test"]);
    let files = manifests(&chain_1, &key_1, &chain_b, &key_b, &app.addr.to_string());
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, y)| (n.as_str(), y.as_str()))
        .collect();
    let gateway = Gateway::start(&refs);
    let dir = gateway.dir.path().to_owned();
    let port = gateway.https.port();
    let (ca_2, chain_2, key_2) = make_cert(&["a.test", "*.a.test"]);
    let ca_1_path = dir.join("ca-1.pem");
    let ca_2_path = dir.join("ca-2.pem");
    std::fs::write(&ca_1_path, &ca_1).expect("write");
    std::fs::write(&ca_2_path, &ca_2).expect("write");
    let get = |ca: &std::path::Path| {
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            &resolve("a.test", port),
            "--cacert",
            ca.to_str().expect("path"),
            &format!("https://a.test:{port}/"),
        ])
    };
    assert_eq!(get(&ca_1_path).1.trim(), "200");
    let version = gateway.version();
    gateway.write("a-tls.yaml", &tls_secret_yaml("a-tls", &chain_2, &key_2));
    gateway.wait_for_version_above(version);
    assert_eq!(
        get(&ca_2_path).1.trim(),
        "200",
        "new handshakes get the new certificate"
    );
    assert_ne!(
        get(&ca_1_path).0,
        0,
        "the old certificate is no longer served"
    );

    // A broken Secret (key of another certificate) is refused; the last good
    // certificate keeps serving.
    let (_, _, other_key) = make_cert(&["a.test"]);
    let version = gateway.version();
    gateway.write(
        "a-tls.yaml",
        &tls_secret_yaml("a-tls", &chain_2, &other_key),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        get(&ca_2_path).1.trim(),
        "200",
        "last good certificate keeps serving"
    );
    let log = gateway.log();
    assert!(
        log.contains("TlsCertificate") && log.contains("default"),
        "the problem is reported naming the resource; log:\n{log}"
    );
    let _ = version;
}
