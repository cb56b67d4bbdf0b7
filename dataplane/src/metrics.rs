//! Prometheus metrics of the dataplane, served on the admin listener.
//!
//! Label values come from resources (route and rule names), never from raw
//! request data, so the number of series is bounded by the configuration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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
        Metrics {
            registry,
            requests,
            upstream_attempts,
            upstream_retries,
            upstream_ejections,
            connections_refused,
            tls_handshake_failures,
            snapshot_version,
            snapshot_applied,
            snapshot_failures,
            auth_refusals,
            ratelimit_decisions,
        }
    }
}

impl Metrics {
    /// Renders all metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
