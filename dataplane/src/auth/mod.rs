//! The authentication and authorization phases.
//!
//! ```text
//!  methods in order: JWT | API key | basic | forward
//!         first that accepts the request's credentials wins
//!    ─▶ none accepted:  forward denial  -> that answer
//!                       forward down    -> 503 (fail closed)
//!                       bad credentials -> 401 + WWW-Authenticate
//!                       no credentials  -> 401, or anonymous if allowed
//!    ─▶ authorization rules (first match decides; default deny) -> 403
//!    ─▶ strip credentials (unless forwardCredentials); replace the
//!       headers the policy sets (claim headers, forward-auth answer
//!       headers) whatever the client sent
//! ```
//!
//! Every method yields the same [`Identity`] (consumer, organization,
//! groups, JWT claims), which the rules, the rate-limit keys and the access
//! log read. A refused request never reaches the upstream. Per-policy state
//! is built with the table ([`build`]); state that must outlive a snapshot
//! (JWKS caches, password-check results) lives in [`AuthState`] in
//! [`crate::Shared`].

pub mod apikey;
pub mod authz;
pub mod basic;
pub mod forward;
pub mod jwks;
pub mod jwt;

use crate::error::error_response;
use crate::metrics::{AuthLabels, Metrics};
use crate::proxy::{ConnInfo, RequestInfo};
use crate::upstream::Clients;
use crate::Shared;
use bytes::Bytes;
use crds::auth::CredentialSource;
use crds::DeviceClass;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use snapshot::model::{AuthConfig, AuthMethodConfig, JwtKeys, Snapshot};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Who a request comes from, as authentication established it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Consumer name (API key owner, JWT `sub` or configured claim, basic
    /// user).
    pub consumer: Option<Arc<str>>,
    /// Organization.
    pub organization: Option<Arc<str>>,
    /// Groups.
    pub groups: Arc<[Arc<str>]>,
    /// JWT claims.
    pub claims: Option<Arc<serde_json::Value>>,
    /// The method that authenticated (`jwt`, `api-key`, `basic`, `forward`).
    pub method: &'static str,
}

/// Why a request was refused; the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No credentials.
    Missing,
    /// Credentials that cannot be parsed.
    Malformed,
    /// JWT algorithm not allowed (including `none`).
    Algorithm,
    /// Bad signature.
    Signature,
    /// `exp` passed (beyond the skew).
    Expired,
    /// `nbf` in the future.
    NotYetValid,
    /// `iat` in the future.
    IssuedInFuture,
    /// Wrong `iss`.
    Issuer,
    /// No accepted `aud`.
    Audience,
    /// No `exp`.
    MissingExpiry,
    /// No key with the token's `kid`.
    UnknownKey,
    /// JWKS never fetched or older than the maximum staleness.
    KeysUnavailable,
    /// API key not known.
    UnknownApiKey,
    /// Wrong user or password.
    BadPassword,
    /// Too many password checks waiting.
    Busy,
    /// The forward-auth service said no.
    ForwardDenied,
    /// The forward-auth service did not answer.
    ForwardUnavailable,
    /// Authorization rules denied the request.
    Forbidden,
}

impl Reason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Algorithm => "algorithm",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::MissingExpiry => "missing_exp",
            Reason::UnknownKey => "unknown_key",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::UnknownApiKey => "unknown_api_key",
            Reason::BadPassword => "bad_password",
            Reason::Busy => "busy",
            Reason::ForwardDenied => "forward_denied",
            Reason::ForwardUnavailable => "forward_unavailable",
            Reason::Forbidden => "forbidden",
        }
    }
}

/// Auth state that outlives snapshots.
#[derive(Default)]
pub struct AuthState {
    jwks: Mutex<HashMap<(String, u64, u64), Arc<jwks::JwksCache>>>,
    /// Password checks (bcrypt, SHA-crypt) and their remembered outcomes.
    pub passwords: basic::PasswordCheck,
}

enum Method {
    Jwt(Box<jwt::JwtProvider>),
    ApiKey(apikey::ApiKeys),
    Basic(basic::Basic),
    Forward(Box<forward::ForwardAuth>),
}

