//! The response filters around forwarding, in order: cache lookup (and
//! coalescing), the upstream call, JSON transform, cache store, and the
//! client's conditional request.
//!
//! ```text
//!  request ─▶ cache lookup ── fresh hit ──────────────────────────────▶ (304?) ─▶ client
//!            (fresh_hit: before the upstream request is prepared;
//!             forward: after, for everything else)
//!                 │ miss / stale / bypass
//!                 ▼
//!             forward (proxy::forward_request: balancing, retries)
//!                 ▼
//!             transform (JSON, device classes) ─▶ cache store ─▶ (304?) ─▶ client
//! ```
//!
//! A body is read into memory only when a filter needs it, and never past
//! the filter's limit: larger bodies stream through unchanged (counted as
//! `oversize` transforms and `too-large` cache refusals). Responses that
//! announce trailers (`Trailer`, gRPC) are never read into memory: they
//! stream through with their trailers, untransformed and unstored
//! (`trailers` cache refusals).
//!
//! The cache stores the response as served *after* the transform. When
//! the transform only applies to some device classes, whether it applied
//! is part of the cache key, so phones and desktops never get each other's
//! body; such responses also carry `Vary: User-Agent, Sec-CH-UA-Mobile`
//! for caches further down.

use crate::body::RequestBody;
use crate::body::{read_limited, LocalBody, ReadError};
use crate::cache::policy::{self, Conditional, NotStored, RequestMode};
use crate::cache::{self, Entry, Flight, Store};
use crate::error::ProxyError;
use crate::metrics::{CacheResult, RouteMetrics};
use crate::proxy::Body;
use crate::table::RouteRuntime;
use crate::transform::{Coding, Skip, Trimmer};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use snapshot::model::{CachePolicy, Route};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The RFC 9211 `Cache-Status` header.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Longest a request waits for an identical one in flight.
const MAX_COLLAPSE_WAIT: Duration = Duration::from_secs(30);

/// What the filters need to know about the request.
pub struct Filtered<'a> {
    /// The matched route.
    pub route: &'a Route,
    /// Its runtime state (trimmer, metrics).
    pub runtime: &'a RouteRuntime,
    /// The dataplane's cache.
    pub store: &'a Store,
    /// Client device class.
    pub device: crds::DeviceClass,
    /// Request host (lowercase, no port).
    pub host: &'a str,
    /// Request path.
    pub path: &'a str,
    /// Request query.
    pub query: Option<&'a str>,
    /// Time the route's request may take, to bound waiting for another.
    pub request_timeout: Duration,
    /// The request's `x-request-id`, set on answers from the cache.
    pub request_id: &'a str,
}

impl Filtered<'_> {
    /// The route's trimmer when it applies to this device, and, when the
    /// trimming depends on the device class, whether it applied (part of
    /// the cache key).
    fn trimming(&self) -> (Option<&Trimmer>, Option<bool>) {
        let trimmer = self.runtime.trimmer.as_ref();
        let applies = trimmer.filter(|t| t.applies_to(self.device));
        let transformed = trimmer
            .filter(|t| t.device_specific())
            .map(|_| applies.is_some());
        (applies, transformed)
    }

    /// The request's primary cache key (see `cache` for its layout).
    fn primary_key(
        &self,
        policy: &CachePolicy,
        transformed: Option<bool>,
        headers: &HeaderMap,
    ) -> String {
        cache::primary_key(
            self.host,
            self.path,
            self.query,
            (&self.runtime.route_label, &self.runtime.rule_label),
            policy.key_device.then_some(self.device),
            transformed,
            &policy.key_headers,
            headers,
        )
    }
}

/// The cache's part in one request.
struct CacheStep<'a> {
    policy: &'a CachePolicy,
    primary: Arc<str>,
    key: Arc<str>,
    request: HeaderMap,
    head: bool,
    stale: Option<Arc<Entry>>,
    _leader: Option<cache::LeaderGuard>,
}

