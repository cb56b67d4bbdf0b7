//! The request-path table: everything built from one snapshot, off the
//! request path, and published with one atomic swap.
//!
//! Building validates the snapshot again (regexes, certificates, endpoint
//! addresses): a snapshot that does not build is refused and the previous
//! table keeps serving. Cluster state that should outlive a swap (passive
//! health of endpoints that are still there) is carried over from the
//! previous table.

use crate::balance::{Balancer, Policy, WeightedSplit};
use crate::health::{HealthTable, OutlierConfig};
use crate::metrics::{ClusterLabels, Metrics, RouteLabels, RouteMetrics, UnmatchedMetrics};
use crate::router::{Router, RouterError};
use crate::tls::{CertSource, SniResolver, TlsBuildError};
use crate::upstream::{Clients, HttpClient};
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use snapshot::model::{Action, Cluster, LoadBalancerPolicy, Snapshot, UpstreamProtocol};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a snapshot could not be built into a table.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A route could not be compiled (bad regex, bad host).
    #[error("routes: {0}")]
    Router(#[from] RouterError),
    /// A certificate could not be loaded.
    #[error("certificates: {0}")]
    Tls(#[from] TlsBuildError),
    /// A cluster is invalid.
    #[error("cluster {cluster}: {reason}")]
    Cluster {
        /// Cluster name.
        cluster: String,
        /// What is wrong.
        reason: String,
    },
    /// An AuthPolicy or RateLimitPolicy is invalid or missing.
    #[error("policy {policy}: {reason}")]
    Policy {
        /// `namespace/name` of the policy.
        policy: String,
        /// What is wrong.
        reason: String,
    },
}

/// Per-cluster runtime state.
pub struct ClusterRuntime {
    /// Cluster name.
    pub name: String,
    /// The cluster as configured.
    pub config: Cluster,
    /// Pooled client (HTTPS and HTTP/2 clusters).
    pub client: HttpClient,
    /// Per-endpoint connection pools, in endpoint order, for plain-text
    /// HTTP/1.1 clusters (see `connpool`).
    pub pools: Option<Vec<Arc<crate::connpool::EndpointPool>>>,
    authorities: Vec<String>,
    /// The same, parsed once for building upstream URIs.
    uri_authorities: Vec<http::uri::Authority>,
    balancer: Balancer,
    in_flight: Arc<[AtomicU32]>,
    health: Option<Arc<HealthTable>>,
    /// Requests in flight on this cluster (for the retry budget).
    pub requests_in_flight: AtomicU32,
    retries_in_flight: AtomicU32,
    attempts: Counter,
    retries: Counter,
    ejections: Counter,
    timeouts: Counter,
    durations: prometheus_client::metrics::histogram::Histogram,
}

/// Tracks one attempt at an endpoint; reports its outcome to passive health
/// and the least-request counters.
pub struct AttemptGuard<'a> {
    cluster: &'a ClusterRuntime,
    endpoint: usize,
    done: bool,
}

impl AttemptGuard<'_> {
    /// The attempt succeeded (any non-5xx answer).
    pub fn success(mut self) {
        self.done = true;
        if let Some(health) = &self.cluster.health {
            health.record_success(self.endpoint);
        }
    }

    /// The attempt failed (connect error, reset, timeout, 5xx).
    pub fn failure(mut self) {
        self.done = true;
        if let Some(health) = &self.cluster.health {
            if health.record_failure(self.endpoint, Instant::now()) {
                self.cluster.ejections.inc();
            }
        }
    }
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        if let Some(counter) = self.cluster.in_flight.get(self.endpoint) {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = self.done;
    }
}

impl ClusterRuntime {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `host:port` of an endpoint.
    pub fn authority(&self, endpoint: usize) -> Option<&str> {
        self.authorities.get(endpoint).map(String::as_str)
    }

    /// `host:port` of an endpoint, as a URI authority.
    pub fn uri_authority(&self, endpoint: usize) -> Option<&http::uri::Authority> {
        self.uri_authorities.get(endpoint)
    }

    /// Picks a healthy endpoint, avoiding `exclude` (the endpoint a retry
    /// just failed on) when another is available.
    pub fn pick(&self, hash: Option<u64>, exclude: Option<usize>) -> Option<usize> {
        // The clock is read only when an endpoint was ever ejected.
        let now = std::cell::OnceCell::new();
        let now = || *now.get_or_init(Instant::now);
        let healthy = |i: usize| {
            Some(i) != exclude
                && self
                    .health
                    .as_ref()
                    .map(|h| h.is_healthy_with(i, now))
                    .unwrap_or(true)
        };
        self.balancer
            .pick(hash, &self.in_flight, healthy)
            .or_else(|| {
                // Only the excluded endpoint is left: use it rather than fail.
                exclude.filter(|&i| {
                    self.health
                        .as_ref()
                        .map(|h| h.is_healthy_with(i, now))
                        .unwrap_or(true)
                })
            })
    }

