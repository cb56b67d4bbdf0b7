//! `ferrogate demo` end to end: start it on free loopback ports, read the
//! commands it prints, run them with `sh` exactly as printed, and check what
//! they show.
//!
//! Every section is checked: HTTPS with the run's CA (`--cacert`, no `-k`)
//! and the HTTP to HTTPS redirect; path routing to the four sample services
//! and the old-shop redirect; device routing (desktop vs iPhone rule),
//! mobile JSON trimming and `ferrogate explain`; the payments API with the
//! minted JWTs (401, 403, 200); the 35-per-minute add-to-cart limit; the
//! cached catalogue; the aggregated home page; the metrics endpoint. Then a
//! clean stop (SIGTERM removes the temp folder), and a clear error when a
//! sample service port is taken.
//!
//! Needs `curl` and `sh` (scripts/test-deps.sh installs curl).

use anyhow::{bail, ensure, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;
use support::{free_port, free_port_run};

/// How long the demo may take to print its commands (it compiles the
/// examples and generates keys; under a parallel test run this is slow).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One numbered section of the demo's output: its title and commands.
#[derive(Debug)]
struct Section {
    title: String,
    commands: Vec<String>,
}

struct Demo {
    child: Child,
    sections: Vec<Section>,
    https_port: u16,
    manifests: PathBuf,
    output: String,
}

impl Demo {
    fn start() -> Result<Demo> {
        let (http, https, admin) = (free_port()?, free_port()?, free_port()?);
        let base = free_port_run(4)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
            .args([
                "demo",
                "--http",
                &format!("127.0.0.1:{http}"),
                "--https",
                &format!("127.0.0.1:{https}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
                "--services-port-base",
                &base.to_string(),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting ferrogate demo")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            child,
            sections: Vec::new(),
            https_port: https,
            manifests: PathBuf::new(),
            output: String::new(),
        };
        let started = Instant::now();
        // The last section is the metrics one; its command ends the text.
        loop {
            let left = START_TIMEOUT.saturating_sub(started.elapsed());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => bail!(
                    "the demo printed no complete instructions within {START_TIMEOUT:?}:\n{}",
                    demo.output
                ),
            };
            demo.output.push_str(&line);
            demo.output.push('\n');
            if let Some(path) = line.trim().strip_prefix("manifests  ") {
                demo.manifests = PathBuf::from(path.trim());
            }
            let numbered = line
                .split_once(". ")
                .filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if let Some((_, title)) = numbered {
                demo.sections.push(Section {
                    title: title.to_owned(),
                    commands: Vec::new(),
                });
            } else if let (Some(command), Some(section)) =
                (line.strip_prefix("    "), demo.sections.last_mut())
            {
                section.commands.push(command.to_owned());
                if section.title.starts_with("Metrics") {
                    break;
                }
            }
        }
        ensure!(
            demo.manifests.is_dir(),
            "the demo's manifests folder {:?} does not exist:\n{}",
            demo.manifests,
            demo.output
        );
        Ok(demo)
    }

    fn section(&self, title_start: &str) -> Result<&Section> {
        self.sections
            .iter()
            .find(|s| s.title.starts_with(title_start))
            .with_context(|| format!("no section `{title_start}...` in:\n{}", self.output))
    }

    /// Runs the `index`th command of a section with `sh -c`, as a user
    /// pasting it would; returns its stdout.
    fn run(&self, title_start: &str, index: usize) -> Result<String> {
        let section = self.section(title_start)?;
        let command = section.commands.get(index).with_context(|| {
            format!("section {title_start} has no command {index}: {section:?}")
        })?;
        let out = Command::new("sh")
            .args(["-c", command])
            .output()
            .with_context(|| format!("running {command}"))?;
        ensure!(
            out.status.success(),
            "`{command}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends SIGTERM and waits for the demo to exit.
    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the demo did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status code of the first response in `curl -i` output.
fn status_of(output: &str) -> Option<u16> {
    output
        .lines()
        .find(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
}

fn header<'a>(output: &'a str, name: &str) -> Option<&'a str> {
    output.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn every_printed_command_shows_what_it_promises() -> Result<()> {
    let mut demo = Demo::start()?;
    let port = demo.https_port;

    // 1. HTTPS with this run's CA (curl verifies: no -k), and the redirect.
    let healthz = demo.run("HTTPS", 0)?;
    ensure!(healthz == "ok\n", "healthz over HTTPS: {healthz:?}");
    let redirect = demo.run("HTTPS", 1)?;
    ensure!(status_of(&redirect) == Some(308), "{redirect}");
    ensure!(
        header(&redirect, "location") == Some(&format!("https://shop.localhost:{port}/products")),
        "{redirect}"
    );

    // 2. Path routing: each path reaches its own sample service.
    let product = demo.run("Path routing", 0)?;
    ensure!(status_of(&product) == Some(200), "{product}");
    ensure!(
        header(&product, "x-demo-service") == Some("products"),
        "{product}"
    );
    ensure!(product.contains("\"Trail Running Shoes\""), "{product}");
    let cart = demo.run("Path routing", 1)?;
    let cart: serde_json::Value = serde_json::from_str(&cart).context("cart JSON")?;
    ensure!(
        cart["items"].is_array() && cart["subtotal"].is_object(),
        "{cart}"
    );
    let me = demo.run("Path routing", 2)?;
    ensure!(me.contains("\"Alice Martin\""), "{me}");
    let old = demo.run("Path routing", 3)?;
    ensure!(status_of(&old) == Some(301), "{old}");
    ensure!(
        header(&old, "location").is_some_and(|l| l.ends_with("/products/p-100")),
        "{old}"
    );

    // 3. Device routing: the desktop rule sets X-Served-By, the mobile rule
    // does not; explain names the mobile rule.
    let desktop = demo.run("Device routing", 0)?;
    ensure!(status_of(&desktop) == Some(200), "{desktop}");
    ensure!(
        header(&desktop, "x-served-by") == Some("ferrogate"),
        "{desktop}"
    );
    let mobile = demo.run("Device routing", 1)?;
    ensure!(status_of(&mobile) == Some(200), "{mobile}");
    ensure!(
        header(&mobile, "x-demo-service") == Some("products"),
        "{mobile}"
    );
    ensure!(header(&mobile, "x-served-by").is_none(), "{mobile}");
    let explain = demo.run("Device routing", 2)?;
    ensure!(explain.contains("rule products-mobile"), "{explain}");
    ensure!(explain.contains("device:   mobile"), "{explain}");

    // 3b. The mobile answer is trimmed: no heavy fields, the rest intact.
    let body = mobile.split("\r\n\r\n").nth(1).context("no body")?;
    let trimmed: serde_json::Value = serde_json::from_str(body).context("mobile JSON")?;
    let first = &trimmed["items"][0];
    ensure!(first["name"] == "Trail Running Shoes", "{trimmed}");
    for heavy in ["description", "reviews", "images"] {
        ensure!(first.get(heavy).is_none(), "{heavy} not removed: {trimmed}");
    }
    ensure!(
        desktop.contains("\"reviews\""),
        "the desktop answer lost its reviews"
    );

    // 4. Payments: 401 without a token, 403 for organization C, 200 for A;
    // the token does not reach the payments service.
    let none = demo.run("Payments", 0)?;
    ensure!(status_of(&none) == Some(401), "{none}");
    ensure!(header(&none, "www-authenticate").is_some(), "{none}");
    let carol = demo.run("Payments", 1)?;
    ensure!(status_of(&carol) == Some(403), "{carol}");
    let alice = demo.run("Payments", 2)?;
    ensure!(status_of(&alice) == Some(200), "{alice}");
    ensure!(
        header(&alice, "x-demo-service") == Some("payments"),
        "{alice}"
    );
    ensure!(alice.contains("\"credentialsForwarded\":false"), "{alice}");

    // 5. 35 add-to-cart calls pass at once, then 429s (one request may
    // pass in between if the loop takes longer than the 1.7 s refill).
    let codes = demo.run("Add to cart", 0)?;
    let codes: Vec<&str> = codes.split_whitespace().collect();
    ensure!(codes.len() == 40, "{codes:?}");
    ensure!(codes[..35].iter().all(|c| *c == "201"), "{codes:?}");
    let limited = codes[35..].iter().filter(|c| **c == "429").count();
    ensure!(
        limited >= 3 && codes[35..].iter().all(|c| *c == "429" || *c == "201"),
        "after 35, most calls should get 429: {codes:?}"
    );

    // 6. The second catalogue answer comes from the cache: the products
    // service is not asked again.
    let cached = demo.run("Cached catalogue", 0)?;
    let counts: Vec<&str> = cached
        .lines()
        .filter_map(|l| l.strip_prefix("x-demo-upstream-requests: "))
        .map(str::trim)
        .collect();
    ensure!(counts.len() == 2 && counts[0] == counts[1], "{cached}");
    ensure!(
        cached
            .lines()
            .any(|l| l.starts_with("cache-status:") && l.contains("hit")),
        "{cached}"
    );

    // 7. The home page merges three services' answers.
    let home = demo.run("Aggregated home page", 0)?;
    let home: serde_json::Value = serde_json::from_str(&home).context("home JSON")?;
    ensure!(home["featured"]["items"].is_array(), "{home}");
    ensure!(home["cart"]["items"].is_array(), "{home}");
    ensure!(home["user"]["name"] == "Alice Martin", "{home}");

    // 8. Metrics count the requests above by route and rule.
    let metrics = demo.run("Metrics", 0)?;
    ensure!(
        metrics.contains(r#"ferrogate_requests_total{route="shop/storefront",rule="products""#),
        "{metrics}"
    );

    // Every section the issue asks for is printed, with commands.
    for title in [
        "HTTPS",
        "Path routing",
        "Device routing",
        "Payments",
        "Add to cart",
        "Cached catalogue",
        "Aggregated home page",
        "Metrics",
    ] {
        ensure!(
            !demo.section(title)?.commands.is_empty(),
            "section {title} has no commands"
        );
    }

    // A clean stop removes the temporary folder with the keys.
    let manifests = demo.manifests.clone();
    let status = demo.stop()?;
    ensure!(status.success(), "the demo exited with {status}");
    ensure!(
        !manifests.exists(),
        "{} is left behind after the demo stopped",
        manifests.display()
    );
    Ok(())
}

#[test]
fn a_taken_service_port_is_reported_with_the_fix() -> Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let base = taken.local_addr()?.port();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogate"))
        .args([
            "demo",
            "--services-port-base",
            &base.to_string(),
            "--http",
            &format!("127.0.0.1:{}", free_port()?),
            "--https",
            &format!("127.0.0.1:{}", free_port()?),
            "--admin",
            &format!("127.0.0.1:{}", free_port()?),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    ensure!(!out.status.success(), "the demo started on a taken port");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains(&format!("127.0.0.1:{base}")) && stderr.contains("--services-port-base"),
        "{stderr}"
    );
    Ok(())
}
