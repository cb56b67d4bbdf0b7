//! Route matching: from a request's host, path, method, headers, query and
//! device class to the snapshot [`Route`] that serves it.
//!
//! The [`Router`] is built from a [`Snapshot`] off the request path
//! ([`Router::build`]), with every regex compiled, every header name parsed
//! and every host placed in a hash table. On the request path
//! [`Router::find`] does no allocation unless a route with query conditions
//! is examined (the query string is then parsed once, lazily).
//!
//! ```text
//! RequestView ──► normalize host (lowercase, no port, no trailing dot)
//!                   │
//!                   ├─ exact host table ─────────────┐  O(1)
//!                   └─ wildcard table, one lookup  ──┤  O(labels)
//!                      per suffix, longest first     │
//!                                                    ▼
//!                                           VirtualHostEntry
//!                                                    │
//!       candidates (all routes, or for large vhosts  │
//!       the path index: exact path, each segment     │
//!       prefix, regex and `/` routes, merged back    │
//!       into precedence order)                       ▼
//!                              first route whose conditions all hold
//!                              (path, method, device, headers, query)
//! ```
//!
//! Semantics (Gateway API HTTPRoute):
//! - Routes of a virtual host are already in precedence order (the compiler
//!   sorts them); the first that matches wins.
//! - `*.example.com` matches one or more labels in front of `example.com`,
//!   never `example.com` itself. An exact host beats any wildcard; a longer
//!   wildcard suffix beats a shorter one.
//! - Path prefixes match segment-wise: `/api` matches `/api`, `/api/` and
//!   `/api/x`, not `/apix`. A trailing slash on the prefix is ignored
//!   (`/api/` behaves as `/api`); `/` matches every path.
//! - Regular expressions (paths, header and query values) must match the
//!   whole value.
//! - Header names are case-insensitive, values case-sensitive; when a header
//!   is repeated, any one of its values may match. Query parameter names and
//!   values are compared after percent-decoding (and `+` as space); when a
//!   parameter is repeated, any one of its values may match.
//!
//! Two small pieces are written by hand rather than taken from a crate: the
//! FxHash-style hasher for the host and path tables (keys come from the
//! snapshot, not from clients, so a keyed hash buys nothing and costs a few
//! nanoseconds per lookup), and query-string percent-decoding (a dozen
//! lines, borrowing when nothing needs decoding).

use crds::DeviceClass;
/// The `http` crate, re-exported because [`RequestView`] is made of its
/// types (callers need not depend on the same version themselves).
pub use http;
use http::header::HeaderName;
use http::{HeaderMap, Method};
use regex::RegexBuilder;
use snapshot::model::{PathMatcher, Route, RouteId, ValueMatch, ValueMatcher};
use snapshot::Snapshot;
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Compiled size limit of one regular expression.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Longest host name considered (DNS names are at most 253 bytes; the rest
/// leaves room for a port). Longer hosts match nothing.
pub const MAX_HOST_LEN: usize = 262;

/// Query parameters parsed per request; the rest are ignored for matching.
pub const MAX_QUERY_PARAMS: usize = 256;

/// Virtual hosts with at least this many routes get a path index.
const INDEX_MIN_ROUTES: usize = 8;

/// Candidate lists merged by an indexed lookup before falling back to a
/// full scan (one per matching path prefix, plus exact and always-checked).
const MAX_CANDIDATE_LISTS: usize = 16;

/// Why a snapshot cannot be turned into a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A regular expression does not compile (or exceeds the size limit).
    #[error("route {route}: {field}: invalid regular expression: {source}")]
    Regex {
        /// The route, as `namespace/name rule match-index`.
        route: String,
        /// Which condition holds the expression.
        field: String,
        /// The compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// A header name is not a valid HTTP header name.
    #[error("route {route}: header {name:?} is not a valid header name")]
    HeaderName {
        /// The route.
        route: String,
        /// The offending name.
        name: String,
    },
    /// A method is not a valid HTTP method token.
    #[error("route {route}: method {method:?} is not a valid HTTP method")]
    Method {
        /// The route.
        route: String,
        /// The offending method.
        method: String,
    },
    /// A virtual host name is empty or a malformed wildcard.
    #[error("virtual host {0:?} is not a valid host name")]
    Host(String),
    /// Two virtual hosts have the same name.
    #[error("virtual host {0:?} appears twice")]
    DuplicateHost(String),
    /// A virtual host has more routes than the router can index.
    #[error("virtual host {0:?} has too many routes")]
    TooManyRoutes(String),
}

/// The parts of a request the router looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// `Host` header or `:authority` (any case, port allowed).
    pub host: &'a str,
    /// Path, without the query.
    pub path: &'a str,
    /// Query string without the `?`, if any.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The client's device class.
    pub device: DeviceClass,
}

/// The outcome of [`Router::find`].
#[derive(Debug)]
pub enum Match<'r> {
    /// A route matched.
    Found(RouteMatch<'r>),
    /// No virtual host serves the request's host.
    NoHost,
    /// The host has a virtual host, but none of its routes matched.
    NoRoute {
        /// The virtual host's name (`*.suffix` for a wildcard).
        host: &'r str,
    },
}

impl<'r> Match<'r> {
    /// The matched route, if any.
    pub fn found(&self) -> Option<&RouteMatch<'r>> {
        match self {
            Match::Found(m) => Some(m),
            _ => None,
        }
    }
}

/// A successful match.
#[derive(Clone, Copy, Debug)]
pub struct RouteMatch<'r> {
    /// The virtual host's name.
    pub host: &'r str,
    /// The route.
    pub entry: &'r RouteEntry,
    /// Bytes of the request path matched by a `Prefix` matcher, without its
    /// trailing slash (0 for `/`); the whole path's length for `Exact` and
    /// `Regex`. `path[prefix_len..]` is always empty or starts with `/`,
    /// which is what a `ReplacePrefix` rewrite appends to its replacement.
    pub prefix_len: usize,
}

