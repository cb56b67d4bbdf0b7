//! Dataplane reports shared between controller replicas.
//!
//! Every replica serves the snapshot stream, so a dataplane may be
//! connected to any of them, but only the leader writes status. For
//! `Programmed` and `dataplanes: N/M` to count every dataplane, each
//! replica publishes what its own dataplanes acknowledged, and the leader
//! reads the others' reports:
//!
//! ```text
//! replica X: AckTracker ──(on change, coalesced; and every renew interval)──►
//!     Lease <lease-name>-<X>   label ferrogate.dev/dataplane-report=<lease-name>
//!       spec.holderIdentity = X, renewTime, leaseDurationSeconds
//!       annotation ferrogate.dev/dataplanes = {"<acked hash>": ["dp-1", ...], "": [not acked yet]}
//! leader: watch Leases with that label ──► Reports ──► status writer
//!     (its own dataplanes come from its AckTracker directly)
//! ```
//!
//! A report counts while it keeps changing: one that this replica has not
//! seen renewed for its `leaseDurationSeconds` (by this replica's clock,
//! like leader election) belongs to a dead replica and is ignored. The
//! annotation groups dataplanes by hash, since they nearly all serve the
//! same snapshot, which keeps it small (a few bytes per dataplane).
//!
//! Hashes compare across replicas because compilation is deterministic; a
//! dataplane that ACKed a snapshot the leader never published (another
//! replica compiled an intermediate state) counts as not serving the
//! current generation until its replica catches up.

use crate::leader::LeaseSettings;
use crate::stream::AckTracker;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Label on report Leases; its value is the leader-election Lease's name.
pub const REPORT_LABEL: &str = "ferrogate.dev/dataplane-report";
/// Annotation with the dataplanes by acknowledged hash.
pub const DATAPLANES_ANNOTATION: &str = "ferrogate.dev/dataplanes";
/// Coalesces ACK bursts into one write.
const COALESCE: Duration = Duration::from_millis(20);

/// Dataplanes by acknowledged hash (`""`: none yet).
pub type ByHash = BTreeMap<String, BTreeSet<String>>;

/// One connected dataplane, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// Dataplane id.
    pub id: String,
    /// Hash of the snapshot it serves, if any.
    pub acked_hash: Option<String>,
}

/// Groups dataplanes by hash for the annotation.
pub fn group(dataplanes: &[Reported]) -> ByHash {
    let mut out = ByHash::new();
    for d in dataplanes {
        out.entry(d.acked_hash.clone().unwrap_or_default())
            .or_default()
            .insert(d.id.clone());
    }
    out
}

/// The inverse of [`group`].
pub fn ungroup(by_hash: &ByHash) -> Vec<Reported> {
    by_hash
        .iter()
        .flat_map(|(hash, ids)| {
            ids.iter().map(move |id| Reported {
                id: id.clone(),
                acked_hash: (!hash.is_empty()).then(|| hash.clone()),
            })
        })
        .collect()
}

/// The report Lease's name for a replica.
pub fn report_name(lease_name: &str, identity: &str) -> String {
    let mut name = format!("{lease_name}-{}", identity.to_ascii_lowercase());
    name.truncate(253);
    name
}

fn label_value(lease_name: &str) -> String {
    lease_name.chars().take(63).collect()
}

#[derive(Clone, Debug)]
struct Report {
    replica: String,
    dataplanes: Vec<Reported>,
    record: (Option<String>, Option<String>),
    seen_at: Instant,
    duration: Duration,
}

/// The other replicas' reports, as this replica sees them.
#[derive(Debug, Default)]
pub struct Reports {
    by_name: Mutex<BTreeMap<String, Report>>,
    changed: watch::Sender<u64>,
}

