//! Property tests of the compiler: determinism under any input order, and
//! no panic on arbitrary resources.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use crds::auth::{
    ApiKeyAuth, AuthMethod, Authentication, Authorization, AuthorizationRule, BasicAuth,
    ForwardAuth, ForwardAuthService, JwtAlgorithm, JwtProvider,
};
use crds::common::{DeviceClass, Method, SecretKeyRef, TargetKind, TargetRef};
use crds::ratelimit::{KeyPart, KeySource, Limit, RateLimitScope};
use crds::route::*;
use crds::tls::TlsCertificateSpec;
use crds::{
    ApiRoute, ApiRouteSpec, AuthPolicy, AuthPolicySpec, RateLimitPolicy, RateLimitPolicySpec,
    TlsCertificate,
};
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::ByteString;
use proptest::prelude::*;
use snapshot::Resources;
use std::collections::BTreeMap;

const NOW: i64 = 1_798_761_600;

fn meta(ns: &str, name: &str, created_secs: i64) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(format!("uid-{ns}-{name}")),
        generation: Some(1),
        creation_timestamp: Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created_secs).unwrap(),
        )),
        ..ObjectMeta::default()
    }
}

/// A realistic set with conflicts, shared Services, policies and
/// certificates: the examples plus generated routes.
fn fixture() -> Resources {
    let mut r = common::load_dir(&common::examples_dir());
    for i in 0..12 {
        let ns = if i % 3 == 0 { "a" } else { "b" };
        let svc = format!("svc-{}", i % 4);
        r.services.push(Service {
            metadata: meta(ns, &svc, 0),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        });
        r.endpoint_slices.push(EndpointSlice {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_owned(),
                    svc.clone(),
                )])),
                ..meta(ns, &format!("{svc}-{i}"), 0)
            },
            address_type: "IPv4".into(),
            endpoints: (0..3)
                .map(|k| Endpoint {
                    addresses: vec![format!("10.0.{i}.{}", 3 - k)],
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..EndpointPort::default()
            }]),
        });
        let rule = |path: &str| RouteRule {
            matches: vec![RouteMatch {
                path: Some(PathMatch {
                    type_: PathMatchType::PathPrefix,
                    value: path.to_owned(),
                }),
                ..RouteMatch::default()
            }],
            backends: vec![Backend {
                name: Some(svc.clone()),
                port: Some(80),
                ..Backend::default()
            }],
            ..RouteRule::default()
        };
        r.api_routes.push(ApiRoute {
            metadata: meta(ns, &format!("route-{i}"), (i % 5) as i64),
            spec: ApiRouteSpec {
                // Shared hosts and paths: conflicts decided by age and name.
                hosts: vec![format!("h{}.example.com", i % 3), "*.example.com".into()],
                allow_plain_http: false,
                rules: vec![rule(&format!("/p{}", i % 4)), rule("/")],
            },
            status: None,
        });
    }
    r
}

fn shuffled(mut r: Resources, seed: &[usize]) -> Resources {
    fn perm<T>(v: &mut [T], seed: &[usize]) {
        for (i, s) in seed.iter().enumerate() {
            if v.len() > 1 {
                let a = i % v.len();
                let b = s % v.len();
                v.swap(a, b);
            }
        }
    }
    perm(&mut r.api_routes, seed);
    perm(&mut r.services, seed);
    perm(&mut r.endpoint_slices, seed);
    perm(&mut r.secrets, seed);
    perm(&mut r.auth_policies, seed);
    perm(&mut r.rate_limit_policies, seed);
    perm(&mut r.tls_certificates, seed);
    for s in &mut r.endpoint_slices {
        perm(&mut s.endpoints, seed);
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_input_order_gives_the_same_bytes(seed in proptest::collection::vec(0usize..1000, 1..40)) {
        let base = fixture();
        let expected = snapshot::compile(&base, None, NOW);
        let again = snapshot::compile(&shuffled(base, &seed), None, NOW);
        prop_assert_eq!(&expected.snapshot.hash, &again.snapshot.hash);
        prop_assert_eq!(
            serde_json::to_string(&expected.snapshot).unwrap(),
            serde_json::to_string(&again.snapshot).unwrap()
        );
        prop_assert_eq!(
            serde_json::to_string(&expected.statuses.values().collect::<Vec<_>>()).unwrap(),
            serde_json::to_string(&again.statuses.values().collect::<Vec<_>>()).unwrap()
        );
    }
}

#[test]
fn the_fixture_has_conflicts_and_endpoints() {
    let c = snapshot::compile(&fixture(), None, NOW);
    assert!(c
        .statuses
        .values()
        .any(|s| s.condition("Conflicted").is_some()));
    assert!(c.snapshot.clusters.values().any(|c| c.endpoints.len() == 6));
}

// ---- arbitrary resources ----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.*-]{0,24}",
        "/[a-zA-Z0-9/._~%-]{0,16}",
        "[(\\[{}*+?|.^$a-z0-9\\\\]{0,16}",
        "[0-9]{0,6}(h|m|s|ms|d|)",
        "(http|https|ftp)://[a-zA-Z0-9.:\\[\\]@/?#-]{0,24}",
        ".{0,24}",
        Just(String::new()),
        Just("*.example.com".to_owned()),
        Just("shop.example.com".to_owned()),
    ]
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.5, s)
}

