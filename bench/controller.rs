//! Benchmark program, not part of `cargo test` (a `[[bench]]` target with
//! `harness = false`; run by `bench/controller.sh` in release mode):
//! change -> traffic latency through the real apiserver, `ferrogate
//! controller` and a `ferrogate dataplane`, with 10 and with 5,000 other
//! routes present, and the controller's memory.
//!
//! Method (shared/recipes/benchmarking.md, "Propagation"): pre-load N
//! routes (unique host and path each, all to one Service whose Endpoints
//! are an upstream in a network namespace), then 100 times: create one more
//! route with `kubectl apply`, start the clock when kubectl returns (the
//! apiserver has stored it), and poll the dataplane every millisecond on a
//! kept-alive connection until the new host answers 200 instead of 404. The
//! time including kubectl is reported too. Any answer other than 404 or
//! 200 counts as an error. Controller RSS (VmRSS, and the peak VmHWM) is
//! read from /proc after the routes are loaded and their statuses written.
//!
//! The upstream is this program itself, re-executed inside the network
//! namespace with [`UPSTREAM_ENV`] set (the apiserver refuses loopback
//! addresses in Endpoints). The report goes to stdout, progress to stderr.

#[path = "../tests/controller_common/mod.rs"]
mod controller_common;
#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{bail, ensure, Context, Result};
use controller_common::*;
use futures::StreamExt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::netns::NetNs;

/// Set in the re-executed upstream host process: the address to serve on.
const UPSTREAM_ENV: &str = "FERROGATE_BENCH_UPSTREAM";
const TRIALS: usize = 100;