/// The first condition of a route that a request fails, for `explain` and
/// debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The path condition.
    Path,
    /// The method is not among the route's methods.
    Method,
    /// The device class is not among the route's devices.
    Device,
    /// The header condition at this index of `matcher.headers`.
    Header(usize),
    /// The query condition at this index of `matcher.query`.
    Query(usize),
}

/// A routing table built from a snapshot.
#[derive(Debug)]
pub struct Router {
    vhosts: Vec<VirtualHostEntry>,
    exact_hosts: FxMap<Box<str>, usize>,
    /// Keyed by the suffix after `*.`.
    wildcard_hosts: FxMap<Box<str>, usize>,
    route_count: usize,
}

/// One virtual host: its name and routes, ready for matching.
#[derive(Debug)]
pub struct VirtualHostEntry {
    hostname: Box<str>,
    routes: Vec<RouteEntry>,
    index: Option<PathIndex>,
}

/// One route, with its conditions compiled.
#[derive(Debug)]
pub struct RouteEntry {
    index: usize,
    /// Position across all virtual hosts, in snapshot order (for per-route
    /// state kept outside the router).
    global_index: usize,
    /// Boxed so the matching fields of neighbouring routes share cache
    /// lines.
    route: Box<Route>,
    path: PathCond,
    methods: Box<[Method]>,
    /// Bit `1 << class` for each allowed class; 0 means any.
    devices: u8,
    headers: Box<[HeaderCond]>,
    query: Box<[QueryCond]>,
}

#[derive(Debug)]
enum PathCond {
    Exact(Box<str>),
    /// Without trailing slashes; empty for `/` (matches every path).
    Prefix(Box<str>),
    Regex(regex::Regex),
}

#[derive(Debug)]
struct HeaderCond {
    name: HeaderName,
    value: ValueCond,
}

#[derive(Debug)]
struct QueryCond {
    name: Box<[u8]>,
    value: ValueCond,
}

#[derive(Debug)]
enum ValueCond {
    Exact(Box<[u8]>),
    Regex(regex::bytes::Regex),
    Present,
}

/// Per-vhost index that narrows the routes to check without changing which
/// one wins: every route is in exactly one list, lists hold route indices in
/// ascending (precedence) order, and the lists that can match a path are
/// merged back into that order.
#[derive(Debug)]
struct PathIndex {
    /// Routes with an `Exact` path, by path.
    exact: FxMap<Box<str>, Box<[u32]>>,
    /// Routes with a non-root `Prefix`, by normalized prefix.
    prefix: FxMap<Box<str>, Box<[u32]>>,
    /// Routes that every path may match: `Regex` and prefix `/`.
    always: Box<[u32]>,
    /// Longest key in `prefix`: longer path prefixes need no lookup.
    max_prefix_len: usize,
}

