//! `ApiRoute`: which requests go where.
//!
//! The shape follows Gateway API's HTTPRoute, which users of Envoy Gateway,
//! Istio and most ingress controllers already know: `hosts` (HTTPRoute's
//! `hostnames`), then `rules`, each with ORed `matches`, weighted `backends`
//! and `filters`. Ferrogate departs from it where an API gateway needs more:
//!
//! - **Device class** is a first-class match (`matches[].devices`), because
//!   "send phones to the lightweight service" is a routing decision, not a
//!   header regex every user has to get right.
//! - **Backends** are a Service (`name` + `port`) *or* a `url` for services
//!   outside the cluster, so one route can mix both without an extra
//!   ExternalName Service.
//! - **Filters** are one struct with a field per kind instead of HTTPRoute's
//!   list of typed filters: each kind runs at a fixed phase anyway, and a
//!   struct cannot hold two contradicting rewrites.
//! - Traffic settings that Envoy Gateway puts in a separate
//!   BackendTrafficPolicy (`timeouts`, `retry`, `loadBalancer`,
//!   `outlierDetection`) live on the rule: one object tells the whole story
//!   of a path, which is what a reader of a Git repository wants.
//! - `aggregate` replaces `backends` for composite endpoints: several
//!   services called in parallel and their JSON merged.
//! - HTTPS is the default: when a TlsCertificate covers a host, plain HTTP
//!   requests are redirected unless `allowPlainHttp` is set.

use crate::common::{DeviceClass, Duration, Method, ResourceStatus};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Routes requests for a set of hosts to backend services.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrogate.dev",
    version = "v1alpha1",
    kind = "ApiRoute",
    namespaced,
    status = "ResourceStatus",
    shortname = "ar",
    category = "ferrogate",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteSpec {
    /// Host names this route serves, matched against the `Host` header (and
    /// the TLS SNI). A leading `*.` matches exactly one or more labels in front
    /// of the rest (`*.example.com` matches `a.example.com`, not
    /// `example.com`). Lowercase DNS names; no ports.
    #[schemars(length(min = 1, max = 16))]
    pub hosts: Vec<String>,
    /// Serve plain HTTP for these hosts even when a TlsCertificate covers
    /// them. By default such requests get a 308 redirect to HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_http: bool,
    /// Rules, each with its matches and what to do with a matching request.
    /// Across all routes the most specific match wins (see the docs on
    /// precedence), not the order here.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<RouteRule>,
}

/// One rule: which requests it takes and where they go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Name of the rule, unique within the route. Policies target a rule by
    /// this name (`targetRefs[].sectionName`); metrics and logs show it.
    /// Defaults to `rule-N` with N the rule's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// Conditions a request must meet; the rule applies when any one match
    /// holds. No matches means every request (path prefix `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go. Traffic is split by `weight`. Exactly one
    /// of `backends`, `aggregate`, `filters.redirect` and
    /// `filters.directResponse` says what the rule does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backends: Vec<Backend>,
    /// Changes to the request and response on the way through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
    /// Time limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries for failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// How an endpoint is chosen among a backend's ready endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Passive health checking: endpoints that keep failing are taken out of
    /// rotation for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Call several backends in parallel and merge their JSON answers into
    /// one object. Replaces `backends`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
}

/// Conditions on a request. All fields that are set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Match on the request path. Defaults to prefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Methods the request may use; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<Method>,
    /// Request headers that must match (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// Query parameters that must match (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<HeaderMatch>,
    /// Device classes the client must be one of; empty means any. See the
    /// docs for how a client's class is decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub devices: Vec<DeviceClass>,
}

/// How a path is matched.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (segment-wise: `/api` matches `/api` and
    /// `/api/x`, not `/apix`) or `RegularExpression` (RE2 syntax, whole path).
    #[serde(rename = "type", default = "default_path_match_type")]
    pub type_: PathMatchType,
    /// The path or pattern. Paths start with `/`.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

fn default_path_match_type() -> PathMatchType {
    PathMatchType::PathPrefix
}

/// Kinds of path match.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value, on a segment boundary.
    PathPrefix,
    /// The whole path matches the regular expression.
    RegularExpression,
}

