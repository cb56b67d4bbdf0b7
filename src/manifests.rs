//! Reading Kubernetes manifests from files and folders into
//! [`Resources`], for `validate`, `serve` and `explain` (no cluster).
//!
//! ```text
//! paths ─► files (folders recursively, sorted; .yaml .yml .json)
//!        ─► documents (multi-document YAML; JSON is YAML; `kind: List` items)
//!        ─► typed objects by apiVersion/kind ─► defaults ─► Resources
//! ```
//!
//! Each document is parsed twice: once into a generic value to learn its
//! kind, then straight from the text into its type, so that a type error
//! names the field path and the line (`spec.rules[0].backends[0].port:
//! invalid type ... at line 12 column 15`).
//!
//! Defaults stand in for what the apiserver would set: `namespace`
//! `default`, `generation` 1, `uid` `namespace/name`. A missing
//! `creationTimestamp` stays missing (the compiler treats it as the epoch
//! and breaks ties by namespace/name). A Secret's `stringData` is merged
//! into `data`, as the apiserver does on write.
//!
//! Problems are [`LoadError`]s naming the file, the document and the
//! reason; loading always goes on with the next document. Unknown kinds
//! (a Deployment next to the routes) are reported but are not errors.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use snapshot::Resources;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Files larger than this are refused (manifests are small; this bounds
/// memory when pointed at the wrong folder).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A problem with one file or document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// Index of the document in the file (0-based), when the problem is in
    /// one document.
    pub document: Option<usize>,
    /// What is wrong.
    pub reason: String,
    /// Whether it makes `validate` fail. Unknown kinds are not fatal.
    pub fatal: bool,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some(d) => write!(
                f,
                "{}: document {}: {}",
                self.file.display(),
                d + 1,
                self.reason
            ),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// Reads every manifest under `paths` (files, or folders searched
/// recursively for `.yaml`, `.yml` and `.json`).
pub fn load(paths: &[PathBuf]) -> (Resources, Vec<LoadError>) {
    let mut loader = Loader::default();
    for path in paths {
        let mut files = Vec::new();
        collect_files(path, true, &mut files, &mut loader.errors);
        for file in files {
            loader.load_file(&file);
        }
    }
    (loader.resources, loader.errors)
}

#[derive(Default)]
struct Loader {
    resources: Resources,
    errors: Vec<LoadError>,
    /// (kind, namespace, name) already loaded.
    seen: BTreeSet<(String, String, String)>,
    /// Where each object was loaded from, for duplicate messages.
    origins: std::collections::BTreeMap<(String, String, String), String>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn collect_files(path: &Path, explicit: bool, out: &mut Vec<PathBuf>, errors: &mut Vec<LoadError>) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(LoadError {
                file: path.to_path_buf(),
                document: None,
                reason: format!("cannot read: {e}"),
                fatal: true,
            });
            return;
        }
    };
    if meta.is_file() {
        if explicit || is_manifest(path) {
            out.push(path.to_path_buf());
        }
        return;
    }
    if !meta.is_dir() {
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) => {
            errors.push(LoadError {
                file: path.to_path_buf(),
                document: None,
                reason: format!("cannot read the folder: {e}"),
                fatal: true,
            });
            return;
        }
    };
    let mut children: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    children.sort();
    for child in children {
        collect_files(&child, false, out, errors);
    }
}

/// The fields every object has.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// Kinds the loader knows, with the apiVersion each must have.
const KINDS: [(&str, &str); 8] = [
    ("ApiRoute", "ferrogate.dev/v1alpha1"),
    ("AuthPolicy", "ferrogate.dev/v1alpha1"),
    ("RateLimitPolicy", "ferrogate.dev/v1alpha1"),
    ("TlsCertificate", "ferrogate.dev/v1alpha1"),
    ("Service", "v1"),
    ("Endpoints", "v1"),
    ("Secret", "v1"),
    ("EndpointSlice", "discovery.k8s.io/v1"),
];

impl Loader {
    fn error(&mut self, file: &Path, document: Option<usize>, reason: String, fatal: bool) {
        self.errors.push(LoadError {
            file: file.to_path_buf(),
            document,
            reason,
            fatal,
        });
    }