impl Router {
    /// Builds the routing table. Fails, naming the route, when a regex,
    /// header name or method is invalid, and on malformed or duplicate host
    /// names.
    pub fn build(snapshot: &Snapshot) -> Result<Router, RouterError> {
        let mut vhosts = Vec::with_capacity(snapshot.virtual_hosts.len());
        let mut exact_hosts = FxMap::default();
        let mut wildcard_hosts = FxMap::default();
        let mut route_count = 0;
        for vhost in &snapshot.virtual_hosts {
            let hostname = vhost.hostname.to_ascii_lowercase();
            let slot = vhosts.len();
            let (table, key) = match hostname.strip_prefix("*.") {
                Some(suffix) => (&mut wildcard_hosts, suffix),
                None => (&mut exact_hosts, hostname.as_str()),
            };
            if key.is_empty()
                || key.contains('*')
                || key.starts_with('.')
                || key.ends_with('.')
                || key.contains("..")
                || key.contains(':')
            {
                return Err(RouterError::Host(vhost.hostname.clone()));
            }
            if table.insert(Box::from(key), slot).is_some() {
                return Err(RouterError::DuplicateHost(vhost.hostname.clone()));
            }
            if u32::try_from(vhost.routes.len()).is_err() {
                return Err(RouterError::TooManyRoutes(vhost.hostname.clone()));
            }
            let routes = vhost
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    RouteEntry::build(i, r).map(|mut entry| {
                        entry.global_index = route_count + i;
                        entry
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            route_count += routes.len();
            let index = (routes.len() >= INDEX_MIN_ROUTES).then(|| PathIndex::build(&routes));
            vhosts.push(VirtualHostEntry {
                hostname: hostname.into_boxed_str(),
                routes,
                index,
            });
        }
        Ok(Router {
            vhosts,
            exact_hosts,
            wildcard_hosts,
            route_count,
        })
    }

    /// Finds the route for a request.
    pub fn find(&self, req: &RequestView<'_>) -> Match<'_> {
        let Some(vhost) = self.vhost_for(req.host) else {
            return Match::NoHost;
        };
        match vhost.find(req) {
            Some((entry, prefix_len)) => Match::Found(RouteMatch {
                host: &vhost.hostname,
                entry,
                prefix_len,
            }),
            None => Match::NoRoute {
                host: &vhost.hostname,
            },
        }
    }

    /// The virtual host that serves a raw `Host` value (normalized here).
    pub fn vhost_for(&self, raw_host: &str) -> Option<&VirtualHostEntry> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = normalize_host_into(raw_host, &mut buf)?;
        if let Some(&i) = self.exact_hosts.get(host) {
            return self.vhosts.get(i);
        }
        // Each suffix after a dot, longest (most specific) first. A leading
        // dot would mean an empty first label, which no wildcard matches.
        for (i, b) in host.bytes().enumerate() {
            if b == b'.' && i > 0 {
                if let Some(&v) = self.wildcard_hosts.get(&host[i + 1..]) {
                    return self.vhosts.get(v);
                }
            }
        }
        None
    }

    /// All virtual hosts, in snapshot order.
    pub fn vhosts(&self) -> &[VirtualHostEntry] {
        &self.vhosts
    }

    /// Number of routes over all virtual hosts.
    pub fn route_count(&self) -> usize {
        self.route_count
    }
}

impl VirtualHostEntry {
    /// The host name (`*.suffix` for a wildcard), lowercase.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The routes in precedence order.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    fn find(&self, req: &RequestView<'_>) -> Option<(&RouteEntry, usize)> {
        let mut query = LazyQuery::new(req.query);
        if let Some(index) = &self.index {
            if let Some(found) = self.find_indexed(index, req, &mut query) {
                return found;
            }
        }
        self.routes
            .iter()
            .find_map(|r| r.check_with(req, &mut query).ok().map(|len| (r, len)))
    }

    /// `Some(result)` when the index answered; `None` when the path has too
    /// many candidate lists and the caller must scan everything.
    fn find_indexed<'s>(
        &'s self,
        index: &'s PathIndex,
        req: &RequestView<'_>,
        query: &mut LazyQuery<'_>,
    ) -> Option<Option<(&'s RouteEntry, usize)>> {
        let path = req.path;
        let mut lists: [&[u32]; MAX_CANDIDATE_LISTS] = [&[]; MAX_CANDIDATE_LISTS];
        let mut n = 0;
        let mut push = |list: &'s [u32]| -> bool {
            if list.is_empty() {
                return true;
            }
            match lists.get_mut(n) {
                Some(slot) => {
                    *slot = list;
                    n += 1;
                    true
                }
                None => false,
            }
        };
        if !push(&index.always) {
            return None;
        }
        if let Some(l) = index.exact.get(path) {
            if !push(l) {
                return None;
            }
        }
        if !index.prefix.is_empty() {
            for (i, b) in path.bytes().enumerate() {
                if i > index.max_prefix_len {
                    break;
                }
                if b == b'/' && i > 0 {
                    if let Some(l) = index.prefix.get(&path[..i]) {
                        if !push(l) {
                            return None;
                        }
                    }
                }
            }
            if path.len() <= index.max_prefix_len {
                if let Some(l) = index.prefix.get(path) {
                    if !push(l) {
                        return None;
                    }
                }
            }
        }
        let lists = &lists[..n];
        let mut pos = [0usize; MAX_CANDIDATE_LISTS];
        loop {
            let mut best: Option<(u32, usize)> = None;
            for (k, list) in lists.iter().enumerate() {
                if let Some(&r) = list.get(pos[k]) {
                    if best.is_none_or(|(b, _)| r < b) {
                        best = Some((r, k));
                    }
                }
            }
            let Some((r, k)) = best else {
                return Some(None);
            };
            pos[k] += 1;
            if let Some(entry) = self.routes.get(r as usize) {
                if let Ok(len) = entry.check_with(req, query) {
                    return Some(Some((entry, len)));
                }
            }
        }
    }
}

impl RouteEntry {
    fn build(index: usize, route: &Route) -> Result<RouteEntry, RouterError> {
        let m = &route.matcher;
        let path = match &m.path {
            PathMatcher::Exact(p) => PathCond::Exact(p.as_str().into()),
            PathMatcher::Prefix(p) => PathCond::Prefix(p.trim_end_matches('/').into()),
            PathMatcher::Regex(re) => PathCond::Regex(
                RegexBuilder::new(&anchored(re))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|source| RouterError::Regex {
                        route: route_name(&route.id),
                        field: "path".to_string(),
                        source,
                    })?,
            ),
        };
        let methods = m
            .methods
            .iter()
            .map(|s| {
                Method::from_bytes(s.as_bytes()).map_err(|_| RouterError::Method {
                    route: route_name(&route.id),
                    method: s.clone(),
                })
            })
            .collect::<Result<Box<[_]>, _>>()?;
        let devices = m.devices.iter().fold(0u8, |bits, d| bits | device_bit(*d));
        let headers =
            m.headers
                .iter()
                .map(|h| {
                    let name = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| RouterError::HeaderName {
                            route: route_name(&route.id),
                            name: h.name.clone(),
                        })?;
                    Ok(HeaderCond {
                        name,
                        value: ValueCond::build(route, "header", h)?,
                    })
                })
                .collect::<Result<Box<[_]>, RouterError>>()?;
        let query = m
            .query
            .iter()
            .map(|q| {
                Ok(QueryCond {
                    name: q.name.as_bytes().into(),
                    value: ValueCond::build(route, "query", q)?,
                })
            })
            .collect::<Result<Box<[_]>, RouterError>>()?;
        Ok(RouteEntry {
            index,
            global_index: index,
            route: Box::new(route.clone()),
            path,
            methods,
            devices,
            headers,
            query,
        })
    }

    /// The snapshot route.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Position of the route in its virtual host (0 is checked first).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Position of the route across all virtual hosts, in the order of the
    /// snapshot's `virtual_hosts[].routes[]`.
    pub fn global_index(&self) -> usize {
        self.global_index
    }

    /// Checks every condition of this route against a request: the matched
    /// prefix length (see [`RouteMatch::prefix_len`]), or the first
    /// condition that fails, in the order path, method, device, headers,
    /// query.
    pub fn check(&self, req: &RequestView<'_>) -> Result<usize, Mismatch> {
        self.check_with(req, &mut LazyQuery::new(req.query))
    }

    fn check_with(
        &self,
        req: &RequestView<'_>,
        query: &mut LazyQuery<'_>,
    ) -> Result<usize, Mismatch> {
        let path = req.path;
        let prefix_len = match &self.path {
            PathCond::Exact(p) => (path == &**p).then_some(path.len()),
            PathCond::Prefix(p) => prefix_matches(p, path).then_some(p.len()),
            PathCond::Regex(re) => re.is_match(path).then_some(path.len()),
        }
        .ok_or(Mismatch::Path)?;
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return Err(Mismatch::Method);
        }
        if self.devices != 0 && self.devices & device_bit(req.device) == 0 {
            return Err(Mismatch::Device);
        }
        for (i, h) in self.headers.iter().enumerate() {
            if !req
                .headers
                .get_all(&h.name)
                .iter()
                .any(|v| h.value.matches(v.as_bytes()))
            {
                return Err(Mismatch::Header(i));
            }
        }
        if !self.query.is_empty() {
            let params = query.params();
            for (i, q) in self.query.iter().enumerate() {
                if !params
                    .iter()
                    .any(|(name, value)| **name == *q.name && q.value.matches(value))
                {
                    return Err(Mismatch::Query(i));
                }
            }
        }
        Ok(prefix_len)
    }
}

