//! The CRDs printed by `ferrogate crds`, installed with kubectl into a real
//! kube-apiserver: they are accepted and established, every kind takes a
//! realistic object, kubectl shows the printer columns, short names and
//! field docs, the schema refuses bad objects naming the field, and the
//! status subresource takes a controller's writes.
//!
//! The apiserver is 1.20 (what Debian can build here) and kubectl is 1.33.
//! Where a kubectl default needs a newer server, the call says so.
//!
//! Needs kube-apiserver, etcd and kubectl from `scripts/test-deps.sh`
//! (`scripts/test.sh` runs it); without them the tests fail saying so.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Instant;
use testkit::KubeApiserver;

/// The four CRDs, by name.
const CRDS: [&str; 4] = [
    "apiroutes.ferrogate.dev",
    "authpolicies.ferrogate.dev",
    "ratelimitpolicies.ferrogate.dev",
    "tlscertificates.ferrogate.dev",
];

/// One valid object of each kind, written the way a user would.
const EXAMPLES: &str = r#"
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata:
  name: shop
spec:
  hosts: ["shop.example.com", "*.shop.example.com"]
  rules:
  - name: cart
    matches:
    - path: {type: PathPrefix, value: /api/cart}
      methods: [GET, POST]
    - path: {type: Exact, value: /cart}
      headers:
      - {name: x-canary, type: Present}
      devices: [mobile]
    backends:
    - {name: cart, port: 8080, weight: 90}
    - {name: cart-canary, port: 8080, weight: 10}
    timeouts: {request: 10s, connect: 2s}
    retry: {attempts: 2, backoff: 50ms}
    loadBalancer: {type: LeastRequest}
  - name: catalog
    matches:
    - path: {type: RegularExpression, value: "/api/items/[0-9]+"}
    backends:
    - url: http://catalog.internal:9000/v2
    filters:
      cache: {defaultTtl: 30s, keyDevice: true}
      responseHeaders:
        set: [{name: x-served-by, value: ferrogate}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: AuthPolicy
metadata:
  name: shop-auth
spec:
  targetRefs:
  - name: shop
    sectionName: cart
  authentication:
    methods:
    - jwt:
        issuer: https://login.example.com/
        jwksUri: https://login.example.com/.well-known/jwks.json
        audiences: [shop]
  authorization:
    rules:
    - action: Deny
      methods: [DELETE]
    - action: Allow
      organizations: [acme, globex]
---
apiVersion: ferrogate.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: shop-limits
spec:
  targetRefs:
  - name: shop
  scope: Local
  limits:
  - name: add-to-cart
    requests: 35
    period: 1m
    burst: 5
    key:
    - source: Consumer
    - source: Device
    when:
      methods: [POST]
      paths: [/api/cart]
---
apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata:
  name: shop-tls
spec:
  hosts: ["shop.example.com", "*.shop.example.com"]
  secretName: shop-tls
  minVersion: "1.3"
"#;

/// Runs the ferrogate binary built for this test.
fn ferrogate(args: &[&str]) -> Result<String> {
    let bin = env!("CARGO_BIN_EXE_ferrogate");
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {bin}"))?;
    if !out.status.success() {
        bail!(
            "ferrogate {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("ferrogate printed non-UTF-8")
}

/// Starts an apiserver and installs the CRDs; returns it and the CRD YAML.
fn apiserver_with_crds() -> Result<(KubeApiserver, String)> {
    let started = Instant::now();
    let api = KubeApiserver::start_blocking()?;
    eprintln!("kube-apiserver ready in {:?}", api.startup_duration());

    let yaml = ferrogate(&["crds"])?;
    api.kubectl_apply_stdin(&yaml)
        .context("the apiserver refused the output of `ferrogate crds`")?;
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let crds: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
    wait.extend(crds.iter().map(String::as_str));
    api.kubectl(&wait)?;
    eprintln!("CRDs established {:?} after start", started.elapsed());
    Ok((api, yaml))
}

/// The facts of an OpenAPI schema that a YAML reader could mangle: every
/// property path (`spec.rules[].matches[]...`), and the enum and required
/// lists under it.
fn schema_facts(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    for list in ["enum", "required"] {
        if let Some(values) = schema.get(list) {
            out.insert(format!("{prefix} {list} {values}"));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            out.insert(path.clone());
            schema_facts(sub, &path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        schema_facts(items, &format!("{prefix}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        schema_facts(values, &format!("{prefix}{{}}"), out);
    }
}

fn schema_of(crd: &Value) -> Result<&Value> {
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .with_context(|| format!("no openAPIV3Schema in {}", crd["metadata"]["name"]))
}

/// Whitespace-normalized text, so assertions survive kubectl's line
/// wrapping.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn crds_install_and_serve_the_four_kinds() -> Result<()> {
    let (api, yaml) = apiserver_with_crds()?;

    // The apiserver stores the schema we generated, property for property
    // and enum value for enum value. This catches YAML 1.1 readers (kubectl,
    // helm) turning keys such as `on`, `yes` or `no` into booleans (and the
    // same happens to users' manifests), and anything the server drops.
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let generated = Value::deserialize(doc).context("parsing `ferrogate crds` output")?;
        if generated.is_null() {
            continue;
        }
        let name = generated["metadata"]["name"]
            .as_str()
            .context("a generated CRD without metadata.name")?;
        let stored: Value =
            serde_json::from_str(&api.kubectl(&["get", "crd", name, "-o", "json"])?)?;
        let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
        schema_facts(schema_of(&generated)?, "", &mut want);
        schema_facts(schema_of(&stored)?, "", &mut got);
        ensure!(
            want == got,
            "CRD {name}: the apiserver stored a different schema than `ferrogate crds` printed \
             (a YAML 1.1 reader such as kubectl may have read a key as a boolean).\n\
             only generated: {:?}\nonly stored: {:?}",
            want.difference(&got).collect::<Vec<_>>(),
            got.difference(&want).collect::<Vec<_>>()
        );
    }

    let applied = api.kubectl_apply_stdin(EXAMPLES)?;
    for created in [
        "apiroute.ferrogate.dev/shop created",
        "authpolicy.ferrogate.dev/shop-auth created",
        "ratelimitpolicy.ferrogate.dev/shop-limits created",
        "tlscertificate.ferrogate.dev/shop-tls created",
    ] {
        ensure!(
            applied.contains(created),
            "missing `{created}` in:\n{applied}"
        );
    }

    // Nothing of the examples was pruned: what we wrote is what is stored.
    let route: Value =
        serde_json::from_str(&api.kubectl(&["get", "apiroute", "shop", "-o", "json"])?)?;
    ensure!(
        route["spec"]["rules"][0]["backends"][1]["weight"] == 10,
        "{route}"
    );
    ensure!(
        route["spec"]["rules"][0]["matches"][1]["devices"][0] == "mobile",
        "{route}"
    );
    ensure!(
        route["spec"]["rules"][0]["retry"]["backoff"] == "50ms",
        "{route}"
    );
    ensure!(
        route["spec"]["rules"][1]["filters"]["cache"]["keyDevice"] == true,
        "{route}"
    );

    // Printer columns.
    let table = api.kubectl(&["get", "apiroutes"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header == ["NAME", "HOSTS", "ACCEPTED", "PROGRAMMED", "AGE"],
        "unexpected columns:\n{table}"
    );
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with("shop ") && l.contains("shop.example.com")),
        "no row for shop with its hosts:\n{table}"
    );

    // Short names, and the `ferrogate` category listing all four kinds.
    let short = api.kubectl(&["get", "ar", "shop", "-o", "name"])?;
    ensure!(short.trim() == "apiroute.ferrogate.dev/shop", "{short}");
    let policies = api.kubectl(&["get", "authp,rlp,tlscert", "-o", "name"])?;
    for name in [
        "authpolicy.ferrogate.dev/shop-auth",
        "ratelimitpolicy.ferrogate.dev/shop-limits",
        "tlscertificate.ferrogate.dev/shop-tls",
    ] {
        ensure!(policies.contains(name), "missing {name} in:\n{policies}");
    }
    let all = api.kubectl(&["get", "ferrogate", "-o", "name"])?;
    ensure!(
        all.lines().count() == 4,
        "category ferrogate should list 4 objects:\n{all}"
    );

    // Field docs reach `kubectl explain` (kubectl 1.33 asks for OpenAPI v3,
    // which 1.20 does not serve, and falls back to v2 by itself). The
    // apiserver adds a new CRD to its OpenAPI document a moment after the
    // CRD is Established and served, so the first explain may not find it.
    let explain = words(&explain_eventually(&api, "apiroute.spec.rules")?);
    for phrase in [
        "Conditions a request must meet; the rule applies when any one match holds.",
        "Where matching requests go. Traffic is split by `weight`.",
    ] {
        ensure!(
            explain.contains(phrase),
            "`{phrase}` not in kubectl explain:\n{explain}"
        );
    }
    let explain = words(&explain_eventually(
        &api,
        "ratelimitpolicy.spec.limits.period",
    )?);
    ensure!(explain.contains("The period, 1s to 24h."), "{explain}");
    Ok(())
}

/// `kubectl explain FIELD`, tried again for up to 30 s while the apiserver
/// has not published the CRD's schema yet.
fn explain_eventually(api: &KubeApiserver, field: &str) -> Result<String> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match api.kubectl(&["explain", field]) {
            Ok(text) => return Ok(text),
            Err(error) if Instant::now() < deadline => {
                eprintln!("kubectl explain {field} not ready yet: {error}");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(error) => return Err(error),
        }
    }
}

#[test]
fn schema_refuses_invalid_objects_naming_the_field() -> Result<()> {
    let (api, _) = apiserver_with_crds()?;

    let route = |name: &str, spec: &str| {
        format!("apiVersion: ferrogate.dev/v1alpha1\nkind: ApiRoute\nmetadata:\n  name: {name}\nspec:\n{spec}")
    };
    // (kind/name, manifest, field named in the error, reason in the error)
    let cases = [
        (
            "apiroute/no-hosts",
            route("no-hosts", "  hosts: []\n  rules: [{backends: [{name: a, port: 80}]}]\n"),
            "spec.hosts",
            "should have at least 1 items",
        ),
        (
            "apiroute/big-port",
            route(
                "big-port",
                "  hosts: [a.example.com]\n  rules: [{backends: [{name: a, port: 70000}]}]\n",
            ),
            "spec.rules.backends.port",
            "less than or equal to 65535",
        ),
        (
            "apiroute/glob",
            route(
                "glob",
                "  hosts: [a.example.com]\n  rules:\n  - matches: [{path: {type: Glob, value: /x}}]\n    backends: [{name: a, port: 80}]\n",
            ),
            "spec.rules.matches.path.type",
            r#"Unsupported value: "Glob""#,
        ),
        (
            "apiroute/no-rules",
            route("no-rules", "  hosts: [a.example.com]\n"),
            "spec.rules",
            "Required value",
        ),
        (
            "ratelimitpolicy/minutes",
            "apiVersion: ferrogate.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: minutes\n\
             spec:\n  targetRefs: [{name: shop}]\n  limits: [{name: cart, requests: 5, period: \"5 minutes\"}]\n"
                .to_string(),
            "spec.limits.period",
            "should match",
        ),
        (
            "tlscertificate/no-secret",
            "apiVersion: ferrogate.dev/v1alpha1\nkind: TlsCertificate\nmetadata:\n  name: no-secret\n\
             spec:\n  hosts: [a.example.com]\n"
                .to_string(),
            "spec.secretName",
            "Required value",
        ),
    ];

    let mut failures = Vec::new();
    for (object, manifest, field, reason) in &cases {
        // `--validate=false` so that the apiserver, not kubectl, judges: a
        // controller or `helm --skip-schema-validation` skips kubectl's
        // client-side check. (kubectl 1.33 falls back to that check because
        // 1.20 has no server-side field validation.)
        let out = api.kubectl_output(&["apply", "--validate=false", "-f", "-"], Some(manifest))?;
        if out.success() {
            failures.push(format!("{object} was accepted:\n{manifest}"));
        } else if !(out.stderr.contains(field) && out.stderr.contains(reason)) {
            failures.push(format!(
                "{object}: the error should name `{field}` and say `{reason}`, got: {}",
                out.stderr.trim()
            ));
        }
        let get = api.kubectl_output(&["get", object, "--ignore-not-found", "-o", "name"], None)?;
        if !get.stdout.trim().is_empty() {
            failures.push(format!("{object} exists although it was refused"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn status_subresource_takes_controller_writes() -> Result<()> {
    let (api, _) = apiserver_with_crds()?;
    api.kubectl_apply_stdin(EXAMPLES)?;

    // A merge patch of the status subresource, as a simple controller
    // writes it. `message: ""` matters: conditions always carry a message
    // and the controller sends an empty one when there is nothing to say.
    api.kubectl(&[
        "patch",
        "apiroute",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"observedGeneration":1,"conditions":[{"type":"Accepted","status":"True","reason":"Accepted","message":"","observedGeneration":1,"lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
    ])?;

    // Server-side apply of the status, as the controller does through
    // kube-rs. `--validate=false`: kubectl 1.33 defaults to server-side field
    // validation, which 1.20 lacks, and then validates on the client with the
    // full schema, where a status-only object lacks the required `spec`.
    // `--force-conflicts`: the patch above made `kubectl-patch` a manager of
    // `conditions`; a controller owns its status and forces, as kube-rs's
    // `PatchParams::apply(..).force()` does.
    let status = r#"
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata:
  name: shop
status:
  observedGeneration: 1
  conditions:
  - type: Programmed
    status: "True"
    reason: Programmed
    message: "1/1 dataplanes serve generation 1"
    observedGeneration: 1
    lastTransitionTime: "2026-01-01T00:00:01Z"
  dataplanes: "1/1"
"#;
    api.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=ferrogate-test-controller",
            "--force-conflicts",
            "--validate=false",
            "-f",
            "-",
        ],
        status,
    )?;

    let route: Value = serde_json::from_str(&api.kubectl(&[
        "get",
        "ar",
        "shop",
        "-o",
        "json",
        "--show-managed-fields",
    ])?)?;
    let conditions = route["status"]["conditions"]
        .as_array()
        .context("no status.conditions after the writes")?;
    let status_of = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .map(|c| c["status"].clone())
    };
    // Server-side apply replaced the list with the applied one: the field
    // manager owns `conditions` as a whole (an atomic list).
    ensure!(status_of("Programmed") == Some("True".into()), "{route}");
    ensure!(route["status"]["dataplanes"] == "1/1", "{route}");
    // Status writes do not bump the generation (only spec changes do).
    ensure!(route["metadata"]["generation"] == 1, "{route}");
    let managers: Vec<&str> = route["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|f| f["manager"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        managers.contains(&"ferrogate-test-controller"),
        "the field manager is not recorded: {managers:?}"
    );

    // The printer columns read the conditions.
    api.kubectl(&[
        "patch",
        "apiroute",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Accepted","status":"True","reason":"Accepted","message":""},{"type":"Programmed","status":"False","reason":"Pending","message":"0/1 dataplanes"}]}}"#,
    ])?;
    let table = api.kubectl(&["get", "ar", "shop", "--no-headers"])?;
    let row: Vec<&str> = table.split_whitespace().collect();
    ensure!(
        row.get(2) == Some(&"True") && row.get(3) == Some(&"False"),
        "ACCEPTED/PROGRAMMED columns should read True/False: {table}"
    );

    // Writes to the main resource cannot change the status.
    api.kubectl(&[
        "patch",
        "apiroute",
        "shop",
        "--type=merge",
        "-p",
        r#"{"status":{"dataplanes":"9/9"}}"#,
    ])?;
    let dataplanes = api.kubectl(&["get", "ar", "shop", "-o", "jsonpath={.status.dataplanes}"])?;
    ensure!(
        dataplanes == "1/1",
        "status changed through the main resource: {dataplanes}"
    );
    Ok(())
}