    fn load_file(&mut self, file: &Path) {
        match std::fs::metadata(file) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                self.error(
                    file,
                    None,
                    format!("larger than {MAX_FILE_BYTES} bytes; not read"),
                    true,
                );
                return;
            }
            _ => {}
        }
        let text = match std::fs::read(file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    self.error(file, None, "not UTF-8 text".to_owned(), true);
                    return;
                }
            },
            Err(e) => {
                self.error(file, None, format!("cannot read: {e}"), true);
                return;
            }
        };
        // Pass 1: the kind of each document.
        let mut types = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            match serde_yaml::Value::deserialize(doc) {
                Ok(value) => types.push(Some(value)),
                Err(e) => {
                    self.error(file, Some(i), format!("not valid YAML: {e}"), true);
                    types.push(None);
                    // The parser cannot resynchronize after a syntax error.
                    break;
                }
            }
        }
        // Pass 2: each document straight into its type.
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let Some(Some(value)) = types.get(i) else {
                break;
            };
            if value.is_null() {
                continue;
            }
            let tm: TypeMeta = match serde_yaml::from_value(value.clone()) {
                Ok(t) => t,
                Err(_) => {
                    self.error(
                        file,
                        Some(i),
                        "not a Kubernetes object (a mapping with apiVersion and kind)".to_owned(),
                        true,
                    );
                    continue;
                }
            };
            if tm.kind.as_deref() == Some("List") {
                self.load_list(file, i, value);
                continue;
            }
            self.load_object(file, i, &tm, Source::Document(doc));
        }
    }

    fn load_list(&mut self, file: &Path, i: usize, value: &serde_yaml::Value) {
        let Some(items) = value.get("items").and_then(|v| v.as_sequence()) else {
            self.error(
                file,
                Some(i),
                "a List needs an items array".to_owned(),
                true,
            );
            return;
        };
        for (k, item) in items.iter().enumerate() {
            let tm: TypeMeta = serde_yaml::from_value(item.clone()).unwrap_or_default();
            let before = self.errors.len();
            self.load_object(file, i, &tm, Source::Value(item.clone()));
            for e in &mut self.errors[before..] {
                e.reason = format!("items[{k}]: {}", e.reason);
            }
        }
    }

    fn load_object(&mut self, file: &Path, i: usize, tm: &TypeMeta, source: Source<'_>) {
        let kind = tm.kind.clone().unwrap_or_default();
        let api_version = tm.api_version.clone().unwrap_or_default();
        if kind.is_empty() {
            self.error(file, Some(i), "no kind".to_owned(), true);
            return;
        }
        let Some((_, expected)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            self.error(
                file,
                Some(i),
                format!("kind {kind} ({api_version}) is not used by Ferrogate; skipped"),
                false,
            );
            return;
        };
        if api_version != *expected {
            self.error(
                file,
                Some(i),
                format!("{kind} must have apiVersion {expected}, not {api_version:?}"),
                true,
            );
            return;
        }
        let r = &mut Resources::default();
        let mut unknown = Vec::new();
        let result = match kind.as_str() {
            "ApiRoute" => parse(source, &mut unknown).map(|o: crds::ApiRoute| {
                let m = o.metadata.clone();
                r.api_routes.push(o);
                m
            }),
            "AuthPolicy" => parse(source, &mut unknown).map(|o: crds::AuthPolicy| {
                let m = o.metadata.clone();
                r.auth_policies.push(o);
                m
            }),
            "RateLimitPolicy" => parse(source, &mut unknown).map(|o: crds::RateLimitPolicy| {
                let m = o.metadata.clone();
                r.rate_limit_policies.push(o);
                m
            }),
            "TlsCertificate" => parse(source, &mut unknown).map(|o: crds::TlsCertificate| {
                let m = o.metadata.clone();
                r.tls_certificates.push(o);
                m
            }),
            "Service" => {
                parse(source, &mut unknown).map(|o: k8s_openapi::api::core::v1::Service| {
                    let m = o.metadata.clone();
                    r.services.push(o);
                    m
                })
            }
            "Endpoints" => {
                parse(source, &mut unknown).map(|o: k8s_openapi::api::core::v1::Endpoints| {
                    let m = o.metadata.clone();
                    r.endpoints.push(o);
                    m
                })
            }
            "EndpointSlice" => parse(source, &mut unknown).map(
                |o: k8s_openapi::api::discovery::v1::EndpointSlice| {
                    let m = o.metadata.clone();
                    r.endpoint_slices.push(o);
                    m
                },
            ),
            "Secret" => {
                parse(source, &mut unknown).map(|mut o: k8s_openapi::api::core::v1::Secret| {
                    if let Some(string_data) = o.string_data.take() {
                        let data = o.data.get_or_insert_with(Default::default);
                        for (k, v) in string_data {
                            data.insert(k, ByteString(v.into_bytes()));
                        }
                    }
                    let m = o.metadata.clone();
                    r.secrets.push(o);
                    m
                })
            }
            _ => return,
        };
        let meta = match result {
            Ok(m) => m,
            Err(e) => {
                self.error(file, Some(i), format!("{kind}: {e}"), true);
                return;
            }
        };
        let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
            self.error(file, Some(i), format!("{kind} without metadata.name"), true);
            return;
        };
        let namespace = meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let id = (kind.clone(), namespace.clone(), name.clone());
        let here = format!("{} document {}", file.display(), i + 1);
        if self.seen.contains(&id) {
            let first = self.origins.get(&id).cloned().unwrap_or_default();
            self.error(
                file,
                Some(i),
                format!("{namespace}/{kind}/{name} is defined again (first in {first}); this one is ignored"),
                true,
            );
            return;
        }
        self.seen.insert(id.clone());
        self.origins.insert(id, here);
        // The kube-derived types leave apiVersion and kind to the caller.
        unknown.retain(|p| p != "apiVersion" && p != "kind");
        for path in unknown {
            self.error(
                file,
                Some(i),
                format!(
                    "{namespace}/{kind}/{name}: unknown field {path} (ignored; check the spelling: kubectl apply would refuse it)"
                ),
                true,
            );
        }
        let defaults = |m: &mut ObjectMeta| {
            m.namespace = Some(namespace.clone());
            m.generation.get_or_insert(1);
            m.uid.get_or_insert_with(|| format!("{namespace}/{name}"));
        };
        let out = &mut self.resources;
        macro_rules! take {
            ($field:ident) => {
                for mut o in r.$field.drain(..) {
                    defaults(&mut o.metadata);
                    out.$field.push(o);
                }
            };
        }
        take!(api_routes);
        take!(auth_policies);
        take!(rate_limit_policies);
        take!(tls_certificates);
        take!(services);
        take!(endpoints);
        take!(endpoint_slices);
        take!(secrets);
    }
}

