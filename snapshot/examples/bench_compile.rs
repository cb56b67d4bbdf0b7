//! Times `snapshot::compile` on generated clusters: N ApiRoutes (a unique
//! host and path each), each with its own Service and an EndpointSlice of
//! three ready endpoints. Prints the median of 5 runs per N.
//!
//! Run with `bench/compile.sh` (release build). `BENCH_SIZES=100,1000`
//! changes the sizes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crds::route::{Backend, PathMatch, PathMatchType, RouteMatch, RouteRule};
use crds::{ApiRoute, ApiRouteSpec};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use snapshot::Resources;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// 2027-01-01T00:00:00Z.
const NOW: i64 = 1_798_761_600;
const RUNS: usize = 5;

fn meta(ns: &str, name: &str, i: usize) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(format!("{ns}-{name}")),
        generation: Some(1),
        creation_timestamp: Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + i as i64).unwrap(),
        )),
        ..ObjectMeta::default()
    }
}

fn generate(n: usize) -> Resources {
    let mut r = Resources::default();
    for i in 0..n {
        let ns = format!("team-{}", i % 20);
        let name = format!("svc-{i}");
        r.services.push(Service {
            metadata: meta(&ns, &name, i),
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250)),
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
                    name.clone(),
                )])),
                ..meta(&ns, &format!("{name}-abcde"), i)
            },
            address_type: "IPv4".into(),
            endpoints: (0..3)
                .map(|k| Endpoint {
                    addresses: vec![format!("10.{}.{}.{}", k + 1, i / 250, i % 250)],
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..EndpointPort::default()
            }]),
        });
        r.api_routes.push(ApiRoute {
            metadata: meta(&ns, &format!("route-{i}"), i),
            spec: ApiRouteSpec {
                hosts: vec![format!("app-{i}.example.com")],
                allow_plain_http: false,
                rules: vec![RouteRule {
                    name: Some("api".into()),
                    matches: vec![RouteMatch {
                        path: Some(PathMatch {
                            type_: PathMatchType::PathPrefix,
                            value: format!("/api/v{}", i % 3),
                        }),
                        ..RouteMatch::default()
                    }],
                    backends: vec![Backend {
                        name: Some(name),
                        port: Some(80),
                        ..Backend::default()
                    }],
                    ..RouteRule::default()
                }],
            },
            status: None,
        });
    }
    r
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000, 10_000]);
    println!("| routes | median | min | max | snapshot JSON |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for n in sizes {
        let resources = generate(n);
        let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
        let mut bytes = 0;
        for _ in 0..RUNS {
            let start = Instant::now();
            let compiled = snapshot::compile(&resources, None, NOW);
            times.push(start.elapsed());
            assert_eq!(compiled.snapshot.virtual_hosts.len(), n);
            assert!(compiled.statuses.values().all(|s| s.is_accepted()));
            bytes = serde_json::to_vec(&compiled.snapshot)
                .map(|v| v.len())
                .unwrap_or(0);
        }
        times.sort();
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {n} | {} | {} | {} | {:.1} MiB |",
            ms(times[RUNS / 2]),
            ms(times[0]),
            ms(times[RUNS - 1]),
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
}
