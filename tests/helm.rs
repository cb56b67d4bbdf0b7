//! The Helm chart (`charts/ferrogate`) against the real test kube-apiserver:
//!
//! - `helm lint --strict`, with the default values and with every value
//!   combination below;
//! - `helm template` output for the default values and for a few
//!   meaningful combinations, each applied with `kubectl apply
//!   --dry-run=server` (the apiserver validates every object against its
//!   own schemas), plus the properties the chart promises (security
//!   settings, no API access for dataplanes, the stream's NetworkPolicy);
//! - the API versions the chart picks on an old (1.20: HPA v2beta2, PDB
//!   policy/v1beta1) and a new cluster (autoscaling/v2, policy/v1);
//! - `helm install`, `helm upgrade` and `helm uninstall`: the objects are
//!   created, updated and removed, the certgen hook Job runs before install
//!   and upgrade, and the ServiceAccounts have exactly the access intended
//!   (`kubectl auth can-i`).
//!
//! Nothing runs pods on the test apiserver (no scheduler, no kubelet, no
//! controller-manager), so the test plays the Job controller: when the hook
//! Job appears, it marks it Complete, which is what Helm waits for.
//!
//! Needs kube-apiserver, etcd, kubectl and helm from `scripts/test-deps.sh`
//! (`scripts/test.sh` runs it); without them the tests fail saying so.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::KubeApiserver;

const NAMESPACE: &str = "gateway";
const RELEASE: &str = "edge";
/// The release's full name (`RELEASE-ferrogate`).
const FULLNAME: &str = "edge-ferrogate";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/ferrogate")
}

/// Helm with private config/cache/data folders (never the user's), and the
/// apiserver's kubeconfig when there is one.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    fn new(api: Option<&KubeApiserver>) -> Result<Helm> {
        let bin = testkit::tools_bin()?.join("helm");
        ensure!(
            bin.is_file(),
            "{} is missing: run scripts/test-deps.sh (it installs helm next to kubectl)",
            bin.display()
        );
        Ok(Helm {
            bin,
            home: tempfile::tempdir()?,
            kubeconfig: api.map(|a| a.kubeconfig_path().to_path_buf()),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (var, dir) in [
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.path().join(dir));
        }
        cmd.env_remove("KUBECONFIG");
        if let Some(kubeconfig) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(kubeconfig);
        }
        cmd.args(args);
        cmd
    }

    /// Runs helm; its stdout, or an error with its stderr.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running helm {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "helm {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `helm template` of the chart with `values` (`--set`-style pairs) and
    /// `extra` arguments.
    fn template(&self, values: &[&str], extra: &[&str]) -> Result<String> {
        let chart = chart();
        let chart = chart.to_str().context("chart path is not UTF-8")?;
        let mut args = vec!["template", RELEASE, chart, "--namespace", NAMESPACE];
        for v in values {
            args.extend(["--set", v]);
        }
        args.extend(extra);
        self.run(&args)
    }
}

/// The documents of a multi-document YAML stream, as JSON values.
fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).context("parsing rendered YAML")?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                .collect();
            format!("no {kind} {name} in the output; have {have:?}")
        })
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The pod templates of every workload in `docs`, with the workload's name.
fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
        .map(|d| {
            (
                format!("{}/{}", d["kind"], d["metadata"]["name"]),
                &d["spec"]["template"]["spec"],
            )
        })
        .collect()
}

