//! Which Secrets the controller reads, and reading only those.
//!
//! The controller needs the data of a few Secrets (certificates, CAs, API
//! keys, htpasswd, JWKS and HMAC keys) out of a cluster's many (service
//! account tokens, Helm releases, other applications' credentials). It
//! watches the **metadata** of every Secret in scope (no data: names,
//! labels, annotations, resourceVersion) and reads the data of exactly the
//! Secrets that Ferrogate resources reference:
//!
//! ```text
//! Secret metadata (watch) ──► secret revision ─┐
//! Ferrogate resources ──────► compile revision ─┤
//!                                               ▼
//!   wanted = Secrets named by a reference (secretName, caSecretName,
//!            *SecretRef) ∪ Secrets whose labels match an API-key
//!            secretSelector (in the policy's namespace)
//!   for each wanted Secret that exists with a resourceVersion other than
//!   the copy held: GET it (16 at a time) ──► Index::secrets (compile input)
//!   copies no longer wanted, or deleted, are dropped
//! ```
//!
//! So no label or type is required of users' Secrets, a rotation reaches
//! the compiler one GET after the watch event, and memory holds the data of
//! referenced Secrets only. References are found by walking each policy's
//! and certificate's `spec` for the field names the API uses for Secrets; a
//! test checks the CRD schemas so that a new Secret field cannot be missed.
//! (ApiRoutes and RateLimitPolicies reference no Secret, so the walk skips
//! the kind that can be numerous.)

use crate::index::{stores, Index, NsName, SharedIndex};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Secrets read at once.
const PARALLEL_READS: usize = 16;
/// Retry after a failed read.
const RETRY: Duration = Duration::from_secs(2);

/// What Ferrogate resources reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Secrets referenced by name.
    pub named: BTreeSet<NsName>,
    /// Label selectors (namespace, labels) choosing Secrets.
    pub selectors: Vec<(String, BTreeMap<String, String>)>,
}

/// Whether a field name is a reference to a Secret by name (a string).
fn is_name_field(key: &str) -> bool {
    key == "secretName" || key.ends_with("SecretName")
}

/// Whether a field name is a reference to a Secret key (`{name, namespace?, key}`).
fn is_ref_field(key: &str) -> bool {
    key == "secretRef" || key.ends_with("SecretRef")
}

/// Whether a field name is a label selector of Secrets.
fn is_selector_field(key: &str) -> bool {
    key == "secretSelector" || key.ends_with("SecretSelector")
}

fn walk(value: &Value, namespace: &str, out: &mut References) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                if is_name_field(key) {
                    if let Some(name) = value.as_str().filter(|n| !n.is_empty()) {
                        out.named.insert((namespace.to_owned(), name.to_owned()));
                    }
                } else if is_ref_field(key) {
                    if let Some(name) = value.get("name").and_then(Value::as_str) {
                        let ns = value
                            .get("namespace")
                            .and_then(Value::as_str)
                            .filter(|n| !n.is_empty())
                            .unwrap_or(namespace);
                        out.named.insert((ns.to_owned(), name.to_owned()));
                    }
                } else if is_selector_field(key) {
                    if let Some(labels) = value.as_object() {
                        let labels: BTreeMap<String, String> = labels
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                            .collect();
                        if !labels.is_empty() {
                            out.selectors.push((namespace.to_owned(), labels));
                        }
                    }
                } else {
                    walk(value, namespace, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, namespace, out);
            }
        }
        _ => {}
    }
}

/// Every Secret reference of the index's AuthPolicies and TlsCertificates.
pub fn references(index: &Index) -> References {
    let mut out = References::default();
    let mut add = |namespace: Option<&String>, spec: Value| {
        let namespace = namespace.map(String::as_str).unwrap_or("default");
        walk(&spec, namespace, &mut out);
    };
    for p in index.auth_policies.iter() {
        add(
            p.metadata.namespace.as_ref(),
            serde_json::to_value(&p.spec).unwrap_or_default(),
        );
    }
    for c in index.tls_certificates.iter() {
        add(
            c.metadata.namespace.as_ref(),
            serde_json::to_value(&c.spec).unwrap_or_default(),
        );
    }
    out
}

