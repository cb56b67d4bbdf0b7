//! `ferrogate demo`: the shop from `examples/` with its four sample services,
//! in one command, and the curl commands that show what the gateway does.
//!
//! ```text
//!  examples/ ──copy + adapt (setup)──▶ $TMP/manifests ──▶ serve (in process)
//!                 │ fresh CA + serving cert, ES256 key + tokens    │
//!                 ▼                                                ▼
//!              $TMP/ca.pem                        127.0.0.1:8080 / 8443 / 9901
//!  shop services (products, cart, payments, users) on 127.0.0.1:9101-9104
//! ```
//!
//! The sample services run on their own thread and runtime; `serve` runs on
//! the main thread exactly as `ferrogate serve` does. Once the admin
//! listener says `/readyz` is ok, the commands are printed. Everything
//! listens on loopback only. Ctrl-C stops the gateway and removes the
//! temporary folder.

pub mod setup;
pub mod shop;

use anyhow::{bail, Context, Result};
use clap::Parser;
use setup::{copy_examples, DemoCa, Rewrite, TokenClaims, TokenSigner};
use shop::Service;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The sample services' first port in `examples/`.
pub const EXAMPLES_SERVICES_PORT_BASE: u16 = 9101;
/// The host the examples serve.
pub const HOST: &str = "shop.localhost";
/// How long to wait for the gateway to become ready before printing the
/// commands anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `ferrogate demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Folder of manifests to run (copied and adapted to this run; the
    /// folder itself is not changed).
    #[arg(long, default_value = "examples")]
    pub examples: PathBuf,
    /// Plain HTTP listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// HTTPS listener.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub https: SocketAddr,
    /// Admin listener (/metrics, /config, /readyz).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Port of the first sample service; products, cart, payments and users
    /// listen on this port and the next three. The examples name 9101-9104;
    /// with another base the demo rewrites their URLs.
    #[arg(long, default_value_t = EXAMPLES_SERVICES_PORT_BASE)]
    pub services_port_base: u16,
}

/// The examples folder: `--examples` when it exists; for the default, the
/// repository's `examples/` when run from elsewhere.
fn find_examples(given: &Path) -> Result<PathBuf> {
    if given.is_dir() {
        return Ok(given.to_path_buf());
    }
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    if given == Path::new("examples") && built_in.is_dir() {
        return Ok(built_in);
    }
    bail!(
        "--examples: {} is not a folder (run the demo from the repository root, or pass --examples PATH)",
        given.display()
    )
}

/// What the printed commands need to know about this run.
#[derive(Debug, Clone)]
pub struct Env<'a> {
    /// The `ferrogate` executable, for `ferrogate explain`.
    pub exe: &'a str,
    /// The adapted manifests.
    pub manifests: &'a Path,
    /// The demo CA certificate.
    pub ca: &'a Path,
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// HTTPS listener.
    pub https: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// First sample service port.
    pub services_port_base: u16,
    /// A token of alice, organization A.
    pub alice_token: &'a str,
    /// A token of carol, organization C.
    pub carol_token: &'a str,
}

