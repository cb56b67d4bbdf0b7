//! Prometheus metrics of the dataplane, served on the admin listener.
//!
//! Label values come from resources (route and rule names), never from raw
//! request data, so the number of series is bounded by the configuration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

/// Labels of per-route request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `namespace/name` of the ApiRoute, or `none` when nothing matched.
    pub route: String,
    /// Rule name.
    pub rule: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status_class: String,
}

/// Labels of upstream counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Cluster name.
    pub cluster: String,
}

/// Labels of the request duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// `namespace/name` of the ApiRoute, or `none`.
    pub route: String,
    /// Rule name, or `none`.
    pub rule: String,
    /// `1xx` to `5xx`.
    pub status_class: String,
    /// `mobile`, `tablet`, `desktop` or `bot`.
    pub device: String,
}

/// Labels of per-route filter counters (cache, transform, aggregate).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `namespace/name` of the ApiRoute.
    pub route: String,
    /// Rule name.
    pub rule: String,
    /// What happened (a fixed set of values per metric).
    pub result: String,
}

/// Labels of aggregate part counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartLabels {
    /// `namespace/name` of the ApiRoute.
    pub route: String,
    /// Rule name.
    pub rule: String,
    /// Part name (from the rule).
    pub part: String,
    /// `ok`, `timeout`, `error`, `status` or `invalid`.
    pub result: String,
}

/// Labels of per-consumer request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The authenticated consumer, or `other` past [`MAX_CONSUMERS`].
    pub consumer: String,
    /// `1xx` to `5xx`.
    pub status_class: String,
}

/// Distinct consumers with their own series; later ones count as `other`
/// (consumer names can come from tokens, so they are not bounded by the
/// configuration).
pub const MAX_CONSUMERS: usize = 500;

/// Labels of certificate gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// `namespace/name` of the TlsCertificate.
    pub certificate: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Labels of authentication and authorization refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `namespace/name` of the AuthPolicy.
    pub policy: String,
    /// Why (a fixed set: `missing`, `expired`, `signature`, `forbidden`...).
    pub reason: String,
}

/// Labels of rate-limit decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// `namespace/name` of the RateLimitPolicy.
    pub policy: String,
    /// Limit name.
    pub limit: String,
    /// `allowed`, `limited`, `shadow_limited` or `store_unavailable`.
    pub decision: String,
}