/// Request headers that the forward phase changes before it calls
/// [`forward`] besides the hop-by-hop ones (`proxy::HOP_BY_HOP`), in
/// `proxy::prepare_upstream_headers`.
const PREPARED: [HeaderName; 6] = [
    header::UPGRADE,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    X_REQUEST_ID,
    header::HOST,
];

/// Whether the forward phase may change the request header `name`.
fn prepared(name: &str) -> bool {
    crate::proxy::HOP_BY_HOP
        .iter()
        .chain(PREPARED.iter())
        .any(|p| p.as_str().eq_ignore_ascii_case(name))
}

/// Answers a request from a fresh stored entry before anything is
/// prepared for the upstream: the cache-hit fast path.
///
/// The answer is the one [`forward`] would give after the preparation,
/// because the lookup only reads headers the preparation leaves alone:
/// it declines (`None`, and [`forward`] decides as before) when the route
/// changes request headers, when `Connection` names headers to drop, or
/// when the key or a remembered `Vary` uses a header it changes ([`prepared`]). It
/// also declines for anything but a fresh hit (misses, revalidation,
/// coalescing); nothing is counted then.
pub async fn fresh_hit(
    f: &Filtered<'_>,
    req: &Request<RequestBody>,
    cache_result: &mut Option<CacheResult>,
) -> Option<Response<Body>> {
    let policy = f.route.cache.as_ref()?;
    let headers = req.headers();
    if f.route.request_headers.is_some()
        || connection_names_headers(headers)
        || policy.key_headers.iter().any(|name| prepared(name))
        || policy::request_mode(req.method(), headers, policy) != RequestMode::Lookup
    {
        return None;
    }
    let (_, transformed) = f.trimming();
    let primary = f.primary_key(policy, transformed, headers);
    let entry = match f.store.vary_names(&primary).await {
        Some(names) if !names.is_empty() => {
            if names.iter().any(|name| prepared(name.as_str())) {
                return None;
            }
            f.store
                .get(&cache::vary_key(&primary, &names, headers))
                .await?
        }
        _ => f.store.get(&primary).await?,
    };
    let now = SystemTime::now();
    if !entry.is_fresh(now) {
        return None;
    }
    f.runtime.metrics.cache(CacheResult::Hit);
    *cache_result = Some(CacheResult::Hit);
    let mut response = serve_entry(
        &entry,
        headers,
        req.method() == Method::HEAD,
        now,
        status_value(HIT_STATUS, entry.ttl(now).as_secs()),
        transformed,
        f.request_id,
    );
    if response.status() == StatusCode::NOT_MODIFIED {
        // Full answers come prepared (`Entry::served`); a 304 is built here.
        crate::proxy::strip_hop_by_hop(response.headers_mut(), false);
    }
    Some(response)
}

/// Whether `Connection` names headers other than `keep-alive` (hop-by-hop
/// removal would drop them).
fn connection_names_headers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| match value.to_str() {
            Ok(text) => text
                .split(',')
                .any(|token| !token.trim().eq_ignore_ascii_case("keep-alive")),
            Err(_) => true,
        })
}

