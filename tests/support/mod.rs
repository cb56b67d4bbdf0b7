//! Shared pieces of the end-to-end tests: the real `ferrogate serve`
//! process, small upstream servers on port 0, and an HTTP client.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// A running `ferrogate serve` on a temporary manifests folder.
pub struct Gateway {
    child: Child,
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// HTTPS listener.
    pub https: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The manifests folder.
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway on `files` (name -> YAML) written into a new
    /// folder; waits until it listens.
    pub fn start(files: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_args(files, &[])
    }

    /// Like [`Gateway::start`], with extra command-line arguments.
    pub fn start_with_args(files: &[(&str, &str)], args: &[&str]) -> Gateway {
        Gateway::start_with_env(files, args, &[])
    }

    /// Like [`Gateway::start_with_args`], with extra environment variables.
    pub fn start_with_env(files: &[(&str, &str)], args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, yaml) in files {
            std::fs::write(dir.path().join(name), yaml).expect("write manifest");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
            .arg("serve")
            .arg("--manifests")
            .arg(dir.path())
            .args([
                "--http",
                "127.0.0.1:0",
                "--https",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferrogate serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log_writer.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let out_lines = Arc::new(Mutex::new(Vec::new()));
        let out_writer = out_lines.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Everything after the listening line: the access log.
            for line in lines.map_while(Result::ok) {
                let mut out = out_writer.lock().expect("stdout lock");
                if out.len() < 100_000 {
                    out.push(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "ferrogate serve did not report its listeners; log:\n{}",
                    log.lock().expect("log lock")
                );
            }
        };
        let event: serde_json::Value = serde_json::from_str(&line).expect("listening line is JSON");
        let addr = |key: &str| -> SocketAddr {
            event[key]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {key} address in {line}"))
        };
        Gateway {
            http: addr("http"),
            https: addr("https"),
            admin: addr("admin"),
            child,
            dir,
            log,
            stdout: out_lines,
        }
    }

    /// Lines the gateway printed on stdout after its listening line (the
    /// access log), so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// Everything the gateway printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Replaces a manifest file atomically (write, then rename).
    pub fn write(&self, name: &str, yaml: &str) {
        write_atomically(&self.dir.path().join(name), yaml);
    }

    /// The snapshot version the gateway serves (from `/config`).
    pub fn version(&self) -> u64 {
        let body = blocking_get(self.admin, "/config");
        let config: serde_json::Value = serde_json::from_str(&body).expect("config JSON");
        config["version"].as_u64().expect("version")
    }

    /// Waits until the served version is above `version`.
    pub fn wait_for_version_above(&self, version: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.version();
            if now > version {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not apply a new snapshot; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit (after [`Gateway::terminate`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a file so that readers see either the old or the new content.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp: PathBuf = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// A plain GET with curl-free blocking IO (for admin endpoints).
pub fn blocking_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect admin");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// How a test upstream answers.
#[derive(Clone, Default)]
pub struct Behavior {
    /// Status to answer with (default 200).
    pub status: Option<u16>,
    /// Delay before answering.
    pub delay: Option<Duration>,
    /// Answer with this status for the first N requests, then normally.
    pub fail_first: Option<(usize, u16)>,
}

/// A test upstream: answers JSON describing the request it got.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests it has received.
    pub hits: Arc<AtomicUsize>,
    /// The last request's headers.
    pub last_headers: Arc<Mutex<BTreeMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Starts an upstream named `name` on 127.0.0.1:0 (HTTP/1.1 and h2c).
pub async fn upstream(name: &str, behavior: Behavior) -> Upstream {
    upstream_on("127.0.0.1:0", name, behavior).await
}

/// Starts an upstream on a given address.
pub async fn upstream_on(bind: &str, name: &str, behavior: Behavior) -> Upstream {
    let listener = TcpListener::bind(bind).await.expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let last_headers = Arc::new(Mutex::new(BTreeMap::new()));
    let name: Arc<str> = Arc::from(name);
    let (h, l) = (hits.clone(), last_headers.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (name, behavior, hits, last) =
                (name.clone(), behavior.clone(), h.clone(), l.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (name, behavior, hits, last) =
                        (name.clone(), behavior.clone(), hits.clone(), last.clone());
                    async move { answer(req, &name, &behavior, &hits, &last).await }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        last_headers,
        task,
    }
}

type UpBody = http_body_util::Either<
    Full<Bytes>,
    http_body_util::StreamBody<
        futures::stream::Iter<
            std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
        >,
    >,
>;

async fn answer(
    mut req: Request<Incoming>,
    name: &str,
    behavior: &Behavior,
    hits: &AtomicUsize,
    last: &Mutex<BTreeMap<String, String>>,
) -> Result<Response<UpBody>, std::convert::Infallible> {
    let n = hits.fetch_add(1, Ordering::SeqCst);
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // Names sent more than once (`headers` keeps only the last value).
    let repeated: Vec<String> = headers
        .keys()
        .filter(|name| req.headers().get_all(name.as_str()).iter().count() > 1)
        .cloned()
        .collect();
    *last.lock().expect("lock") = headers.clone();
    if let Some(delay) = behavior.delay {
        tokio::time::sleep(delay).await;
    }
    // WebSocket-style upgrade: answer 101 and echo raw bytes.
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut response = Response::new(http_body_util::Either::Left(Full::new(Bytes::new())));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("upgrade", http::HeaderValue::from_static("websocket"));
        response
            .headers_mut()
            .insert("connection", http::HeaderValue::from_static("upgrade"));
        return Ok(response);
    }
    let status = match behavior.fail_first {
        Some((count, status)) if n < count => status,
        _ => behavior.status.unwrap_or(200),
    };
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "upstream": name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "repeated": repeated,
        "body_len": body.len(),
    });
    let bytes = Bytes::from(json.to_string());
    if headers
        .get("content-type")
        .map(|v| v.starts_with("application/grpc"))
        .unwrap_or(false)
    {
        // gRPC-style answer: data, then trailers.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        trailers.insert(
            "x-upstream",
            http::HeaderValue::from_str(name).expect("header"),
        );
        let frames = vec![
            Ok(hyper::body::Frame::data(bytes)),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let mut response = Response::new(http_body_util::Either::Right(
            http_body_util::StreamBody::new(futures::stream::iter(frames)),
        ));
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        return Ok(response);
    }
    let mut response = Response::new(http_body_util::Either::Left(Full::new(bytes)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        "x-upstream",
        http::HeaderValue::from_str(name).expect("header"),
    );
    Ok(response)
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers (lowercase names; repeated headers joined by ", ").
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The upstream that answered (from the `x-upstream` header).
    pub fn upstream(&self) -> Option<&str> {
        self.headers.get("x-upstream").map(String::as_str)
    }
}

/// A keep-alive HTTP/1.1 client to the gateway's plain listener.
pub struct Client {
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: SocketAddr,
}

impl Client {
    /// A client for `addr`.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    /// Sends `method path` with `Host: host` and extra headers.
    pub async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("host", host);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(Bytes::new())).expect("request");
        let response = self
            .inner
            .request(request)
            .await
            .expect("request to the gateway");
        let status = response.status().as_u16();
        let mut headers = BTreeMap::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.to_string())
                .and_modify(|v: &mut String| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        self.send("GET", host, path, &[]).await
    }
}

/// Runs curl with `args`, returning (exit status, stdout).
pub fn curl(args: &[&str]) -> (i32, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test-deps.sh installs it)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Makes a CA and a certificate for `hosts` signed by it: returns (CA PEM,
/// chain PEM, key PEM).
pub fn make_cert(hosts: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferrogate test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .expect("params");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A `kubernetes.io/tls` Secret manifest.
pub fn tls_secret_yaml(name: &str, chain: &str, key: &str) -> String {
    let indent = |text: &str| {
        text.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(chain),
        indent(key)
    )
}

/// Waits until `probe` returns true, polling every 5 ms, or panics after
/// `timeout` with `what`.
pub async fn eventually(timeout: Duration, what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The path of a command-line tool the tests drive (curl, wrk, h2load,
/// openssl). Panics, saying how to install it, when it is not on `PATH`:
/// a missing tool is a failure, never a skipped test.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed or not on PATH: run scripts/test-deps.sh")
    })
}

/// An ApiRoute `name` for `host` with one rule `api` sending everything
/// under `prefix` to the URL `backend`.
pub fn route_yaml(name: &str, host: &str, prefix: &str, backend: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  rules:
  - name: api
    matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backends: [{{url: \"{backend}\"}}]
"
    )
}

/// A TlsCertificate `name` serving `host` from the Secret `secret`.
pub fn tls_certificate_yaml(name: &str, host: &str, secret: &str) -> String {
    format!(
        "apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  secretName: {secret}
"
    )
}

/// What h2load reported about one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct H2loadReport {
    /// Requests h2load was asked to send.
    pub total: u64,
    /// Requests that completed with a response.
    pub succeeded: u64,
    /// Requests that failed (no response, or a refused stream).
    pub failed: u64,
    /// Requests that ended with a protocol or socket error.
    pub errored: u64,
    /// Requests that timed out.
    pub timeout: u64,
    /// Responses with a 2xx status.
    pub status_2xx: u64,
}

impl H2loadReport {
    /// Parses the `requests:` and `status codes:` lines of h2load's output.
    pub fn parse(output: &str) -> Option<H2loadReport> {
        // "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded,
        //  0 failed, 0 errored, 0 timeout"
        let counts = |line: &str| -> BTreeMap<String, u64> {
            line.split(',')
                .filter_map(|part| {
                    let mut words = part.split_whitespace();
                    let n = words.next()?.parse().ok()?;
                    Some((words.next()?.to_owned(), n))
                })
                .collect()
        };
        let requests = output
            .lines()
            .find_map(|l| l.trim().strip_prefix("requests:"))
            .map(counts)?;
        let statuses = output
            .lines()
            .find_map(|l| l.trim().strip_prefix("status codes:"))
            .map(counts)?;
        Some(H2loadReport {
            total: *requests.get("total")?,
            succeeded: *requests.get("succeeded")?,
            failed: *requests.get("failed")?,
            errored: *requests.get("errored")?,
            timeout: *requests.get("timeout")?,
            status_2xx: *statuses.get("2xx")?,
        })
    }

    /// Whether every request got a 2xx response.
    pub fn all_ok(&self) -> bool {
        self.total > 0
            && self.succeeded == self.total
            && self.status_2xx == self.total
            && self.failed == 0
            && self.errored == 0
            && self.timeout == 0
    }
}

/// Runs h2load with `args` (bounded by `timeout`) and parses its report;
/// panics with h2load's output when it cannot be parsed.
pub fn h2load(args: &[&str], timeout: Duration) -> (H2loadReport, String) {
    let child = Command::new(require_tool("h2load"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start h2load");
    let output = wait_output(child, timeout, "h2load");
    let report = H2loadReport::parse(&output)
        .unwrap_or_else(|| panic!("cannot read h2load's report:\n{output}"));
    (report, output)
}

/// Waits for `child` to exit within `timeout` (killing it after that) and
/// returns its stdout and stderr.
pub fn wait_output(mut child: Child, timeout: Duration, what: &str) -> String {
    use std::io::Read;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_string(&mut text);
        }
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(err) = stderr.as_mut() {
            let _ = err.read_to_string(&mut text);
        }
        text
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = out_reader.join().unwrap_or_default() + &err_reader.join().unwrap_or_default();
    assert!(
        !timed_out,
        "{what} did not finish within {timeout:?}; output:\n{text}"
    );
    text
}

/// A TLS connection to `addr` with SNI `server_name`, trusting only
/// `ca_pem`, offering the ALPN protocols `alpn`; bounded to 5 s.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add the CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::other(format!("server name {server_name}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// A free port on 127.0.0.1 (free when asked; the caller binds it soon).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A base port with the `len - 1` after it free as well, for programs
/// that take consecutive ports (the demo's sample services).
pub fn free_port_run(len: u16) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let base = free_port()?;
        if base > u16::MAX - len {
            continue;
        }
        let held: Result<Vec<std::net::TcpListener>, _> = (0..len)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)))
            .collect();
        if held.is_ok() {
            return Ok(base);
        }
    }
    anyhow::bail!("no run of {len} free ports found")
}
