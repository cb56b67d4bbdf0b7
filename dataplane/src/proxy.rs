//! The request path. Every request goes through these phases, in order:
//!
//! ```text
//!  load table ─▶ identify (request id, host, device) ─▶ check SNI (421)
//!      ─▶ route (404) ─▶ HTTPS redirect (308)
//!      ─▶ authenticate (401) ─▶ authorize (403) ─▶ rate limit (429) ─▶ action:
//!           redirect | direct response | forward:
//!              pick backend (weights) ─▶ pick endpoint (balancer, health)
//!              ─▶ rewrite + headers ─▶ send (timeouts) ─▶ retry within budget
//!              ─▶ response headers ─▶ (upgrade: splice both ways)
//!              (filters: cache lookup/coalescing before, JSON transform
//!               and cache store after)
//!           | aggregate: parts in parallel, JSON merged
//!      ─▶ observe (duration histogram, access log, trace spans)
//! ```
//!
//! The table is loaded once per request ([`arc_swap::ArcSwap::load_full`]),
//! so a request finishes on the snapshot it started with even if a new one
//! is swapped in meanwhile. Every failure is a [`ProxyError`] turned into a
//! response in one place ([`handle`]).

use crate::body::RequestBody;
use crate::device;
use crate::error::ProxyError;
use crate::forwarded::{
    Added, Field, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::h1client::ResponseBody;
use crate::router::RequestView;
use crate::table::{ClusterRuntime, RouteRuntime, Table};
use crate::upstream::UpstreamBody;
use crate::Shared;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body as _;
use snapshot::model::{
    Action, DirectResponse, Forward, HeaderChanges, PathRewrite, Redirect, Route,
};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Body of responses to clients: an upstream's body streamed through
/// (trailers included), or one built or buffered here (see [`crate::body`]).
pub type Body = Either<ResponseBody, crate::body::LocalBody>;

/// Bodies up to this size are buffered so that the request can be retried.
const MAX_RETRY_BODY: u64 = 64 * 1024;

/// What the dataplane knows about a client connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address the connection arrived on.
    pub local: Option<SocketAddr>,
    /// The connection is TLS.
    pub tls: bool,
    /// The TLS server name the client asked for.
    pub sni: Option<Arc<str>>,
    /// The client's address as a header value (X-Forwarded-For), made once
    /// per connection rather than for every request.
    pub peer_value: Option<HeaderValue>,
    /// The device class of the connection's last request and the fields
    /// it was decided from (see [`ConnInfo::device`]).
    last_device: std::sync::Mutex<LastDevice>,
}

/// A connection's last device classification.
#[derive(Debug, Default)]
struct LastDevice {
    user_agent: Option<Vec<u8>>,
    hint: Option<Vec<u8>>,
    class: Option<crds::DeviceClass>,
}

/// User-Agent values longer than this are classified every time rather
/// than kept with the connection.
const MAX_KEPT_USER_AGENT: usize = 1024;

impl ConnInfo {
    /// A connection from `peer`, arrived on `local`.
    pub fn new(
        peer: SocketAddr,
        local: Option<SocketAddr>,
        tls: bool,
        sni: Option<Arc<str>>,
    ) -> Self {
        ConnInfo {
            peer,
            local,
            tls,
            sni,
            peer_value: ip_header_value(peer.ip()).ok(),
            last_device: std::sync::Mutex::default(),
        }
    }

    /// The device class of a request on this connection with these
    /// `User-Agent` and `Sec-CH-UA-Mobile` values ([`device::classify`]).
    /// A connection's requests nearly always carry the same values, and
    /// classifying a browser's User-Agent costs about 1,700 instructions
    /// where comparing it with the last one costs a few dozen: the last
    /// answer is kept and given again while the values stay the same.
    pub fn device(&self, user_agent: Option<&[u8]>, hint: Option<&[u8]>) -> crds::DeviceClass {
        let Ok(mut last) = self.last_device.lock() else {
            return device::classify(user_agent, hint);
        };
        if let Some(class) = last.class {
            if last.user_agent.as_deref() == user_agent && last.hint.as_deref() == hint {
                return class;
            }
        }
        let class = device::classify(user_agent, hint);
        if user_agent.map_or(0, <[u8]>::len) + hint.map_or(0, <[u8]>::len) > MAX_KEPT_USER_AGENT {
            last.class = None;
            return class;
        }
        keep(&mut last.user_agent, user_agent);
        keep(&mut last.hint, hint);
        last.class = Some(class);
        class
    }
}

/// Sets `slot` to a copy of `value`, reusing its allocation.
fn keep(slot: &mut Option<Vec<u8>>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            let kept = slot.get_or_insert_with(Vec::new);
            kept.clear();
            kept.extend_from_slice(bytes);
        }
        None => *slot = None,
    }
}

/// What the phases learn about a request, for later phases, metrics and
/// the access log. Each phase fills in its part.
#[derive(Debug, Default)]
pub struct RequestInfo {
    /// The client's device class.
    pub device: Option<crds::DeviceClass>,
    /// The authenticated consumer (AuthPolicy), if any.
    pub consumer: Option<Arc<str>>,
    /// The authenticated caller's organization, if any.
    pub organization: Option<Arc<str>>,
    /// What the rate-limit phase decided, when the route has limits.
    pub rate_limit: Option<crate::ratelimit::RateLimitOutcome>,
    /// Index of the matched route in the table.
    pub route_index: Option<usize>,
    /// The request's trace context (propagated to upstreams).
    pub trace: Option<crate::telemetry::TraceContext>,
    /// Cache result, when the rule caches.
    pub cache: Option<crate::metrics::CacheResult>,
    /// Upstream attempts (forwarding) or part calls (aggregate), in order.
    pub attempts: Attempts,
    /// Error code when Ferrogate answered with an error.
    pub error: Option<&'static str>,
}

impl RequestInfo {
    /// Notes an upstream attempt (at most 32 are kept).
    pub fn record_attempt(&mut self, attempt: UpstreamAttempt) {
        if self.attempts.len() < 32 {
            self.attempts.push(attempt);
        }
    }
}

/// A request's upstream attempts: usually one, kept inline.
pub type Attempts = smallvec::SmallVec<[UpstreamAttempt; 1]>;

/// One upstream attempt or aggregate part call, for logs and traces.
pub struct UpstreamAttempt {
    /// The cluster.
    pub cluster: Arc<ClusterRuntime>,
    /// Index of the endpoint in the cluster.
    pub endpoint: usize,
    /// The attempt's span (sent upstream in `traceparent`).
    pub span_id: [u8; 8],
    /// When it started.
    pub start: Instant,
    /// How long until the response head (or the failure).
    pub duration: Duration,
    /// The upstream's status.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<&'static str>,
}