/// Runs the filters around `send`, which forwards the request.
pub async fn forward<F, Fut>(
    f: Filtered<'_>,
    mut req: Request<RequestBody>,
    cache_result: &mut Option<CacheResult>,
    send: F,
) -> Result<Response<Body>, ProxyError>
where
    F: FnOnce(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ProxyError>>,
{
    let (trimmer, transformed) = f.trimming();

    let mut step = None;
    if let Some(policy) = &f.route.cache {
        match policy::request_mode(req.method(), req.headers(), policy) {
            RequestMode::Bypass(reason) => {
                f.runtime.metrics.cache(CacheResult::Bypass);
                *cache_result = Some(CacheResult::Bypass);
                let mut response = send(req).await?;
                if let Ok(value) = HeaderValue::from_str(&format!(
                    "ferrogate; fwd=bypass; detail={}",
                    reason.as_str()
                )) {
                    response.headers_mut().insert(CACHE_STATUS, value);
                }
                return Ok(
                    finish_transform(response, trimmer, transformed, &f.runtime.metrics)
                        .await?
                        .0,
                );
            }
            mode => {
                let primary: Arc<str> = f.primary_key(policy, transformed, req.headers()).into();
                let mut collapsed = false;
                let mut leader = None;
                let stale: Option<Arc<Entry>>;
                loop {
                    let key = f.store.full_key(&primary, req.headers()).await;
                    let now = SystemTime::now();
                    let found = f.store.get(&key).await;
                    if let Some(entry) = &found {
                        if mode == RequestMode::Lookup && entry.is_fresh(now) {
                            let result = if collapsed {
                                CacheResult::Collapsed
                            } else {
                                CacheResult::Hit
                            };
                            f.runtime.metrics.cache(result);
                            *cache_result = Some(result);
                            let status = status_value(
                                if collapsed {
                                    "ferrogate; fwd=miss; collapsed; ttl="
                                } else {
                                    HIT_STATUS
                                },
                                entry.ttl(now).as_secs(),
                            );
                            return Ok(serve_entry(
                                entry,
                                req.headers(),
                                req.method() == Method::HEAD,
                                now,
                                status,
                                transformed,
                                f.request_id,
                            ));
                        }
                    }
                    if collapsed || mode == RequestMode::Revalidate {
                        // Waited once already, or the client wants the origin.
                        stale = found.filter(|e| e.has_validator());
                        break;
                    }
                    match f.store.join(&key) {
                        Flight::Leader(guard) => {
                            leader = Some(guard);
                            stale = found.filter(|e| e.has_validator());
                            break;
                        }
                        Flight::Follower(mut done) => {
                            let wait = f.request_timeout.min(MAX_COLLAPSE_WAIT);
                            let _ = tokio::time::timeout(wait, done.changed()).await;
                            collapsed = true;
                        }
                    }
                }
                let key = f.store.full_key(&primary, req.headers()).await;
                let request = req.headers().clone();
                strip_conditionals(req.headers_mut());
                if let Some(entry) = &stale {
                    if let Some(etag) = &entry.upstream_etag {
                        req.headers_mut()
                            .insert(header::IF_NONE_MATCH, etag.clone());
                    }
                    if let Some(modified) = &entry.upstream_last_modified {
                        req.headers_mut()
                            .insert(header::IF_MODIFIED_SINCE, modified.clone());
                    }
                }
                step = Some(CacheStep {
                    policy,
                    primary,
                    key,
                    head: req.method() == Method::HEAD,
                    request,
                    stale,
                    _leader: leader,
                });
            }
        }
    }

    let request_time = SystemTime::now();
    let response = send(req).await?;
    let Some(step) = step else {
        return Ok(
            finish_transform(response, trimmer, transformed, &f.runtime.metrics)
                .await?
                .0,
        );
    };
    let response_time = SystemTime::now();

    // Revalidation: the upstream says the stored entry is still good.
    if let (Some(entry), StatusCode::NOT_MODIFIED) = (&step.stale, response.status()) {
        let refreshed = refresh(
            entry,
            response.headers(),
            step.policy,
            request_time,
            response_time,
            transformed,
        );
        f.runtime.metrics.cache(CacheResult::Revalidated);
        *cache_result = Some(CacheResult::Revalidated);
        let status = status_value(
            "ferrogate; fwd=stale; fwd-status=304; ttl=",
            refreshed
                .as_ref()
                .map_or(0, |e| e.ttl(response_time).as_secs()),
        );
        let served = match refreshed {
            Some(entry) => {
                let vary = policy::vary_names(&entry.headers).unwrap_or_default();
                let response = serve_entry(
                    &entry,
                    &step.request,
                    step.head,
                    response_time,
                    status,
                    transformed,
                    f.request_id,
                );
                f.store
                    .insert(&step.primary, &vary, &step.request, entry)
                    .await;
                response
            }
            None => {
                f.store.remove(&step.key).await;
                serve_entry(
                    entry,
                    &step.request,
                    step.head,
                    response_time,
                    status,
                    transformed,
                    f.request_id,
                )
            }
        };
        return Ok(served);
    }

    f.runtime.metrics.cache(CacheResult::Miss);
    *cache_result = Some(CacheResult::Miss);
    let storable = if step.head {
        Err(NotStored::Status)
    } else {
        policy::storable(response.status(), response.headers(), step.policy)
    };
    let fwd_status = response.status().as_u16();
    let freshness = match storable {
        Ok(freshness) => freshness,
        Err(reason) => {
            f.runtime.metrics.not_stored(reason.as_str());
            let (mut response, _) =
                finish_transform(response, trimmer, transformed, &f.runtime.metrics).await?;
            set_status(
                &mut response,
                &format!(
                    "ferrogate; fwd=miss; fwd-status={fwd_status}; detail={}",
                    reason.as_str()
                ),
            );
            return Ok(response);
        }
    };
    let max_entry = usize::try_from(step.policy.max_entry_bytes).unwrap_or(usize::MAX);
    let upstream_etag = response.headers().get(header::ETAG).cloned();
    let upstream_last_modified = response.headers().get(header::LAST_MODIFIED).cloned();
    let initial_age = policy::initial_age(response.headers(), request_time, response_time);
    let (mut response, body) = finish_transform_buffered(
        response,
        trimmer,
        transformed,
        &f.runtime.metrics,
        max_entry,
    )
    .await?;
    let body = match body {
        Ok(body) => body,
        Err(reason) => {
            f.runtime.metrics.not_stored(reason.as_str());
            set_status(
                &mut response,
                &format!(
                    "ferrogate; fwd=miss; fwd-status={fwd_status}; detail={}",
                    reason.as_str()
                ),
            );
            return Ok(response);
        }
    };
    let mut headers = response.headers().clone();
    for name in [
        header::AGE,
        CACHE_STATUS,
        HeaderName::from_static("x-request-id"),
    ] {
        headers.remove(name);
    }
    let vary = policy::vary_names(&headers).unwrap_or_default();
    let entry = Entry {
        status: response.status(),
        served: served_headers(&headers, transformed),
        headers,
        body,
        stored_at: response_time,
        initial_age,
        lifetime: freshness.lifetime,
        upstream_etag,
        upstream_last_modified,
    };
    let ttl = entry.ttl(response_time).as_secs();
    let served = serve_entry(
        &entry,
        &step.request,
        false,
        response_time,
        HeaderValue::from_str(&format!(
            "ferrogate; fwd=miss; fwd-status={fwd_status}; stored; ttl={ttl}"
        ))
        .ok(),
        // Already set by the transform step.
        None,
        f.request_id,
    );
    f.store
        .insert(&step.primary, &vary, &step.request, entry)
        .await;
    Ok(served)
}

/// Drops the client's validators before a cacheable request goes
/// upstream: the cache wants the full answer and evaluates the client's
/// conditions itself.
fn strip_conditionals(headers: &mut HeaderMap) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
}

