//! A real kube-apiserver backed by a real etcd, as child processes on free
//! loopback ports, for one test.
//!
//! Startup, following `shared/recipes/kube-apiserver.md`:
//!
//! ```text
//! fresh temp dir ─► CA, serving cert, SA keys, admin token (rcgen)
//!                ─► free ports (bind 127.0.0.1:0 and release)
//!                ─► etcd (waits for its client port)
//!                ─► kube-apiserver ─► /readyz ok ─► namespace `default` exists
//!                ─► kubeconfig (CA data + admin token)
//! ```
//!
//! Dropping the [`KubeApiserver`] kills both processes by PID and removes the
//! temp dir. A small watchdog shell process does the same if the test
//! process dies without running `Drop` (SIGKILL, `abort`), so a killed test
//! run does not leave an apiserver behind.

use crate::kubeconfig;
use crate::pki::{token_file_line, ClusterPki};
use crate::tools::tools_bin;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long the apiserver may take to become ready. It needs about 10 s on
/// an idle 2-core machine; tests compiling and running in parallel can
/// triple that.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long etcd may take to open its client port.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Lines of each log shown when startup fails.
const LOG_TAIL_LINES: usize = 40;
/// Startup attempts when a freshly picked port was taken by someone else
/// between our probe and the child's bind.
const PORT_RACE_ATTEMPTS: usize = 3;

/// Set to `1` to keep the temp dir (certs, logs, etcd data) after the test;
/// its path is printed on drop.
pub const KEEP_DIR_ENV: &str = "FERROGATE_TESTKIT_KEEP";

/// The admin user's name in the token file (group `system:masters`).
pub const ADMIN_USER: &str = "ferrogate-admin";

/// A running kube-apiserver and its etcd, private to one test.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// let api = testkit::KubeApiserver::start_blocking()?;
/// let namespaces = api.kubectl(&["get", "namespaces", "-o", "name"])?;
/// assert!(namespaces.contains("namespace/default"));
/// # Ok(())
/// # }
/// ```
pub struct KubeApiserver {
    dir: Option<TempDir>,
    tools: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    watchdog: Option<Child>,
    server_url: String,
    etcd_url: String,
    kubeconfig: PathBuf,
    pki: ClusterPki,
    startup: Duration,
}

impl std::fmt::Debug for KubeApiserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApiserver")
            .field("server_url", &self.server_url)
            .field("etcd_url", &self.etcd_url)
            .field("dir", &self.dir())
            .finish_non_exhaustive()
    }
}

/// What a kubectl run printed and how it ended.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// Exit status of kubectl.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error (where kubectl puts server errors).
    pub stderr: String,
}

impl KubectlOutput {
    /// Whether kubectl exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl KubeApiserver {
    /// Starts etcd and kube-apiserver and waits until the apiserver is
    /// ready, off the async runtime's worker threads. Takes about 4 s on an idle
    /// 2-core machine, up to 10-20 s under load.
    ///
    /// Works in `#[tokio::test]` with either flavor of runtime.
    pub async fn start() -> Result<Self> {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .context("the kube-apiserver startup task panicked")?
    }

