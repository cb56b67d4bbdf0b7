//! The routing snapshot: everything a dataplane needs to serve traffic, and
//! nothing it has to look up elsewhere.
//!
//! The model is plain serde data, ordered deterministically (sorted vectors
//! and `BTreeMap`s), so that serializing the same snapshot always gives the
//! same bytes and the same [`Snapshot::hash`]. The dataplane validates it
//! again when it builds its request-path tables (regexes, TLS keys), because
//! a snapshot may arrive from disk or over the network.
//!
//! Layout:
//!
//! ```text
//! Snapshot
//! ├── virtual_hosts[]   host name -> routes in precedence order
//! │     └── routes[]    one per (rule, match): matcher + action + filters
//! │                     + names of the auth / rate-limit policies that apply
//! ├── clusters{}        name -> endpoints + protocol + balancing + health
//! ├── certificates[]    SNI names -> PEM chain and key
//! ├── auth_policies{}   "namespace/name" -> compiled AuthPolicy
//! └── rate_limits{}     "namespace/name" -> compiled RateLimitPolicy
//! ```

use crds::auth::{ClaimOperator, ClaimToHeader, CredentialSource, JwtAlgorithm};
use crds::common::DeviceClass;
use crds::ratelimit::{FailureMode, KeySource, RateLimitScope};
use crds::route::{PartFailurePolicy, RetryOn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A complete, self-contained routing configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Monotonic version assigned by whoever publishes the snapshot. Not part
    /// of the hash.
    #[serde(default)]
    pub version: u64,
    /// Hex SHA-256 of the snapshot's content (everything but `version` and
    /// `hash`), set by [`Snapshot::seal`].
    #[serde(default)]
    pub hash: String,
    /// Virtual hosts, sorted by host name.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Upstream clusters by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Server certificates, sorted by name.
    pub certificates: Vec<Certificate>,
    /// Compiled AuthPolicies by `namespace/name`.
    pub auth_policies: BTreeMap<String, AuthConfig>,
    /// Compiled RateLimitPolicies by `namespace/name`.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Resource generations this snapshot contains, by `Kind/namespace/name`.
    /// The controller uses it to tell which resources a dataplane that
    /// acknowledged this snapshot serves.
    pub generations: BTreeMap<String, i64>,
}

impl Snapshot {
    /// Computes the content hash: SHA-256 over the JSON encoding of the
    /// snapshot with `version` 0 and an empty `hash`. The JSON is streamed
    /// into the digest from a borrowed view, without copying the snapshot.
    pub fn content_hash(&self) -> String {
        /// The snapshot's fields in the same order and with the same names,
        /// `version` and `hash` blanked (a test checks the bytes are equal).
        #[derive(Serialize)]
        struct View<'a> {
            version: u64,
            hash: &'a str,
            virtual_hosts: &'a Vec<VirtualHost>,
            clusters: &'a BTreeMap<String, Cluster>,
            certificates: &'a Vec<Certificate>,
            auth_policies: &'a BTreeMap<String, AuthConfig>,
            rate_limits: &'a BTreeMap<String, RateLimitConfig>,
            generations: &'a BTreeMap<String, i64>,
        }
        struct Digester(Sha256);
        impl std::io::Write for Digester {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.update(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let view = View {
            version: 0,
            hash: "",
            virtual_hosts: &self.virtual_hosts,
            clusters: &self.clusters,
            certificates: &self.certificates,
            auth_policies: &self.auth_policies,
            rate_limits: &self.rate_limits,
            generations: &self.generations,
        };
        let mut writer = std::io::BufWriter::with_capacity(64 * 1024, Digester(Sha256::new()));
        // Serializing plain data (strings, numbers, maps with string keys)
        // cannot fail; should it, the digest of what was written is still
        // deterministic.
        let _ = serde_json::to_writer(&mut writer, &view);
        let _ = std::io::Write::flush(&mut writer);
        let (digester, _) = writer.into_parts();
        hex::encode(digester.0.finalize())
    }

    /// Sets `hash` to the content hash.
    pub fn seal(&mut self) {
        self.hash = self.content_hash();
    }
}

/// A host name and its routes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VirtualHost {
    /// Lowercase host name, or `*.suffix` for a wildcard.
    pub hostname: String,
    /// Routes in precedence order: the first whose matcher holds wins.
    pub routes: Vec<Route>,
}

