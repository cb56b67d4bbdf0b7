//! Network namespaces for test upstreams (step 7 of
//! `shared/recipes/kube-apiserver.md`): Endpoints may not hold loopback
//! addresses, so upstreams that a Service's Endpoints point at run in a
//! namespace of their own, reached through a veth pair on a private /24.
//!
//! ```text
//!  host: fgh<N> 10.213.<N>.1/24  <── veth ──>  fg<N>: fgn<N> 10.213.<N>.2/24, lo up
//! ```
//!
//! `N` (1..=250) is claimed under an exclusive lock (a mutex in the
//! process and the directory `/run/ferrogate-netns/lock.d` between
//! processes), so parallel tests and test binaries
//! never share one. The claiming process id is written to
//! `/run/ferrogate-netns/<N>.pid`; a namespace left behind by a process that
//! died without cleaning up (a SIGKILLed test) is removed and reused by the
//! next claim. Dropping the
//! [`NetNs`] deletes the namespace (which removes both veth ends).
//!
//! Needs root (or CAP_NET_ADMIN) and `ip` from iproute2. Traffic goes only
//! to these addresses: nothing is routed anywhere else.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const PID_DIR: &str = "/run/ferrogate-netns";

/// Serializes claims between the threads of this process.
static LOCAL: Mutex<()> = Mutex::new(());

/// The claim lock: a process-local mutex plus a lock directory (`mkdir` is
/// atomic) holding the owner's pid, so that a lock left by a killed process
/// is broken.
struct ClaimLock {
    _local: MutexGuard<'static, ()>,
    dir: PathBuf,
}

impl ClaimLock {
    fn acquire() -> Result<ClaimLock> {
        let local = LOCAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = Path::new(PID_DIR).join("lock.d");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    std::fs::write(dir.join("pid"), std::process::id().to_string())
                        .context("writing the netns lock's pid")?;
                    return Ok(ClaimLock { _local: local, dir });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(dir.join("pid"))
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok());
                    let stale = match owner {
                        Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
                        // No pid yet: being created, unless it has been
                        // like that for a while.
                        None => std::fs::metadata(&dir)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_some_and(|age| age > Duration::from_secs(10)),
                    };
                    if stale {
                        let _ = std::fs::remove_dir_all(&dir);
                    } else if Instant::now() > deadline {
                        bail!("{} is held by process {owner:?}", dir.display());
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
    }
}

impl Drop for ClaimLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A network namespace with a veth link to the host, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    index: u8,
    name: String,
    host_if: String,
    /// The host end's address (`10.213.N.1`).
    pub host_ip: Ipv4Addr,
    /// The address inside the namespace (`10.213.N.2`): bind upstreams here
    /// and put it in Endpoints.
    pub inside_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn pid_file(index: u8) -> PathBuf {
    Path::new(PID_DIR).join(format!("{index}.pid"))
}

/// Whether the process that claimed `index` still runs (called under the
/// lock, so a claim is never half made).
fn owner_alive(index: u8) -> bool {
    let Ok(text) = std::fs::read_to_string(pid_file(index)) else {
        return false;
    };
    match text.trim().parse::<u32>() {
        Ok(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

impl NetNs {
    /// Claims a free index and sets up the namespace and link.
    pub fn create() -> Result<NetNs> {
        std::fs::create_dir_all(PID_DIR).with_context(|| format!("creating {PID_DIR}"))?;
        let lock = ClaimLock::acquire()?;
        let start = (std::process::id() % 250) as u8;
        for step in 0..250u8 {
            let index = (start.wrapping_add(step) % 250) + 1;
            let name = format!("fg{index}");
            let exists = Path::new("/run/netns").join(&name).exists();
            if exists && owner_alive(index) {
                continue;
            }
            if exists {
                // Left behind by a dead test: reclaim it.
                let _ = ip(&["netns", "del", &name]);
                let _ = ip(&["link", "del", &format!("fgh{index}")]);
            }
            ip(&["netns", "add", &name])?;
            std::fs::write(pid_file(index), std::process::id().to_string())
                .context("writing the netns pid file")?;
            drop(lock);
            let netns = NetNs {
                index,
                name,
                host_if: format!("fgh{index}"),
                host_ip: Ipv4Addr::new(10, 213, index, 1),
                inside_ip: Ipv4Addr::new(10, 213, index, 2),
            };
            // From here on, dropping `netns` cleans up.
            netns.set_up()?;
            return Ok(netns);
        }
        bail!("no free test network namespace (fg1..fg250)")
    }

    fn set_up(&self) -> Result<()> {
        let inside_if = format!("fgn{}", self.index);
        let _ = ip(&["link", "del", &self.host_if]);
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inside_if,
        ])?;
        ip(&["link", "set", &inside_if, "netns", &self.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.host_ip),
            "dev",
            &self.host_if,
        ])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &self.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        exec(&[
            "addr",
            "add",
            &format!("{}/24", self.inside_ip),
            "dev",
            &inside_if,
        ])?;
        exec(&["link", "set", &inside_if, "up"])?;
        exec(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The namespace's name (`fg<N>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add arguments and spawn it. Kill
    /// what you spawn before the `NetNs` is dropped.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = std::fs::remove_file(pid_file(self.index));
    }
}