/// All dataplane metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, rule and status class.
    pub requests: Family<RouteLabels, Counter>,
    /// Upstream attempts by cluster (retries included).
    pub upstream_attempts: Family<ClusterLabels, Counter>,
    /// Retries by cluster.
    pub upstream_retries: Family<ClusterLabels, Counter>,
    /// Endpoint ejections by passive health checking.
    pub upstream_ejections: Family<ClusterLabels, Counter>,
    /// Connections closed at accept because the limit was reached.
    pub connections_refused: Counter,
    /// Failed or timed-out TLS handshakes.
    pub tls_handshake_failures: Counter,
    /// HTTP/1.1 connections handed to hyper at a request the gateway's
    /// own path does not serve (`crate::h1server`).
    pub http1_handoffs: Counter,
    /// Version of the snapshot being served.
    pub snapshot_version: Gauge<u64, AtomicU64>,
    /// Snapshots applied.
    pub snapshot_applied: Counter,
    /// Snapshots refused because they failed to build.
    pub snapshot_failures: Counter,
    /// Requests refused by an AuthPolicy, by policy and reason.
    pub auth_refusals: Family<AuthLabels, Counter>,
    /// Rate-limit decisions by policy, limit and decision.
    pub ratelimit_decisions: Family<RateLimitLabels, Counter>,
    /// Request durations (until the response head) by route, rule, status
    /// class and device.
    pub request_duration: HistogramFamily<DurationLabels>,
    /// Upstream attempt durations by cluster.
    pub upstream_duration: HistogramFamily<ClusterLabels>,
    /// Upstream attempts that timed out, by cluster.
    pub upstream_timeouts: Family<ClusterLabels, Counter>,
    /// Cache lookups by route, rule and result (`hit`, `miss`,
    /// `revalidated`, `collapsed`, `bypass`).
    pub cache_lookups: Family<ResultLabels, Counter>,
    /// Responses not stored, by route, rule and reason.
    pub cache_not_stored: Family<ResultLabels, Counter>,
    /// Bytes held by the response cache.
    pub cache_bytes: Gauge,
    /// Entries held by the response cache.
    pub cache_entries: Gauge,
    /// JSON transforms by route, rule and result (`applied`, `oversize`,
    /// `invalid`, `encoding`, `no_transform`).
    pub transforms: Family<ResultLabels, Counter>,
    /// Aggregate part calls by route, rule, part and result.
    pub aggregate_parts: Family<PartLabels, Counter>,
    /// Time to build and swap in a snapshot.
    pub snapshot_apply_seconds: Histogram,
    /// Expiry (notAfter) of served certificates, Unix seconds.
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    /// Access log lines written.
    pub access_log_lines: Counter,
    /// Requests by authenticated consumer (bounded, see [`MAX_CONSUMERS`]).
    pub consumer_requests: Family<ConsumerLabels, Counter>,
    consumers_seen: std::sync::RwLock<std::collections::HashSet<std::sync::Arc<str>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferrogate");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register("requests", "Requests served", requests.clone());
        let upstream_attempts = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Attempts sent to upstreams, retries included",
            upstream_attempts.clone(),
        );
        let upstream_retries = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Retried upstream attempts",
            upstream_retries.clone(),
        );
        let upstream_ejections = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_ejections",
            "Endpoints ejected by passive health checking",
            upstream_ejections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because the connection limit was reached",
            connections_refused.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let http1_handoffs = Counter::default();
        registry.register(
            "http1_handoffs",
            "HTTP/1.1 connections handed to hyper at a request with a body, an upgrade, \
             Expect or TE, HTTP/1.0 or a malformed head",
            http1_handoffs.clone(),
        );
        let snapshot_version = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "snapshot_version",
            "Version of the routing snapshot being served",
            snapshot_version.clone(),
        );
        let snapshot_applied = Counter::default();
        registry.register(
            "snapshot_applied",
            "Routing snapshots applied",
            snapshot_applied.clone(),
        );
        let snapshot_failures = Counter::default();
        registry.register(
            "snapshot_failures",
            "Routing snapshots refused because they failed to build",
            snapshot_failures.clone(),
        );
        let auth_refusals = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_refusals",
            "Requests refused by authentication or authorization, by policy and reason",
            auth_refusals.clone(),
        );
        let ratelimit_decisions = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions by policy, limit and decision (allowed, limited, shadow_limited, store_unavailable)",
            ratelimit_decisions.clone(),
        );
        let request_duration: HistogramFamily<DurationLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from the request to the response head, by route, rule, status class and device",
            request_duration.clone(),
        );
        let upstream_duration: HistogramFamily<ClusterLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time from sending an upstream attempt to its response head",
            upstream_duration.clone(),
        );
        let upstream_timeouts = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_timeouts",
            "Upstream attempts that timed out",
            upstream_timeouts.clone(),
        );
        let cache_lookups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Response cache lookups by result (hit, miss, revalidated, collapsed, bypass)",
            cache_lookups.clone(),
        );
        let cache_not_stored = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cache_not_stored",
            "Responses of caching rules that were not stored, by reason",
            cache_not_stored.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes held by the response cache",
            cache_bytes.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries held by the response cache",
            cache_entries.clone(),
        );
        let transforms = Family::<ResultLabels, Counter>::default();
        registry.register(
            "transforms",
            "JSON response transforms by result (applied, or why the body passed unchanged)",
            transforms.clone(),
        );
        let aggregate_parts = Family::<PartLabels, Counter>::default();
        registry.register(
            "aggregate_parts",
            "Aggregate part calls by result",
            aggregate_parts.clone(),
        );
        let snapshot_apply_seconds =
            Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register(
            "snapshot_apply_seconds",
            "Time to build a routing table from a snapshot and swap it in",
            snapshot_apply_seconds.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of each served certificate (Unix seconds); expiry in seconds is this minus time()",
            certificate_expiry.clone(),
        );
        let access_log_lines = Counter::default();
        registry.register(
            "access_log_lines",
            "Access log lines written (after sampling)",
            access_log_lines.clone(),
        );
        let consumer_requests = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_requests",
            "Requests by authenticated consumer and status class (the first 500 consumers; later ones as other)",
            consumer_requests.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream_attempts,
            upstream_retries,
            upstream_ejections,
            connections_refused,
            tls_handshake_failures,
            http1_handoffs,
            snapshot_version,
            snapshot_applied,
            snapshot_failures,
            auth_refusals,
            ratelimit_decisions,
            request_duration,
            upstream_duration,
            upstream_timeouts,
            cache_lookups,
            cache_not_stored,
            cache_bytes,
            cache_entries,
            transforms,
            aggregate_parts,
            snapshot_apply_seconds,
            certificate_expiry,
            access_log_lines,
            consumer_requests,
            consumers_seen: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts a request of an authenticated consumer.
    pub fn count_consumer(&self, consumer: &std::sync::Arc<str>, status: http::StatusCode) {
        let known = self
            .consumers_seen
            .read()
            .map(|seen| seen.contains(consumer))
            .unwrap_or(false);
        let label = if known {
            consumer.to_string()
        } else {
            let mut seen = self
                .consumers_seen
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if seen.contains(consumer) || seen.len() < MAX_CONSUMERS {
                seen.insert(consumer.clone());
                consumer.to_string()
            } else {
                "other".to_owned()
            }
        };
        let class = (status.as_u16() / 100).clamp(1, 5);
        self.consumer_requests
            .get_or_create(&ConsumerLabels {
                consumer: label,
                status_class: format!("{class}xx"),
            })
            .inc();
    }

    /// Renders all metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Cache lookup results (the `result` label of `cache_lookups`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache.
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// A stale entry was revalidated by the upstream (304).
    Revalidated,
    /// Waited for a concurrent identical request, then served its answer.
    Collapsed,
    /// The request does not use the cache (method, Authorization, ...).
    Bypass,
}

