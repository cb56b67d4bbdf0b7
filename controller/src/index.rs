//! The watch index: the latest copy of every object the compiler may read,
//! kept up to date by the watchers with synchronous apply/delete calls.
//!
//! ```text
//! watcher events ─► Index::apply / delete / replace_scope   (no .await, one lock)
//!                     │  strips what neither compile nor status needs
//!                     │  (managedFields, last-applied annotation, status)
//!                     ├─► compile revision += 1  when compile input changed
//!                     ├─► observed revision += 1  when a Ferrogate object's
//!                     │                           status/resourceVersion changed
//!                     └─► secret revision += 1    when Secret metadata changed
//!                                                 (wakes the Secret reader, see
//!                                                 [`crate::secrets`])
//! compile loop ◄── Index::resources()   (a copy, taken under the lock)
//! status writer ◄── Index::observed()   (resourceVersion, generation, status)
//! ```
//!
//! A status write changes only `status`, `resourceVersion` and
//! `managedFields`; none of them is compile input, so the controller's own
//! writes never trigger a recompile.

use crds::tls::TlsCertificateStatus;
use crds::{ApiRoute, AuthPolicy, RateLimitPolicy, TlsCertificate};
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::Resource;
use serde::Serialize;
use snapshot::compile::{
    ObjectKey, KIND_API_ROUTE, KIND_AUTH_POLICY, KIND_RATE_LIMIT_POLICY, KIND_TLS_CERTIFICATE,
};
use snapshot::Resources;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// The annotation `kubectl apply` keeps a full copy of the object in; the
/// compiler never reads it and it doubles the memory of every object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `(namespace, name)`.
pub type NsName = (String, String);

/// What the status writer needs to know about a Ferrogate object as the
/// apiserver last showed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.resourceVersion`, the precondition of status writes.
    pub resource_version: Option<String>,
    /// The status it carries (all four kinds fit `TlsCertificateStatus`,
    /// whose fields are a superset of `ResourceStatus`).
    pub status: Option<TlsCertificateStatus>,
}

/// Objects of one kind by namespace/name.
#[derive(Debug)]
pub struct Store<K> {
    objects: BTreeMap<NsName, K>,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store {
            objects: BTreeMap::new(),
        }
    }
}

impl<K: Clone> Store<K> {
    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// One object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&K> {
        self.objects.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// All objects, sorted by namespace/name.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.objects.values()
    }

    /// The objects of one namespace, sorted by name.
    pub fn in_namespace<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a K> + 'a {
        self.objects
            .range((namespace.to_owned(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, object)| object)
    }

    fn cloned(&self) -> Vec<K> {
        self.objects.values().cloned().collect()
    }
}

/// An object kind the index holds: how to strip it and what to remember of
/// its status.
pub trait Indexed: Resource + Clone + Serialize + Sized {
    /// The Ferrogate kind name (for [`ObjectKey`]), or `None` for core kinds.
    const FERROGATE_KIND: Option<&'static str>;
    /// Whether the compiler reads it (Secret metadata only tells the
    /// Secret reader what exists).
    const COMPILE_INPUT: bool = true;

    /// Removes what the compiler never reads; returns the status (Ferrogate
    /// kinds only).
    fn strip(&mut self) -> Option<TlsCertificateStatus>;
}

fn strip_meta(meta: &mut ObjectMeta, keep_annotations: bool) {
    meta.managed_fields = None;
    if keep_annotations {
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.remove(LAST_APPLIED);
            if annotations.is_empty() {
                meta.annotations = None;
            }
        }
    } else {
        meta.annotations = None;
    }
}

/// A Ferrogate resource's status as the common superset type.
fn status_of<T: Serialize>(status: Option<T>) -> Option<TlsCertificateStatus> {
    let value = serde_json::to_value(status?).ok()?;
    serde_json::from_value(value).ok()
}

macro_rules! ferrogate_kind {
    ($ty:ty, $kind:expr) => {
        impl Indexed for $ty {
            const FERROGATE_KIND: Option<&'static str> = Some($kind);
            fn strip(&mut self) -> Option<TlsCertificateStatus> {
                strip_meta(&mut self.metadata, true);
                status_of(self.status.take())
            }
        }
    };
}

