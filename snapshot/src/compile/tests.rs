//! Unit tests of the compiler, one per rule. Resources are written as YAML,
//! the way users write them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::model::{Action, AuthMethodConfig, JwtKeys, PathMatcher};
use serde_yaml::Value;

/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;

fn load(yaml: &str) -> Resources {
    let mut r = Resources::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "ApiRoute" => r.api_routes.push(serde_yaml::from_value(v).unwrap()),
            "AuthPolicy" => r.auth_policies.push(serde_yaml::from_value(v).unwrap()),
            "RateLimitPolicy" => r
                .rate_limit_policies
                .push(serde_yaml::from_value(v).unwrap()),
            "TlsCertificate" => r.tls_certificates.push(serde_yaml::from_value(v).unwrap()),
            "Service" => r.services.push(serde_yaml::from_value(v).unwrap()),
            "EndpointSlice" => r.endpoint_slices.push(serde_yaml::from_value(v).unwrap()),
            "Endpoints" => r.endpoints.push(serde_yaml::from_value(v).unwrap()),
            "Secret" => r.secrets.push(serde_yaml::from_value(v).unwrap()),
            other => panic!("unknown kind {other}"),
        }
    }
    r
}

fn run(yaml: &str) -> Compiled {
    compile(&load(yaml), None, NOW)
}

fn status<'a>(c: &'a Compiled, kind: &str, ns: &str, name: &str) -> &'a ResourceStatusReport {
    c.statuses
        .get(&ObjectKey::new(kind, ns, name))
        .unwrap_or_else(|| panic!("no status for {kind} {ns}/{name}"))
}

fn cond<'a>(s: &'a ResourceStatusReport, t: &str) -> &'a Condition {
    s.condition(t)
        .unwrap_or_else(|| panic!("no {t} condition in {s:#?}"))
}

fn vhost<'a>(c: &'a Compiled, host: &str) -> &'a crate::model::VirtualHost {
    c.snapshot
        .virtual_hosts
        .iter()
        .find(|v| v.hostname == host)
        .unwrap_or_else(|| panic!("no vhost {host}"))
}

/// `name/rule/match` of each route of a host, in order.
fn order(c: &Compiled, host: &str) -> Vec<String> {
    vhost(c, host)
        .routes
        .iter()
        .map(|r| format!("{}/{}/{}", r.id.name, r.id.rule, r.id.match_index))
        .collect()
}

fn route(name: &str, created: &str, host: &str, rules: &str) -> String {
    format!(
        "---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, namespace: default, generation: 1, creationTimestamp: \"{created}\"}}
spec:
  hosts: [{host}]
  rules:
{rules}
"
    )
}

const URL: &str = "backends: [{url: \"http://127.0.0.1:9000\"}]";

#[test]
fn precedence_follows_gateway_api() {
    let rules = format!(
        "  - {{name: regex, matches: [{{path: {{type: RegularExpression, value: \"/api/.*/x\"}}}}], {URL}}}
  - {{name: short, matches: [{{path: {{type: PathPrefix, value: /api}}}}], {URL}}}
  - {{name: long, matches: [{{path: {{type: PathPrefix, value: /api/v1/}}}}], {URL}}}
  - {{name: exact, matches: [{{path: {{type: Exact, value: /api/v1/items}}}}], {URL}}}
  - {{name: method, matches: [{{path: {{value: /api}}, methods: [GET]}}], {URL}}}
  - {{name: headers, matches: [{{path: {{value: /api}}, headers: [{{name: X-A, value: a}}, {{name: x-b, value: b}}]}}], {URL}}}
  - {{name: header, matches: [{{path: {{value: /api}}, headers: [{{name: x-a, value: a}}]}}], {URL}}}
  - {{name: query, matches: [{{path: {{value: /api}}, queryParams: [{{name: q, value: a}}]}}], {URL}}}
  - {{name: device, matches: [{{path: {{value: /api}}, devices: [mobile]}}], {URL}}}
  - {{name: root, {URL}}}"
    );
    let c = run(&route("r", "2025-01-01T00:00:00Z", "a.example.com", &rules));
    assert!(
        status(&c, "ApiRoute", "default", "r").is_accepted(),
        "{:#?}",
        c.statuses
    );
    assert_eq!(
        order(&c, "a.example.com"),
        [
            "r/exact/0",
            "r/long/0",
            "r/method/0",
            "r/headers/0",
            "r/header/0",
            "r/query/0",
            "r/device/0",
            "r/short/0",
            "r/root/0",
            "r/regex/0"
        ]
    );
    // The trailing slash of a prefix is not significant.
    let long = &vhost(&c, "a.example.com").routes[1];
    assert_eq!(long.matcher.path, PathMatcher::Prefix("/api/v1".into()));
}