/// What every rendering of the chart must hold, whatever the values.
fn check_invariants(docs: &[Value]) -> Result<()> {
    let pods = pod_specs(docs);
    // Every container's command line is one the binary accepts: parsed by
    // the real argument parser of `ferrogate`.
    for (workload, spec) in &pods {
        for c in spec["containers"].as_array().into_iter().flatten() {
            let args = strings(&c["args"]);
            let argv = std::iter::once("ferrogate").chain(args.iter().copied());
            if let Err(e) = ferrogate::cli::Cli::try_parse_from(argv) {
                bail!("{workload}: ferrogate refuses the chart's arguments {args:?}:\n{e}");
            }
        }
    }
    ensure!(
        pods.len() >= 3,
        "expected controller, dataplane and certgen pods"
    );
    for (workload, spec) in &pods {
        let psc = &spec["securityContext"];
        ensure!(
            psc["runAsNonRoot"] == true,
            "{workload}: pod not runAsNonRoot"
        );
        ensure!(
            psc["seccompProfile"]["type"] == "RuntimeDefault",
            "{workload}: seccomp is not RuntimeDefault"
        );
        let containers = spec["containers"].as_array().context("no containers")?;
        for c in containers {
            let sc = &c["securityContext"];
            ensure!(
                sc["readOnlyRootFilesystem"] == true,
                "{workload}: writable root fs"
            );
            ensure!(
                sc["allowPrivilegeEscalation"] == false,
                "{workload}: privilege escalation allowed"
            );
            ensure!(
                strings(&sc["capabilities"]["drop"]) == ["ALL"],
                "{workload}: capabilities not dropped"
            );
            ensure!(
                c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object(),
                "{workload}: no resources"
            );
        }
    }
    // Dataplane: no token, no RBAC binding, probes on the admin port.
    let dataplane = find(docs, "Deployment", &format!("{FULLNAME}-dataplane"))?;
    let spec = &dataplane["spec"]["template"]["spec"];
    ensure!(
        spec["automountServiceAccountToken"] == false,
        "the dataplane pod mounts a token"
    );
    let container = &spec["containers"][0];
    ensure!(container["readinessProbe"]["httpGet"]["path"] == "/readyz");
    ensure!(container["livenessProbe"]["httpGet"]["path"] == "/healthz");
    ensure!(container["readinessProbe"]["httpGet"]["port"] == "admin");
    let dataplane_sa = spec["serviceAccountName"].as_str().unwrap_or_default();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            ensure!(
                subject["name"] != dataplane_sa,
                "the dataplane ServiceAccount is bound by {}",
                binding["metadata"]["name"]
            );
        }
    }
    // Controller: leader election flags.
    let controller = find(docs, "Deployment", &format!("{FULLNAME}-controller"))?;
    let args = strings(&controller["spec"]["template"]["spec"]["containers"][0]["args"]);
    ensure!(args.first() == Some(&"controller"), "{args:?}");
    for flag in [
        "--leader-election-namespace=gateway",
        "--leader-election-name=edge-ferrogate-controller",
    ] {
        ensure!(
            args.contains(&flag),
            "controller args lack {flag}: {args:?}"
        );
    }
    // The certgen hook runs before install and upgrade.
    let job = find(docs, "Job", &format!("{FULLNAME}-certgen"))?;
    ensure!(
        job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade",
        "{job}"
    );
    ensure!(
        strings(&job["spec"]["template"]["spec"]["containers"][0]["args"]).first()
            == Some(&"certgen")
    );
    Ok(())
}

/// A stand-in for the Prometheus Operator's ServiceMonitor CRD, so that
/// the apiserver knows the kind (its schema is the operator's business).
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

/// Value combinations that change the rendered objects in meaningful ways.
const COMBINATIONS: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    (
        "nodeport-fixed-replicas-redis",
        &[
            "dataplane.service.type=NodePort",
            "dataplane.service.nodePorts.http=30080",
            "dataplane.service.nodePorts.https=30443",
            "dataplane.service.externalTrafficPolicy=Local",
            "dataplane.autoscaling.enabled=false",
            "dataplane.replicas=3",
            "dataplane.trustedProxies={10.0.0.0/8}",
            "redis.url=redis://redis.gateway.svc:6379",
            "redis.timeout=250ms",
            "tracing.otlpEndpoint=http://otel-collector.observability:4318",
            "tracing.sample=0.1",
            "dataplane.accessLog.enabled=false",
            "controller.watchNamespaces={shop,payments}",
            "controller.podDisruptionBudget.enabled=false",
        ],
    ),
    (
        "clusterip-monitoring-secret-redis",
        &[
            "dataplane.service.type=ClusterIP",
            "redis.existingSecret.name=redis-url",
            "metrics.serviceMonitor.enabled=true",
            "metrics.dashboard.enabled=true",
            "dataplane.autoscaling.targetMemoryUtilizationPercentage=80",
            "networkPolicy.dataplaneAdminFrom[0].namespaceSelector.matchLabels.name=monitoring",
            "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ],
    ),
    (
        "no-networkpolicy-no-pdb-existing-accounts",
        &[
            "networkPolicy.enabled=false",
            "dataplane.podDisruptionBudget.enabled=false",
            "controller.serviceAccount.create=false",
            "controller.serviceAccount.name=platform-controller",
            "dataplane.serviceAccount.create=false",
            "dataplane.serviceAccount.name=platform-dataplane",
        ],
    ),
];