ferrogate_kind!(ApiRoute, KIND_API_ROUTE);
ferrogate_kind!(AuthPolicy, KIND_AUTH_POLICY);
ferrogate_kind!(RateLimitPolicy, KIND_RATE_LIMIT_POLICY);
ferrogate_kind!(TlsCertificate, KIND_TLS_CERTIFICATE);

impl Indexed for Service {
    const FERROGATE_KIND: Option<&'static str> = None;
    fn strip(&mut self) -> Option<TlsCertificateStatus> {
        // Annotations carry cross-namespace grants.
        strip_meta(&mut self.metadata, true);
        self.status = None;
        None
    }
}

impl Indexed for Secret {
    const FERROGATE_KIND: Option<&'static str> = None;
    fn strip(&mut self) -> Option<TlsCertificateStatus> {
        strip_meta(&mut self.metadata, true);
        None
    }
}

impl Indexed for PartialObjectMeta<Secret> {
    const FERROGATE_KIND: Option<&'static str> = None;
    const COMPILE_INPUT: bool = false;
    fn strip(&mut self) -> Option<TlsCertificateStatus> {
        strip_meta(&mut self.metadata, true);
        None
    }
}

impl Indexed for EndpointSlice {
    const FERROGATE_KIND: Option<&'static str> = None;
    fn strip(&mut self) -> Option<TlsCertificateStatus> {
        // Only labels (the Service name) and the endpoints matter; old
        // control planes rewrite annotations every few seconds.
        strip_meta(&mut self.metadata, false);
        None
    }
}

impl Indexed for Endpoints {
    const FERROGATE_KIND: Option<&'static str> = None;
    fn strip(&mut self) -> Option<TlsCertificateStatus> {
        strip_meta(&mut self.metadata, false);
        None
    }
}

fn ns_name(meta: &ObjectMeta) -> NsName {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The compile input of an object: itself without `resourceVersion` (which
/// changes on every write, also of status alone).
fn compile_input<K: Indexed>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
    }
    value
}

/// What an index operation changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The compiler's input changed.
    pub compile: bool,
    /// A Ferrogate object's status, generation or resourceVersion changed.
    pub observed: bool,
    /// Secret metadata changed.
    pub secrets: bool,
}

impl Change {
    fn merge(&mut self, other: Change) {
        self.compile |= other.compile;
        self.observed |= other.observed;
        self.secrets |= other.secrets;
    }

    /// Whether anything changed.
    pub fn any(self) -> bool {
        self.compile || self.observed || self.secrets
    }
}

/// Every object the controller watches.
#[derive(Debug, Default)]
pub struct Index {
    /// ApiRoutes.
    pub api_routes: Store<ApiRoute>,
    /// AuthPolicies.
    pub auth_policies: Store<AuthPolicy>,
    /// RateLimitPolicies.
    pub rate_limit_policies: Store<RateLimitPolicy>,
    /// TlsCertificates.
    pub tls_certificates: Store<TlsCertificate>,
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices (clusters serving `discovery.k8s.io/v1`).
    pub endpoint_slices: Store<EndpointSlice>,
    /// Endpoints (older clusters).
    pub endpoints: Store<Endpoints>,
    /// Metadata of every Secret in scope (no data).
    pub secret_meta: Store<PartialObjectMeta<Secret>>,
    /// The Secrets Ferrogate resources reference, read by
    /// [`crate::secrets`]: the only Secret data the controller holds.
    pub secrets: Store<Secret>,
    observed: BTreeMap<ObjectKey, Observed>,
}

impl Index {
    /// Adds or replaces one object.
    pub fn apply<K: Indexed>(
        &mut self,
        store: fn(&mut Index) -> &mut Store<K>,
        mut object: K,
    ) -> Change {
        let status = object.strip();
        let key = ns_name(object.meta());
        let mut change = Change::default();
        if let Some(kind) = K::FERROGATE_KIND {
            change.observed = self.observe(kind, &key, object.meta(), status);
        }
        let objects = &mut store(self).objects;
        let changed = match objects.get(&key) {
            // Secret metadata changes only its resourceVersion when the
            // data changes: that is the signal to read the Secret again.
            Some(old) if !K::COMPILE_INPUT => {
                old.meta().resource_version != object.meta().resource_version
                    || compile_input(old) != compile_input(&object)
            }
            Some(old) => compile_input(old) != compile_input(&object),
            None => true,
        };
        objects.insert(key, object);
        if K::COMPILE_INPUT {
            change.compile = changed;
        } else {
            change.secrets = changed;
        }
        change
    }

