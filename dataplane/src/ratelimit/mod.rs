//! The rate-limit phase: after authentication and authorization, before
//! the action.
//!
//! ```text
//!  limits of every RateLimitPolicy on the route whose conditions hold
//!    ─▶ key from its parts (client IP, header, claim, consumer, device)
//!    ─▶ Local limits: the in-process store (gcra + local)
//!    ─▶ Global limits: one atomic Redis script for all of them; Redis
//!       down or slow -> failureMode Open (count locally) or Closed (429)
//!    ─▶ any enforced limit refused: give back what the others took, 429
//!       with Retry-After, RateLimit-Policy and RateLimit; shadow limits
//!       only count and report
//! ```
//!
//! Headers follow draft-ietf-httpapi-ratelimit-headers (structured
//! fields): `RateLimit-Policy: "per-user";q=35;w=60` and
//! `RateLimit: "per-user";r=12;t=3`, one item per enforced limit, on every
//! response of a limited route. The counters outlive snapshots (see
//! [`LimitState`]); a limit is identified by its policy and name, so a
//! reload keeps its counts.

pub mod gcra;
pub mod local;
pub mod redis;

use crate::auth::jwt::{claim, claim_text};
use crate::auth::{Identity, PhaseContext};
use crate::error::error_response;
use crate::metrics::{Metrics, RateLimitLabels};
use crate::proxy::RequestInfo;
use crate::DataplaneConfig;
use bytes::Bytes;
use crds::ratelimit::{FailureMode, KeySource, RateLimitScope};
use crds::DeviceClass;
use gcra::{Decision, Rate};
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use local::LocalStore;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};
use snapshot::model::{KeyPartConfig, LimitConfig, RateLimitConfig, Snapshot};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often idle local entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Rate-limit state that outlives snapshots.
pub struct LimitState {
    /// Local counters.
    pub local: Arc<LocalStore>,
    /// Redis, when `--redis-url` is set.
    pub redis: Option<Arc<redis::RedisStore>>,
}

impl LimitState {
    /// State for `config`: a local store of `rate_limit_max_keys`, and a
    /// Redis store when a URL is set (an invalid URL is logged and global
    /// limits then follow their failure mode).
    pub fn new(config: &DataplaneConfig) -> LimitState {
        let local = Arc::new(LocalStore::new(config.rate_limit_max_keys));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak: Weak<LocalStore> = Arc::downgrade(&local);
            handle.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(store) = weak.upgrade() else { break };
                    store.sweep(store.now());
                }
            });
        }
        let redis = config.redis_url.as_deref().and_then(|url| {
            match redis::RedisStore::new(url, config.redis_timeout) {
                Ok(store) => Some(Arc::new(store)),
                Err(error) => {
                    tracing::error!(%error, "--redis-url refused; global rate limits follow their failureMode");
                    None
                }
            }
        });
        LimitState { local, redis }
    }
}

/// Decision counters of one limit.
struct Counters {
    allowed: Counter,
    limited: Counter,
    shadow_limited: Counter,
    store_unavailable: Counter,
}

struct Limit {
    name: Arc<str>,
    rate: Rate,
    /// Stable identity (policy + name) for the local store.
    id: u64,
    /// Prefix of this limit's Redis keys.
    redis_prefix: String,
    key: Vec<KeyPartConfig>,
    methods: Vec<http::Method>,
    paths: Vec<String>,
    devices: Vec<DeviceClass>,
    shadow: bool,
    policy_item: String,
    counters: Counters,
}

/// One RateLimitPolicy, ready for the request path.
pub struct PolicyLimits {
    policy: Arc<str>,
    global: bool,
    failure_mode: FailureMode,
    limits: Vec<Limit>,
}

/// The limits applying to one route (all its policies).
pub struct RouteLimits {
    policies: Vec<Arc<PolicyLimits>>,
    uses_client_ip: bool,
}

