//! `ferrogate validate PATH... [--output json]`: the real compiler over
//! manifest files, for CI pipelines.
//!
//! Prints one line per problem, `namespace/Kind/name: field: Reason:
//! message` (warnings end with `(warning)`), and per file problem
//! `file: document N: reason`, then a summary. Exits 1 when a resource is
//! rejected (`Accepted=False`) or a file cannot be loaded, else 0. Missing
//! references (a Service or Secret not among the files) are warnings: in
//! GitOps they often live in another repository.
//!
//! With `--output json` it prints only a JSON array of problems, each
//! `{"resource", "kind", "namespace", "name", "field", "reason",
//! "message", "severity"}` or, for files, `{"file", "document", "message",
//! "severity"}`.

use crate::manifests::{self, LoadError};
use serde::Serialize;
use snapshot::compile::{compile, Compiled, Severity};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// One line per problem and a summary.
    #[default]
    Text,
    /// A JSON array of problems.
    Json,
}

/// Arguments of `ferrogate validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Manifest files or folders (searched recursively for .yaml, .yml and
    /// .json).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// One problem, as `--output json` prints it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProblemRecord {
    /// `namespace/Kind/name` (resource problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Kind (resource problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace (resource problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name (resource problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Field path (resource problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// CamelCase reason (resource problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// File (load problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based document index in the file (load problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// `error` or `warning`.
    pub severity: Severity,
}

impl ProblemRecord {
    /// The text line for this problem.
    pub fn line(&self) -> String {
        let suffix = if self.severity == Severity::Warning {
            " (warning)"
        } else {
            ""
        };
        match (&self.resource, &self.file) {
            (Some(resource), _) => {
                let field = self.field.as_deref().unwrap_or("");
                let reason = self.reason.as_deref().unwrap_or("");
                if field.is_empty() {
                    format!("{resource}: {reason}: {}{suffix}", self.message)
                } else {
                    format!("{resource}: {field}: {reason}: {}{suffix}", self.message)
                }
            }
            (None, Some(file)) => match self.document {
                Some(d) => format!("{file}: document {d}: {}{suffix}", self.message),
                None => format!("{file}: {}{suffix}", self.message),
            },
            (None, None) => format!("{}{suffix}", self.message),
        }
    }
}

/// Every problem: load errors first (in file order), then resources (by
/// kind, namespace, name).
pub fn problems(compiled: &Compiled, load_errors: &[LoadError]) -> Vec<ProblemRecord> {
    let mut out: Vec<ProblemRecord> = load_errors
        .iter()
        .map(|e| ProblemRecord {
            resource: None,
            kind: None,
            namespace: None,
            name: None,
            field: None,
            reason: None,
            file: Some(e.file.display().to_string()),
            document: e.document.map(|d| d + 1),
            message: e.reason.clone(),
            severity: if e.fatal {
                Severity::Error
            } else {
                Severity::Warning
            },
        })
        .collect();
    for (key, status) in &compiled.statuses {
        for p in &status.problems {
            out.push(ProblemRecord {
                resource: Some(key.to_string()),
                kind: Some(key.kind.clone()),
                namespace: Some(key.namespace.clone()),
                name: Some(key.name.clone()),
                field: Some(p.field.clone()),
                reason: Some(p.reason.clone()),
                file: None,
                document: None,
                message: p.message.clone(),
                severity: p.severity,
            });
        }
    }
    out
}

/// The text lines of [`problems`] (also used by `serve` on every reload).
pub fn problem_lines(compiled: &Compiled, load_errors: &[LoadError]) -> Vec<String> {
    problems(compiled, load_errors)
        .iter()
        .map(ProblemRecord::line)
        .collect()
}

/// Whether the result should fail a pipeline.
pub fn failed(compiled: &Compiled, load_errors: &[LoadError]) -> bool {
    compiled.has_rejections() || load_errors.iter().any(|e| e.fatal)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs `ferrogate validate`.
pub fn run(args: &ValidateArgs) -> ExitCode {
    let (resources, load_errors) = manifests::load(&args.paths);
    let compiled = compile(&resources, None, now_unix());
    let list = problems(&compiled, &load_errors);
    let failed = failed(&compiled, &load_errors);
    match args.output {
        OutputFormat::Json => match serde_json::to_string_pretty(&list) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: cannot encode the problems as JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
        OutputFormat::Text => {
            for p in &list {
                println!("{}", p.line());
            }
            let total = compiled.statuses.len();
            let rejected = compiled
                .statuses
                .values()
                .filter(|s| !s.is_accepted())
                .count();
            let errors = list
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            let warnings = list.len() - errors;
            println!(
                "{}: {total} Ferrogate resources, {} accepted, {rejected} rejected; {errors} errors, {warnings} warnings",
                if failed { "FAILED" } else { "OK" },
                total - rejected,
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