#[test]
fn ties_go_to_the_older_route_then_namespace_and_name() {
    let yaml = [
        route(
            "b-newer",
            "2025-02-01T00:00:00Z",
            "h.example.com",
            &format!("  - {{matches: [{{path: {{value: /x}}, methods: [GET]}}], {URL}}}"),
        ),
        route(
            "c-older",
            "2025-01-01T00:00:00Z",
            "h.example.com",
            &format!("  - {{matches: [{{path: {{value: /x}}, methods: [POST]}}], {URL}}}"),
        ),
        route(
            "a-older",
            "2025-01-01T00:00:00Z",
            "h.example.com",
            &format!("  - {{matches: [{{path: {{value: /x}}, methods: [PUT]}}], {URL}}}"),
        ),
    ]
    .concat();
    let c = run(&yaml);
    assert_eq!(
        order(&c, "h.example.com"),
        ["a-older/rule-0/0", "c-older/rule-0/0", "b-newer/rule-0/0"]
    );
}

#[test]
fn identical_matches_conflict_and_the_older_route_wins() {
    let yaml = [
        route(
            "old",
            "2025-01-01T00:00:00Z",
            "h.example.com",
            &format!("  - {{matches: [{{path: {{value: /a}}}}], {URL}}}"),
        ),
        route(
            "new",
            "2025-03-01T00:00:00Z",
            "h.example.com",
            &format!("  - {{matches: [{{path: {{value: /a/}}}}, {{path: {{value: /b}}}}], {URL}}}"),
        ),
        route(
            "all",
            "2025-04-01T00:00:00Z",
            "h.example.com",
            &format!("  - {{matches: [{{path: {{value: /a}}}}], {URL}}}"),
        ),
    ]
    .concat();
    let c = run(&yaml);
    assert_eq!(order(&c, "h.example.com"), ["old/rule-0/0", "new/rule-0/1"]);
    let old = status(&c, "ApiRoute", "default", "old");
    assert!(old.is_accepted());
    assert!(old.condition("Conflicted").is_none());

    let new = status(&c, "ApiRoute", "default", "new");
    assert!(new.is_accepted());
    let conflicted = cond(new, "Conflicted");
    assert_eq!(conflicted.status, "True");
    assert!(
        conflicted.message.contains("spec.rules[0].matches[0]")
            && conflicted.message.contains("default/old"),
        "{}",
        conflicted.message
    );
    assert_eq!(new.serving_generation, Some(1));

    let all = status(&c, "ApiRoute", "default", "all");
    assert!(!all.is_accepted());
    assert_eq!(cond(all, "Accepted").reason, "Conflicted");
    assert_eq!(all.serving_generation, None);
    assert!(!c.snapshot.generations.contains_key("ApiRoute/default/all"));
}

const SERVICES: &str = "
---
apiVersion: v1
kind: Service
metadata: {name: products, namespace: shop}
spec:
  clusterIP: 10.0.0.10
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: products-b, namespace: shop, labels: {kubernetes.io/service-name: products}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.1.0.3]
- addresses: [10.1.0.1]
  conditions: {ready: true}
- addresses: [10.1.0.9]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: products-a, namespace: shop, labels: {kubernetes.io/service-name: products}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9001}]
endpoints:
- addresses: [10.1.0.1]
- addresses: [10.1.0.2]
---
apiVersion: v1
kind: Endpoints
metadata: {name: products, namespace: shop}
subsets:
- addresses: [{ip: 10.9.9.9}]
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  ports: [{port: 80, targetPort: 8081}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: legacy, namespace: shop}
subsets:
- addresses: [{ip: 10.2.0.2}, {ip: 10.2.0.1}]
  notReadyAddresses: [{ip: 10.2.0.3}]
  ports: [{port: 8081}]
---
apiVersion: v1
kind: Service
metadata:
  name: shared
  namespace: common
  annotations: {ferrogate.dev/allowed-namespaces: \"other, shop\"}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: private, namespace: common}
spec:
  ports: [{name: http, port: 80}]
";

fn shop_route(backends: &str) -> String {
    format!(
        "{SERVICES}
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: r, namespace: shop, generation: 2}}
spec:
  hosts: [shop.example.com]
  rules:
  - backends: {backends}
"
    )
}

fn endpoints(c: &Compiled, cluster: &str) -> Vec<String> {
    c.snapshot.clusters[cluster]
        .endpoints
        .iter()
        .map(|e| format!("{}:{}", e.host, e.port))
        .collect()
}

