//! ApiRoute -> one snapshot [`Route`] per (rule, match), plus the clusters
//! its backends need.
//!
//! Validation and compilation are one walk over the spec: every field is
//! checked where it is turned into model data, and every problem is
//! recorded with its field path. A route with any invalid field produces no
//! routes at all (the whole object is rejected, so that it can fall back to
//! its last accepted version as a whole). Unresolved references do not
//! reject the route: the backend keeps its place but its cluster is left
//! out of the snapshot (requests picked for it get 500).

use super::index::Index;
use super::names::{self, HttpUrl, Scheme};
use super::report::Findings;
use super::{
    AcceptedResource, AcceptedVersion, Meta, ObjectKey, Output, KIND_API_ROUTE,
    MAX_DIRECT_RESPONSE_BYTES, MAX_HOSTS_PER_ROUTE, MAX_MATCHES_PER_ROUTE, MAX_MATCHES_PER_RULE,
    MAX_REGEXES_PER_ROUTE, MAX_RULES_PER_ROUTE,
};
use crate::model::{
    Action, Aggregate, AggregatePart, CachePolicy, Cluster, DirectResponse, Endpoint, Forward,
    HashKey, HeaderChanges, JsonTransform, LoadBalancerPolicy, Matcher, OutlierPolicy, PathMatcher,
    PathRewrite, Redirect, RetryPolicy, Route, RouteId, Timeouts, UpstreamProtocol, UpstreamTls,
    UrlRewrite, ValueMatch, ValueMatcher, WeightedCluster,
};
use crds::route::{
    Backend, BackendProtocol, Filters, LoadBalancerType, PathMatchType, PathRewriteType, RetryOn,
    RouteMatch, RouteRule, ValueMatchType,
};
use crds::ApiRoute;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Default whole-request timeout.
pub(crate) const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default connect timeout.
pub(crate) const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default first retry backoff.
pub(crate) const DEFAULT_RETRY_BACKOFF_MS: u64 = 25;
/// Default retry budget.
pub(crate) const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// Default aggregate part timeout.
const DEFAULT_PART_TIMEOUT_MS: u64 = 5_000;
/// Prefix of the cluster name of a backend whose reference does not
/// resolve; no cluster in a snapshot has such a name.
pub(crate) const UNRESOLVED_PREFIX: &str = "unresolved:";
/// Largest backend weight.
const MAX_WEIGHT: u32 = 1_000_000;

/// An ApiRoute after compilation: what it serves (if anything) and what is
/// wrong with it.
pub(crate) struct CompiledRoute {
    pub(crate) meta: Meta,
    pub(crate) key: ObjectKey,
    /// Problems: the current version's invalid fields, and the served
    /// version's unresolved references.
    pub(crate) findings: Findings,
    /// What is served: the current version, or the last accepted one.
    pub(crate) served: Option<ServedRoute>,
    /// Set when the current version is invalid and an older one serves.
    pub(crate) fallback_generation: Option<i64>,
    /// Rule names of the current spec (for policy targets when nothing is
    /// served).
    pub(crate) current_rule_names: Vec<String>,
}

/// The compiled content of one version of an ApiRoute.
pub(crate) struct ServedRoute {
    pub(crate) generation: Option<i64>,
    /// Hosts, lowercase, deduplicated, in spec order.
    pub(crate) hosts: Vec<String>,
    pub(crate) allow_plain_http: bool,
    pub(crate) rule_names: Vec<String>,
    /// One per (rule, match).
    pub(crate) entries: Vec<RouteEntry>,
    /// Clusters by name (the same name always has the same content).
    pub(crate) clusters: BTreeMap<String, Cluster>,
}

/// One (rule, match) of a route, not yet placed in a virtual host.
pub(crate) struct RouteEntry {
    pub(crate) rule_index: usize,
    pub(crate) match_index: usize,
    pub(crate) route: Route,
}

/// Compiles every ApiRoute; statuses are written later, once conflicts are
/// known.
pub(crate) fn compile_routes(
    routes: &[ApiRoute],
    index: &Index<'_>,
    previous: Option<&BTreeMap<ObjectKey, AcceptedVersion>>,
    out: &mut Output,
) -> Vec<CompiledRoute> {
    let list = super::sorted_unique(routes, |r| &r.metadata);
    let mut compiled = Vec::with_capacity(list.len());
    for (meta, route) in list {
        let key = meta.key(KIND_API_ROUTE);
        let (mut findings, mut served) = compile_route(route, &meta, index);
        let current_rule_names = rule_names(&route.spec.rules);
        let mut fallback_generation = None;
        if findings.is_invalid() {
            served = None;
            findings.refs.clear();
            let last = previous
                .and_then(|p| p.get(&key))
                .filter(|v| v.uid == meta.uid);
            if let Some(version) = last {
                if let AcceptedResource::ApiRoute(old) = &version.resource {
                    let (old_findings, old_served) = compile_route(old, &meta, index);
                    if !old_findings.is_invalid() {
                        served = old_served.map(|mut s| {
                            s.generation = version.generation;
                            s
                        });
                        findings.refs = old_findings.refs;
                        fallback_generation = Some(version.generation.unwrap_or(0));
                        out.accepted.insert(key.clone(), version.clone());
                    }
                }
            }
        } else {
            out.accepted.insert(
                key.clone(),
                AcceptedVersion {
                    uid: meta.uid.clone(),
                    generation: meta.generation,
                    resource: AcceptedResource::ApiRoute(Box::new(route.clone())),
                },
            );
        }
        compiled.push(CompiledRoute {
            meta,
            key,
            findings,
            served,
            fallback_generation,
            current_rule_names,
        });
    }
    compiled
}

