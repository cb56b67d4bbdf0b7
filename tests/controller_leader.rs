//! Two `ferrogate controller` replicas against a real kube-apiserver: one
//! holds the `coordination.k8s.io/v1` Lease and is the only one writing
//! status; killing it (SIGKILL: no release) hands over within the lease
//! duration (plus the follower's retry period), and the new leader keeps
//! status current; a leader stopped with SIGTERM releases the Lease and
//! the other takes over at its next retry.
//!
//! Lease timing here: duration 6 s, renew 2 s, retry 1 s.

mod controller_common;

use anyhow::{ensure, Result};
use controller_common::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(6);
const RETRY: Duration = Duration::from_secs(1);

fn holder(api: &testkit::KubeApiserver) -> Result<Option<String>> {
    let out = api.kubectl_output(
        &[
            "get",
            "lease",
            "ferrogate-controller",
            "-n",
            "default",
            "-o",
            "json",
        ],
        None,
    )?;
    if !out.success() {
        return Ok(None);
    }
    let lease: serde_json::Value = serde_json::from_str(&out.stdout)?;
    Ok(lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned))
}

#[test]
fn one_leader_writes_status_and_a_follower_takes_over() -> Result<()> {
    let api = apiserver_with_crds()?;
    api.kubectl_apply_stdin(&service_yaml("default", "web", "10.213.0.2"))?;
    api.kubectl_apply_stdin(&route_yaml("default", "shop", "shop.example.com", "web"))?;

    let mut args = vec!["--no-stream"];
    args.extend(FAST_LEASE);
    let mut a = Some(ControllerProcess::start(
        api.kubeconfig_path(),
        "replica-a",
        &args,
    )?);
    let mut b = Some(ControllerProcess::start(
        api.kubeconfig_path(),
        "replica-b",
        &args,
    )?);
    let logs = |a: &Option<ControllerProcess>, b: &Option<ControllerProcess>| {
        format!(
            "replica-a:\n{}\nreplica-b:\n{}",
            a.as_ref().map(|p| p.log()).unwrap_or_default(),
            b.as_ref().map(|p| p.log()).unwrap_or_default()
        )
    };

    let leader = wait_for(WAIT, "a Lease holder", || holder(&api), || logs(&a, &b))?;
    eprintln!("leader: {leader}");
    let route = wait_for(
        WAIT,
        "shop: Accepted=True",
        || {
            let v = get(&api, "apiroute", "default", "shop")?;
            Ok(has(&v, "Accepted", "True", "Accepted").then_some(v))
        },
        || logs(&a, &b),
    )?;
    // Give the follower time to (wrongly) write, then check who did.
    std::thread::sleep(Duration::from_secs(2));
    let route = get(&api, "apiroute", "default", "shop").unwrap_or(route);
    let managers = status_managers(&route);
    ensure!(
        managers == [format!("ferrogate-controller.{leader}")],
        "only the leader {leader} writes status, but the managers are {managers:?}"
    );
    ensure!(
        holder(&api)? == Some(leader.clone()),
        "leadership moved without a reason"
    );

    // SIGKILL the leader: it cannot release the Lease.
    let (killed, survivor) = if leader == "replica-a" {
        (&mut a, "replica-b")
    } else {
        (&mut b, "replica-a")
    };
    if let Some(mut p) = killed.take() {
        p.kill();
    }
    let killed_at = Instant::now();
    wait_for(
        LEASE + 3 * RETRY + Duration::from_secs(5),
        "the survivor to hold the Lease",
        || Ok((holder(&api)?.as_deref() == Some(survivor)).then_some(())),
        || logs(&a, &b),
    )?;
    let failover = killed_at.elapsed();
    eprintln!("failover after SIGKILL took {failover:?} (lease {LEASE:?}, retry {RETRY:?})");
    ensure!(
        failover <= LEASE + 2 * RETRY + Duration::from_secs(1),
        "failover took {failover:?}, more than the lease duration plus two retries"
    );

    // The new leader keeps status current: a new generation gets its status.
    api.kubectl(&[
        "patch",
        "apiroute",
        "shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"hosts":["shop.example.com","www.shop.example.com"]}}"#,
    ])?;
    let route = wait_for(
        WAIT,
        "shop generation 2 status from the new leader",
        || {
            let v = get(&api, "apiroute", "default", "shop")?;
            Ok((v["status"]["observedGeneration"] == 2).then_some(v))
        },
        || logs(&a, &b),
    )?;
    let managers = status_managers(&route);
    ensure!(
        managers.contains(&format!("ferrogate-controller.{survivor}")),
        "the new leader wrote the status: {managers:?}"
    );

    // A restarted replica follows; SIGTERM on the leader releases the
    // Lease, and the follower takes over at its next retry.
    let restarted = if survivor == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };
    let follower = ControllerProcess::start(api.kubeconfig_path(), restarted, &args)?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        holder(&api)?.as_deref() == Some(survivor),
        "a restarted replica must not steal the Lease"
    );
    let leader_process = if survivor == "replica-a" {
        &mut a
    } else {
        &mut b
    };
    let stopped_at = Instant::now();
    if let Some(mut p) = leader_process.take() {
        let status = p.terminate();
        ensure!(
            status.is_some_and(|s| s.success()),
            "SIGTERM exit: {status:?}\n{}",
            p.log()
        );
        ensure!(p.log().contains("released the lease"), "{}", p.log());
    }
    wait_for(
        LEASE,
        "the restarted replica to take the released Lease",
        || Ok((holder(&api)?.as_deref() == Some(restarted)).then_some(())),
        || follower.log(),
    )?;
    let handover = stopped_at.elapsed();
    eprintln!("handover after SIGTERM took {handover:?}");
    ensure!(
        handover < LEASE,
        "a released Lease is taken before it would expire: {handover:?}"
    );
    Ok(())
}
