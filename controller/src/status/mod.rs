//! The status writer: makes every Ferrogate resource's `status` say what is
//! true, writing only what changed, only as the leader, and never from
//! stale information.
//!
//! ```text
//! triggers: new compile output | ACK/NACK/connect/disconnect | observed
//!           status changed | leadership | issuance | periodic tick
//!   └─► plan (under the index lock, pure: desired::desired per resource)
//!         skip when the index holds a newer generation than the compile
//!         skip when the observed status is of a newer generation
//!         skip when desired == observed
//!   └─► write each (token bucket): merge patch on the status subresource
//!         with metadata.resourceVersion as precondition (409 = someone
//!         changed it since we looked: wait for the watch and re-plan),
//!         field manager `ferrogate-controller.<replica id>`
//!   └─► Events (events.k8s.io/v1) for new rejections and warnings
//! ```
//!
//! The resourceVersion precondition is what keeps status from ever going
//! backwards: a write computed from an older object (an old generation, or
//! a status another replica wrote meanwhile) is refused by the apiserver.

pub mod desired;

use crate::compiler::{unix_now, CompileOutput, Generations};
use crate::index::{Index, SharedIndex};
use crate::issuer::{self, IssuerStates};
use crate::replicas::Reports;
use crate::stream::AckTracker;
use crate::throttle::TokenBucket;
use crds::tls::TlsCertificateStatus;
use crds::{ApiRoute, AuthPolicy, RateLimitPolicy, TlsCertificate};
use desired::{EventNote, Inputs, IssuerState};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use snapshot::compile::{
    ObjectKey, KIND_API_ROUTE, KIND_AUTH_POLICY, KIND_RATE_LIMIT_POLICY, KIND_TLS_CERTIFICATE,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Writes planned per round; the plan is recomputed after each round, so
/// a long backlog never writes from old information.
const ROUND: usize = 100;
/// Coalesces triggers that arrive together (two dataplanes ACKing).
const COALESCE: Duration = Duration::from_millis(10);

/// Settings of the status writer.
#[derive(Clone, Debug)]
pub struct StatusSettings {
    /// Field manager of the writes; names the replica.
    pub field_manager: String,
    /// Replica id, for Events.
    pub instance: String,
    /// Average writes per second.
    pub qps: f64,
    /// Writes allowed at once.
    pub burst: u32,
    /// Re-check (time-dependent conditions, failed writes) this often.
    pub tick: Duration,
}

/// One status write.
#[derive(Debug)]
struct Write {
    key: ObjectKey,
    uid: String,
    resource_version: Option<String>,
    status: TlsCertificateStatus,
    events: Vec<EventNote>,
}

/// Failed writes, retried with backoff.
#[derive(Default)]
struct Failures {
    by_key: HashMap<ObjectKey, (u32, Instant)>,
}

impl Failures {
    fn blocked(&self, key: &ObjectKey, now: Instant) -> bool {
        self.by_key.get(key).is_some_and(|(_, until)| *until > now)
    }

    fn failed(&mut self, key: &ObjectKey) {
        let entry = self
            .by_key
            .entry(key.clone())
            .or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        let backoff = Duration::from_millis(500u64 << entry.0.min(7));
        entry.1 = Instant::now() + backoff;
    }

    fn succeeded(&mut self, key: &ObjectKey) {
        self.by_key.remove(key);
    }
}

/// The API resource of a Ferrogate kind.
fn api_resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        KIND_API_ROUTE => ApiResource::erase::<ApiRoute>(&()),
        KIND_AUTH_POLICY => ApiResource::erase::<AuthPolicy>(&()),
        KIND_RATE_LIMIT_POLICY => ApiResource::erase::<RateLimitPolicy>(&()),
        KIND_TLS_CERTIFICATE => ApiResource::erase::<TlsCertificate>(&()),
        _ => return None,
    })
}

/// Plans the writes: every resource whose desired status differs from the
/// observed one, skipping stale information (see the module docs).
fn plan(
    index: &Index,
    out: &CompileOutput,
    acks: &[Option<&Generations>],
    issuers: &IssuerStates,
    failures: &Failures,
    now: i64,
) -> Vec<Write> {
    let observed = index.observed();
    let instant = Instant::now();
    let mut writes = Vec::new();
    for (key, report) in &out.statuses {
        let Some(current) = observed.get(key) else {
            continue; // deleted since the compile
        };
        if current.generation != report.generation {
            continue; // a newer generation is being compiled
        }
        let observed_status = current.status.as_ref();
        if observed_status
            .and_then(|s| s.observed_generation)
            .zip(report.generation)
            .is_some_and(|(seen, ours)| seen > ours)
        {
            continue; // never go back to an older generation
        }
        if failures.blocked(key, instant) {
            continue;
        }
        let issuer_state = if key.kind == KIND_TLS_CERTIFICATE {
            index
                .tls_certificates
                .get(&key.namespace, &key.name)
                .and_then(|c| c.spec.issuer.as_ref())
                .map(|spec| IssuerState {
                    renew_before_secs: issuer::renew_before_secs(spec),
                    outcome: issuers.outcome(key),
                })
        } else {
            None
        };
        let status = desired::desired(&Inputs {
            key,
            report,
            observed: observed_status,
            acks,
            issuer: issuer_state.as_ref(),
            now,
        });
        if observed_status == Some(&status) {
            continue;
        }
        let events = desired::events(observed_status, &status);
        writes.push(Write {
            key: key.clone(),
            uid: current.uid.clone(),
            resource_version: current.resource_version.clone(),
            status,
            events,
        });
        if writes.len() >= ROUND {
            break;
        }
    }
    writes
}

