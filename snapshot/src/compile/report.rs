//! Problems found while compiling one resource, and the status conditions
//! made from them.
//!
//! Each pass collects [`Problem`]s in three lists: the resource is invalid
//! (`Accepted=False`), a reference does not resolve (`ResolvedRefs=False`),
//! or a part conflicts with an older resource (`Conflicted=True`).
//! [`Findings::into_report`] turns them into a [`ResourceStatusReport`].

use super::ResourceStatusReport;
use crds::common::Condition;
use serde::{Deserialize, Serialize};

/// Longest condition message; the apiserver refuses more than 32768 bytes.
const MAX_MESSAGE_LEN: usize = 16 * 1024;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The resource (or the part named) is rejected.
    Error,
    /// The resource is accepted, but something it refers to is missing or
    /// part of it is shadowed.
    Warning,
}

/// One problem with one field of a resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Path of the field, e.g. `spec.rules[1].matches[0].path.value`.
    pub field: String,
    /// CamelCase reason, e.g. `InvalidRegex`.
    pub reason: String,
    /// What is wrong, for humans.
    pub message: String,
    /// Whether it rejects the resource.
    pub severity: Severity,
}

impl Problem {
    /// `field: message`, as in condition messages.
    pub fn describe(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// Problems of one resource, by the condition they affect.
#[derive(Default, Debug, Clone)]
pub(crate) struct Findings {
    pub(crate) invalid: Vec<Problem>,
    pub(crate) refs: Vec<Problem>,
    pub(crate) conflicts: Vec<Problem>,
}

impl Findings {
    pub(crate) fn invalid(
        &mut self,
        field: impl Into<String>,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.invalid
            .push(problem(field, reason, message, Severity::Error));
    }

    pub(crate) fn unresolved(
        &mut self,
        field: impl Into<String>,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.refs
            .push(problem(field, reason, message, Severity::Warning));
    }

    pub(crate) fn conflict(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.conflicts
            .push(problem(field, "Conflicted", message, Severity::Warning));
    }

    pub(crate) fn is_invalid(&self) -> bool {
        !self.invalid.is_empty()
    }
}

fn problem(
    field: impl Into<String>,
    reason: &str,
    message: impl Into<String>,
    severity: Severity,
) -> Problem {
    Problem {
        field: field.into(),
        reason: reason.to_owned(),
        message: message.into(),
        severity,
    }
}

/// Why a resource that has no invalid field is still not accepted.
pub(crate) enum NotAccepted {
    /// Every part of it conflicts with older resources.
    AllConflicted,
    /// None of its targets exists.
    NoTarget(Problem),
}

/// Everything needed to write a status.
pub(crate) struct StatusInput {
    pub(crate) generation: Option<i64>,
    pub(crate) findings: Findings,
    /// The generation served (current, fallback, or none).
    pub(crate) serving_generation: Option<i64>,
    /// Set when the resource is invalid and an older version serves.
    pub(crate) fallback_generation: Option<i64>,
    pub(crate) not_accepted: Option<NotAccepted>,
    pub(crate) not_after: Option<String>,
    /// Replaces the default end of an `Accepted=False` message for an
    /// invalid resource ("still serving generation N" / "nothing of it is
    /// served").
    pub(crate) invalid_note: Option<String>,
}

impl StatusInput {
    pub(crate) fn new(generation: Option<i64>, findings: Findings) -> Self {
        StatusInput {
            generation,
            findings,
            serving_generation: None,
            fallback_generation: None,
            not_accepted: None,
            not_after: None,
            invalid_note: None,
        }
    }

    pub(crate) fn into_report(self) -> ResourceStatusReport {
        let StatusInput {
            generation,
            findings,
            serving_generation,
            fallback_generation,
            not_accepted,
            not_after,
            invalid_note,
        } = self;
        let condition = |type_: &str, ok: bool, reason: &str, message: String| Condition {
            type_: type_.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: None,
        };
        let mut problems = Vec::new();
        let mut conditions = Vec::with_capacity(3);

        let serving_suffix = match (invalid_note, fallback_generation) {
            (Some(note), _) => format!("; {note}"),
            (None, Some(g)) => format!("; still serving generation {g}"),
            (None, None) => "; nothing of it is served".to_owned(),
        };
        if let Some(first) = findings.invalid.first() {
            let reason = first.reason.clone();
            let message = join(&findings.invalid) + &serving_suffix;
            conditions.push(condition("Accepted", false, &reason, message));
        } else {
            match &not_accepted {
                Some(NotAccepted::AllConflicted) => {
                    let message = format!(
                        "every match conflicts with an older resource: {}",
                        join(&findings.conflicts)
                    );
                    conditions.push(condition("Accepted", false, "Conflicted", message));
                }
                Some(NotAccepted::NoTarget(p)) => {
                    conditions.push(condition("Accepted", false, &p.reason, p.describe()));
                }
                None => conditions.push(condition("Accepted", true, "Accepted", String::new())),
            }
        }
        match findings.refs.first() {
            Some(first) => {
                let reason = first.reason.clone();
                conditions.push(condition(
                    "ResolvedRefs",
                    false,
                    &reason,
                    join(&findings.refs),
                ));
            }
            None => conditions.push(condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                String::new(),
            )),
        }
        if !findings.conflicts.is_empty() {
            let message = join(&findings.conflicts);
            conditions.push(Condition {
                status: "True".to_owned(),
                ..condition("Conflicted", true, "Conflicted", message)
            });
        }

        problems.extend(findings.invalid);
        if let Some(NotAccepted::NoTarget(p)) = not_accepted {
            problems.push(p);
        }
        problems.extend(findings.refs);
        let conflict_severity = if conditions
            .first()
            .is_some_and(|c| c.status == "False" && c.reason == "Conflicted")
        {
            Severity::Error
        } else {
            Severity::Warning
        };
        problems.extend(findings.conflicts.into_iter().map(|mut p| {
            p.severity = conflict_severity;
            p
        }));
        ResourceStatusReport {
            generation,
            conditions,
            serving_generation,
            not_after,
            problems,
        }
    }
}

/// `field: message; field: message`, cut to a size the apiserver accepts.
fn join(problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        let text = p.describe();
        if out.len() + text.len() + 2 > MAX_MESSAGE_LEN {
            out.push_str(&format!("; and {} more", problems.len() - i));
            break;
        }
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&text);
    }
    out
}