fn backend() -> impl Strategy<Value = Backend> {
    (
        opt(text()),
        opt(text()),
        opt(any::<u16>()),
        opt(text()),
        opt(prop_oneof![any::<u32>(), 0u32..5]),
        opt(prop_oneof![
            Just(BackendProtocol::Http1),
            Just(BackendProtocol::Http2)
        ]),
    )
        .prop_map(|(name, namespace, port, url, weight, protocol)| Backend {
            name,
            namespace,
            port,
            url,
            weight,
            protocol,
        })
}

fn path_match() -> impl Strategy<Value = PathMatch> {
    (
        prop_oneof![
            Just(PathMatchType::Exact),
            Just(PathMatchType::PathPrefix),
            Just(PathMatchType::RegularExpression)
        ],
        text(),
    )
        .prop_map(|(type_, value)| PathMatch { type_, value })
}

fn header_match() -> impl Strategy<Value = HeaderMatch> {
    (
        text(),
        prop_oneof![
            Just(ValueMatchType::Exact),
            Just(ValueMatchType::RegularExpression),
            Just(ValueMatchType::Present)
        ],
        text(),
    )
        .prop_map(|(name, type_, value)| HeaderMatch { name, type_, value })
}

fn route_match() -> impl Strategy<Value = RouteMatch> {
    (
        opt(path_match()),
        proptest::collection::vec(prop_oneof![Just(Method::Get), Just(Method::Post)], 0..3),
        proptest::collection::vec(header_match(), 0..3),
        proptest::collection::vec(header_match(), 0..2),
        proptest::collection::vec(
            prop_oneof![Just(DeviceClass::Mobile), Just(DeviceClass::Bot)],
            0..3,
        ),
    )
        .prop_map(
            |(path, methods, headers, query_params, devices)| RouteMatch {
                path,
                methods,
                headers,
                query_params,
                devices,
            },
        )
}

fn filters() -> impl Strategy<Value = Filters> {
    (
        opt(
            (text(), text()).prop_map(|(name, value)| crds::route::HeaderChanges {
                set: vec![HeaderValue { name, value }],
                add: vec![],
                remove: vec![],
            }),
        ),
        opt(
            (opt(text()), opt((any::<bool>(), text()))).prop_map(|(hostname, path)| UrlRewrite {
                hostname,
                path: path.map(|(prefix, value)| crds::route::PathRewrite {
                    type_: if prefix {
                        PathRewriteType::ReplacePrefixMatch
                    } else {
                        PathRewriteType::ReplaceFullPath
                    },
                    value,
                }),
            }),
        ),
        opt(
            (opt(text()), opt(any::<u16>()), opt(any::<u16>())).prop_map(
                |(scheme, port, status_code)| crds::route::Redirect {
                    scheme,
                    hostname: None,
                    port,
                    path: None,
                    status_code,
                },
            ),
        ),
        opt(
            (any::<u16>(), text()).prop_map(|(status, body)| crds::route::DirectResponse {
                status,
                body,
                content_type: None,
            }),
        ),
        opt(proptest::collection::vec(text(), 0..3).prop_map(|remove| {
            crds::route::JsonTransform {
                remove,
                ..Default::default()
            }
        })),
        opt(
            (opt(text()), opt(any::<u32>())).prop_map(|(default_ttl, max_entry_bytes)| Cache {
                default_ttl,
                max_entry_bytes,
                ..Default::default()
            }),
        ),
    )
        .prop_map(
            |(
                request_headers,
                url_rewrite,
                redirect,
                direct_response,
                response_transform,
                cache,
            )| {
                Filters {
                    request_headers,
                    response_headers: None,
                    url_rewrite,
                    redirect,
                    direct_response,
                    response_transform,
                    cache,
                }
            },
        )
}