/// A match on a header or query parameter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Name of the header (case-insensitive) or query parameter
    /// (case-sensitive).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// `Exact` (default), `RegularExpression`, or `Present` (value ignored).
    #[serde(rename = "type", default = "default_value_match_type")]
    pub type_: ValueMatchType,
    /// The value or pattern.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

fn default_value_match_type() -> ValueMatchType {
    ValueMatchType::Exact
}

/// Kinds of value match for headers and query parameters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ValueMatchType {
    /// The value equals the given one.
    Exact,
    /// The whole value matches the regular expression (RE2 syntax).
    RegularExpression,
    /// The header or parameter is present, whatever its value.
    Present,
}

/// A backend: a Kubernetes Service port, or a URL outside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Name of the Service. Set either `name` and `port`, or `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Namespace of the Service; defaults to the route's. A Service in
    /// another namespace must grant access with the
    /// `ferrogate.dev/allowed-namespaces` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Service port (the `port` of the Service, not the target port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// A backend outside the cluster: `http://host:port[/base-path]` or
    /// `https://...`. The host must be an IP address or a name the
    /// dataplane can resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// Share of traffic relative to the rule's other backends. 0 disables the
    /// backend. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000000))]
    pub weight: Option<u32>,
    /// Protocol to the backend: `HTTP1` (default) or `HTTP2` (prior
    /// knowledge; use for gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<BackendProtocol>,
}

/// Protocols spoken to a backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackendProtocol {
    /// HTTP/1.1 with keep-alive.
    #[serde(rename = "HTTP1")]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), or ALPN h2 over TLS.
    #[serde(rename = "HTTP2")]
    Http2,
}

/// Changes to requests and responses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Filters {
    /// Header changes on the request before it goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderChanges>,
    /// Header changes on the response before it goes to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderChanges>,
    /// Rewrite the host or path before the request goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Remove or keep keys of JSON response bodies, for example to send
    /// mobile clients less data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_transform: Option<JsonTransform>,
    /// Cache responses in the dataplane's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
}

/// Header changes, applied in the order remove, set, add.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderChanges {
    /// Headers to set, replacing any present value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub set: Vec<HeaderValue>,
    /// Headers to add, keeping any present value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub add: Vec<HeaderValue>,
    /// Names of headers to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HeaderValue {
    /// Header name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// Rewrites applied to the request sent upstream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// Replace the `Host` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub hostname: Option<String>,
    /// Replace the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// How a path is rewritten.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathRewrite {
    /// `ReplacePrefixMatch` (only with a `PathPrefix` match: the matched
    /// prefix is replaced) or `ReplaceFullPath`.
    #[serde(rename = "type")]
    pub type_: PathRewriteType,
    /// The replacement.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// Kinds of path rewrite.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PathRewriteType {
    /// Replace the part of the path that the `PathPrefix` match matched.
    ReplacePrefixMatch,
    /// Replace the whole path.
    ReplaceFullPath,
}

/// A redirect response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`; defaults to the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?$"))]
    pub scheme: Option<String>,
    /// Host of the location; defaults to the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub hostname: Option<String>,
    /// Port of the location; defaults to the scheme's default port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Path of the location; defaults to the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// 301, 302, 303, 307 or 308 (default 302).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 301, max = 308))]
    pub status_code: Option<u16>,
}

/// A fixed response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    /// Status code, 200 to 599.
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    /// Body of the response (at most 64 KiB).
    #[serde(default)]
    #[schemars(length(max = 65536))]
    pub body: String,
    /// `Content-Type` of the body; defaults to `text/plain; charset=utf-8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub content_type: Option<String>,
}

/// Changes to JSON response bodies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JsonTransform {
    /// Apply only for these device classes; empty means all clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub devices: Vec<DeviceClass>,
    /// Key paths to remove: `a.b.c` for nested objects, `items[].internal`
    /// for a key in every element of an array.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub remove: Vec<String>,
    /// Key paths to keep; everything else is removed. Cannot be combined with
    /// `remove`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub keep: Vec<String>,
    /// Bodies larger than this pass through unchanged. Defaults to 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16777216))]
    pub max_body_bytes: Option<u32>,
}

