//! `ferrogate explain --manifests DIR METHOD URL [-H 'Name: value']...`:
//! which route, rule, backends and policies a request would get, or why
//! nothing matches.
//!
//! ```text
//! DIR ─► manifests::load ─► compile ─► Router::build ─┐
//! METHOD URL -H ... ─► ExplainRequest (host, path,    ├─► explain() ─► Explanation
//!                      query, headers, device class) ─┘        │
//!                                             render_text / JSON (--output json)
//! ```
//!
//! The same compiler and the same router as the dataplane answer, so the
//! result is what `ferrogate serve` would do with the request. The device
//! class comes from `-H 'User-Agent: ...'` and `-H 'Sec-CH-UA-Mobile: ?1'`
//! exactly as the dataplane decides it; without a `User-Agent` the request is
//! a desktop one.
//!
//! Exit status: 0 when a route matched, 1 otherwise (no host, no route, or
//! unusable input).

use crate::manifests;
use dataplane::router::http::{self, HeaderMap, HeaderName, HeaderValue, Method};
use dataplane::router::{normalize_host, Match, Mismatch, RequestView, RouteEntry, Router};
use serde::Serialize;
use snapshot::compile::compile;
use snapshot::model::{
    Action, AuthConfig, AuthMethodConfig, HeaderChanges, JwtKeys, PathMatcher, PathRewrite,
    RateLimitConfig, Route, Snapshot, ValueMatch, ValueMatcher,
};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Options of `ferrogate explain`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// Folder (or file) of manifests to load.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Request method (GET, POST, ...).
    pub method: String,
    /// Request URL: `https://host[:port]/path?query` or `http://...`.
    pub url: String,
    /// A request header, `Name: value` (repeatable). `Host` overrides the
    /// URL's host; `User-Agent` and `Sec-CH-UA-Mobile` decide the device
    /// class.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
    pub output: ExplainFormat,
}

/// Output formats of `explain`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExplainFormat {
    /// For people.
    Text,
    /// One JSON object, for tools.
    Json,
}

/// A request to explain, parsed from the command line.
#[derive(Clone, Debug)]
pub struct ExplainRequest {
    /// Method.
    pub method: Method,
    /// `http` or `https`.
    pub scheme: String,
    /// Host (and port) the request is sent to: the `Host` header if given,
    /// else the URL's authority.
    pub authority: String,
    /// Path (`/` when the URL has none).
    pub path: String,
    /// Query without `?`.
    pub query: Option<String>,
    /// Headers.
    pub headers: HeaderMap,
}

impl ExplainRequest {
    /// Parses the method, URL and `Name: value` headers.
    pub fn parse(method: &str, url: &str, headers: &[String]) -> Result<Self, String> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("{method:?} is not an HTTP method"))?;
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("https".to_string(), url),
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!("URL {url:?}: the scheme must be http or https"));
        }
        // The fragment never reaches a server.
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (authority, path_query) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        if authority.is_empty() {
            return Err(format!("URL {url:?} has no host"));
        }
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path_query, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        let mut map = HeaderMap::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("header {h:?}: expected 'Name: value'"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("header {h:?}: {:?} is not a header name", name.trim()))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("header {h:?}: the value is not a valid header value"))?;
            map.append(name, value);
        }
        let authority = match map.get(http::header::HOST).map(|v| v.to_str()) {
            Some(Ok(host)) => host.to_string(),
            Some(Err(_)) => return Err("the Host header is not ASCII".to_string()),
            None => authority.to_string(),
        };
        Ok(ExplainRequest {
            method,
            scheme,
            authority,
            path: path.to_string(),
            query,
            headers: map,
        })
    }

    fn host_without_port(&self) -> String {
        normalize_host(&self.authority).unwrap_or_else(|| self.authority.clone())
    }
}

/// Everything `explain` found out; serialized as is by `--output json`.
#[derive(Serialize, Debug)]
pub struct Explanation {
    /// The request as the router saw it.
    pub request: RequestSummary,
    /// What happened.
    pub outcome: Outcome,
}

/// The request as the router saw it.
#[derive(Serialize, Debug)]
pub struct RequestSummary {
    /// Method.
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Normalized host (lowercase, no port).
    pub host: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: Option<String>,
    /// Device class.
    pub device: String,
    /// Which headers decided the device class.
    pub device_from: String,
}