    /// Starts an attempt at `endpoint`.
    pub fn begin(&self, endpoint: usize) -> AttemptGuard<'_> {
        if let Some(counter) = self.in_flight.get(endpoint) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        AttemptGuard {
            cluster: self,
            endpoint,
            done: false,
        }
    }

    /// Takes one retry from the budget if it allows: retries in flight stay
    /// under `budget_percent` of requests in flight (but 3 are always
    /// allowed, so that a quiet cluster can still retry). The retry is
    /// returned to the budget when the guard drops.
    pub fn take_retry(&self, budget_percent: u32) -> Option<RetryGuard<'_>> {
        let requests = self.requests_in_flight.load(Ordering::Relaxed);
        let retries = self.retries_in_flight.load(Ordering::Relaxed);
        let budget = (requests.saturating_mul(budget_percent) / 100).max(3);
        if retries >= budget {
            return None;
        }
        self.retries_in_flight.fetch_add(1, Ordering::Relaxed);
        self.retries.inc();
        Some(RetryGuard(self))
    }

    /// Counts one attempt.
    pub fn count_attempt(&self) {
        self.attempts.inc();
    }

    /// Counts an attempt that timed out.
    pub fn count_timeout(&self) {
        self.timeouts.inc();
    }

    /// Records how long an attempt took to its response head.
    pub fn observe_attempt(&self, seconds: f64) {
        self.durations.observe(seconds);
    }
}

/// A retry taken from a cluster's budget.
pub struct RetryGuard<'a>(&'a ClusterRuntime);

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.0.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-route runtime state.
pub struct RouteRuntime {
    /// `namespace/name` of the route (metric label).
    pub route_label: Arc<str>,
    /// Rule name (metric label).
    pub rule_label: Arc<str>,
    backends: Vec<Option<Arc<ClusterRuntime>>>,
    split: Option<WeightedSplit>,
    /// The AuthPolicy of this route (authentication + authorization).
    pub auth: Option<Arc<crate::auth::AuthRuntime>>,
    /// The rate limits of this route.
    pub limits: Option<Arc<crate::ratelimit::RouteLimits>>,
    /// Labelled metrics of this route and rule.
    pub metrics: RouteMetrics,
    /// The compiled JSON response transform.
    pub trimmer: Option<crate::transform::Trimmer>,
    /// `ferrogate_requests_total` of this route and rule, by status class.
    requests: [Counter; 5],
}

impl RouteRuntime {
    /// Picks the cluster for a request by the backends' weights. `None` when
    /// the chosen backend does not exist in the snapshot.
    pub fn pick_backend(&self) -> Option<Arc<ClusterRuntime>> {
        let index = match &self.split {
            Some(split) => split.pick()?,
            None => 0,
        };
        self.backends.get(index)?.clone()
    }

    /// The cluster of backend (or aggregate part) `index`.
    pub fn backend(&self, index: usize) -> Option<&Arc<ClusterRuntime>> {
        self.backends.get(index)?.as_ref()
    }
}

/// Everything the request path needs, built from one snapshot.
pub struct Table {
    /// The snapshot this table was built from.
    pub snapshot: Arc<Snapshot>,
    /// Route matching.
    pub router: Router,
    /// Certificates by SNI.
    pub tls: Arc<SniResolver>,
    routes: Vec<RouteRuntime>,
    clusters: HashMap<String, Arc<ClusterRuntime>>,
    unmatched_counters: [Counter; 5],
    /// Duration histograms of requests no route matched.
    pub unmatched: UnmatchedMetrics,
}

fn status_class(status: StatusCode) -> u8 {
    (status.as_u16() / 100).clamp(1, 5) as u8
}

fn class_label(class: u8) -> String {
    format!("{class}xx")
}

impl Table {
    /// An empty table: every request gets 404.
    pub fn empty(
        clients: &Clients,
        metrics: &Metrics,
        auth: &crate::auth::AuthState,
    ) -> Result<Table, BuildError> {
        Table::build(Arc::new(Snapshot::default()), clients, None, metrics, auth)
    }

