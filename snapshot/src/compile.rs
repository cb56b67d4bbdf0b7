//! The compiler: Kubernetes objects in, one routing [`Snapshot`] and a status
//! for every Ferrogate resource out.
//!
//! ```text
//! Resources ──► index (Services, endpoints, Secrets by name; grants)
//!    │
//!    ├─ TlsCertificates ─► check Secret (certs::check_certificate) ─► certificates[]
//!    │                      conflicts: same host, the older wins
//!    ├─ ApiRoutes ───────► validate + compile each (rule, match) per host
//!    │                      refs: Service ─► port ─► ready endpoints ─► clusters{}
//!    │                      invalid edit? compile the last accepted version instead
//!    ├─ vhosts ──────────► precedence sort, conflicts (older wins), wildcard
//!    │                      inheritance, https_redirect from certificates[]
//!    └─ policies ────────► validate + compile, attach to routes by targetRefs
//!                           ─► auth_policies{}, rate_limits{}
//! ```
//!
//! [`compile`] is pure and deterministic: the same resources in any order
//! give byte-identical snapshots (every collection is sorted by namespace,
//! name and uid, and no hash map is ever iterated into the output). Time is
//! an argument (certificate validity).
//!
//! # Isolation
//!
//! Each resource is validated alone; an invalid one is rejected
//! (`Accepted=False` with the reason and a message naming the field) and
//! changes nothing else. When a resource that was accepted before (same uid,
//! found in `previous`) is edited into an invalid one, its last accepted
//! version keeps serving and the message ends with `still serving generation
//! N`.
//!
//! # Precedence (within one virtual host)
//!
//! Routes are ordered so that the first whose matcher holds wins. The order
//! follows Gateway API's HTTPRoute rules, continuing on ties:
//!
//! 1. path kind: `Exact`, then `PathPrefix`, then `RegularExpression`
//!    (regex precedence is implementation-specific in Gateway API; here a
//!    regex is tried only after every prefix, so a `/` catch-all on the same
//!    host shadows it);
//! 2. the longer prefix (in characters, trailing `/` ignored), or the longer
//!    regex;
//! 3. a method condition (fewer methods first);
//! 4. more header conditions;
//! 5. more query parameter conditions;
//! 6. a device condition (fewer classes first);
//! 7. the older route (`creationTimestamp`; missing counts as the epoch);
//! 8. namespace/name; then rule index; then match index.
//!
//! A virtual host for an exact name also inherits, after its own routes, the
//! routes of every wildcard host that covers it, longest wildcard first:
//! Gateway API gives routes with the more specific hostname precedence, yet a
//! request that none of them matches still reaches the wildcard's routes.
//!
//! # Conflicts
//!
//! Two (rule, match) pairs with the same host and an identical matcher
//! (after normalization: sorted methods, headers, query and devices; prefix
//! without trailing `/`) conflict. The first in precedence order (the older
//! route, then namespace/name, then rule and match index) is served; the
//! other is dropped and its route gets `Conflicted=True` naming both. A
//! route that has nothing left to serve is `Accepted=False` with reason
//! `Conflicted`. Two TlsCertificates claiming the same host name: the older
//! keeps it, the newer is `Conflicted` for that host.
//!
//! # References
//!
//! - A backend Service resolves to the Service port with the given `port`,
//!   then to ready endpoints: from the EndpointSlices labelled
//!   `kubernetes.io/service-name` (the slice port whose name is the Service
//!   port's name; endpoints whose `conditions.ready` is not `false`; the first
//!   address of each) or, when the Service has no slices, from its core/v1
//!   Endpoints (`subsets[].addresses`, never `notReadyAddresses`). An
//!   `ExternalName` Service resolves to its external name. Endpoint lists are
//!   sorted and deduplicated.
//! - A missing Service or port, or a cross-namespace reference without a
//!   grant, leaves the route `Accepted` with `ResolvedRefs=False`; the backend
//!   keeps its place (and weight) in the route but names a cluster that is
//!   not in the snapshot, so requests sent to it get 500, as Gateway API
//!   prescribes. A Service without ready endpoints is a valid reference: its
//!   cluster is empty and requests get 503.
//! - Cross-namespace references to Services and Secrets need the annotation
//!   [`crds::ALLOWED_NAMESPACES_ANNOTATION`] on the target, listing the
//!   referring namespace or `*`.
//!
//! # Clusters
//!
//! A Service backend's cluster is named `namespace/service:port`, a URL
//! backend's `scheme://host:port` (plus the base path, when it has one).
//! When the rule sets a non-default load balancer, outlier detection or
//! connect timeout, or the backend a non-default protocol, the name gets a
//! suffix `#` and 8 hex digits of a hash of those settings, so that each
//! distinct configuration is its own cluster.
//!
//! # Policies
//!
//! AuthPolicies and RateLimitPolicies attach to ApiRoutes of their own
//! namespace, optionally to one rule (`sectionName`). A rule gets one
//! AuthPolicy: one naming the rule beats one naming the route, then the
//! older, then namespace/name. It gets every RateLimitPolicy that targets
//! it. An AuthPolicy fails closed: when it is invalid and has no accepted
//! version to fall back to, its targets get a configuration that refuses
//! every request (403); a JWT or basic-auth method whose Secret is missing
//! accepts no credentials; a forward-auth Service that cannot be resolved
//! makes the whole policy refuse every request. An invalid RateLimitPolicy
//! without an accepted version is not applied.
//!
//! Forward authentication to a Service calls `http://<clusterIP>:<port>`
//! (kube-proxy balances), or for a headless Service the first ready endpoint
//! in sorted order.

