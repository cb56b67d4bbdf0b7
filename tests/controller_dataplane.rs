//! The whole path on a real kube-apiserver: kubectl ─► apiserver ─►
//! `ferrogate controller` ─► snapshot stream ─► two `ferrogate dataplane`
//! processes ─► upstreams behind a Service's Endpoints.
//!
//! The upstreams are this test binary's own test hosts (tests/support's
//! upstream), re-executed inside a network namespace made for the test
//! (`testkit::netns`), because the apiserver refuses loopback addresses in
//! Endpoints. Shown here:
//!
//! - requests flow; `kubectl wait --for=condition=Programmed` returns only
//!   once both dataplanes serve the generation (`dataplanes: 2/2`), and a
//!   dataplane that does not ACK (SIGSTOP) keeps it `Pending` (`1/2`);
//! - an invalid edit gets `Accepted=False` and traffic keeps flowing on the
//!   last accepted generation;
//! - change -> traffic latency over 50 route changes (p50/p99 printed);
//! - killing the controller leaves traffic flowing; a dataplane restarted
//!   while the controller is down serves its persisted snapshot; a new
//!   controller brings status back to `Programmed`;
//! - a Secret update rotates the served certificate with no failed request
//!   under h2load.
//!
//! Needs root (network namespaces), `ip`, h2load, and the apiserver tools.

mod controller_common;
mod support;

use anyhow::{bail, ensure, Context, Result};
use controller_common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{blocking_get, Client};
use testkit::netns::NetNs;

const WAIT: Duration = Duration::from_secs(30);
const HOST: &str = "shop.test";
/// Set in the re-executed upstream host process: `name=ip:port,...`.
const UPSTREAM_ENV: &str = "FERROGATE_TEST_UPSTREAMS";

/// Not a test of its own: the upstream host process. In a normal run it
/// returns at once; re-executed inside the network namespace with
/// [`UPSTREAM_ENV`] set, it serves tests/support's upstreams until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn upstream_host_process() {
    let Ok(spec) = std::env::var(UPSTREAM_ENV) else {
        return;
    };
    let mut servers = Vec::new();
    for item in spec.split(',') {
        let (name, addr) = item.split_once('=').expect("name=addr");
        servers.push(support::upstream_on(addr, name, support::Behavior::default()).await);
    }
    println!("upstreams ready");
    std::future::pending::<()>().await;
}

/// The upstream host process in the namespace; killed on drop.
struct Upstreams {
    child: Child,
}

impl Upstreams {
    fn start(netns: &NetNs, upstreams: &[(&str, u16)]) -> Result<Upstreams> {
        let spec: Vec<String> = upstreams
            .iter()
            .map(|(name, port)| format!("{name}={}:{port}", netns.inside_ip))
            .collect();
        let mut child = netns
            .command(std::env::current_exe()?)
            .args([
                "upstream_host_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(UPSTREAM_ENV, spec.join(","))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the upstream host in the namespace")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("upstreams ready") {
                    let _ = tx.send(());
                }
            }
        });
        let mut upstreams = Upstreams { child };
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            upstreams.kill();
            bail!("the upstream host did not start in {}", netns.name());
        }
        Ok(upstreams)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `ferrogate dataplane` process fed by the controller; killed on drop.