    /// Builds a table. `previous` lends passive-health state of clusters
    /// that keep the same endpoints; `auth` holds the JWKS caches that
    /// outlive tables.
    pub fn build(
        snapshot: Arc<Snapshot>,
        clients: &Clients,
        previous: Option<&Table>,
        metrics: &Metrics,
        auth: &crate::auth::AuthState,
    ) -> Result<Table, BuildError> {
        // Pools only older tables used go now; `previous` keeps its own.
        clients.pools.prune();
        let router = Router::build(&snapshot)?;
        let tls = match previous {
            // Keep the resolver (and its TLS session caches) when the
            // certificates did not change.
            Some(previous) if previous.snapshot.certificates == snapshot.certificates => {
                previous.tls.clone()
            }
            _ => Arc::new(SniResolver::build(&cert_sources(&snapshot))?),
        };

        let mut clusters = HashMap::with_capacity(snapshot.clusters.len());
        for (name, cluster) in &snapshot.clusters {
            let old = previous.and_then(|p| p.clusters.get(name));
            let runtime = build_cluster(name, cluster, clients, old, metrics)?;
            clusters.insert(name.clone(), Arc::new(runtime));
        }

        let auth_policies = crate::auth::build(&snapshot, auth, clients, metrics)
            .map_err(|(policy, reason)| BuildError::Policy { policy, reason })?;
        let limit_policies = crate::ratelimit::build(&snapshot, metrics);
        let mut routes = Vec::new();
        for vhost in &snapshot.virtual_hosts {
            for route in &vhost.routes {
                let route_label: Arc<str> =
                    Arc::from(format!("{}/{}", route.id.namespace, route.id.name));
                let rule_label: Arc<str> = Arc::from(route.id.rule.as_str());
                // Routes with the same labels (one route on several hosts)
                // share the counters: the family hands out the same one.
                let requests = [1u8, 2, 3, 4, 5].map(|class| {
                    metrics
                        .requests
                        .get_or_create(&RouteLabels {
                            route: route_label.to_string(),
                            rule: rule_label.to_string(),
                            status_class: class_label(class),
                        })
                        .clone()
                });
                let (backends, split) = match &route.action {
                    Action::Forward(forward) => {
                        let backends: Vec<Option<Arc<ClusterRuntime>>> = forward
                            .backends
                            .iter()
                            .map(|b| clusters.get(&b.cluster).cloned())
                            .collect();
                        let split = if forward.backends.len() > 1 {
                            Some(WeightedSplit::new(
                                &forward
                                    .backends
                                    .iter()
                                    .map(|b| b.weight)
                                    .collect::<Vec<_>>(),
                            ))
                        } else {
                            None
                        };
                        (backends, split)
                    }
                    Action::Aggregate(aggregate) => (
                        aggregate
                            .parts
                            .iter()
                            .map(|p| clusters.get(&p.cluster).cloned())
                            .collect(),
                        None,
                    ),
                    _ => (Vec::new(), None),
                };
                let route_metrics = RouteMetrics::new(metrics, &route_label, &rule_label);
                let missing = |policy: &str| BuildError::Policy {
                    policy: policy.to_owned(),
                    reason: format!("named by route {route_label} but not in the snapshot"),
                };
                let route_auth = match &route.auth {
                    Some(key) => Some(
                        auth_policies
                            .get(key)
                            .cloned()
                            .ok_or_else(|| missing(key))?,
                    ),
                    None => None,
                };
                let route_limits = if route.rate_limits.is_empty() {
                    None
                } else {
                    let mut policies = Vec::with_capacity(route.rate_limits.len());
                    for key in &route.rate_limits {
                        policies.push(
                            limit_policies
                                .get(key)
                                .cloned()
                                .ok_or_else(|| missing(key))?,
                        );
                    }
                    Some(Arc::new(crate::ratelimit::RouteLimits::new(policies)))
                };
                routes.push(RouteRuntime {
                    route_label,
                    rule_label,
                    backends,
                    split,
                    auth: route_auth,
                    limits: route_limits,
                    metrics: route_metrics,
                    trimmer: route.transform.as_ref().map(crate::transform::Trimmer::new),
                    requests,
                });
            }
        }
        let unmatched_counters = [1u8, 2, 3, 4, 5].map(|class| {
            metrics
                .requests
                .get_or_create(&RouteLabels {
                    route: "none".into(),
                    rule: "none".into(),
                    status_class: class_label(class),
                })
                .clone()
        });
        Ok(Table {
            snapshot,
            router,
            tls,
            routes,
            clusters,
            unmatched_counters,
            unmatched: UnmatchedMetrics::new(metrics),
        })
    }

    /// Runtime state of the route at `index` (router order).
    pub fn route_runtime(&self, index: usize) -> &RouteRuntime {
        // The router and `routes` are built from the same snapshot in the
        // same order, so every index the router returns exists.
        &self.routes[index.min(self.routes.len().saturating_sub(1))]
    }