/// Where a route came from, for logs, metrics and `explain`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteId {
    /// Namespace of the ApiRoute.
    pub namespace: String,
    /// Name of the ApiRoute.
    pub name: String,
    /// Name of the rule (`rule-N` when the rule has no name).
    pub rule: String,
    /// Index of the match within the rule.
    pub match_index: u32,
}

/// One (rule, match) pair of an ApiRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Route {
    /// Where the route came from.
    pub id: RouteId,
    /// Conditions a request must meet.
    pub matcher: Matcher,
    /// Answer plain-HTTP requests with a 308 redirect to HTTPS (a certificate
    /// covers the host and the route does not allow plain HTTP).
    pub https_redirect: bool,
    /// What to do with a matching request.
    pub action: Action,
    /// Request header changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderChanges>,
    /// Response header changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderChanges>,
    /// Host and path rewrite for the upstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// JSON response transform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<JsonTransform>,
    /// Response caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
    /// Key of the AuthPolicy in [`Snapshot::auth_policies`] that applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Keys of the RateLimitPolicies in [`Snapshot::rate_limits`] that apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<String>,
}

/// Request conditions; all set fields must hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    /// Path condition.
    pub path: PathMatcher,
    /// Allowed methods (uppercase); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions (names lowercase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatcher>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatcher>,
    /// Allowed device classes; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceClass>,
}

/// A path condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PathMatcher {
    /// The path equals this.
    Exact(String),
    /// The path starts with this, on a segment boundary. `/` matches all.
    Prefix(String),
    /// The whole path matches this regular expression.
    Regex(String),
}

/// A header or query parameter condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ValueMatcher {
    /// Header name (lowercase) or query parameter name.
    pub name: String,
    /// How the value is compared.
    pub value: ValueMatch,
}

/// How a value is compared.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal to this.
    Exact(String),
    /// The whole value matches this regular expression.
    Regex(String),
    /// Present with any value.
    Present,
}

/// What a route does with a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Action {
    /// Proxy to weighted clusters.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    DirectResponse(DirectResponse),
    /// Call several clusters and merge their JSON.
    Aggregate(Aggregate),
}

/// Proxying to one of several clusters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Forward {
    /// Clusters with their weights (only weights > 0), sorted as in the rule.
    pub backends: Vec<WeightedCluster>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Retry policy.
    pub retry: RetryPolicy,
}

/// A cluster and its share of traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WeightedCluster {
    /// Key in [`Snapshot::clusters`]. A name that is not a key there (the
    /// compiler writes `unresolved:` and the name for a backend whose
    /// Service is missing or not granted) keeps its share of traffic, and
    /// requests picked for it get 500, as Gateway API prescribes.
    pub cluster: String,
    /// Relative weight (> 0).
    pub weight: u32,
}

/// Time limits in milliseconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole request until response headers, retries included.
    pub request_ms: u64,
    /// One attempt.
    pub backend_request_ms: u64,
}

/// Retry policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Retry conditions (connect failures are always retried while attempts
    /// remain).
    pub on: Vec<RetryOn>,
    /// First backoff, doubled each retry.
    pub backoff_ms: u64,
    /// Retry budget as a percentage of requests in flight.
    pub budget_percent: u32,
}

