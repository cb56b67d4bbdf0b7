//! `ferrogate controller` against a real kube-apiserver (1.20): statuses
//! tell the truth, rejections get Events, nothing else changes when one
//! resource goes bad, writes happen only on change, and only watched
//! namespaces are touched.
//!
//! No dataplane is connected here, so `Programmed` is `False` with reason
//! `NoDataplanes` and `dataplanes` is `0/0`; the data-path tests cover
//! `Programmed=True`.

mod controller_common;

use anyhow::{ensure, Result};
use controller_common::*;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn statuses_tell_the_truth() -> Result<()> {
    let api = apiserver_with_crds()?;
    api.kubectl_apply_stdin(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: team-b}\n",
    )?;
    api.kubectl_apply_stdin(&service_yaml("team-a", "web", "10.213.0.2"))?;
    api.kubectl_apply_stdin(&route_yaml("team-a", "good", "good.example.com", "web"))?;
    api.kubectl_apply_stdin(&route_yaml(
        "team-a",
        "missing",
        "missing.example.com",
        "nosuch",
    ))?;
    api.kubectl_apply_stdin(
        "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: bad, namespace: team-a}
spec:
  hosts: [bad.example.com]
  rules:
  - matches: [{path: {type: RegularExpression, value: '/items/([0-9'}}]
    backends: [{name: web, port: 80}]
",
    )?;
    // Not watched: must never get a status.
    api.kubectl_apply_stdin(&service_yaml("team-b", "web", "10.213.0.2"))?;
    api.kubectl_apply_stdin(&route_yaml("team-b", "elsewhere", "b.example.com", "web"))?;

    let controller = ControllerProcess::start(
        api.kubeconfig_path(),
        "replica-1",
        &["--no-stream", "--namespaces", "team-a,default"],
    )?;
    let context = |name: &str| {
        let object = get(&api, "apiroute", "team-a", name).map(|v| v["status"].to_string());
        format!(
            "{name} status: {object:?}\ncontroller log:\n{}",
            controller.log()
        )
    };

    // A valid route.
    let good = wait_for(
        WAIT,
        "good: Accepted=True, ResolvedRefs=True",
        || {
            let v = get(&api, "apiroute", "team-a", "good")?;
            Ok((has(&v, "Accepted", "True", "Accepted")
                && has(&v, "ResolvedRefs", "True", "ResolvedRefs"))
            .then_some(v))
        },
        || context("good"),
    )?;
    ensure!(
        has(&good, "Programmed", "False", "NoDataplanes"),
        "{}",
        good["status"]
    );
    ensure!(good["status"]["dataplanes"] == "0/0", "{}", good["status"]);
    ensure!(
        good["status"]["observedGeneration"] == 1,
        "{}",
        good["status"]
    );
    for c in good["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        ensure!(c["observedGeneration"] == 1, "{c}");
        ensure!(c["lastTransitionTime"].is_string(), "{c}");
    }
    ensure!(
        status_managers(&good) == ["ferrogate-controller.replica-1"],
        "status field managers: {:?}",
        status_managers(&good)
    );

    // A route whose Service does not exist.
    let missing = wait_for(
        WAIT,
        "missing: ResolvedRefs=False/BackendNotFound",
        || {
            let v = get(&api, "apiroute", "team-a", "missing")?;
            Ok(has(&v, "ResolvedRefs", "False", "BackendNotFound").then_some(v))
        },
        || context("missing"),
    )?;
    ensure!(
        has(&missing, "Accepted", "True", "Accepted"),
        "{}",
        missing["status"]
    );
    let (_, _, message) = condition(&missing, "ResolvedRefs").unwrap_or_default();
    ensure!(
        message.contains("nosuch"),
        "message names the Service: {message}"
    );

    // An invalid route: the reason names the problem and the field.
    let bad = wait_for(
        WAIT,
        "bad: Accepted=False/InvalidRegex",
        || {
            let v = get(&api, "apiroute", "team-a", "bad")?;
            Ok(has(&v, "Accepted", "False", "InvalidRegex").then_some(v))
        },
        || context("bad"),
    )?;
    let (_, _, message) = condition(&bad, "Accepted").unwrap_or_default();
    ensure!(
        message.contains("spec.rules[0].matches[0].path.value"),
        "{message}"
    );
    ensure!(
        has(&bad, "Programmed", "False", "Invalid"),
        "{}",
        bad["status"]
    );

    // ... and an Event says so.
    wait_for(
        WAIT,
        "a Warning event for bad",
        || {
            let events = api.kubectl(&[
                "get",
                "events",
                "-n",
                "team-a",
                "--field-selector",
                "involvedObject.name=bad",
                "-o",
                "json",
            ])?;
            let events: Value = serde_json::from_str(&events)?;
            Ok(events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["type"] == "Warning" && e["reason"] == "InvalidRegex")
                .then_some(()))
        },
        || controller.log(),
    )?;

    // Writes only on change: with nothing happening, no status is rewritten.
    let before: Vec<String> = ["good", "missing", "bad"]
        .iter()
        .map(|n| {
            get(&api, "apiroute", "team-a", n).map(|v| v["metadata"]["resourceVersion"].to_string())
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<String> = ["good", "missing", "bad"]
        .iter()
        .map(|n| {
            get(&api, "apiroute", "team-a", n).map(|v| v["metadata"]["resourceVersion"].to_string())
        })
        .collect::<Result<_>>()?;
    ensure!(
        before == after,
        "statuses were rewritten without a change: {before:?} -> {after:?}"
    );

    // Editing the valid route into an invalid one rejects that generation
    // only: the last accepted generation keeps serving, and nothing else
    // changes.
    let good_time = good["status"]["conditions"][0]["lastTransitionTime"].clone();
    api.kubectl(&[
        "patch", "apiroute", "good", "-n", "team-a", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/matches/0/path","value":{"type":"RegularExpression","value":"(["}}]"#,
    ])?;
    let good2 = wait_for(
        WAIT,
        "good generation 2: Accepted=False/InvalidRegex",
        || {
            let v = get(&api, "apiroute", "team-a", "good")?;
            Ok((v["status"]["observedGeneration"] == 2
                && has(&v, "Accepted", "False", "InvalidRegex"))
            .then_some(v))
        },
        || context("good"),
    )?;
    let (_, _, message) = condition(&good2, "Accepted").unwrap_or_default();
    ensure!(message.contains("still serving generation 1"), "{message}");
    ensure!(
        has(&good2, "Programmed", "False", "Invalid"),
        "{}",
        good2["status"]
    );
    std::thread::sleep(Duration::from_secs(1));
    let others: Vec<String> = ["missing", "bad"]
        .iter()
        .map(|n| {
            get(&api, "apiroute", "team-a", n).map(|v| v["metadata"]["resourceVersion"].to_string())
        })
        .collect::<Result<_>>()?;
    ensure!(
        others == after[1..],
        "other routes changed: {:?} -> {others:?}",
        &after[1..]
    );

    // Fixing it brings it back, with a new transition time for Accepted.
    api.kubectl(&[
        "patch", "apiroute", "good", "-n", "team-a", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/matches/0/path","value":{"type":"PathPrefix","value":"/"}}]"#,
    ])?;
    let good3 = wait_for(
        WAIT,
        "good generation 3: Accepted=True",
        || {
            let v = get(&api, "apiroute", "team-a", "good")?;
            Ok(
                (v["status"]["observedGeneration"] == 3 && has(&v, "Accepted", "True", "Accepted"))
                    .then_some(v),
            )
        },
        || context("good"),
    )?;
    let resolved = |v: &Value| {
        v["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "ResolvedRefs"))
            .map(|c| c["lastTransitionTime"].clone())
    };
    ensure!(
        resolved(&good3) == resolved(&good),
        "ResolvedRefs stayed True, so its transition time is kept"
    );
    let _ = good_time;

    // Creating the missing Service resolves the other route.
    api.kubectl_apply_stdin(&service_yaml("team-a", "nosuch", "10.213.0.3"))?;
    wait_for(
        WAIT,
        "missing: ResolvedRefs=True",
        || {
            let v = get(&api, "apiroute", "team-a", "missing")?;
            Ok(has(&v, "ResolvedRefs", "True", "ResolvedRefs").then_some(()))
        },
        || context("missing"),
    )?;

    // A namespace that is not watched is not touched.
    let elsewhere = get(&api, "apiroute", "team-b", "elsewhere")?;
    ensure!(
        elsewhere.get("status").is_none_or(Value::is_null),
        "{}",
        elsewhere["status"]
    );

    ensure!(
        !controller.log().contains("Forbidden"),
        "the admin controller was refused something:\n{}",
        controller.log()
    );
    Ok(())
}
