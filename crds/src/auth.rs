//! `AuthPolicy`: who may call a route.
//!
//! Modelled on Kuadrant's AuthPolicy and Envoy Gateway's SecurityPolicy, with
//! two choices of our own:
//!
//! - `authentication.methods` is an ordered list; the first method that
//!   accepts the request's credentials authenticates it. Envoy Gateway allows
//!   one method of each kind and no ordering; a list says plainly what is
//!   tried and in which order.
//! - Every method produces the same **identity**: a consumer name, groups,
//!   an organization and (for JWT) claims. Authorization rules are written
//!   against that identity, so "only organizations A and B" reads the same
//!   whether callers use tokens or API keys.
//!
//! API keys live in Secrets selected by label, one Secret per consumer, so
//! that issuing and revoking a key is a `kubectl apply`/`delete` and RBAC on
//! Secrets guards them. The Secret's data keys are `api-key` (the key),
//! `consumer`, `groups` (comma-separated) and `organization`. Keys reach the
//! dataplane only as SHA-256 digests.

use crate::common::{Duration, Method, ResourceStatus, SecretKeyRef, TargetRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Authentication and authorization for ApiRoutes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrogate.dev",
    version = "v1alpha1",
    kind = "AuthPolicy",
    namespaced,
    status = "ResourceStatus",
    shortname = "authp",
    category = "ferrogate",
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".spec.targetRefs[*].name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicySpec {
    /// Routes (or single rules of routes) this policy protects. When two
    /// policies target the same rule, the one naming the rule wins over the
    /// one naming the whole route, then the older one.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<TargetRef>,
    /// How callers prove who they are. Without it, only authorization rules
    /// over the request (method, path, client address) apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// Who may do what once authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
}

/// Authentication methods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// Methods tried in order; the first that accepts the request's
    /// credentials authenticates it. A request none accepts gets 401 with
    /// `WWW-Authenticate`.
    #[schemars(length(min = 1, max = 8))]
    pub methods: Vec<AuthMethod>,
    /// Let requests without any credentials through as anonymous (they still
    /// face the authorization rules). Invalid credentials are always refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_anonymous: bool,
    /// Pass credentials (the `Authorization` header, API key header or query
    /// parameter) upstream. By default they are stripped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_credentials: bool,
}

/// One authentication method; set exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthMethod {
    /// JSON Web Tokens (bearer tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtProvider>,
    /// API keys held in Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
    /// HTTP basic authentication against an htpasswd Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// Ask an HTTP service whether the request may pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardAuth>,
}

/// A JWT issuer and how its tokens are checked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// Required `iss` claim.
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// Accepted `aud` values; the token must carry one of them. Empty means
    /// `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub audiences: Vec<String>,
    /// Accepted signature algorithms. Defaults to `RS256`. `none` is never
    /// accepted; HMAC algorithms need `hmacSecretRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Where verification keys come from; set exactly one of `jwksUri`,
    /// `jwks`, `jwksSecretRef`, `hmacSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub jwks_uri: Option<String>,
    /// An inline JWKS document (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub jwks: Option<String>,
    /// A Secret key holding a JWKS document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<SecretKeyRef>,
    /// A Secret key holding the shared secret for HS256/384/512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_ref: Option<SecretKeyRef>,
    /// How long fetched JWKS keys are used before a refetch. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub jwks_cache_duration: Option<Duration>,
    /// Past this age without a successful fetch, cached keys are no longer
    /// trusted and requests fail closed. Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub jwks_max_staleness: Option<Duration>,
    /// Allowed clock skew for `exp`, `nbf` and `iat`. Default 30s, at most
    /// 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub clock_skew: Option<Duration>,
    /// Where the token is read from. Default: `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_from: Option<CredentialSource>,
    /// Claims copied into request headers for the upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Claim holding the consumer name. Default `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<String>,
    /// Claim holding the organization. Default `org`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_claim: Option<String>,
    /// Claim holding the groups (array or space-separated string). Default
    /// `groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
}

/// JWT signature algorithms.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[allow(missing_docs)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

/// Where a credential is read from; set exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSource {
    /// A request header. For `Authorization`, a `Bearer ` prefix is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
}

/// Copies a claim into a request header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ClaimToHeader {
    /// Claim name; nested claims as `a.b`.
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// Header name.
    #[schemars(length(min = 1, max = 256))]
    pub header: String,
}

/// API keys from Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Labels selecting the Secrets (in the policy's namespace) that hold the
    /// keys. Each Secret has data keys `api-key`, `consumer`, and optionally
    /// `groups` (comma-separated) and `organization`.
    #[schemars(length(min = 1, max = 8))]
    pub secret_selector: BTreeMap<String, String>,
    /// Where the key is read from. Default: header `x-api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_from: Option<CredentialSource>,
}

/// Basic authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// A Secret key holding htpasswd lines (`user:$2y$...`; bcrypt or
    /// SHA-256/512 crypt hashes; plain and MD5 hashes are refused).
    pub secret_ref: SecretKeyRef,
    /// Realm in the `WWW-Authenticate` challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub realm: Option<String>,
}

/// Forward authentication to an HTTP service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAuth {
    /// URL of the service (`http://host:port/path`). Either this or
    /// `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// A Service port and path in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ForwardAuthService>,
    /// Request headers sent to the service. Default: `Authorization`,
    /// `Cookie`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub request_headers: Vec<String>,
    /// Headers of a 2xx answer copied to the upstream request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub upstream_headers: Vec<String>,
    /// Time limit for the call. Default 2s. On timeout or connection failure
    /// the request is refused (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub timeout: Option<Duration>,
}

/// A Service used by forward authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAuthService {
    /// Name of the Service, in the policy's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Path requested on the service. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Authorization rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// Rules checked in order; the first whose conditions all hold decides.
    /// When rules exist and none holds, the request is denied (403).
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<AuthorizationRule>,
}

/// One authorization rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Name for logs and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// `Allow` or `Deny`.
    pub action: AuthorizationAction,
    /// Claim conditions (JWT only); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims: Vec<ClaimCondition>,
    /// The caller must be in one of these groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub groups: Vec<String>,
    /// The caller must belong to one of these organizations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub organizations: Vec<String>,
    /// The caller must be one of these consumers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub consumers: Vec<String>,
    /// The request must use one of these methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<Method>,
    /// The request path must start with one of these prefixes (segment-wise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub paths: Vec<String>,
    /// The client address must be in one of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub client_cidrs: Vec<String>,
}

/// What a matching authorization rule does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuthorizationAction {
    /// Let the request through.
    #[default]
    Allow,
    /// Refuse it with 403.
    Deny,
}

/// A condition on a JWT claim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimCondition {
    /// Claim name; nested claims as `a.b`.
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// `Equals` (the first value), `OneOf`, `Contains` (an array claim holds
    /// one of the values) or `Prefix`.
    pub operator: ClaimOperator,
    /// Values compared with the claim.
    #[schemars(length(min = 1, max = 64))]
    pub values: Vec<String>,
}

/// Claim comparison operators.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClaimOperator {
    /// The claim equals the first value.
    Equals,
    /// The claim equals one of the values.
    OneOf,
    /// The claim (an array, or a space-separated string) contains one of the
    /// values.
    Contains,
    /// The claim starts with one of the values.
    Prefix,
}