fn rule_names(rules: &[RouteRule]) -> Vec<String> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| r.name.clone().unwrap_or_else(|| format!("rule-{i}")))
        .collect()
}

/// Validates and compiles one version of an ApiRoute.
fn compile_route(
    route: &ApiRoute,
    meta: &Meta,
    index: &Index<'_>,
) -> (Findings, Option<ServedRoute>) {
    let spec = &route.spec;
    let mut f = Findings::default();
    let mut hosts: Vec<String> = Vec::new();
    if spec.hosts.is_empty() {
        f.invalid("spec.hosts", "Invalid", "at least one host is required");
    }
    if spec.hosts.len() > MAX_HOSTS_PER_ROUTE {
        f.invalid(
            "spec.hosts",
            "Invalid",
            format!("{} hosts; at most {MAX_HOSTS_PER_ROUTE}", spec.hosts.len()),
        );
    }
    for (i, host) in spec.hosts.iter().enumerate().take(MAX_HOSTS_PER_ROUTE) {
        match names::check_host(host) {
            Ok(()) => {
                if !hosts.contains(host) {
                    hosts.push(host.clone());
                }
            }
            Err(e) => f.invalid(format!("spec.hosts[{i}]"), "Invalid", e),
        }
    }
    if spec.rules.is_empty() {
        f.invalid("spec.rules", "Invalid", "at least one rule is required");
    }
    if spec.rules.len() > MAX_RULES_PER_ROUTE {
        f.invalid(
            "spec.rules",
            "Invalid",
            format!("{} rules; at most {MAX_RULES_PER_ROUTE}", spec.rules.len()),
        );
        return (f, None);
    }
    let total_matches: usize = spec.rules.iter().map(|r| r.matches.len().max(1)).sum();
    if total_matches > MAX_MATCHES_PER_ROUTE {
        f.invalid(
            "spec.rules",
            "Invalid",
            format!("{total_matches} matches in all rules; at most {MAX_MATCHES_PER_ROUTE}"),
        );
        return (f, None);
    }

    let names = rule_names(&spec.rules);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        if let Some(name) = &rule.name {
            if let Err(e) = names::check_label_name(name) {
                f.invalid(format!("spec.rules[{i}].name"), "Invalid", e);
            }
        }
        if let Some(first) = seen.insert(names[i].as_str(), i) {
            seen.insert(names[first].as_str(), first);
            f.invalid(
                format!("spec.rules[{i}].name"),
                "Invalid",
                format!(
                    "rule name {:?} is already used by rules[{first}]{}",
                    names[i],
                    if rule.name.is_none() {
                        " (rules without a name are called rule-N)"
                    } else {
                        ""
                    }
                ),
            );
        }
    }

    let mut ctx = RuleContext {
        namespace: &meta.namespace,
        name: &meta.name,
        index,
        findings: &mut f,
        regexes: 0,
        clusters: BTreeMap::new(),
    };
    let mut entries = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        ctx.compile_rule(i, &names[i], rule, &mut entries);
    }
    if ctx.regexes > MAX_REGEXES_PER_ROUTE {
        let n = ctx.regexes;
        ctx.findings.invalid(
            "spec.rules",
            "Invalid",
            format!("{n} regular expressions in all matches; at most {MAX_REGEXES_PER_ROUTE}"),
        );
    }
    let clusters = std::mem::take(&mut ctx.clusters);
    if f.is_invalid() {
        return (f, None);
    }
    (
        f,
        Some(ServedRoute {
            generation: meta.generation,
            hosts,
            allow_plain_http: spec.allow_plain_http,
            rule_names: names,
            entries,
            clusters,
        }),
    )
}

/// Settings that make a cluster distinct.
#[derive(Clone, Debug, PartialEq)]
struct ClusterSettings {
    load_balancer: LoadBalancerPolicy,
    outlier: Option<OutlierPolicy>,
    connect_timeout_ms: u64,
}

impl ClusterSettings {
    /// `""` for default settings, else `#` and 8 hex digits.
    fn suffix(&self, protocol: UpstreamProtocol) -> String {
        if self.load_balancer == LoadBalancerPolicy::RoundRobin
            && self.outlier.is_none()
            && self.connect_timeout_ms == DEFAULT_CONNECT_TIMEOUT_MS
            && protocol == UpstreamProtocol::Http1
        {
            return String::new();
        }
        let text = serde_json::to_string(&(
            protocol,
            &self.load_balancer,
            &self.outlier,
            self.connect_timeout_ms,
        ))
        .unwrap_or_default();
        let digest = Sha256::digest(text.as_bytes());
        format!("#{}", &hex::encode(digest)[..8])
    }
}

struct RuleContext<'a, 'i> {
    namespace: &'a str,
    name: &'a str,
    index: &'a Index<'i>,
    findings: &'a mut Findings,
    regexes: usize,
    clusters: BTreeMap<String, Cluster>,
}

