//! Compiled routes -> virtual hosts: precedence order, conflicts, wildcard
//! inheritance, HTTPS redirects and policy attachment; then the route
//! statuses, which need to know what conflicted.
//!
//! Work is done on indices into the compiled routes; a snapshot [`Route`]
//! is cloned only once it is known to be served.

use super::policy::Policies;
use super::report::{NotAccepted, StatusInput};
use super::route::{CompiledRoute, RouteEntry};
use super::Output;
use crate::model::{Action, Matcher, PathMatcher, Route, Snapshot, VirtualHost};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// (compiled route index, entry index).
type EntryRef = (usize, usize);

/// The precedence of a (rule, match); smaller sorts first. See the parent
/// module's docs for the order.
type Rank<'a> = (
    u8,
    Reverse<usize>,
    (u8, usize),
    Reverse<usize>,
    Reverse<usize>,
    (u8, usize),
    i128,
    &'a str,
    &'a str,
    usize,
    usize,
);

fn rank<'a>(route: &'a CompiledRoute, e: &RouteEntry) -> Rank<'a> {
    let m: &Matcher = &e.route.matcher;
    let (kind, len) = match &m.path {
        PathMatcher::Exact(p) => (0, p.chars().count()),
        PathMatcher::Prefix(p) => (1, p.trim_end_matches('/').chars().count()),
        PathMatcher::Regex(r) => (2, r.chars().count()),
    };
    let presence = |n: usize| (u8::from(n == 0), n);
    (
        kind,
        Reverse(len),
        presence(m.methods.len()),
        Reverse(m.headers.len()),
        Reverse(m.query.len()),
        presence(m.devices.len()),
        route.meta.created,
        &route.meta.namespace,
        &route.meta.name,
        e.rule_index,
        e.match_index,
    )
}

/// Covering wildcard hosts of `host`, most specific first: `a.b.c` ->
/// `*.b.c`, `*.c`; `*.b.c` -> `*.c`.
fn covering_wildcards(host: &str) -> Vec<String> {
    let base = host.strip_prefix("*.").unwrap_or(host);
    let mut out = Vec::new();
    let mut rest = base.split_once('.').map(|(_, r)| r);
    while let Some(suffix) = rest {
        out.push(format!("*.{suffix}"));
        rest = suffix.split_once('.').map(|(_, r)| r);
    }
    out
}

/// Host names covered by served certificates.
struct Coverage {
    exact: HashSet<String>,
    /// Suffixes of `*.suffix` certificate names.
    wildcard: HashSet<String>,
}

impl Coverage {
    fn covers(&self, host: &str) -> bool {
        if self.exact.contains(host) {
            return true;
        }
        // `*.suffix` covers one label in front of `suffix` (and itself,
        // handled above).
        match host.split_once('.') {
            Some((label, rest)) if label != "*" => self.wildcard.contains(rest),
            _ => false,
        }
    }
}

