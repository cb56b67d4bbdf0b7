//! Micro-benchmark of `Router::find`: nanoseconds per lookup with 10 vs
//! 10,000 virtual hosts (host lookup must not grow with the host count), and
//! 10 vs 10,000 routes in one virtual host (the path index).
//!
//! Run: `cargo run --release -p dataplane --example router_bench`

use crds::DeviceClass;
use dataplane::router::{Match, RequestView, Router};
use http::{HeaderMap, Method};
use snapshot::model::{Action, DirectResponse, Matcher, PathMatcher, Route, RouteId, VirtualHost};
use snapshot::Snapshot;
use std::hint::black_box;
use std::time::Instant;

fn route(i: usize, path: PathMatcher) -> Route {
    Route {
        id: RouteId {
            namespace: "bench".into(),
            name: format!("r{i}"),
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
            body: String::new(),
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

/// `n` hosts, half exact (`hN.example.com`) and half wildcard
/// (`*.wN.example.com`), each with a few routes.
fn many_hosts(n: usize) -> Snapshot {
    let mut virtual_hosts: Vec<VirtualHost> = (0..n)
        .map(|i| VirtualHost {
            hostname: if i % 2 == 0 {
                format!("h{i}.example.com")
            } else {
                format!("*.w{i}.example.com")
            },
            routes: vec![
                route(0, PathMatcher::Exact("/health".into())),
                route(1, PathMatcher::Prefix("/api/v1".into())),
                route(2, PathMatcher::Prefix("/".into())),
            ],
        })
        .collect();
    virtual_hosts.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Snapshot {
        virtual_hosts,
        ..Snapshot::default()
    }
}

/// One host with `n` routes: exact and prefix paths per service, then `/`.
fn many_routes(n: usize) -> Snapshot {
    let mut routes: Vec<Route> = (0..n.saturating_sub(1))
        .map(|i| {
            if i % 2 == 0 {
                route(i, PathMatcher::Exact(format!("/svc{i}/status")))
            } else {
                route(i, PathMatcher::Prefix(format!("/svc{i}/api")))
            }
        })
        .collect();
    routes.push(route(n, PathMatcher::Prefix("/".into())));
    Snapshot {
        virtual_hosts: vec![VirtualHost {
            hostname: "api.example.com".into(),
            routes,
        }],
        ..Snapshot::default()
    }
}

fn measure(label: &str, router: &Router, requests: &[(String, String)]) -> f64 {
    let method = Method::GET;
    let headers = HeaderMap::new();
    let views: Vec<RequestView<'_>> = requests
        .iter()
        .map(|(host, path)| RequestView {
            host,
            path,
            query: None,
            method: &method,
            headers: &headers,
            device: DeviceClass::Desktop,
        })
        .collect();
    let mut found = 0usize;
    for v in &views {
        if matches!(router.find(v), Match::Found(_)) {
            found += 1;
        }
    }
    assert_eq!(found, views.len(), "{label}: every request must match");
    let rounds = 2_000_000 / views.len().max(1);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            for v in &views {
                black_box(router.find(black_box(v)));
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * views.len()) as f64;
        best = best.min(ns);
    }
    println!("{label:<40} {best:>7.1} ns/lookup");
    best
}

fn host_requests(n: usize) -> Vec<(String, String)> {
    // Spread over all hosts so the larger table really is exercised.
    let paths = ["/health", "/api/v1/users/42", "/static/app.js"];
    (0..4096)
        .map(|k| {
            let i = (k * 7919) % n;
            let host = if i.is_multiple_of(2) {
                format!("H{i}.example.com:443")
            } else {
                format!("app.w{i}.example.com")
            };
            (host, paths[k % paths.len()].to_string())
        })
        .collect()
}

fn route_requests(n: usize) -> Vec<(String, String)> {
    (0..4096)
        .map(|k| {
            let i = (k * 7919) % n.saturating_sub(1).max(1);
            let path = if i.is_multiple_of(2) {
                format!("/svc{i}/status")
            } else {
                format!("/svc{i}/api/items/7")
            };
            ("api.example.com".to_string(), path)
        })
        .collect()
}

fn main() {
    let build = |s: &Snapshot| match Router::build(s) {
        Ok(r) => r,
        Err(e) => panic!("router build failed: {e}"),
    };
    println!("Router::find, best of 5 runs of ~2M lookups each");
    let small = measure(
        "10 hosts (exact + wildcard)",
        &build(&many_hosts(10)),
        &host_requests(10),
    );
    let large = measure(
        "10,000 hosts (exact + wildcard)",
        &build(&many_hosts(10_000)),
        &host_requests(10_000),
    );
    println!("  ratio 10,000/10 hosts: {:.2}", large / small);
    // The same 10 hot hosts looked up in the large table: what remains is
    // the algorithm, without the cache misses of a 10,000-host working set.
    let hot = measure(
        "10,000 hosts, requests to 10 of them",
        &build(&many_hosts(10_000)),
        &host_requests(10),
    );
    println!("  ratio 10,000 (hot 10)/10 hosts: {:.2}", hot / small);
    let small = measure(
        "1 host, 10 routes",
        &build(&many_routes(10)),
        &route_requests(10),
    );
    let large = measure(
        "1 host, 10,000 routes (indexed)",
        &build(&many_routes(10_000)),
        &route_requests(10_000),
    );
    println!("  ratio 10,000/10 routes: {:.2}", large / small);
    let start = Instant::now();
    let r = build(&many_hosts(10_000));
    println!(
        "build: 10,000 hosts / {} routes in {:.1} ms",
        r.route_count(),
        start.elapsed().as_secs_f64() * 1e3
    );
}