mod index;
mod names;
mod policy;
mod report;
mod route;
mod table;
mod tls;

pub use report::{Problem, Severity};

use crate::model::{Certificate, Snapshot};
use crate::resources::Resources;
use crds::common::Condition;
use crds::{ApiRoute, AuthPolicy, RateLimitPolicy, TlsCertificate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Kind name of ApiRoutes in [`ObjectKey::kind`] and [`Snapshot::generations`].
pub const KIND_API_ROUTE: &str = "ApiRoute";
/// Kind name of AuthPolicies.
pub const KIND_AUTH_POLICY: &str = "AuthPolicy";
/// Kind name of RateLimitPolicies.
pub const KIND_RATE_LIMIT_POLICY: &str = "RateLimitPolicy";
/// Kind name of TlsCertificates.
pub const KIND_TLS_CERTIFICATE: &str = "TlsCertificate";

/// Compiled size limit of one regular expression (path, header or query).
pub const MAX_REGEX_SIZE: usize = 64 * 1024;
/// Regular expressions one ApiRoute may use in all its matches.
pub const MAX_REGEXES_PER_ROUTE: usize = 32;
/// Host names of one ApiRoute.
pub const MAX_HOSTS_PER_ROUTE: usize = 16;
/// Rules of one ApiRoute.
pub const MAX_RULES_PER_ROUTE: usize = 64;
/// Matches of one rule.
pub const MAX_MATCHES_PER_RULE: usize = 16;
/// (rule, match) pairs of one ApiRoute, all rules together.
pub const MAX_MATCHES_PER_ROUTE: usize = 256;
/// Longest path or path pattern.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest header or query parameter name.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Longest header or query parameter value.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Largest direct response body.
pub const MAX_DIRECT_RESPONSE_BYTES: usize = 64 * 1024;

/// Identifies a Ferrogate resource: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// `ApiRoute`, `AuthPolicy`, `RateLimitPolicy` or `TlsCertificate`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectKey {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `Kind/namespace/name`, the key of [`Snapshot::generations`].
    pub fn generation_key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

impl std::fmt::Display for ObjectKey {
    /// `namespace/Kind/name`, as `ferrogate validate` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// What the compiler has to say about one resource: the status the
/// controller writes (it adds `Programmed` and the transition times).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatusReport {
    /// The resource's `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, and `Conflicted` when something
    /// conflicts; `observed_generation` set, `last_transition_time` empty.
    pub conditions: Vec<Condition>,
    /// The generation the snapshot serves: the current one, an older
    /// accepted one (after an invalid edit), or none.
    pub serving_generation: Option<i64>,
    /// Expiry of the served certificate (TlsCertificates), RFC 3339.
    pub not_after: Option<String>,
    /// Every problem found, one per field, in the order found. The condition
    /// messages are made of these; `ferrogate validate` prints them.
    pub problems: Vec<Problem>,
}

impl ResourceStatusReport {
    /// Whether `Accepted` is `True`.
    pub fn is_accepted(&self) -> bool {
        self.condition("Accepted")
            .is_some_and(|c| c.status == "True")
    }

    /// The condition of a type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The last accepted version of a resource, kept so that an invalid edit
/// does not take it out of service.
#[derive(Clone, Debug)]
pub struct AcceptedVersion {
    /// `metadata.uid` of the object; a new object with the same name never
    /// inherits an old one's version.
    pub uid: String,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// The object as it was accepted.
    pub resource: AcceptedResource,
}

/// An accepted object of one of the four kinds.
#[derive(Clone, Debug)]
pub enum AcceptedResource {
    /// An ApiRoute.
    ApiRoute(Box<ApiRoute>),
    /// An AuthPolicy.
    AuthPolicy(Box<AuthPolicy>),
    /// A RateLimitPolicy.
    RateLimitPolicy(Box<RateLimitPolicy>),
    /// A TlsCertificate with the certificate it served: after a bad Secret
    /// update the last good certificate keeps serving until it expires.
    TlsCertificate {
        /// The resource.
        resource: Box<TlsCertificate>,
        /// The certificate served.
        certificate: Box<Certificate>,
    },
}

/// The compiler's output.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// The snapshot, sealed (hash set, version 0).
    pub snapshot: Snapshot,
    /// A status for every ApiRoute, AuthPolicy, RateLimitPolicy and
    /// TlsCertificate of the input.
    pub statuses: BTreeMap<ObjectKey, ResourceStatusReport>,
    /// The last accepted version of every resource that has one; pass the
    /// whole `Compiled` as `previous` to the next compile.
    pub accepted: BTreeMap<ObjectKey, AcceptedVersion>,
}

impl Compiled {
    /// Whether any resource is not accepted.
    pub fn has_rejections(&self) -> bool {
        self.statuses.values().any(|s| !s.is_accepted())
    }
}

/// Compiles resources into a snapshot and statuses.
///
/// `previous` is the last output (for falling back to accepted versions);
/// `now_unix_secs` is the time certificates are checked against. See the
/// module docs for the rules.
pub fn compile(resources: &Resources, previous: Option<&Compiled>, now_unix_secs: i64) -> Compiled {
    let index = index::Index::new(resources);
    let previous_accepted = previous.map(|p| &p.accepted);
    let mut out = Output::default();

    let certificates = tls::compile_certificates(
        &resources.tls_certificates,
        &index,
        previous_accepted,
        now_unix_secs,
        &mut out,
    );

    let routes = route::compile_routes(&resources.api_routes, &index, previous_accepted, &mut out);
    let policies =
        policy::compile_policies(resources, &index, &routes, previous_accepted, &mut out);

    let mut snapshot = Snapshot {
        certificates,
        ..Snapshot::default()
    };
    table::assemble(&mut snapshot, routes, &policies, &mut out);
    snapshot.auth_policies = policies.auth_configs;
    snapshot.rate_limits = policies.rate_limit_configs;

    for (key, status) in &out.statuses {
        if let Some(generation) = status.serving_generation {
            snapshot
                .generations
                .insert(key.generation_key(), generation);
        }
    }
    snapshot.seal();
    Compiled {
        snapshot,
        statuses: out.statuses,
        accepted: out.accepted,
    }
}

/// Statuses and accepted versions, filled by the passes.
#[derive(Default)]
pub(crate) struct Output {
    pub(crate) statuses: BTreeMap<ObjectKey, ResourceStatusReport>,
    pub(crate) accepted: BTreeMap<ObjectKey, AcceptedVersion>,
}

/// The parts of `metadata` the compiler uses, with defaults filled in.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) generation: Option<i64>,
    /// Nanoseconds since the epoch; 0 when missing.
    pub(crate) created: i128,
}