pub(crate) fn assemble(
    snapshot: &mut Snapshot,
    routes: Vec<CompiledRoute>,
    policies: &Policies,
    out: &mut Output,
) {
    let mut coverage = Coverage {
        exact: HashSet::new(),
        wildcard: HashSet::new(),
    };
    for cert in &snapshot.certificates {
        for host in &cert.hosts {
            coverage.exact.insert(host.clone());
            if let Some(suffix) = host.strip_prefix("*.") {
                coverage.wildcard.insert(suffix.to_owned());
            }
        }
    }

    // Place every (rule, match) in the virtual hosts of its route.
    let mut by_host: BTreeMap<&str, Vec<EntryRef>> = BTreeMap::new();
    for (r, route) in routes.iter().enumerate() {
        if let Some(served) = &route.served {
            for host in &served.hosts {
                let list = by_host.entry(host.as_str()).or_default();
                list.extend((0..served.entries.len()).map(|e| (r, e)));
            }
        }
    }

    // Precedence and conflicts per host.
    let mut conflicts: Vec<Vec<(String, String)>> = vec![Vec::new(); routes.len()];
    let mut kept_count = vec![0usize; routes.len()];
    let mut own: BTreeMap<&str, Vec<EntryRef>> = BTreeMap::new();
    for (host, mut list) in by_host {
        list.sort_by_cached_key(|&(r, e)| {
            let route = &routes[r];
            route
                .served
                .as_ref()
                .map(|served| rank(route, &served.entries[e]))
        });
        // Small hosts compare matchers directly; large ones by a text key.
        let mut seen: HashMap<String, EntryRef> = HashMap::new();
        let mut kept: Vec<EntryRef> = Vec::with_capacity(list.len());
        let small = list.len() <= 16;
        for (r, e) in list {
            let Some(served) = &routes[r].served else {
                continue;
            };
            let entry = &served.entries[e];
            let matcher_of = |(r, e): EntryRef| {
                routes[r]
                    .served
                    .as_ref()
                    .map(|s| &s.entries[e].route.matcher)
            };
            let (winner, key) = if small {
                let w = kept
                    .iter()
                    .copied()
                    .find(|&k| matcher_of(k) == Some(&entry.route.matcher));
                (w, None)
            } else {
                let key = format!("{:?}", entry.route.matcher);
                (seen.get(&key).copied(), Some(key))
            };
            match winner {
                Some((wr, we)) => {
                    let winner = &routes[wr];
                    let wentry = routes[wr].served.as_ref().map(|s| &s.entries[we]);
                    let (wrule, wmatch) = wentry
                        .map(|w| (w.route.id.rule.clone(), w.match_index))
                        .unwrap_or_default();
                    let who = if wr == r {
                        format!("rule {wrule:?} match {wmatch} of this route")
                    } else {
                        format!(
                            "the older ApiRoute {}/{} (rule {wrule:?}, match {wmatch})",
                            winner.meta.namespace, winner.meta.name
                        )
                    };
                    conflicts[r].push((
                        format!("spec.rules[{}].matches[{}]", entry.rule_index, entry.match_index),
                        format!("host {host:?}: the same match is already served by {who}; this one is not served"),
                    ));
                }
                None => {
                    if let Some(key) = key {
                        seen.insert(key, (r, e));
                    }
                    kept_count[r] += 1;
                    kept.push((r, e));
                }
            }
        }
        own.insert(host, kept);
    }

    // Inherit the routes of covering wildcard hosts, then build the hosts.
    let mut used_clusters: BTreeSet<String> = BTreeSet::new();
    let mut virtual_hosts = Vec::with_capacity(own.len());
    for (host, kept) in &own {
        let mut list: Vec<EntryRef> = kept.clone();
        let wildcards = covering_wildcards(host);
        if wildcards.iter().any(|w| own.contains_key(w.as_str())) {
            let mut present: HashSet<EntryRef> = list.iter().copied().collect();
            for w in &wildcards {
                if let Some(inherited) = own.get(w.as_str()) {
                    for &er in inherited {
                        // A route listing both hosts is already here.
                        let dup = present.contains(&er);
                        if !dup {
                            present.insert(er);
                            list.push(er);
                        }
                    }
                }
            }
        }
        let covered = coverage.covers(host);
        let mut vroutes = Vec::with_capacity(list.len());
        for (r, e) in list {
            let compiled = &routes[r];
            let Some(served) = &compiled.served else {
                continue;
            };
            let mut route: Route = served.entries[e].route.clone();
            route.https_redirect = covered && !served.allow_plain_http;
            if !policies.rule_auth.is_empty() || !policies.rule_rate_limits.is_empty() {
                let rule_ref = (
                    compiled.meta.namespace.clone(),
                    compiled.meta.name.clone(),
                    route.id.rule.clone(),
                );
                route.auth = policies.rule_auth.get(&rule_ref).cloned();
                route.rate_limits = policies
                    .rule_rate_limits
                    .get(&rule_ref)
                    .cloned()
                    .unwrap_or_default();
            }
            match &route.action {
                Action::Forward(f) => {
                    for b in &f.backends {
                        if !used_clusters.contains(&b.cluster) {
                            used_clusters.insert(b.cluster.clone());
                        }
                    }
                }
                Action::Aggregate(a) => {
                    for p in &a.parts {
                        if !used_clusters.contains(&p.cluster) {
                            used_clusters.insert(p.cluster.clone());
                        }
                    }
                }
                Action::Redirect(_) | Action::DirectResponse(_) => {}
            }
            vroutes.push(route);
        }
        virtual_hosts.push(VirtualHost {
            hostname: (*host).to_owned(),
            routes: vroutes,
        });
    }
    snapshot.virtual_hosts = virtual_hosts;

    // Clusters in use; the same name always has the same content.
    for route in &routes {
        if let Some(served) = &route.served {
            for (name, cluster) in &served.clusters {
                if used_clusters.contains(name) && !snapshot.clusters.contains_key(name) {
                    snapshot.clusters.insert(name.clone(), cluster.clone());
                }
            }
        }
    }

    // Route statuses.
    for (r, route) in routes.into_iter().enumerate() {
        let CompiledRoute {
            meta,
            key,
            mut findings,
            served,
            fallback_generation,
            ..
        } = route;
        for (field, message) in std::mem::take(&mut conflicts[r]) {
            findings.conflict(field, message);
        }
        let has_entries = served
            .as_ref()
            .is_some_and(|s| !s.entries.is_empty() && !s.hosts.is_empty());
        let all_conflicted = has_entries && kept_count[r] == 0;
        let mut status = StatusInput::new(meta.generation, findings);
        status.fallback_generation = fallback_generation;
        if all_conflicted {
            status.not_accepted = Some(NotAccepted::AllConflicted);
        } else if let Some(s) = &served {
            status.serving_generation = Some(s.generation.unwrap_or(0));
        }
        out.statuses.insert(key, status.into_report());
    }
}

#[cfg(test)]
mod tests {
    use super::covering_wildcards;

    #[test]
    fn wildcards_that_cover_a_host() {
        assert_eq!(covering_wildcards("a.b.c"), vec!["*.b.c", "*.c"]);
        assert_eq!(covering_wildcards("*.b.c"), vec!["*.c"]);
        assert!(covering_wildcards("localhost").is_empty());
        assert!(covering_wildcards("*.c").is_empty());
    }
}