impl RuleContext<'_, '_> {
    fn compile_rule(
        &mut self,
        i: usize,
        rule_name: &str,
        rule: &RouteRule,
        entries: &mut Vec<RouteEntry>,
    ) {
        let at = format!("spec.rules[{i}]");
        if rule.matches.len() > MAX_MATCHES_PER_RULE {
            self.findings.invalid(
                format!("{at}.matches"),
                "Invalid",
                format!(
                    "{} matches; at most {MAX_MATCHES_PER_RULE}",
                    rule.matches.len()
                ),
            );
            return;
        }
        let matchers: Vec<Option<Matcher>> = if rule.matches.is_empty() {
            vec![Some(Matcher {
                path: PathMatcher::Prefix("/".to_owned()),
                methods: Vec::new(),
                headers: Vec::new(),
                query: Vec::new(),
                devices: Vec::new(),
            })]
        } else {
            rule.matches
                .iter()
                .enumerate()
                .map(|(j, m)| self.compile_match(&format!("{at}.matches[{j}]"), m))
                .collect()
        };
        let all_prefix = rule.matches.iter().all(|m| {
            m.path
                .as_ref()
                .is_none_or(|p| p.type_ == PathMatchType::PathPrefix)
        });
        let no_filters = Filters::default();
        let filters = rule.filters.as_ref().unwrap_or(&no_filters);
        let action = self.compile_action(&at, rule, filters);
        let is_forward = matches!(action, Some(Action::Forward(_)));
        let proxies = rule
            .filters
            .as_ref()
            .is_none_or(|f| f.redirect.is_none() && f.direct_response.is_none());
        let fat = format!("{at}.filters");
        let request_headers = filters
            .request_headers
            .as_ref()
            .map(|h| self.header_changes(&format!("{fat}.requestHeaders"), h));
        let response_headers = filters
            .response_headers
            .as_ref()
            .map(|h| self.header_changes(&format!("{fat}.responseHeaders"), h));
        let url_rewrite = filters.url_rewrite.as_ref().and_then(|r| {
            let field = format!("{fat}.urlRewrite");
            if !is_forward && action.is_some() {
                self.findings.invalid(
                    &field,
                    "Invalid",
                    "urlRewrite applies only to rules with backends",
                );
                return None;
            }
            let hostname = r.hostname.as_ref().and_then(|h| {
                names::check_dns_name(h)
                    .map_err(|e| {
                        self.findings
                            .invalid(format!("{field}.hostname"), "Invalid", e)
                    })
                    .ok()
                    .map(|()| h.clone())
            });
            let path = r
                .path
                .as_ref()
                .and_then(|p| self.path_rewrite(&format!("{field}.path"), p, all_prefix, &at));
            Some(UrlRewrite { hostname, path })
        });
        let transform = filters.response_transform.as_ref().and_then(|t| {
            let field = format!("{fat}.responseTransform");
            if !proxies {
                self.findings.invalid(
                    &field,
                    "Invalid",
                    "responseTransform applies to proxied responses; it cannot be combined with redirect or directResponse",
                );
                return None;
            }
            if !t.remove.is_empty() && !t.keep.is_empty() {
                self.findings.invalid(
                    &field,
                    "Invalid",
                    "set either remove or keep, not both",
                );
            }
            if t.remove.is_empty() && t.keep.is_empty() {
                self.findings
                    .invalid(&field, "Invalid", "set remove or keep");
            }
            for (list, name) in [(&t.remove, "remove"), (&t.keep, "keep")] {
                if list.len() > 64 {
                    self.findings.invalid(
                        format!("{field}.{name}"),
                        "Invalid",
                        format!("{} key paths; at most 64", list.len()),
                    );
                }
                for (k, p) in list.iter().enumerate() {
                    if let Err(e) = names::check_json_path(p) {
                        self.findings
                            .invalid(format!("{field}.{name}[{k}]"), "Invalid", e);
                    }
                }
            }
            let max_body_bytes = t.max_body_bytes.unwrap_or(1 << 20);
            if !(1..=16 << 20).contains(&max_body_bytes) {
                self.findings.invalid(
                    format!("{field}.maxBodyBytes"),
                    "Invalid",
                    "must be from 1 to 16777216",
                );
            }
            let mut devices = t.devices.clone();
            devices.sort();
            devices.dedup();
            Some(JsonTransform {
                devices,
                remove: t.remove.clone(),
                keep: t.keep.clone(),
                max_body_bytes,
            })
        });
        let cache = filters.cache.as_ref().and_then(|c| {
            let field = format!("{fat}.cache");
            if !proxies {
                self.findings.invalid(
                    &field,
                    "Invalid",
                    "cache applies to proxied responses; it cannot be combined with redirect or directResponse",
                );
                return None;
            }
            let default_ttl_ms = c.default_ttl.as_ref().and_then(|d| {
                self.duration(&format!("{field}.defaultTtl"), d)
            });
            let max_entry_bytes = c.max_entry_bytes.unwrap_or(1 << 20);
            if !(1..=64 << 20).contains(&max_entry_bytes) {
                self.findings.invalid(
                    format!("{field}.maxEntryBytes"),
                    "Invalid",
                    "must be from 1 to 67108864",
                );
            }
            if c.key_headers.len() > 8 {
                self.findings.invalid(
                    format!("{field}.keyHeaders"),
                    "Invalid",
                    format!("{} headers; at most 8", c.key_headers.len()),
                );
            }
            let mut key_headers: Vec<String> = c
                .key_headers
                .iter()
                .enumerate()
                .filter_map(|(k, h)| self.header_name(&format!("{field}.keyHeaders[{k}]"), h))
                .collect();
            key_headers.sort();
            key_headers.dedup();
            Some(CachePolicy {
                default_ttl_ms,
                max_entry_bytes,
                key_headers,
                key_device: c.key_device,
                cache_authorized: c.cache_authorized,
                cache_set_cookie: c.cache_set_cookie,
            })
        });

        let Some(action) = action else {
            return;
        };
        for (j, matcher) in matchers.into_iter().enumerate() {
            let Some(matcher) = matcher else {
                continue;
            };
            entries.push(RouteEntry {
                rule_index: i,
                match_index: j,
                route: Route {
                    id: RouteId {
                        namespace: self.namespace.to_owned(),
                        name: self.name.to_owned(),
                        rule: rule_name.to_owned(),
                        match_index: u32::try_from(j).unwrap_or(u32::MAX),
                    },
                    matcher,
                    https_redirect: false,
                    action: action.clone(),
                    request_headers: request_headers.clone(),
                    response_headers: response_headers.clone(),
                    url_rewrite: url_rewrite.clone(),
                    transform: transform.clone(),
                    cache: cache.clone(),
                    auth: None,
                    rate_limits: Vec::new(),
                },
            });
        }
    }