    /// Whether a request for `host` on a connection for `sni` is served by
    /// the same certificate (else 421).
    pub fn same_certificate(&self, sni: &str, host: &str) -> bool {
        sni.eq_ignore_ascii_case(host) || self.tls.matches(sni, host)
    }

    /// Counts a finished request.
    pub fn count_request(&self, route: Option<usize>, status: StatusCode) {
        let class = usize::from(status_class(status) - 1);
        match route.and_then(|index| self.routes.get(index)) {
            Some(route) => route.requests[class].inc(),
            None => self.unmatched_counters[class].inc(),
        };
    }

    /// Number of clusters.
    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }
}

fn cert_sources(snapshot: &Snapshot) -> Vec<CertSource> {
    snapshot
        .certificates
        .iter()
        .map(|c| CertSource {
            hosts: c.hosts.clone(),
            cert_chain_pem: c.cert_chain_pem.as_bytes().to_vec(),
            key_pem: c.key_pem.as_bytes().to_vec(),
            min_tls13: c.tls13_only,
            client_ca_pem: c.client_ca_pem.as_ref().map(|p| p.as_bytes().to_vec()),
        })
        .collect()
}

fn build_cluster(
    name: &str,
    cluster: &Cluster,
    clients: &Clients,
    previous: Option<&Arc<ClusterRuntime>>,
    metrics: &Metrics,
) -> Result<ClusterRuntime, BuildError> {
    let mut authorities = Vec::with_capacity(cluster.endpoints.len());
    let mut uri_authorities = Vec::with_capacity(cluster.endpoints.len());
    for endpoint in &cluster.endpoints {
        let authority = if endpoint.host.contains(':') {
            format!("[{}]:{}", endpoint.host, endpoint.port)
        } else {
            format!("{}:{}", endpoint.host, endpoint.port)
        };
        let Ok(parsed) = authority.parse::<http::uri::Authority>() else {
            return Err(BuildError::Cluster {
                cluster: name.to_owned(),
                reason: format!("invalid endpoint address {authority}"),
            });
        };
        uri_authorities.push(parsed);
        authorities.push(authority);
    }
    let policy = match cluster.load_balancer {
        LoadBalancerPolicy::RoundRobin => Policy::RoundRobin,
        LoadBalancerPolicy::LeastRequest => Policy::LeastRequest,
        LoadBalancerPolicy::ConsistentHash(_) => Policy::ConsistentHash,
    };
    let members: Vec<(&str, u32)> = authorities.iter().map(|a| (a.as_str(), 1)).collect();
    let balancer = Balancer::new(policy, &members);
    let client = clients.get(
        cluster.protocol == UpstreamProtocol::Http2,
        Duration::from_millis(cluster.connect_timeout_ms),
    );
    let pools = (cluster.protocol == UpstreamProtocol::Http1 && cluster.tls.is_none()).then(|| {
        uri_authorities
            .iter()
            .map(|authority| {
                clients
                    .pools
                    .endpoint(authority, Duration::from_millis(cluster.connect_timeout_ms))
            })
            .collect()
    });
    let same_endpoints = previous
        .map(|p| {
            p.authorities == authorities && p.config.outlier_detection == cluster.outlier_detection
        })
        .unwrap_or(false);
    let health = match &cluster.outlier_detection {
        None => None,
        Some(policy) => match (same_endpoints, previous.and_then(|p| p.health.clone())) {
            (true, Some(health)) => Some(health),
            _ => Some(Arc::new(HealthTable::new(
                authorities.len(),
                OutlierConfig {
                    consecutive_failures: policy.consecutive_failures,
                    base_ejection: Duration::from_millis(policy.base_ejection_ms),
                    max_ejection_percent: policy.max_ejection_percent,
                },
                Instant::now(),
            ))),
        },
    };
    let in_flight: Arc<[AtomicU32]> = match (same_endpoints, previous) {
        (true, Some(p)) => p.in_flight.clone(),
        _ => (0..authorities.len()).map(|_| AtomicU32::new(0)).collect(),
    };
    let labels = ClusterLabels {
        cluster: name.to_owned(),
    };
    Ok(ClusterRuntime {
        name: name.to_owned(),
        config: cluster.clone(),
        client,
        pools,
        authorities,
        uri_authorities,
        balancer,
        in_flight,
        health,
        requests_in_flight: AtomicU32::new(0),
        retries_in_flight: AtomicU32::new(0),
        attempts: metrics.upstream_attempts.get_or_create(&labels).clone(),
        retries: metrics.upstream_retries.get_or_create(&labels).clone(),
        ejections: metrics.upstream_ejections.get_or_create(&labels).clone(),
        timeouts: metrics.upstream_timeouts.get_or_create(&labels).clone(),
        durations: metrics.upstream_duration.get_or_create(&labels).clone(),
    })
}
