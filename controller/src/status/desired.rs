//! The status a resource should have: the compiler's conditions, plus
//! `Programmed` from the dataplanes' ACKs, plus `Issued` and `Expiring` for
//! certificates. Pure: the time, the ACKs and the observed status are
//! arguments.
//!
//! # Programmed
//!
//! `Programmed=True` only when the resource's current generation is in the
//! published snapshot and every connected dataplane has ACKed a snapshot
//! whose `generations` hold that generation; `status.dataplanes` says how
//! many of the connected dataplanes do (`2/2`). Reasons when it is `False`:
//!
//! - `NoDataplanes`: nothing is connected, so nothing serves it;
//! - `Pending`: some dataplanes have not applied it yet (or NACKed it);
//! - `Invalid`: the current generation is not accepted (an older one may
//!   still serve, and the message says which).
//!
//! # Transition times
//!
//! `lastTransitionTime` changes only when a condition's status changes,
//! as the Kubernetes API conventions say; a new reason or message alone
//! keeps it.

use crate::compiler::Generations;
use crds::common::Condition;
use crds::tls::TlsCertificateStatus;
use snapshot::certs::unix_to_rfc3339;
use snapshot::compile::{ObjectKey, ResourceStatusReport, KIND_TLS_CERTIFICATE};

/// A certificate that expires sooner than this (and is not renewed by the
/// controller) gets `Expiring=True`.
pub const EXPIRY_WARNING_SECS: i64 = 14 * 24 * 3600;

/// Per connected dataplane: the generations of the snapshot it last ACKed,
/// when the controller still remembers that snapshot.
pub type Acks<'a> = [Option<&'a Generations>];

/// What the issuer knows about a TlsCertificate with `issuer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerState {
    /// `renewBefore` in seconds.
    pub renew_before_secs: i64,
    /// Outcome of the last issuance attempt: `Ok(message)` or
    /// `Err((reason, message))`; `None` before the first attempt.
    pub outcome: Option<Result<String, (String, String)>>,
}

/// Inputs of [`desired`].
pub struct Inputs<'a> {
    /// Which resource.
    pub key: &'a ObjectKey,
    /// The compiler's report.
    pub report: &'a ResourceStatusReport,
    /// The status the apiserver shows now.
    pub observed: Option<&'a TlsCertificateStatus>,
    /// The connected dataplanes' ACKs.
    pub acks: &'a Acks<'a>,
    /// For TlsCertificates with `issuer`.
    pub issuer: Option<&'a IssuerState>,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// The status to write.
pub fn desired(inputs: &Inputs<'_>) -> TlsCertificateStatus {
    let report = inputs.report;
    let generation = report.generation;
    let condition = |type_: &str, status: &str, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: None,
    };

    let mut conditions = report.conditions.clone();
    let generation_key = inputs.key.generation_key();
    let connected = inputs.acks.len();
    let serving_current = inputs
        .acks
        .iter()
        .filter(|acked| {
            acked.is_some_and(|g| {
                generation.is_some() && g.get(&generation_key) == generation.as_ref()
            })
        })
        .count();
    let programmed = if report.serving_generation.is_none()
        || report.serving_generation != generation
    {
        let served = match report.serving_generation {
            Some(old) => format!("generation {old} still serves"),
            None => "nothing of it is served".to_owned(),
        };
        condition(
            "Programmed",
            "False",
            "Invalid",
            format!(
                "generation {} is not accepted; {served}",
                generation.map_or("?".to_owned(), |g| g.to_string())
            ),
        )
    } else if connected == 0 {
        condition(
            "Programmed",
            "False",
            "NoDataplanes",
            "no dataplane is connected".to_owned(),
        )
    } else if serving_current == connected {
        condition(
            "Programmed",
            "True",
            "Programmed",
            format!("all {connected} connected dataplanes serve this generation"),
        )
    } else {
        condition(
            "Programmed",
            "False",
            "Pending",
            format!("{serving_current} of {connected} connected dataplanes serve this generation"),
        )
    };
    conditions.push(programmed);

    let mut renewal_time = None;
    let not_after = report.not_after.clone();
    if inputs.key.kind == KIND_TLS_CERTIFICATE {
        let not_after_secs = not_after.as_deref().and_then(parse_rfc3339);
        if let Some(issuer) = inputs.issuer {
            match &issuer.outcome {
                Some(Ok(message)) => {
                    conditions.push(condition("Issued", "True", "Issued", message.clone()))
                }
                Some(Err((reason, message))) => {
                    conditions.push(condition("Issued", "False", reason, message.clone()))
                }
                None => {}
            }
            renewal_time = not_after_secs.map(|n| n - issuer.renew_before_secs);
        }
        if let Some(expiry) = not_after_secs {
            let (expiring, reason, message) = match renewal_time {
                Some(renewal) if inputs.now >= renewal => (
                    true,
                    "RenewalOverdue",
                    format!(
                        "renewal was due at {}; the certificate expires at {}",
                        unix_to_rfc3339(renewal),
                        unix_to_rfc3339(expiry)
                    ),
                ),
                Some(renewal) => (
                    false,
                    "RenewalScheduled",
                    format!("renewed with a new key at {}", unix_to_rfc3339(renewal)),
                ),
                None if expiry - inputs.now < EXPIRY_WARNING_SECS => (
                    true,
                    "ExpiresSoon",
                    format!(
                        "the certificate in the Secret expires at {}; rotate it",
                        unix_to_rfc3339(expiry)
                    ),
                ),
                None => (
                    false,
                    "NotExpiring",
                    format!("expires at {}", unix_to_rfc3339(expiry)),
                ),
            };
            let status = if expiring { "True" } else { "False" };
            conditions.push(condition("Expiring", status, reason, message));
        }
    }

    let now = unix_to_rfc3339(inputs.now);
    for c in &mut conditions {
        let kept = inputs
            .observed
            .and_then(|o| o.conditions.iter().find(|old| old.type_ == c.type_))
            .filter(|old| old.status == c.status)
            .and_then(|old| old.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or_else(|| now.clone()));
    }

    TlsCertificateStatus {
        observed_generation: generation,
        conditions,
        not_after,
        renewal_time: renewal_time.map(unix_to_rfc3339),
        dataplanes: Some(format!("{serving_current}/{connected}")),
    }
}