fn rule() -> impl Strategy<Value = RouteRule> {
    (
        opt(text()),
        proptest::collection::vec(route_match(), 0..3),
        proptest::collection::vec(backend(), 0..3),
        opt(filters()),
        opt((opt(text()), opt(text()), opt(text())).prop_map(
            |(request, backend_request, connect)| Timeouts {
                request,
                backend_request,
                connect,
            },
        )),
        opt((0u32..20, opt(text()), opt(0u32..200)).prop_map(
            |(attempts, backoff, budget_percent)| Retry {
                attempts,
                retry_on: vec![RetryOn::GatewayError],
                backoff,
                budget_percent,
            },
        )),
        opt(
            (any::<bool>(), opt(text())).prop_map(|(hash, header)| LoadBalancer {
                type_: if hash {
                    LoadBalancerType::ConsistentHash
                } else {
                    LoadBalancerType::LeastRequest
                },
                hash_on: header.map(|h| HashOn {
                    header: Some(h),
                    ..Default::default()
                }),
            }),
        ),
        opt(
            (opt(0u32..2000), opt(text()), opt(0u32..200)).prop_map(|(c, t, m)| OutlierDetection {
                consecutive_failures: c,
                base_ejection_time: t,
                max_ejection_percent: m,
            }),
        ),
        opt(proptest::collection::vec(
            (text(), backend(), text(), opt(text())).prop_map(|(name, backend, path, timeout)| {
                AggregatePart {
                    name,
                    backend,
                    path,
                    timeout,
                    forward_headers: vec![],
                }
            }),
            0..3,
        )
        .prop_map(|parts| Aggregate {
            parts,
            on_part_failure: PartFailurePolicy::Omit,
        })),
    )
        .prop_map(
            |(
                name,
                matches,
                backends,
                filters,
                timeouts,
                retry,
                load_balancer,
                outlier_detection,
                aggregate,
            )| {
                RouteRule {
                    name,
                    matches,
                    backends,
                    filters,
                    timeouts,
                    retry,
                    load_balancer,
                    outlier_detection,
                    aggregate,
                }
            },
        )
}

fn api_route() -> impl Strategy<Value = ApiRoute> {
    (
        "[ab]",
        "[a-c]{1,2}",
        0i64..3,
        proptest::collection::vec(text(), 0..3),
        any::<bool>(),
        proptest::collection::vec(rule(), 0..4),
    )
        .prop_map(
            |(ns, name, created, hosts, allow_plain_http, rules)| ApiRoute {
                metadata: meta(&ns, &name, created),
                spec: ApiRouteSpec {
                    hosts,
                    allow_plain_http,
                    rules,
                },
                status: None,
            },
        )
}

fn target() -> impl Strategy<Value = TargetRef> {
    ("[a-c]{1,2}", opt(text())).prop_map(|(name, section_name)| TargetRef {
        kind: TargetKind::ApiRoute,
        name,
        section_name,
    })
}

fn secret_ref() -> impl Strategy<Value = SecretKeyRef> {
    (text(), opt("[ab]"), text()).prop_map(|(name, namespace, key)| SecretKeyRef {
        name,
        namespace,
        key,
    })
}

fn auth_policy() -> impl Strategy<Value = AuthPolicy> {
    let method = (
        opt((
            text(),
            proptest::collection::vec(
                prop_oneof![Just(JwtAlgorithm::RS256), Just(JwtAlgorithm::HS256)],
                0..2,
            ),
            opt(text()),
            opt(text()),
            opt(secret_ref()),
            opt(text()),
        )
            .prop_map(
                |(issuer, algorithms, jwks_uri, jwks, hmac_secret_ref, clock_skew)| JwtProvider {
                    issuer,
                    algorithms,
                    jwks_uri,
                    jwks,
                    hmac_secret_ref,
                    clock_skew,
                    ..Default::default()
                },
            )),
        opt(text().prop_map(|v| ApiKeyAuth {
            secret_selector: BTreeMap::from([("app".to_owned(), v)]),
            key_from: None,
        })),
        opt(secret_ref().prop_map(|secret_ref| BasicAuth {
            secret_ref,
            realm: None,
        })),
        opt(
            (opt(text()), opt((text(), any::<u16>()))).prop_map(|(url, service)| ForwardAuth {
                url,
                service: service.map(|(name, port)| ForwardAuthService {
                    name,
                    port,
                    path: None,
                }),
                ..Default::default()
            }),
        ),
    )
        .prop_map(|(jwt, api_key, basic, forward)| AuthMethod {
            jwt,
            api_key,
            basic,
            forward,
        });
    (
        "[ab]",
        "[a-c]{1,2}",
        proptest::collection::vec(target(), 0..3),
        opt(proptest::collection::vec(method, 0..3)),
        opt(proptest::collection::vec(
            (
                proptest::collection::vec(text(), 0..2),
                proptest::collection::vec(text(), 0..2),
            )
                .prop_map(|(paths, client_cidrs)| AuthorizationRule {
                    paths,
                    client_cidrs,
                    ..Default::default()
                }),
            0..3,
        )),
    )
        .prop_map(|(ns, name, target_refs, methods, rules)| AuthPolicy {
            metadata: meta(&ns, &name, 0),
            spec: AuthPolicySpec {
                target_refs,
                authentication: methods.map(|methods| Authentication {
                    methods,
                    ..Default::default()
                }),
                authorization: rules.map(|rules| Authorization { rules }),
            },
            status: None,
        })
}