/// Quotes `text` for a POSIX shell when it needs it.
fn sh_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A connectable address for a listener (an unspecified bind address is
/// reached on loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// The text printed once the gateway is ready: where things are and the
/// commands to try, one numbered section per feature.
pub fn instructions(env: &Env<'_>) -> String {
    let https = reachable(env.https);
    let http = reachable(env.http);
    let admin = reachable(env.admin);
    let ip = match https.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let base = format!("https://{HOST}:{}", https.port());
    let curl = format!(
        "curl -sS --cacert {} --resolve {HOST}:{}:{ip}",
        sh_quote(&env.ca.display().to_string()),
        https.port()
    );
    let p = env.services_port_base;
    let manifests = sh_quote(&env.manifests.display().to_string());
    let exe = sh_quote(env.exe);
    let alice = env.alice_token;
    let carol = env.carol_token;
    format!(
        r#"
Ferrogate demo: the gateway and four sample services are running.

  gateway    {base}  (plain HTTP on {http} redirects to it)
  admin      http://{admin}  (/metrics, /config, /readyz)
  services   products 127.0.0.1:{p0}, cart :{p1}, payments :{p2}, users :{p3}
  manifests  {manifests}
             (examples/ with this run's certificate, JWT key and ports;
              edit a file there and the gateway reloads it)

Try these in another terminal. Ctrl-C here stops everything.

1. HTTPS with a certificate made for this run (--cacert trusts this run's CA)
    {curl} {base}/healthz
   Plain HTTP to a host that has a certificate gets a 308 to HTTPS:
    curl -sS -i -H 'Host: {HOST}' http://{http}/products

2. Path routing: each path goes to its own service (header x-demo-service)
    {curl} -i {base}/products/p-100
    {curl} {base}/cart
    {curl} {base}/users/me
   The old shop's links are redirected (301 to /products/p-100):
    {curl} -i {base}/shop/p-100

3. Device routing and mobile JSON trimming
   A desktop browser gets rule `products`: every field, and X-Served-By: ferrogate.
    {curl} -i -A 'Mozilla/5.0 (X11; Linux x86_64)' {base}/products
   An iPhone gets rule `products-mobile`: items without description, reviews and images.
    {curl} -i -A 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)' {base}/products
   Ask the gateway which rule a request gets, without sending it:
    {exe} explain --manifests {manifests} GET https://{HOST}/products -H 'User-Agent: iPhone'

4. Payments: a JWT is required, and only organizations A and B may pay
   (tokens signed by this run's key, valid 24 hours)
   No token: 401.
    {curl} -i {base}/payments
   carol, organization C: 403.
    {curl} -i -H 'Authorization: Bearer {carol}' {base}/payments
   alice, organization A: 200.
    {curl} -i -H 'Authorization: Bearer {alice}' {base}/payments
   API keys work too: -H 'x-api-key: demo-key-alice' (A), 'demo-key-carol' (C).

5. Add to cart: 35 a minute per client. 40 at once: 35 pass, the rest get 429
   with Retry-After (the allowance refills at one every 1.7 s). Each call adds
   one item; with a body: -H 'Content-Type: application/json' -d '{{"productId":"p-102"}}'
    for i in $(seq 40); do {curl} -o /dev/null -w '%{{http_code}} ' -X POST {base}/cart/items; done; echo

6. Cached catalogue: the second answer comes from the gateway's cache
   (x-demo-upstream-requests stays the same, Age grows)
    for i in 1 2; do {curl} -o /dev/null -D - {base}/products/p-101 | grep -i -E '^(x-demo-upstream-requests|age|cache-status|x-cache)'; done

7. Aggregated home page: featured products, cart and user profile in one answer
    {curl} {base}/

8. Metrics (Prometheus text format): requests by route, rule and status class
    curl -sS http://{admin}/metrics | grep '^ferrogate_requests_total' | grep -v ' 0$'
"#,
        p0 = p,
        p1 = p.saturating_add(1),
        p2 = p.saturating_add(2),
        p3 = p.saturating_add(3),
    )
}

/// Whether the admin listener answers `/readyz` with 200.
fn admin_ready(admin: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&admin, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    head.get(..read)
        .is_some_and(|h| h.starts_with(b"HTTP/1.1 200"))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `serve`'s own argument parser, so that its defaults for options the demo
/// does not set stay its own.
#[derive(Parser, Debug)]
struct ServeCommand {
    #[command(flatten)]
    args: crate::serve::ServeArgs,
}

/// Runs the demo until SIGINT or SIGTERM.
pub fn run(args: DemoArgs) -> Result<()> {
    let examples = find_examples(&args.examples)?;
    let base = args.services_port_base;
    if base > u16::MAX - 3 {
        bail!("--services-port-base: {base} leaves no room for four ports");
    }

    // The sample services' sockets first: a port in use is the most likely
    // failure, and it should be reported before anything else happens.
    let mut listeners = Vec::new();
    for (offset, service) in (0u16..).zip(Service::ALL) {
        let port = base + offset;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!(
                "the {} sample service cannot listen on 127.0.0.1:{port} (another demo running? \
                 choose other ports with --services-port-base)",
                service.name()
            )
        })?;
        listener
            .set_nonblocking(true)
            .context("configuring a sample service socket")?;
        listeners.push((service, listener));
    }

    let ca = DemoCa::generate()?;
    let now = now_unix();
    let signer = TokenSigner::generate(format!("demo-{now}"))?;
    let dir = tempfile::Builder::new()
        .prefix("ferrogate-demo-")
        .tempdir()
        .context("creating the demo's temporary folder")?;
    let manifests = dir.path().join("manifests");
    let ports = if base == EXAMPLES_SERVICES_PORT_BASE {
        Vec::new()
    } else {
        (0u16..4)
            .map(|i| (EXAMPLES_SERVICES_PORT_BASE + i, base + i))
            .collect()
    };
    let issue = |hosts: &[String]| ca.issue(hosts);
    copy_examples(
        &examples,
        &manifests,
        &Rewrite {
            ports,
            issue: &issue,
            jwt_method: signer.jwt_method(),
        },
    )?;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem)
        .with_context(|| format!("writing {}", ca_path.display()))?;
    let alice = signer.mint(
        &TokenClaims {
            subject: "alice",
            organization: "A",
            groups: &["buyers"],
        },
        now,
    )?;
    let carol = signer.mint(
        &TokenClaims {
            subject: "carol",
            organization: "C",
            groups: &["buyers"],
        },
        now,
    )?;

    let services = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the sample services' runtime")?;
    std::thread::Builder::new()
        .name("demo-services".into())
        .spawn(move || {
            services.block_on(async move {
                for (service, listener) in listeners {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::spawn(shop::serve(service, listener));
                        }
                        Err(e) => eprintln!("error: the {} service: {e}", service.name()),
                    }
                }
                std::future::pending::<()>().await
            })
        })
        .context("starting the sample services' thread")?;

    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "ferrogate".into());
    let text = instructions(&Env {
        exe: &exe,
        manifests: &manifests,
        ca: &ca_path,
        http: args.http,
        https: args.https,
        admin: args.admin,
        services_port_base: base,
        alice_token: &alice,
        carol_token: &carol,
    });
    let admin = reachable(args.admin);
    std::thread::Builder::new()
        .name("demo-ready".into())
        .spawn(move || {
            let started = Instant::now();
            while !admin_ready(admin) {
                if started.elapsed() > READY_TIMEOUT {
                    eprintln!(
                        "warning: the gateway is not ready after {READY_TIMEOUT:?} (see the errors above); \
                         the commands may fail"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        })
        .context("starting the readiness thread")?;

    let serve = ServeCommand::try_parse_from([
        "serve".to_owned(),
        "--manifests".to_owned(),
        manifests.display().to_string(),
        "--http".to_owned(),
        args.http.to_string(),
        "--https".to_owned(),
        args.https.to_string(),
        "--admin".to_owned(),
        args.admin.to_string(),
    ])
    .context("building the serve options")?;
    let result = crate::serve::run(serve.args).with_context(|| {
        format!(
            "the gateway stopped (are {}, {} or {} in use? choose others with --http, --https, --admin)",
            args.http, args.https, args.admin
        )
    });
    drop(dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_leaves_plain_paths_alone() {
        assert_eq!(
            sh_quote("/tmp/ferrogate-demo-x/ca.pem"),
            "/tmp/ferrogate-demo-x/ca.pem"
        );
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn instructions_use_this_runs_ports_and_files() -> Result<()> {
        let text = instructions(&Env {
            exe: "/x/ferrogate",
            manifests: Path::new("/tmp/d/manifests"),
            ca: Path::new("/tmp/d/ca.pem"),
            http: "127.0.0.1:18080".parse()?,
            https: "0.0.0.0:18443".parse()?,
            admin: "127.0.0.1:19901".parse()?,
            services_port_base: 20100,
            alice_token: "AAA",
            carol_token: "CCC",
        });
        assert!(text.contains(
            "curl -sS --cacert /tmp/d/ca.pem --resolve shop.localhost:18443:127.0.0.1 https://shop.localhost:18443/healthz"
        ));
        assert!(text.contains("http://127.0.0.1:19901/metrics"));
        assert!(text.contains("products 127.0.0.1:20100, cart :20101"));
        assert!(text.contains("Bearer AAA"));
        assert!(text.contains("%{http_code}"));
        assert!(text.contains("/x/ferrogate explain --manifests /tmp/d/manifests GET"));
        Ok(())
    }
}