struct Dataplane {
    child: Child,
    id: String,
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Dataplane {
    fn start(stream: SocketAddr, id: &str, certs: &Path, state: &Path) -> Result<Dataplane> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
            .args([
                "dataplane",
                "--controller",
                &format!("https://127.0.0.1:{}", stream.port()),
            ])
            .args(["--id", id])
            .arg("--tls-cert")
            .arg(certs.join("client.crt"))
            .arg("--tls-key")
            .arg(certs.join("client.key"))
            .arg("--ca")
            .arg(certs.join("ca.crt"))
            .arg("--state-dir")
            .arg(state)
            .args([
                "--http",
                "127.0.0.1:0",
                "--https",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(["--threads", "1"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ferrogate dataplane")?;
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
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "dataplane {id} did not report its listeners: {}",
                    log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        let listening: serde_json::Value = serde_json::from_str(&line)?;
        let addr = |key: &str| -> Result<SocketAddr> {
            listening[key]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("no {key} in {line}"))
        };
        Ok(Dataplane {
            http: addr("http")?,
            https: addr("https")?,
            admin: addr("admin")?,
            id: id.to_owned(),
            child,
            log,
        })
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

/// `ferrogate certgen --out-dir` (stream CA, server and client certificates).
fn certgen(dir: &Path) -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args(["certgen", "--out-dir"])
        .arg(dir)
        .args(["--dns-names", "localhost,127.0.0.1"])
        .output()?;
    ensure!(
        out.status.success(),
        "certgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A Service `up-NAME` (port 80) whose Endpoints are `ip:port`.
fn upstream_service(name: &str, ip: std::net::Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: up-{name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: up-{name}, namespace: default}}
subsets:
- addresses: [{{ip: '{ip}'}}]
  ports: [{{name: http, port: {port}}}]
"
    )
}

/// Which upstream answered `GET /` for HOST on this dataplane (None on
/// anything but 200).
async fn served_by(client: &Client) -> Option<String> {
    let answer = client.get(HOST, "/").await;
    (answer.status == 200)
        .then(|| answer.upstream().map(str::to_owned))
        .flatten()
}

fn set_backend(api: &testkit::KubeApiserver, upstream: &str) -> Result<()> {
    api.kubectl(&[
        "patch",
        "apiroute",
        "shop",
        "--type=json",
        "-p",
        &format!(
            r#"[{{"op":"replace","path":"/spec/rules/0/backends/0/name","value":"up-{upstream}"}}]"#
        ),
    ])?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn controller_args(certs: &Path) -> Vec<String> {
    let path = |name: &str| certs.join(name).display().to_string();
    let mut args = vec![
        "--stream-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--stream-cert".to_owned(),
        path("server.crt"),
        "--stream-key".to_owned(),
        path("server.key"),
        "--stream-client-ca".to_owned(),
        path("ca.crt"),
    ];
    args.extend(FAST_LEASE.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_cluster() -> Result<()> {
    let netns = NetNs::create()?;
    let _upstreams = Upstreams::start(&netns, &[("a", 8081), ("b", 8082)])?;
    let api = tokio::task::block_in_place(apiserver_with_crds)?;
    let certs = tempfile::tempdir()?;
    certgen(certs.path())?;
    api.kubectl_apply_stdin(&upstream_service("a", netns.inside_ip, 8081))?;
    api.kubectl_apply_stdin(&upstream_service("b", netns.inside_ip, 8082))?;
    api.kubectl_apply_stdin(&route_yaml("default", "shop", HOST, "up-a"))?;

    let args = controller_args(certs.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut controller = ControllerProcess::start(api.kubeconfig_path(), "ctl-1", &args)?;
    let stream = controller
        .stream
        .context("the controller reports its stream address")?;
    let state1 = tempfile::tempdir()?;
    let state2 = tempfile::tempdir()?;
    let mut dp1 = Dataplane::start(stream, "dp-1", certs.path(), state1.path())?;
    let dp2 = Dataplane::start(stream, "dp-2", certs.path(), state2.path())?;
    let logs = |controller: &ControllerProcess, dp1: &Dataplane, dp2: &Dataplane| {
        format!(
            "controller:\n{}\n{}:\n{}\n{}:\n{}",
            controller.log(),
            dp1.id,
            dp1.log(),
            dp2.id,
            dp2.log()
        )
    };

    // Programmed means both dataplanes serve it: right after `kubectl
    // wait` returns, both answer from upstream a.
    let wait = api.kubectl_output(
        &[
            "wait",
            "--for=condition=Programmed",
            "apiroute/shop",
            "--timeout=60s",
        ],
        None,
    )?;
    ensure!(
        wait.success(),
        "kubectl wait: {}\n{}",
        wait.stderr,
        logs(&controller, &dp1, &dp2)
    );
    let (c1, c2) = (Client::new(dp1.http), Client::new(dp2.http));
    ensure!(
        served_by(&c1).await.as_deref() == Some("a"),
        "dp-1 serves the route once Programmed"
    );
    ensure!(
        served_by(&c2).await.as_deref() == Some("a"),
        "dp-2 serves the route once Programmed"
    );
    let shop = get(&api, "apiroute", "default", "shop")?;
    ensure!(shop["status"]["dataplanes"] == "2/2", "{}", shop["status"]);
    let (_, _, message) = condition(&shop, "Programmed").unwrap_or_default();
    ensure!(message.contains("all 2"), "{message}");

    // A dataplane that does not ACK keeps the new generation Pending.
    dp2.signal("-STOP");
    set_backend(&api, "b")?;
    let pending = wait_for(
        WAIT,
        "generation 2 Programmed=False/Pending with 1/2",
        || {
            let v = get(&api, "apiroute", "default", "shop")?;
            Ok((v["status"]["observedGeneration"] == 2
                && has(&v, "Programmed", "False", "Pending")
                && v["status"]["dataplanes"] == "1/2")
                .then_some(v))
        },
        || logs(&controller, &dp1, &dp2),
    )?;
    let _ = pending;
    ensure!(
        served_by(&c1).await.as_deref() == Some("b"),
        "dp-1 serves generation 2"
    );
    dp2.signal("-CONT");
    wait_for(
        WAIT,
        "generation 2 Programmed=True with 2/2",
        || {
            let v = get(&api, "apiroute", "default", "shop")?;
            Ok(
                (has(&v, "Programmed", "True", "Programmed") && v["status"]["dataplanes"] == "2/2")
                    .then_some(()),
            )
        },
        || logs(&controller, &dp1, &dp2),
    )?;
    ensure!(
        served_by(&c2).await.as_deref() == Some("b"),
        "dp-2 serves generation 2"
    );

    // An invalid edit is rejected alone; generation 2 keeps serving.
    api.kubectl(&[
        "patch", "apiroute", "shop", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/matches/0/path","value":{"type":"RegularExpression","value":"(["}}]"#,
    ])?;
    wait_for(
        WAIT,
        "generation 3 Accepted=False/InvalidRegex",
        || {
            let v = get(&api, "apiroute", "default", "shop")?;
            Ok((v["status"]["observedGeneration"] == 3
                && has(&v, "Accepted", "False", "InvalidRegex"))
            .then_some(()))
        },
        || logs(&controller, &dp1, &dp2),
    )?;
    for _ in 0..20 {
        ensure!(
            served_by(&c1).await.as_deref() == Some("b"),
            "the last accepted generation keeps serving"
        );
        ensure!(
            served_by(&c2).await.as_deref() == Some("b"),
            "the last accepted generation keeps serving"
        );
    }
    api.kubectl(&[
        "patch", "apiroute", "shop", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/matches/0/path","value":{"type":"PathPrefix","value":"/"}}]"#,
    ])?;

    // Change -> traffic latency over 50 changes, until both dataplanes
    // serve the new backend.
    let mut current = "b";
    let mut since_kubectl = Vec::new();
    let mut since_write = Vec::new();
    for _ in 0..50 {
        let next = if current == "a" { "b" } else { "a" };
        let started = Instant::now();
        tokio::task::block_in_place(|| set_backend(&api, next))?;
        let written = Instant::now();
        let deadline = started + Duration::from_secs(10);
        let (mut on1, mut on2) = (false, false);
        while !(on1 && on2) {
            if Instant::now() > deadline {
                bail!(
                    "the change to {next} did not reach both dataplanes in 10 s\n{}",
                    logs(&controller, &dp1, &dp2)
                );
            }
            if !on1 {
                on1 = served_by(&c1).await.as_deref() == Some(next);
            }
            if !on2 {
                on2 = served_by(&c2).await.as_deref() == Some(next);
            }
        }
        since_kubectl.push(started.elapsed());
        since_write.push(written.elapsed());
        current = next;
    }
    since_kubectl.sort();
    since_write.sort();
    println!(
        "change -> traffic on both dataplanes over 50 changes: from the apiserver write p50 {:?} p99 {:?}; \
         including kubectl p50 {:?} p99 {:?}",
        percentile(&since_write, 0.5),
        percentile(&since_write, 0.99),
        percentile(&since_kubectl, 0.5),
        percentile(&since_kubectl, 0.99)
    );
    ensure!(
        percentile(&since_write, 0.99) < Duration::from_secs(1),
        "p99 over 1 s"
    );

    // Killing the controller leaves traffic flowing.
    controller.kill();
    let until = Instant::now() + Duration::from_secs(2);
    let mut requests = 0;
    while Instant::now() < until {
        ensure!(
            served_by(&c1).await.as_deref() == Some(current),
            "traffic after the controller died"
        );
        ensure!(
            served_by(&c2).await.as_deref() == Some(current),
            "traffic after the controller died"
        );
        requests += 2;
    }
    println!("{requests} requests served while the controller was down");

    // A dataplane restarted while the controller is down serves its
    // persisted snapshot.
    dp1.kill();
    let dp1b = Dataplane::start(stream, "dp-1", certs.path(), state1.path())?;
    let c1b = Client::new(dp1b.http);
    ensure!(
        served_by(&c1b).await.as_deref() == Some(current),
        "the restarted dataplane serves from its state dir\n{}",
        dp1b.log()
    );
    let ready = blocking_get(dp1b.admin, "/readyz");
    println!(
        "restarted dataplane /readyz without a controller: {}",
        ready.trim()
    );

    // A new controller (same stream address) brings everyone back, and
    // status back to Programmed with both dataplanes.
    let mut args2 = controller_args(certs.path());
    args2[1] = stream.to_string();
    let args2: Vec<&str> = args2.iter().map(String::as_str).collect();
    let controller2 = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ControllerProcess::start(api.kubeconfig_path(), "ctl-2", &args2) {
                Ok(c) => break c,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("restarting the controller on {stream}: {error:#}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => return Err(error),
            }
        }
    };
    set_backend(&api, if current == "a" { "b" } else { "a" })?;
    let wait = api.kubectl_output(
        &[
            "wait",
            "--for=condition=Programmed",
            "apiroute/shop",
            "--timeout=60s",
        ],
        None,
    )?;
    ensure!(
        wait.success(),
        "kubectl wait after the restart: {}\n{}",
        wait.stderr,
        controller2.log()
    );
    let shop = get(&api, "apiroute", "default", "shop")?;
    ensure!(shop["status"]["dataplanes"] == "2/2", "{}", shop["status"]);
    let next = if current == "a" { "b" } else { "a" };
    ensure!(
        served_by(&c1b).await.as_deref() == Some(next),
        "restarted dp-1 follows the new controller"
    );
    ensure!(
        served_by(&c2).await.as_deref() == Some(next),
        "dp-2 follows the new controller"
    );
    drop(dp1b);
    drop(dp2);
    drop(controller2);
    drop(_upstreams);
    drop(netns);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_under_h2load_fails_no_request() -> Result<()> {
    support::require_tool("h2load");
    let netns = NetNs::create()?;
    let _upstreams = Upstreams::start(&netns, &[("a", 8081)])?;
    let api = tokio::task::block_in_place(apiserver_with_crds)?;
    let certs = tempfile::tempdir()?;
    certgen(certs.path())?;
    api.kubectl_apply_stdin(&upstream_service("a", netns.inside_ip, 8081))?;
    api.kubectl_apply_stdin(&route_yaml("default", "shop", HOST, "up-a"))?;
    let (ca, chain, key) = support::make_cert(&[HOST]);
    api.kubectl_apply_stdin(&support::tls_secret_yaml("shop-tls", &chain, &key))?;
    api.kubectl_apply_stdin(&support::tls_certificate_yaml("shop", HOST, "shop-tls"))?;

    let args = controller_args(certs.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start(api.kubeconfig_path(), "ctl-1", &args)?;
    let stream = controller.stream.context("stream address")?;
    let state = tempfile::tempdir()?;
    let dp = Dataplane::start(stream, "dp-1", certs.path(), state.path())?;
    let wait = api.kubectl_output(
        &[
            "wait",
            "--for=condition=Programmed",
            "tlscertificate/shop",
            "apiroute/shop",
            "--timeout=60s",
        ],
        None,
    )?;
    ensure!(
        wait.success(),
        "kubectl wait: {}\n{}\n{}",
        wait.stderr,
        controller.log(),
        dp.log()
    );
    support::tls_connect(dp.https, HOST, &ca, &[b"h2"])
        .await
        .with_context(|| format!("TLS with the first certificate\n{}", dp.log()))?;

    let port = dp.https.port();
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(Ordering::SeqCst) || runs.is_empty() {
                runs.push(support::h2load(
                    &[
                        "-n",
                        "400",
                        "-c",
                        "4",
                        "-m",
                        "10",
                        &format!("--connect-to=127.0.0.1:{port}"),
                        &format!("https://{HOST}:{port}/"),
                    ],
                    Duration::from_secs(30),
                ));
            }
            runs
        })
    };

    let started = Instant::now();
    for i in 1..=5 {
        let (ca, chain, key) = support::make_cert(&[HOST]);
        tokio::task::block_in_place(|| {
            api.kubectl_apply_stdin(&support::tls_secret_yaml("shop-tls", &chain, &key))
        })?;
        let deadline = Instant::now() + WAIT;
        loop {
            if support::tls_connect(dp.https, HOST, &ca, &[b"h2"])
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "rotation {i} did not reach the dataplane\n{}\n{}",
                    controller.log(),
                    dp.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let rotating = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let runs = tokio::task::spawn_blocking(move || runner.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the h2load runner panicked"))?;
    let requests: u64 = runs.iter().map(|(r, _)| r.total).sum();
    println!("5 Secret rotations through the apiserver in {rotating:?}; h2load: {} runs, {requests} requests", runs.len());
    for (report, output) in &runs {
        ensure!(report.all_ok(), "h2load saw failures:\n{output}");
    }
    Ok(())
}

fn lease_holder(api: &testkit::KubeApiserver) -> Result<Option<String>> {
    let out = api.kubectl_output(
        &[
            "get",
            "lease",
            "ferrogate-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    )?;
    Ok((out.success() && !out.stdout.trim().is_empty()).then(|| out.stdout.trim().to_owned()))
}

/// Dataplanes connect to any replica; the leader's status counts them all
/// (each replica reports its dataplanes in a Lease of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmed_counts_the_dataplanes_of_every_replica() -> Result<()> {
    let netns = NetNs::create()?;
    let _upstreams = Upstreams::start(&netns, &[("a", 8081), ("b", 8082)])?;
    let api = tokio::task::block_in_place(apiserver_with_crds)?;
    let certs = tempfile::tempdir()?;
    certgen(certs.path())?;
    api.kubectl_apply_stdin(&upstream_service("a", netns.inside_ip, 8081))?;
    api.kubectl_apply_stdin(&upstream_service("b", netns.inside_ip, 8082))?;
    api.kubectl_apply_stdin(&route_yaml("default", "shop", HOST, "up-a"))?;

    let args = controller_args(certs.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ctl_a = ControllerProcess::start(api.kubeconfig_path(), "ctl-a", &args)?;
    let ctl_b = ControllerProcess::start(api.kubeconfig_path(), "ctl-b", &args)?;
    let (state_a, state_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let dp_a = Dataplane::start(
        ctl_a.stream.context("stream a")?,
        "dp-a",
        certs.path(),
        state_a.path(),
    )?;
    let dp_b = Dataplane::start(
        ctl_b.stream.context("stream b")?,
        "dp-b",
        certs.path(),
        state_b.path(),
    )?;
    let logs = || {
        format!(
            "ctl-a:\n{}\nctl-b:\n{}\ndp-a:\n{}\ndp-b:\n{}",
            ctl_a.log(),
            ctl_b.log(),
            dp_a.log(),
            dp_b.log()
        )
    };
    let leader = wait_for(WAIT, "a leader", || lease_holder(&api), logs)?;
    // Programmed counts the dataplanes the leader knows of; the other
    // replica's report arrives within moments.
    wait_for(
        WAIT,
        "Programmed with 2/2 (one dataplane on each replica)",
        || {
            let v = get(&api, "apiroute", "default", "shop")?;
            Ok(
                (has(&v, "Programmed", "True", "Programmed") && v["status"]["dataplanes"] == "2/2")
                    .then_some(()),
            )
        },
        logs,
    )?;

    // The follower's dataplane stops ACKing: the leader sees it through the
    // follower's report.
    let (follower_dp, follower_is_b) = if leader == "ctl-a" {
        (&dp_b, true)
    } else {
        (&dp_a, false)
    };
    follower_dp.signal("-STOP");
    set_backend(&api, "b")?;
    wait_for(
        WAIT,
        "Pending with 1/2 while the follower's dataplane does not ACK",
        || {
            let v = get(&api, "apiroute", "default", "shop")?;
            Ok((v["status"]["observedGeneration"] == 2
                && has(&v, "Programmed", "False", "Pending")
                && v["status"]["dataplanes"] == "1/2")
                .then_some(()))
        },
        logs,
    )?;
    follower_dp.signal("-CONT");
    wait_for(
        WAIT,
        "Programmed with 2/2 once it ACKs",
        || {
            let v = get(&api, "apiroute", "default", "shop")?;
            Ok(
                (has(&v, "Programmed", "True", "Programmed") && v["status"]["dataplanes"] == "2/2")
                    .then_some(()),
            )
        },
        logs,
    )?;

    // A dead follower's report expires: its dataplane no longer counts.
    if follower_is_b {
        Command::new("kill")
            .args(["-KILL", &ctl_b.pid().to_string()])
            .status()?;
        wait_for(
            Duration::from_secs(20),
            "1/1 after the follower died",
            || {
                let v = get(&api, "apiroute", "default", "shop")?;
                Ok((v["status"]["dataplanes"] == "1/1").then_some(()))
            },
            logs,
        )?;
    }
    Ok(())
}