impl Reports {
    /// Dataplanes reported by live replicas other than `me`, a dataplane
    /// id once (from the most recently renewed report).
    pub fn live(&self, me: &str, now: Instant) -> Vec<Reported> {
        let reports = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<&Report> = reports
            .values()
            .filter(|r| r.replica != me && now.duration_since(r.seen_at) < r.duration)
            .collect();
        live.sort_by_key(|r| std::cmp::Reverse(r.seen_at));
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for report in live {
            for d in &report.dataplanes {
                if seen.insert(d.id.clone()) {
                    out.push(d.clone());
                }
            }
        }
        out
    }

    /// Ticks when a report changes, appears, expires or goes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn apply(&self, lease: &Lease, now: Instant) {
        let Some(name) = lease.metadata.name.clone() else {
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.renew_time.map(|t| t.0.to_string()),
            lease.metadata.resource_version.clone(),
        );
        let dataplanes = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DATAPLANES_ANNOTATION))
            .and_then(|text| serde_json::from_str::<ByHash>(text).ok())
            .map(|g| ungroup(&g))
            .unwrap_or_default();
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let mut reports = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let seen_at = match reports.get(&name) {
            Some(old) if old.record == record => old.seen_at,
            _ => now,
        };
        let report = Report {
            replica: spec.holder_identity.unwrap_or_default(),
            dataplanes,
            record,
            seen_at,
            duration,
        };
        let changed = reports
            .get(&name)
            .is_none_or(|old| old.dataplanes != report.dataplanes || old.replica != report.replica);
        tracing::debug!(report = %name, replica = %report.replica, dataplanes = report.dataplanes.len(), changed, "dataplane report");
        reports.insert(name, report);
        drop(reports);
        if changed {
            self.changed.send_modify(|c| *c += 1);
        }
    }

    fn remove(&self, name: &str) {
        let removed = {
            let mut reports = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
            reports.remove(name).is_some()
        };
        if removed {
            self.changed.send_modify(|c| *c += 1);
        }
    }

    /// Signals when a report expired since the last call.
    fn check_expiry(&self, live_before: &mut BTreeSet<String>, now: Instant) {
        let live: BTreeSet<String> = {
            let reports = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
            reports
                .iter()
                .filter(|(_, r)| now.duration_since(r.seen_at) < r.duration)
                .map(|(n, _)| n.clone())
                .collect()
        };
        if live != *live_before {
            *live_before = live;
            self.changed.send_modify(|c| *c += 1);
        }
    }
}