impl ValueCond {
    fn build(route: &Route, kind: &str, m: &ValueMatcher) -> Result<ValueCond, RouterError> {
        Ok(match &m.value {
            ValueMatch::Exact(v) => ValueCond::Exact(v.as_bytes().into()),
            ValueMatch::Present => ValueCond::Present,
            ValueMatch::Regex(re) => ValueCond::Regex(
                regex::bytes::RegexBuilder::new(&anchored(re))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|source| RouterError::Regex {
                        route: route_name(&route.id),
                        field: format!("{kind} {}", m.name),
                        source,
                    })?,
            ),
        })
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueCond::Exact(v) => **v == *value,
            ValueCond::Regex(re) => re.is_match(value),
            ValueCond::Present => true,
        }
    }
}

impl PathIndex {
    fn build(routes: &[RouteEntry]) -> PathIndex {
        let mut exact: FxMap<Box<str>, Vec<u32>> = FxMap::default();
        let mut prefix: FxMap<Box<str>, Vec<u32>> = FxMap::default();
        let mut always = Vec::new();
        // `Router::build` checked that route counts fit in u32.
        for (i, r) in routes.iter().enumerate() {
            let i = i as u32;
            match &r.path {
                PathCond::Exact(p) => exact.entry(p.clone()).or_default().push(i),
                PathCond::Prefix(p) if p.is_empty() => always.push(i),
                PathCond::Prefix(p) => prefix.entry(p.clone()).or_default().push(i),
                PathCond::Regex(_) => always.push(i),
            }
        }
        let max_prefix_len = prefix.keys().map(|k| k.len()).max().unwrap_or(0);
        let boxed = |m: FxMap<Box<str>, Vec<u32>>| {
            m.into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect()
        };
        PathIndex {
            exact: boxed(exact),
            prefix: boxed(prefix),
            always: always.into_boxed_slice(),
            max_prefix_len,
        }
    }
}

/// Segment-wise prefix match; `prefix` has no trailing slash, and is empty
/// for `/`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

fn device_bit(d: DeviceClass) -> u8 {
    match d {
        DeviceClass::Mobile => 1,
        DeviceClass::Tablet => 2,
        DeviceClass::Desktop => 4,
        DeviceClass::Bot => 8,
    }
}

/// `namespace/name rule match-index`, for error messages.
fn route_name(id: &RouteId) -> String {
    format!(
        "{}/{} {} match {}",
        id.namespace, id.name, id.rule, id.match_index
    )
}

/// Normalizes a `Host` value: ASCII lowercase, port removed, one trailing
/// dot removed; IPv6 literals keep their brackets (`[::1]:8080` ->
/// `[::1]`). Returns `None` for empty or overlong hosts.
pub fn normalize_host(raw: &str) -> Option<String> {
    let mut buf = [0u8; MAX_HOST_LEN];
    normalize_host_into(raw, &mut buf).map(str::to_string)
}