impl RouteLimits {
    /// Limits from these policies.
    pub fn new(policies: Vec<Arc<PolicyLimits>>) -> RouteLimits {
        let uses_client_ip = policies.iter().any(|p| {
            p.limits
                .iter()
                .any(|l| l.key.iter().any(|k| k.source == KeySource::ClientIp))
        });
        RouteLimits {
            policies,
            uses_client_ip,
        }
    }
}

/// What the phase decided, for headers, metrics and the access log.
#[derive(Clone, Debug, Default)]
pub struct RateLimitOutcome {
    /// The enforced limit that refused the request, if any.
    pub limited_by: Option<Arc<str>>,
    /// Shadow limits the request exceeded.
    pub shadow_exceeded: Vec<Arc<str>>,
    /// Redis could not be asked; the failure mode decided.
    pub store_unavailable: bool,
    /// `RateLimit-Policy` and `RateLimit` values for the response.
    pub headers: Option<(HeaderValue, HeaderValue)>,
}

/// Builds every RateLimitPolicy of a snapshot.
pub fn build(snapshot: &Snapshot, metrics: &Metrics) -> HashMap<String, Arc<PolicyLimits>> {
    snapshot
        .rate_limits
        .iter()
        .map(|(key, config)| (key.clone(), Arc::new(build_one(key, config, metrics))))
        .collect()
}

fn build_one(key: &str, config: &RateLimitConfig, metrics: &Metrics) -> PolicyLimits {
    let limits = config
        .limits
        .iter()
        .map(|l| build_limit(key, l, metrics))
        .collect();
    PolicyLimits {
        policy: Arc::from(key),
        global: config.scope == RateLimitScope::Global,
        failure_mode: config.failure_mode,
        limits,
    }
}

fn build_limit(policy: &str, l: &LimitConfig, metrics: &Metrics) -> Limit {
    let digest = Sha256::new()
        .chain_update(policy.as_bytes())
        .chain_update([0])
        .chain_update(l.name.as_bytes())
        .finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    let counter = |decision: &str| {
        metrics
            .ratelimit_decisions
            .get_or_create(&RateLimitLabels {
                policy: policy.to_owned(),
                limit: l.name.clone(),
                decision: decision.to_owned(),
            })
            .clone()
    };
    Limit {
        name: Arc::from(l.name.as_str()),
        rate: Rate::new(l.requests, l.period_ms, l.burst),
        id: u64::from_be_bytes(id),
        redis_prefix: format!("ferrogate:rl:{}:", hex::encode(&digest[..12])),
        key: l.key.clone(),
        methods: l
            .methods
            .iter()
            .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .collect(),
        paths: l.paths.clone(),
        devices: l.devices.clone(),
        shadow: l.shadow,
        policy_item: format!(
            "{};q={};w={}",
            sf_string(&l.name),
            l.requests,
            l.period_ms.div_ceil(1_000).max(1)
        ),
        counters: Counters {
            allowed: counter("allowed"),
            limited: counter("limited"),
            shadow_limited: counter("shadow_limited"),
            store_unavailable: counter("store_unavailable"),
        },
    }
}

/// A structured-field string.
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the rightmost X-Forwarded-For entry that is not a trusted proxy (the
/// leftmost when all are trusted). An unparsable entry stops the walk at
/// the last trusted hop.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, config: &DataplaneConfig) -> IpAddr {
    if config.trusted_proxies.is_empty() || !config.trusts(peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded_ip(entry) else {
            return client;
        };
        client = ip;
        if !config.trusts(ip) {
            return ip;
        }
    }
    client
}

fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

/// One limit that applies to this request.
struct Applied<'a> {
    policy: &'a PolicyLimits,
    limit: &'a Limit,
    parts: Vec<Cow<'a, [u8]>>,
}

