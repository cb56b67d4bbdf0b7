//! The snapshot stream end to end: `controller::stream::serve` in this
//! process (fed by a `Publisher`, as the controller feeds it), real
//! `ferrogate dataplane` processes, certificates from `ferrogate certgen
//! --out-dir`, and real upstreams. No apiserver: the controller's Kubernetes
//! side is tested elsewhere; this is the channel between the two.

mod support;

use controller::stream::{self, AckTracker, DataplaneState, Publisher, StreamConfig};
use snapshot::model::PathMatcher;
use snapshot::Snapshot;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{blocking_get, upstream, Behavior, Client};

const HOST: &str = "stream.test";

/// `ferrogate certgen --out-dir` into a new folder.
fn certgen() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args(["certgen", "--out-dir"])
        .arg(dir.path())
        .args(["--dns-names", "localhost,127.0.0.1"])
        .output()
        .expect("run certgen");
    assert!(
        out.status.success(),
        "certgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).expect("read PEM")
}

/// The stream server on its own runtime, so that stopping it is like
/// killing the controller: every task and socket goes at once.
struct StreamServer {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl StreamServer {
    fn start(certs: &Path, addr: SocketAddr, publisher: &Publisher, tracker: &AckTracker) -> Self {
        let config = StreamConfig {
            listen: addr,
            server_cert_pem: read(certs, "server.crt"),
            server_key_pem: read(certs, "server.key"),
            client_ca_pem: read(certs, "ca.crt"),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        // The old server's socket may take a moment to close after a kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(addr) {
                Ok(listener) => break listener,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("bind {addr}: {error}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("bind {addr}: {error}"),
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (publisher, tracker) = (publisher.clone(), tracker.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            // Never told to stop: `kill` drops the runtime instead.
            let (_keep, shutdown) = tokio::sync::watch::channel(false);
            let options = stream::StreamOptions {
                keepalive_interval: Duration::from_secs(1),
                keepalive_timeout: Duration::from_secs(2),
                ..stream::StreamOptions::default()
            };
            let served =
                stream::serve_listener(listener, &config, options, publisher, tracker, shutdown)
                    .await;
            if let Err(error) = served {
                eprintln!("stream server failed: {error}");
            }
        });
        StreamServer {
            runtime: Some(runtime),
            addr,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `ferrogate dataplane` process.
struct DataplaneProcess {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    listening: serde_json::Value,
    log: Arc<Mutex<String>>,
}

impl DataplaneProcess {
    fn start(
        controller: &str,
        id: &str,
        certs: &Path,
        client: &str,
        state: Option<&Path>,
    ) -> DataplaneProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferrogate"));
        command
            .args(["dataplane", "--controller", controller, "--id", id])
            .arg("--tls-cert")
            .arg(certs.join(format!("{client}.crt")))
            .arg("--tls-key")
            .arg(certs.join(format!("{client}.key")))
            .arg("--ca")
            .arg(certs.join("ca.crt"))
            .args([
                "--http",
                "127.0.0.1:0",
                "--https",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--threads",
                "1",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(state) = state {
            command.arg("--state-dir").arg(state);
        }
        let mut child = command.spawn().expect("start ferrogate dataplane");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = writer.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!(
                "dataplane {id} did not report its listeners; log:\n{}",
                log.lock().expect("log")
            );
        };
        let listening: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        assert_eq!(listening["event"], "listening", "{line}");
        let addr = |key: &str| -> SocketAddr {
            listening[key]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line}"))
        };
        DataplaneProcess {
            http: addr("http"),
            admin: addr("admin"),
            listening,
            child,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    fn ready(&self) -> bool {
        let body = blocking_get(self.admin, "/readyz");
        body.trim() == "ready"
    }

    fn version(&self) -> u64 {
        let body = blocking_get(self.admin, "/config");
        let config: serde_json::Value = serde_json::from_str(&body).expect("config JSON");
        config["version"].as_u64().expect("version")
    }

    /// SIGKILL: no goodbye on the stream.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for DataplaneProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(process: &DataplaneProcess, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &process.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Compiles one ApiRoute for [`HOST`] with `rules` (path prefix -> URL)
/// into a sealed snapshot of `version`, through the manifest loader and
/// the real compiler.
fn snapshot(version: u64, rules: &[(&str, SocketAddr)]) -> Arc<Snapshot> {
    let mut yaml = format!(
        "apiVersion: ferrogate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: shop, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  rules:\n"
    );
    for (i, (prefix, backend)) in rules.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: r{i}\n    matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backends: [{{url: \"http://{backend}\"}}]\n"
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("route.yaml"), yaml).expect("write");
    let (resources, errors) = ferrogate::manifests::load(&[dir.path().to_path_buf()]);
    assert!(errors.is_empty(), "load errors");
    let compiled = snapshot::compile::compile(&resources, None, now_unix());
    let mut snapshot = compiled.snapshot;
    assert!(
        !snapshot.virtual_hosts.is_empty(),
        "the route compiled to nothing"
    );
    snapshot.version = version;
    snapshot.seal();
    Arc::new(snapshot)
}

async fn wait_for(timeout: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn acked(tracker: &AckTracker, ids: &[&str], version: u64) -> bool {
    let states = tracker.dataplanes();
    ids.iter().all(|id| {
        states
            .iter()
            .any(|s| s.id == *id && s.acked_version == Some(version))
    })
}

fn state(tracker: &AckTracker, id: &str) -> Option<DataplaneState> {
    tracker.dataplanes().into_iter().find(|s| s.id == id)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dataplanes_ack_serve_and_follow_changes() {
    let certs = certgen();
    let a = upstream("a", Behavior::default()).await;
    let b = upstream("b", Behavior::default()).await;
    let (publisher, tracker) = Publisher::new();
    let server = StreamServer::start(
        certs.path(),
        "127.0.0.1:0".parse().expect("addr"),
        &publisher,
        &tracker,
    );
    let changed = tracker.changed();
    let mut one = DataplaneProcess::start(&server.url(), "dp-1", certs.path(), "client", None);
    let two = DataplaneProcess::start(&server.url(), "dp-2", certs.path(), "client", None);

    // Connected, nothing to serve yet: not ready.
    wait_for(
        Duration::from_secs(10),
        "both dataplanes to connect",
        || tracker.dataplanes().len() == 2,
    )
    .await;
    assert!(changed.has_changed().expect("tracker alive"));
    assert!(!one.ready() && !two.ready());
    assert!(tracker.dataplanes().iter().all(|s| s.acked_hash.is_none()));

    let first = snapshot(1, &[("/v1", a.addr)]);
    publisher.publish(first.clone());
    wait_for(Duration::from_secs(10), "both ACKs of version 1", || {
        acked(&tracker, &["dp-1", "dp-2"], 1)
    })
    .await;
    for s in tracker.dataplanes() {
        assert_eq!(s.acked_hash.as_deref(), Some(first.hash.as_str()), "{s:?}");
        assert_eq!(s.nack, None);
    }
    assert!(one.ready() && two.ready());
    let clients = [Client::new(one.http), Client::new(two.http)];
    for client in &clients {
        let answer = client.get(HOST, "/v1/items").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.upstream(), Some("a"));
    }

    // 50 changes: publish -> first 200 on the new route, on both.
    let mut latencies = Vec::new();
    for i in 0..50u64 {
        let path = format!("/change-{i}");
        let next = snapshot(2 + i, &[("/v1", a.addr), (&path, b.addr)]);
        let start = Instant::now();
        publisher.publish(next);
        for client in &clients {
            loop {
                let answer = client.get(HOST, &path).await;
                if answer.status == 200 {
                    assert_eq!(answer.upstream(), Some("b"));
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "change {i} never reached traffic; log:\n{}",
                    one.log()
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "publish -> first 200 on the new route on both dataplanes, over {} changes: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    wait_for(Duration::from_secs(10), "both ACKs of version 51", || {
        acked(&tracker, &["dp-1", "dp-2"], 51)
    })
    .await;
    assert_eq!(one.version(), 51);

    // A frozen dataplane (its TCP connection stays open, nobody answers
    // the pings) leaves the list after the keepalive timeout, and comes
    // back when it thaws.
    let frozen = Instant::now();
    signal(&one, "-STOP");
    wait_for(Duration::from_secs(15), "frozen dp-1 to leave", || {
        state(&tracker, "dp-1").is_none()
    })
    .await;
    println!("frozen dataplane dropped after {:?}", frozen.elapsed());
    assert!(state(&tracker, "dp-2").is_some());
    signal(&one, "-CONT");
    wait_for(Duration::from_secs(15), "thawed dp-1 to come back", || {
        acked(&tracker, &["dp-1"], 51)
    })
    .await;

    // A dataplane that dies without a word leaves the list.
    one.kill();
    wait_for(Duration::from_secs(10), "dp-1 to leave", || {
        state(&tracker, "dp-1").is_none()
    })
    .await;
    assert!(state(&tracker, "dp-2").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_snapshots_are_nacked_and_the_last_good_one_keeps_serving() {
    let certs = certgen();
    let a = upstream("a", Behavior::default()).await;
    let (publisher, tracker) = Publisher::new();
    let server = StreamServer::start(
        certs.path(),
        "127.0.0.1:0".parse().expect("addr"),
        &publisher,
        &tracker,
    );
    let good = snapshot(1, &[("/v1", a.addr)]);
    publisher.publish(good.clone());
    let dp = DataplaneProcess::start(&server.url(), "dp-1", certs.path(), "client", None);
    wait_for(Duration::from_secs(10), "the ACK of version 1", || {
        acked(&tracker, &["dp-1"], 1)
    })
    .await;
    let client = Client::new(dp.http);
    assert_eq!(client.get(HOST, "/v1").await.status, 200);

    // A regex the compiler would never let through, injected into the model.
    let mut bad = (*good).clone();
    bad.version = 2;
    let route = &mut bad.virtual_hosts[0].routes[0];
    route.matcher.path = PathMatcher::Regex("/v1/(unclosed".into());
    bad.seal();
    publisher.publish(Arc::new(bad));
    wait_for(Duration::from_secs(10), "the NACK of version 2", || {
        state(&tracker, "dp-1").is_some_and(|s| s.nack.as_ref().is_some_and(|n| n.0 == 2))
    })
    .await;
    let s = state(&tracker, "dp-1").expect("connected");
    let (_, error) = s.nack.clone().expect("nack");
    assert!(
        error.contains("unclosed"),
        "NACK names the problem: {error}"
    );
    assert_eq!(s.acked_version, Some(1), "{s:?}");
    assert_eq!(s.acked_hash.as_deref(), Some(good.hash.as_str()));
    assert_eq!(client.get(HOST, "/v1").await.status, 200);
    assert_eq!(dp.version(), 1);

    // A snapshot whose hash does not match its content.
    let mut tampered = (*snapshot(3, &[("/v1", a.addr), ("/v3", a.addr)])).clone();
    tampered.hash = good.hash.clone();
    publisher.publish(Arc::new(tampered));
    wait_for(Duration::from_secs(10), "the NACK of version 3", || {
        state(&tracker, "dp-1").is_some_and(|s| s.nack.as_ref().is_some_and(|n| n.0 == 3))
    })
    .await;
    let error = state(&tracker, "dp-1")
        .and_then(|s| s.nack)
        .map(|n| n.1)
        .unwrap_or_default();
    assert!(error.contains("content hashes to"), "{error}");
    assert_eq!(client.get(HOST, "/v3").await.status, 404);

    // The next good version is taken and clears the NACK.
    publisher.publish(snapshot(4, &[("/v1", a.addr), ("/v4", a.addr)]));
    wait_for(Duration::from_secs(10), "the ACK of version 4", || {
        acked(&tracker, &["dp-1"], 4)
    })
    .await;
    assert_eq!(state(&tracker, "dp-1").and_then(|s| s.nack), None);
    assert_eq!(client.get(HOST, "/v4").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplanes_without_a_trusted_client_certificate_are_refused() {
    let certs = certgen();
    let other = certgen();
    let a = upstream("a", Behavior::default()).await;
    let (publisher, tracker) = Publisher::new();
    let server = StreamServer::start(
        certs.path(),
        "127.0.0.1:0".parse().expect("addr"),
        &publisher,
        &tracker,
    );
    publisher.publish(snapshot(1, &[("/v1", a.addr)]));

    // A client certificate from another CA (trusting our server's CA, so
    // only the client side is wrong).
    let mixed = tempfile::tempdir().expect("dir");
    for (from, name) in [
        (other.path(), "client.crt"),
        (other.path(), "client.key"),
        (certs.path(), "ca.crt"),
    ] {
        std::fs::copy(from.join(name), mixed.path().join(name)).expect("copy");
    }
    let foreign = DataplaneProcess::start(&server.url(), "foreign", mixed.path(), "client", None);

    // No client certificate at all.
    let no_cert = connect_without_client_certificate(server.addr, certs.path()).await;
    assert!(
        no_cert.is_err(),
        "a stream without a client certificate was served"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tracker.dataplanes().is_empty(),
        "{:?}",
        tracker.dataplanes()
    );
    assert!(!foreign.ready());
    let log = foreign.log();
    assert!(log.contains("snapshot stream lost"), "{log}");

    // The right certificate is served (control).
    let good = DataplaneProcess::start(&server.url(), "good", certs.path(), "client", None);
    wait_for(Duration::from_secs(10), "the good dataplane's ACK", || {
        acked(&tracker, &["good"], 1)
    })
    .await;
    assert!(good.ready());
    assert_eq!(tracker.dataplanes().len(), 1);
}

/// Opens the stream with a TLS client that trusts the server but presents
/// no certificate; returns the first response status or the error.
async fn connect_without_client_certificate(addr: SocketAddr, certs: &Path) -> Result<u16, String> {
    open_stream(addr, certs, false).await
}

/// Opens the stream trusting `certs/ca.crt` for the server and, with
/// `client_cert`, presenting `certs/client.crt`; returns the first
/// response status or the error.
async fn open_stream(addr: SocketAddr, certs: &Path, client_cert: bool) -> Result<u16, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(certs.join("ca.crt")).expect("ca");
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(der.expect("pem")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = if client_cert {
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(certs.join("client.crt"))
            .expect("client.crt")
            .collect::<Result<Vec<_>, _>>()
            .expect("client chain");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("client.key"))
            .expect("client.key");
        builder
            .with_client_auth_cert(chain, key)
            .expect("client certificate")
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "https://localhost:{}/v1/stream?dataplane=sneaky",
        addr.port()
    ))
    .body(http_body_util::Empty::new())
    .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

/// A renewed server certificate and client CA (another `certgen`) are
/// used for new connections without restarting the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_use_reloaded_certificates() {
    let first = certgen();
    let second = certgen();
    let config = |certs: &Path| StreamConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        server_cert_pem: read(certs, "server.crt"),
        server_key_pem: read(certs, "server.key"),
        client_ca_pem: read(certs, "ca.crt"),
    };
    let tls = stream::server_tls_config(&config(first.path())).expect("valid");
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(Arc::new(tls));
    let (publisher, tracker) = Publisher::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(stream::serve_listener_with_tls(
        listener,
        tls_rx,
        stream::StreamOptions::default(),
        publisher,
        tracker,
        shutdown,
    ));

    assert_eq!(open_stream(addr, first.path(), true).await, Ok(200));
    let refused = open_stream(addr, second.path(), true).await;
    assert!(refused.is_err(), "{refused:?}");

    tls_tx.send_replace(Arc::new(
        stream::server_tls_config(&config(second.path())).expect("valid"),
    ));
    assert_eq!(open_stream(addr, second.path(), true).await, Ok(200));
    let refused = open_stream(addr, first.path(), true).await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_the_controller_and_restarts_come_back_from_disk() {
    let certs = certgen();
    let a = upstream("a", Behavior::default()).await;
    let b = upstream("b", Behavior::default()).await;
    let (publisher, tracker) = Publisher::new();
    let mut server = StreamServer::start(
        certs.path(),
        "127.0.0.1:0".parse().expect("addr"),
        &publisher,
        &tracker,
    );
    let url = server.url();
    let states = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let state_dir = |i: usize| -> PathBuf { states[i].path().join("state") };
    let one = DataplaneProcess::start(&url, "dp-1", certs.path(), "client", Some(&state_dir(0)));
    let mut two =
        DataplaneProcess::start(&url, "dp-2", certs.path(), "client", Some(&state_dir(1)));
    assert!(two.listening["version"].is_null(), "no state yet");
    let first = snapshot(1, &[("/v1", a.addr)]);
    publisher.publish(first.clone());
    wait_for(Duration::from_secs(10), "both ACKs of version 1", || {
        acked(&tracker, &["dp-1", "dp-2"], 1)
    })
    .await;
    let persisted = state_dir(1).join("snapshot.json");
    wait_for(
        Duration::from_secs(10),
        "the snapshot to be persisted",
        || persisted.exists(),
    )
    .await;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&persisted)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the state file holds private keys");
    }

    // The controller dies: traffic keeps flowing.
    server.kill();
    for dp in [&one, &two] {
        let client = Client::new(dp.http);
        for _ in 0..20 {
            assert_eq!(client.get(HOST, "/v1").await.status, 200);
        }
    }

    // dp-2 restarts while the controller is down: it serves from disk.
    two.stop();
    let two = DataplaneProcess::start(&url, "dp-2", certs.path(), "client", Some(&state_dir(1)));
    assert_eq!(two.listening["version"], 1, "{}", two.listening);
    assert_eq!(two.listening["hash"], first.hash.as_str());
    assert!(two.ready(), "ready from the persisted snapshot");
    let answer = Client::new(two.http).get(HOST, "/v1/x").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.upstream(), Some("a"));

    // A new version is compiled while the controller is down; when it
    // comes back on the same address, both dataplanes pick it up.
    publisher.publish(snapshot(2, &[("/v1", a.addr), ("/v2", b.addr)]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = Instant::now();
    let _server = StreamServer::start(certs.path(), server.addr, &publisher, &tracker);
    wait_for(Duration::from_secs(30), "both ACKs of version 2", || {
        acked(&tracker, &["dp-1", "dp-2"], 2)
    })
    .await;
    println!(
        "controller back -> both dataplanes on the newest version: {:?}",
        restarted.elapsed()
    );
    for dp in [&one, &two] {
        let answer = Client::new(dp.http).get(HOST, "/v2").await;
        assert_eq!(answer.status, 200, "{}", dp.log());
        assert_eq!(answer.upstream(), Some("b"));
    }
}

#[test]
fn certgen_is_idempotent_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = certgen();
    let before: Vec<String> = ["ca.crt", "server.crt", "client.crt", "server.key"]
        .iter()
        .map(|n| read(dir.path(), n))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args(["certgen", "--out-dir"])
        .arg(dir.path())
        .args(["--dns-names", "localhost,127.0.0.1"])
        .output()
        .expect("certgen");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("\"kept\"").count(), 3, "{stdout}");
    let after: Vec<String> = ["ca.crt", "server.crt", "client.crt", "server.key"]
        .iter()
        .map(|n| read(dir.path(), n))
        .collect();
    assert_eq!(before, after);
    for key in ["ca.key", "server.key", "client.key"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // A new name re-issues only the server certificate.
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args(["certgen", "--out-dir"])
        .arg(dir.path())
        .args(["--dns-names", "localhost,127.0.0.1,controller.example"])
        .output()
        .expect("certgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("\"issued\"").count(), 1, "{stdout}");
    assert!(stdout.contains("server.crt\"}") || stdout.contains("server.crt"));
    assert_eq!(read(dir.path(), "ca.crt"), before[0]);
}

/// A hand-written stream client (with the trusted client certificate)
/// that stops reading: the server must keep at most a frame or two for it
/// and, when it reads again, jump to the newest version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_skips_to_the_newest_snapshot() {
    use http_body_util::BodyExt;
    use rustls_pki_types::pem::PemObject;
    let certs = certgen();
    let (publisher, tracker) = Publisher::new();
    let server = StreamServer::start(
        certs.path(),
        "127.0.0.1:0".parse().expect("addr"),
        &publisher,
        &tracker,
    );
    // About 100 KB of JSON per snapshot, more than the reader's 64 KiB
    // HTTP/2 window.
    let big = |version: u64| {
        let mut snapshot = Snapshot {
            version,
            ..Snapshot::default()
        };
        for i in 0..3000 {
            snapshot
                .generations
                .insert(format!("ApiRoute/default/route-{i:05}"), version as i64);
        }
        snapshot.seal();
        Arc::new(snapshot)
    };
    publisher.publish(big(1));

    let pem = |name: &str| std::fs::read(certs.path().join(name)).expect("pem");
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem("ca.crt")) {
        roots.add(der.expect("pem")).expect("root");
    }
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(&pem("client.crt"))
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem("client.key")).expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("TLS");
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "https://localhost:{}/v1/stream?dataplane=slow",
        server.addr.port()
    ))
    .body(http_body_util::Empty::new())
    .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut buffer = Vec::new();
    let mut next_version = async || -> u64 {
        loop {
            if buffer.len() >= 4 {
                let len = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
                if buffer.len() >= 4 + len {
                    let frame: serde_json::Value =
                        serde_json::from_slice(&buffer[4..4 + len]).expect("frame JSON");
                    buffer.drain(..4 + len);
                    return frame["snapshot"]["version"].as_u64().expect("version");
                }
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("data");
            if let Ok(data) = frame.into_data() {
                buffer.extend_from_slice(&data);
            }
        }
    };
    assert_eq!(
        next_version().await,
        1,
        "the current snapshot comes at once"
    );

    // Not reading while 200 versions are published.
    for version in 2..=201 {
        publisher.publish(big(version));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen = Vec::new();
    loop {
        let version = next_version().await;
        seen.push(version);
        if version == 201 {
            break;
        }
    }
    println!("after a pause over 200 publishes the slow reader got versions {seen:?}");
    // At most three older frames were already in flight (queue, hyper,
    // HTTP/2 window); everything else was skipped.
    assert!(seen.len() <= 4, "the backlog was queued: {seen:?}");
    assert!(state(&tracker, "slow").is_some());
}

/// `ferrogate certgen` in Kubernetes mode against a real kube-apiserver:
/// three `kubernetes.io/tls` Secrets, untouched by a second run, and only
/// the broken one replaced by a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certgen_writes_secrets_once() {
    let api = testkit::KubeApiserver::start()
        .await
        .expect("kube-apiserver (scripts/test-deps.sh installs it)");
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: fg-system\n",
    )
    .expect("namespace");
    let certgen = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
            .args([
                "certgen",
                "--namespace",
                "fg-system",
                "--secret-prefix",
                "fg",
            ])
            .arg("--kubeconfig")
            .arg(api.kubeconfig_path())
            .output()
            .expect("certgen");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let versions = || {
        api.kubectl(&[
            "get",
            "secrets",
            "-n",
            "fg-system",
            "-l",
            "app.kubernetes.io/managed-by=ferrogate-certgen",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.type}@{.metadata.resourceVersion} {end}",
        ])
        .expect("kubectl get")
    };
    let first = certgen();
    assert_eq!(first.matches("\"created\"").count(), 3, "{first}");
    let listed = versions();
    for name in ["fg-ca", "fg-server", "fg-client"] {
        assert!(
            listed.contains(&format!("{name}=kubernetes.io/tls@")),
            "{listed}"
        );
    }
    let second = certgen();
    assert_eq!(second.matches("\"kept\"").count(), 3, "{second}");
    assert_eq!(versions(), listed, "a second run changes nothing");

    // Break the client Secret (a key that does not match): only it is
    // re-issued, from the same CA.
    let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let patch = serde_json::json!({ "stringData": { "tls.key": other_key } }).to_string();
    api.kubectl(&[
        "patch",
        "secret",
        "fg-client",
        "-n",
        "fg-system",
        "--type",
        "merge",
        "-p",
        &patch,
    ])
    .expect("patch");
    let third = certgen();
    assert!(
        third.contains("secret/fg-system/fg-client\"") && third.contains("\"replaced\""),
        "{third}"
    );
    assert_eq!(third.matches("\"kept\"").count(), 2, "{third}");
    let server_ca = api
        .kubectl(&[
            "get",
            "secret",
            "fg-server",
            "-n",
            "fg-system",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
        .expect("get");
    let client_ca = api
        .kubectl(&[
            "get",
            "secret",
            "fg-client",
            "-n",
            "fg-system",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
        .expect("get");
    assert_eq!(server_ca, client_ca, "one CA for both sides");
}