/// An event to record about a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    /// `Warning` when true, else `Normal`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable text.
    pub note: String,
}

/// Events for what became wrong between the observed status and the new
/// one: a rejection (`Accepted=False`), an unresolved reference, a failed
/// issuance or an expiring certificate, each once per change of reason,
/// message or generation.
pub fn events(old: Option<&TlsCertificateStatus>, new: &TlsCertificateStatus) -> Vec<EventNote> {
    let mut out = Vec::new();
    for (type_, bad) in [
        ("Accepted", "False"),
        ("ResolvedRefs", "False"),
        ("Issued", "False"),
        ("Expiring", "True"),
    ] {
        let Some(now) = new.conditions.iter().find(|c| c.type_ == type_) else {
            continue;
        };
        if now.status != bad {
            continue;
        }
        let before = old.and_then(|o| o.conditions.iter().find(|c| c.type_ == type_));
        let same = before.is_some_and(|b| {
            b.status == now.status
                && b.reason == now.reason
                && b.message == now.message
                && b.observed_generation == now.observed_generation
        });
        if !same {
            out.push(EventNote {
                warning: true,
                reason: now.reason.clone(),
                note: format!("{type_}={}: {}", now.status, now.message),
            });
        }
    }
    out
}

/// Seconds since the epoch of an RFC 3339 timestamp.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    text.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const NOW: i64 = 1_800_000_000;

    fn report(generation: i64, serving: Option<i64>, accepted: bool) -> ResourceStatusReport {
        let c = |t: &str, ok: bool, reason: &str| Condition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: None,
        };
        ResourceStatusReport {
            generation: Some(generation),
            conditions: vec![
                c(
                    "Accepted",
                    accepted,
                    if accepted { "Accepted" } else { "InvalidRegex" },
                ),
                c("ResolvedRefs", true, "ResolvedRefs"),
            ],
            serving_generation: serving,
            ..ResourceStatusReport::default()
        }
    }

    fn gens(key: &str, g: i64) -> Generations {
        Arc::new(BTreeMap::from([(key.to_owned(), g)]))
    }

    fn programmed(status: &TlsCertificateStatus) -> (&str, &str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Programmed")
            .expect("Programmed");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn programmed_only_when_every_dataplane_acked_the_current_generation() {
        let key = ObjectKey::new("ApiRoute", "default", "a");
        let r = report(3, Some(3), true);
        let new = gens(&key.generation_key(), 3);
        let old = gens(&key.generation_key(), 2);
        let status = |acks: &[Option<&Generations>]| {
            desired(&Inputs {
                key: &key,
                report: &r,
                observed: None,
                acks,
                issuer: None,
                now: NOW,
            })
        };
        let none = status(&[]);
        assert_eq!(programmed(&none), ("False", "NoDataplanes"));
        assert_eq!(none.dataplanes.as_deref(), Some("0/0"));

        let half = status(&[Some(&new), Some(&old)]);
        assert_eq!(programmed(&half), ("False", "Pending"));
        assert_eq!(half.dataplanes.as_deref(), Some("1/2"));

        let unknown = status(&[Some(&new), None]);
        assert_eq!(programmed(&unknown), ("False", "Pending"));

        let all = status(&[Some(&new), Some(&new)]);
        assert_eq!(programmed(&all), ("True", "Programmed"));
        assert_eq!(all.dataplanes.as_deref(), Some("2/2"));
        assert_eq!(all.observed_generation, Some(3));
    }

    #[test]
    fn an_invalid_generation_is_never_programmed() {
        let key = ObjectKey::new("ApiRoute", "default", "a");
        let r = report(4, Some(3), false);
        let old = gens(&key.generation_key(), 3);
        let status = desired(&Inputs {
            key: &key,
            report: &r,
            observed: None,
            acks: &[Some(&old)],
            issuer: None,
            now: NOW,
        });
        assert_eq!(programmed(&status), ("False", "Invalid"));
        assert_eq!(status.dataplanes.as_deref(), Some("0/1"));
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Programmed")
            .expect("c");
        assert!(
            c.message.contains("generation 3 still serves"),
            "{}",
            c.message
        );
    }

    #[test]
    fn transition_time_kept_while_status_holds() {
        let key = ObjectKey::new("ApiRoute", "default", "a");
        let r = report(1, Some(1), true);
        let first = desired(&Inputs {
            key: &key,
            report: &r,
            observed: None,
            acks: &[],
            issuer: None,
            now: NOW,
        });
        let later = desired(&Inputs {
            key: &key,
            report: &r,
            observed: Some(&first),
            acks: &[],
            issuer: None,
            now: NOW + 100,
        });
        assert_eq!(first, later, "nothing changed, so nothing to write");

        let g = gens(&key.generation_key(), 1);
        let programmed_now = desired(&Inputs {
            key: &key,
            report: &r,
            observed: Some(&first),
            acks: &[Some(&g)],
            issuer: None,
            now: NOW + 200,
        });
        let time = |s: &TlsCertificateStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .and_then(|c| c.last_transition_time.clone())
        };
        assert_eq!(
            time(&programmed_now, "Accepted"),
            Some(unix_to_rfc3339(NOW))
        );
        assert_eq!(
            time(&programmed_now, "Programmed"),
            Some(unix_to_rfc3339(NOW + 200))
        );
    }

    #[test]
    fn certificates_show_renewal_and_expiry() {
        let key = ObjectKey::new(KIND_TLS_CERTIFICATE, "default", "c");
        let mut r = report(1, Some(1), true);
        r.not_after = Some(unix_to_rfc3339(NOW + 120));
        let issuer = IssuerState {
            renew_before_secs: 110,
            outcome: Some(Ok("issued".into())),
        };
        let expiring = |r: &ResourceStatusReport, now: i64, issuer: Option<&IssuerState>| {
            let s = desired(&Inputs {
                key: &key,
                report: r,
                observed: None,
                acks: &[],
                issuer,
                now,
            });
            let c = s.conditions.iter().find(|c| c.type_ == "Expiring").cloned();
            (s, c.map(|c| (c.status, c.reason)))
        };
        let (s, c) = expiring(&r, NOW, Some(&issuer));
        assert_eq!(s.renewal_time, Some(unix_to_rfc3339(NOW + 10)));
        assert_eq!(s.not_after, Some(unix_to_rfc3339(NOW + 120)));
        assert_eq!(c, Some(("False".into(), "RenewalScheduled".into())));
        let (_, c) = expiring(&r, NOW + 11, Some(&issuer));
        assert_eq!(c, Some(("True".into(), "RenewalOverdue".into())));
        let (s, c) = expiring(&r, NOW, None);
        assert_eq!(s.renewal_time, None);
        assert_eq!(c, Some(("True".into(), "ExpiresSoon".into())));
        r.not_after = Some(unix_to_rfc3339(NOW + 30 * 86_400));
        let (_, c) = expiring(&r, NOW, None);
        assert_eq!(c, Some(("False".into(), "NotExpiring".into())));
    }

    #[test]
    fn events_once_per_new_problem() {
        let key = ObjectKey::new("ApiRoute", "default", "a");
        let bad = report(2, None, false);
        let status = desired(&Inputs {
            key: &key,
            report: &bad,
            observed: None,
            acks: &[],
            issuer: None,
            now: NOW,
        });
        let first = events(None, &status);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].reason, "InvalidRegex");
        assert!(events(Some(&status), &status).is_empty());
        let good = desired(&Inputs {
            key: &key,
            report: &report(3, Some(3), true),
            observed: Some(&status),
            acks: &[],
            issuer: None,
            now: NOW,
        });
        assert!(events(Some(&status), &good).is_empty());
    }
}
