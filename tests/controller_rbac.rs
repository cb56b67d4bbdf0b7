//! The controller runs with exactly the permissions the Helm chart gives it:
//! the chart's ClusterRole, ClusterRoleBinding and ServiceAccount (rendered
//! with `helm template`) are applied to a real kube-apiserver, a token for
//! the ServiceAccount comes from the TokenRequest API (`kubectl create
//! token`), and the controller, using only that token, does everything it
//! does: watch every kind (core/v1 Endpoints on this 1.20 apiserver), read
//! the snapshot stream's Secret (written by `ferrogate certgen`), take the
//! leader Lease, write statuses, record Events, and issue a certificate
//! Secret. Nothing it does is refused, and it cannot do what it does not
//! need (read Pods).

mod controller_common;

use anyhow::{bail, ensure, Context, Result};
use controller_common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const NS: &str = "ferrogate-system";

/// `helm template` of the chart's controller RBAC and ServiceAccounts.
fn chart_rbac() -> Result<String> {
    let helm = testkit::tools_bin()?.join("helm");
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/ferrogate");
    let out = Command::new(&helm)
        .args(["template", "ferrogate", chart, "--namespace", NS])
        .args(["--show-only", "templates/clusterrole.yaml"])
        .args(["--show-only", "templates/clusterrolebinding.yaml"])
        .args(["--show-only", "templates/serviceaccounts.yaml"])
        .output()
        .with_context(|| format!("running {}", helm.display()))?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn the_charts_cluster_role_is_enough() -> Result<()> {
    let api = apiserver_with_crds()?;
    api.kubectl_apply_stdin(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
    ))?;
    let rbac = chart_rbac()?;
    ensure!(rbac.contains("kind: ClusterRole\n"), "{rbac}");
    api.kubectl_apply_stdin(&rbac)?;

    // The stream's certificates, as the chart's pre-install Job makes them.
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args(["certgen", "--namespace", NS, "--kubeconfig"])
        .arg(api.kubeconfig_path())
        .output()?;
    ensure!(
        out.status.success(),
        "certgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let token = api
        .kubectl(&[
            "create",
            "token",
            "ferrogate-controller",
            "-n",
            NS,
            "--duration=1h",
        ])
        .context("TokenRequest for the controller's ServiceAccount")?;
    let dir = tempfile::tempdir()?;
    let kubeconfig =
        write_token_kubeconfig(dir.path(), api.server_url(), api.ca_pem(), token.trim())?;

    // The token is the ServiceAccount's and nothing more.
    let kubectl_as_sa = |args: &[&str]| {
        let mut cmd = api.kubectl_command();
        // kubectl_command presets the admin kubeconfig; a later flag wins.
        cmd.arg("--kubeconfig").arg(&kubeconfig).args(args);
        cmd.output()
    };
    let who = kubectl_as_sa(&["auth", "can-i", "list", "pods", "--all-namespaces"])?;
    ensure!(
        String::from_utf8_lossy(&who.stdout).trim() == "no",
        "the controller's role must not read Pods: {}{}",
        String::from_utf8_lossy(&who.stdout),
        String::from_utf8_lossy(&who.stderr)
    );

    // Something of every kind the controller reads or writes.
    api.kubectl_apply_stdin(&service_yaml("default", "web", "10.213.0.2"))?;
    api.kubectl_apply_stdin(&route_yaml("default", "good", "good.example.com", "web"))?;
    api.kubectl_apply_stdin(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: bad, namespace: default}
spec:
  hosts: [bad.example.com]
  rules:
  - matches: [{path: {type: RegularExpression, value: '(['}}]
    backends: [{name: web, port: 80}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: limits, namespace: default}
spec:
  targetRefs: [{name: good}]
  limits: [{name: all, requests: 100, period: 1m}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: keys, namespace: default}
spec:
  targetRefs: [{name: good}]
  authentication:
    methods:
    - apiKey: {secretSelector: {app: shop}}
",
    )?;
    api.kubectl_apply_stdin(
        "apiVersion: v1
kind: Secret
metadata:
  name: key-1
  namespace: default
  labels: {app: shop}
stringData: {api-key: s3cret-key-0123456789, consumer: alice}
",
    )?;
    let ca_key_pair = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key_pair)?;
    std::fs::write(dir.path().join("ca.crt"), ca.pem())?;
    std::fs::write(dir.path().join("ca.key"), ca_key_pair.serialize_pem())?;
    let ca_cert = dir.path().join("ca.crt").display().to_string();
    let ca_key = dir.path().join("ca.key").display().to_string();
    api.kubectl(&[
        "create", "secret", "tls", "ca", "--cert", &ca_cert, "--key", &ca_key,
    ])?;
    api.kubectl_apply_stdin(
        "apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {name: site, namespace: default}
spec:
  hosts: [good.example.com]
  secretName: site-tls
  issuer: {caSecretName: ca, validity: 1m, renewBefore: 50s}
",
    )?;

    let stream_secret = format!("{NS}/ferrogate-stream-server");
    let controller = ControllerProcess::start(
        &kubeconfig,
        "rbac-1",
        &[
            "--stream-listen",
            "127.0.0.1:0",
            "--stream-tls-secret",
            &stream_secret,
            "--leader-election-namespace",
            NS,
        ],
    )?;
    ensure!(
        controller.stream.is_some(),
        "the stream is served:\n{}",
        controller.log()
    );
    let context = || controller.log();

    for (kind, name) in [
        ("apiroute", "good"),
        ("ratelimitpolicy", "limits"),
        ("authpolicy", "keys"),
        ("tlscertificate", "site"),
    ] {
        wait_for(
            WAIT,
            &format!("{kind}/{name}: Accepted=True"),
            || {
                let v = get(&api, kind, "default", name)?;
                Ok(has(&v, "Accepted", "True", "Accepted").then_some(()))
            },
            context,
        )?;
    }
    let keys = get(&api, "authpolicy", "default", "keys")?;
    ensure!(
        has(&keys, "ResolvedRefs", "True", "ResolvedRefs"),
        "the labelled key Secret is seen: {}",
        keys["status"]
    );
    wait_for(
        WAIT,
        "bad: Accepted=False",
        || {
            let v = get(&api, "apiroute", "default", "bad")?;
            Ok(has(&v, "Accepted", "False", "InvalidRegex").then_some(()))
        },
        context,
    )?;
    wait_for(
        WAIT,
        "a Warning event for bad",
        || {
            let events: Value = serde_json::from_str(&api.kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=bad",
                "-o",
                "json",
            ])?)?;
            Ok(events["items"]
                .as_array()
                .is_some_and(|i| !i.is_empty())
                .then_some(()))
        },
        context,
    )?;
    let lease: Value = serde_json::from_str(&api.kubectl(&[
        "get",
        "lease",
        "ferrogate-controller",
        "-n",
        NS,
        "-o",
        "json",
    ])?)?;
    ensure!(lease["spec"]["holderIdentity"] == "rbac-1", "{lease}");

    // Issuance creates the Secret, and renewal (10 s later) patches it.
    let first = wait_for(
        WAIT,
        "Secret site-tls",
        || {
            let out = api.kubectl_output(
                &[
                    "get",
                    "secret",
                    "site-tls",
                    "-o",
                    "jsonpath={.data.tls\\.key}",
                ],
                None,
            )?;
            Ok((out.success() && !out.stdout.is_empty()).then_some(out.stdout))
        },
        context,
    )?;
    wait_for(
        WAIT,
        "renewed Secret site-tls",
        || {
            let key = api.kubectl(&[
                "get",
                "secret",
                "site-tls",
                "-o",
                "jsonpath={.data.tls\\.key}",
            ])?;
            Ok((key != first).then_some(()))
        },
        context,
    )?;

    let log = controller.log();
    // "code: 403" as kube prints an API error: a bare "403" also matches
    // the microseconds of a log timestamp.
    for refused in ["Forbidden", "forbidden", "code: 403"] {
        ensure!(
            !log.contains(refused),
            "the controller was refused something ({refused}):\n{log}"
        );
    }
    Ok(())
}