impl std::fmt::Debug for UpstreamAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamAttempt")
            .field("cluster", &self.cluster.name)
            .field("endpoint", &self.endpoint)
            .field("duration", &self.duration)
            .field("status", &self.status)
            .field("error", &self.error)
            .finish()
    }
}

fn full(bytes: Bytes) -> Body {
    Either::Right(crate::body::LocalBody::full(bytes))
}

/// Serves one request. Never fails: errors become responses here.
///
/// Written as a function returning an `async move` block rather than an
/// `async fn`: an `async fn` moves its arguments into locals and its future
/// keeps both copies (the 264-byte request twice). The block uses the
/// captured arguments where they are. The same holds for `respond` and
/// `serve`.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    req: Request<RequestBody>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> {
    async move {
        let (mut response, id) = std::pin::pin!(respond(req, conn, shared)).await;
        response.headers_mut().insert(X_REQUEST_ID, id);
        Ok(response)
    }
}

/// [`handle`] without the last step: the answer, and the request id that
/// goes with it as `x-request-id`. The gateway's own HTTP/1.1 path writes
/// the id as it writes the head, in place of a field of that name in the
/// map: inserting a name that is not one of the standard ones hashes it
/// and probes the map for every request (see [`crate::forwarded`]).
#[allow(clippy::manual_async_fn)] // see `handle`
pub(crate) fn respond(
    req: Request<RequestBody>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> impl Future<Output = (Response<Body>, HeaderValue)> {
    async move {
        let table = shared.table.load_full();
        let sent = Sent::of(req.headers());
        let id = request_id(match sent.request_id {
            true => req.headers().get(&X_REQUEST_ID),
            false => None,
        });
        // Visible ASCII, checked or made by `request_id`.
        let request_id = id.to_str().unwrap_or_default();
        let mut info = RequestInfo::default();
        let traceparent = match sent.traceparent {
            true => req.headers().get(crate::telemetry::TRACEPARENT),
            false => None,
        };
        let started = crate::observe::Started::now(&req, traceparent, &shared, &mut info);
        // The futures on the way to the upstream are awaited pinned in place
        // (`pin!`): `f(..).await` keeps the moved-from temporary of `f`'s future
        // in the caller's state next to the one awaited, so every level of
        // async calls doubled the size of everything below it. Awaited as
        // temporaries, this future was 17.8 KB (the connection task's 81 KB),
        // copied at each level for every request; pinned, it is 6 KB.
        let result = {
            let served = std::pin::pin!(serve(req, sent, &conn, &shared, &table, &id, &mut info));
            served.await
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                if matches!(error.blame(), crate::error::Blame::Upstream) {
                    tracing::debug!(%error, request_id = %request_id, "upstream error");
                }
                info.error = Some(error.code());
                error.to_response(request_id).map(full)
            }
        };
        if let Some((policy, limit)) = info.rate_limit.as_ref().and_then(|r| r.headers.as_ref()) {
            response
                .headers_mut()
                .insert("ratelimit-policy", policy.clone());
            response.headers_mut().insert("ratelimit", limit.clone());
        }
        table.count_request(info.route_index, response.status());
        crate::observe::finish(&shared, &table, started, &info, request_id, &mut response);
        (response, id)
    }
}

#[allow(clippy::manual_async_fn)] // see `handle`
fn serve<'a>(
    mut req: Request<RequestBody>,
    sent: Sent,
    conn: &'a ConnInfo,
    shared: &'a Shared,
    table: &'a Table,
    id: &'a HeaderValue,
    info: &'a mut RequestInfo,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + 'a {
    async move {
        let request_id = id.to_str().unwrap_or_default();
        let Some(host_value) = request_host(&req) else {
            return Err(unread(
                req,
                ProxyError::BadRequest("missing or invalid host"),
            ));
        };
        let host = host_value.as_str();
        if conn.tls {
            if let Some(sni) = conn.sni.as_deref() {
                if !table.same_certificate(sni, host) {
                    return Err(unread(req, ProxyError::Misdirected));
                }
            }
        }
        let device = conn.device(
            req.headers()
                .get(header::USER_AGENT)
                .map(HeaderValue::as_bytes),
            match sent.device_hint {
                true => req.headers().get(SEC_CH_UA_MOBILE),
                false => None,
            }
            .map(HeaderValue::as_bytes),
        );
        // The path outlives changes to `req` (auth may rewrite it); a clone of
        // the URI shares its bytes, where `to_owned` copied them.
        let uri = req.uri().clone();
        let path = uri.path();
        let mut query = req.uri().query().map(str::to_owned);
        let view = RequestView {
            host,
            path,
            query: query.as_deref(),
            method: req.method(),
            headers: req.headers(),
            device,
        };
        let found = match table.router.find(&view) {
            crate::router::Match::Found(found) => found,
            _ => return Err(unread(req, ProxyError::NoRoute)),
        };
        let route: &Route = found.entry.route();
        let prefix_len = found.prefix_len;
        let runtime = table.route_runtime(found.entry.global_index());
        info.device = Some(device);
        info.route_index = Some(found.entry.global_index());

        if !conn.tls && route.https_redirect {
            let response = https_redirect(host, req.uri(), shared.config.https_redirect_port);
            return Ok(unread(req, response));
        }

        // Authenticate -> authorize -> rate limit (`crate::auth`,
        // `crate::ratelimit`): a refused request never reaches the upstream.
        if runtime.auth.is_some() || runtime.limits.is_some() {
            let ctx = crate::auth::PhaseContext {
                conn,
                shared,
                host,
                path,
                device,
                request_id,
            };
            // The phases' futures are boxed: they are large, and a route
            // without them should not carry their room in every request.
            let identity = match &runtime.auth {
                Some(auth) => match boxed!(auth.phase(&ctx, &mut req, &mut query, info)).await {
                    Ok(identity) => identity,
                    Err(refusal) => return Ok(unread(req, refusal.map(full))),
                },
                None => None,
            };
            if let Some(limits) = &runtime.limits {
                if let Err(refusal) =
                    boxed!(limits.phase(&ctx, &req, identity.as_ref(), info)).await
                {
                    return Ok(unread(req, refusal.map(full)));
                }
            }
        }

        match &route.action {
            Action::Redirect(redirect) => {
                let response = redirect_response(
                    redirect,
                    conn.tls,
                    host,
                    request_port(&req, conn),
                    path,
                    query.as_deref(),
                    prefix_len,
                );
                Ok(unread(req, response))
            }
            Action::DirectResponse(direct) => Ok(unread(req, direct_response(direct, route))),
            Action::Aggregate(aggregate) => {
                let mut response = boxed!(crate::aggregate::serve(
                    aggregate,
                    req.headers(),
                    runtime,
                    request_id,
                    info,
                ))
                .await;
                if let Some(changes) = &route.response_headers {
                    apply_header_changes(response.headers_mut(), changes);
                }
                Ok(unread(req, response))
            }
            Action::Forward(forward) => {
                let filtered = crate::filters::Filtered {
                    route,
                    runtime,
                    store: &shared.cache,
                    device,
                    host,
                    path,
                    query: query.as_deref(),
                    request_timeout: Duration::from_millis(forward.timeouts.request_ms),
                    request_id,
                };
                // A fresh cache hit needs nothing prepared for the upstream.
                let cached = route.cache.is_some();
                let hit = match cached {
                    true => {
                        boxed!(crate::filters::fresh_hit(&filtered, &req, &mut info.cache)).await
                    }
                    false => None,
                };
                if let Some(mut response) = hit {
                    if let Some(changes) = &route.response_headers {
                        apply_header_changes(response.headers_mut(), changes);
                    }
                    return Ok(unread(req, response));
                }
                let upgrade = is_upgrade(&req);
                let filtered_path = cached || runtime.trimmer.is_some();
                // Filled in place: moving it (256 bytes) cost copies.
                let mut added = Added::default();
                prepare_upstream_headers(&mut req, conn, shared, host, id, upgrade, &mut added);
                // Route header changes and the filters see the head as it
                // goes upstream: the added fields go into the map for them.
                if route.request_headers.is_some() || filtered_path {
                    added.move_into(req.headers_mut());
                }
                if let Some(changes) = &route.request_headers {
                    apply_header_changes(req.headers_mut(), changes);
                }
                let upstream_path = rewritten_path(route, path, prefix_len);
                if let Some(rewrite) = &route.url_rewrite {
                    if let Some(hostname) = &rewrite.hostname {
                        if let Ok(value) = HeaderValue::from_str(hostname) {
                            req.headers_mut().insert(header::HOST, value);
                        }
                    }
                }
                // `send` takes references to these: it is called once, and
                // its future must not borrow from the closure itself.
                let trace_context = info.trace.clone();
                let trace = trace_context.as_ref();
                let upstream_path = upstream_path.as_str();
                let query = query.as_deref();
                // Attempts go straight into `info` (at most 11: below its cap).
                let attempts = &mut info.attempts;
                let added = &mut added;
                let send = move |req| {
                    // Moved out, not reborrowed: the closure is called once.
                    let (attempts, added) = (attempts, added);
                    forward_request(
                        req,
                        added,
                        forward,
                        runtime,
                        conn,
                        upstream_path,
                        query,
                        trace,
                        upgrade,
                        attempts,
                    )
                };
                let result = if filtered_path {
                    boxed!(crate::filters::forward(
                        filtered,
                        req,
                        &mut info.cache,
                        send
                    ))
                    .await
                } else {
                    // Without a cache or a transform the filters have nothing
                    // to do with the response.
                    std::pin::pin!(send(req)).await
                };
                let mut response = result?;
                let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                strip_hop_by_hop(response.headers_mut(), upgraded);
                if let Some(changes) = &route.response_headers {
                    apply_header_changes(response.headers_mut(), changes);
                }
                Ok(response)
            }
        }
    }
}

