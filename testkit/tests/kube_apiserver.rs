//! The harness itself against the real binaries: startup from async and
//! sync tests, the kubeconfig, kubectl helpers, and cleanup on drop.

use anyhow::{ensure, Result};
use std::path::Path;
use testkit::KubeApiserver;

fn process_alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would, so check its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn starts_from_async_tests_and_serves_kubectl() -> Result<()> {
    let api = KubeApiserver::start().await?;
    eprintln!(
        "kube-apiserver {} ready in {:?}",
        api.server_url(),
        api.startup_duration()
    );
    ensure!(api.server_url().starts_with("https://127.0.0.1:"));
    ensure!(api.ca_pem().contains("BEGIN CERTIFICATE"));
    ensure!(!api.admin_token().is_empty());

    let kubeconfig = std::fs::read_to_string(api.kubeconfig_path())?;
    ensure!(kubeconfig.contains(api.server_url()));
    ensure!(kubeconfig.contains(api.admin_token()));

    // The admin is in system:masters: RBAC lets it do anything.
    let can = api.kubectl(&["auth", "can-i", "*", "*", "--all-namespaces"])?;
    ensure!(can.trim() == "yes", "admin cannot do everything: {can}");

    let created = api.kubectl_apply_stdin(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: testkit-demo\n",
    )?;
    ensure!(
        created.contains("namespace/testkit-demo created"),
        "{created}"
    );
    let got = api.kubectl(&["get", "namespace", "testkit-demo", "-o", "name"])?;
    ensure!(got.trim() == "namespace/testkit-demo", "{got}");

    // Errors carry kubectl's stderr.
    let err = api
        .kubectl(&["get", "namespace", "no-such-namespace"])
        .map(|_| ())
        .expect_err("getting a missing namespace must fail");
    ensure!(format!("{err:#}").contains("not found"), "{err:#}");
    Ok(())
}

#[test]
fn starts_from_sync_tests_and_drop_cleans_up() -> Result<()> {
    let api = KubeApiserver::start_blocking()?;
    let (etcd, apiserver) = api.pids();
    let dir = api.dir().to_path_buf();
    ensure!(process_alive(etcd) && process_alive(apiserver));
    ensure!(dir.join("kube-apiserver.log").is_file());

    let version = api.kubectl(&["version", "-o", "json"])?;
    let version: serde_json::Value = serde_json::from_str(&version)?;
    ensure!(
        version["serverVersion"]["gitVersion"] == "v1.20.2",
        "unexpected server version: {version}"
    );

    drop(api);
    ensure!(!process_alive(etcd), "etcd {etcd} still runs after drop");
    ensure!(
        !process_alive(apiserver),
        "kube-apiserver {apiserver} still runs after drop"
    );
    ensure!(
        !Path::new(&dir).exists(),
        "{} still exists after drop",
        dir.display()
    );
    Ok(())
}