fn main() -> Result<()> {
    if let Ok(addr) = std::env::var(UPSTREAM_ENV) {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(serve_upstream(&addr));
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` (or
    // `--all-targets`) runs the program without it, only to see that it
    // builds: minutes of measurement do not belong in a test run.
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("the controller benchmark runs with `cargo bench --bench controller` (bench/controller.sh)");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(change_to_traffic_latency_and_controller_memory())
}

/// The upstream host process: tests/support's upstream until killed.
async fn serve_upstream(addr: &str) -> Result<()> {
    let _server = support::upstream_on(addr, "bench", support::Behavior::default()).await;
    println!("upstream ready");
    std::future::pending::<()>().await;
    Ok(())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_upstream(netns: &NetNs) -> Result<Killed> {
    let mut child = netns
        .command(std::env::current_exe()?)
        .env(UPSTREAM_ENV, format!("{}:8080", netns.inside_ip))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("upstream ready") {
                let _ = tx.send(());
            }
        }
    });
    let child = Killed(child);
    rx.recv_timeout(Duration::from_secs(20))
        .context("the upstream did not start")?;
    Ok(child)
}

fn start_dataplane(stream: SocketAddr, certs: &Path) -> Result<(Killed, SocketAddr)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args([
            "dataplane",
            "--controller",
            &format!("https://127.0.0.1:{}", stream.port()),
        ])
        .args(["--id", "bench-dp"])
        .arg("--tls-cert")
        .arg(certs.join("client.crt"))
        .arg("--tls-key")
        .arg(certs.join("client.key"))
        .arg("--ca")
        .arg(certs.join("ca.crt"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(["--threads", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let listening: serde_json::Value = serde_json::from_str(&line)?;
    let http = listening["http"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no http address")?;
    Ok((Killed(child), http))
}

fn route(name: &str, host: &str) -> Result<crds::ApiRoute> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "ferrogate.dev/v1alpha1",
        "kind": "ApiRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hosts": [host],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": format!("/{name}")}}],
                "backends": [{"name": "upstream", "port": 80}],
            }],
        },
    }))?)
}

/// Creates routes `bulk-FROM..bulk-TO` through the API, 32 at a time.
async fn create_routes(client: &kube::Client, from: usize, to: usize) -> Result<()> {
    let api: kube::Api<crds::ApiRoute> = kube::Api::namespaced(client.clone(), "default");
    let results: Vec<Result<()>> = futures::stream::iter(from..to)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("bulk-{i:05}");
                let r = route(&name, &format!("{name}.bench.test"))?;
                api.create(&kube::api::PostParams::default(), &r).await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Routes whose status the controller has written.
fn with_status(api: &testkit::KubeApiserver) -> Result<usize> {
    let out = api.kubectl(&[
        "get",
        "apiroutes",
        "-o",
        "jsonpath={range .items[*]}{.status.observedGeneration}{\"\\n\"}{end}",
    ])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// 100 trials of "add a route, wait for it to answer".
async fn trials(api: &testkit::KubeApiserver, http: SocketAddr, label: &str) -> Result<String> {
    let client = support::Client::new(http);
    let (mut from_write, mut with_kubectl) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for i in 0..TRIALS {
        let name = format!("trial-{label}-{i:03}");
        let host = format!("{name}.bench.test");
        let yaml = serde_json::to_string(&route(&name, &host)?)?;
        let started = Instant::now();
        tokio::task::block_in_place(|| api.kubectl_stdin(&["apply", "-f", "-"], &yaml))?;
        let written = Instant::now();
        loop {
            let answer = client.get(&host, &format!("/{name}")).await;
            match answer.status {
                200 => break,
                404 => {}
                _ => errors += 1,
            }
            if written.elapsed() > Duration::from_secs(30) {
                bail!("route {name} did not answer in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        from_write.push(written.elapsed());
        with_kubectl.push(started.elapsed());
    }
    from_write.sort();
    with_kubectl.sort();
    Ok(format!(
        "| {label} | {} | {} | {} | {} | {} | {errors} |",
        ms(percentile(&from_write, 0.5)),
        ms(percentile(&from_write, 0.99)),
        ms(*from_write.last().unwrap_or(&Duration::ZERO)),
        ms(percentile(&with_kubectl, 0.5)),
        ms(percentile(&with_kubectl, 0.99)),
    ))
}

async fn change_to_traffic_latency_and_controller_memory() -> Result<()> {
    let netns = NetNs::create()?;
    let _upstream = start_upstream(&netns)?;
    let api = tokio::task::block_in_place(apiserver_with_crds)?;
    let certs = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args(["certgen", "--out-dir"])
        .arg(certs.path())
        .args(["--dns-names", "localhost,127.0.0.1"])
        .output()?;
    ensure!(out.status.success(), "certgen failed");
    api.kubectl_apply_stdin(&format!(
        "apiVersion: v1
kind: Service
metadata: {{name: upstream, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: upstream, namespace: default}}
subsets:
- addresses: [{{ip: '{}'}}]
  ports: [{{name: http, port: 8080}}]
",
        netns.inside_ip
    ))?;
    let client = controller::client(Some(&api.kubeconfig_path().to_path_buf())).await?;
    create_routes(&client, 0, 10).await?;

    let path = |name: &str| certs.path().join(name).display().to_string();
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    let controller = ControllerProcess::start(
        api.kubeconfig_path(),
        "bench",
        &[
            "--stream-listen",
            "127.0.0.1:0",
            "--stream-cert",
            &cert,
            "--stream-key",
            &key,
            "--stream-client-ca",
            &ca,
        ],
    )?;
    let stream = controller.stream.context("stream")?;
    let (_dp, http) = start_dataplane(stream, certs.path())?;
    let pid = controller.pid();

    let mut rows = Vec::new();
    let wait_statuses = |n: usize| {
        wait_for(
            Duration::from_secs(600),
            &format!("{n} statuses"),
            || Ok((with_status(&api)? >= n).then_some(())),
            || controller.log(),
        )
    };
    tokio::task::block_in_place(|| wait_statuses(10))?;
    let (rss10, _) = rss_kib(pid)?;
    rows.push(trials(&api, http, "10").await?);

    let loading = Instant::now();
    create_routes(&client, 10, 5000).await?;
    let created = loading.elapsed();
    tokio::task::block_in_place(|| wait_statuses(5000 + TRIALS))?;
    let settled = loading.elapsed();
    let (rss5000, _) = rss_kib(pid)?;
    rows.push(trials(&api, http, "5000").await?);
    let (rss_after, hwm) = rss_kib(pid)?;

    println!("\n| other routes | from apiserver write: p50 | p99 | max | incl. kubectl: p50 | p99 | errors |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }
    println!(
        "\ncontroller RSS: {:.1} MiB at 10 routes; {:.1} MiB at 5,000 routes (statuses written); \
         {:.1} MiB after 100 more changes; peak {:.1} MiB",
        rss10 as f64 / 1024.0,
        rss5000 as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "4,990 routes created through the API in {created:?}; all statuses written {settled:?} after the first create"
    );
    Ok(())
}