/// How much of a request body that is answered without being forwarded is
/// still read (and thrown away), and for how long.
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Answers `request` without forwarding its body: the rest of the body is
/// read and discarded in the background (up to [`LINGER_BYTES`] and
/// [`LINGER_TIME`]). Dropping it unread would reset an HTTP/2 stream, which
/// clients report as a failed request instead of the answer (a 401, 404 or
/// 429 they should see), and would close an HTTP/1.1 connection.
fn unread<T>(request: Request<RequestBody>, answer: T) -> T {
    let mut body = request.into_body();
    if !body.is_end_stream() {
        tokio::spawn(async move {
            let mut read = 0usize;
            let drained = async {
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    if read > LINGER_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drained).await;
        });
    }
    answer
}

/// `Sec-CH-UA-Mobile`, the client hint read for the device class.
const SEC_CH_UA_MOBILE: HeaderName = HeaderName::from_static("sec-ch-ua-mobile");

/// Which of the fields read for every request the client sent. None of
/// their names is a standard one: looking one up hashes it byte by byte
/// and probes the map even when the field is absent, as these usually
/// are. One pass over the names, where standard ones differ at once, is
/// cheaper than the three lookups.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    request_id: bool,
    traceparent: bool,
    device_hint: bool,
}

impl Sent {
    fn of(headers: &HeaderMap) -> Sent {
        let mut sent = Sent::default();
        for name in headers.keys() {
            if name == X_REQUEST_ID {
                sent.request_id = true;
            } else if name == crate::telemetry::TRACEPARENT {
                sent.traceparent = true;
            } else if name == SEC_CH_UA_MOBILE {
                sent.device_hint = true;
            }
        }
        sent
    }
}

/// The client's `x-request-id` (`given`) when it is sane (shared with the
/// request, not copied), else a new random one. The one value goes
/// upstream and back to the client.
fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = given {
        let text = value.as_bytes();
        if !text.is_empty() && text.len() <= 128 && text.iter().all(u8::is_ascii_graphic) {
            return value.clone();
        }
    }
    // Same text as `format!("{:032x}", random)`, without the formatting
    // machinery; one allocation that the copies share.
    let mut id = [0u8; 32];
    crate::ids::hex_into(&crate::ids::random::<u128>().to_be_bytes(), &mut id);
    // Hex digits are always a valid value.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the
/// `Host` header, lowercased, without port.
fn request_host<B>(req: &Request<B>) -> Option<RequestHost> {
    let parsed: http::uri::Authority;
    let raw = match req.uri().authority() {
        Some(authority) => authority.host(),
        None => {
            let given = req.headers().get(header::HOST)?;
            // Usually the field already is the normalized host: shared,
            // not copied.
            let normal = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
            let bytes = given.as_bytes();
            if bytes.first().is_some_and(normal)
                && bytes.iter().all(|b| normal(b) || *b == b'.')
                && !bytes.ends_with(b".")
            {
                return Some(RequestHost::Shared(given.clone()));
            }
            let value = given.to_str().ok()?;
            match plain_host(value) {
                Some(host) => host,
                None => {
                    parsed = value.parse().ok()?;
                    parsed.host()
                }
            }
        }
    };
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        None
    } else {
        Some(RequestHost::Owned(host))
    }
}

/// A request's normalized host.
enum RequestHost {
    /// The `Host` field's own value.
    Shared(HeaderValue),
    Owned(String),
}

impl RequestHost {
    fn as_str(&self) -> &str {
        match self {
            // Checked to be lowercase letters, digits, '-' and '.'.
            RequestHost::Shared(value) => value.to_str().unwrap_or_default(),
            RequestHost::Owned(host) => host,
        }
    }
}

/// The host of a `Host` value made only of letters, digits, `-` and `.`,
/// with an optional numeric port: the common case, which parses as an
/// authority to the same host. Anything else is left to the URI parser.
fn plain_host(value: &str) -> Option<&str> {
    let (host, port) = match value.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    (host_ok && port_ok).then_some(host)
}