    /// Removes one object.
    pub fn delete<K: Indexed>(
        &mut self,
        store: fn(&mut Index) -> &mut Store<K>,
        object: &K,
    ) -> Change {
        let key = ns_name(object.meta());
        let mut change = Change::default();
        if let Some(kind) = K::FERROGATE_KIND {
            let object_key = ObjectKey::new(kind, &key.0, &key.1);
            change.observed = self.observed.remove(&object_key).is_some();
        }
        let removed = store(self).objects.remove(&key).is_some();
        if K::COMPILE_INPUT {
            change.compile = removed;
        } else {
            change.secrets = removed;
        }
        change
    }

    /// Removes one object by namespace and name.
    pub fn delete_key<K: Indexed>(
        &mut self,
        store: fn(&mut Index) -> &mut Store<K>,
        namespace: &str,
        name: &str,
    ) -> Change {
        match store(self).get(namespace, name).cloned() {
            Some(object) => self.delete(store, &object),
            None => Change::default(),
        }
    }

    /// Replaces every object of a store in `namespace` (all namespaces when
    /// `None`) with `objects`: the end of a watcher's (re-)list.
    pub fn replace_scope<K: Indexed>(
        &mut self,
        store: fn(&mut Index) -> &mut Store<K>,
        namespace: Option<&str>,
        objects: Vec<K>,
    ) -> Change {
        let in_scope = |key: &NsName| namespace.is_none_or(|ns| key.0 == ns);
        let mut listed = std::collections::BTreeSet::new();
        let mut change = Change::default();
        for object in objects {
            listed.insert(ns_name(object.meta()));
            change.merge(self.apply(store, object));
        }
        let gone: Vec<NsName> = store(self)
            .objects
            .keys()
            .filter(|k| in_scope(k) && !listed.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(object) = store(self).objects.get(&key).cloned() {
                change.merge(self.delete(store, &object));
            }
        }
        change
    }

    fn observe(
        &mut self,
        kind: &str,
        key: &NsName,
        meta: &ObjectMeta,
        status: Option<TlsCertificateStatus>,
    ) -> bool {
        let observed = Observed {
            uid: meta.uid.clone().unwrap_or_default(),
            generation: meta.generation,
            resource_version: meta.resource_version.clone(),
            status,
        };
        let object_key = ObjectKey::new(kind, &key.0, &key.1);
        if self.observed.get(&object_key) == Some(&observed) {
            return false;
        }
        self.observed.insert(object_key, observed);
        true
    }

    /// Records what a successful status write returned, so that the next
    /// write has the new resourceVersion before the watch event arrives.
    /// Ignored when the index already holds a different object.
    pub fn record_write(
        &mut self,
        key: &ObjectKey,
        uid: &str,
        resource_version: Option<String>,
        status: TlsCertificateStatus,
    ) {
        if let Some(observed) = self.observed.get_mut(key) {
            if observed.uid == uid {
                observed.resource_version = resource_version;
                observed.status = Some(status);
            }
        }
    }

    /// What the apiserver last showed of every Ferrogate object.
    pub fn observed(&self) -> &BTreeMap<ObjectKey, Observed> {
        &self.observed
    }

    /// A copy of everything as the compiler's input.
    pub fn resources(&self) -> Resources {
        Resources {
            api_routes: self.api_routes.cloned(),
            auth_policies: self.auth_policies.cloned(),
            rate_limit_policies: self.rate_limit_policies.cloned(),
            tls_certificates: self.tls_certificates.cloned(),
            services: self.services.cloned(),
            endpoint_slices: self.endpoint_slices.cloned(),
            endpoints: self.endpoints.cloned(),
            secrets: self.secrets.cloned(),
        }
    }

    /// A Secret the controller has read.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets.get(namespace, name)
    }

    /// The current `metadata.generation` of a Ferrogate object.
    pub fn generation(&self, key: &ObjectKey) -> Option<i64> {
        self.observed.get(key).and_then(|o| o.generation)
    }
}