/// Headers authentication adds to the upstream request.
type AddedHeaders<'a> = Cow<'a, [(HeaderName, HeaderValue)]>;

/// One AuthPolicy, ready for the request path.
pub struct AuthRuntime {
    policy: Arc<str>,
    methods: Vec<Method>,
    allow_anonymous: bool,
    forward_credentials: bool,
    rules: authz::Rules,
    strip: Vec<CredentialSource>,
    injected: Vec<HeaderName>,
    challenges: Vec<HeaderValue>,
    invalid_challenges: Vec<HeaderValue>,
    refusals: Family<AuthLabels, Counter>,
}

/// What the request phases share about a request.
pub struct PhaseContext<'a> {
    /// The connection.
    pub conn: &'a ConnInfo,
    /// Dataplane state.
    pub shared: &'a Shared,
    /// Request host (lowercase, no port).
    pub host: &'a str,
    /// Request path.
    pub path: &'a str,
    /// Device class.
    pub device: DeviceClass,
    /// Request id, for error bodies.
    pub request_id: &'a str,
}

impl PhaseContext<'_> {
    /// The client's address, X-Forwarded-For counted only from trusted
    /// proxies.
    pub fn client_ip(&self, headers: &HeaderMap) -> std::net::IpAddr {
        crate::ratelimit::client_ip(self.conn.peer.ip(), headers, &self.shared.config)
    }
}

/// Builds every AuthPolicy of a snapshot. The error names the policy.
pub fn build(
    snapshot: &Snapshot,
    state: &AuthState,
    clients: &Clients,
    metrics: &Metrics,
) -> Result<HashMap<String, Arc<AuthRuntime>>, (String, String)> {
    let mut out = HashMap::with_capacity(snapshot.auth_policies.len());
    let mut used_jwks = HashSet::new();
    for (key, config) in &snapshot.auth_policies {
        let runtime = build_one(key, config, state, clients, metrics, &mut used_jwks)
            .map_err(|reason| (key.clone(), reason))?;
        out.insert(key.clone(), Arc::new(runtime));
    }
    state
        .jwks
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .retain(|k, _| used_jwks.contains(k));
    Ok(out)
}

fn build_one(
    key: &str,
    config: &AuthConfig,
    state: &AuthState,
    clients: &Clients,
    metrics: &Metrics,
    used_jwks: &mut HashSet<(String, u64, u64)>,
) -> Result<AuthRuntime, String> {
    let mut methods = Vec::with_capacity(config.methods.len());
    let mut strip = Vec::new();
    let mut injected = Vec::new();
    let mut challenges = Vec::new();
    let mut invalid_challenges = Vec::new();
    for method in &config.methods {
        match method {
            AuthMethodConfig::Jwt(j) => {
                let provider = jwt::JwtProvider::build(j, |uri| {
                    let cache_key = (uri.to_owned(), j.jwks_cache_ms, j.jwks_max_staleness_ms);
                    used_jwks.insert(cache_key.clone());
                    let parsed: http::Uri = uri
                        .parse()
                        .map_err(|_| format!("jwksUri {uri:?} is not a URL"))?;
                    let mut caches = state.jwks.lock().unwrap_or_else(|p| p.into_inner());
                    let cache = caches
                        .entry(cache_key)
                        .or_insert_with(|| {
                            Arc::new(jwks::JwksCache::new(
                                parsed,
                                clients.get(false, Duration::from_secs(2)),
                                Duration::from_millis(j.jwks_cache_ms.max(1_000)),
                                Duration::from_millis(j.jwks_max_staleness_ms.max(1_000)),
                            ))
                        })
                        .clone();
                    Ok(cache)
                })?;
                if matches!(j.keys, JwtKeys::JwksUri(_)) {
                    provider.prefetch();
                }
                injected.extend(provider.injected_headers().cloned());
                strip.push(provider.token_from.clone());
                challenges.push(HeaderValue::from_static("Bearer realm=\"ferrogate\""));
                invalid_challenges.push(HeaderValue::from_static(
                    "Bearer realm=\"ferrogate\", error=\"invalid_token\"",
                ));
                methods.push(Method::Jwt(Box::new(provider)));
            }
            AuthMethodConfig::ApiKey(k) => {
                let keys = apikey::ApiKeys::build(k)?;
                strip.push(keys.key_from.clone());
                let challenge = HeaderValue::from_static("ApiKey realm=\"ferrogate\"");
                challenges.push(challenge.clone());
                invalid_challenges.push(challenge);
                methods.push(Method::ApiKey(keys));
            }
            AuthMethodConfig::Basic(b) => {
                let basic = basic::Basic::build(b)?;
                strip.push(CredentialSource {
                    header: Some("authorization".to_owned()),
                    query: None,
                    cookie: None,
                });
                challenges.push(basic.challenge.clone());
                invalid_challenges.push(basic.challenge.clone());
                methods.push(Method::Basic(basic));
            }
            AuthMethodConfig::Forward(f) => {
                let client =
                    clients.get(false, Duration::from_millis(f.timeout_ms.clamp(1, 2_000)));
                let forward = forward::ForwardAuth::build(f, client)?;
                injected.extend(forward.upstream_headers.iter().cloned());
                methods.push(Method::Forward(Box::new(forward)));
            }
        }
    }
    injected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    injected.dedup();
    strip.dedup();
    Ok(AuthRuntime {
        policy: Arc::from(key),
        methods,
        allow_anonymous: config.allow_anonymous,
        forward_credentials: config.forward_credentials,
        rules: authz::Rules::build(&config.rules)?,
        strip,
        injected,
        challenges,
        invalid_challenges,
        refusals: metrics.auth_refusals.clone(),
    })
}