fn https_redirect(host: &str, uri: &Uri, port: u16) -> Response<Body> {
    let path_and_query = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let location = if port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{port}{path_and_query}")
    };
    redirect_to(StatusCode::PERMANENT_REDIRECT, &location)
}

fn redirect_to(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The port the client addressed: from the URI authority or `Host`, else
/// the listener's.
fn request_port<B>(req: &Request<B>, conn: &ConnInfo) -> Option<u16> {
    req.uri()
        .authority()
        .and_then(|a| a.port_u16())
        .or_else(|| {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            host.parse::<http::uri::Authority>().ok()?.port_u16()
        })
        .or(conn.local.map(|addr| addr.port()))
}

/// A redirect's `Location`. The port follows Gateway API: the filter's port
/// if set; else the scheme's well-known port when the filter changes the
/// scheme; else the port the client used.
#[allow(clippy::too_many_arguments)]
fn redirect_response(
    redirect: &Redirect,
    tls: bool,
    host: &str,
    request_port: Option<u16>,
    path: &str,
    query: Option<&str>,
    prefix_len: usize,
) -> Response<Body> {
    let scheme = redirect
        .scheme
        .as_deref()
        .unwrap_or(if tls { "https" } else { "http" });
    let hostname = redirect.hostname.as_deref().unwrap_or(host);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let chosen = match (redirect.port, &redirect.scheme) {
        (Some(port), _) => Some(port),
        (None, Some(_)) => None,
        (None, None) => request_port,
    };
    let port = match chosen {
        Some(port) if port != default_port => format!(":{port}"),
        _ => String::new(),
    };
    let new_path = match &redirect.path {
        None => path.to_owned(),
        Some(rewrite) => apply_path_rewrite(rewrite, path, prefix_len),
    };
    let mut location = format!("{scheme}://{hostname}{port}{new_path}");
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
    redirect_to(status, &location)
}

fn direct_response(direct: &DirectResponse, route: &Route) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(direct.body.clone())));
    *response.status_mut() = StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK);
    if let Ok(value) = HeaderValue::from_str(&direct.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    if let Some(changes) = &route.response_headers {
        apply_header_changes(response.headers_mut(), changes);
    }
    response
}

fn apply_path_rewrite(rewrite: &PathRewrite, path: &str, prefix_len: usize) -> String {
    match rewrite {
        PathRewrite::ReplaceFull(full_path) => full_path.clone(),
        PathRewrite::ReplacePrefix(replacement) => {
            let rest = path.get(prefix_len..).unwrap_or("");
            let base = replacement.trim_end_matches('/');
            if rest.is_empty() {
                if base.is_empty() {
                    "/".to_owned()
                } else {
                    base.to_owned()
                }
            } else if rest.starts_with('/') {
                format!("{base}{rest}")
            } else {
                format!("{base}/{rest}")
            }
        }
    }
}

fn rewritten_path(route: &Route, path: &str, prefix_len: usize) -> String {
    match route.url_rewrite.as_ref().and_then(|r| r.path.as_ref()) {
        Some(rewrite) => apply_path_rewrite(rewrite, path, prefix_len),
        None => path.to_owned(),
    }
}

/// Header changes: remove, then set, then add.
pub(crate) fn apply_header_changes(headers: &mut HeaderMap, changes: &HeaderChanges) {
    for name in &changes.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &changes.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &changes.add {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
}

// `Trailer` is not here: it is end to end (RFC 9110, 6.6.2), and an
// HTTP/1.1 server sends only the trailer fields it announces.
pub(crate) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (and those the `Connection` header names).
/// For upgrades, `Connection: upgrade` and `Upgrade` are kept. `TE:
/// trailers` is kept, as gRPC needs it end to end.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One look at every name first: a lookup or removal hashes the name
    // even when it is absent, and most messages carry none of these but
    // the upstream's `Connection: keep-alive`.
    let mut present = 0u8; // one bit per HOP_BY_HOP entry
    let (mut has_connection, mut has_te, mut has_upgrade) = (false, false, false);
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
        has_connection |= name == header::CONNECTION;
        has_te |= name == header::TE;
        has_upgrade |= name == header::UPGRADE;
    }
    if has_connection {
        // `keep-alive` and `close` are options, not fields; `Connection`
        // itself goes below.
        let mut connection = crate::h1client::ConnectionField::default();
        for value in headers.get_all(header::CONNECTION) {
            connection.note(value.as_bytes());
        }
        for name in connection.listed {
            if upgrade && name == header::UPGRADE {
                continue;
            }
            has_upgrade &= name != header::UPGRADE;
            headers.remove(name);
        }
    }
    let te_trailers = has_te
        && headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has_upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() <= http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| crate::h1client::has_token(v.as_bytes(), "upgrade"))
}