/// Publishes this replica's dataplanes until `shutdown`; then publishes
/// an empty report.
pub async fn publish(
    client: Client,
    settings: LeaseSettings,
    tracker: AckTracker,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let name = report_name(&settings.name, &settings.identity);
    let mut changes = tracker.changed();
    let mut written: Option<(ByHash, Instant)> = None;
    loop {
        changes.borrow_and_update();
        let dataplanes: Vec<Reported> = tracker
            .dataplanes()
            .into_iter()
            .map(|d| Reported {
                id: d.id,
                acked_hash: d.acked_hash,
            })
            .collect();
        let grouped = group(&dataplanes);
        let due = written
            .as_ref()
            .is_none_or(|(last, at)| *last != grouped || at.elapsed() >= settings.renew_interval);
        if due {
            match write(&api, &name, &settings, &grouped).await {
                Ok(()) => {
                    tracing::debug!(report = %name, dataplanes = dataplanes.len(), "published the dataplane report");
                    written = Some((grouped, Instant::now()));
                }
                Err(error) => {
                    tracing::warn!(report = %name, error = %error, "cannot publish the dataplane report")
                }
            }
        }
        let wait = written
            .as_ref()
            .map(|(_, at)| settings.renew_interval.saturating_sub(at.elapsed()))
            .unwrap_or(settings.retry_period);
        let changed = tokio::select! {
            r = changes.changed() => {
                if r.is_err() { break; }
                true
            }
            _ = tokio::time::sleep(wait) => false,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        if changed {
            tokio::time::sleep(COALESCE).await;
        }
    }
    let _ = write(&api, &name, &settings, &ByHash::new()).await;
}

async fn write(
    api: &Api<Lease>,
    name: &str,
    settings: &LeaseSettings,
    grouped: &ByHash,
) -> Result<(), kube::Error> {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([(
                REPORT_LABEL.to_owned(),
                label_value(&settings.name),
            )])),
            annotations: Some(BTreeMap::from([(
                DATAPLANES_ANNOTATION.to_owned(),
                serde_json::to_string(grouped).unwrap_or_default(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(settings.lease_duration.as_secs().max(1) as i32),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    let params = PatchParams::apply(&format!("ferrogate-controller.{}", settings.identity)).force();
    api.patch(name, &params, &Patch::Apply(&lease)).await?;
    Ok(())
}

/// Watches the other replicas' reports until `shutdown`.
pub async fn watch_reports(
    client: Client,
    settings: LeaseSettings,
    reports: Arc<Reports>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let selector = format!("{REPORT_LABEL}={}", label_value(&settings.name));
    let stream =
        watcher::watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut live = BTreeSet::new();
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = stream.next() => {
                let now = Instant::now();
                match event {
                    Some(Ok(Event::Apply(lease) | Event::InitApply(lease))) => {
                        if let Some(name) = &lease.metadata.name {
                            listed.insert(name.clone());
                        }
                        reports.apply(&lease, now);
                    }
                    Some(Ok(Event::Delete(lease))) => {
                        if let Some(name) = &lease.metadata.name {
                            reports.remove(name);
                        }
                    }
                    Some(Ok(Event::Init)) => listed.clear(),
                    Some(Ok(Event::InitDone)) => {
                        let known: Vec<String> = reports
                            .by_name
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .keys()
                            .cloned()
                            .collect();
                        for name in known.iter().filter(|n| !listed.contains(*n)) {
                            reports.remove(name);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(error = %error, "watching dataplane reports failed; retrying with backoff");
                    }
                    None => return,
                }
            }
            _ = expiry.tick() => reports.check_expiry(&mut live, Instant::now()),
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, replica: &str, renew: &str, dataplanes: &ByHash) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(renew.into()),
                annotations: Some(BTreeMap::from([(
                    DATAPLANES_ANNOTATION.to_owned(),
                    serde_json::to_string(dataplanes).expect("json"),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(replica.into()),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
        }
    }

    fn dp(id: &str, hash: Option<&str>) -> Reported {
        Reported {
            id: id.into(),
            acked_hash: hash.map(str::to_owned),
        }
    }

    #[test]
    fn grouping_round_trips() {
        let list = vec![dp("a", Some("h1")), dp("b", Some("h1")), dp("c", None)];
        let grouped = group(&list);
        assert_eq!(grouped.len(), 2);
        let mut back = ungroup(&grouped);
        back.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(back, list);
    }

    #[test]
    fn reports_of_other_live_replicas_count_once() {
        let reports = Reports::default();
        let start = Instant::now();
        let x = group(&[dp("dp-1", Some("h")), dp("dp-2", None)]);
        let y = group(&[dp("dp-2", Some("h")), dp("dp-3", Some("h"))]);
        reports.apply(&lease("l-x", "x", "1", &x), start);
        reports.apply(&lease("l-y", "y", "1", &y), start + Duration::from_secs(1));
        reports.apply(&lease("l-me", "me", "1", &y), start);

        let mut live = reports.live("me", start + Duration::from_secs(2));
        live.sort_by(|a, b| a.id.cmp(&b.id));
        // dp-2 from y, the more recently renewed report.
        assert_eq!(
            live,
            vec![
                dp("dp-1", Some("h")),
                dp("dp-2", Some("h")),
                dp("dp-3", Some("h"))
            ]
        );

        // x stops renewing: after its 15 s, only y counts.
        reports.apply(&lease("l-y", "y", "2", &y), start + Duration::from_secs(14));
        let live = reports.live("me", start + Duration::from_secs(16));
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|d| d.id != "dp-1"));
    }
}