/// The merge patch: the whole status (absent optional fields as `null`, so
/// that they are removed) and the resourceVersion precondition.
fn patch_body(write: &Write) -> serde_json::Value {
    let mut status = serde_json::to_value(&write.status).unwrap_or_default();
    if let Some(map) = status.as_object_mut() {
        for field in [
            "observedGeneration",
            "conditions",
            "notAfter",
            "renewalTime",
            "dataplanes",
        ] {
            map.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({
        "metadata": {"resourceVersion": write.resource_version},
        "status": status,
    })
}

/// Runs the writer until `shutdown` turns true.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    shared: Arc<SharedIndex>,
    mut compiled: watch::Receiver<Option<Arc<CompileOutput>>>,
    tracker: AckTracker,
    reports: Arc<Reports>,
    issuers: Arc<IssuerStates>,
    mut leader: watch::Receiver<bool>,
    settings: StatusSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ferrogate-controller".into(),
            instance: Some(settings.instance.clone()),
        },
    );
    let params = PatchParams {
        field_manager: Some(settings.field_manager.clone()),
        ..PatchParams::default()
    };
    let mut bucket = TokenBucket::new(settings.qps, settings.burst);
    let mut failures = Failures::default();
    let mut acks_changed = tracker.changed();
    let mut observed_changed = shared.observed_changes();
    let mut issued_changed = issuers.changes();
    let mut reports_changed = reports.changes();
    loop {
        let is_leader = *leader.borrow_and_update();
        let output = compiled.borrow_and_update().clone();
        acks_changed.borrow_and_update();
        observed_changed.borrow_and_update();
        issued_changed.borrow_and_update();
        reports_changed.borrow_and_update();

        let mut pending = 0;
        if let (true, Some(output)) = (is_leader, output) {
            // This replica's dataplanes, then those other live replicas
            // report (a dataplane id once: the local view wins).
            let mut hashes: Vec<(String, Option<String>)> = tracker
                .dataplanes()
                .into_iter()
                .map(|d| (d.id, d.acked_hash))
                .collect();
            for remote in reports.live(&settings.instance, Instant::now()) {
                if !hashes.iter().any(|(id, _)| *id == remote.id) {
                    hashes.push((remote.id, remote.acked_hash));
                }
            }
            let acks: Vec<Option<&Generations>> = hashes
                .iter()
                .map(|(_, hash)| hash.as_deref().and_then(|h| output.generations_of(h)))
                .collect();
            let now = unix_now();
            let writes = shared.read(|index| plan(index, &output, &acks, &issuers, &failures, now));
            pending = writes.len();
            for write in writes {
                bucket.acquire().await;
                if !*leader.borrow() || *shutdown.borrow() {
                    break;
                }
                write_one(&client, &shared, &recorder, &params, &mut failures, write).await;
            }
        }
        if pending >= ROUND {
            continue;
        }
        tokio::select! {
            r = compiled.changed() => if r.is_err() { return },
            r = acks_changed.changed() => if r.is_err() { return },
            r = observed_changed.changed() => if r.is_err() { return },
            r = issued_changed.changed() => if r.is_err() { return },
            r = reports_changed.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(settings.tick) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        tokio::time::sleep(COALESCE).await;
    }
}

async fn write_one(
    client: &Client,
    shared: &SharedIndex,
    recorder: &Recorder,
    params: &PatchParams,
    failures: &mut Failures,
    write: Write,
) {
    let Some(resource) = api_resource(&write.key.kind) else {
        return;
    };
    let key = &write.key;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &resource);
    let body = patch_body(&write);
    match api
        .patch_status(&key.name, params, &Patch::Merge(&body))
        .await
    {
        Ok(object) => {
            failures.succeeded(key);
            let status = object
                .data
                .get("status")
                .cloned()
                .and_then(|s| serde_json::from_value::<TlsCertificateStatus>(s).ok())
                .unwrap_or_default();
            tracing::debug!(resource = %key, "status written");
            shared.update(|index| {
                index.record_write(
                    key,
                    &write.uid,
                    object.metadata.resource_version.clone(),
                    status,
                );
                crate::index::Change::default()
            });
            for note in &write.events {
                let reference = ObjectReference {
                    api_version: Some(resource.api_version.clone()),
                    kind: Some(resource.kind.clone()),
                    name: Some(key.name.clone()),
                    namespace: Some(key.namespace.clone()),
                    uid: Some(write.uid.clone()),
                    ..ObjectReference::default()
                };
                let event = Event {
                    type_: if note.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: note.reason.chars().take(128).collect(),
                    note: Some(note.note.chars().take(1000).collect()),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(error) = recorder.publish(&event, &reference).await {
                    tracing::warn!(resource = %key, error = %error, "cannot record event");
                }
            }
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Changed since we looked; the watch brings the new version
            // and the next plan starts from it.
            tracing::debug!(resource = %key, "status write conflicted; re-planning");
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => {
            failures.failed(key);
            tracing::warn!(resource = %key, error = %error, "status write failed; retrying with backoff");
        }
    }
}