/// Hop-by-hop removal, and the fields the gateway adds: X-Forwarded-*
/// and the request id, set in `added`, apart from the map (see
/// [`crate::forwarded`]). The client's fields of those names are removed,
/// except a trusted client's X-Forwarded-Proto and -Host, which are kept
/// (and its X-Forwarded-For, which is extended). `upgrade`: the client
/// asks for a protocol upgrade (`is_upgrade`, read before the hop-by-hop
/// fields go).
fn prepare_upstream_headers(
    req: &mut Request<RequestBody>,
    conn: &ConnInfo,
    shared: &Shared,
    host: &str,
    request_id: &HeaderValue,
    upgrade: bool,
    added: &mut Added,
) {
    let trusted = shared.config.trusts(conn.peer.ip());
    let headers = req.headers_mut();
    // One look at the client's names for the fields replaced or removed
    // below: a lookup or removal hashes the name and probes the map even
    // when the field is absent, as these nearly always are.
    let mut given = Given::default();
    for name in headers.keys() {
        if name == header::EXPECT {
            given.expect = true;
        } else if name == crate::telemetry::TRACESTATE {
            given.tracestate = true;
        } else if name == crate::telemetry::TRACEPARENT {
            given.traceparent = true;
        } else if name == X_FORWARDED_FOR {
            given.forwarded_for = true;
        } else if name == X_FORWARDED_PROTO {
            given.forwarded_proto = true;
        } else if name == X_FORWARDED_HOST {
            given.forwarded_host = true;
        } else if name == X_REQUEST_ID {
            given.request_id = true;
        }
    }
    strip_hop_by_hop(headers, upgrade);
    // The trace fields go upstream for each attempt (`Added::trace`); the
    // client's `tracestate` only with its own trace.
    if given.tracestate {
        headers.remove(crate::telemetry::TRACESTATE);
    }
    if given.traceparent {
        headers.remove(crate::telemetry::TRACEPARENT);
    }
    let client_ip = conn.peer.ip();
    // A client's X-Forwarded-For is read only when the client is trusted;
    // otherwise it is replaced.
    let existing = match given.forwarded_for {
        true => headers.remove(&X_FORWARDED_FOR),
        false => None,
    };
    let extended = match (trusted, existing) {
        (true, Some(existing)) => existing
            .to_str()
            .ok()
            .map(|existing| format!("{existing}, {client_ip}")),
        _ => None,
    };
    let forwarded_for = match extended {
        Some(list) => HeaderValue::from_str(&list),
        None => match &conn.peer_value {
            Some(value) => Ok(value.clone()),
            None => ip_header_value(client_ip),
        },
    };
    if let Ok(value) = forwarded_for {
        added.set(Field::ForwardedFor, value);
    }
    if !(trusted && given.forwarded_proto) {
        if given.forwarded_proto {
            headers.remove(&X_FORWARDED_PROTO);
        }
        added.set(
            Field::ForwardedProto,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
    }
    let given_host = headers.get(header::HOST);
    let has_host = given_host.is_some();
    if !(trusted && given.forwarded_host) {
        if let Some(value) = forwarded_host(given_host, host) {
            added.set(Field::ForwardedHost, value);
        }
        if given.forwarded_host {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    // The client's id, when `request_id` kept it, is the same value.
    if given.request_id {
        headers.remove(&X_REQUEST_ID);
    }
    added.set(Field::RequestId, request_id.clone());
    // The gateway answers `Expect: 100-continue` itself (hyper sends the
    // 100 when the body is first read) and sends the body right after the
    // head, so the expectation is not passed on.
    if given.expect {
        headers.remove(header::EXPECT);
    }
    if !has_host {
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, value);
        }
    }
}

/// Which of the fields `prepare_upstream_headers` replaces or removes the
/// client sent.
#[derive(Default)]
struct Given {
    expect: bool,
    tracestate: bool,
    traceparent: bool,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
    request_id: bool,
}

/// The X-Forwarded-Host value for the normalized `host`: usually the Host
/// field as the client sent it, shared rather than copied.
fn forwarded_host(given: Option<&HeaderValue>, host: &str) -> Option<HeaderValue> {
    match given {
        Some(given) if given.as_bytes() == host.as_bytes() => Some(given.clone()),
        _ => HeaderValue::from_str(host).ok(),
    }
}

/// An address as a header value; IPv4 without the formatting machinery
/// (it is done for every request).
fn ip_header_value(ip: IpAddr) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string());
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len])
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn client_hash(
    headers: &HeaderMap,
    added: &Added,
    conn: &ConnInfo,
    key: &snapshot::model::HashKey,
) -> u64 {
    use snapshot::model::HashKey;
    match key {
        HashKey::ClientIp => match conn.peer.ip() {
            IpAddr::V4(v4) => crate::balance::stable_hash(&v4.octets()),
            IpAddr::V6(v6) => crate::balance::stable_hash(&v6.octets()),
        },
        HashKey::Header(name) => headers
            .get(name.as_str())
            .or_else(|| added.get(name))
            .map(|v| crate::balance::stable_hash(v.as_bytes()))
            .unwrap_or(0),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| crate::balance::stable_hash(v.as_bytes()))
            })
            .unwrap_or(0),
    }
}

/// Sends the request to one of the route's clusters, retrying within the
/// route's policy and the cluster's retry budget. Each attempt carries a
/// `traceparent` of its own and is noted in `attempts`.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)] // see `handle`
fn forward_request<'a>(
    req: Request<RequestBody>,
    added: &'a mut Added,
    forward: &'a Forward,
    runtime: &'a RouteRuntime,
    conn: &'a ConnInfo,
    path: &'a str,
    query: Option<&'a str>,
    trace: Option<&'a crate::telemetry::TraceContext>,
    upgrade: bool,
    attempts_made: &'a mut Attempts,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + 'a {
    async move {
        let Some(cluster) = runtime.pick_backend() else {
            return Err(unread(req, ProxyError::BackendUnavailable));
        };
        let started = Instant::now();
        let request_deadline = Duration::from_millis(forward.timeouts.request_ms);
        let attempt_timeout = Duration::from_millis(forward.timeouts.backend_request_ms);

        let (mut parts, body) = req.into_parts();
        let client_upgrade = if upgrade {
            let mut probe = Request::from_parts(parts, ());
            let on = hyper::upgrade::on(&mut probe);
            parts = probe.into_parts().0;
            Some(on)
        } else {
            None
        };
        // Without a body to read first, the first attempt starts at `started`.
        let read_first = !body.is_end_stream();
        // Buffer small bodies so that the request can be replayed.
        let (replayable, mut streamed): (Option<Bytes>, Option<RequestBody>) =
            if body.is_end_stream() {
                (Some(Bytes::new()), None)
            } else if forward.retry.attempts > 0
                && body
                    .size_hint()
                    .exact()
                    .is_some_and(|n| n <= MAX_RETRY_BODY)
            {
                match body.collect().await {
                    Ok(collected) => (Some(collected.to_bytes()), None),
                    Err(_) => return Err(ProxyError::BadRequest("request body could not be read")),
                }
            } else {
                (None, Some(body))
            };
        let may_retry_responses = idempotent(&parts.method) && replayable.is_some();
        let mut last_error = ProxyError::NoHealthyEndpoint;
        let mut tried: Option<usize> = None;
        let mut retries_taken = Vec::new();
        let attempts = forward.retry.attempts.min(10) + 1;
        cluster.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&cluster.requests_in_flight);

        for attempt in 0..attempts {
            let now = if attempt == 0 && !read_first {
                started
            } else {
                Instant::now()
            };
            if now.saturating_duration_since(started) >= request_deadline {
                last_error = ProxyError::UpstreamTimeout;
                break;
            }
            if attempt > 0 {
                match cluster.take_retry(forward.retry.budget_percent) {
                    Some(retry) => retries_taken.push(retry),
                    None => break,
                }
                let backoff = forward
                    .retry
                    .backoff_ms
                    .saturating_mul(1 << (attempt - 1).min(6));
                let jitter = rand::random::<u64>() % (backoff / 2 + 1);
                tokio::time::sleep(Duration::from_millis(backoff / 2 + jitter)).await;
            }
            let body = match (&replayable, streamed.take()) {
                (Some(bytes), _) => Outgoing::Buffered(bytes.clone()),
                (None, Some(body)) => Outgoing::Streamed(body),
                (None, None) => break,
            };
            let hash = match &cluster.config.load_balancer {
                snapshot::model::LoadBalancerPolicy::ConsistentHash(key) => {
                    Some(client_hash(&parts.headers, added, conn, key))
                }
                _ => None,
            };
            let Some(endpoint) = cluster.pick(hash, tried) else {
                last_error = ProxyError::NoHealthyEndpoint;
                break;
            };
            tried = Some(endpoint);
            // The head is set up for this attempt in place (each attempt
            // overwrites what the one before set).
            parts.uri = cluster.uri(endpoint, path, query)?;
            parts.version = http::Version::HTTP_11;
            let span_id = crate::telemetry::new_span_id();
            added.trace(trace, &span_id);
            // After a retry's backoff, the attempt starts now.
            let attempt_started = if attempt > 0 { Instant::now() } else { now };
            cluster.count_attempt();
            let guard = cluster.begin(endpoint);
            let remaining =
                request_deadline.saturating_sub(attempt_started.saturating_duration_since(started));
            let timeout = attempt_timeout.min(remaining);
            let deadline = (attempt_started + timeout).into();
            let last = attempt + 1 == attempts;
            let outcome = std::pin::pin!(send(
                &cluster, endpoint, &mut parts, added, body, last, upgrade, deadline
            ))
            .await;
            let elapsed = attempt_started.elapsed();
            cluster.observe_attempt(elapsed.as_secs_f64());
            attempts_made.push(UpstreamAttempt {
                cluster: cluster.clone(),
                endpoint,
                span_id,
                start: attempt_started,
                duration: elapsed,
                status: match &outcome {
                    Ok(response) => Some(response.status().as_u16()),
                    _ => None,
                },
                error: match &outcome {
                    Err(SendFailure::TimedOut) => Some("upstream_timeout"),
                    Err(_) => Some("upstream_failure"),
                    Ok(_) => None,
                },
            });
            match outcome {
                Err(SendFailure::TimedOut) => {
                    guard.failure();
                    cluster.count_timeout();
                    last_error = ProxyError::UpstreamTimeout;
                    // A timed-out request may have reached the upstream: retry only
                    // what is safe to repeat.
                    if !(may_retry_responses
                        && forward
                            .retry
                            .on
                            .contains(&crds::route::RetryOn::GatewayError))
                    {
                        break;
                    }
                }
                Err(SendFailure::Failed { connect, message }) => {
                    guard.failure();
                    if connect {
                        last_error = ProxyError::UpstreamConnect(message);
                        if replayable.is_none() {
                            break;
                        }
                    } else {
                        last_error = ProxyError::Upstream(message);
                        if !(may_retry_responses
                            && forward.retry.on.contains(&crds::route::RetryOn::Reset))
                        {
                            break;
                        }
                    }
                }
                Ok(mut response) => {
                    let status = response.status();
                    if status.is_server_error() {
                        guard.failure();
                    } else {
                        guard.success();
                    }
                    let retryable = may_retry_responses
                        && attempt + 1 < attempts
                        && retryable_status(status, &forward.retry.on);
                    if retryable {
                        last_error = ProxyError::Upstream(format!("status {status}"));
                        continue;
                    }
                    if status == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(client_upgrade) = client_upgrade {
                            let upstream_upgrade = hyper::upgrade::on(&mut response);
                            tokio::spawn(splice(client_upgrade, upstream_upgrade));
                        }
                        return Ok(response.map(|_| full(Bytes::new())));
                    }
                    // The head has been sent for the last time.
                    crate::headermaps::give(std::mem::take(&mut parts.headers));
                    return Ok(response.map(Either::Left));
                }
            }
        }
        if let Some(body) = streamed {
            // Never sent: no attempt was made.
            return Err(unread(Request::new(body), last_error));
        }
        Err(last_error)
    }
}