fn normalize_host_into<'a>(raw: &'a str, buf: &'a mut [u8; MAX_HOST_LEN]) -> Option<&'a str> {
    // The common case, a host the proxy already lowercased and stripped of
    // its port and final dot: returned as it is, not copied.
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    if !raw.is_empty() && raw.len() <= MAX_HOST_LEN && !raw.ends_with('.') && raw.bytes().all(plain)
    {
        return Some(raw);
    }
    let raw = raw.trim_matches(|c: char| c == ' ' || c == '\t');
    let host = if raw.starts_with('[') {
        let end = raw.find(']')?;
        let (host, rest) = raw.split_at(end + 1);
        if !(rest.is_empty() || is_port(rest)) {
            return None;
        }
        host
    } else {
        match raw.rfind(':') {
            // One colon: host and port. Several: a bare IPv6 address.
            Some(i) if !raw[..i].contains(':') => {
                if !is_port(&raw[i..]) {
                    return None;
                }
                &raw[..i]
            }
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    // ASCII lowercasing keeps UTF-8 valid.
    std::str::from_utf8(out).ok()
}

/// `:` followed by up to five digits (an empty port is allowed, as in
/// RFC 3986).
fn is_port(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A decoded query parameter: (name, value).
type QueryParam<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// The query string, parsed on first use.
struct LazyQuery<'a> {
    raw: Option<&'a str>,
    parsed: Option<Vec<QueryParam<'a>>>,
}

impl<'a> LazyQuery<'a> {
    fn new(raw: Option<&'a str>) -> Self {
        LazyQuery { raw, parsed: None }
    }

    fn params(&mut self) -> &[QueryParam<'a>] {
        let raw = self.raw;
        self.parsed
            .get_or_insert_with(|| parse_query(raw.unwrap_or("")))
    }
}

/// Splits `a=1&b=2` into decoded (name, value) pairs; a parameter without
/// `=` has an empty value. At most [`MAX_QUERY_PARAMS`] pairs.
fn parse_query(raw: &str) -> Vec<QueryParam<'_>> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_QUERY_PARAMS)
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; a `%` not followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&h| hex_val(h)),
                bytes.get(i + 2).and_then(|&l| hex_val(l)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A fast, unkeyed hasher in the style of rustc's FxHash, with a
/// multiply-fold finish so the low bits hashbrown uses are well mixed. Only
/// snapshot-controlled keys are stored, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
const FX_FOLD: u64 = 0x9e_37_79_b9_7f_4a_7c_15;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let m = u128::from(self.hash) * u128::from(FX_FOLD);
        (m as u64) ^ ((m >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use snapshot::model::{Action, DirectResponse, Matcher, VirtualHost};

    fn route(name: &str, path: PathMatcher) -> Route {
        Route {
            id: RouteId {
                namespace: "default".into(),
                name: name.into(),
                rule: "rule-0".into(),
                match_index: 0,
            },
            matcher: Matcher {
                path,
                methods: vec![],
                headers: vec![],
                query: vec![],
                devices: vec![],
            },
            https_redirect: false,
            action: Action::DirectResponse(DirectResponse {
                status: 200,
                body: name.into(),
                content_type: "text/plain".into(),
            }),
            request_headers: None,
            response_headers: None,
            url_rewrite: None,
            transform: None,
            cache: None,
            auth: None,
            rate_limits: vec![],
        }
    }

    fn exact(p: &str) -> PathMatcher {
        PathMatcher::Exact(p.into())
    }
    fn prefix(p: &str) -> PathMatcher {
        PathMatcher::Prefix(p.into())
    }
    fn regex(p: &str) -> PathMatcher {
        PathMatcher::Regex(p.into())
    }

    fn snapshot(vhosts: Vec<(&str, Vec<Route>)>) -> Snapshot {
        Snapshot {
            virtual_hosts: vhosts
                .into_iter()
                .map(|(h, routes)| VirtualHost {
                    hostname: h.into(),
                    routes,
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    fn router(vhosts: Vec<(&str, Vec<Route>)>) -> Router {
        match Router::build(&snapshot(vhosts)) {
            Ok(r) => r,
            Err(e) => panic!("build failed: {e}"),
        }
    }

    struct Req {
        host: String,
        path: String,
        query: Option<String>,
        method: Method,
        headers: HeaderMap,
        device: DeviceClass,
    }

    fn req(host: &str, path: &str) -> Req {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        Req {
            host: host.into(),
            path,
            query,
            method: Method::GET,
            headers: HeaderMap::new(),
            device: DeviceClass::Desktop,
        }
    }

    impl Req {
        fn method(mut self, m: Method) -> Self {
            self.method = m;
            self
        }
        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            self
        }
        fn device(mut self, d: DeviceClass) -> Self {
            self.device = d;
            self
        }
        fn view(&self) -> RequestView<'_> {
            RequestView {
                host: &self.host,
                path: &self.path,
                query: self.query.as_deref(),
                method: &self.method,
                headers: &self.headers,
                device: self.device,
            }
        }
    }

    /// The name of the matched route, or "" (NoRoute) / "-" (NoHost).
    fn hit(r: &Router, q: &Req) -> String {
        match r.find(&q.view()) {
            Match::Found(m) => m.entry.route().id.name.clone(),
            Match::NoRoute { .. } => String::new(),
            Match::NoHost => "-".into(),
        }
    }

    fn one(path: PathMatcher) -> Router {
        router(vec![("example.com", vec![route("r", path)])])
    }

    #[test]
    fn exact_path_matches_only_itself() {
        let r = one(exact("/a/b"));
        assert_eq!(hit(&r, &req("example.com", "/a/b")), "r");
        assert_eq!(hit(&r, &req("example.com", "/a/b?x=1")), "r");
        for p in ["/a/b/", "/a/bc", "/a", "/A/b", "/a/b/c"] {
            assert_eq!(hit(&r, &req("example.com", p)), "", "{p}");
        }
    }

    #[test]
    fn prefix_matches_segment_wise() {
        for pfx in ["/api", "/api/", "/api//"] {
            let r = one(prefix(pfx));
            for p in ["/api", "/api/", "/api/x", "/api/x/y"] {
                assert_eq!(hit(&r, &req("example.com", p)), "r", "{pfx} {p}");
            }
            for p in ["/apix", "/ap", "/", "/x/api", "/API"] {
                assert_eq!(hit(&r, &req("example.com", p)), "", "{pfx} {p}");
            }
        }
    }

    #[test]
    fn prefix_len_supports_replace_prefix() {
        let r = one(prefix("/api/"));
        let q = req("example.com", "/api/v1");
        let Match::Found(m) = r.find(&q.view()) else {
            panic!("no match")
        };
        assert_eq!(m.prefix_len, 4);
        assert_eq!(&q.path[m.prefix_len..], "/v1");

        let r = one(prefix("/"));
        let q = req("example.com", "/anything/at/all");
        let Match::Found(m) = r.find(&q.view()) else {
            panic!("no match")
        };
        assert_eq!(m.prefix_len, 0);

        let r = one(exact("/e"));
        let q = req("example.com", "/e");
        assert_eq!(r.find(&q.view()).found().map(|m| m.prefix_len), Some(2));
    }

    #[test]
    fn root_prefix_matches_everything() {
        let r = one(prefix("/"));
        for p in ["/", "/a", "/a/b/", "", "*"] {
            assert_eq!(hit(&r, &req("example.com", p)), "r", "{p}");
        }
    }

    #[test]
    fn regex_is_anchored_to_the_whole_path() {
        let r = one(regex("/v[0-9]+/items"));
        assert_eq!(hit(&r, &req("example.com", "/v12/items")), "r");
        for p in ["/v1/items/x", "/x/v1/items", "/v/items"] {
            assert_eq!(hit(&r, &req("example.com", p)), "", "{p}");
        }
        // Alternation stays inside the anchors.
        let r = one(regex("/a|/b"));
        assert_eq!(hit(&r, &req("example.com", "/b")), "r");
        assert_eq!(hit(&r, &req("example.com", "/ab")), "");
        assert_eq!(hit(&r, &req("example.com", "/b/c")), "");
    }

    #[test]
    fn methods_restrict() {
        let mut rt = route("r", prefix("/"));
        rt.matcher.methods = vec!["GET".into(), "PURGE".into()];
        let r = router(vec![("example.com", vec![rt])]);
        assert_eq!(hit(&r, &req("example.com", "/")), "r");
        let purge = Method::from_bytes(b"PURGE").unwrap_or(Method::GET);
        assert_eq!(hit(&r, &req("example.com", "/").method(purge)), "r");
        assert_eq!(hit(&r, &req("example.com", "/").method(Method::POST)), "");
    }

    fn header_route(name: &str, value: ValueMatch) -> Router {
        let mut rt = route("r", prefix("/"));
        rt.matcher.headers = vec![ValueMatcher {
            name: name.into(),
            value,
        }];
        router(vec![("example.com", vec![rt])])
    }

    #[test]
    fn headers_exact_case_insensitive_name_case_sensitive_value() {
        let r = header_route("X-Env", ValueMatch::Exact("canary".into()));
        assert_eq!(
            hit(&r, &req("example.com", "/").header("x-env", "canary")),
            "r"
        );
        assert_eq!(
            hit(&r, &req("example.com", "/").header("x-env", "Canary")),
            ""
        );
        assert_eq!(hit(&r, &req("example.com", "/")), "");
        // Any of several values may match.
        let q = req("example.com", "/")
            .header("x-env", "prod")
            .header("x-env", "canary");
        assert_eq!(hit(&r, &q), "r");
    }

    #[test]
    fn headers_regex_and_present() {
        let r = header_route("x-version", ValueMatch::Regex("v[12]".into()));
        assert_eq!(
            hit(&r, &req("example.com", "/").header("x-version", "v2")),
            "r"
        );
        assert_eq!(
            hit(&r, &req("example.com", "/").header("x-version", "v21")),
            ""
        );
        let r = header_route("x-debug", ValueMatch::Present);
        assert_eq!(hit(&r, &req("example.com", "/").header("x-debug", "")), "r");
        assert_eq!(hit(&r, &req("example.com", "/")), "");
    }

    fn query_route(name: &str, value: ValueMatch) -> Router {
        let mut rt = route("r", prefix("/"));
        rt.matcher.query = vec![ValueMatcher {
            name: name.into(),
            value,
        }];
        router(vec![("example.com", vec![rt])])
    }

    #[test]
    fn query_params_are_decoded_and_any_value_may_match() {
        let r = query_route("q", ValueMatch::Exact("a b/c".into()));
        assert_eq!(hit(&r, &req("example.com", "/?q=a%20b%2Fc")), "r");
        assert_eq!(hit(&r, &req("example.com", "/?x=1&q=a+b%2fc")), "r");
        assert_eq!(hit(&r, &req("example.com", "/?q=nope&q=a+b/c")), "r");
        assert_eq!(hit(&r, &req("example.com", "/?q=a")), "");
        assert_eq!(hit(&r, &req("example.com", "/?Q=a+b/c")), "");
        assert_eq!(hit(&r, &req("example.com", "/")), "");
        let r = query_route("page", ValueMatch::Regex("[0-9]+".into()));
        assert_eq!(hit(&r, &req("example.com", "/?page=12")), "r");
        assert_eq!(hit(&r, &req("example.com", "/?page=12a")), "");
        let r = query_route("debug", ValueMatch::Present);
        assert_eq!(hit(&r, &req("example.com", "/?debug")), "r");
        assert_eq!(hit(&r, &req("example.com", "/?debug=")), "r");
        assert_eq!(hit(&r, &req("example.com", "/?nodebug")), "");
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(&*percent_decode("a%2"), b"a%2");
        assert_eq!(&*percent_decode("%zz%41"), b"%zzA");
        assert_eq!(&*percent_decode("%"), b"%");
        assert!(matches!(percent_decode("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn devices_restrict() {
        let mut m = route("mobile", prefix("/"));
        m.matcher.devices = vec![DeviceClass::Mobile, DeviceClass::Tablet];
        let r = router(vec![("example.com", vec![m, route("other", prefix("/"))])]);
        let q = |d| req("example.com", "/").device(d);
        assert_eq!(hit(&r, &q(DeviceClass::Mobile)), "mobile");
        assert_eq!(hit(&r, &q(DeviceClass::Tablet)), "mobile");
        assert_eq!(hit(&r, &q(DeviceClass::Desktop)), "other");
        assert_eq!(hit(&r, &q(DeviceClass::Bot)), "other");
    }

    #[test]
    fn first_route_in_order_wins() {
        let r = router(vec![(
            "example.com",
            vec![
                route("first", prefix("/api")),
                route("second", exact("/api/x")),
            ],
        )]);
        // The compiler's order is trusted, even against specificity.
        assert_eq!(hit(&r, &req("example.com", "/api/x")), "first");
    }

    #[test]
    fn wildcard_hosts_follow_gateway_api() {
        let r = router(vec![
            ("*.example.com", vec![route("wild", prefix("/"))]),
            ("*.a.example.com", vec![route("wild-a", prefix("/"))]),
            ("b.a.example.com", vec![route("exact", prefix("/"))]),
        ]);
        assert_eq!(hit(&r, &req("x.example.com", "/")), "wild");
        assert_eq!(hit(&r, &req("x.y.example.com", "/")), "wild");
        assert_eq!(hit(&r, &req("a.example.com", "/")), "wild");
        assert_eq!(hit(&r, &req("c.a.example.com", "/")), "wild-a");
        assert_eq!(hit(&r, &req("d.c.a.example.com", "/")), "wild-a");
        assert_eq!(hit(&r, &req("b.a.example.com", "/")), "exact");
        assert_eq!(hit(&r, &req("example.com", "/")), "-");
        assert_eq!(hit(&r, &req(".example.com", "/")), "-");
        assert_eq!(hit(&r, &req("xexample.com", "/")), "-");
        assert_eq!(hit(&r, &req("com", "/")), "-");
    }

    #[test]
    fn hosts_are_normalized() {
        let r = router(vec![("example.com", vec![route("r", prefix("/"))])]);
        for h in [
            "example.com",
            "EXAMPLE.com",
            "example.com:8443",
            "example.com.",
            "Example.Com.:80",
            "example.com:",
        ] {
            assert_eq!(hit(&r, &req(h, "/")), "r", "{h}");
        }
        assert_eq!(hit(&r, &req("[::1]:8080", "/")), "-");
        for h in [
            "",
            "example.com:abc",
            "example.com:123456",
            "[::1",
            "other.com",
            ":80",
        ] {
            assert_eq!(hit(&r, &req(h, "/")), "-", "{h}");
        }
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("[::1]x"), None);
        assert_eq!(normalize_host("::1").as_deref(), Some("::1"));
        assert_eq!(normalize_host(&"a".repeat(300)), None);
    }

    #[test]
    fn no_host_and_no_route_are_distinguished() {
        let r = router(vec![("*.example.com", vec![route("r", exact("/x"))])]);
        assert!(matches!(
            r.find(&req("other.com", "/x").view()),
            Match::NoHost
        ));
        match r.find(&req("a.example.com", "/y").view()) {
            Match::NoRoute { host } => assert_eq!(host, "*.example.com"),
            other => panic!("unexpected {other:?}"),
        }
        let empty = router(vec![]);
        assert!(matches!(empty.find(&req("a", "/").view()), Match::NoHost));
    }

    #[test]
    fn check_reports_the_first_failing_condition() {
        let mut rt = route("r", prefix("/api"));
        rt.matcher.methods = vec!["POST".into()];
        rt.matcher.devices = vec![DeviceClass::Mobile];
        rt.matcher.headers = vec![
            ValueMatcher {
                name: "a".into(),
                value: ValueMatch::Present,
            },
            ValueMatcher {
                name: "b".into(),
                value: ValueMatch::Present,
            },
        ];
        rt.matcher.query = vec![ValueMatcher {
            name: "q".into(),
            value: ValueMatch::Present,
        }];
        let r = router(vec![("h", vec![rt])]);
        let e = &r.vhosts()[0].routes()[0];
        let q = req("h", "/x");
        assert_eq!(e.check(&q.view()), Err(Mismatch::Path));
        let q = req("h", "/api");
        assert_eq!(e.check(&q.view()), Err(Mismatch::Method));
        let q = req("h", "/api").method(Method::POST);
        assert_eq!(e.check(&q.view()), Err(Mismatch::Device));
        let q = q.device(DeviceClass::Mobile);
        assert_eq!(e.check(&q.view()), Err(Mismatch::Header(0)));
        let q = q.header("a", "1");
        assert_eq!(e.check(&q.view()), Err(Mismatch::Header(1)));
        let q = q.header("b", "1");
        assert_eq!(e.check(&q.view()), Err(Mismatch::Query(0)));
        let mut q = q;
        q.query = Some("q=1".into());
        assert_eq!(e.check(&q.view()), Ok(4));
    }

    #[test]
    fn build_errors_name_the_route() {
        let err = Router::build(&snapshot(vec![(
            "h",
            vec![route("bad", regex("(unclosed"))],
        )]));
        let msg = err
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("default/bad rule-0 match 0"), "{msg}");
        assert!(msg.contains("path"), "{msg}");

        // Larger than the size limit.
        let err = Router::build(&snapshot(vec![(
            "h",
            vec![route("big", regex("a{1000}{1000}"))],
        )]));
        assert!(matches!(err, Err(RouterError::Regex { .. })));

        let mut rt = route("hdr", prefix("/"));
        rt.matcher.headers = vec![ValueMatcher {
            name: "bad header".into(),
            value: ValueMatch::Present,
        }];
        let err = Router::build(&snapshot(vec![("h", vec![rt])]));
        assert!(matches!(err, Err(RouterError::HeaderName { .. })));

        let mut rt = route("q", prefix("/"));
        rt.matcher.query = vec![ValueMatcher {
            name: "q".into(),
            value: ValueMatch::Regex("[".into()),
        }];
        let msg = Router::build(&snapshot(vec![("h", vec![rt])]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("query q"), "{msg}");

        let dup = Router::build(&snapshot(vec![("h", vec![]), ("H", vec![])]));
        assert!(matches!(dup, Err(RouterError::DuplicateHost(_))));
        for bad in ["", "*.", "*", "a.*.b", "a..b", "*.*.a"] {
            let r = Router::build(&snapshot(vec![(bad, vec![])]));
            assert!(matches!(r, Err(RouterError::Host(_))), "{bad}");
        }
    }

    #[test]
    fn indexed_vhost_keeps_precedence() {
        // Enough routes to build the index; the precedence order mixes kinds.
        let mut routes = vec![
            route("regex-first", regex("/api/v[0-9]/special")),
            route("exact", exact("/api/v1/items")),
            route("deep-prefix", prefix("/api/v1/")),
            route("prefix", prefix("/api")),
            route("root", prefix("/")),
        ];
        for i in 0..20 {
            routes.push(route(&format!("filler-{i}"), exact(&format!("/f/{i}"))));
        }
        routes.push(route("after-root", exact("/late")));
        let r = router(vec![("example.com", routes)]);
        assert!(r.vhosts()[0].index.is_some());
        let cases = [
            ("/api/v1/special", "regex-first"),
            ("/api/v1/items", "exact"),
            ("/api/v1/other", "deep-prefix"),
            ("/api/v1", "deep-prefix"),
            ("/api/v2", "prefix"),
            ("/api", "prefix"),
            ("/apix", "root"),
            ("/f/3", "root"),
            ("/late", "root"),
        ];
        for (p, want) in cases {
            assert_eq!(hit(&r, &req("example.com", p)), want, "{p}");
        }
        let r = router(vec![(
            "example.com",
            (0..20)
                .map(|i| route(&format!("r{i}"), exact(&format!("/x/{i}"))))
                .collect(),
        )]);
        assert_eq!(hit(&r, &req("example.com", "/x/7")), "r7");
        assert_eq!(hit(&r, &req("example.com", "/x/70")), "");
    }

    #[test]
    fn many_hosts_all_resolve() {
        let vhosts: Vec<(String, Vec<Route>)> = (0..1000)
            .map(|i| {
                (
                    format!("h{i}.example.com"),
                    vec![route(&format!("r{i}"), prefix("/"))],
                )
            })
            .collect();
        let r = router(
            vhosts
                .iter()
                .map(|(h, r)| (h.as_str(), r.clone()))
                .collect(),
        );
        for i in (0..1000).step_by(37) {
            assert_eq!(
                hit(&r, &req(&format!("H{i}.example.com:443"), "/")),
                format!("r{i}")
            );
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn seg() -> impl Strategy<Value = String> {
            prop_oneof![Just("a"), Just("b"), Just("ab"), Just("")].prop_map(str::to_string)
        }

        fn path() -> impl Strategy<Value = String> {
            (prop::collection::vec(seg(), 0..4), any::<bool>()).prop_map(|(segs, slash)| {
                let mut p = String::new();
                for s in segs {
                    p.push('/');
                    p.push_str(&s);
                }
                if slash || p.is_empty() {
                    p.push('/');
                }
                p
            })
        }

        fn matcher() -> impl Strategy<Value = (PathMatcher, bool)> {
            (0..3u8, path(), any::<bool>()).prop_map(|(kind, p, get_only)| {
                let m = match kind {
                    0 => PathMatcher::Exact(p),
                    1 => PathMatcher::Prefix(p),
                    _ => PathMatcher::Regex(format!("{}.*", regex::escape(&p))),
                };
                (m, get_only)
            })
        }

        proptest! {
            #[test]
            fn index_agrees_with_a_linear_scan(
                matchers in prop::collection::vec(matcher(), INDEX_MIN_ROUTES..40),
                paths in prop::collection::vec(path(), 1..20),
                post in any::<bool>(),
            ) {
                let routes: Vec<Route> = matchers
                    .into_iter()
                    .enumerate()
                    .map(|(i, (m, get_only))| {
                        let mut r = route(&format!("r{i}"), m);
                        if get_only {
                            r.matcher.methods = vec!["GET".into()];
                        }
                        r
                    })
                    .collect();
                let r = router(vec![("h", routes)]);
                let vhost = &r.vhosts()[0];
                prop_assert!(vhost.index.is_some());
                for p in paths {
                    let q = req("h", &p).method(if post { Method::POST } else { Method::GET });
                    let v = q.view();
                    let linear = vhost
                        .routes()
                        .iter()
                        .find_map(|e| e.check(&v).ok().map(|len| (e.index(), len)));
                    let indexed = vhost.find(&v).map(|(e, len)| (e.index(), len));
                    prop_assert_eq!(linear, indexed, "path {}", p);
                }
            }

            #[test]
            fn random_requests_never_panic(
                host in ".{0,300}",
                path in ".{0,200}",
                query in proptest::option::of(".{0,200}"),
                header in "[ -~]{0,50}",
            ) {
                let mut rt = route("r", prefix("/a"));
                rt.matcher.query = vec![ValueMatcher { name: "q".into(), value: ValueMatch::Regex("x.*".into()) }];
                rt.matcher.headers = vec![ValueMatcher { name: "h".into(), value: ValueMatch::Exact("v".into()) }];
                let mut routes = vec![rt];
                for i in 0..10 {
                    routes.push(route(&format!("p{i}"), prefix(&format!("/p/{i}"))));
                }
                routes.push(route("re", regex("/r/.+")));
                let r = router(vec![("*.example.com", routes.clone()), ("example.com", routes)]);
                let mut headers = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&header) {
                    headers.insert("h", v);
                }
                let view = RequestView {
                    host: &host,
                    path: &path,
                    query: query.as_deref(),
                    method: &Method::GET,
                    headers: &headers,
                    device: DeviceClass::Bot,
                };
                let _ = r.find(&view);
                let _ = normalize_host(&host);
                let _ = parse_query(&path);
            }
        }
    }
}
