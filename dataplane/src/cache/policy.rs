//! RFC 9111 rules as plain functions over headers and times: what may be
//! looked up, what may be stored and for how long, how old a stored answer
//! is, and whether a conditional request gets a 304.
//!
//! Ferrogate is a *shared* cache, so `s-maxage` wins over `max-age`,
//! `private` responses are never stored, and responses to requests with
//! `Authorization` are not used unless the rule allows it. Time is always
//! passed in; nothing here reads a clock.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use snapshot::model::CachePolicy;
use std::time::{Duration, SystemTime};

/// `Cache-Control` directives Ferrogate acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without field names: treated as without).
    pub no_cache: bool,
    /// `private` (with or without field names).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage`.
    pub s_maxage: Option<u64>,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// `no-transform`.
    pub no_transform: bool,
}

/// Parses every `Cache-Control` header in `headers`. Unknown directives
/// and malformed values are ignored; a malformed `max-age` counts as 0
/// (RFC 9111 §4.2.1: treat invalid freshness as stale).
pub fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for item in split_list(text) {
            let (name, arg) = match item.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (item.trim(), None),
            };
            let seconds = || arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
            match name.to_ascii_lowercase().as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "max-age" => d.max_age = Some(seconds()),
                "s-maxage" => d.s_maxage = Some(seconds()),
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                "no-transform" => d.no_transform = true,
                _ => {}
            }
        }
    }
    d
}

/// Splits a comma-separated header value, keeping commas inside quotes.
fn split_list(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Why a request skips the cache entirely (no lookup, no store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bypass {
    /// Not GET or HEAD.
    Method,
    /// Carries `Authorization` and the rule does not cache those.
    Authorization,
    /// `Cache-Control: no-store` on the request.
    NoStore,
    /// A `Range` request (partial content is not cached).
    Range,
}

impl Bypass {
    /// Short reason for `Cache-Status` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::Method => "method",
            Bypass::Authorization => "authorization",
            Bypass::NoStore => "no-store",
            Bypass::Range => "range",
        }
    }
}

/// What the cache does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestMode {
    /// Skip the cache.
    Bypass(Bypass),
    /// Look up; serve a fresh stored answer.
    Lookup,
    /// The client asked for an end-to-end check (`no-cache`, `max-age=0`,
    /// `Pragma: no-cache`): forward (revalidating a stored answer), and
    /// store what comes back.
    Revalidate,
}