/// An upstream: endpoints plus how to talk to them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Cluster {
    /// Ready endpoints, sorted.
    pub endpoints: Vec<Endpoint>,
    /// Protocol to the endpoints.
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints (URL backends with `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Path prefix prepended to every request path (URL backends with a
    /// base path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Endpoint selection.
    pub load_balancer: LoadBalancerPolicy,
    /// Passive health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierPolicy>,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
}

/// One endpoint: a host (IP address or DNS name) and port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// IP address or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Protocols to upstreams.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (prior knowledge in clear text, ALPN over TLS).
    Http2,
}

/// TLS to an upstream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name to send and verify.
    pub server_name: String,
}

/// Endpoint selection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LoadBalancerPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Power of two choices over requests in flight.
    LeastRequest,
    /// Consistent hash over a request property.
    ConsistentHash(HashKey),
}

/// What a consistent hash is computed over.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// A request header (lowercase name).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client's address.
    ClientIp,
}

/// Passive health checking.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutlierPolicy {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection time.
    pub base_ejection_ms: u64,
    /// Most endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
}

/// A redirect response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; `None` keeps the request's.
    pub scheme: Option<String>,
    /// Host; `None` keeps the request's.
    pub hostname: Option<String>,
    /// Port; `None` means the scheme's default.
    pub port: Option<u16>,
    /// Path change; `None` keeps the request's path.
    pub path: Option<PathRewrite>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A fixed response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// Content-Type.
    pub content_type: String,
}

/// Parallel calls whose JSON answers are merged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The calls.
    pub parts: Vec<AggregatePart>,
    /// What a failed part does.
    pub on_part_failure: PartFailurePolicy,
    /// Per-request limit on parts in flight.
    pub max_parallel: u32,
}

/// One call of an aggregate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AggregatePart {
    /// Key of the answer in the merged object.
    pub name: String,
    /// Key in [`Snapshot::clusters`].
    pub cluster: String,
    /// Path and query requested.
    pub path: String,
    /// Time limit.
    pub timeout_ms: u64,
    /// Request headers passed on (lowercase).
    pub forward_headers: Vec<String>,
}

/// Header changes, applied remove, set, add.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct HeaderChanges {
    /// Replace these (lowercase name, value).
    pub set: Vec<(String, String)>,
    /// Append these.
    pub add: Vec<(String, String)>,
    /// Remove these (lowercase).
    pub remove: Vec<String>,
}

/// Rewrites of the upstream request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UrlRewrite {
    /// New `Host`.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathRewrite>,
}

/// A path change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    /// Replace the prefix matched by the route's `Prefix` matcher.
    ReplacePrefix(String),
    /// Replace the whole path.
    ReplaceFull(String),
}

/// JSON response transform.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JsonTransform {
    /// Only for these device classes; empty means all.
    pub devices: Vec<DeviceClass>,
    /// Key paths to remove.
    pub remove: Vec<String>,
    /// Key paths to keep (everything else removed).
    pub keep: Vec<String>,
    /// Larger bodies pass unchanged.
    pub max_body_bytes: u32,
}

/// Response caching.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// Freshness when the response gives none.
    pub default_ttl_ms: Option<u64>,
    /// Larger responses are not stored.
    pub max_entry_bytes: u32,
    /// Request headers in the key (lowercase).
    pub key_headers: Vec<String>,
    /// Device class in the key.
    pub key_device: bool,
    /// Cache answers to requests with `Authorization`.
    pub cache_authorized: bool,
    /// Cache answers with `Set-Cookie`.
    pub cache_set_cookie: bool,
}

/// A server certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// `namespace/name` of the TlsCertificate.
    pub name: String,
    /// SNI names (lowercase; `*.suffix` for wildcards).
    pub hosts: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// Only TLS 1.3.
    pub tls13_only: bool,
    /// PEM CA bundle for client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_pem: Option<String>,
    /// Client certificates are required (not just checked when sent).
    #[serde(default)]
    pub client_cert_required: bool,
    /// Expiry of the leaf certificate, Unix seconds.
    pub not_after: i64,
}

/// A compiled AuthPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// Authentication methods in order.
    pub methods: Vec<AuthMethodConfig>,
    /// Requests without credentials pass as anonymous.
    pub allow_anonymous: bool,
    /// Credentials are passed upstream.
    pub forward_credentials: bool,
    /// Authorization rules in order; empty means allow all authenticated.
    pub rules: Vec<AuthzRule>,
}

/// One authentication method.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AuthMethodConfig {
    /// JWT bearer tokens.
    Jwt(JwtConfig),
    /// API keys.
    ApiKey(ApiKeyConfig),
    /// Basic authentication.
    Basic(BasicConfig),
    /// Forward authentication.
    Forward(ForwardConfig),
}

/// JWT verification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// Required issuer.
    pub issuer: String,
    /// Accepted audiences; empty means not checked.
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Where keys come from.
    pub keys: JwtKeys,
    /// JWKS refetch interval.
    pub jwks_cache_ms: u64,
    /// Fail closed when keys are older than this without a successful fetch.
    pub jwks_max_staleness_ms: u64,
    /// Allowed clock skew.
    pub clock_skew_ms: u64,
    /// Where the token is read.
    pub token_from: CredentialSource,
    /// Claims copied into request headers.
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Claim naming the consumer.
    pub consumer_claim: String,
    /// Claim naming the organization.
    pub organization_claim: String,
    /// Claim holding groups.
    pub groups_claim: String,
}

/// Sources of JWT verification keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum JwtKeys {
    /// Fetched by the dataplane from this URL.
    JwksUri(String),
    /// A JWKS document (inline or from a Secret).
    Jwks(String),
    /// An HMAC secret, base64.
    Hmac(String),
}

/// API key authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyConfig {
    /// Where the key is read.
    pub key_from: CredentialSource,
    /// Known keys, sorted by digest.
    pub keys: Vec<ApiKeyEntry>,
}

/// One API key, by digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyEntry {
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Consumer name.
    pub consumer: String,
    /// Consumer groups.
    pub groups: Vec<String>,
    /// Consumer organization.
    pub organization: Option<String>,
}

/// Basic authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BasicConfig {
    /// Realm for the challenge.
    pub realm: String,
    /// Users and their password hashes, sorted by user.
    pub users: Vec<(String, String)>,
}

/// Forward authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    /// URL called.
    pub url: String,
    /// Request headers sent (lowercase).
    pub request_headers: Vec<String>,
    /// Answer headers copied upstream (lowercase).
    pub upstream_headers: Vec<String>,
    /// Time limit.
    pub timeout_ms: u64,
}

/// One authorization rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuthzRule {
    /// Name for logs.
    pub name: String,
    /// Allow (true) or deny (false).
    pub allow: bool,
    /// Claim conditions.
    pub claims: Vec<ClaimCheck>,
    /// One of these groups.
    pub groups: Vec<String>,
    /// One of these organizations.
    pub organizations: Vec<String>,
    /// One of these consumers.
    pub consumers: Vec<String>,
    /// One of these methods (uppercase).
    pub methods: Vec<String>,
    /// One of these path prefixes.
    pub paths: Vec<String>,
    /// One of these client CIDRs.
    pub client_cidrs: Vec<String>,
}

/// A claim condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClaimCheck {
    /// Claim path (`a.b`).
    pub claim: String,
    /// Operator.
    pub operator: ClaimOperator,
    /// Values.
    pub values: Vec<String>,
}

/// A compiled RateLimitPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Local or Global.
    pub scope: RateLimitScope,
    /// Behaviour when Redis fails (Global).
    pub failure_mode: FailureMode,
    /// The limits.
    pub limits: Vec<LimitConfig>,
}

/// One limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LimitConfig {
    /// Name.
    pub name: String,
    /// Requests per period.
    pub requests: u32,
    /// Period.
    pub period_ms: u64,
    /// Extra burst.
    pub burst: u32,
    /// Key parts.
    pub key: Vec<KeyPartConfig>,
    /// Methods (uppercase); empty means any.
    pub methods: Vec<String>,
    /// Path prefixes; empty means any.
    pub paths: Vec<String>,
    /// Devices; empty means any.
    pub devices: Vec<DeviceClass>,
    /// Count only, never refuse.
    pub shadow: bool,
}

/// One part of a rate-limit key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyPartConfig {
    /// Source.
    pub source: KeySource,
    /// Header (lowercase) or claim name.
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_covers_everything_but_version_and_hash() {
        let mut snapshot = Snapshot::default();
        snapshot.generations.insert("ApiRoute/default/a".into(), 3);
        snapshot.clusters.insert(
            "default/svc:80".into(),
            Cluster {
                endpoints: vec![Endpoint {
                    host: "10.0.0.1".into(),
                    port: 8080,
                }],
                protocol: UpstreamProtocol::Http1,
                tls: None,
                path_prefix: None,
                load_balancer: LoadBalancerPolicy::RoundRobin,
                outlier_detection: None,
                connect_timeout_ms: 5000,
            },
        );
        // The streamed view hashes exactly the JSON of a blanked copy.
        let mut blank = snapshot.clone();
        blank.version = 0;
        blank.hash.clear();
        let expected = hex::encode(Sha256::digest(
            serde_json::to_vec(&blank).expect("serialize"),
        ));
        assert_eq!(snapshot.content_hash(), expected);
        // Version and hash do not change it; content does.
        let before = snapshot.content_hash();
        snapshot.version = 9;
        snapshot.hash = "x".into();
        assert_eq!(snapshot.content_hash(), before);
        snapshot.generations.insert("ApiRoute/default/a".into(), 4);
        assert_ne!(snapshot.content_hash(), before);
    }
}