/// The result of routing.
#[derive(Serialize, Debug)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// A route matched.
    Matched(Box<Matched>),
    /// No virtual host serves the host.
    NoHost {
        /// Known hosts that look like the requested one.
        close_hosts: Vec<String>,
        /// Every virtual host (at most 50).
        known_hosts: Vec<String>,
        /// Number of virtual hosts.
        host_count: usize,
    },
    /// The virtual host exists but no route matched.
    NoRoute {
        /// The virtual host.
        vhost: String,
        /// Each route of the host, in precedence order, and the first
        /// condition it failed.
        routes: Vec<RouteFailure>,
    },
}

/// A matched route.
#[derive(Serialize, Debug)]
pub struct Matched {
    /// The virtual host (`*.suffix` for a wildcard).
    pub vhost: String,
    /// `namespace/name` of the ApiRoute.
    pub route: String,
    /// Rule name.
    pub rule: String,
    /// Index of the match within the rule.
    pub match_index: u32,
    /// Position of the route among the host's routes (0 is tried first).
    pub position: usize,
    /// Routes on the host.
    pub routes_on_host: usize,
    /// The match conditions, in words.
    pub conditions: String,
    /// Plain HTTP to this route gets a 308 redirect to HTTPS.
    pub https_redirect: bool,
    /// This request (plain HTTP) would be redirected, to this location.
    pub redirected_to: Option<String>,
    /// What the route does.
    pub action: ActionSummary,
    /// Filters, one line each.
    pub filters: Vec<String>,
    /// The AuthPolicy that applies.
    pub auth: Option<PolicySummary>,
    /// The RateLimitPolicies that apply.
    pub rate_limits: Vec<PolicySummary>,
    /// The route exactly as in the snapshot.
    pub route_config: Route,
}

/// What a route does.
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionSummary {
    /// Proxy to weighted backends.
    Forward {
        /// The backends.
        backends: Vec<BackendSummary>,
        /// Timeouts and retries, in words.
        traffic: String,
    },
    /// A redirect.
    Redirect {
        /// Status code.
        status: u16,
        /// `Location` for this request.
        location: String,
    },
    /// A fixed response.
    DirectResponse {
        /// Status code.
        status: u16,
        /// Content type.
        content_type: String,
        /// Body (shortened).
        body: String,
    },
    /// Parallel calls merged into one JSON object.
    Aggregate {
        /// The parts.
        parts: Vec<PartSummary>,
        /// `Omit` or `Fail`.
        on_part_failure: String,
        /// Parts in flight at once.
        max_parallel: u32,
    },
}

/// One backend of a forward action.
#[derive(Serialize, Debug)]
pub struct BackendSummary {
    /// Cluster name.
    pub cluster: String,
    /// Weight.
    pub weight: u32,
    /// Share of traffic in percent.
    pub percent: f64,
    /// Whether the cluster exists (an unresolved backend answers 500).
    pub resolved: bool,
    /// `host:port` of each ready endpoint.
    pub endpoints: Vec<String>,
    /// Protocol, TLS, path prefix and balancing, in words.
    pub settings: String,
}

/// One part of an aggregate.
#[derive(Serialize, Debug)]
pub struct PartSummary {
    /// Key in the merged object.
    pub name: String,
    /// Cluster.
    pub cluster: String,
    /// Path requested.
    pub path: String,
    /// Time limit.
    pub timeout_ms: u64,
    /// Endpoints of the cluster (empty when unresolved).
    pub endpoints: Vec<String>,
}

/// A policy and a one-line summary.
#[derive(Serialize, Debug)]
pub struct PolicySummary {
    /// `namespace/name`.
    pub name: String,
    /// What it does.
    pub summary: String,
}

/// Why one route did not match.
#[derive(Serialize, Debug)]
pub struct RouteFailure {
    /// `namespace/name`.
    pub route: String,
    /// Rule name.
    pub rule: String,
    /// Match index.
    pub match_index: u32,
    /// The match conditions, in words.
    pub conditions: String,
    /// The first condition that failed.
    pub reason: String,
}

impl Explanation {
    /// Whether a route matched.
    pub fn matched(&self) -> bool {
        matches!(self.outcome, Outcome::Matched(_))
    }
}