    fn duration(&mut self, field: &str, text: &str) -> Option<u64> {
        match names::duration_ms(text) {
            Ok(ms) => Some(ms),
            Err(e) => {
                self.findings.invalid(field, "InvalidDuration", e);
                None
            }
        }
    }

    /// A duration that must be greater than zero.
    fn positive_duration(&mut self, field: &str, text: &str) -> Option<u64> {
        let ms = self.duration(field, text)?;
        if ms == 0 {
            self.findings
                .invalid(field, "InvalidDuration", "must be greater than 0");
            return None;
        }
        Some(ms)
    }

    fn header_name(&mut self, field: &str, name: &str) -> Option<String> {
        match names::header_name(name) {
            Ok(n) => Some(n),
            Err(e) => {
                self.findings.invalid(field, "Invalid", e);
                None
            }
        }
    }

    fn regex(&mut self, field: &str, pattern: &str) -> bool {
        self.regexes += 1;
        match names::check_regex(pattern) {
            Ok(()) => true,
            Err(e) => {
                self.findings.invalid(field, "InvalidRegex", e);
                false
            }
        }
    }

    fn compile_match(&mut self, at: &str, m: &RouteMatch) -> Option<Matcher> {
        let before = self.findings.invalid.len();
        let path = match &m.path {
            None => PathMatcher::Prefix("/".to_owned()),
            Some(p) => {
                let field = format!("{at}.path.value");
                match p.type_ {
                    PathMatchType::Exact => {
                        if let Err(e) = names::check_path(&p.value) {
                            self.findings.invalid(&field, "Invalid", e);
                        }
                        PathMatcher::Exact(p.value.clone())
                    }
                    PathMatchType::PathPrefix => {
                        if let Err(e) = names::check_path(&p.value) {
                            self.findings.invalid(&field, "Invalid", e);
                        }
                        PathMatcher::Prefix(normalize_prefix(&p.value))
                    }
                    PathMatchType::RegularExpression => {
                        self.regex(&field, &p.value);
                        PathMatcher::Regex(p.value.clone())
                    }
                }
            }
        };
        let mut methods: Vec<String> = m.methods.iter().map(|x| x.as_str().to_owned()).collect();
        methods.sort();
        methods.dedup();
        let headers = self.value_matchers(&format!("{at}.headers"), &m.headers, true);
        let query = self.value_matchers(&format!("{at}.queryParams"), &m.query_params, false);
        let mut devices = m.devices.clone();
        devices.sort();
        devices.dedup();
        if self.findings.invalid.len() > before {
            return None;
        }
        Some(Matcher {
            path,
            methods,
            headers,
            query,
            devices,
        })
    }

