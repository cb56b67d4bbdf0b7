//! Leader election with a `coordination.k8s.io/v1` Lease, the way
//! client-go's leaderelection does it: only the leader writes status and
//! issues certificates; every replica watches, compiles and serves the
//! snapshot stream.
//!
//! ```text
//! every retry period (leader: every renew interval):
//!   GET lease
//!   ├─ none ─────────────────────────► create (holder = me)       ─► leader
//!   ├─ holder = me ──────────────────► replace (renewTime = now)  ─► leader
//!   │                                   (fails for renewDeadline  ─► follower)
//!   ├─ no holder (released) ─────────► replace (holder = me)       ─► leader
//!   └─ holder = other:
//!        record (holder, renewTime, resourceVersion) unchanged for
//!        leaseDurationSeconds by OUR clock? ─► replace (holder = me,
//!                                               leaseTransitions + 1)
//!        else ─────────────────────────────► follower
//! ```
//!
//! Every write carries the resourceVersion read, so two candidates never
//! both win. Expiry is judged by when this replica saw the record change,
//! not by the timestamps in it, so clock skew between machines does not
//! matter. The leader steps down by itself when it cannot renew for
//! `renew_deadline` (shorter than the lease duration), before anyone else
//! may take over; on shutdown it releases the lease so that another
//! replica takes over at its next retry.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (holderIdentity).
    pub identity: String,
    /// How long a lease is valid without renewal (default 15 s).
    pub lease_duration: Duration,
    /// How often the leader renews (default 5 s).
    pub renew_interval: Duration,
    /// How often a follower checks the lease (default 2 s).
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// How long the leader keeps leading without a successful renewal:
    /// two thirds of the lease, so it stops before a follower may start.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// What the lease says, as far as the decision is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// holderIdentity, `None` or empty when released.
    pub holder: Option<String>,
    /// renewTime as written.
    pub renew_time: Option<String>,
    /// leaseDurationSeconds.
    pub duration_secs: Option<i32>,
    /// metadata.resourceVersion.
    pub resource_version: Option<String>,
}

/// The decision of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No lease yet: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Released or expired: take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Follow,
}

/// The follower's memory of the last record seen and since when.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    seen: Option<(Record, Instant)>,
}

/// Decides what to do with the lease as read at `now`.
pub fn decide(
    record: Option<&Record>,
    identity: &str,
    default_duration: Duration,
    observation: &mut Observation,
    now: Instant,
) -> Action {
    let Some(record) = record else {
        observation.seen = None;
        return Action::Create;
    };
    match record.holder.as_deref() {
        Some(holder) if holder == identity => return Action::Renew,
        None | Some("") => return Action::TakeOver,
        Some(_) => {}
    }
    let since = match &observation.seen {
        Some((seen, at)) if seen == record => *at,
        _ => {
            observation.seen = Some((record.clone(), now));
            now
        }
    };
    let duration = record
        .duration_secs
        .filter(|d| *d > 0)
        .map(|d| Duration::from_secs(d as u64))
        .unwrap_or(default_duration);
    if now.duration_since(since) >= duration {
        Action::TakeOver
    } else {
        Action::Follow
    }
}

fn record_of(lease: &Lease) -> Record {
    let spec = lease.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity,
        renew_time: spec.renew_time.map(|t| t.0.to_string()),
        duration_secs: spec.lease_duration_seconds,
        resource_version: lease.metadata.resource_version.clone(),
    }
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Runs the election until `shutdown` turns true; `leader` says whether
/// this replica leads. Releases the lease on shutdown.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observation = Observation::default();
    let mut last_renewal: Option<Instant> = None;
    let duration_secs = settings.lease_duration.as_secs().max(1) as i32;
    loop {
        let leading = *leader.borrow();
        let now = Instant::now();
        let outcome = round(&api, &settings, &mut observation, duration_secs, now).await;
        match outcome {
            Ok(true) => {
                last_renewal = Some(now);
                if !leading {
                    tracing::info!(identity = %settings.identity, lease = %settings.name, "became the leader");
                    leader.send_replace(true);
                }
            }
            Ok(false) => {
                if leading {
                    tracing::warn!(identity = %settings.identity, "another replica holds the lease; stepping down");
                    leader.send_replace(false);
                }
                last_renewal = None;
            }
            Err(error) => {
                tracing::warn!(identity = %settings.identity, error = %error, "lease round failed");
                if leading
                    && last_renewal
                        .is_none_or(|t| now.duration_since(t) >= settings.renew_deadline())
                {
                    tracing::warn!(identity = %settings.identity, "cannot renew the lease; stepping down");
                    leader.send_replace(false);
                    last_renewal = None;
                }
            }
        }
        let wait = if *leader.borrow() {
            settings.renew_interval
        } else {
            settings.retry_period
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        release(&api, &settings).await;
    }
}