/// Why an attempt got no response head.
enum SendFailure {
    /// The attempt's deadline passed first.
    TimedOut,
    Failed {
        /// The request never reached the upstream.
        connect: bool,
        message: String,
    },
}

/// A request body on its way upstream.
enum Outgoing {
    /// Read whole (small, or kept for retries).
    Buffered(Bytes),
    /// Streamed from the client as it arrives.
    Streamed(RequestBody),
}

impl From<Outgoing> for UpstreamBody {
    fn from(body: Outgoing) -> UpstreamBody {
        match body {
            Outgoing::Buffered(bytes) => Either::Right(Full::new(bytes)),
            Outgoing::Streamed(body) => Either::Left(body),
        }
    }
}

/// One attempt at `endpoint`, until `deadline`, with the request head
/// `head` and the `added` fields. Plain-text HTTP/1.1 endpoints have
/// their own pool: a buffered request that asks for no upgrade is
/// exchanged by this task on the connection (`h1client`, whose
/// connections keep their timer from one exchange to the next; it reads
/// the head where it is and writes the added fields after it), others go
/// through hyper's connection. HTTPS and HTTP/2 clusters use the generic
/// client. hyper takes a head of its own, with the added fields inserted:
/// the `last` attempt's is taken, earlier ones get a copy (a HeaderMap
/// clone allocates for every value).
#[allow(clippy::too_many_arguments)]
async fn send(
    cluster: &ClusterRuntime,
    endpoint: usize,
    head: &mut http::request::Parts,
    added: &Added,
    body: Outgoing,
    last: bool,
    upgrade: bool,
    deadline: tokio::time::Instant,
) -> Result<Response<ResponseBody>, SendFailure> {
    let failed = |connect: bool, message: String| SendFailure::Failed { connect, message };
    let owned = |head: &mut http::request::Parts| {
        let mut owned = match last {
            true => std::mem::replace(head, Request::new(()).into_parts().0),
            false => head.clone(),
        };
        added.insert_into(&mut owned.headers);
        owned
    };
    // hyper's paths are boxed: their futures are several times the size
    // of the direct exchange's, which every request would carry otherwise.
    let Some(pool) = cluster.pools.as_ref().and_then(|pools| pools.get(endpoint)) else {
        let request = Request::from_parts(owned(head), UpstreamBody::from(body));
        let sent = boxed!(cluster.client.request(request));
        return match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(response)) => Ok(response.map(ResponseBody::Hyper)),
            Ok(Err(error)) => Err(failed(error.is_connect(), error.to_string())),
            Err(_) => Err(SendFailure::TimedOut),
        };
    };
    let outcome = match body {
        Outgoing::Buffered(bytes) if !upgrade => {
            std::pin::pin!(pool.send_buffered(head, added, &bytes, deadline)).await
        }
        body => {
            let request = Request::from_parts(owned(head), UpstreamBody::from(body));
            let sent = boxed!(pool.send(request));
            match tokio::time::timeout_at(deadline, sent).await {
                Ok(outcome) => outcome.map(|response| response.map(ResponseBody::Hyper)),
                Err(_) => return Err(SendFailure::TimedOut),
            }
        }
    };
    outcome.map_err(|error| match error.is_timeout() {
        true => SendFailure::TimedOut,
        false => failed(error.is_connect(), error.to_string()),
    })
}