impl Meta {
    pub(crate) fn of(meta: &ObjectMeta) -> Meta {
        let namespace = meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let name = meta.name.clone().unwrap_or_default();
        let uid = meta
            .uid
            .clone()
            .unwrap_or_else(|| format!("{namespace}/{name}"));
        Meta {
            uid,
            generation: meta.generation,
            created: meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_nanosecond())
                .unwrap_or(0),
            namespace,
            name,
        }
    }

    pub(crate) fn key(&self, kind: &str) -> ObjectKey {
        ObjectKey::new(kind, &self.namespace, &self.name)
    }
}

/// Sorts objects by namespace, name, uid and drops all but one object per
/// namespace/name (the apiserver never has two; files might). Among
/// duplicates the choice is deterministic: smallest uid, then smallest JSON.
pub(crate) fn sorted_unique<T, F>(items: &[T], meta_of: F) -> Vec<(Meta, &T)>
where
    T: Serialize,
    F: Fn(&T) -> &ObjectMeta,
{
    let mut list: Vec<(Meta, &T)> = items.iter().map(|i| (Meta::of(meta_of(i)), i)).collect();
    list.sort_by(|a, b| {
        (&a.0.namespace, &a.0.name, &a.0.uid).cmp(&(&b.0.namespace, &b.0.name, &b.0.uid))
    });
    let has_duplicates = list
        .windows(2)
        .any(|w| w[0].0.namespace == w[1].0.namespace && w[0].0.name == w[1].0.name);
    if has_duplicates {
        list.sort_by_cached_key(|(m, item)| {
            (
                m.namespace.clone(),
                m.name.clone(),
                m.uid.clone(),
                serde_json::to_string(item).unwrap_or_default(),
            )
        });
        list.dedup_by(|b, a| a.0.namespace == b.0.namespace && a.0.name == b.0.name);
    }
    list
}

#[cfg(test)]
mod tests;