/// How authentication ended when no method accepted the request.
enum Failure {
    Denied(Response<Bytes>),
    Unavailable(Reason),
    Invalid(Reason),
    Missing,
}

impl AuthRuntime {
    /// Runs authentication and authorization on `req`. `Ok` carries the
    /// identity (`None`: anonymous); `Err` the response refusing it. On
    /// success the request is edited for the upstream: credentials
    /// stripped (unless configured otherwise; `query` too), claim and
    /// forward-auth headers set.
    pub async fn phase<B>(
        &self,
        ctx: &PhaseContext<'_>,
        req: &mut Request<B>,
        query: &mut Option<String>,
        info: &mut RequestInfo,
    ) -> Result<Option<Identity>, Response<Bytes>> {
        let mut accepted: Option<(Identity, AddedHeaders<'_>)> = None;
        let mut failure = Failure::Missing;
        let client_ip = ctx.client_ip(req.headers());
        for method in &self.methods {
            let attempt = match method {
                Method::Jwt(provider) => {
                    let Some(token) =
                        credential(&provider.token_from, req.headers(), query.as_deref())
                    else {
                        continue;
                    };
                    provider.verify(&token).await.map(|v| {
                        let headers = v.headers.clone();
                        (v.identity.clone(), Cow::Owned(headers.to_vec()))
                    })
                }
                Method::ApiKey(keys) => {
                    let Some(key) = credential(&keys.key_from, req.headers(), query.as_deref())
                    else {
                        continue;
                    };
                    keys.authenticate(&key)
                        .map(|identity| (identity, Cow::Borrowed(&[][..])))
                        .ok_or(Reason::UnknownApiKey)
                }
                Method::Basic(basic) => {
                    let Some(credential) = scheme_credential(req.headers(), "basic") else {
                        continue;
                    };
                    basic
                        .authenticate(credential, &ctx.shared.auth.passwords)
                        .await
                        .map(|identity| (identity, Cow::Borrowed(&[][..])))
                }
                Method::Forward(forward) => {
                    let subject = forward::Subject {
                        headers: req.headers(),
                        method: req.method(),
                        uri: req.uri(),
                        host: ctx.host,
                        tls: ctx.conn.tls,
                        client_ip,
                    };
                    match forward.check(&subject).await {
                        forward::Verdict::Allow(identity, headers) => {
                            Ok((identity, Cow::Owned(headers)))
                        }
                        forward::Verdict::Deny(answer) => {
                            failure = Failure::Denied(answer);
                            continue;
                        }
                        forward::Verdict::Unreachable => {
                            if !matches!(failure, Failure::Denied(_)) {
                                failure = Failure::Unavailable(Reason::ForwardUnavailable);
                            }
                            continue;
                        }
                    }
                }
            };
            match attempt {
                Ok(ok) => {
                    accepted = Some(ok);
                    break;
                }
                Err(reason) => {
                    failure = match failure {
                        Failure::Missing | Failure::Invalid(_) if reason == Reason::Busy => {
                            Failure::Unavailable(reason)
                        }
                        Failure::Missing | Failure::Invalid(_) => Failure::Invalid(reason),
                        other => other,
                    };
                }
            }
        }

        let (identity, headers) = match accepted {
            Some((identity, headers)) => (Some(identity), headers),
            None if self.methods.is_empty() => (None, Cow::Borrowed(&[][..])),
            None => match failure {
                Failure::Missing if self.allow_anonymous => (None, Cow::Borrowed(&[][..])),
                Failure::Missing => return Err(self.unauthorized(ctx, Reason::Missing)),
                Failure::Invalid(reason) => return Err(self.unauthorized(ctx, reason)),
                Failure::Unavailable(reason) => {
                    self.count(reason);
                    let code = if reason == Reason::Busy {
                        "auth_busy"
                    } else {
                        "auth_unavailable"
                    };
                    return Err(error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        code,
                        ctx.request_id,
                    ));
                }
                Failure::Denied(answer) => {
                    self.count(Reason::ForwardDenied);
                    return Err(answer);
                }
            },
        };

        if !self.rules.is_empty() {
            let verdict = self.rules.decide(
                identity.as_ref(),
                &authz::Request {
                    method: req.method(),
                    path: ctx.path,
                    client_ip,
                },
            );
            if !verdict.allowed {
                self.count(Reason::Forbidden);
                tracing::debug!(policy = %self.policy, rule = ?verdict.rule, "request forbidden");
                return Err(error_response(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    ctx.request_id,
                ));
            }
        }

        if !self.forward_credentials {
            for source in &self.strip {
                strip_credential(source, req.headers_mut(), query);
            }
        }
        // Headers this policy sets replace whatever the client sent (so
        // they cannot be forged). Done last: a forward-auth service may
        // answer with a header the methods above read, like Authorization.
        for name in &self.injected {
            req.headers_mut().remove(name);
        }
        for (name, value) in headers.iter() {
            req.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(identity) = &identity {
            info.consumer = identity.consumer.clone();
            info.organization = identity.organization.clone();
        }
        Ok(identity)
    }

    fn count(&self, reason: Reason) {
        self.refusals
            .get_or_create(&AuthLabels {
                policy: self.policy.to_string(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    fn unauthorized(&self, ctx: &PhaseContext<'_>, reason: Reason) -> Response<Bytes> {
        self.count(reason);
        tracing::debug!(policy = %self.policy, reason = reason.as_str(), "request not authenticated");
        let (code, challenges) = if reason == Reason::Missing {
            ("missing_credentials", &self.challenges)
        } else {
            ("invalid_credentials", &self.invalid_challenges)
        };
        let mut response = error_response(StatusCode::UNAUTHORIZED, code, ctx.request_id);
        for challenge in challenges {
            response
                .headers_mut()
                .append(header::WWW_AUTHENTICATE, challenge.clone());
        }
        response
    }
}

/// The credential of `scheme` in the `Authorization` header (case
/// insensitive scheme).
fn scheme_credential<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (found, rest) = value.split_once(' ')?;
    found.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Reads a credential from where `source` says. For the `Authorization`
/// header, only a `Bearer` credential counts (others belong to other
/// methods).
pub fn credential<'h>(
    source: &CredentialSource,
    headers: &'h HeaderMap,
    query: Option<&str>,
) -> Option<Cow<'h, str>> {
    if let Some(name) = &source.header {
        if name == "authorization" {
            return scheme_credential(headers, "bearer")
                .filter(|c| !c.is_empty())
                .map(Cow::Borrowed);
        }
        return headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(Cow::Borrowed);
    }
    if let Some(name) = &source.query {
        return form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| Cow::<'h, str>::Owned(v.into_owned()))
            .filter(|v| !v.is_empty());
    }
    if let Some(name) = &source.cookie {
        return headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.trim())
            })
            .filter(|v| !v.is_empty())
            .map(Cow::Borrowed);
    }
    None
}