#[test]
fn services_resolve_to_ready_endpoints_from_slices_or_endpoints() {
    let c = run(&shop_route(
        "[{name: products, port: 80}, {name: products, port: 9000}, {name: legacy, port: 80}]",
    ));
    let s = status(&c, "ApiRoute", "shop", "r");
    assert!(s.is_accepted(), "{s:#?}");
    assert_eq!(cond(s, "ResolvedRefs").status, "True");
    // Slices win over Endpoints; sorted, deduplicated, ready only; the
    // slice port is found by the Service port's name.
    assert_eq!(
        endpoints(&c, "shop/products:80"),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    );
    assert_eq!(
        endpoints(&c, "shop/products:9000"),
        ["10.1.0.1:9001", "10.1.0.2:9001"]
    );
    // No slices: core/v1 Endpoints, never notReadyAddresses.
    assert_eq!(
        endpoints(&c, "shop/legacy:80"),
        ["10.2.0.1:8081", "10.2.0.2:8081"]
    );
}

#[test]
fn missing_backends_keep_the_route_accepted_and_get_500() {
    let c = run(&shop_route(
        "[{name: products, port: 80, weight: 3}, {name: nope, port: 80}, {name: products, port: 81}]",
    ));
    let s = status(&c, "ApiRoute", "shop", "r");
    assert!(s.is_accepted());
    let refs = cond(s, "ResolvedRefs");
    assert_eq!(
        (refs.status.as_str(), refs.reason.as_str()),
        ("False", "BackendNotFound")
    );
    assert!(
        refs.message
            .contains("spec.rules[0].backends[1]: Service shop/nope not found"),
        "{}",
        refs.message
    );
    assert!(
        refs.message
            .contains("has no port 81 (its ports: 80, 9000)"),
        "{}",
        refs.message
    );
    let Action::Forward(f) = &vhost(&c, "shop.example.com").routes[0].action else {
        panic!()
    };
    let names: Vec<(&str, u32)> = f
        .backends
        .iter()
        .map(|b| (b.cluster.as_str(), b.weight))
        .collect();
    assert_eq!(
        names,
        [
            ("shop/products:80", 3),
            ("unresolved:shop/nope:80", 1),
            ("unresolved:shop/products:81", 1)
        ]
    );
    assert_eq!(
        c.snapshot.clusters.keys().collect::<Vec<_>>(),
        ["shop/products:80"]
    );
    assert_eq!(c.snapshot.generations["ApiRoute/shop/r"], 2);
}

#[test]
fn cross_namespace_references_need_a_grant() {
    let c = run(&shop_route(
        "[{name: shared, namespace: common, port: 80}, {name: private, namespace: common, port: 80}]",
    ));
    let s = status(&c, "ApiRoute", "shop", "r");
    let refs = cond(s, "ResolvedRefs");
    assert_eq!(refs.reason, "RefNotPermitted");
    assert!(
        refs.message
            .contains("spec.rules[0].backends[1]: Service common/private"),
        "{}",
        refs.message
    );
    assert!(c.snapshot.clusters.contains_key("common/shared:80"));
    assert!(!c.snapshot.clusters.contains_key("common/private:80"));
}

#[test]
fn rule_settings_make_distinct_clusters() {
    let yaml = format!(
        "{SERVICES}
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: r, namespace: shop}}
spec:
  hosts: [shop.example.com]
  rules:
  - matches: [{{path: {{value: /a}}}}]
    backends: [{{name: products, port: 80}}, {{url: \"https://API.example.com/base/\"}}]
  - matches: [{{path: {{value: /b}}}}]
    backends: [{{name: products, port: 80}}]
    loadBalancer: {{type: ConsistentHash, hashOn: {{header: X-User}}}}
    outlierDetection: {{}}
  - matches: [{{path: {{value: /c}}}}]
    backends: [{{name: products, port: 80, protocol: HTTP2}}]
    timeouts: {{connect: 1s}}
"
    );
    let c = run(&yaml);
    assert!(status(&c, "ApiRoute", "shop", "r").is_accepted());
    let names: Vec<&String> = c.snapshot.clusters.keys().collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().any(|n| *n == "shop/products:80"));
    assert!(names
        .iter()
        .any(|n| *n == "https://api.example.com:443/base"));
    let suffixed: Vec<_> = names
        .iter()
        .filter(|n| n.starts_with("shop/products:80#"))
        .collect();
    assert_eq!(suffixed.len(), 2);
    assert!(suffixed
        .iter()
        .all(|n| n.len() == "shop/products:80#".len() + 8));
    let url = &c.snapshot.clusters["https://api.example.com:443/base"];
    assert_eq!(url.tls.as_ref().unwrap().server_name, "api.example.com");
    assert_eq!(url.path_prefix.as_deref(), Some("/base"));
    let hashed = c
        .snapshot
        .clusters
        .iter()
        .find(|(n, c)| n.starts_with("shop/products:80#") && c.outlier_detection.is_some())
        .unwrap()
        .1;
    let o = hashed.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (
            o.consecutive_failures,
            o.base_ejection_ms,
            o.max_ejection_percent
        ),
        (5, 30_000, 50)
    );
}