/// Routes `req` with `router` (built from `snapshot`) and explains the
/// result. Pure.
pub fn explain(snapshot: &Snapshot, router: &Router, req: &ExplainRequest) -> Explanation {
    let ua = req.headers.get(http::header::USER_AGENT);
    let ch_mobile = req.headers.get("sec-ch-ua-mobile");
    let device = dataplane::device::classify(
        ua.map(HeaderValue::as_bytes),
        ch_mobile.map(HeaderValue::as_bytes),
    );
    let device_from = match (ua.is_some(), ch_mobile.is_some()) {
        (true, true) => "from User-Agent and Sec-CH-UA-Mobile",
        (true, false) => "from User-Agent",
        (false, true) => "from Sec-CH-UA-Mobile",
        (false, false) => "no User-Agent given; curl's own would count as bot",
    };
    let view = RequestView {
        host: &req.authority,
        path: &req.path,
        query: req.query.as_deref(),
        method: &req.method,
        headers: &req.headers,
        device,
    };
    let request = RequestSummary {
        method: req.method.to_string(),
        scheme: req.scheme.clone(),
        host: req.host_without_port(),
        path: req.path.clone(),
        query: req.query.clone(),
        device: device.as_str().to_string(),
        device_from: device_from.to_string(),
    };
    let outcome = match router.find(&view) {
        Match::Found(m) => {
            let route_count = router
                .vhost_for(&req.authority)
                .map_or(0, |v| v.routes().len());
            Outcome::Matched(Box::new(matched(
                snapshot,
                req,
                m.host,
                m.entry,
                m.prefix_len,
                route_count,
            )))
        }
        Match::NoHost => {
            let all: Vec<String> = router
                .vhosts()
                .iter()
                .map(|v| v.hostname().to_string())
                .collect();
            Outcome::NoHost {
                close_hosts: close_hosts(&request.host, &all),
                host_count: all.len(),
                known_hosts: all.into_iter().take(50).collect(),
            }
        }
        Match::NoRoute { host } => {
            let routes = router
                .vhost_for(&req.authority)
                .map(|v| v.routes())
                .unwrap_or_default()
                .iter()
                .map(|entry| {
                    let route = entry.route();
                    let reason = match entry.check(&view) {
                        Ok(_) => "matches (unexpected)".to_string(),
                        Err(m) => mismatch_reason(m, route, &view),
                    };
                    RouteFailure {
                        route: format!("{}/{}", route.id.namespace, route.id.name),
                        rule: route.id.rule.clone(),
                        match_index: route.id.match_index,
                        conditions: describe_conditions(route),
                        reason,
                    }
                })
                .collect();
            Outcome::NoRoute {
                vhost: host.to_string(),
                routes,
            }
        }
    };
    Explanation { request, outcome }
}