struct InFlight<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn retryable_status(status: StatusCode, on: &[crds::route::RetryOn]) -> bool {
    use crds::route::RetryOn;
    on.iter().any(|condition| match condition {
        RetryOn::ServerError => status.is_server_error(),
        RetryOn::GatewayError => matches!(status.as_u16(), 502..=504),
        RetryOn::ConnectFailure | RetryOn::Reset => false,
    })
}

async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

impl ClusterRuntime {
    fn uri(&self, endpoint: usize, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
        let authority = self
            .uri_authority(endpoint)
            .ok_or(ProxyError::NoHealthyEndpoint)?;
        let prefix = self
            .config
            .path_prefix
            .as_deref()
            .map_or("", |prefix| prefix.trim_end_matches('/'));
        let mut text =
            String::with_capacity(prefix.len() + path.len() + query.map_or(0, |q| 1 + q.len()));
        text.push_str(prefix);
        text.push_str(path);
        if let Some(query) = query {
            text.push('?');
            text.push_str(query);
        }
        let invalid = |_| ProxyError::BadRequest("request path cannot be forwarded");
        if !text.starts_with('/') || text.len() > 32 * 1024 {
            // Not a plain origin-form path: the URI parser judges the whole
            // URI (scheme, authority and all), as it always has.
            let mut full = String::with_capacity(16 + authority.as_str().len() + text.len());
            full.push_str(self.scheme());
            full.push_str("://");
            full.push_str(authority.as_str());
            full.push_str(&text);
            return full.parse().map_err(invalid);
        }
        // The scheme and the (pre-parsed) authority are reused; only the path
        // is parsed.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.config.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        parts.authority = Some(authority.clone());
        parts.path_and_query =
            Some(http::uri::PathAndQuery::from_maybe_shared(Bytes::from(text)).map_err(invalid)?);
        Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadRequest("request path cannot be forwarded"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_the_client_port_unless_the_scheme_changes() {
        let location = |redirect: &Redirect, tls: bool, port: Option<u16>| {
            redirect_response(redirect, tls, "shop.test", port, "/a", Some("x=1"), 0)
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let path_only = Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: Some(PathRewrite::ReplaceFull("/b".into())),
            status: 301,
        };
        assert_eq!(
            location(&path_only, true, Some(8443)).as_deref(),
            Some("https://shop.test:8443/b?x=1")
        );
        assert_eq!(
            location(&path_only, true, Some(443)).as_deref(),
            Some("https://shop.test/b?x=1")
        );
        let to_https = Redirect {
            scheme: Some("https".into()),
            ..path_only.clone()
        };
        assert_eq!(
            location(&to_https, false, Some(8080)).as_deref(),
            Some("https://shop.test/b?x=1")
        );
        let explicit = Redirect {
            port: Some(9443),
            ..to_https
        };
        assert_eq!(
            location(&explicit, false, Some(8080)).as_deref(),
            Some("https://shop.test:9443/b?x=1")
        );
    }

    #[test]
    fn prefix_rewrite_keeps_the_rest_of_the_path() {
        let rewrite = PathRewrite::ReplacePrefix("/v2".into());
        assert_eq!(apply_path_rewrite(&rewrite, "/api/items", 4), "/v2/items");
        assert_eq!(apply_path_rewrite(&rewrite, "/api", 4), "/v2");
        let root = PathRewrite::ReplacePrefix("/".into());
        assert_eq!(apply_path_rewrite(&root, "/api/items", 4), "/items");
        assert_eq!(apply_path_rewrite(&root, "/api", 4), "/");
    }

    #[test]
    fn forwarded_host_shares_the_clients_host_only_when_it_is_the_normalized_one() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop.test"));
        let given = headers[header::HOST].as_bytes().as_ptr();
        let shared = forwarded_host(headers.get(header::HOST), "shop.test").expect("value");
        assert_eq!(shared, "shop.test");
        assert_eq!(shared.as_bytes().as_ptr(), given, "copied, not shared");
        headers.insert(header::HOST, HeaderValue::from_static("Shop.Test:8080"));
        assert_eq!(
            forwarded_host(headers.get(header::HOST), "shop.test").expect("value"),
            "shop.test"
        );
        headers.remove(header::HOST);
        assert_eq!(
            forwarded_host(headers.get(header::HOST), "shop.test").expect("value"),
            "shop.test"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut headers, false);
        assert!(!headers.contains_key("upgrade"));
        assert!(!headers.contains_key("proxy-connection"));
        assert!(!headers.contains_key("connection"));
        assert!(!headers.contains_key("x-secret"));
        assert!(!headers.contains_key("keep-alive"));
        assert_eq!(headers["te"], "trailers");
        assert!(headers.contains_key("x-kept"));

        // An upgrade keeps `Upgrade` even when `Connection` lists it.
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("Upgrade, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert!(!headers.contains_key("x-secret"));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn ip_header_values_match_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.10.255",
            "192.168.100.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn plain_hosts_agree_with_the_authority_parser() {
        for value in [
            "example.com",
            "Example.COM:8080",
            "a-b.c.:1",
            "127.0.0.1:80",
            "x",
            ".",
        ] {
            let parsed: http::uri::Authority = value.parse().unwrap();
            assert_eq!(plain_host(value), Some(parsed.host()), "{value}");
        }
        for value in [
            "", ":80", "h:", "h:123456", "h:8a", "user@h", "[::1]:80", "h_1", "h:1:2",
        ] {
            assert_eq!(plain_host(value), None, "{value}");
        }
    }

    /// A table with one route forwarding to a cluster at 127.0.0.1:8080
    /// with the given path prefix.
    #[allow(clippy::unwrap_used)]
    fn forwarding_table(path_prefix: Option<&str>) -> Table {
        use snapshot::model::{
            Cluster, Endpoint, LoadBalancerPolicy, Matcher, PathMatcher, RetryPolicy, RouteId,
            Timeouts, UpstreamProtocol, VirtualHost, WeightedCluster,
        };
        let cluster = Cluster {
            endpoints: vec![Endpoint {
                host: "127.0.0.1".into(),
                port: 8080,
            }],
            protocol: UpstreamProtocol::Http1,
            tls: None,
            path_prefix: path_prefix.map(str::to_owned),
            load_balancer: LoadBalancerPolicy::RoundRobin,
            outlier_detection: None,
            connect_timeout_ms: 1000,
        };
        let route = Route {
            id: RouteId {
                namespace: "default".into(),
                name: "r".into(),
                rule: "rule-0".into(),
                match_index: 0,
            },
            matcher: Matcher {
                path: PathMatcher::Prefix("/".into()),
                methods: vec![],
                headers: vec![],
                query: vec![],
                devices: vec![],
            },
            https_redirect: false,
            action: Action::Forward(Forward {
                backends: vec![WeightedCluster {
                    cluster: "c".into(),
                    weight: 1,
                }],
                timeouts: Timeouts {
                    request_ms: 1000,
                    backend_request_ms: 1000,
                },
                retry: RetryPolicy {
                    attempts: 0,
                    on: vec![],
                    backoff_ms: 0,
                    budget_percent: 20,
                },
            }),
            request_headers: None,
            response_headers: None,
            url_rewrite: None,
            transform: None,
            cache: None,
            auth: None,
            rate_limits: vec![],
        };
        let snapshot = snapshot::Snapshot {
            virtual_hosts: vec![VirtualHost {
                hostname: "example.com".into(),
                routes: vec![route],
            }],
            clusters: [("c".to_owned(), cluster)].into(),
            ..snapshot::Snapshot::default()
        };
        Table::build(
            Arc::new(snapshot),
            &crate::upstream::Clients::default(),
            None,
            &crate::metrics::Metrics::default(),
            &crate::auth::AuthState::default(),
        )
        .unwrap()
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn upstream_uris_match_parsing_the_whole_uri() {
        for prefix in [None, Some("/v2/"), Some("/v2"), Some("v2")] {
            let table = forwarding_table(prefix);
            let cluster = table.route_runtime(0).pick_backend().unwrap();
            let base = prefix.map_or("", |p| p.trim_end_matches('/'));
            for (path, query) in [
                ("/", None),
                ("/items/1", Some("a=1&b=%20")),
                ("/a%2Fb", Some("")),
                ("*", None),
                ("/bad path", None),
            ] {
                let full = match query {
                    Some(q) => format!("http://127.0.0.1:8080{base}{path}?{q}"),
                    None => format!("http://127.0.0.1:8080{base}{path}"),
                };
                let expected = full.parse::<Uri>().ok();
                let got = cluster.uri(0, path, query).ok();
                assert_eq!(got, expected, "{prefix:?} {path} {query:?}");
            }
        }
    }

    #[test]
    fn a_connection_classifies_each_request_as_classify_does() {
        let conn = ConnInfo::new(SocketAddr::from(([127, 0, 0, 1], 5000)), None, false, None);
        let desktop = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                       (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
        let phone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
                     (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
        let long = format!("{desktop} {}", "x".repeat(MAX_KEPT_USER_AGENT));
        let requests: Vec<(Option<&str>, Option<&str>)> = vec![
            (Some(desktop), None),
            (Some(desktop), None),
            (Some(phone), None),
            (Some(desktop), None),
            // The hint alone changes the answer for the same User-Agent.
            (Some(desktop), Some("?1")),
            (Some(desktop), Some("?0")),
            (None, None),
            (
                Some("Googlebot/2.1 (+http://www.google.com/bot.html)"),
                None,
            ),
            (Some(&long), None),
            (Some(&long), Some("?1")),
            (Some(phone), None),
            (None, Some("?1")),
            (None, None),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (ua, hint) in requests {
            let (ua, hint) = (ua.map(str::as_bytes), hint.map(str::as_bytes));
            let class = conn.device(ua, hint);
            assert_eq!(class, device::classify(ua, hint), "{ua:?} {hint:?}");
            seen.insert(class);
        }
        // The sequence switches between classes, so a stale answer shows.
        assert!(seen.len() >= 3, "{seen:?}");

        // The answer is kept with the values it came from, except for a
        // User-Agent too long to keep.
        let kept = |conn: &ConnInfo| {
            let last = conn.last_device.lock().expect("not poisoned");
            (last.user_agent.clone(), last.class)
        };
        let class = conn.device(Some(phone.as_bytes()), None);
        assert_eq!(kept(&conn), (Some(phone.as_bytes().to_vec()), Some(class)));
        conn.device(Some(long.as_bytes()), None);
        assert_eq!(kept(&conn).1, None);
    }

    #[test]
    fn request_hosts_are_normalized_and_shared_when_already_normal() {
        let host_of = |value: &'static str| {
            let mut req = Request::new(());
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_static(value));
            request_host(&req).map(|host| {
                let shared = matches!(host, RequestHost::Shared(_));
                (host.as_str().to_owned(), shared)
            })
        };
        assert_eq!(host_of("shop.test"), Some(("shop.test".into(), true)));
        assert_eq!(host_of("10.0.0.1"), Some(("10.0.0.1".into(), true)));
        assert_eq!(host_of("Shop.Test:8080"), Some(("shop.test".into(), false)));
        assert_eq!(host_of("shop.test."), Some(("shop.test".into(), false)));
        assert_eq!(host_of("[::1]:443"), Some(("[::1]".into(), false)));
        assert_eq!(host_of(".shop.test"), Some((".shop.test".into(), false)));
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("."), None);
        let mut absolute = Request::new(());
        *absolute.uri_mut() = "http://API.test:81/x".parse().expect("uri");
        assert_eq!(
            request_host(&absolute).map(|h| h.as_str().to_owned()),
            Some("api.test".into())
        );
    }

    #[test]
    fn client_request_ids_are_kept_only_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        let kept = request_id(headers.get("x-request-id"));
        assert_eq!(kept, "abc-123");
        assert_eq!(
            kept.as_bytes().as_ptr(),
            headers["x-request-id"].as_bytes().as_ptr(),
            "shared"
        );
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        let generated = request_id(headers.get("x-request-id"));
        assert_eq!(generated.len(), 32);
        assert!(generated.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(request_id(None), generated, "a new id each time");
        // A generated id is a valid string: handle() reads it as one.
        assert!(generated.to_str().is_ok());
    }

    #[test]
    fn sent_fields_agree_with_lookups() {
        let names = [
            "X-Request-ID",
            "traceparent",
            "Sec-CH-UA-Mobile",
            "host",
            "user-agent",
            "x-request",
            "sec-ch-ua",
            "tracestate",
        ];
        // Every subset of the names above, in the order given.
        for mask in 0u32..(1 << names.len()) {
            let mut headers = HeaderMap::new();
            for (i, name) in names.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
                    headers.append(name, HeaderValue::from_static("v"));
                }
            }
            let sent = Sent::of(&headers);
            assert_eq!(
                sent.request_id,
                headers.contains_key("x-request-id"),
                "{headers:?}"
            );
            assert_eq!(
                sent.traceparent,
                headers.contains_key("traceparent"),
                "{headers:?}"
            );
            assert_eq!(
                sent.device_hint,
                headers.contains_key("sec-ch-ua-mobile"),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn header_changes_apply_remove_set_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("old"));
        headers.insert("x-gone", HeaderValue::from_static("1"));
        let changes = HeaderChanges {
            set: vec![("x-a".into(), "new".into())],
            add: vec![("x-b".into(), "1".into()), ("x-b".into(), "2".into())],
            remove: vec!["x-gone".into()],
        };
        apply_header_changes(&mut headers, &changes);
        assert_eq!(headers["x-a"], "new");
        assert_eq!(headers.get_all("x-b").iter().count(), 2);
        assert!(!headers.contains_key("x-gone"));
    }
}