impl Limit {
    fn applies(&self, method: &http::Method, path: &str, device: DeviceClass) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty()
                || self
                    .paths
                    .iter()
                    .any(|p| crate::auth::authz::path_has_prefix(path, p)))
            && (self.devices.is_empty() || self.devices.contains(&device))
    }

    fn key_parts<'a>(
        &'a self,
        headers: &'a HeaderMap,
        client_ip: Option<IpAddr>,
        identity: Option<&'a Identity>,
        device: DeviceClass,
    ) -> Vec<Cow<'a, [u8]>> {
        self.key
            .iter()
            .map(|part| match part.source {
                KeySource::ClientIp => Cow::Owned(
                    client_ip
                        .map(|ip| ip.to_string().into_bytes())
                        .unwrap_or_default(),
                ),
                KeySource::Header => part
                    .name
                    .as_deref()
                    .and_then(|n| headers.get(n))
                    .map(|v| Cow::Borrowed(v.as_bytes()))
                    .unwrap_or(Cow::Borrowed(&b""[..])),
                KeySource::Claim => part
                    .name
                    .as_deref()
                    .zip(identity.and_then(|i| i.claims.as_deref()))
                    .and_then(|(n, claims)| claim(claims, n))
                    .map(|v| {
                        Cow::Owned(claim_text(v).unwrap_or_else(|| v.to_string()).into_bytes())
                    })
                    .unwrap_or(Cow::Borrowed(&b""[..])),
                KeySource::Consumer => identity
                    .and_then(|i| i.consumer.as_deref())
                    .map(|c| Cow::Borrowed(c.as_bytes()))
                    .unwrap_or(Cow::Borrowed(&b""[..])),
                KeySource::Device => Cow::Borrowed(device.as_str().as_bytes()),
            })
            .collect()
    }

    fn redis_key(&self, parts: &[Cow<'_, [u8]>]) -> String {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let mut key = self.redis_prefix.clone();
        key.push_str(&hex::encode(&h.finalize()[..16]));
        key
    }
}

impl RouteLimits {
    /// Runs the limits on a request. `Err` is the 429 response.
    pub fn phase<'a, B>(
        &'a self,
        ctx: &'a PhaseContext<'a>,
        req: &'a Request<B>,
        identity: Option<&'a Identity>,
        info: &'a mut RequestInfo,
    ) -> impl std::future::Future<Output = Result<(), Response<Bytes>>> + Send + 'a {
        // Only the method and headers are held across awaits (a request
        // body need not be `Sync`).
        self.run(ctx, req.method(), req.headers(), identity, info)
    }

    async fn run(
        &self,
        ctx: &PhaseContext<'_>,
        method: &http::Method,
        headers: &HeaderMap,
        identity: Option<&Identity>,
        info: &mut RequestInfo,
    ) -> Result<(), Response<Bytes>> {
        let client_ip = self.uses_client_ip.then(|| ctx.client_ip(headers));
        let mut applied = Vec::new();
        for policy in &self.policies {
            for limit in &policy.limits {
                if limit.applies(method, ctx.path, ctx.device) {
                    let parts = limit.key_parts(headers, client_ip, identity, ctx.device);
                    applied.push(Applied {
                        policy,
                        limit,
                        parts,
                    });
                }
            }
        }
        if applied.is_empty() {
            return Ok(());
        }
        let state = &ctx.shared.limits;
        let mut outcome = RateLimitOutcome::default();
        let decisions = decide(state, &applied, &mut outcome).await;

        let mut refusing: Option<(&PolicyLimits, &Limit, Decision)> = None;
        for (a, d) in applied.iter().zip(&decisions) {
            let Some(d) = d else { continue };
            if d.allowed {
                continue;
            }
            if a.limit.shadow {
                a.limit.counters.shadow_limited.inc();
                outcome.shadow_exceeded.push(a.limit.name.clone());
            } else if refusing.is_none_or(|(_, _, r)| d.retry_after > r.retry_after) {
                refusing = Some((a.policy, a.limit, *d));
            }
        }
        match &refusing {
            Some(_) => {
                for (a, d) in applied.iter().zip(&decisions) {
                    if !a.limit.shadow && d.is_some_and(|d| !d.allowed) {
                        a.limit.counters.limited.inc();
                    }
                }
            }
            None => {
                for (a, d) in applied.iter().zip(&decisions) {
                    if d.is_some_and(|d| d.allowed) {
                        a.limit.counters.allowed.inc();
                    }
                }
            }
        }
        outcome.headers = headers_for(&applied, &decisions);
        if let Some((policy, limit, decision)) = refusing {
            outcome.limited_by = Some(limit.name.clone());
            let code = if outcome.store_unavailable && decision.retry_after == 0 {
                "rate_limit_unavailable"
            } else {
                "rate_limited"
            };
            let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, code, ctx.request_id);
            let retry_after = decision.retry_after.div_ceil(1_000_000_000).max(1);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            if let Some((policy, limit)) = &outcome.headers {
                response
                    .headers_mut()
                    .insert("ratelimit-policy", policy.clone());
                response.headers_mut().insert("ratelimit", limit.clone());
            }
            tracing::debug!(policy = %policy.policy, limit = %limit.name, retry_after, "rate limited");
            info.rate_limit = Some(outcome);
            return Err(response);
        }
        info.rate_limit = Some(outcome);
        Ok(())
    }
}