/// Where an object's text comes from.
enum Source<'a> {
    /// A document of a YAML stream (errors carry path and line).
    Document(serde_yaml::Deserializer<'a>),
    /// An item of a `kind: List`.
    Value(serde_yaml::Value),
}

/// Deserializes an object, collecting the paths of fields its type does not
/// have.
fn parse<T: DeserializeOwned>(source: Source<'_>, unknown: &mut Vec<String>) -> Result<T, String> {
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path.to_string()));
    match source {
        Source::Document(d) => {
            serde_ignored::deserialize(d, &mut record).map_err(|e| e.to_string())
        }
        Source::Value(v) => serde_ignored::deserialize(v, &mut record).map_err(|e| e.to_string()),
    }
}

/// `spec.rules.0.?.bakends` -> `spec.rules[0].bakends`.
fn field_path(dotted: &str) -> String {
    let mut out = String::new();
    // serde_ignored writes `?` for a step into an Option.
    for segment in dotted.split('.').filter(|s| *s != "?") {
        if !out.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn folders_documents_defaults_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.yaml",
            "apiVersion: v1
kind: Secret
metadata: {name: s}
stringData: {k: v}
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: r, namespace: shop}
spec:
  hosts: [a.example.com]
  rules:
  - backends: [{name: x, port: notaport}]
",
        );
        write(
            dir.path(),
            "sub/b.json",
            r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "shop", "generation": 4}}]}"#,
        );
        write(
            dir.path(),
            "sub/c.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        );
        write(dir.path(), "notes.txt", "ignored");
        write(dir.path(), "broken.yml", "a: [1\n");
        let (r, errors) = load(&[dir.path().to_path_buf()]);
        assert_eq!(r.secrets.len(), 1);
        let s = &r.secrets[0];
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.metadata.generation, Some(1));
        assert_eq!(s.metadata.uid.as_deref(), Some("default/s"));
        assert_eq!(s.data.as_ref().unwrap()["k"].0, b"v");
        assert!(s.string_data.is_none());
        assert_eq!(r.services.len(), 1);
        assert_eq!(r.services[0].metadata.generation, Some(4));
        assert!(r.api_routes.is_empty());
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 4, "{text:#?}");
        assert!(
            text[0].contains("a.yaml: document 3: kind Deployment"),
            "{text:#?}"
        );
        assert!(!errors[0].fatal);
        assert!(
            text[1].contains(
                "a.yaml: document 4: ApiRoute: spec.rules[0].backends[0].port: invalid type"
            ) && text[1].contains("line"),
            "{text:#?}"
        );
        assert!(
            text[2].contains("broken.yml: document 1: not valid YAML"),
            "{text:#?}"
        );
        assert!(
            text[3].contains("c.yaml: document 1: default/Secret/s is defined again"),
            "{text:#?}"
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "r.yaml",
            "apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: r, labels: {a: b}}
spec:
  hosts: [a.example.com]
  rules:
  - backends: [{url: \"http://127.0.0.1:1\"}]
    retry: {attempts: 1, on: [GatewayError]}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {ports: [{port: 80}], bogus: 1}
",
        );
        let (r, errors) = load(&[file]);
        assert_eq!(r.api_routes.len(), 1);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0]
                .contains("document 1: default/ApiRoute/r: unknown field spec.rules[0].retry.on"),
            "{text:#?}"
        );
        assert!(text[1].contains("unknown field spec.bogus"), "{text:#?}");
    }

    #[test]
    fn missing_paths_are_errors() {
        let (_, errors) = load(&[PathBuf::from("/nonexistent/ferrogate")]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].fatal);
    }
}
