//! `RateLimitPolicy`: how often callers may call a route.
//!
//! Close to Kuadrant's RateLimitPolicy (limits with counters keyed by parts of
//! the request, optional conditions) and Envoy Gateway's
//! BackendTrafficPolicy `rateLimit` (Local vs Global), with:
//!
//! - a key made of **parts** (client IP, header, JWT claim, API consumer,
//!   device class), combined, so "35 add-to-cart calls a minute per user and
//!   device" is one limit;
//! - `scope: Global` shares counters through Redis, and its `failureMode`
//!   must be chosen explicitly, because failing open is a security decision;
//! - `mode: Shadow` counts without refusing, to try a limit in production
//!   before enforcing it.
//!
//! The algorithm is GCRA (a token bucket stored as one timestamp per key):
//! a full bucket holds `requests + burst` and refills continuously at
//! `requests` per `period`, so a quiet client may send `requests + burst`
//! at once, then one every `period / requests`, and bursts around a window
//! edge never pass more than the bucket holds.

use crate::common::{DeviceClass, Duration, Method, ResourceStatus, TargetRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rate limits for ApiRoutes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrogate.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    status = "ResourceStatus",
    shortname = "rlp",
    category = "ferrogate",
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".spec.targetRefs[*].name"}"#,
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.scope"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// Routes (or single rules of routes) the limits apply to. Limits of all
    /// policies targeting a rule apply together.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<TargetRef>,
    /// `Local`: each dataplane counts on its own. `Global`: dataplanes share
    /// counters through Redis.
    #[serde(default)]
    pub scope: RateLimitScope,
    /// With `Global` scope, what happens when Redis cannot be reached in
    /// time: `Open` (fall back to local counting) or `Closed` (refuse with
    /// 429). Required with `Global`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
    /// The limits. A request is refused when any applicable limit is
    /// exhausted.
    #[schemars(length(min = 1, max = 16))]
    pub limits: Vec<Limit>,
}

/// Where counters live.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RateLimitScope {
    /// In each dataplane's memory.
    #[default]
    Local,
    /// In Redis, shared by all dataplanes.
    Global,
}

/// Behaviour when the shared counter store fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailureMode {
    /// Count locally instead (DANGEROUS: the total across replicas may
    /// exceed the limit while Redis is down).
    Open,
    /// Refuse requests with 429 while Redis is down.
    Closed,
}

/// One limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    /// Name for headers, logs and metrics, unique within the policy.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Requests allowed per period: the bucket holds this many (plus
    /// `burst`) and refills at this rate.
    #[schemars(range(min = 1, max = 1000000000))]
    pub requests: u32,
    /// The period, 1s to 24h.
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub period: Duration,
    /// Extra requests a full bucket holds on top of `requests`: a quiet
    /// client may send `requests + burst` at once. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000000000))]
    pub burst: Option<u32>,
    /// What a counter is kept per; parts are combined. Empty means one
    /// counter for all clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub key: Vec<KeyPart>,
    /// Only requests meeting these conditions count and can be refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<LimitCondition>,
    /// `Enforce` (default) or `Shadow` (count and report, never refuse).
    #[serde(default)]
    pub mode: LimitMode,
}

/// One part of a rate-limit key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPart {
    /// `ClientIp`, `Header` (needs `name`), `Claim` (needs `name`),
    /// `Consumer` (the authenticated consumer) or `Device`.
    pub source: KeySource,
    /// Header or claim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
}

/// Sources of rate-limit key parts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum KeySource {
    /// The client address (X-Forwarded-For only from trusted proxies).
    #[default]
    ClientIp,
    /// A request header; requests without it share one counter.
    Header,
    /// A JWT claim.
    Claim,
    /// The consumer name set by authentication.
    Consumer,
    /// The client's device class.
    Device,
}

/// Conditions restricting which requests a limit applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitCondition {
    /// Methods; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<Method>,
    /// Path prefixes (segment-wise); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub paths: Vec<String>,
    /// Device classes; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub devices: Vec<DeviceClass>,
}

/// Whether a limit refuses requests.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum LimitMode {
    /// Refuse requests over the limit with 429.
    #[default]
    Enforce,
    /// Only count and report; never refuse.
    Shadow,
}