/// Decides every applied limit: local ones in the store, global ones in
/// one Redis call, refunding local passes when anything enforced refused.
async fn decide(
    state: &LimitState,
    applied: &[Applied<'_>],
    outcome: &mut RateLimitOutcome,
) -> Vec<Option<Decision>> {
    let store = &state.local;
    let now = store.now();
    let mut decisions: Vec<Option<Decision>> = vec![None; applied.len()];
    let mut local_keys: Vec<Option<u64>> = vec![None; applied.len()];
    let mut refused = false;
    let mut global = Vec::new();
    for (i, a) in applied.iter().enumerate() {
        if a.policy.global {
            global.push(i);
            continue;
        }
        let parts: Vec<&[u8]> = a.parts.iter().map(|p| p.as_ref()).collect();
        let key = store.key(a.limit.id, &parts);
        let d = store.check(key, now, a.limit.rate);
        refused |= !d.allowed && !a.limit.shadow;
        local_keys[i] = Some(key);
        decisions[i] = Some(d);
    }
    if !global.is_empty() && !refused {
        let items: Vec<redis::GlobalItem> = global
            .iter()
            .map(|&i| redis::GlobalItem {
                key: applied[i].limit.redis_key(&applied[i].parts),
                rate: applied[i].limit.rate,
                enforce: !applied[i].limit.shadow,
            })
            .collect();
        let answer = match &state.redis {
            Some(redis) => redis.check(&items).await.map_err(|e| e.to_string()),
            None => Err("no --redis-url".to_owned()),
        };
        match answer {
            Ok(answers) => {
                for (&i, d) in global.iter().zip(answers) {
                    refused |= !d.allowed && !applied[i].limit.shadow;
                    decisions[i] = Some(d);
                }
            }
            Err(error) => {
                outcome.store_unavailable = true;
                tracing::debug!(%error, "global rate limits: store unavailable; applying failureMode");
                for &i in &global {
                    let a = &applied[i];
                    a.limit.counters.store_unavailable.inc();
                    let d = match a.policy.failure_mode {
                        FailureMode::Open => {
                            let parts: Vec<&[u8]> = a.parts.iter().map(|p| p.as_ref()).collect();
                            let key = store.key(a.limit.id, &parts);
                            local_keys[i] = Some(key);
                            store.check(key, now, a.limit.rate)
                        }
                        FailureMode::Closed => Decision {
                            allowed: false,
                            remaining: 0,
                            retry_after: 0,
                            reset_after: 0,
                        },
                    };
                    refused |= !d.allowed && !a.limit.shadow;
                    decisions[i] = Some(d);
                }
            }
        }
    }
    if refused {
        // Give back what passed: a refused request consumes nothing.
        for (i, a) in applied.iter().enumerate() {
            if let (Some(key), Some(d)) = (local_keys[i], decisions[i]) {
                if d.allowed {
                    store.refund(key, now, a.limit.rate);
                }
            }
        }
    }
    // `None`: a global limit not asked because a local one refused first.
    decisions
}

/// `RateLimit-Policy` and `RateLimit` for the enforced limits.
fn headers_for(
    applied: &[Applied<'_>],
    decisions: &[Option<Decision>],
) -> Option<(HeaderValue, HeaderValue)> {
    let mut policy = String::new();
    let mut limit = String::new();
    for (a, d) in applied.iter().zip(decisions) {
        let Some(d) = d else { continue };
        if a.limit.shadow {
            continue;
        }
        if !policy.is_empty() {
            policy.push_str(", ");
            limit.push_str(", ");
        }
        policy.push_str(&a.limit.policy_item);
        let reset = if d.allowed {
            d.reset_after
        } else {
            d.retry_after
        };
        limit.push_str(&format!(
            "{};r={};t={}",
            sf_string(&a.limit.name),
            d.remaining,
            reset.div_ceil(1_000_000_000)
        ));
    }
    if policy.is_empty() {
        return None;
    }
    Some((
        HeaderValue::from_str(&policy).ok()?,
        HeaderValue::from_str(&limit).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cidr;

    fn config(trusted: &[&str]) -> DataplaneConfig {
        DataplaneConfig {
            trusted_proxies: trusted.iter().filter_map(|c| Cidr::parse(c)).collect(),
            ..DataplaneConfig::default()
        }
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let peer: IpAddr = "10.0.0.5".parse().expect("ip");
        let h = xff("203.0.113.7, 10.0.0.9");
        // Untrusted peer: its own address, whatever the header says.
        assert_eq!(client_ip(peer, &h, &config(&[])), peer);
        assert_eq!(client_ip(peer, &h, &config(&["192.168.0.0/16"])), peer);
        // Trusted peer and trusted hop: the first untrusted from the right.
        let cfg = config(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(peer, &h, &cfg),
            "203.0.113.7".parse::<IpAddr>().expect("ip")
        );
        // A spoofed leftmost entry does not win over a real client.
        let h = xff("1.1.1.1, 203.0.113.7");
        assert_eq!(
            client_ip(peer, &h, &cfg),
            "203.0.113.7".parse::<IpAddr>().expect("ip")
        );
        // Garbage stops the walk at the last trusted hop.
        let h = xff("203.0.113.7, junk, 10.0.0.9");
        assert_eq!(
            client_ip(peer, &h, &cfg),
            "10.0.0.9".parse::<IpAddr>().expect("ip")
        );
        // Ports and brackets.
        let h = xff("[2001:db8::1]:443");
        assert_eq!(
            client_ip(peer, &h, &cfg),
            "2001:db8::1".parse::<IpAddr>().expect("ip")
        );
        let h = xff("198.51.100.1:5000");
        assert_eq!(
            client_ip(peer, &h, &cfg),
            "198.51.100.1".parse::<IpAddr>().expect("ip")
        );
        // No header: the peer.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &cfg), peer);
    }

    proptest::proptest! {
        /// Whatever X-Forwarded-For holds, the answer is the peer or one of
        /// the listed addresses, and nothing panics.
        #[test]
        fn arbitrary_forwarded_for_never_panics(value in "[ -~]{0,200}") {
            let peer: IpAddr = "10.0.0.5".parse().expect("ip");
            if let Ok(v) = HeaderValue::from_str(&value) {
                let mut h = HeaderMap::new();
                h.insert("x-forwarded-for", v);
                let ip = client_ip(peer, &h, &config(&["10.0.0.0/8"]));
                let listed = value
                    .split(',')
                    .any(|e| parse_forwarded_ip(e.trim()) == Some(ip));
                proptest::prop_assert!(ip == peer || listed);
            }
        }
    }

    #[test]
    fn header_values_follow_the_draft() {
        assert_eq!(sf_string("per-user"), "\"per-user\"");
        assert_eq!(sf_string("a\"b\\c\n"), "\"a\\\"b\\\\c\"");
    }
}