#[test]
fn invalid_fields_are_named_with_their_path() {
    let yaml = route(
        "bad",
        "2025-01-01T00:00:00Z",
        "Bad.Example.com",
        "  - {name: a, backends: [{url: \"http://127.0.0.1:9000\"}]}
  - name: b
    matches: [{path: {type: RegularExpression, value: \"/items/[\"}}, {path: {value: nope}}]
    backends: [{name: svc}]
    timeouts: {request: 5x}
  - {name: a, filters: {directResponse: {status: 200}}, backends: [{url: \"ftp://x\"}]}
  - name: c
    matches: [{path: {type: Exact, value: /c}}]
    backends: [{url: \"http://127.0.0.1:1\"}]
    filters: {urlRewrite: {path: {type: ReplacePrefixMatch, value: /x}}}
    loadBalancer: {type: ConsistentHash}",
    );
    let c = run(&yaml);
    let s = status(&c, "ApiRoute", "default", "bad");
    assert!(!s.is_accepted());
    let fields: Vec<(&str, &str)> = s
        .problems
        .iter()
        .map(|p| (p.field.as_str(), p.reason.as_str()))
        .collect();
    for expected in [
        ("spec.hosts[0]", "Invalid"),
        ("spec.rules[2].name", "Invalid"),
        ("spec.rules[1].matches[0].path.value", "InvalidRegex"),
        ("spec.rules[1].matches[1].path.value", "Invalid"),
        ("spec.rules[1].backends[0].port", "Invalid"),
        ("spec.rules[1].timeouts.request", "InvalidDuration"),
        ("spec.rules[2]", "Invalid"),
        ("spec.rules[3].filters.urlRewrite.path.type", "Invalid"),
        ("spec.rules[3].loadBalancer.hashOn", "Invalid"),
    ] {
        assert!(
            fields.contains(&expected),
            "{expected:?} not in {fields:#?}"
        );
    }
    let accepted = cond(s, "Accepted");
    assert_eq!(accepted.reason, "Invalid");
    assert!(accepted.message.contains(
        "spec.rules[1].matches[0].path.value: regex parse error: unclosed character class"
    ));
    assert!(accepted.message.ends_with("; nothing of it is served"));
    assert_eq!(accepted.observed_generation, Some(1));
    assert!(c.snapshot.virtual_hosts.is_empty());
}

#[test]
fn an_invalid_route_changes_nothing_else() {
    let good = [
        route(
            "a",
            "2025-01-01T00:00:00Z",
            "a.example.com",
            &format!("  - {{{URL}}}"),
        ),
        route(
            "b",
            "2025-01-01T00:00:00Z",
            "b.example.com",
            &format!("  - {{matches: [{{path: {{value: /x}}}}], {URL}}}"),
        ),
    ]
    .concat();
    let bad = route(
        "c",
        "2024-01-01T00:00:00Z",
        "a.example.com",
        "  - {matches: [{path: {type: RegularExpression, value: \"(\"}}], backends: [{url: \"http://127.0.0.1:1\"}]}",
    );
    let before = run(&good);
    let after = run(&format!("{good}{bad}"));
    assert_eq!(
        serde_json::to_string(&before.snapshot).unwrap(),
        serde_json::to_string(&after.snapshot).unwrap()
    );
    assert!(!status(&after, "ApiRoute", "default", "c").is_accepted());
}

#[test]
fn an_invalid_edit_keeps_the_last_accepted_version_serving() {
    let v1 = "
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: r, namespace: default, uid: u1, generation: 3}
spec:
  hosts: [a.example.com]
  rules: [{backends: [{url: \"http://127.0.0.1:9000\"}]}]
";
    let v2 = v1
        .replace("generation: 3", "generation: 4")
        .replace("http://127.0.0.1:9000", "http://127.0.0.1:0");
    let first = run(v1);
    let second = compile(&load(&v2), Some(&first), NOW);
    assert_eq!(first.snapshot.hash, second.snapshot.hash);
    let s = status(&second, "ApiRoute", "default", "r");
    let accepted = cond(s, "Accepted");
    assert_eq!(accepted.status, "False");
    assert_eq!(accepted.observed_generation, Some(4));
    assert!(
        accepted.message.ends_with("; still serving generation 3"),
        "{}",
        accepted.message
    );
    assert_eq!(s.serving_generation, Some(3));
    assert_eq!(second.snapshot.generations["ApiRoute/default/r"], 3);

    // Still invalid the next time: still serving generation 3.
    let third = compile(&load(&v2), Some(&second), NOW);
    assert_eq!(third.snapshot.hash, first.snapshot.hash);
    // A new object with the same name (new uid) does not inherit it.
    let recreated = v2.replace("uid: u1", "uid: u2");
    let fourth = compile(&load(&recreated), Some(&second), NOW);
    assert!(fourth.snapshot.virtual_hosts.is_empty());
    assert!(
        cond(status(&fourth, "ApiRoute", "default", "r"), "Accepted")
            .message
            .ends_with("nothing of it is served")
    );
}

#[test]
fn wildcard_routes_are_inherited_after_exact_ones() {
    let yaml = [
        route(
            "wild",
            "2025-01-01T00:00:00Z",
            "\"*.example.com\"",
            &format!("  - {{matches: [{{path: {{value: /w}}}}], {URL}}}"),
        ),
        route(
            "exact",
            "2025-02-01T00:00:00Z",
            "a.example.com",
            &format!("  - {{matches: [{{path: {{value: /}}}}], {URL}}}"),
        ),
    ]
    .concat();
    let c = run(&yaml);
    assert_eq!(order(&c, "*.example.com"), ["wild/rule-0/0"]);
    assert_eq!(
        order(&c, "a.example.com"),
        ["exact/rule-0/0", "wild/rule-0/0"]
    );
}

fn self_signed(hosts: &[&str], not_after_year: Option<i32>) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    if let Some(y) = not_after_year {
        params.not_after = rcgen::date_time_ymd(y, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls_yaml(
    name: &str,
    created: &str,
    hosts: &str,
    secret: &str,
    pem: &(String, String),
) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---
apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}
spec: {{hosts: {hosts}, secretName: {secret}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: default}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
        indent(&pem.0),
        indent(&pem.1)
    )
}

#[test]
fn certificates_are_checked_and_turn_on_https_redirects() {
    let good = self_signed(&["shop.example.com", "*.shop.example.com"], None);
    let expired = self_signed(&["old.example.com"], Some(2020));
    let yaml = [
        tls_yaml(
            "good",
            "2025-01-01T00:00:00Z",
            "[shop.example.com, \"*.shop.example.com\"]",
            "good-tls",
            &good,
        ),
        tls_yaml(
            "expired",
            "2025-01-01T00:00:00Z",
            "[old.example.com]",
            "old-tls",
            &expired,
        ),
        tls_yaml(
            "uncovered",
            "2025-01-01T00:00:00Z",
            "[other.example.com]",
            "good-tls-2",
            &good,
        ),
        tls_yaml(
            "newer",
            "2025-06-01T00:00:00Z",
            "[shop.example.com]",
            "good-tls-3",
            &good,
        ),
        "---
apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {name: missing, namespace: default}
spec: {hosts: [x.example.com], secretName: nope}
"
        .to_owned(),
        route(
            "r",
            "2025-01-01T00:00:00Z",
            "api.shop.example.com",
            &format!("  - {{{URL}}}"),
        ),
        route(
            "plain",
            "2025-01-01T00:00:00Z",
            "shop.example.com",
            &format!("  - {{{URL}}}"),
        )
        .replace("spec:\n", "spec:\n  allowPlainHttp: true\n"),
        route(
            "other",
            "2025-01-01T00:00:00Z",
            "a.b.shop.example.com",
            &format!("  - {{{URL}}}"),
        ),
    ]
    .concat();
    let c = run(&yaml);
    let g = status(&c, "TlsCertificate", "default", "good");
    assert!(g.is_accepted(), "{g:#?}");
    assert!(g.not_after.as_deref().unwrap().starts_with("4096-"));
    let e = status(&c, "TlsCertificate", "default", "expired");
    assert_eq!(cond(e, "Accepted").reason, "CertificateExpired");
    assert!(cond(e, "Accepted").message.starts_with(
        "spec.secretName: Secret default/old-tls: the certificate expired at 2020-01-01T00:00:00Z"
    ));
    let u = status(&c, "TlsCertificate", "default", "uncovered");
    assert_eq!(cond(u, "Accepted").reason, "HostNotCovered");
    let n = status(&c, "TlsCertificate", "default", "newer");
    assert_eq!(cond(n, "Accepted").reason, "Conflicted");
    let m = status(&c, "TlsCertificate", "default", "missing");
    assert!(m.is_accepted());
    assert_eq!(cond(m, "ResolvedRefs").reason, "SecretNotFound");

    assert_eq!(c.snapshot.certificates.len(), 1);
    assert_eq!(c.snapshot.certificates[0].name, "default/good");
    assert!(vhost(&c, "api.shop.example.com").routes[0].https_redirect);
    assert!(!vhost(&c, "shop.example.com").routes[0].https_redirect);
    // Two labels deep: the wildcard certificate does not cover it.
    assert!(!vhost(&c, "a.b.shop.example.com").routes[0].https_redirect);
}

#[test]
fn a_bad_secret_update_keeps_the_last_good_certificate() {
    let good = self_signed(&["shop.example.com"], None);
    let other = self_signed(&["shop.example.com"], None);
    let v1 = tls_yaml(
        "t",
        "2025-01-01T00:00:00Z",
        "[shop.example.com]",
        "s",
        &good,
    )
    .replace(
        "namespace: default, creation",
        "namespace: default, generation: 2, creation",
    );
    let first = run(&v1);
    assert_eq!(first.snapshot.certificates.len(), 1);
    // Key of another certificate: KeyMismatch, the old pair keeps serving.
    let v2 = tls_yaml(
        "t",
        "2025-01-01T00:00:00Z",
        "[shop.example.com]",
        "s",
        &(good.0.clone(), other.1.clone()),
    )
    .replace(
        "namespace: default, creation",
        "namespace: default, generation: 2, creation",
    );
    let second = compile(&load(&v2), Some(&first), NOW);
    assert_eq!(second.snapshot.hash, first.snapshot.hash);
    let s = status(&second, "TlsCertificate", "default", "t");
    let a = cond(s, "Accepted");
    assert_eq!(a.reason, "KeyMismatch");
    assert!(
        a.message
            .contains("still serving the last valid certificate (generation 2"),
        "{}",
        a.message
    );
}

const POLICY_ROUTES: &str = "
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop.example.com]
  rules:
  - {name: cart, matches: [{path: {value: /cart}}], backends: [{url: \"http://127.0.0.1:9102\"}]}
  - {name: pay, matches: [{path: {value: /pay}}], backends: [{url: \"http://127.0.0.1:9103\"}]}
";

fn policy(kind: &str, name: &str, created: &str, targets: &str, body: &str) -> String {
    format!(
        "---
apiVersion: ferrogate.dev/v1alpha1
kind: {kind}
metadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}
spec:
  targetRefs: {targets}
{body}
"
    )
}

const ALLOW_A: &str = "  authorization: {rules: [{action: Allow, organizations: [A]}]}";

#[test]
fn policies_attach_to_rules_and_routes() {
    let yaml = [
        POLICY_ROUTES.to_owned(),
        policy(
            "AuthPolicy",
            "route-old",
            "2025-01-01T00:00:00Z",
            "[{name: shop}]",
            ALLOW_A,
        ),
        policy(
            "AuthPolicy",
            "route-new",
            "2025-02-01T00:00:00Z",
            "[{name: shop}]",
            ALLOW_A,
        ),
        policy(
            "AuthPolicy",
            "rule",
            "2025-03-01T00:00:00Z",
            "[{name: shop, sectionName: pay}]",
            ALLOW_A,
        ),
        policy(
            "AuthPolicy",
            "lost",
            "2025-03-01T00:00:00Z",
            "[{name: nope}, {name: shop, sectionName: nope}]",
            ALLOW_A,
        ),
        policy(
            "AuthPolicy",
            "half",
            "2025-03-01T00:00:00Z",
            "[{name: nope}, {name: shop, sectionName: cart}]",
            ALLOW_A,
        ),
        policy(
            "RateLimitPolicy",
            "b-cart",
            "2025-01-01T00:00:00Z",
            "[{name: shop, sectionName: cart}]",
            "  limits: [{name: add, requests: 35, period: 1m}]",
        ),
        policy(
            "RateLimitPolicy",
            "a-all",
            "2025-01-01T00:00:00Z",
            "[{name: shop}]",
            "  limits: [{name: all, requests: 100, period: 1s}]",
        ),
        policy(
            "RateLimitPolicy",
            "global",
            "2025-01-01T00:00:00Z",
            "[{name: shop}]",
            "  scope: Global\n  limits: [{name: all, requests: 100, period: 1s}]",
        ),
    ]
    .concat();
    let c = run(&yaml);
    let routes = &vhost(&c, "shop.example.com").routes;
    let cart = routes.iter().find(|r| r.id.rule == "cart").unwrap();
    let pay = routes.iter().find(|r| r.id.rule == "pay").unwrap();
    assert_eq!(pay.auth.as_deref(), Some("default/rule"));
    // Both rule-level policies on cart: "half" is the only rule-level one.
    assert_eq!(cart.auth.as_deref(), Some("default/half"));
    assert_eq!(cart.rate_limits, ["default/a-all", "default/b-cart"]);
    assert_eq!(pay.rate_limits, ["default/a-all"]);

    let lost = status(&c, "AuthPolicy", "default", "lost");
    assert_eq!(cond(lost, "Accepted").reason, "TargetNotFound");
    assert!(cond(lost, "ResolvedRefs")
        .message
        .contains("has no rule named \"nope\" (its rules: cart, pay)"));
    let half = status(&c, "AuthPolicy", "default", "half");
    assert!(half.is_accepted());
    assert_eq!(cond(half, "ResolvedRefs").reason, "TargetNotFound");
    let global = status(&c, "RateLimitPolicy", "default", "global");
    assert_eq!(cond(global, "Accepted").reason, "Invalid");
    assert!(global.problems[0].field == "spec.failureMode");
    assert!(!c.snapshot.rate_limits.contains_key("default/global"));
    assert!(c
        .snapshot
        .generations
        .contains_key("AuthPolicy/default/route-old"));
}

#[test]
fn a_new_invalid_auth_policy_fails_closed() {
    let yaml = [
        POLICY_ROUTES.to_owned(),
        policy(
            "AuthPolicy",
            "broken",
            "2025-01-01T00:00:00Z",
            "[{name: shop}]",
            "  authentication:\n    methods: [{jwt: {issuer: x, algorithms: [HS256], jwksUri: \"https://idp/jwks\"}}]",
        ),
    ]
    .concat();
    let c = run(&yaml);
    let s = status(&c, "AuthPolicy", "default", "broken");
    let a = cond(s, "Accepted");
    assert_eq!(a.status, "False");
    assert!(a.message.contains("spec.authentication.methods[0].jwt.algorithms: HS256, HS384 and HS512 need hmacSecretRef"), "{}", a.message);
    assert!(a.message.ends_with("fail closed)"));
    let config = &c.snapshot.auth_policies["default/broken"];
    assert!(config.methods.is_empty() && !config.rules[0].allow);
    assert!(vhost(&c, "shop.example.com")
        .routes
        .iter()
        .all(|r| r.auth.as_deref() == Some("default/broken")));
    assert!(!c
        .snapshot
        .generations
        .contains_key("AuthPolicy/default/broken"));
}

#[test]
fn secrets_become_digests_and_hashes() {
    let yaml = [
        POLICY_ROUTES.to_owned(),
        policy(
            "AuthPolicy",
            "keys",
            "2025-01-01T00:00:00Z",
            "[{name: shop}]",
            "  authentication:
    methods:
    - apiKey: {secretSelector: {app: shop}}
    - basic: {secretRef: {name: users, key: htpasswd}}
    - jwt: {issuer: me, algorithms: [HS256], hmacSecretRef: {name: hmac, key: secret}}",
        ),
        "---
apiVersion: v1
kind: Secret
metadata: {name: key-a, namespace: default, labels: {app: shop}}
stringData: {api-key: \"secret-a\\n\", consumer: alice, groups: \"b, a\", organization: A}
---
apiVersion: v1
kind: Secret
metadata: {name: key-b, namespace: default, labels: {app: shop}}
stringData: {api-key: secret-b}
---
apiVersion: v1
kind: Secret
metadata: {name: users, namespace: default}
stringData:
  htpasswd: |
    bob:$2y$05$abcdefghijklmnopqrstuv
    eve:$apr1$xyz$abc
---
apiVersion: v1
kind: Secret
metadata: {name: hmac, namespace: default}
data: {secret: c2VjcmV0}
"
        .to_owned(),
    ]
    .concat();
    let c = run(&yaml);
    let s = status(&c, "AuthPolicy", "default", "keys");
    assert!(s.is_accepted(), "{s:#?}");
    let refs = cond(s, "ResolvedRefs");
    assert!(
        refs.message
            .contains("Secret default/key-b has no data key consumer"),
        "{}",
        refs.message
    );
    assert!(
        refs.message
            .contains("htpasswd user \"eve\" (line 2): MD5 password hashes are refused"),
        "{}",
        refs.message
    );
    assert!(!refs.message.contains("$apr1$"));
    let config = &c.snapshot.auth_policies["default/keys"];
    let AuthMethodConfig::ApiKey(k) = &config.methods[0] else {
        panic!()
    };
    assert_eq!(k.keys.len(), 1);
    assert_eq!(
        k.keys[0].sha256,
        hex::encode(sha2::Sha256::digest(b"secret-a"))
    );
    assert_eq!(k.keys[0].groups, ["a", "b"]);
    assert_eq!(k.keys[0].organization.as_deref(), Some("A"));
    let AuthMethodConfig::Basic(b) = &config.methods[1] else {
        panic!()
    };
    assert_eq!(b.users.len(), 1);
    assert_eq!(b.users[0].0, "bob");
    let AuthMethodConfig::Jwt(j) = &config.methods[2] else {
        panic!()
    };
    assert_eq!(j.keys, JwtKeys::Hmac("c2VjcmV0".into()));
    let json = serde_json::to_string(&c.snapshot).unwrap();
    assert!(!json.contains("secret-a"));
}

#[test]
fn duplicate_objects_resolve_deterministically() {
    let a = route(
        "r",
        "2025-01-01T00:00:00Z",
        "a.example.com",
        &format!("  - {{{URL}}}"),
    );
    let b = route(
        "r",
        "2025-01-01T00:00:00Z",
        "b.example.com",
        &format!("  - {{{URL}}}"),
    );
    let one = run(&format!("{a}{b}"));
    let two = run(&format!("{b}{a}"));
    assert_eq!(one.snapshot.hash, two.snapshot.hash);
    assert_eq!(one.snapshot.virtual_hosts.len(), 1);
}

use sha2::Digest;

#[test]
fn the_streamed_hash_is_the_model_content_hash() {
    let c = run(&route(
        "r",
        "2025-01-01T00:00:00Z",
        "a.example.com",
        &format!("  - {{{URL}}}"),
    ));
    assert_eq!(c.snapshot.hash, c.snapshot.content_hash());
    assert_eq!(c.snapshot.version, 0);
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let regexes = |from: usize, to: usize| {
        (from..to)
            .map(|i| format!("{{path: {{type: RegularExpression, value: \"/r{i}/.*\"}}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rules = format!(
        "  - {{name: a, matches: [{}], {URL}}}\n  - {{name: b, matches: [{}], {URL}}}\n  - {{name: c, matches: [{}], {URL}}}",
        regexes(0, 16),
        regexes(16, 32),
        regexes(32, 33),
    );
    let many = route("many", "2025-01-01T00:00:00Z", "a.example.com", &rules);
    let c = run(&many);
    let s = status(&c, "ApiRoute", "default", "many");
    assert!(!s.is_accepted());
    assert!(
        s.problems.iter().any(|p| p.field == "spec.rules"
            && p.message == "33 regular expressions in all matches; at most 32"),
        "{:#?}",
        s.problems
    );
    let big = route(
        "big",
        "2025-01-01T00:00:00Z",
        "b.example.com",
        &format!("  - {{matches: [{{path: {{type: RegularExpression, value: \"(a{{100}}){{100}}\"}}}}], {URL}}}"),
    );
    let c = run(&big);
    let s = status(&c, "ApiRoute", "default", "big");
    assert_eq!(s.problems[0].reason, "InvalidRegex");
    assert!(
        s.problems[0].message.contains("too large"),
        "{:?}",
        s.problems
    );
}

#[test]
fn forward_auth_to_a_service_uses_its_cluster_ip() {
    let yaml = [
        SERVICES.to_owned(),
        POLICY_ROUTES.replace("namespace: default", "namespace: shop"),
        policy(
            "AuthPolicy",
            "fwd",
            "2025-01-01T00:00:00Z",
            "[{name: shop}]",
            "  authentication:\n    methods: [{forward: {service: {name: products, port: 80, path: /check}}}]",
        )
        .replace("namespace: default", "namespace: shop"),
        policy(
            "AuthPolicy",
            "missing",
            "2025-02-01T00:00:00Z",
            "[{name: shop, sectionName: pay}]",
            "  authentication:\n    methods: [{forward: {service: {name: nope, port: 80}}}]",
        )
        .replace("namespace: default", "namespace: shop"),
    ]
    .concat();
    let c = run(&yaml);
    let AuthMethodConfig::Forward(f) = &c.snapshot.auth_policies["shop/fwd"].methods[0] else {
        panic!()
    };
    assert_eq!(f.url, "http://10.0.0.10:80/check");
    assert_eq!(f.request_headers, ["authorization", "cookie"]);
    // An unresolved forward-auth Service fails closed.
    let missing = &c.snapshot.auth_policies["shop/missing"];
    assert!(missing.methods.is_empty() && !missing.rules[0].allow);
    let s = status(&c, "AuthPolicy", "shop", "missing");
    assert!(s.is_accepted());
    assert_eq!(cond(s, "ResolvedRefs").reason, "BackendNotFound");
}