/// The index shared by the watchers (writers), the compile loop, the status
/// writer and the issuer (readers), with change signals and the initial
/// sync state.
#[derive(Debug)]
pub struct SharedIndex {
    index: Mutex<Index>,
    compile_revision: watch::Sender<u64>,
    observed_revision: watch::Sender<u64>,
    secret_revision: watch::Sender<u64>,
    ready: watch::Sender<bool>,
    /// Watchers registered, and those that finished their first list.
    sync: Mutex<(usize, usize)>,
    synced: watch::Sender<bool>,
}

impl Default for SharedIndex {
    fn default() -> Self {
        SharedIndex {
            index: Mutex::new(Index::default()),
            compile_revision: watch::channel(0).0,
            observed_revision: watch::channel(0).0,
            secret_revision: watch::channel(0).0,
            ready: watch::channel(false).0,
            sync: Mutex::new((0, 0)),
            synced: watch::channel(false).0,
        }
    }
}

impl SharedIndex {
    /// Changes the index under its lock and signals what changed.
    pub fn update(&self, f: impl FnOnce(&mut Index) -> Change) -> Change {
        let change = {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut index)
        };
        if change.compile {
            self.compile_revision.send_modify(|r| *r += 1);
        }
        if change.observed {
            self.observed_revision.send_modify(|r| *r += 1);
        }
        if change.secrets {
            self.secret_revision.send_modify(|r| *r += 1);
        }
        change
    }

    /// Reads the index under its lock. Keep `f` short: watchers wait.
    pub fn read<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        f(&index)
    }

    /// Ticks whenever the compiler's input changed.
    pub fn compile_changes(&self) -> watch::Receiver<u64> {
        self.compile_revision.subscribe()
    }

    /// Ticks whenever a Ferrogate object's status, generation or
    /// resourceVersion changed.
    pub fn observed_changes(&self) -> watch::Receiver<u64> {
        self.observed_revision.subscribe()
    }

    /// Ticks whenever Secret metadata changed.
    pub fn secret_changes(&self) -> watch::Receiver<u64> {
        self.secret_revision.subscribe()
    }

    /// Marks the index complete: every watcher listed and the referenced
    /// Secrets were read once.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Turns true once the index is complete (see [`SharedIndex::set_ready`]):
    /// compiling earlier would publish a partial snapshot.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Registers a watcher that has yet to finish its first list.
    pub fn register_watcher(&self) {
        let mut sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        sync.0 += 1;
        self.synced.send_replace(false);
    }

    /// A registered watcher finished its first list.
    pub fn watcher_synced(&self) {
        let mut sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        sync.1 += 1;
        if sync.1 >= sync.0 {
            self.synced.send_replace(true);
        }
    }

    /// Turns true once every registered watcher has listed its objects.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }
}

/// Store selectors, passed to [`Index::apply`] and the watchers.
pub mod stores {
    use super::*;

    /// ApiRoutes.
    pub fn api_routes(i: &mut Index) -> &mut Store<ApiRoute> {
        &mut i.api_routes
    }
    /// AuthPolicies.
    pub fn auth_policies(i: &mut Index) -> &mut Store<AuthPolicy> {
        &mut i.auth_policies
    }
    /// RateLimitPolicies.
    pub fn rate_limit_policies(i: &mut Index) -> &mut Store<RateLimitPolicy> {
        &mut i.rate_limit_policies
    }
    /// TlsCertificates.
    pub fn tls_certificates(i: &mut Index) -> &mut Store<TlsCertificate> {
        &mut i.tls_certificates
    }
    /// Services.
    pub fn services(i: &mut Index) -> &mut Store<Service> {
        &mut i.services
    }
    /// EndpointSlices.
    pub fn endpoint_slices(i: &mut Index) -> &mut Store<EndpointSlice> {
        &mut i.endpoint_slices
    }
    /// Endpoints.
    pub fn endpoints(i: &mut Index) -> &mut Store<Endpoints> {
        &mut i.endpoints
    }
    /// Secret metadata.
    pub fn secret_meta(i: &mut Index) -> &mut Store<PartialObjectMeta<Secret>> {
        &mut i.secret_meta
    }
    /// Secrets read.
    pub fn secrets(i: &mut Index) -> &mut Store<Secret> {
        &mut i.secrets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::common::Condition;

    fn route(name: &str, generation: i64, rv: &str) -> ApiRoute {
        let mut route: ApiRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferrogate.dev/v1alpha1",
            "kind": "ApiRoute",
            "metadata": {
                "name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "generation": generation, "resourceVersion": rv,
                "annotations": {LAST_APPLIED: "{...}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"hosts": ["a.example.com"], "rules": [{"backends": [{"name": "svc", "port": 80}]}]},
        }))
        .expect("route");
        route.metadata.generation = Some(generation);
        route
    }

