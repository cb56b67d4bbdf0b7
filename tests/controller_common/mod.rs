//! Shared pieces of the controller's end-to-end tests (`tests/controller_*.rs`):
//! a real kube-apiserver with the CRDs installed, `ferrogate controller`
//! as a child process, and polling helpers that fail with the controller's
//! log and the object's state.
#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::KubeApiserver;

/// The four CRDs, by name.
pub const CRDS: [&str; 4] = [
    "apiroutes.ferrogate.dev",
    "authpolicies.ferrogate.dev",
    "ratelimitpolicies.ferrogate.dev",
    "tlscertificates.ferrogate.dev",
];

/// Starts an apiserver and installs the CRDs from `ferrogate crds`.
pub fn apiserver_with_crds() -> Result<KubeApiserver> {
    let api = KubeApiserver::start_blocking()?;
    eprintln!("kube-apiserver ready in {:?}", api.startup_duration());
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .arg("crds")
        .output()
        .context("running ferrogate crds")?;
    if !out.status.success() {
        bail!(
            "ferrogate crds failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    api.kubectl_apply_stdin(&String::from_utf8(out.stdout)?)?;
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let crds: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
    wait.extend(crds.iter().map(String::as_str));
    api.kubectl(&wait)?;
    Ok(api)
}

/// A running `ferrogate controller`; killed on drop.
pub struct ControllerProcess {
    child: Child,
    /// Its `--id`.
    pub id: String,
    /// The stream address it reported, if it serves one.
    pub stream: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

/// Fast leader-election timing for tests: lease 6 s, renew 2 s, retry 1 s.
pub const FAST_LEASE: [&str; 6] = [
    "--lease-duration",
    "6s",
    "--lease-renew",
    "2s",
    "--lease-retry",
    "1s",
];

impl ControllerProcess {
    /// Starts `ferrogate controller --kubeconfig KUBECONFIG --id ID ARGS`
    /// and waits for its `started` line.
    pub fn start(kubeconfig: &Path, id: &str, args: &[&str]) -> Result<ControllerProcess> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
            .arg("controller")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--id", id])
            .args(args)
            .env("RUST_LOG", "info,controller=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ferrogate controller")?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().context("stderr")?;
        let writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = writer.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let mut process = ControllerProcess {
            child,
            id: id.to_owned(),
            stream: None,
            log,
        };
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => bail!("controller {id} did not start; log:\n{}", process.log()),
        };
        let started: Value = serde_json::from_str(&line)
            .with_context(|| format!("the started line is not JSON: {line}"))?;
        process.stream = started["stream"].as_str().and_then(|s| s.parse().ok());
        Ok(process)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to release the lease.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to 10 s for it to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl get KIND NAME -n NS -o json`.
pub fn get(api: &KubeApiserver, kind: &str, namespace: &str, name: &str) -> Result<Value> {
    let text = api.kubectl(&[
        "get",
        kind,
        name,
        "-n",
        namespace,
        "-o",
        "json",
        "--show-managed-fields",
    ])?;
    Ok(serde_json::from_str(&text)?)
}

/// `(status, reason, message)` of a condition.
pub fn condition(object: &Value, type_: &str) -> Option<(String, String, String)> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// Whether a condition has this status and reason.
pub fn has(object: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(object, type_).is_some_and(|(s, r, _)| s == status && r == reason)
}

/// Polls `probe` every 200 ms until it returns `Some`, or fails after
/// `timeout` with `context()` (say what was last seen, and the logs).
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<Option<T>>,
    context: impl Fn() -> String,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}\nlast error: {last_error:?}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The field managers that wrote an object's status.
pub fn status_managers(object: &Value) -> Vec<String> {
    let mut out: Vec<String> = object["metadata"]["managedFields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .filter(|f| f["subresource"] == "status" || f["fieldsV1"].get("f:status").is_some())
                .filter_map(|f| f["manager"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// A Service with one port (80 -> 8080) and its Endpoints at `ip`.
pub fn service_yaml(namespace: &str, name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: {namespace}}}
subsets:
- addresses: [{{ip: {ip}}}]
  ports: [{{name: http, port: 8080}}]
"
    )
}

/// An ApiRoute for `host` with prefix `/` to `service:80`.
pub fn route_yaml(namespace: &str, name: &str, host: &str, service: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backends: [{{name: {service}, port: 80}}]
"
    )
}

/// Writes a kubeconfig for `server` with a bearer token.
pub fn write_token_kubeconfig(
    dir: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
) -> Result<PathBuf> {
    let path = dir.join("kubeconfig-token");
    std::fs::write(&path, testkit::kubeconfig::render(server, ca_pem, token))?;
    Ok(path)
}