/// Response caching (RFC 9111 semantics).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cache {
    /// Freshness for responses without `Cache-Control: max-age` or
    /// `Expires`. Without it such responses are not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub default_ttl: Option<Duration>,
    /// Responses larger than this are not stored. Defaults to 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_entry_bytes: Option<u32>,
    /// Request headers that are part of the cache key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub key_headers: Vec<String>,
    /// Make the client's device class part of the cache key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_device: bool,
    /// Cache responses to requests that carry `Authorization`. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_authorized: bool,
    /// Cache responses that carry `Set-Cookie`. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_set_cookie: bool,
}

/// Time limits for a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Whole request, retries included, until the response headers arrive.
    /// Defaults to 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub request: Option<Duration>,
    /// One attempt at a backend. Defaults to the request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backend_request: Option<Duration>,
    /// Establishing a connection to a backend. Defaults to 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub connect: Option<Duration>,
}

/// Retry settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Retries after the first attempt (0 to 10). Requests with non-idempotent
    /// methods are retried only after connect failures, when nothing was
    /// sent.
    #[schemars(range(max = 10))]
    pub attempts: u32,
    /// What counts as retryable: `ConnectFailure` (always on),
    /// `GatewayError` (502, 503, 504), `ServerError` (any 5xx), `Reset`.
    /// (Named `retryOn`, not `on`: YAML 1.1 readers such as kubectl turn an
    /// unquoted `on` key into `true`.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub retry_on: Vec<RetryOn>,
    /// Wait before the first retry; doubles each time, with jitter. Default
    /// 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backoff: Option<Duration>,
    /// Retries may add at most this percentage of extra load over the
    /// requests in flight (the retry budget). Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub budget_percent: Option<u32>,
}

/// Retry conditions.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum RetryOn {
    /// The connection could not be made.
    ConnectFailure,
    /// The backend answered 502, 503 or 504.
    GatewayError,
    /// The backend answered any 5xx.
    ServerError,
    /// The connection was reset before a response arrived.
    Reset,
}

/// Load balancing among a backend's endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `RoundRobin` (default), `LeastRequest` (power of two choices) or
    /// `ConsistentHash`.
    #[serde(rename = "type", default)]
    pub type_: LoadBalancerType,
    /// What the consistent hash is computed over; required with
    /// `ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

/// Balancing algorithms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum LoadBalancerType {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// The less loaded of two random endpoints.
    LeastRequest,
    /// Requests with the same key go to the same endpoint while it is up.
    ConsistentHash,
}

/// The key of a consistent hash; set exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HashOn {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
    /// The client's address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_ip: bool,
}

/// Passive health checking.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures (connect errors, resets, 5xx) that eject an
    /// endpoint. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// First ejection time; doubles with each consecutive ejection up to
    /// 10x. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub base_ejection_time: Option<Duration>,
    /// At most this percentage of endpoints is ejected at once. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Calls several backends in parallel and merges their JSON answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Aggregate {
    /// The parts; each answer lands under its part's name.
    #[schemars(length(min = 1, max = 16))]
    pub parts: Vec<AggregatePart>,
    /// `Omit` (default: leave failed parts out and list them in the
    /// `x-ferrogate-partial` header) or `Fail` (answer 502).
    #[serde(default)]
    pub on_part_failure: PartFailurePolicy,
}

/// One call of an aggregate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregatePart {
    /// Key of this part's answer in the merged object.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The backend to call (its weight is ignored).
    pub backend: Backend,
    /// Path (and query) to request from the backend.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// Time limit for this part. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub timeout: Option<Duration>,
    /// Request headers passed on to this part (for example
    /// `Authorization` or headers set by authentication).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub forward_headers: Vec<String>,
}

/// What happens when a part of an aggregate fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PartFailurePolicy {
    /// Leave the part out and name it in `x-ferrogate-partial`.
    #[default]
    Omit,
    /// Fail the whole request with 502.
    Fail,
}