/// The Secrets to hold: referenced and existing (per the metadata watch),
/// with the resourceVersion the metadata shows.
pub fn wanted(index: &Index) -> BTreeMap<NsName, Option<String>> {
    let refs = references(index);
    let mut out = BTreeMap::new();
    for (ns, name) in &refs.named {
        if let Some(meta) = index.secret_meta.get(ns, name) {
            out.insert(
                (ns.clone(), name.clone()),
                meta.metadata.resource_version.clone(),
            );
        }
    }
    for (ns, labels) in &refs.selectors {
        for meta in index.secret_meta.in_namespace(ns) {
            let have = meta.metadata.labels.as_ref();
            if labels
                .iter()
                .all(|(k, v)| have.and_then(|l| l.get(k)) == Some(v))
            {
                let name = meta.metadata.name.clone().unwrap_or_default();
                out.insert((ns.clone(), name), meta.metadata.resource_version.clone());
            }
        }
    }
    out
}

/// What to read and what to drop now.
pub fn plan(index: &Index) -> (Vec<NsName>, Vec<NsName>) {
    let wanted = wanted(index);
    let read = wanted
        .iter()
        .filter(|((ns, name), version)| {
            index
                .secrets
                .get(ns, name)
                .is_none_or(|held| held.metadata.resource_version != **version)
        })
        .map(|(key, _)| key.clone())
        .collect();
    let drop = index
        .secrets
        .iter()
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        })
        .filter(|key| !wanted.contains_key(key))
        .collect();
    (read, drop)
}