    /// Starts etcd and kube-apiserver and waits until the apiserver is
    /// ready, blocking the calling thread. For plain `#[test]` functions.
    pub fn start_blocking() -> Result<Self> {
        let tools = tools_bin()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&tools) {
                Ok(api) => return Ok(api),
                Err(StartError::PortTaken(err)) if attempt < PORT_RACE_ATTEMPTS => {
                    attempt += 1;
                    eprintln!("testkit: a picked port was taken, retrying: {err:#}");
                }
                Err(StartError::PortTaken(err) | StartError::Other(err)) => return Err(err),
            }
        }
    }

    fn start_once(tools: &Path) -> Result<Self, StartError> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("ferrogate-apiserver-")
            .tempdir()
            .context("creating the temp dir for etcd and kube-apiserver")?;
        let root = dir.path().to_path_buf();
        let pki = ClusterPki::generate().context("generating certificates and keys")?;

        let ca = write_file(&root, "ca.crt", &pki.ca_cert_pem)?;
        let cert = write_file(&root, "apiserver.crt", &pki.serving_cert_pem)?;
        let key = write_file(&root, "apiserver.key", &pki.serving_key_pem)?;
        let sa_key = write_file(&root, "sa.key", &pki.sa_key_pem)?;
        let sa_pub = write_file(&root, "sa.pub", &pki.sa_pub_pem)?;
        let tokens = write_file(
            &root,
            "tokens.csv",
            &token_file_line(
                &pki.admin_token,
                ADMIN_USER,
                "ferrogate-admin-uid",
                &["system:masters"],
            ),
        )?;

        let [etcd_port, peer_port, api_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let server_url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = root.join("kubeconfig");

        let mut api = KubeApiserver {
            dir: Some(dir),
            tools: tools.to_path_buf(),
            etcd: None,
            apiserver: None,
            watchdog: None,
            server_url,
            etcd_url,
            kubeconfig,
            pki,
            startup: Duration::ZERO,
        };
        // From here on, an early return drops `api`, which kills whatever
        // was started and removes the temp dir.

        let etcd_data = root.join("etcd-data");
        api.etcd = Some(spawn_logged(
            &tools.join("etcd"),
            &[
                "--name".into(),
                "default".into(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={}", api.etcd_url),
                format!("--advertise-client-urls={}", api.etcd_url),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
            ],
            &root.join("etcd.log"),
        )?);
        api.wait_for_etcd(SocketAddr::from(([127, 0, 0, 1], etcd_port)))?;

        let p = |path: &Path| path.display().to_string();
        api.apiserver = Some(spawn_logged(
            &tools.join("kube-apiserver"),
            &[
                format!("--etcd-servers={}", api.etcd_url),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--cert-dir={}", p(&root.join("cert-dir"))),
                format!("--tls-cert-file={}", p(&cert)),
                format!("--tls-private-key-file={}", p(&key)),
                format!("--client-ca-file={}", p(&ca)),
                format!("--token-auth-file={}", p(&tokens)),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-key-file={}", p(&sa_pub)),
                format!("--service-account-signing-key-file={}", p(&sa_key)),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                // No fixed ports: the insecure port is off (its default
                // in 1.20, said explicitly so parallel apiservers never
                // fight over 8080).
                "--insecure-port=0".into(),
            ],
            &root.join("kube-apiserver.log"),
        )?);
        api.watchdog = Some(spawn_watchdog(&api)?);

        std::fs::write(
            &api.kubeconfig,
            kubeconfig::render(&api.server_url, &api.pki.ca_cert_pem, &api.pki.admin_token),
        )
        .with_context(|| format!("writing {}", api.kubeconfig.display()))?;

        api.wait_until_ready()?;
        api.startup = started.elapsed();
        Ok(api)
    }

    /// Path of a kubeconfig for the admin user (CA data inline, bearer
    /// token), current namespace `default`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver's URL, `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The etcd client URL, `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_cert_pem
    }

    /// Bearer token of the admin user (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.pki.admin_token
    }

    /// The temp dir with certificates, logs (`etcd.log`,
    /// `kube-apiserver.log`) and etcd's data.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// PIDs of etcd and kube-apiserver (0 once stopped).
    pub fn pids(&self) -> (u32, u32) {
        let pid = |c: &Option<Child>| c.as_ref().map_or(0, Child::id);
        (pid(&self.etcd), pid(&self.apiserver))
    }

    /// How long [`start`](Self::start) took, from creating the temp dir to
    /// the `default` namespace existing.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// The last lines of the etcd and kube-apiserver logs, for error
    /// messages of tests that fail in a way the apiserver may explain.
    pub fn log_tails(&self) -> String {
        format!(
            "{}\n{}",
            log_tail(&self.dir().join("kube-apiserver.log")),
            log_tail(&self.dir().join("etcd.log"))
        )
    }

    /// A `kubectl` command (from the tools dir) preset with this apiserver's
    /// kubeconfig and a private discovery cache; add arguments and run it.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(self.tools.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir().join("kube-cache"))
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Runs kubectl with `args` (and `stdin`, if any), whatever its exit
    /// status. Fails only when kubectl cannot be run at all.
    ///
    /// Like every kubectl helper here, this blocks the calling thread, also
    /// in async tests; kubectl calls take a fraction of a second.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
        let mut cmd = self.kubectl_command();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {}", self.tools.join("kubectl").display()))?;
        // Feed stdin from a thread: kubectl may start writing output before
        // it has read all its input, and both pipes have finite buffers.
        let feeder = match (stdin, child.stdin.take()) {
            (Some(text), Some(mut pipe)) => {
                let text = text.to_owned();
                Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
            }
            _ => None,
        };
        let output = child
            .wait_with_output()
            .with_context(|| format!("waiting for kubectl {}", args.join(" ")))?;
        if let Some(feeder) = feeder {
            match feeder.join() {
                Ok(Ok(())) => {}
                // kubectl exiting early (bad flags) closes the pipe; its
                // stderr then says why, which matters more than EPIPE.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Ok(Err(e)) => return Err(e).context("writing kubectl's stdin"),
                Err(_) => bail!("the thread writing kubectl's stdin panicked"),
            }
        }
        Ok(KubectlOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs `kubectl --kubeconfig <ours> ARGS` and returns its stdout; an
    /// error (with kubectl's stderr) when it exits non-zero.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_checked(args, None)
    }

    /// Like [`kubectl`](Self::kubectl), with `stdin` piped in.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        self.kubectl_checked(args, Some(stdin))
    }

    /// `kubectl apply -f -` with `yaml` on stdin; returns kubectl's stdout.
    pub fn kubectl_apply_stdin(&self, yaml: &str) -> Result<String> {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml)
    }

    fn kubectl_checked(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl_output(args, stdin)?;
        if !out.success() {
            bail!(
                "kubectl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                out.stderr.trim_end(),
                if out.stdout.trim().is_empty() {
                    String::new()
                } else {
                    format!("\nstdout: {}", out.stdout.trim_end())
                }
            );
        }
        Ok(out.stdout)
    }

    fn wait_for_etcd(&mut self, addr: SocketAddr) -> Result<(), StartError> {
        let deadline = Instant::now() + ETCD_TIMEOUT;
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, POLL_INTERVAL).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(anyhow::anyhow!(
                    "etcd did not open {addr} within {ETCD_TIMEOUT:?}\n{}",
                    self.log_tails()
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn wait_until_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            // /readyz first: it turns ok once etcd is reachable and the
            // post-start hooks (RBAC bootstrap, CRD informers) are done.
            // The `default` namespace appears a moment later.
            let step = self
                .kubectl_output(&["--request-timeout=5s", "get", "--raw", "/readyz"], None)
                .and_then(|ready| {
                    if !ready.success() {
                        return Ok(Some(format!("/readyz: {}", ready.stderr.trim())));
                    }
                    let ns = self.kubectl_output(
                        &[
                            "--request-timeout=5s",
                            "get",
                            "namespace",
                            "default",
                            "-o",
                            "name",
                        ],
                        None,
                    )?;
                    Ok((!ns.success()).then(|| format!("namespace default: {}", ns.stderr.trim())))
                })
                .map_err(StartError::Other)?;
            let Some(last) = step else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(StartError::Other(anyhow::anyhow!(
                    "kube-apiserver at {} was not ready within {READY_TIMEOUT:?}; last check: \
                     {last}\n{}",
                    self.server_url,
                    self.log_tails()
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Fails when etcd or the apiserver has exited, with its log.
    fn check_alive(&mut self) -> Result<(), StartError> {
        let mut exited = None;
        for (name, child) in [
            ("etcd", &mut self.etcd),
            ("kube-apiserver", &mut self.apiserver),
        ] {
            if let Some(child) = child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .with_context(|| format!("checking on {name}"))?
                {
                    exited = Some((name, status));
                    break;
                }
            }
        }
        let Some((name, status)) = exited else {
            return Ok(());
        };
        let tails = self.log_tails();
        let err = anyhow::anyhow!(
            "{name} exited during startup ({status}); logs in {}:\n{tails}",
            self.dir().display()
        );
        Err(if tails.contains("address already in use") {
            StartError::PortTaken(err)
        } else {
            StartError::Other(err)
        })
    }
}

impl Drop for KubeApiserver {
    fn drop(&mut self) {
        // The watchdog first, so it never signals PIDs we have reaped (and
        // the system may have reused).
        for mut child in [
            self.watchdog.take(),
            self.apiserver.take(),
            self.etcd.take(),
        ]
        .into_iter()
        .flatten()
        {
            // Errors here mean the process is already gone.
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os(KEEP_DIR_ENV).is_some_and(|v| v == "1") {
                eprintln!("testkit: kept {}", dir.keep().display());
            }
            // Otherwise dropping `dir` removes it.
        }
    }
}

/// Why a startup attempt failed: a port race is worth another attempt.
enum StartError {
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(err: anyhow::Error) -> Self {
        StartError::Other(err)
    }
}

/// `N` distinct free loopback ports. All listeners are held until every
/// port is picked, so the kernel cannot hand out the same one twice.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in ports.iter_mut() {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
        *port = listener
            .local_addr()
            .context("reading the address of a port-0 listener")?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Starts `program` with stdout and stderr appended to `log`.
fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("duplicating the handle of {}", log.display()))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// A shell loop that kills etcd and the apiserver and removes the temp dir
/// once this test process is gone, in case it dies without running `Drop`.
fn spawn_watchdog(api: &KubeApiserver) -> Result<Child> {
    let pid_of = |c: &Option<Child>| c.as_ref().map_or(0, Child::id).to_string();
    Command::new("sh")
        .args([
            "-c",
            r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
               kill -9 "$2" "$3" 2>/dev/null; sleep 1; rm -rf "$4""#,
            "ferrogate-testkit-watchdog",
            &std::process::id().to_string(),
            &pid_of(&api.etcd),
            &pid_of(&api.apiserver),
        ])
        .arg(api.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the watchdog shell (sh)")
}

/// The last [`LOG_TAIL_LINES`] lines of a log file, with a header.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            format!(
                "--- last {} lines of {} ---\n{}",
                lines.len() - start,
                path.display(),
                lines[start..].join("\n")
            )
        }
        Err(e) => format!("--- {}: cannot read: {e} ---", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_nonzero() -> Result<()> {
        let ports: [u16; 8] = free_ports()?;
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|&p| p != 0));
        Ok(())
    }

    #[test]
    fn log_tail_keeps_the_end() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text)?;
        let tail = log_tail(&path);
        assert!(tail.contains("last 40 lines"), "{tail}");
        assert!(
            tail.contains("line 99") && tail.contains("line 60"),
            "{tail}"
        );
        assert!(!tail.contains("line 59\n"), "{tail}");
        assert!(log_tail(&dir.path().join("missing.log")).contains("cannot read"));
        Ok(())
    }

    #[test]
    fn spawn_logged_captures_both_streams() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("sh.log");
        let mut child = spawn_logged(
            Path::new("sh"),
            &["-c".into(), "echo out; echo err >&2".into()],
            &log,
        )?;
        assert!(child.wait()?.success());
        let text = std::fs::read_to_string(&log)?;
        assert!(text.contains("out") && text.contains("err"), "{text}");
        Ok(())
    }
}