/// One round; `Ok(true)` when we hold the lease afterwards.
async fn round(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observation: &mut Observation,
    duration_secs: i32,
    now: Instant,
) -> Result<bool, kube::Error> {
    let lease = api.get_opt(&settings.name).await?;
    let record = lease.as_ref().map(record_of);
    let action = decide(
        record.as_ref(),
        &settings.identity,
        settings.lease_duration,
        observation,
        now,
    );
    let result = match (action, lease) {
        (Action::Follow, _) => return Ok(false),
        (Action::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(settings.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (Action::Renew, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(micro_now());
            spec.lease_duration_seconds = Some(duration_secs);
            api.replace(&settings.name, &PostParams::default(), &lease)
                .await
        }
        (Action::TakeOver, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            tracing::info!(
                identity = %settings.identity,
                previous = spec.holder_identity.as_deref().unwrap_or(""),
                "taking over the lease"
            );
            spec.holder_identity = Some(settings.identity.clone());
            spec.acquire_time = Some(micro_now());
            spec.renew_time = Some(micro_now());
            spec.lease_duration_seconds = Some(duration_secs);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            api.replace(&settings.name, &PostParams::default(), &lease)
                .await
        }
        (Action::Renew | Action::TakeOver, None) => return Ok(false),
    };
    match result {
        Ok(_) => Ok(true),
        // Someone else wrote first: they won this round.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    let Ok(Some(mut lease)) = api.get_opt(&settings.name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(micro_now());
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(identity = %settings.identity, "released the lease"),
        Err(error) => {
            tracing::warn!(identity = %settings.identity, error = %error, "cannot release the lease")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, renew: &str, rv: &str) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            renew_time: Some(renew.to_owned()),
            duration_secs: Some(15),
            resource_version: Some(rv.to_owned()),
        }
    }

    #[test]
    fn create_renew_and_released() {
        let mut obs = Observation::default();
        let now = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "me", d, &mut obs, now), Action::Create);
        let mine = record(Some("me"), "t1", "1");
        assert_eq!(decide(Some(&mine), "me", d, &mut obs, now), Action::Renew);
        let released = record(None, "t1", "2");
        assert_eq!(
            decide(Some(&released), "me", d, &mut obs, now),
            Action::TakeOver
        );
        let empty = record(Some(""), "t1", "3");
        assert_eq!(
            decide(Some(&empty), "me", d, &mut obs, now),
            Action::TakeOver
        );
    }

    #[test]
    fn take_over_only_after_the_record_stood_still_for_the_duration() {
        let mut obs = Observation::default();
        let start = Instant::now();
        let d = Duration::from_secs(15);
        let theirs = record(Some("other"), "t1", "1");
        assert_eq!(
            decide(Some(&theirs), "me", d, &mut obs, start),
            Action::Follow
        );
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(
            decide(Some(&theirs), "me", d, &mut obs, at(14)),
            Action::Follow
        );
        // A renewal resets the clock.
        let renewed = record(Some("other"), "t2", "2");
        assert_eq!(
            decide(Some(&renewed), "me", d, &mut obs, at(14)),
            Action::Follow
        );
        assert_eq!(
            decide(Some(&renewed), "me", d, &mut obs, at(28)),
            Action::Follow
        );
        assert_eq!(
            decide(Some(&renewed), "me", d, &mut obs, at(29)),
            Action::TakeOver
        );
    }

    #[test]
    fn the_deadline_is_inside_the_lease() {
        let s = LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
        };
        assert_eq!(s.renew_deadline(), Duration::from_secs(10));
    }
}