/// Keeps [`Index::secrets`] equal to the referenced Secrets until
/// `shutdown`; marks the index ready after the first pass.
pub async fn run(client: Client, shared: Arc<SharedIndex>, mut shutdown: watch::Receiver<bool>) {
    let mut synced = shared.synced();
    tokio::select! {
        _ = synced.wait_for(|s| *s) => {}
        _ = shutdown.wait_for(|s| *s) => return,
    }
    let mut secret_changes = shared.secret_changes();
    let mut compile_changes = shared.compile_changes();
    let mut ready = false;
    loop {
        secret_changes.borrow_and_update();
        compile_changes.borrow_and_update();
        let (read, drop) = shared.read(plan);
        if !drop.is_empty() {
            shared.update(|index| {
                let mut change = crate::index::Change::default();
                for (ns, name) in &drop {
                    change.compile |= index.delete_key(stores::secrets, ns, name).compile;
                }
                change
            });
        }
        let mut failed = 0;
        let results: Vec<(NsName, Result<Option<Secret>, kube::Error>)> =
            futures::stream::iter(read)
                .map(|(ns, name)| {
                    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                    async move {
                        let result = api.get_opt(&name).await;
                        ((ns, name), result)
                    }
                })
                .buffer_unordered(PARALLEL_READS)
                .collect()
                .await;
        shared.update(|index| {
            let mut change = crate::index::Change::default();
            for ((ns, name), result) in results {
                match result {
                    Ok(Some(secret)) => change.compile |= index.apply(stores::secrets, secret).compile,
                    Ok(None) => change.compile |= index.delete_key(stores::secrets, &ns, &name).compile,
                    Err(error) => {
                        failed += 1;
                        tracing::warn!(secret = %format!("{ns}/{name}"), error = %error, "cannot read a referenced Secret; retrying");
                    }
                }
            }
            change
        });
        if !ready {
            ready = true;
            tracing::info!(
                secrets = shared.read(|i| i.secrets.len()),
                "read the referenced Secrets"
            );
            shared.set_ready();
        }
        let retry = if failed > 0 {
            RETRY
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            r = secret_changes.changed() => if r.is_err() { return },
            r = compile_changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::core::PartialObjectMeta;

    /// Every property of every CRD whose name mentions a Secret must be one
    /// of the forms the walk understands, and only the kinds it walks may
    /// have any: a new Secret field cannot go unread.
    #[test]
    fn every_secret_field_of_the_api_is_understood() {
        fn visit(schema: &Value, path: &str, found: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    let here = format!("{path}.{name}");
                    if name.to_ascii_lowercase().contains("secret") {
                        assert!(
                            is_name_field(name) || is_ref_field(name) || is_selector_field(name),
                            "{here}: a Secret field the controller's Secret reader does not understand"
                        );
                        found.push(here.clone());
                    }
                    visit(sub, &here, found);
                }
            }
            if let Some(items) = schema.get("items") {
                visit(items, &format!("{path}[]"), found);
            }
        }
        for crd in crds::definitions() {
            let crd = serde_json::to_value(&crd).expect("crd");
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .expect("kind")
                .to_owned();
            let mut found = Vec::new();
            visit(
                &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
                "",
                &mut found,
            );
            found.retain(|f| f.starts_with(".spec"));
            let walked = kind == "AuthPolicy" || kind == "TlsCertificate";
            assert!(
                walked || found.is_empty(),
                "{kind} has Secret fields {found:?}: add it to secrets::references"
            );
        }
    }

    #[test]
    fn references_and_selectors_choose_the_secrets_to_read() {
        let mut index = Index::default();
        let policy: crds::AuthPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferrogate.dev/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "targetRefs": [{"name": "r"}],
                "authentication": {"methods": [
                    {"apiKey": {"secretSelector": {"app": "shop"}}},
                    {"basic": {"secretRef": {"name": "htpasswd", "key": "users"}}},
                    {"jwt": {"issuer": "i", "jwksSecretRef": {"name": "jwks", "namespace": "idp", "key": "k"}}},
                ]},
            },
        }))
        .expect("policy");
        index.apply(stores::auth_policies, policy);
        let cert: crds::TlsCertificate = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferrogate.dev/v1alpha1", "kind": "TlsCertificate",
            "metadata": {"name": "c", "namespace": "shop"},
            "spec": {"hosts": ["a"], "secretName": "tls", "issuer": {"caSecretName": "ca"}},
        }))
        .expect("cert");
        index.apply(stores::tls_certificates, cert);
        let refs = references(&index);
        let named: Vec<String> = refs.named.iter().map(|(n, s)| format!("{n}/{s}")).collect();
        assert_eq!(named, ["idp/jwks", "shop/ca", "shop/htpasswd", "shop/tls"]);
        assert_eq!(refs.selectors.len(), 1);

        let meta =
            |ns: &str, name: &str, labels: &[(&str, &str)], rv: &str| PartialObjectMeta::<Secret> {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    resource_version: Some(rv.into()),
                    labels: Some(
                        labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                    ..ObjectMeta::default()
                },
                ..PartialObjectMeta::default()
            };
        for m in [
            meta("shop", "key-1", &[("app", "shop")], "1"),
            meta("shop", "key-2", &[("app", "other")], "1"),
            meta("other", "key-3", &[("app", "shop")], "1"),
            meta("shop", "tls", &[], "7"),
            meta("shop", "unrelated", &[], "1"),
        ] {
            index.apply(stores::secret_meta, m);
        }
        let (read, drop) = plan(&index);
        let read: Vec<String> = read.iter().map(|(n, s)| format!("{n}/{s}")).collect();
        assert_eq!(
            read,
            ["shop/key-1", "shop/tls"],
            "missing Secrets are not read"
        );
        assert!(drop.is_empty());

        // Held at the same version: nothing to read. A held Secret no
        // longer referenced is dropped.
        let held = |ns: &str, name: &str, rv: &str| Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        index.apply(stores::secrets, held("shop", "tls", "7"));
        index.apply(stores::secrets, held("shop", "key-1", "1"));
        index.apply(stores::secrets, held("shop", "unrelated", "1"));
        let (read, drop) = plan(&index);
        assert!(read.is_empty(), "{read:?}");
        assert_eq!(drop, vec![("shop".to_owned(), "unrelated".to_owned())]);
    }
}