impl CacheResult {
    const ALL: [CacheResult; 5] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Revalidated,
        CacheResult::Collapsed,
        CacheResult::Bypass,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Collapsed => "collapsed",
            CacheResult::Bypass => "bypass",
        }
    }
}

const DEVICES: [crds::DeviceClass; 4] = [
    crds::DeviceClass::Mobile,
    crds::DeviceClass::Tablet,
    crds::DeviceClass::Desktop,
    crds::DeviceClass::Bot,
];

fn device_index(device: crds::DeviceClass) -> usize {
    match device {
        crds::DeviceClass::Mobile => 0,
        crds::DeviceClass::Tablet => 1,
        crds::DeviceClass::Desktop => 2,
        crds::DeviceClass::Bot => 3,
    }
}

/// Per-route handles on the labelled metrics, built with the table and
/// filled on first use: a route that never sees a tablet has no tablet
/// series, and the request path does one array index instead of a label
/// hash lookup.
pub struct RouteMetrics {
    route: String,
    rule: String,
    request_duration: HistogramFamily<DurationLabels>,
    durations: [OnceLock<Histogram>; 20],
    cache_lookups: Family<ResultLabels, Counter>,
    cache: [OnceLock<Counter>; 5],
    cache_not_stored: Family<ResultLabels, Counter>,
    transforms: Family<ResultLabels, Counter>,
    aggregate_parts: Family<PartLabels, Counter>,
}

impl RouteMetrics {
    /// Handles for route `route` (`namespace/name`) and rule `rule`.
    pub fn new(metrics: &Metrics, route: &str, rule: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_owned(),
            rule: rule.to_owned(),
            request_duration: metrics.request_duration.clone(),
            durations: Default::default(),
            cache_lookups: metrics.cache_lookups.clone(),
            cache: Default::default(),
            cache_not_stored: metrics.cache_not_stored.clone(),
            transforms: metrics.transforms.clone(),
            aggregate_parts: metrics.aggregate_parts.clone(),
        }
    }

    /// Records a finished request.
    pub fn observe(&self, status: http::StatusCode, device: crds::DeviceClass, seconds: f64) {
        let class = usize::from((status.as_u16() / 100).clamp(1, 5)) - 1;
        let index = class * 4 + device_index(device);
        if let Some(slot) = self.durations.get(index) {
            slot.get_or_init(|| {
                self.request_duration
                    .get_or_create(&DurationLabels {
                        route: self.route.clone(),
                        rule: self.rule.clone(),
                        status_class: format!("{}xx", class + 1),
                        device: DEVICES[index % 4].as_str().to_owned(),
                    })
                    .clone()
            })
            .observe(seconds);
        }
    }

    /// Counts a cache lookup.
    pub fn cache(&self, result: CacheResult) {
        let index = CacheResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.cache[index]
            .get_or_init(|| {
                self.cache_lookups
                    .get_or_create(&ResultLabels {
                        route: self.route.clone(),
                        rule: self.rule.clone(),
                        result: result.as_str().to_owned(),
                    })
                    .clone()
            })
            .inc();
    }

    /// Counts a response that was not stored (`reason` from a fixed set).
    pub fn not_stored(&self, reason: &'static str) {
        self.cache_not_stored
            .get_or_create(&ResultLabels {
                route: self.route.clone(),
                rule: self.rule.clone(),
                result: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a transform (`result` from a fixed set).
    pub fn transform(&self, result: &'static str) {
        self.transforms
            .get_or_create(&ResultLabels {
                route: self.route.clone(),
                rule: self.rule.clone(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts an aggregate part call.
    pub fn part(&self, part: &str, result: &'static str) {
        self.aggregate_parts
            .get_or_create(&PartLabels {
                route: self.route.clone(),
                rule: self.rule.clone(),
                part: part.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }
}

/// Duration histograms of requests no route matched.
pub struct UnmatchedMetrics(RouteMetrics);

impl UnmatchedMetrics {
    /// Handles labelled route `none`, rule `none`.
    pub fn new(metrics: &Metrics) -> UnmatchedMetrics {
        UnmatchedMetrics(RouteMetrics::new(metrics, "none", "none"))
    }

    /// Records a finished request.
    pub fn observe(&self, status: http::StatusCode, device: crds::DeviceClass, seconds: f64) {
        self.0.observe(status, device, seconds);
    }
}