fn rate_limit_policy() -> impl Strategy<Value = RateLimitPolicy> {
    (
        "[ab]",
        "[a-c]{1,2}",
        proptest::collection::vec(target(), 0..3),
        any::<bool>(),
        proptest::collection::vec(
            (text(), any::<u32>(), text(), opt(text())).prop_map(
                |(name, requests, period, header)| Limit {
                    name,
                    requests,
                    period,
                    key: vec![KeyPart {
                        source: KeySource::Header,
                        name: header,
                    }],
                    ..Default::default()
                },
            ),
            0..3,
        ),
    )
        .prop_map(|(ns, name, target_refs, global, limits)| RateLimitPolicy {
            metadata: meta(&ns, &name, 0),
            spec: RateLimitPolicySpec {
                target_refs,
                scope: if global {
                    RateLimitScope::Global
                } else {
                    RateLimitScope::Local
                },
                failure_mode: None,
                limits,
            },
            status: None,
        })
}

fn tls_certificate() -> impl Strategy<Value = (TlsCertificate, Secret)> {
    (
        "[ab]",
        "[a-c]{1,2}",
        proptest::collection::vec(text(), 0..3),
        text(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(ns, name, hosts, secret_name, bytes)| {
            let cert = TlsCertificate {
                metadata: meta(&ns, &name, 0),
                spec: TlsCertificateSpec {
                    hosts,
                    secret_name: secret_name.clone(),
                    issuer: None,
                    min_version: None,
                    client_validation: None,
                },
                status: None,
            };
            let secret = Secret {
                metadata: meta(&ns, &secret_name, 0),
                data: Some(BTreeMap::from([
                    ("tls.crt".to_owned(), ByteString(bytes.clone())),
                    ("tls.key".to_owned(), ByteString(bytes)),
                    (
                        "htpasswd".to_owned(),
                        ByteString(b"u:$apr1$x\nv:$2y$05$y\n".to_vec()),
                    ),
                ])),
                ..Secret::default()
            };
            (cert, secret)
        })
}

fn resources() -> impl Strategy<Value = Resources> {
    (
        proptest::collection::vec(api_route(), 0..5),
        proptest::collection::vec(auth_policy(), 0..3),
        proptest::collection::vec(rate_limit_policy(), 0..3),
        proptest::collection::vec(tls_certificate(), 0..3),
    )
        .prop_map(|(routes, auth, limits, certs)| {
            let mut r = Resources {
                api_routes: routes,
                auth_policies: auth,
                rate_limit_policies: limits,
                ..Resources::default()
            };
            for (c, s) in certs {
                r.tls_certificates.push(c);
                r.secrets.push(s);
            }
            r
        })
}

/// The strategy's types are deep; debug builds need more than the test
/// thread's default stack to generate them.
#[test]
fn arbitrary_resources_never_panic() {
    let worker = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let mut runner =
                proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
            runner
                .run(&resources(), |r| {
                    let first = snapshot::compile(&r, None, NOW);
                    // Compiling again with the previous result is stable.
                    let second = snapshot::compile(&r, Some(&first), NOW);
                    prop_assert_eq!(&first.snapshot.hash, &second.snapshot.hash);
                    // Every rejected resource says why.
                    for status in first.statuses.values() {
                        prop_assert!(status.is_accepted() || !status.problems.is_empty());
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())
        })
        .unwrap();
    worker.join().unwrap().unwrap();
}