    #[test]
    fn status_only_writes_do_not_change_compile_input() {
        let mut index = Index::default();
        let change = index.apply(stores::api_routes, route("a", 1, "10"));
        assert_eq!(
            change,
            Change {
                compile: true,
                observed: true,
                secrets: false
            }
        );
        let stored = index.api_routes.get("default", "a").expect("stored");
        assert!(stored.metadata.managed_fields.is_none());
        let annotations = stored.metadata.annotations.as_ref().expect("annotations");
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));

        let mut written = route("a", 1, "11");
        written.status = Some(crds::ResourceStatus {
            observed_generation: Some(1),
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: "True".into(),
                reason: "Accepted".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: None,
            }],
            dataplanes: Some("0/0".into()),
        });
        let change = index.apply(stores::api_routes, written);
        assert!(!change.compile);
        assert!(change.observed);
        let key = ObjectKey::new(KIND_API_ROUTE, "default", "a");
        let observed = index.observed().get(&key).expect("observed");
        assert_eq!(observed.resource_version.as_deref(), Some("11"));
        assert_eq!(
            observed
                .status
                .as_ref()
                .and_then(|s| s.dataplanes.as_deref()),
            Some("0/0")
        );

        // The same event again changes nothing.
        let again = route("a", 1, "11");
        let mut again_with_status = again.clone();
        again_with_status.status = index
            .observed()
            .get(&key)
            .and_then(|o| o.status.clone())
            .map(|s| crds::ResourceStatus {
                observed_generation: s.observed_generation,
                conditions: s.conditions,
                dataplanes: s.dataplanes,
            });
        assert!(!index.apply(stores::api_routes, again_with_status).any());

        let change = index.apply(stores::api_routes, route("a", 2, "12"));
        assert!(change.compile);
    }

    #[test]
    fn relist_removes_what_is_gone_in_scope_only() {
        let mut index = Index::default();
        index.apply(stores::api_routes, route("a", 1, "1"));
        let mut other = route("b", 1, "2");
        other.metadata.namespace = Some("other".into());
        index.apply(stores::api_routes, other);

        let change = index.replace_scope(stores::api_routes, Some("default"), vec![]);
        assert!(change.compile && change.observed);
        assert!(index.api_routes.get("default", "a").is_none());
        assert!(index.api_routes.get("other", "b").is_some());
        assert_eq!(index.observed().len(), 1);

        let change = index.replace_scope(stores::api_routes, None, vec![]);
        assert!(change.compile);
        assert!(index.api_routes.is_empty());
    }

    #[test]
    fn secret_metadata_is_not_compile_input() {
        let mut index = Index::default();
        let meta = PartialObjectMeta::<Secret> {
            metadata: ObjectMeta {
                name: Some("s".into()),
                namespace: Some("default".into()),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        };
        let change = index.apply(stores::secret_meta, meta.clone());
        assert_eq!(
            change,
            Change {
                compile: false,
                observed: false,
                secrets: true
            }
        );
        assert!(index.resources().secrets.is_empty());
        let secret = Secret {
            metadata: meta.metadata.clone(),
            ..Secret::default()
        };
        assert!(index.apply(stores::secrets, secret).compile);
        assert_eq!(index.resources().secrets.len(), 1);
        let mut updated = meta.clone();
        updated.metadata.resource_version = Some("2".into());
        assert!(
            index.apply(stores::secret_meta, updated.clone()).secrets,
            "a new resourceVersion means new data to read"
        );
        assert!(index.delete(stores::secret_meta, &updated).secrets);
    }
}