    fn value_matchers(
        &mut self,
        at: &str,
        list: &[crds::route::HeaderMatch],
        is_header: bool,
    ) -> Vec<ValueMatcher> {
        if list.len() > 16 {
            self.findings.invalid(
                at,
                "Invalid",
                format!("{} conditions; at most 16", list.len()),
            );
            return Vec::new();
        }
        let mut out: Vec<ValueMatcher> = Vec::new();
        for (k, h) in list.iter().enumerate() {
            let field = format!("{at}[{k}]");
            let name = if is_header {
                match self.header_name(&format!("{field}.name"), &h.name) {
                    Some(n) => n,
                    None => continue,
                }
            } else {
                if h.name.is_empty()
                    || h.name.len() > super::MAX_HEADER_NAME_LEN
                    || h.name.chars().any(|c| c.is_control())
                {
                    self.findings.invalid(
                        format!("{field}.name"),
                        "Invalid",
                        "a query parameter name must have 1 to 256 characters and no control characters",
                    );
                    continue;
                }
                h.name.clone()
            };
            if let Some(first) = out.iter().position(|v| v.name == name) {
                self.findings.invalid(
                    format!("{field}.name"),
                    "Invalid",
                    format!("{name:?} is already matched by {at}[{first}]; one condition per name"),
                );
                continue;
            }
            let value = match h.type_ {
                ValueMatchType::Exact => {
                    let check = if is_header {
                        names::check_header_value(&h.value)
                    } else if h.value.len() > super::MAX_HEADER_VALUE_LEN {
                        Err(format!(
                            "value is {} bytes; at most {}",
                            h.value.len(),
                            super::MAX_HEADER_VALUE_LEN
                        ))
                    } else {
                        Ok(())
                    };
                    if let Err(e) = check {
                        self.findings
                            .invalid(format!("{field}.value"), "Invalid", e);
                    }
                    ValueMatch::Exact(h.value.clone())
                }
                ValueMatchType::RegularExpression => {
                    self.regex(&format!("{field}.value"), &h.value);
                    ValueMatch::Regex(h.value.clone())
                }
                ValueMatchType::Present => ValueMatch::Present,
            };
            out.push(ValueMatcher { name, value });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn path_rewrite(
        &mut self,
        field: &str,
        p: &crds::route::PathRewrite,
        all_prefix: bool,
        rule_at: &str,
    ) -> Option<PathRewrite> {
        if let Err(e) = names::check_path(&p.value) {
            self.findings
                .invalid(format!("{field}.value"), "Invalid", e);
            return None;
        }
        match p.type_ {
            PathRewriteType::ReplaceFullPath => Some(PathRewrite::ReplaceFull(p.value.clone())),
            PathRewriteType::ReplacePrefixMatch => {
                if !all_prefix {
                    self.findings.invalid(
                        format!("{field}.type"),
                        "Invalid",
                        format!("ReplacePrefixMatch needs every match of {rule_at} to be a PathPrefix match"),
                    );
                    return None;
                }
                Some(PathRewrite::ReplacePrefix(p.value.clone()))
            }
        }
    }

    fn header_changes(&mut self, at: &str, h: &crds::route::HeaderChanges) -> HeaderChanges {
        let mut out = HeaderChanges::default();
        for (list, name, target) in [(&h.set, "set", 0), (&h.add, "add", 1)] {
            if list.len() > 32 {
                self.findings.invalid(
                    format!("{at}.{name}"),
                    "Invalid",
                    format!("{} headers; at most 32", list.len()),
                );
                continue;
            }
            for (k, hv) in list.iter().enumerate() {
                let field = format!("{at}.{name}[{k}]");
                let Some(n) = self.header_name(&format!("{field}.name"), &hv.name) else {
                    continue;
                };
                if let Err(e) = names::check_header_value(&hv.value) {
                    self.findings
                        .invalid(format!("{field}.value"), "Invalid", e);
                    continue;
                }
                let pair = (n, hv.value.clone());
                if target == 0 {
                    out.set.push(pair);
                } else {
                    out.add.push(pair);
                }
            }
        }
        if h.remove.len() > 32 {
            self.findings.invalid(
                format!("{at}.remove"),
                "Invalid",
                format!("{} headers; at most 32", h.remove.len()),
            );
        } else {
            for (k, name) in h.remove.iter().enumerate() {
                if let Some(n) = self.header_name(&format!("{at}.remove[{k}]"), name) {
                    out.remove.push(n);
                }
            }
        }
        out
    }

    fn cluster_settings(&mut self, at: &str, rule: &RouteRule) -> ClusterSettings {
        let load_balancer = match &rule.load_balancer {
            None => LoadBalancerPolicy::RoundRobin,
            Some(lb) => {
                let field = format!("{at}.loadBalancer");
                match lb.type_ {
                    LoadBalancerType::ConsistentHash => match &lb.hash_on {
                        None => {
                            self.findings.invalid(
                                format!("{field}.hashOn"),
                                "Invalid",
                                "required with ConsistentHash: set header, cookie or clientIp",
                            );
                            LoadBalancerPolicy::RoundRobin
                        }
                        Some(h) => {
                            let set = usize::from(h.header.is_some())
                                + usize::from(h.cookie.is_some())
                                + usize::from(h.client_ip);
                            if set != 1 {
                                self.findings.invalid(
                                    format!("{field}.hashOn"),
                                    "Invalid",
                                    format!(
                                        "set exactly one of header, cookie, clientIp (found {set})"
                                    ),
                                );
                                LoadBalancerPolicy::RoundRobin
                            } else if let Some(name) = &h.header {
                                match self.header_name(&format!("{field}.hashOn.header"), name) {
                                    Some(n) => {
                                        LoadBalancerPolicy::ConsistentHash(HashKey::Header(n))
                                    }
                                    None => LoadBalancerPolicy::RoundRobin,
                                }
                            } else if let Some(cookie) = &h.cookie {
                                if names::header_name(cookie).is_err() {
                                    self.findings.invalid(
                                        format!("{field}.hashOn.cookie"),
                                        "Invalid",
                                        format!("{cookie:?} is not a valid cookie name"),
                                    );
                                }
                                LoadBalancerPolicy::ConsistentHash(HashKey::Cookie(cookie.clone()))
                            } else {
                                LoadBalancerPolicy::ConsistentHash(HashKey::ClientIp)
                            }
                        }
                    },
                    other => {
                        if lb.hash_on.is_some() {
                            self.findings.invalid(
                                format!("{field}.hashOn"),
                                "Invalid",
                                "only used with type ConsistentHash",
                            );
                        }
                        if other == LoadBalancerType::LeastRequest {
                            LoadBalancerPolicy::LeastRequest
                        } else {
                            LoadBalancerPolicy::RoundRobin
                        }
                    }
                }
            }
        };
        let outlier = rule.outlier_detection.as_ref().map(|o| {
            let field = format!("{at}.outlierDetection");
            let consecutive_failures = o.consecutive_failures.unwrap_or(5);
            if !(1..=1000).contains(&consecutive_failures) {
                self.findings.invalid(
                    format!("{field}.consecutiveFailures"),
                    "Invalid",
                    "must be from 1 to 1000",
                );
            }
            let base_ejection_ms = match &o.base_ejection_time {
                Some(d) => self
                    .positive_duration(&format!("{field}.baseEjectionTime"), d)
                    .unwrap_or(30_000),
                None => 30_000,
            };
            let max_ejection_percent = o.max_ejection_percent.unwrap_or(50);
            if max_ejection_percent > 100 {
                self.findings.invalid(
                    format!("{field}.maxEjectionPercent"),
                    "Invalid",
                    "must be from 0 to 100",
                );
            }
            OutlierPolicy {
                consecutive_failures,
                base_ejection_ms,
                max_ejection_percent,
            }
        });
        let connect_timeout_ms = rule
            .timeouts
            .as_ref()
            .and_then(|t| t.connect.as_ref())
            .and_then(|d| self.positive_duration(&format!("{at}.timeouts.connect"), d))
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
        ClusterSettings {
            load_balancer,
            outlier,
            connect_timeout_ms,
        }
    }

    /// Validates a backend and resolves it to a cluster name (adding the
    /// cluster when it resolves). `None` when the backend is invalid.
    fn backend(&mut self, field: &str, b: &Backend, settings: &ClusterSettings) -> Option<String> {
        let protocol = match b.protocol {
            Some(BackendProtocol::Http2) => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Http1,
        };
        match (&b.name, &b.url) {
            (Some(_), Some(_)) => {
                self.findings.invalid(
                    field,
                    "Invalid",
                    "set either name and port (a Service) or url, not both",
                );
                None
            }
            (None, None) => {
                self.findings
                    .invalid(field, "Invalid", "set name and port (a Service) or url");
                None
            }
            (None, Some(url)) => {
                if b.namespace.is_some() || b.port.is_some() {
                    self.findings.invalid(
                        field,
                        "Invalid",
                        "namespace and port are only used with name; put the port in the url",
                    );
                    return None;
                }
                match names::parse_http_url(url) {
                    Err(e) => {
                        self.findings.invalid(format!("{field}.url"), "Invalid", e);
                        None
                    }
                    Ok(u) => Some(self.url_cluster(&u, protocol, settings)),
                }
            }
            (Some(name), None) => {
                let mut ok = true;
                if let Err(e) = check_dns_label(name) {
                    self.findings.invalid(format!("{field}.name"), "Invalid", e);
                    ok = false;
                }
                if let Some(ns) = &b.namespace {
                    if let Err(e) = check_dns_label(ns) {
                        self.findings
                            .invalid(format!("{field}.namespace"), "Invalid", e);
                        ok = false;
                    }
                }
                let port = match b.port {
                    Some(p) if p > 0 => p,
                    Some(_) => {
                        self.findings.invalid(
                            format!("{field}.port"),
                            "Invalid",
                            "must be from 1 to 65535",
                        );
                        return None;
                    }
                    None => {
                        self.findings.invalid(
                            format!("{field}.port"),
                            "Invalid",
                            "required with name (the Service port)",
                        );
                        return None;
                    }
                };
                if !ok {
                    return None;
                }
                let namespace = b.namespace.as_deref().unwrap_or(self.namespace);
                let cluster_name =
                    format!("{namespace}/{name}:{port}{}", settings.suffix(protocol));
                match self
                    .index
                    .service_port(self.namespace, namespace, name, port)
                {
                    Ok(resolved) => {
                        self.clusters.insert(
                            cluster_name.clone(),
                            Cluster {
                                endpoints: resolved.endpoints,
                                protocol,
                                tls: None,
                                path_prefix: None,
                                load_balancer: settings.load_balancer.clone(),
                                outlier_detection: settings.outlier.clone(),
                                connect_timeout_ms: settings.connect_timeout_ms,
                            },
                        );
                    }
                    Err(e) => {
                        self.findings.unresolved(field, e.reason, e.message);
                        // A name no cluster has: requests picked for this
                        // backend get 500, even if another route may use
                        // the same Service.
                        return Some(format!("{UNRESOLVED_PREFIX}{cluster_name}"));
                    }
                }
                Some(cluster_name)
            }
        }
    }

    fn url_cluster(
        &mut self,
        u: &HttpUrl,
        protocol: UpstreamProtocol,
        settings: &ClusterSettings,
    ) -> String {
        let name = format!("{}{}{}", u.origin(), u.path, settings.suffix(protocol));
        self.clusters
            .entry(name.clone())
            .or_insert_with(|| Cluster {
                endpoints: vec![Endpoint {
                    host: u.host.clone(),
                    port: u.port,
                }],
                protocol,
                tls: (u.scheme == Scheme::Https).then(|| UpstreamTls {
                    server_name: u.host.clone(),
                }),
                path_prefix: (!u.path.is_empty()).then(|| u.path.clone()),
                load_balancer: settings.load_balancer.clone(),
                outlier_detection: settings.outlier.clone(),
                connect_timeout_ms: settings.connect_timeout_ms,
            });
        name
    }

    fn compile_action(&mut self, at: &str, rule: &RouteRule, filters: &Filters) -> Option<Action> {
        let mut present = Vec::new();
        if !rule.backends.is_empty() {
            present.push("backends");
        }
        if rule.aggregate.is_some() {
            present.push("aggregate");
        }
        if filters.redirect.is_some() {
            present.push("filters.redirect");
        }
        if filters.direct_response.is_some() {
            present.push("filters.directResponse");
        }
        if present.len() != 1 {
            self.findings.invalid(
                at,
                "Invalid",
                if present.is_empty() {
                    "set exactly one of backends, aggregate, filters.redirect, filters.directResponse (found none)".to_owned()
                } else {
                    format!(
                        "set exactly one of backends, aggregate, filters.redirect, filters.directResponse (found {})",
                        present.join(", ")
                    )
                },
            );
            return None;
        }
        let before = self.findings.invalid.len();
        let settings = self.cluster_settings(at, rule);
        let action = if !rule.backends.is_empty() {
            if rule.backends.len() > 16 {
                self.findings.invalid(
                    format!("{at}.backends"),
                    "Invalid",
                    format!("{} backends; at most 16", rule.backends.len()),
                );
                return None;
            }
            let mut backends = Vec::new();
            for (k, b) in rule.backends.iter().enumerate() {
                let field = format!("{at}.backends[{k}]");
                let weight = b.weight.unwrap_or(1);
                if weight > MAX_WEIGHT {
                    self.findings.invalid(
                        format!("{field}.weight"),
                        "Invalid",
                        format!("must be from 0 to {MAX_WEIGHT}"),
                    );
                }
                if let Some(cluster) = self.backend(&field, b, &settings) {
                    if weight > 0 {
                        backends.push(WeightedCluster { cluster, weight });
                    }
                }
            }
            let timeouts = self.timeouts(at, rule);
            let retry = self.retry(at, rule);
            Action::Forward(Forward {
                backends,
                timeouts,
                retry,
            })
        } else if let Some(aggregate) = &rule.aggregate {
            let field = format!("{at}.aggregate");
            if aggregate.parts.is_empty() || aggregate.parts.len() > 16 {
                self.findings.invalid(
                    format!("{field}.parts"),
                    "Invalid",
                    "must have 1 to 16 parts",
                );
                return None;
            }
            if rule.retry.is_some() {
                self.findings.invalid(
                    format!("{at}.retry"),
                    "Invalid",
                    "retries apply to backends; aggregate parts are not retried",
                );
            }
            let mut parts: Vec<AggregatePart> = Vec::new();
            for (k, part) in aggregate.parts.iter().enumerate() {
                let pat = format!("{field}.parts[{k}]");
                if part.name.is_empty() || part.name.len() > 63 {
                    self.findings.invalid(
                        format!("{pat}.name"),
                        "Invalid",
                        "must have 1 to 63 characters",
                    );
                } else if let Some(first) = parts.iter().position(|p| p.name == part.name) {
                    self.findings.invalid(
                        format!("{pat}.name"),
                        "Invalid",
                        format!("{:?} is already the name of parts[{first}]", part.name),
                    );
                }
                let path_ok = part.path.starts_with('/')
                    && part.path.len() <= super::MAX_PATH_LEN
                    && !part
                        .path
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '#');
                if !path_ok {
                    self.findings.invalid(
                        format!("{pat}.path"),
                        "Invalid",
                        format!(
                            "{:?} must start with '/', have at most {} characters and no spaces, control characters or '#'",
                            part.path,
                            super::MAX_PATH_LEN
                        ),
                    );
                }
                let timeout_ms = part
                    .timeout
                    .as_ref()
                    .and_then(|d| self.positive_duration(&format!("{pat}.timeout"), d))
                    .unwrap_or(DEFAULT_PART_TIMEOUT_MS);
                if part.forward_headers.len() > 16 {
                    self.findings.invalid(
                        format!("{pat}.forwardHeaders"),
                        "Invalid",
                        "at most 16 headers",
                    );
                }
                let forward_headers: Vec<String> = part
                    .forward_headers
                    .iter()
                    .enumerate()
                    .filter_map(|(h, name)| {
                        self.header_name(&format!("{pat}.forwardHeaders[{h}]"), name)
                    })
                    .collect();
                let cluster = self
                    .backend(&format!("{pat}.backend"), &part.backend, &settings)
                    .unwrap_or_default();
                parts.push(AggregatePart {
                    name: part.name.clone(),
                    cluster,
                    path: part.path.clone(),
                    timeout_ms,
                    forward_headers,
                });
            }
            let max_parallel = u32::try_from(parts.len()).unwrap_or(16);
            Action::Aggregate(Aggregate {
                parts,
                on_part_failure: aggregate.on_part_failure,
                max_parallel,
            })
        } else if let Some(r) = &filters.redirect {
            let field = format!("{at}.filters.redirect");
            if let Some(s) = &r.scheme {
                if s != "http" && s != "https" {
                    self.findings.invalid(
                        format!("{field}.scheme"),
                        "Invalid",
                        format!("{s:?} must be http or https"),
                    );
                }
            }
            if let Some(h) = &r.hostname {
                if let Err(e) = names::check_dns_name(h) {
                    self.findings
                        .invalid(format!("{field}.hostname"), "Invalid", e);
                }
            }
            if r.port == Some(0) {
                self.findings.invalid(
                    format!("{field}.port"),
                    "Invalid",
                    "must be from 1 to 65535",
                );
            }
            let status = r.status_code.unwrap_or(302);
            if ![301, 302, 303, 307, 308].contains(&status) {
                self.findings.invalid(
                    format!("{field}.statusCode"),
                    "Invalid",
                    format!("{status} is not one of 301, 302, 303, 307, 308"),
                );
            }
            let all_prefix = rule.matches.iter().all(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.type_ == PathMatchType::PathPrefix)
            });
            let path = r
                .path
                .as_ref()
                .and_then(|p| self.path_rewrite(&format!("{field}.path"), p, all_prefix, at));
            Action::Redirect(Redirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                port: r.port,
                path,
                status,
            })
        } else if let Some(d) = &filters.direct_response {
            let field = format!("{at}.filters.directResponse");
            if !(200..=599).contains(&d.status) {
                self.findings.invalid(
                    format!("{field}.status"),
                    "Invalid",
                    format!("{} must be from 200 to 599", d.status),
                );
            }
            if d.body.len() > MAX_DIRECT_RESPONSE_BYTES {
                self.findings.invalid(
                    format!("{field}.body"),
                    "Invalid",
                    format!(
                        "{} bytes; at most {MAX_DIRECT_RESPONSE_BYTES}",
                        d.body.len()
                    ),
                );
            }
            let content_type = d
                .content_type
                .clone()
                .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
            if let Err(e) = names::check_header_value(&content_type) {
                self.findings
                    .invalid(format!("{field}.contentType"), "Invalid", e);
            } else if content_type.len() > 256 {
                self.findings.invalid(
                    format!("{field}.contentType"),
                    "Invalid",
                    "at most 256 characters",
                );
            }
            Action::DirectResponse(DirectResponse {
                status: d.status,
                body: d.body.clone(),
                content_type,
            })
        } else {
            return None;
        };
        let request_timeouts = rule
            .timeouts
            .as_ref()
            .is_some_and(|t| t.request.is_some() || t.backend_request.is_some());
        if request_timeouts && !matches!(action, Action::Forward(_)) {
            self.findings.invalid(
                format!("{at}.timeouts"),
                "Invalid",
                "request and backendRequest timeouts apply to rules with backends (aggregate parts have their own timeout)",
            );
        }
        if self.findings.invalid.len() > before {
            return None;
        }
        Some(action)
    }

    fn timeouts(&mut self, at: &str, rule: &RouteRule) -> Timeouts {
        let no_timeouts = crds::route::Timeouts::default();
        let t = rule.timeouts.as_ref().unwrap_or(&no_timeouts);
        let request_ms = t
            .request
            .as_ref()
            .and_then(|d| self.positive_duration(&format!("{at}.timeouts.request"), d))
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
        let backend_request_ms = match &t.backend_request {
            None => request_ms,
            Some(d) => {
                let field = format!("{at}.timeouts.backendRequest");
                match self.positive_duration(&field, d) {
                    Some(ms) if ms > request_ms => {
                        self.findings.invalid(
                            field,
                            "Invalid",
                            format!("{d} is longer than the request timeout ({request_ms}ms)"),
                        );
                        request_ms
                    }
                    Some(ms) => ms,
                    None => request_ms,
                }
            }
        };
        Timeouts {
            request_ms,
            backend_request_ms,
        }
    }

    fn retry(&mut self, at: &str, rule: &RouteRule) -> RetryPolicy {
        let Some(r) = &rule.retry else {
            return RetryPolicy {
                attempts: 0,
                on: vec![RetryOn::ConnectFailure],
                backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
                budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            };
        };
        let field = format!("{at}.retry");
        if r.attempts > 10 {
            self.findings.invalid(
                format!("{field}.attempts"),
                "Invalid",
                "must be from 0 to 10",
            );
        }
        let mut on = r.retry_on.clone();
        on.push(RetryOn::ConnectFailure);
        on.sort();
        on.dedup();
        let backoff_ms = r
            .backoff
            .as_ref()
            .and_then(|d| self.positive_duration(&format!("{field}.backoff"), d))
            .unwrap_or(DEFAULT_RETRY_BACKOFF_MS);
        let budget_percent = r.budget_percent.unwrap_or(DEFAULT_RETRY_BUDGET_PERCENT);
        if !(1..=100).contains(&budget_percent) {
            self.findings.invalid(
                format!("{field}.budgetPercent"),
                "Invalid",
                "must be from 1 to 100",
            );
        }
        RetryPolicy {
            attempts: r.attempts.min(10),
            on,
            backoff_ms,
            budget_percent,
        }
    }
}

/// `/api/` and `/api` match the same paths; `/` stays `/`.
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A Kubernetes object name of the DNS-label kind (Services, namespaces).
fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (1 to 63 lowercase letters, digits or '-')"
        ))
    }
}