#[test]
fn lint_strict_passes_for_every_combination() -> Result<()> {
    let helm = Helm::new(None)?;
    let chart = chart();
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    for (name, values) in COMBINATIONS {
        let mut args = vec!["lint", "--strict", chart];
        for v in *values {
            args.extend(["--set", v]);
        }
        let out = helm
            .run(&args)
            .with_context(|| format!("combination {name}"))?;
        ensure!(out.contains("0 chart(s) failed"), "{name}: {out}");
    }
    Ok(())
}

#[test]
fn schema_refuses_bad_values_naming_them() -> Result<()> {
    let helm = Helm::new(None)?;
    for (value, named) in [
        ("dataplane.service.type=Ingress", "/dataplane/service/type"),
        ("dataplane.replicaz=3", "replicaz"),
        ("controller.replicas=0", "/controller/replicas"),
        (
            "dataplane.containerPorts.http=80",
            "/dataplane/containerPorts/http",
        ),
        ("redis.url=localhost:6379", "/redis/url"),
        (
            "controller.leaderElection.leaseDuration=15",
            "/controller/leaderElection/leaseDuration",
        ),
    ] {
        let err = match helm.template(&[value], &[]) {
            Ok(_) => bail!("--set {value} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains(named),
            "--set {value}: error does not name {named}: {err}"
        );
    }
    Ok(())
}

#[test]
fn api_versions_follow_the_cluster() -> Result<()> {
    // A current cluster (helm's built-in capabilities): autoscaling/v2 and
    // policy/v1.
    let helm = Helm::new(None)?;
    let docs = documents(&helm.template(&[], &[])?)?;
    let hpa = find(
        &docs,
        "HorizontalPodAutoscaler",
        &format!("{FULLNAME}-dataplane"),
    )?;
    ensure!(
        hpa["apiVersion"] == "autoscaling/v2",
        "{}",
        hpa["apiVersion"]
    );
    let pdb = find(
        &docs,
        "PodDisruptionBudget",
        &format!("{FULLNAME}-dataplane"),
    )?;
    ensure!(pdb["apiVersion"] == "policy/v1", "{}", pdb["apiVersion"]);
    check_invariants(&docs)?;

    // The 1.20 test apiserver: what it serves decides.
    let api = KubeApiserver::start_blocking()?;
    let helm = Helm::new(Some(&api))?;
    let docs = documents(&helm.template(&[], &["--validate"])?)?;
    let hpa = find(
        &docs,
        "HorizontalPodAutoscaler",
        &format!("{FULLNAME}-dataplane"),
    )?;
    ensure!(
        hpa["apiVersion"] == "autoscaling/v2beta2",
        "{}",
        hpa["apiVersion"]
    );
    let pdb = find(
        &docs,
        "PodDisruptionBudget",
        &format!("{FULLNAME}-dataplane"),
    )?;
    ensure!(
        pdb["apiVersion"] == "policy/v1beta1",
        "{}",
        pdb["apiVersion"]
    );
    Ok(())
}

#[test]
fn template_output_passes_server_side_validation() -> Result<()> {
    let api = KubeApiserver::start_blocking()?;
    let helm = Helm::new(Some(&api))?;
    api.kubectl(&["create", "namespace", NAMESPACE])?;
    api.kubectl_apply_stdin(SERVICE_MONITOR_CRD)?;
    api.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
    ])?;

    let mut failures = Vec::new();
    for (name, values) in COMBINATIONS {
        // --validate: render with the cluster's capabilities (1.20 API
        // versions), as helm install does.
        let rendered = helm
            .template(values, &["--validate", "--include-crds"])
            .with_context(|| format!("rendering {name}"))?;
        let docs = documents(&rendered)?;
        if let Err(e) = check_invariants(&docs) {
            failures.push(format!("{name}: {e:#}"));
        }
        let out = api.kubectl_output(
            &["apply", "--dry-run=server", "-n", NAMESPACE, "-f", "-"],
            Some(&rendered),
        )?;
        if !out.success() {
            failures.push(format!(
                "{name}: the apiserver refused the output:\n{}",
                out.stderr
            ));
        }
        let created = out.stdout.lines().count();
        if created != docs.len() {
            failures.push(format!(
                "{name}: {} objects rendered, {created} accepted:\n{}",
                docs.len(),
                out.stdout
            ));
        }

        // What each combination is about.
        let result: Result<()> = (|| {
            let svc = find(&docs, "Service", &format!("{FULLNAME}-dataplane"))?;
            let dp = find(&docs, "Deployment", &format!("{FULLNAME}-dataplane"))?;
            let args = strings(&dp["spec"]["template"]["spec"]["containers"][0]["args"]);
            match *name {
                "defaults" => {
                    ensure!(svc["spec"]["type"] == "LoadBalancer");
                    ensure!(
                        dp["spec"]["replicas"].is_null(),
                        "replicas set beside the HPA"
                    );
                    ensure!(!args.iter().any(|a| a.starts_with("--redis-url")));
                    let np = find(&docs, "NetworkPolicy", &format!("{FULLNAME}-controller"))?;
                    let from = &np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
                    ensure!(from["app.kubernetes.io/component"] == "dataplane", "{np}");
                    ensure!(
                        np["spec"]["ingress"][0]["ports"][0]["port"] == "stream",
                        "{np}"
                    );
                    ensure!(np["spec"]["ingress"].as_array().map(Vec::len) == Some(1));
                    // The admin port: this namespace's pods only.
                    let np = find(&docs, "NetworkPolicy", &format!("{FULLNAME}-dataplane"))?;
                    let admin = &np["spec"]["ingress"][1];
                    ensure!(admin["ports"][0]["port"] == "admin", "{np}");
                    ensure!(
                        admin["from"] == serde_json::json!([{"podSelector": {}}]),
                        "{np}"
                    );
                }
                "nodeport-fixed-replicas-redis" => {
                    ensure!(svc["spec"]["type"] == "NodePort");
                    ensure!(svc["spec"]["ports"][0]["nodePort"] == 30080);
                    ensure!(svc["spec"]["externalTrafficPolicy"] == "Local");
                    ensure!(dp["spec"]["replicas"] == 3);
                    ensure!(!docs.iter().any(|d| d["kind"] == "HorizontalPodAutoscaler"));
                    ensure!(args.contains(&"--redis-url=redis://redis.gateway.svc:6379"));
                    ensure!(args.contains(&"--trusted-proxy=10.0.0.0/8"));
                    ensure!(args.contains(&"--redis-timeout=250ms"));
                    ensure!(
                        args.contains(&"--otlp-endpoint=http://otel-collector.observability:4318")
                    );
                    ensure!(args.contains(&"--access-log=off"));
                    let ctl = find(&docs, "Deployment", &format!("{FULLNAME}-controller"))?;
                    let cargs = strings(&ctl["spec"]["template"]["spec"]["containers"][0]["args"]);
                    ensure!(cargs.contains(&"--namespaces=shop,payments"), "{cargs:?}");
                    ensure!(
                        docs.iter()
                            .filter(|d| d["kind"] == "PodDisruptionBudget")
                            .count()
                            == 1
                    );
                }
                "clusterip-monitoring-secret-redis" => {
                    ensure!(svc["spec"]["type"] == "ClusterIP");
                    // The URL comes from the Secret through the environment
                    // (--redis-url reads FERROGATE_REDIS_URL), never the args.
                    ensure!(
                        !args.iter().any(|a| a.starts_with("--redis-url")),
                        "{args:?}"
                    );
                    let env = &dp["spec"]["template"]["spec"]["containers"][0]["env"];
                    let redis = env
                        .as_array()
                        .and_then(|e| e.iter().find(|v| v["name"] == "FERROGATE_REDIS_URL"))
                        .context("no FERROGATE_REDIS_URL env")?;
                    ensure!(redis["valueFrom"]["secretKeyRef"]["name"] == "redis-url");
                    let sm = find(&docs, "ServiceMonitor", &format!("{FULLNAME}-dataplane"))?;
                    ensure!(sm["spec"]["endpoints"][0]["port"] == "admin");
                    let admin = find(&docs, "Service", &format!("{FULLNAME}-dataplane-admin"))?;
                    for (k, v) in sm["spec"]["selector"]["matchLabels"]
                        .as_object()
                        .context("ServiceMonitor selector")?
                    {
                        ensure!(
                            &admin["metadata"]["labels"][k] == v,
                            "ServiceMonitor misses the admin Service on {k}"
                        );
                    }
                    let cm = find(&docs, "ConfigMap", &format!("{FULLNAME}-dashboards"))?;
                    ensure!(cm["metadata"]["labels"]["grafana_dashboard"] == "1");
                    let dashboard: Value = serde_json::from_str(
                        cm["data"]["ferrogate.json"]
                            .as_str()
                            .context("no ferrogate.json in the dashboard ConfigMap")?,
                    )
                    .context("the dashboard is not JSON")?;
                    ensure!(dashboard["panels"]
                        .as_array()
                        .is_some_and(|p| !p.is_empty()));
                    let image = dp["spec"]["template"]["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or_default();
                    ensure!(image.contains("@sha256:0123"), "{image}");
                    let hpa = find(
                        &docs,
                        "HorizontalPodAutoscaler",
                        &format!("{FULLNAME}-dataplane"),
                    )?;
                    ensure!(hpa["spec"]["metrics"].as_array().map(Vec::len) == Some(2));
                    let np = find(&docs, "NetworkPolicy", &format!("{FULLNAME}-dataplane"))?;
                    let from = &np["spec"]["ingress"][1]["from"];
                    ensure!(from[0]["podSelector"] == serde_json::json!({}), "{np}");
                    ensure!(from[1]["namespaceSelector"].is_object(), "{np}");
                }
                "no-networkpolicy-no-pdb-existing-accounts" => {
                    ensure!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"));
                    ensure!(!docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"
                        && d["metadata"]["name"] == format!("{FULLNAME}-dataplane")));
                    ensure!(
                        dp["spec"]["template"]["spec"]["serviceAccountName"]
                            == "platform-dataplane"
                    );
                    let crb = find(
                        &docs,
                        "ClusterRoleBinding",
                        &format!("{FULLNAME}-controller"),
                    )?;
                    ensure!(crb["subjects"][0]["name"] == "platform-controller");
                    ensure!(!docs.iter().any(|d| d["kind"] == "ServiceAccount"
                        && d["metadata"]["name"] != format!("{FULLNAME}-certgen")));
                }
                other => bail!("no checks for combination {other}"),
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// Runs `helm args` while playing the Job controller: when the certgen
/// hook Job appears, checks it and marks it Complete. Returns helm's
/// stdout and the Job as it was seen.
fn helm_with_hook(api: &KubeApiserver, helm: &Helm, args: &[&str]) -> Result<(String, Value)> {
    let mut child = helm
        .command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting helm {}", args.join(" ")))?;
    let job_name = format!("{FULLNAME}-certgen");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen: Option<Value> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            if !status.success() {
                bail!(
                    "helm {} failed ({status}):\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let job = seen.context("helm finished without creating the certgen hook Job")?;
            return Ok((String::from_utf8_lossy(&out.stdout).into_owned(), job));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("helm {} did not finish within 120 s", args.join(" "));
        }
        if seen.is_none() {
            let out = api.kubectl_output(
                &[
                    "get",
                    "job",
                    &job_name,
                    "-n",
                    NAMESPACE,
                    "-o",
                    "json",
                    "--ignore-not-found",
                ],
                None,
            )?;
            if out.success() && !out.stdout.trim().is_empty() {
                let job: Value = serde_json::from_str(&out.stdout)?;
                // The hook's ServiceAccount and Role exist before the Job.
                api.kubectl(&[
                    "get",
                    "serviceaccount,role,rolebinding",
                    &job_name,
                    "-n",
                    NAMESPACE,
                ])?;
                let now = "2026-01-01T00:00:00Z";
                let status = serde_json::json!({"status": {
                    "startTime": now, "completionTime": now, "succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True",
                                    "lastProbeTime": now, "lastTransitionTime": now}]
                }});
                api.kubectl(&[
                    "patch",
                    "job",
                    &job_name,
                    "-n",
                    NAMESPACE,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &status.to_string(),
                ])?;
                seen = Some(job);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get_json(api: &KubeApiserver, args: &[&str]) -> Result<Value> {
    let mut full = vec!["get"];
    full.extend(args);
    full.extend(["-n", NAMESPACE, "-o", "json"]);
    Ok(serde_json::from_str(&api.kubectl(&full)?)?)
}

fn can_i(api: &KubeApiserver, service_account: &str, verb_resource: &[&str]) -> Result<bool> {
    let who = format!("--as=system:serviceaccount:{NAMESPACE}:{service_account}");
    let mut args = vec!["auth", "can-i"];
    args.extend(verb_resource);
    args.push(&who);
    let out = api.kubectl_output(&args, None)?;
    match out.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!(
            "kubectl auth can-i {verb_resource:?}: {other} {}",
            out.stderr
        ),
    }
}

#[test]
fn install_upgrade_uninstall_on_the_apiserver() -> Result<()> {
    let api = KubeApiserver::start_blocking()?;
    let helm = Helm::new(Some(&api))?;
    let chart = chart();
    let chart = chart.to_str().context("chart path is not UTF-8")?;

    // Install.
    let (notes, job) = helm_with_hook(
        &api,
        &helm,
        &[
            "install",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
        ],
    )?;
    let job_args = strings(&job["spec"]["template"]["spec"]["containers"][0]["args"]);
    ensure!(
        job_args.contains(&"--secret-prefix=edge-ferrogate-stream")
            && job_args.contains(&"--namespace=gateway")
            && job_args.contains(&"--service=edge-ferrogate-controller"),
        "{job_args:?}"
    );
    ensure!(
        notes.contains("kubectl wait apiroute/my-route --for=condition=Programmed"),
        "{notes}"
    );

    // CRDs from crds/, established.
    api.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/apiroutes.ferrogate.dev",
        "crd/authpolicies.ferrogate.dev",
        "crd/ratelimitpolicies.ferrogate.dev",
        "crd/tlscertificates.ferrogate.dev",
    ])?;

    let controller = get_json(&api, &["deployment", "edge-ferrogate-controller"])?;
    ensure!(
        controller["spec"]["replicas"] == 2,
        "{}",
        controller["spec"]["replicas"]
    );
    let dataplane = get_json(&api, &["deployment", "edge-ferrogate-dataplane"])?;
    let pod = &dataplane["spec"]["template"]["spec"];
    ensure!(pod["automountServiceAccountToken"] == false);
    let args = strings(&pod["containers"][0]["args"]);
    ensure!(
        args.contains(&"--controller=https://edge-ferrogate-controller.gateway.svc:9443"),
        "{args:?}"
    );
    let svc = get_json(&api, &["service", "edge-ferrogate-dataplane"])?;
    ensure!(svc["spec"]["type"] == "LoadBalancer");
    let ports: Vec<(i64, i64)> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or(0),
                p["nodePort"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        ports.len() == 2 && ports[0].0 == 80 && ports[1].0 == 443 && ports.iter().all(|p| p.1 > 0),
        "{ports:?}"
    );
    let stream = get_json(&api, &["service", "edge-ferrogate-controller"])?;
    ensure!(stream["spec"]["type"] == "ClusterIP" && stream["spec"]["ports"][0]["port"] == 9443);
    // Read through v2beta2: kubectl would otherwise pick autoscaling/v1.
    let hpa = get_json(
        &api,
        &[
            "horizontalpodautoscalers.v2beta2.autoscaling",
            "edge-ferrogate-dataplane",
        ],
    )?;
    ensure!(
        hpa["apiVersion"] == "autoscaling/v2beta2" && hpa["spec"]["minReplicas"] == 2,
        "{hpa}"
    );
    api.kubectl(&[
        "get",
        "pdb",
        "edge-ferrogate-dataplane",
        "edge-ferrogate-controller",
        "-n",
        NAMESPACE,
    ])?;
    api.kubectl(&[
        "get",
        "networkpolicy",
        "edge-ferrogate-controller",
        "-n",
        NAMESPACE,
    ])?;
    let sa = get_json(&api, &["serviceaccount", "edge-ferrogate-dataplane"])?;
    ensure!(sa["automountServiceAccountToken"] == false, "{sa}");

    // The hook succeeded, so Helm removed the Job and its RBAC.
    let leftovers = api.kubectl(&[
        "get",
        "job,serviceaccount,role,rolebinding",
        "-n",
        NAMESPACE,
        "-o",
        "name",
    ])?;
    ensure!(
        !leftovers.contains("certgen"),
        "hook objects left behind:\n{leftovers}"
    );

    // Least privilege, as the apiserver's RBAC decides it.
    for check in [
        &["get", "secrets"][..],
        &["list", "pods"],
        &["watch", "apiroutes.ferrogate.dev"],
        &["get", "configmaps"],
    ] {
        ensure!(
            !can_i(&api, "edge-ferrogate-dataplane", check)?,
            "the dataplane may {check:?}"
        );
    }
    ensure!(
        can_i(
            &api,
            "edge-ferrogate-controller",
            &["watch", "apiroutes.ferrogate.dev", "--all-namespaces"]
        )?,
        "the controller may not watch ApiRoutes"
    );
    ensure!(
        !can_i(&api, "edge-ferrogate-controller", &["delete", "pods"])?,
        "the controller may delete pods"
    );

    // Upgrade: new values reach the objects; the hook runs again.
    let (_, _) = helm_with_hook(
        &api,
        &helm,
        &[
            "upgrade",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--set",
            "controller.replicas=3",
            "--set",
            "dataplane.service.type=NodePort",
            "--set",
            "dataplane.autoscaling.enabled=false",
            "--set",
            "dataplane.replicas=4",
            "--set",
            "redis.url=redis://redis.gateway.svc:6379",
        ],
    )?;
    let controller = get_json(&api, &["deployment", "edge-ferrogate-controller"])?;
    ensure!(controller["spec"]["replicas"] == 3);
    let dataplane = get_json(&api, &["deployment", "edge-ferrogate-dataplane"])?;
    ensure!(dataplane["spec"]["replicas"] == 4);
    ensure!(
        strings(&dataplane["spec"]["template"]["spec"]["containers"][0]["args"])
            .contains(&"--redis-url=redis://redis.gateway.svc:6379")
    );
    let svc = get_json(&api, &["service", "edge-ferrogate-dataplane"])?;
    ensure!(svc["spec"]["type"] == "NodePort");
    let hpa = api.kubectl(&["get", "hpa", "-n", NAMESPACE, "-o", "name"])?;
    ensure!(
        hpa.trim().is_empty(),
        "the HPA survived autoscaling.enabled=false: {hpa}"
    );
    let history = helm.run(&["history", RELEASE, "--namespace", NAMESPACE, "-o", "json"])?;
    let history: Value = serde_json::from_str(&history)?;
    ensure!(history.as_array().map(Vec::len) == Some(2), "{history}");

    // Uninstall: the release's objects go; the CRDs stay (Helm never
    // deletes CRDs, so users' resources survive).
    helm.run(&["uninstall", RELEASE, "--namespace", NAMESPACE])?;
    let left = api.kubectl(&[
        "get",
        "deployment,service,serviceaccount,networkpolicy,pdb,hpa",
        "-n",
        NAMESPACE,
        "-o",
        "name",
        "-l",
        "app.kubernetes.io/instance=edge",
    ])?;
    ensure!(left.trim().is_empty(), "left after uninstall:\n{left}");
    let crb = api.kubectl_output(
        &["get", "clusterrolebinding", "edge-ferrogate-controller"],
        None,
    )?;
    ensure!(!crb.success(), "the ClusterRoleBinding survived uninstall");
    api.kubectl(&["get", "crd", "apiroutes.ferrogate.dev"])?;
    Ok(())
}
