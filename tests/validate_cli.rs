//! `ferrogate validate` end to end: the real binary on real files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn validate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .arg("validate")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run ferrogate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_examples_are_valid() {
    let o = validate(&["examples/"]);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.starts_with("OK: 4 Ferrogate resources, 4 accepted, 0 rejected"),
        "{out}"
    );
}

/// A certificate whose key belongs to another certificate.
fn mismatched_pair() -> (String, String) {
    let a = rcgen::generate_simple_self_signed(vec!["bad.example.com".to_owned()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["bad.example.com".to_owned()]).unwrap();
    (a.cert.pem(), b.signing_key.serialize_pem())
}

fn write_bad_folder(dir: &Path) {
    let (cert, key) = mismatched_pair();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    std::fs::create_dir_all(dir.join("team-a")).unwrap();
    std::fs::write(
        dir.join("team-a/routes.yaml"),
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: catalog, namespace: team-a}
spec:
  hosts: [catalog.example.com]
  rules:
  - name: search
    matches: [{path: {type: PathPrefix, value: /search}}]
    backends: [{name: search, port: 80}]
  - name: items
    matches: [{path: {type: RegularExpression, value: \"/items/[0-9+\"}}]
    backends: [{name: items, port: 80}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: reports, namespace: team-a}
spec:
  hosts: [reports.example.com]
  rules:
  - backends: [{name: billing, namespace: team-b, port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
",
    )
    .unwrap();
    std::fs::write(
        dir.join("team-b.yml"),
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: billing, namespace: team-b}}
spec:
  ports: [{{port: 80}}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {{name: bad, namespace: team-b}}
spec: {{hosts: [bad.example.com], secretName: bad-tls}}
---
apiVersion: v1
kind: Secret
metadata: {{name: bad-tls, namespace: team-b}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
            indent(&cert),
            indent(&key)
        ),
    )
    .unwrap();
}

#[test]
fn problems_are_reported_one_per_line_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    write_bad_folder(dir.path());
    let o = validate(&[dir.path().to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(
        has("team-a/ApiRoute/catalog: spec.rules[1].matches[0].path.value: InvalidRegex: regex parse error: unclosed character class"),
        "{out}"
    );
    assert!(
        has("team-a/ApiRoute/reports: spec.rules[0].backends[0]: RefNotPermitted: Service team-b/billing is in another namespace"),
        "{out}"
    );
    assert!(
        has("team-b/TlsCertificate/bad: spec.secretName: KeyMismatch: Secret team-b/bad-tls: the private key (tls.key) does not match the certificate (tls.crt)"),
        "{out}"
    );
    // The catalog route is rejected as a whole, so its missing backend is
    // not looked up; a missing Service on an accepted route is a warning.
    assert!(has("routes.yaml: document 3: kind Deployment (apps/v1) is not used by Ferrogate; skipped (warning)"), "{out}");
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("FAILED: 3 Ferrogate resources, 1 accepted, 2 rejected"),
        "{out}"
    );
}

#[test]
fn a_missing_backend_is_a_warning_and_does_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: r}
spec:
  hosts: [r.example.com]
  rules: [{backends: [{name: nowhere, port: 8080}]}]
",
    )
    .unwrap();
    let o = validate(&[dir.path().join("r.yaml").to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains(
        "default/ApiRoute/r: spec.rules[0].backends[0]: BackendNotFound: Service default/nowhere not found (warning)"
    ), "{out}");
}

#[test]
fn json_output_parses() {
    let dir = tempfile::tempdir().unwrap();
    write_bad_folder(dir.path());
    std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
    let o = validate(&[dir.path().to_str().unwrap(), "--output", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let problems: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let list = problems.as_array().unwrap();
    assert!(list.iter().any(|p| p["reason"] == "InvalidRegex"
        && p["kind"] == "ApiRoute"
        && p["namespace"] == "team-a"
        && p["name"] == "catalog"
        && p["field"] == "spec.rules[1].matches[0].path.value"
        && p["severity"] == "error"));
    assert!(list.iter().any(|p| p["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("broken.yaml"))
        && p["document"] == 1
        && p["severity"] == "error"));
    assert!(list
        .iter()
        .any(|p| p["reason"] == "RefNotPermitted" && p["severity"] == "warning"));
}