fn set_status(response: &mut Response<Body>, status: &str) {
    if let Ok(value) = HeaderValue::from_str(status) {
        response.headers_mut().insert(CACHE_STATUS, value);
    }
}

/// Updates a stored entry with a 304's headers (RFC 9111 §4.3.4); `None`
/// when the updated headers forbid storing.
fn refresh(
    entry: &Entry,
    not_modified: &HeaderMap,
    policy: &CachePolicy,
    request_time: SystemTime,
    response_time: SystemTime,
    transformed: Option<bool>,
) -> Option<Entry> {
    let mut headers = entry.headers.clone();
    let mut upstream_etag = entry.upstream_etag.clone();
    let mut upstream_last_modified = entry.upstream_last_modified.clone();
    for name in not_modified.keys() {
        if matches!(
            name.as_str(),
            "content-length"
                | "content-encoding"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "age"
        ) {
            continue;
        }
        if name == header::ETAG {
            upstream_etag = not_modified.get(name).cloned();
            // The served ETag differs when the body was transformed.
            if entry.headers.get(header::ETAG) != entry.upstream_etag.as_ref() {
                continue;
            }
        }
        if name == header::LAST_MODIFIED {
            upstream_last_modified = not_modified.get(name).cloned();
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let freshness = policy::storable(entry.status, &headers, policy).ok()?;
    Some(Entry {
        status: entry.status,
        served: served_headers(&headers, transformed),
        headers,
        body: entry.body.clone(),
        stored_at: response_time,
        initial_age: policy::initial_age(not_modified, request_time, response_time),
        lifetime: freshness.lifetime,
        upstream_etag,
        upstream_last_modified,
    })
}

/// A response from a stored entry: `Age`, `Cache-Status`, and 304 when
/// the client's validators match.
#[allow(clippy::too_many_arguments)]
fn serve_entry(
    entry: &Entry,
    request: &HeaderMap,
    head: bool,
    now: SystemTime,
    status: Option<HeaderValue>,
    transformed: Option<bool>,
    request_id: &str,
) -> Response<Body> {
    let not_modified = policy::evaluate_conditional(request, &entry.headers)
        == Conditional::NotModified
        && entry.status == StatusCode::OK;
    if !not_modified && !entry.served.is_empty() {
        // The usual answer: the prepared head, three values filled in
        // place (no header is added, so the cloned map does not grow).
        let body = if head {
            Bytes::new()
        } else {
            entry.body.clone()
        };
        let mut response = Response::new(Either::Right(LocalBody::full(body)));
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.served.clone();
        let headers = response.headers_mut();
        headers.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
        match status {
            Some(value) => headers.insert(CACHE_STATUS, value),
            None => headers.remove(CACHE_STATUS),
        };
        match HeaderValue::from_str(request_id) {
            Ok(value) => headers.insert(X_REQUEST_ID, value),
            Err(_) => headers.remove(X_REQUEST_ID),
        };
        return response;
    }
    let mut response = if not_modified {
        let mut response = Response::new(Either::Right(LocalBody::full(Bytes::new())));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in &policy::NOT_MODIFIED_HEADERS {
            for value in entry.headers.get_all(name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        response
    } else {
        let body = if head {
            Bytes::new()
        } else {
            entry.body.clone()
        };
        let mut response = Response::new(Either::Right(LocalBody::full(body)));
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
    if let Some(value) = status {
        headers.insert(CACHE_STATUS, value);
    }
    if transformed.is_some() && !not_modified {
        add_device_vary(headers);
    }
    response
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `Cache-Status` of a fresh hit, before the TTL.
const HIT_STATUS: &str = "ferrogate; hit; ttl=";

/// The head of full answers from an entry with these `headers` (see
/// [`Entry::served`]): what [`serve_entry`] and then the proxy's response
/// phase would make of them, with the per-answer values as placeholders.
pub(crate) fn served_headers(headers: &HeaderMap, transformed: Option<bool>) -> HeaderMap {
    let mut served = headers.clone();
    served.insert(header::AGE, HeaderValue::from_static("0"));
    served.insert(CACHE_STATUS, HeaderValue::from_static("ferrogate"));
    if transformed.is_some() {
        add_device_vary(&mut served);
    }
    crate::proxy::strip_hop_by_hop(&mut served, false);
    served.insert(X_REQUEST_ID, HeaderValue::from_static("-"));
    served
}

/// `prefix` followed by `ttl` as a header value, without the formatting
/// machinery (it is done for every hit).
fn status_value(prefix: &str, ttl: u64) -> Option<HeaderValue> {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = ttl;
    loop {
        at -= 1;
        // `rest % 10` is below 10.
        digits[at] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut text = Vec::with_capacity(prefix.len() + digits.len() - at);
    text.extend_from_slice(prefix.as_bytes());
    text.extend_from_slice(&digits[at..]);
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

fn add_device_vary(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("sec-ch-ua-mobile"));
    if !present {
        headers.append(
            header::VARY,
            HeaderValue::from_static("User-Agent, Sec-CH-UA-Mobile"),
        );
    }
}

/// Whether the transform wants this response, judged by its head.
fn wants_transform(response: &Response<Body>) -> Result<Coding, Option<Skip>> {
    let status = response.status();
    if !status.is_success()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::PARTIAL_CONTENT
    {
        return Err(None);
    }
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false);
    if !json {
        return Err(None);
    }
    if policy::directives(response.headers()).no_transform {
        return Err(None);
    }
    Coding::parse(
        response
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(HeaderValue::as_bytes),
    )
    .ok_or(Some(Skip::Encoding))
}

/// Transform only (no cache store): streams when the transform does not
/// apply.
async fn finish_transform(
    response: Response<Body>,
    trimmer: Option<&Trimmer>,
    transformed: Option<bool>,
    metrics: &RouteMetrics,
) -> Result<(Response<Body>, Result<Bytes, NotStored>), ProxyError> {
    finish_transform_buffered(response, trimmer, transformed, metrics, 0).await
}

/// Applies the transform, and reads the body when it has at most
/// `keep_limit` bytes (for the cache). Returns the body when it was read
/// whole and may be stored, else why not (too large, or trailers).
///
/// A response that announces trailers ([`policy::announces_trailers`]) is
/// never read into memory: it streams through untransformed, trailers
/// included. Trailers that come unannounced after a body read here are
/// sent after it (the body then goes out without `Content-Length`), and
/// the response is not stored.
async fn finish_transform_buffered(
    response: Response<Body>,
    trimmer: Option<&Trimmer>,
    transformed: Option<bool>,
    metrics: &RouteMetrics,
    keep_limit: usize,
) -> Result<(Response<Body>, Result<Bytes, NotStored>), ProxyError> {
    let mut coding = None;
    if let Some(trimmer) = trimmer {
        match wants_transform(&response) {
            Ok(c) => coding = Some((trimmer, c)),
            Err(Some(skip)) => metrics.transform(skip.as_str()),
            Err(None) => {
                if policy::directives(response.headers()).no_transform {
                    metrics.transform("no_transform");
                }
            }
        }
    }
    let trim_limit = coding.map_or(0, |(t, _)| t.max_body_bytes);
    let limit = trim_limit.max(keep_limit);
    let (mut parts, body) = response.into_parts();
    if transformed.is_some() && parts.status.is_success() {
        add_device_vary(&mut parts.headers);
    }
    if limit == 0 {
        return Ok((Response::from_parts(parts, body), Err(NotStored::TooLarge)));
    }
    if policy::announces_trailers(&parts.headers) {
        return Ok((Response::from_parts(parts, body), Err(NotStored::Trailers)));
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        if coding.is_some() {
            metrics.transform(Skip::TooLarge.as_str());
        }
        return Ok((Response::from_parts(parts, body), Err(NotStored::TooLarge)));
    }
    let (bytes, trailers) = match body {
        Either::Left(incoming) => match read_limited(incoming, limit).await {
            Ok(read) => read,
            Err(ReadError::TooLarge(rest)) => {
                if coding.is_some() {
                    metrics.transform(Skip::TooLarge.as_str());
                }
                return Ok((
                    Response::from_parts(parts, Either::Right(rest)),
                    Err(NotStored::TooLarge),
                ));
            }
            Err(ReadError::Failed(error)) => return Err(ProxyError::Upstream(error.to_string())),
        },
        Either::Right(LocalBody::Full(bytes)) => (bytes.unwrap_or_default(), None),
        Either::Right(other) => {
            let body = Either::Right(other);
            return Ok((Response::from_parts(parts, body), Err(NotStored::TooLarge)));
        }
    };
    let bytes = match coding {
        Some((trimmer, coding)) if bytes.len() <= trimmer.max_body_bytes => {
            match trimmer.apply_encoded(&bytes, coding) {
                Ok(out) => {
                    metrics.transform("applied");
                    if let Some(etag) = parts
                        .headers
                        .get(header::ETAG)
                        .and_then(|v| v.to_str().ok())
                    {
                        // Another representation than the upstream's: a
                        // weak validator of its own.
                        let opaque = etag.trim().trim_start_matches("W/").trim_matches('"');
                        if let Ok(value) = HeaderValue::from_str(&format!("W/\"{opaque}-fg\"")) {
                            parts.headers.insert(header::ETAG, value);
                        }
                    }
                    Bytes::from(out)
                }
                Err(skip) => {
                    metrics.transform(skip.as_str());
                    bytes
                }
            }
        }
        Some(_) => {
            metrics.transform(Skip::TooLarge.as_str());
            bytes
        }
        None => bytes,
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    if let Some(trailers) = trailers {
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = Either::Right(LocalBody::Trailed {
            data: (!bytes.is_empty()).then_some(bytes),
            trailers: Some(Box::new(trailers)),
        });
        return Ok((Response::from_parts(parts, body), Err(NotStored::Trailers)));
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let keep = if bytes.len() <= keep_limit {
        Ok(bytes.clone())
    } else {
        Err(NotStored::TooLarge)
    };
    let body = Either::Right(LocalBody::full(bytes));
    Ok((Response::from_parts(parts, body), keep))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(headers: HeaderMap, served: HeaderMap) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers,
            served,
            body: Bytes::from_static(b"hello"),
            stored_at: SystemTime::now(),
            initial_age: Duration::from_secs(3),
            lifetime: Duration::from_secs(60),
            upstream_etag: None,
            upstream_last_modified: None,
        }
    }

    fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    /// A hit from the prepared head sends what the response phase made of
    /// the stored headers before: same names, values and order.
    #[test]
    fn prepared_heads_answer_like_the_response_phase() {
        let mut stored = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("content-length", "5"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("vary", "accept-encoding"),
            ("etag", "\"a\""),
        ] {
            stored.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let now = SystemTime::now();
        for transformed in [None, Some(true)] {
            for head in [false, true] {
                let served = served_headers(&stored, transformed);
                let fast = serve_entry(
                    &entry(stored.clone(), served),
                    &HeaderMap::new(),
                    head,
                    now,
                    status_value(HIT_STATUS, 57),
                    transformed,
                    "req-1",
                );
                // Before: the stored headers, then the proxy's hop-by-hop
                // removal and the request id.
                let mut before = serve_entry(
                    &entry(stored.clone(), HeaderMap::new()),
                    &HeaderMap::new(),
                    head,
                    now,
                    status_value(HIT_STATUS, 57),
                    transformed,
                    "req-1",
                );
                crate::proxy::strip_hop_by_hop(before.headers_mut(), false);
                before
                    .headers_mut()
                    .insert(X_REQUEST_ID, HeaderValue::from_static("req-1"));
                assert_eq!(pairs(fast.headers()), pairs(before.headers()));
                assert_eq!(fast.status(), before.status());
                assert_eq!(fast.headers()["cache-status"], "ferrogate; hit; ttl=57");
                assert_eq!(fast.headers()["age"], "3");
                assert!(!fast.headers().contains_key("x-secret"));
            }
        }
    }

    #[test]
    fn only_keep_alive_lets_a_hit_skip_the_preparation() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONNECTION, HeaderValue::from_static(value));
            connection_names_headers(&headers)
        };
        assert!(!connection_names_headers(&HeaderMap::new()));
        assert!(!with("keep-alive"));
        assert!(!with("Keep-Alive"));
        assert!(with("keep-alive, x-tenant"));
        assert!(with("close"));
        assert!(with("upgrade"));
    }
}