/// Decides how a request uses the cache.
pub fn request_mode(method: &Method, headers: &HeaderMap, policy: &CachePolicy) -> RequestMode {
    if method != Method::GET && method != Method::HEAD {
        return RequestMode::Bypass(Bypass::Method);
    }
    if headers.contains_key(header::AUTHORIZATION) && !policy.cache_authorized {
        return RequestMode::Bypass(Bypass::Authorization);
    }
    if headers.contains_key(header::RANGE) {
        return RequestMode::Bypass(Bypass::Range);
    }
    let d = directives(headers);
    if d.no_store {
        return RequestMode::Bypass(Bypass::NoStore);
    }
    let pragma_no_cache = !headers.contains_key(header::CACHE_CONTROL)
        && headers
            .get_all(header::PRAGMA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-cache"));
    if d.no_cache || d.max_age == Some(0) || pragma_no_cache {
        return RequestMode::Revalidate;
    }
    RequestMode::Lookup
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// A status code that is not cacheable.
    Status,
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: private`.
    Private,
    /// `Set-Cookie`, and the rule does not cache those.
    SetCookie,
    /// `Vary: *`.
    VaryAll,
    /// No freshness information and no `defaultTtl`, or zero freshness
    /// without a validator to revalidate with.
    NoFreshness,
    /// Larger than `maxEntryBytes`.
    TooLarge,
    /// The response has trailers (announced with `Trailer`, a gRPC
    /// response, or found at the end of the body): entries keep no
    /// trailers, so such responses stream through unstored.
    Trailers,
}

impl NotStored {
    /// Short reason for `Cache-Status` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryAll => "vary-star",
            NotStored::NoFreshness => "no-freshness",
            NotStored::TooLarge => "too-large",
            NotStored::Trailers => "trailers",
        }
    }
}

/// Statuses a cache may store (RFC 9110 §15.1 "heuristically cacheable",
/// less 206, which needs range support).
fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Freshness of a storable response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// How long the response is fresh, counted from its age 0.
    pub lifetime: Duration,
    /// Stale answers must not be served without revalidation (always true
    /// here: Ferrogate never serves stale).
    pub must_revalidate: bool,
}

/// Whether a response may be stored, and its freshness lifetime.
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    policy: &CachePolicy,
) -> Result<Freshness, NotStored> {
    if !cacheable_status(status) {
        return Err(NotStored::Status);
    }
    if announces_trailers(headers) {
        return Err(NotStored::Trailers);
    }
    let d = directives(headers);
    if d.no_store {
        return Err(NotStored::NoStore);
    }
    if d.private {
        return Err(NotStored::Private);
    }
    if headers.contains_key(header::SET_COOKIE) && !policy.cache_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if vary_names(headers).is_none() {
        return Err(NotStored::VaryAll);
    }
    let lifetime = if d.no_cache {
        Some(Duration::ZERO)
    } else if let Some(s) = d.s_maxage {
        Some(Duration::from_secs(s))
    } else if let Some(s) = d.max_age {
        Some(Duration::from_secs(s))
    } else if let Some(expires) = headers.get(header::EXPIRES) {
        // An invalid Expires (such as "0") means already expired.
        let expires = expires
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let date = date(headers);
        Some(match (expires, date) {
            (Some(expires), Some(date)) => expires.duration_since(date).unwrap_or(Duration::ZERO),
            _ => Duration::ZERO,
        })
    } else {
        policy.default_ttl_ms.map(Duration::from_millis)
    };
    let Some(lifetime) = lifetime else {
        return Err(NotStored::NoFreshness);
    };
    if lifetime.is_zero() && !has_validator(headers) {
        return Err(NotStored::NoFreshness);
    }
    Ok(Freshness {
        lifetime,
        must_revalidate: true,
    })
}

/// Whether a response says trailers follow its body: a `Trailer` header,
/// or a gRPC content type (gRPC ends every response with trailers).
/// Buffering such a body would lose them, and hold back a stream.
pub fn announces_trailers(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRAILER)
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.get(..16)
                    .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
            })
}

/// The response's `Date`.
pub fn date(headers: &HeaderMap) -> Option<SystemTime> {
    headers
        .get(header::DATE)?
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// Names in `Vary` (lowercase, sorted, unique), or `None` for `Vary: *`.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else { continue };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            if let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// The age of a response when it was received (RFC 9111 §4.2.3):
/// the larger of what `Date` implies and what `Age` says, plus the time
/// the request took.
pub fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent = date(headers)
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO);
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    apparent.max(age_value + delay)
}

/// Outcome of a client's conditional request against a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conditional {
    /// Answer 304 Not Modified.
    NotModified,
    /// Answer with the full response.
    Full,
}

/// Evaluates `If-None-Match` (weak comparison; takes precedence) and
/// `If-Modified-Since` (only without `If-None-Match`) of a GET or HEAD
/// against a response's `ETag` and `Last-Modified` (RFC 9110 §13.2.2).
pub fn evaluate_conditional(request: &HeaderMap, response: &HeaderMap) -> Conditional {
    let inm: Vec<&HeaderValue> = request.get_all(header::IF_NONE_MATCH).iter().collect();
    if !inm.is_empty() {
        let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return Conditional::Full;
        };
        let etag = opaque(etag);
        for value in inm {
            let Ok(text) = value.to_str() else { continue };
            for candidate in split_list(text) {
                if candidate == "*" || opaque(candidate) == etag {
                    return Conditional::NotModified;
                }
            }
        }
        return Conditional::Full;
    }
    let since = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = response
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, modified) {
        (Some(since), Some(modified)) if modified <= since => Conditional::NotModified,
        _ => Conditional::Full,
    }
}

/// The opaque part of an entity tag (weak comparison ignores `W/`).
fn opaque(tag: &str) -> &str {
    let tag = tag.trim();
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// Headers a 304 carries from the full response (RFC 9110 §15.4.5).
pub const NOT_MODIFIED_HEADERS: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy {
            default_ttl_ms: None,
            max_entry_bytes: 1 << 20,
            key_headers: vec![],
            key_device: false,
            cache_authorized: false,
            cache_set_cookie: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn responses_with_trailers_are_not_stored() {
        let fresh = ("cache-control", "max-age=60");
        assert!(storable(StatusCode::OK, &headers(&[fresh]), &policy()).is_ok());
        for announced in [
            ("trailer", "x-checksum"),
            ("content-type", "application/grpc"),
            ("content-type", "application/grpc+proto"),
        ] {
            assert_eq!(
                storable(StatusCode::OK, &headers(&[fresh, announced]), &policy()),
                Err(NotStored::Trailers),
                "{announced:?}"
            );
        }
        assert!(!announces_trailers(&headers(&[(
            "content-type",
            "application/json"
        )])));
    }

    #[test]
    fn parses_cache_control() {
        let d = directives(&headers(&[
            ("cache-control", "Public, MAX-AGE=60, s-maxage=\"120\""),
            (
                "cache-control",
                "no-cache=\"set-cookie, x\", must-revalidate",
            ),
        ]));
        assert!(d.public && d.no_cache && d.must_revalidate && !d.private);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(120));
        assert_eq!(
            directives(&headers(&[("cache-control", "max-age=x")])).max_age,
            Some(0)
        );
    }

    #[test]
    fn request_modes() {
        let p = policy();
        let get = Method::GET;
        assert_eq!(
            request_mode(&get, &HeaderMap::new(), &p),
            RequestMode::Lookup
        );
        assert_eq!(
            request_mode(&Method::POST, &HeaderMap::new(), &p),
            RequestMode::Bypass(Bypass::Method)
        );
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(
            request_mode(&get, &auth, &p),
            RequestMode::Bypass(Bypass::Authorization)
        );
        let allowed = CachePolicy {
            cache_authorized: true,
            ..policy()
        };
        assert_eq!(request_mode(&get, &auth, &allowed), RequestMode::Lookup);
        for h in [
            ("cache-control", "no-cache"),
            ("cache-control", "max-age=0"),
            ("pragma", "no-cache"),
        ] {
            assert_eq!(
                request_mode(&get, &headers(&[h]), &p),
                RequestMode::Revalidate
            );
        }
        assert_eq!(
            request_mode(&get, &headers(&[("cache-control", "no-store")]), &p),
            RequestMode::Bypass(Bypass::NoStore)
        );
        assert_eq!(
            request_mode(&get, &headers(&[("range", "bytes=0-1")]), &p),
            RequestMode::Bypass(Bypass::Range)
        );
    }

    #[test]
    fn storability_and_lifetime() {
        let p = policy();
        let ok = StatusCode::OK;
        let life =
            |h: &[(&str, &str)], p: &CachePolicy| storable(ok, &headers(h), p).map(|f| f.lifetime);
        assert_eq!(
            life(&[("cache-control", "max-age=60")], &p),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            life(&[("cache-control", "max-age=60, s-maxage=5")], &p),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(life(&[], &p), Err(NotStored::NoFreshness));
        let with_ttl = CachePolicy {
            default_ttl_ms: Some(30_000),
            ..policy()
        };
        assert_eq!(life(&[], &with_ttl), Ok(Duration::from_secs(30)));
        assert_eq!(
            life(&[("cache-control", "private, max-age=60")], &p),
            Err(NotStored::Private)
        );
        assert_eq!(
            life(&[("cache-control", "no-store")], &with_ttl),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            life(
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                &p
            ),
            Err(NotStored::SetCookie)
        );
        let cookies_ok = CachePolicy {
            cache_set_cookie: true,
            ..policy()
        };
        assert!(life(
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            &cookies_ok
        )
        .is_ok());
        assert_eq!(
            life(&[("cache-control", "max-age=60"), ("vary", "*")], &p),
            Err(NotStored::VaryAll)
        );
        // no-cache: stored only with a validator, always revalidated.
        assert_eq!(
            life(&[("cache-control", "no-cache")], &p),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            life(&[("cache-control", "no-cache"), ("etag", "\"a\"")], &p),
            Ok(Duration::ZERO)
        );
        assert_eq!(
            storable(
                StatusCode::INTERNAL_SERVER_ERROR,
                &headers(&[("cache-control", "max-age=9")]),
                &p
            ),
            Err(NotStored::Status)
        );
        // Expires relative to Date.
        assert_eq!(
            life(
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("expires", "Sun, 06 Nov 1994 08:50:37 GMT")
                ],
                &p
            ),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            life(&[("expires", "0"), ("etag", "\"x\"")], &with_ttl),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn vary() {
        assert_eq!(
            vary_names(&headers(&[
                ("vary", "Accept-Encoding, x-a"),
                ("vary", "accept-encoding")
            ])),
            Some(vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("x-a")
            ])
        );
        assert_eq!(vary_names(&headers(&[("vary", "x, *")])), None);
    }

    #[test]
    fn ages() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = headers(&[("age", "10")]);
        assert_eq!(
            initial_age(&h, t0, t0 + Duration::from_secs(2)),
            Duration::from_secs(12)
        );
        let date = httpdate::fmt_http_date(t0 - Duration::from_secs(30));
        let h = headers(&[("date", &date), ("age", "5")]);
        assert_eq!(initial_age(&h, t0, t0), Duration::from_secs(30));
        assert_eq!(initial_age(&HeaderMap::new(), t0, t0), Duration::ZERO);
    }

    #[test]
    fn conditionals() {
        let response = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let c = |h: &[(&str, &str)]| evaluate_conditional(&headers(h), &response);
        assert_eq!(c(&[("if-none-match", "\"v1\"")]), Conditional::NotModified);
        assert_eq!(
            c(&[("if-none-match", "\"x\", W/\"v1\"")]),
            Conditional::NotModified
        );
        assert_eq!(c(&[("if-none-match", "*")]), Conditional::NotModified);
        assert_eq!(c(&[("if-none-match", "\"v2\"")]), Conditional::Full);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            c(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            Conditional::Full
        );
        assert_eq!(
            c(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            Conditional::NotModified
        );
        assert_eq!(
            c(&[("if-modified-since", "Sun, 06 Nov 1994 08:00:00 GMT")]),
            Conditional::Full
        );
        assert_eq!(c(&[]), Conditional::Full);
    }
}