fn matched(
    snapshot: &Snapshot,
    req: &ExplainRequest,
    vhost: &str,
    entry: &RouteEntry,
    prefix_len: usize,
    routes_on_host: usize,
) -> Matched {
    let route = entry.route();
    let rest = req.path.get(prefix_len..).unwrap_or("");
    let query_suffix = req
        .query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let redirected_to = (route.https_redirect && req.scheme == "http").then(|| {
        format!(
            "https://{}{}{}",
            req.host_without_port(),
            req.path,
            query_suffix
        )
    });
    let action = match &route.action {
        Action::Forward(f) => {
            let total: u64 = f.backends.iter().map(|b| u64::from(b.weight)).sum();
            let backends = f
                .backends
                .iter()
                .map(|b| {
                    let cluster = snapshot.clusters.get(&b.cluster);
                    let settings = cluster.map_or_else(
                        || "not resolved: requests sent here get 500".to_string(),
                        |c| {
                            let mut s = format!("{:?}", c.protocol);
                            if let Some(tls) = &c.tls {
                                let _ = write!(s, ", TLS to {}", tls.server_name);
                            }
                            if let Some(p) = &c.path_prefix {
                                let _ = write!(s, ", path prefix {p}");
                            }
                            let _ = write!(
                                s,
                                ", {:?}, connect timeout {}",
                                c.load_balancer,
                                duration(c.connect_timeout_ms)
                            );
                            if let Some(o) = &c.outlier_detection {
                                let _ =
                                    write!(s, ", eject after {} failures", o.consecutive_failures);
                            }
                            s
                        },
                    );
                    BackendSummary {
                        cluster: b.cluster.clone(),
                        weight: b.weight,
                        percent: if total == 0 {
                            0.0
                        } else {
                            (f64::from(b.weight) * 1000.0 / total as f64).round() / 10.0
                        },
                        resolved: cluster.is_some(),
                        endpoints: cluster
                            .map(|c| {
                                c.endpoints
                                    .iter()
                                    .map(|e| endpoint(&e.host, e.port))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        settings,
                    }
                })
                .collect();
            let mut traffic = format!(
                "request timeout {}, per attempt {}",
                duration(f.timeouts.request_ms),
                duration(f.timeouts.backend_request_ms)
            );
            if f.retry.attempts > 0 {
                let _ = write!(
                    traffic,
                    "; up to {} retries on {:?} (backoff {}, budget {}%)",
                    f.retry.attempts,
                    f.retry.on,
                    duration(f.retry.backoff_ms),
                    f.retry.budget_percent
                );
            } else {
                traffic.push_str("; no retries");
            }
            ActionSummary::Forward { backends, traffic }
        }
        Action::Redirect(r) => {
            let scheme = r.scheme.clone().unwrap_or_else(|| req.scheme.clone());
            let host = r
                .hostname
                .clone()
                .unwrap_or_else(|| req.host_without_port());
            let port = match (r.port, scheme.as_str()) {
                (Some(80), "http") | (Some(443), "https") | (None, _) => String::new(),
                (Some(p), _) => format!(":{p}"),
            };
            let path = match &r.path {
                None => req.path.clone(),
                Some(PathRewrite::ReplaceFull(p)) => p.clone(),
                Some(PathRewrite::ReplacePrefix(p)) => replace_prefix(p, rest),
            };
            ActionSummary::Redirect {
                status: r.status,
                location: format!("{scheme}://{host}{port}{path}{query_suffix}"),
            }
        }
        Action::DirectResponse(d) => ActionSummary::DirectResponse {
            status: d.status,
            content_type: d.content_type.clone(),
            body: shorten(&d.body, 200),
        },
        Action::Aggregate(a) => ActionSummary::Aggregate {
            parts: a
                .parts
                .iter()
                .map(|p| PartSummary {
                    name: p.name.clone(),
                    cluster: p.cluster.clone(),
                    path: p.path.clone(),
                    timeout_ms: p.timeout_ms,
                    endpoints: snapshot
                        .clusters
                        .get(&p.cluster)
                        .map(|c| {
                            c.endpoints
                                .iter()
                                .map(|e| endpoint(&e.host, e.port))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
            on_part_failure: format!("{:?}", a.on_part_failure),
            max_parallel: a.max_parallel,
        },
    };

    let mut filters = Vec::new();
    if let Some(h) = &route.request_headers {
        filters.push(format!("request headers: {}", header_changes(h)));
    }
    if let Some(h) = &route.response_headers {
        filters.push(format!("response headers: {}", header_changes(h)));
    }
    if let Some(u) = &route.url_rewrite {
        let mut parts = Vec::new();
        if let Some(h) = &u.hostname {
            parts.push(format!("Host -> {h}"));
        }
        match &u.path {
            Some(PathRewrite::ReplaceFull(p)) => parts.push(format!("path -> {p} (full)")),
            Some(PathRewrite::ReplacePrefix(p)) => parts.push(format!(
                "path -> {} (prefix replaced by {p})",
                replace_prefix(p, rest)
            )),
            None => {}
        }
        filters.push(format!("URL rewrite: {}", parts.join(", ")));
    }
    if let Some(t) = &route.transform {
        let mode = if t.keep.is_empty() {
            format!("remove {}", t.remove.join(", "))
        } else {
            format!("keep only {}", t.keep.join(", "))
        };
        let applies = t.devices.is_empty()
            || t.devices
                .iter()
                .any(|d| d.as_str() == req_device(req).as_str());
        filters.push(format!(
            "JSON transform: {mode} (devices {}; {} this request; bodies up to {} bytes)",
            devices_list(&t.devices),
            if applies { "applies to" } else { "not for" },
            t.max_body_bytes
        ));
    }
    if let Some(c) = &route.cache {
        let mut key = vec!["method", "host", "path", "query"]
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        key.extend(c.key_headers.iter().cloned());
        if c.key_device {
            key.push("device".into());
        }
        filters.push(format!(
            "cache: default TTL {}, entries up to {} bytes, key {}{}{}",
            c.default_ttl_ms
                .map_or_else(|| "none (only responses that say)".into(), duration),
            c.max_entry_bytes,
            key.join("+"),
            if c.cache_authorized {
                ", caches authorized requests"
            } else {
                ""
            },
            if c.cache_set_cookie {
                ", caches Set-Cookie responses"
            } else {
                ""
            },
        ));
    }

    let auth = route.auth.as_ref().map(|name| PolicySummary {
        name: name.clone(),
        summary: snapshot
            .auth_policies
            .get(name)
            .map_or_else(|| "not in the snapshot".into(), auth_summary),
    });
    let rate_limits = route
        .rate_limits
        .iter()
        .map(|name| PolicySummary {
            name: name.clone(),
            summary: snapshot
                .rate_limits
                .get(name)
                .map_or_else(|| "not in the snapshot".into(), rate_limit_summary),
        })
        .collect();

    Matched {
        vhost: vhost.to_string(),
        route: format!("{}/{}", route.id.namespace, route.id.name),
        rule: route.id.rule.clone(),
        match_index: route.id.match_index,
        position: entry.index(),
        routes_on_host,
        conditions: describe_conditions(route),
        https_redirect: route.https_redirect,
        redirected_to,
        action,
        filters,
        auth,
        rate_limits,
        route_config: route.clone(),
    }
}

fn req_device(req: &ExplainRequest) -> crds::DeviceClass {
    dataplane::device::classify(
        req.headers
            .get(http::header::USER_AGENT)
            .map(HeaderValue::as_bytes),
        req.headers
            .get("sec-ch-ua-mobile")
            .map(HeaderValue::as_bytes),
    )
}

/// `replacement` + the rest of the path after the matched prefix, with one
/// slash between them (Gateway API's ReplacePrefixMatch).
fn replace_prefix(replacement: &str, rest: &str) -> String {
    let base = replacement.trim_end_matches('/');
    match (base.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_string(),
        (true, false) => rest.to_string(),
        (false, _) => format!("{base}{rest}"),
    }
}

fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}...")
    }
}

/// `1500` -> `1.5s`, `60000` -> `1m`, `250` -> `250ms`.
fn duration(ms: u64) -> String {
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

fn header_changes(h: &HeaderChanges) -> String {
    let mut parts = Vec::new();
    if !h.remove.is_empty() {
        parts.push(format!("remove {}", h.remove.join(", ")));
    }
    for (n, v) in &h.set {
        parts.push(format!("set {n}: {v}"));
    }
    for (n, v) in &h.add {
        parts.push(format!("add {n}: {v}"));
    }
    parts.join("; ")
}

fn devices_list(devices: &[crds::DeviceClass]) -> String {
    if devices.is_empty() {
        "all".into()
    } else {
        devices
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join("|")
    }
}

fn describe_value(kind: &str, m: &ValueMatcher) -> String {
    match &m.value {
        ValueMatch::Exact(v) => format!("{kind} {} = {v:?}", m.name),
        ValueMatch::Regex(r) => format!("{kind} {} ~ /{r}/", m.name),
        ValueMatch::Present => format!("{kind} {} present", m.name),
    }
}

fn describe_path(p: &PathMatcher) -> String {
    match p {
        PathMatcher::Exact(p) => format!("path = {p}"),
        PathMatcher::Prefix(p) => format!("path prefix {p}"),
        PathMatcher::Regex(r) => format!("path ~ /{r}/"),
    }
}

/// The conditions of a route in words.
fn describe_conditions(route: &Route) -> String {
    let m = &route.matcher;
    let mut parts = vec![describe_path(&m.path)];
    if !m.methods.is_empty() {
        parts.push(format!("method {}", m.methods.join("|")));
    }
    parts.extend(m.headers.iter().map(|h| describe_value("header", h)));
    parts.extend(m.query.iter().map(|q| describe_value("query", q)));
    if !m.devices.is_empty() {
        parts.push(format!("device {}", devices_list(&m.devices)));
    }
    parts.join(", ")
}

fn mismatch_reason(m: Mismatch, route: &Route, req: &RequestView<'_>) -> String {
    let matcher = &route.matcher;
    match m {
        Mismatch::Path => format!(
            "path {} does not match ({})",
            req.path,
            describe_path(&matcher.path)
        ),
        Mismatch::Method => format!("method {} is not {}", req.method, matcher.methods.join("|")),
        Mismatch::Device => format!(
            "device {} is not {}",
            req.device.as_str(),
            devices_list(&matcher.devices)
        ),
        Mismatch::Header(i) => match matcher.headers.get(i) {
            Some(h) => {
                let got: Vec<String> = req
                    .headers
                    .get_all(h.name.as_str())
                    .iter()
                    .map(|v| format!("{:?}", String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                if got.is_empty() {
                    format!(
                        "{}: header {} is absent",
                        describe_value("header", h),
                        h.name
                    )
                } else {
                    format!("{}: got {}", describe_value("header", h), got.join(", "))
                }
            }
            None => "a header condition failed".into(),
        },
        Mismatch::Query(i) => match matcher.query.get(i) {
            Some(q) => {
                let got: Vec<&str> = req
                    .query
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|p| {
                        let (n, v) = p.split_once('=').unwrap_or((p, ""));
                        (n == q.name).then_some(v)
                    })
                    .collect();
                if got.is_empty() {
                    format!(
                        "{}: query parameter {} is absent",
                        describe_value("query", q),
                        q.name
                    )
                } else {
                    format!("{}: got {:?}", describe_value("query", q), got)
                }
            }
            None => "a query condition failed".into(),
        },
    }
}

fn auth_summary(a: &AuthConfig) -> String {
    let mut parts: Vec<String> = a
        .methods
        .iter()
        .map(|m| match m {
            AuthMethodConfig::Jwt(j) => {
                let keys = match &j.keys {
                    JwtKeys::JwksUri(u) => format!("keys from {u}"),
                    JwtKeys::Jwks(_) => "inline JWKS".to_string(),
                    JwtKeys::Hmac(_) => "HMAC secret".to_string(),
                };
                let aud = if j.audiences.is_empty() {
                    String::new()
                } else {
                    format!(", audience {}", j.audiences.join("|"))
                };
                format!("JWT from issuer {}{aud}, {keys}", j.issuer)
            }
            AuthMethodConfig::ApiKey(k) => format!(
                "API key from {} ({} keys)",
                credential_source(&k.key_from),
                k.keys.len()
            ),
            AuthMethodConfig::Basic(b) => {
                format!("basic auth, realm {:?} ({} users)", b.realm, b.users.len())
            }
            AuthMethodConfig::Forward(f) => {
                format!(
                    "forward auth to {} (timeout {})",
                    f.url,
                    duration(f.timeout_ms)
                )
            }
        })
        .collect();
    if parts.is_empty() {
        parts.push("no authentication method".into());
    }
    if a.allow_anonymous {
        parts.push("anonymous requests allowed".into());
    }
    if a.rules.is_empty() {
        parts.push("any authenticated client allowed".into());
    } else {
        let names: Vec<String> = a
            .rules
            .iter()
            .map(|r| format!("{} {}", if r.allow { "allow" } else { "deny" }, r.name))
            .collect();
        parts.push(format!("rules: {}", names.join(", ")));
    }
    parts.join("; ")
}

fn credential_source(c: &crds::auth::CredentialSource) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &c.header {
        parts.push(format!("header {h}"));
    }
    if let Some(q) = &c.query {
        parts.push(format!("query {q}"));
    }
    if let Some(k) = &c.cookie {
        parts.push(format!("cookie {k}"));
    }
    if parts.is_empty() {
        "the default location".into()
    } else {
        parts.join(" or ")
    }
}

fn rate_limit_summary(r: &RateLimitConfig) -> String {
    let limits: Vec<String> = r
        .limits
        .iter()
        .map(|l| {
            let mut s = format!("{} {}/{}", l.name, l.requests, duration(l.period_ms));
            if l.burst > 0 {
                let _ = write!(s, " +{} burst", l.burst);
            }
            let key: Vec<String> = l
                .key
                .iter()
                .map(|k| match &k.name {
                    Some(n) => format!("{:?} {n}", k.source),
                    None => format!("{:?}", k.source),
                })
                .collect();
            if !key.is_empty() {
                let _ = write!(s, " per {}", key.join("+"));
            }
            if !l.methods.is_empty() {
                let _ = write!(s, " for {}", l.methods.join("|"));
            }
            if !l.paths.is_empty() {
                let _ = write!(s, " on {}", l.paths.join("|"));
            }
            if !l.devices.is_empty() {
                let _ = write!(s, " from {}", devices_list(&l.devices));
            }
            if l.shadow {
                s.push_str(" (shadow: counts only)");
            }
            s
        })
        .collect();
    format!(
        "{:?} scope, failure mode {:?}: {}",
        r.scope,
        r.failure_mode,
        limits.join("; ")
    )
}

/// Hosts that look like `host`: same parent domain, or a small edit
/// distance.
fn close_hosts(host: &str, known: &[String]) -> Vec<String> {
    let parent = |h: &str| -> String {
        let labels: Vec<&str> = h.trim_start_matches("*.").split('.').collect();
        labels[labels.len().saturating_sub(2)..].join(".")
    };
    let want = parent(host);
    let mut close: Vec<(usize, &String)> = known
        .iter()
        .filter_map(|k| {
            let d = edit_distance(host, k);
            (d <= 3 || (want.contains('.') && parent(k) == want)).then_some((d, k))
        })
        .collect();
    close.sort();
    close.into_iter().take(10).map(|(_, k)| k.clone()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Renders an explanation for people.
pub fn render_text(e: &Explanation) -> String {
    let mut out = String::new();
    let r = &e.request;
    let q = r
        .query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "request:  {} {}://{}{}{}",
        r.method, r.scheme, r.host, r.path, q
    );
    let _ = writeln!(out, "device:   {} ({})", r.device, r.device_from);
    match &e.outcome {
        Outcome::Matched(m) => {
            let _ = writeln!(out, "vhost:    {}", m.vhost);
            let _ = writeln!(
                out,
                "route:    {} rule {} match {} (route {} of {} on the host)",
                m.route,
                m.rule,
                m.match_index,
                m.position + 1,
                m.routes_on_host
            );
            let _ = writeln!(out, "  when    {}", m.conditions);
            match (&m.redirected_to, m.https_redirect) {
                (Some(to), _) => {
                    let _ = writeln!(out, "https:    plain HTTP: this request gets 308 -> {to}");
                }
                (None, true) => {
                    let _ = writeln!(
                        out,
                        "https:    plain HTTP requests get a 308 redirect to HTTPS"
                    );
                }
                (None, false) => {
                    let _ = writeln!(out, "https:    plain HTTP is served (no redirect)");
                }
            }
            match &m.action {
                ActionSummary::Forward { backends, traffic } => {
                    let _ = writeln!(out, "action:   forward to {} backend(s)", backends.len());
                    for b in backends {
                        let eps = if !b.resolved {
                            "UNRESOLVED (500)".to_string()
                        } else if b.endpoints.is_empty() {
                            "no ready endpoints (503)".to_string()
                        } else {
                            b.endpoints.join(", ")
                        };
                        let _ = writeln!(
                            out,
                            "  backend {} weight {} ({}%) -> {}",
                            b.cluster, b.weight, b.percent, eps
                        );
                        let _ = writeln!(out, "          {}", b.settings);
                    }
                    let _ = writeln!(out, "  traffic {traffic}");
                }
                ActionSummary::Redirect { status, location } => {
                    let _ = writeln!(out, "action:   redirect {status} -> {location}");
                }
                ActionSummary::DirectResponse {
                    status,
                    content_type,
                    body,
                } => {
                    let _ = writeln!(
                        out,
                        "action:   direct response {status} ({content_type}): {body:?}"
                    );
                }
                ActionSummary::Aggregate {
                    parts,
                    on_part_failure,
                    max_parallel,
                } => {
                    let _ = writeln!(
                        out,
                        "action:   aggregate {} parts (on part failure: {on_part_failure}, {max_parallel} in parallel)",
                        parts.len()
                    );
                    for p in parts {
                        let eps = if p.endpoints.is_empty() {
                            "no endpoints".to_string()
                        } else {
                            p.endpoints.join(", ")
                        };
                        let _ = writeln!(
                            out,
                            "  part    {}: {} {} (timeout {}) -> {}",
                            p.name,
                            p.cluster,
                            p.path,
                            duration(p.timeout_ms),
                            eps
                        );
                    }
                }
            }
            if m.filters.is_empty() {
                let _ = writeln!(out, "filters:  none");
            } else {
                let _ = writeln!(out, "filters:");
                for f in &m.filters {
                    let _ = writeln!(out, "  {f}");
                }
            }
            match &m.auth {
                Some(p) => {
                    let _ = writeln!(out, "auth:     {}: {}", p.name, p.summary);
                }
                None => {
                    let _ = writeln!(out, "auth:     none");
                }
            }
            if m.rate_limits.is_empty() {
                let _ = writeln!(out, "limits:   none");
            } else {
                let _ = writeln!(out, "limits:");
                for p in &m.rate_limits {
                    let _ = writeln!(out, "  {}: {}", p.name, p.summary);
                }
            }
        }
        Outcome::NoHost {
            close_hosts,
            known_hosts,
            host_count,
        } => {
            let _ = writeln!(out, "no match: no virtual host serves {} (404)", r.host);
            if !close_hosts.is_empty() {
                let _ = writeln!(out, "close hosts: {}", close_hosts.join(", "));
            }
            if *host_count == 0 {
                let _ = writeln!(out, "known hosts: none (no accepted ApiRoute)");
            } else {
                let more = host_count.saturating_sub(known_hosts.len());
                let _ = write!(out, "known hosts: {}", known_hosts.join(", "));
                if more > 0 {
                    let _ = write!(out, " and {more} more");
                }
                out.push('\n');
            }
        }
        Outcome::NoRoute { vhost, routes } => {
            let _ = writeln!(
                out,
                "no match: virtual host {vhost} has {} route(s), none matches (404)",
                routes.len()
            );
            for f in routes {
                let _ = writeln!(
                    out,
                    "  {} rule {} match {}: {}",
                    f.route, f.rule, f.match_index, f.reason
                );
            }
        }
    }
    out
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs `ferrogate explain`.
pub fn run(args: &ExplainArgs) -> ExitCode {
    let req = match ExplainRequest::parse(&args.method, &args.url, &args.headers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.manifests.exists() {
        eprintln!(
            "error: --manifests: {} does not exist",
            args.manifests.display()
        );
        return ExitCode::FAILURE;
    }
    let (resources, load_errors) = manifests::load(std::slice::from_ref(&args.manifests));
    let compiled = compile(&resources, None, now_unix());
    // Problems go to stderr: the answer below is what the valid resources do.
    for e in &load_errors {
        eprintln!("warning: {e}");
    }
    let rejected: Vec<String> = compiled
        .statuses
        .iter()
        .filter(|(_, s)| !s.is_accepted())
        .map(|(k, _)| k.to_string())
        .collect();
    if !rejected.is_empty() {
        eprintln!(
            "warning: not serving {} (see `ferrogate validate {}`)",
            rejected.join(", "),
            args.manifests.display()
        );
    }
    let router = match Router::build(&compiled.snapshot) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: the dataplane would refuse this snapshot: {e}");
            return ExitCode::FAILURE;
        }
    };
    let explanation = explain(&compiled.snapshot, &router, &req);
    match args.output {
        ExplainFormat::Text => print!("{}", render_text(&explanation)),
        ExplainFormat::Json => match serde_json::to_string_pretty(&explanation) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    if explanation.matched() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let r = ExplainRequest::parse("get", "http://Api.Example.com:8080/a/b?x=1#frag", &[])
            .expect("parses");
        assert_eq!(r.method, Method::GET);
        assert_eq!(r.scheme, "http");
        assert_eq!(r.authority, "Api.Example.com:8080");
        assert_eq!(r.host_without_port(), "api.example.com");
        assert_eq!(r.path, "/a/b");
        assert_eq!(r.query.as_deref(), Some("x=1"));

        let r =
            ExplainRequest::parse("GET", "https://h?q", &["Host: other:1".into()]).expect("parses");
        assert_eq!(r.path, "/");
        assert_eq!(r.query.as_deref(), Some("q"));
        assert_eq!(r.authority, "other:1");

        assert!(ExplainRequest::parse("GET", "ftp://h/", &[]).is_err());
        assert!(ExplainRequest::parse("GET", "https:///x", &[]).is_err());
        assert!(ExplainRequest::parse("GET", "https://h/", &["nocolon".into()]).is_err());
        assert!(ExplainRequest::parse("G E T", "https://h/", &[]).is_err());
    }

    #[test]
    fn prefix_replacement_joins_with_one_slash() {
        assert_eq!(replace_prefix("/new", "/x"), "/new/x");
        assert_eq!(replace_prefix("/new/", "/x"), "/new/x");
        assert_eq!(replace_prefix("/", "/x"), "/x");
        assert_eq!(replace_prefix("/", ""), "/");
        assert_eq!(replace_prefix("/new", ""), "/new");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(250), "250ms");
        assert_eq!(duration(1500), "1.5s");
        assert_eq!(duration(30_000), "30s");
        assert_eq!(duration(60_000), "1m");
        assert_eq!(duration(7_200_000), "2h");
    }

    #[test]
    fn close_hosts_share_a_parent_or_are_near() {
        let known = vec![
            "api.example.com".to_string(),
            "*.example.com".to_string(),
            "shop.other.org".to_string(),
        ];
        let close = close_hosts("apj.example.com", &known);
        assert_eq!(close.first().map(String::as_str), Some("api.example.com"));
        assert!(!close.contains(&"shop.other.org".to_string()));
        assert!(close_hosts("nothing.like.it", &known).is_empty());
    }
}