/// Removes a credential from the request (header, query parameter or
/// cookie).
pub fn strip_credential(
    source: &CredentialSource,
    headers: &mut HeaderMap,
    query: &mut Option<String>,
) {
    if let Some(name) = &source.header {
        headers.remove(name.as_str());
    }
    if let Some(name) = &source.query {
        if let Some(q) = query.as_deref() {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|pair| {
                    let key = pair.split('=').next().unwrap_or("");
                    let decoded: String = form_urlencoded::parse(key.as_bytes())
                        .map(|(k, _)| k.into_owned())
                        .next()
                        .unwrap_or_default();
                    decoded != *name
                })
                .collect();
            *query = (!kept.is_empty()).then(|| kept.join("&"));
        }
    }
    if let Some(name) = &source.cookie {
        let values: Vec<String> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .map(str::trim)
                    .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k != name))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|v| !v.is_empty())
            .collect();
        headers.remove(header::COOKIE);
        for v in values {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.append(header::COOKIE, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phases run inside hyper's `Send` service futures.
    #[allow(dead_code)]
    fn phases_are_send(
        a: &AuthRuntime,
        l: &crate::ratelimit::RouteLimits,
        ctx: &PhaseContext<'_>,
        req: &mut Request<crate::body::RequestBody>,
        q: &mut Option<String>,
        info: &mut RequestInfo,
    ) {
        fn is_send<T: Send>(_: &T) {}
        is_send(&a.phase(ctx, req, q, info));
        is_send(&l.phase(ctx, req, None, info));
    }

    fn source(header: Option<&str>, query: Option<&str>, cookie: Option<&str>) -> CredentialSource {
        CredentialSource {
            header: header.map(str::to_owned),
            query: query.map(str::to_owned),
            cookie: cookie.map(str::to_owned),
        }
    }

    #[test]
    fn credentials_are_read_from_headers_query_and_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer abc.def.ghi"),
        );
        headers.insert("x-api-key", HeaderValue::from_static(" k1 "));
        headers.insert("cookie", HeaderValue::from_static("a=1; session=tok; b=2"));
        let q = Some("x=1&api_key=k%202&y=2");
        assert_eq!(
            credential(&source(Some("authorization"), None, None), &headers, q).as_deref(),
            Some("abc.def.ghi")
        );
        assert_eq!(
            credential(&source(Some("x-api-key"), None, None), &headers, q).as_deref(),
            Some("k1")
        );
        assert_eq!(
            credential(&source(None, Some("api_key"), None), &headers, q).as_deref(),
            Some("k 2")
        );
        assert_eq!(
            credential(&source(None, None, Some("session")), &headers, q).as_deref(),
            Some("tok")
        );
        assert_eq!(
            credential(&source(None, None, Some("nope")), &headers, q),
            None
        );
        headers.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(
            credential(&source(Some("authorization"), None, None), &headers, q),
            None
        );
        assert_eq!(scheme_credential(&headers, "basic"), Some("dXNlcjpwdw=="));
    }

    #[test]
    fn credentials_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("k1"));
        headers.insert("cookie", HeaderValue::from_static("a=1; session=tok; b=2"));
        let mut query = Some("x=1&api%5Fkey=k2&y=2".to_owned());
        strip_credential(
            &source(Some("x-api-key"), None, None),
            &mut headers,
            &mut query,
        );
        strip_credential(
            &source(None, Some("api_key"), None),
            &mut headers,
            &mut query,
        );
        strip_credential(
            &source(None, None, Some("session")),
            &mut headers,
            &mut query,
        );
        assert!(!headers.contains_key("x-api-key"));
        assert_eq!(query.as_deref(), Some("x=1&y=2"));
        assert_eq!(headers["cookie"], "a=1; b=2");
        let mut only = Some("api_key=k".to_owned());
        strip_credential(
            &source(None, Some("api_key"), None),
            &mut headers,
            &mut only,
        );
        assert_eq!(only, None);
    }
}
