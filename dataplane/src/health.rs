//! Passive health checking (outlier detection): endpoints that keep failing
//! are taken out of load balancing for a while.
//!
//! The proxy reports the outcome of every attempt to an endpoint
//! ([`HealthTable::record_success`], [`HealthTable::record_failure`]; a
//! failure is a connect error, a reset or a 5xx) and asks at pick time which
//! endpoints may be chosen ([`HealthTable::healthy`], passed to
//! [`Balancer::pick`](crate::balance::Balancer::pick)). There is no timer:
//! an ejection is a deadline, compared with the `now` of each pick, so an
//! ejected endpoint is back the first time someone looks after its time is
//! up. Time always comes in as an argument, which is how the tests run a
//! fake clock.
//!
//! # Rules
//!
//! - `consecutive_failures` failures in a row eject an endpoint; any success
//!   resets the count. 0 disables ejection.
//! - The `k`-th ejection of a streak lasts `base_ejection * 2^(k-1)`, capped
//!   at [`MAX_EJECTION_MULTIPLIER`] `* base_ejection` (30s, 60s, 120s, 240s,
//!   300s, 300s, ... with the default 30s). A streak ends when the endpoint
//!   stays in service for that longest ejection time after coming back;
//!   the next ejection is then the first again.
//! - At most `max_ejection_percent` of the endpoints are ejected at once
//!   (rounded down, but at least one when the percentage is positive), and
//!   never all of them: a cluster with one endpoint never ejects it. When
//!   the limit is reached, a failing endpoint stays in service with its
//!   failure count kept, and is ejected on its next failure once there is
//!   room. This is what keeps a shared outage (every endpoint failing)
//!   from turning into "no endpoints at all".
//! - Outcomes reported while an endpoint is ejected (requests that were
//!   already in flight) are ignored: they neither extend the ejection nor
//!   count against the endpoint when it returns.
//!
//! # Concurrency
//!
//! The table is shared by every task through an `Arc` and uses only
//! atomics. Counting and health checks are single atomic operations. The
//! decision to eject (which must count the ejected endpoints to respect the
//! limit) is serialized by an atomic flag taken with `compare_exchange`:
//! nobody ever waits for it. A task that finds it taken skips the decision,
//! and the endpoint's failure count stays at the threshold, so its next
//! failure decides again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest ejection, as a multiple of the base ejection time.
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// Outlier detection settings (`outlierDetection` on a route rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint; 0 never ejects.
    pub consecutive_failures: u32,
    /// The first ejection's length; at least 1ms is used.
    pub base_ejection: Duration,
    /// The largest share of endpoints ejected at once, 0 to 100.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    /// 5 failures, 30s, 50%.
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

/// The health of one cluster's endpoints `0..n`. See the module docs.
#[derive(Debug)]
pub struct HealthTable {
    /// Deadlines are stored as milliseconds since this instant.
    epoch: Instant,
    threshold: u32,
    base_ms: u64,
    max_ms: u64,
    max_ejected: usize,
    endpoints: Box<[Endpoint]>,
    /// Held (briefly, never waited for) while deciding an ejection.
    deciding: AtomicBool,
}

#[derive(Debug, Default)]
struct Endpoint {
    failures: AtomicU32,
    /// Milliseconds since the epoch until which the endpoint is ejected;
    /// 0 if it never was. Kept after the ejection ends, to tell whether the
    /// next ejection continues a streak.
    ejected_until: AtomicU64,
    /// Ejections in the current streak.
    streak: AtomicU32,
}

impl HealthTable {
    /// A table for endpoints `0..n`, all healthy. `epoch` is the origin of
    /// the table's clock: any instant not after the first `now` passed in
    /// (usually `Instant::now()` when the table is built).
    pub fn new(n: usize, config: OutlierConfig, epoch: Instant) -> HealthTable {
        let base_ms = u64::try_from(config.base_ejection.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let percent = config.max_ejection_percent.min(100) as usize;
        let max_ejected = if percent == 0 || n < 2 {
            0
        } else {
            (n.saturating_mul(percent) / 100).clamp(1, n - 1)
        };
        HealthTable {
            epoch,
            threshold: config.consecutive_failures,
            base_ms,
            max_ms: base_ms.saturating_mul(u64::from(MAX_EJECTION_MULTIPLIER)),
            max_ejected,
            endpoints: (0..n).map(|_| Endpoint::default()).collect(),
            deciding: AtomicBool::new(false),
        }
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the table has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// How many endpoints may be ejected at the same time.
    pub fn max_ejected(&self) -> usize {
        self.max_ejected
    }

    /// A successful response from endpoint `i`: its failure count restarts.
    pub fn record_success(&self, i: usize) {
        if let Some(endpoint) = self.endpoints.get(i) {
            endpoint.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failure of endpoint `i` at `now`. Returns true when this failure
    /// ejected the endpoint.
    pub fn record_failure(&self, i: usize, now: Instant) -> bool {
        let Some(endpoint) = self.endpoints.get(i) else {
            return false;
        };
        if self.threshold == 0 {
            return false;
        }
        let now = self.millis(now);
        if endpoint.ejected_until.load(Ordering::Acquire) > now {
            return false;
        }
        let previous = endpoint
            .failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some(f.saturating_add(1))
            })
            .unwrap_or(u32::MAX);
        if previous.saturating_add(1) < self.threshold {
            return false;
        }
        self.try_eject(endpoint, now)
    }

    fn try_eject(&self, endpoint: &Endpoint, now: u64) -> bool {
        if self
            .deciding
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let ejected = self.decide(endpoint, now);
        self.deciding.store(false, Ordering::Release);
        ejected
    }

    /// Runs only while holding `deciding`, so ejections happen one at a
    /// time and the count below stays true until the store.
    fn decide(&self, endpoint: &Endpoint, now: u64) -> bool {
        let until = endpoint.ejected_until.load(Ordering::Acquire);
        if until > now {
            // Another task ejected it after our first look.
            return false;
        }
        if self.ejected_count_at(now) >= self.max_ejected {
            return false;
        }
        let streak = if until != 0 && now <= until.saturating_add(self.max_ms) {
            endpoint.streak.load(Ordering::Relaxed).saturating_add(1)
        } else {
            1
        };
        // 2^4 already exceeds the cap of 10, so four doublings are enough.
        let doublings = streak.saturating_sub(1).min(4);
        let length = self.base_ms.saturating_mul(1 << doublings).min(self.max_ms);
        endpoint.streak.store(streak, Ordering::Relaxed);
        endpoint.failures.store(0, Ordering::Relaxed);
        endpoint
            .ejected_until
            .store(now.saturating_add(length), Ordering::Release);
        true
    }

    /// Whether endpoint `i` may be picked at `now` (false for an index out
    /// of range).
    pub fn is_healthy(&self, i: usize, now: Instant) -> bool {
        self.is_healthy_at(i, self.millis(now))
    }

    /// Like [`is_healthy`](Self::is_healthy), reading the clock (`now`)
    /// only for an endpoint that was ever ejected.
    pub fn is_healthy_with(&self, i: usize, now: impl FnOnce() -> Instant) -> bool {
        match self.endpoints.get(i) {
            Some(e) => match e.ejected_until.load(Ordering::Acquire) {
                0 => true,
                until => until <= self.millis(now()),
            },
            None => false,
        }
    }

    /// The predicate for [`Balancer::pick`](crate::balance::Balancer::pick)
    /// at `now` (the clock is read once, not per endpoint).
    pub fn healthy(&self, now: Instant) -> impl Fn(usize) -> bool + Copy + '_ {
        let now = self.millis(now);
        move |i| self.is_healthy_at(i, now)
    }

    /// How many endpoints are ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        self.ejected_count_at(self.millis(now))
    }

    /// How long endpoint `i` stays ejected after `now`; `None` when it is
    /// in service.
    pub fn ejected_for(&self, i: usize, now: Instant) -> Option<Duration> {
        let until = self.endpoints.get(i)?.ejected_until.load(Ordering::Acquire);
        let now = self.millis(now);
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Endpoint `i`'s current run of failures.
    pub fn consecutive_failures(&self, i: usize) -> u32 {
        self.endpoints
            .get(i)
            .map_or(0, |e| e.failures.load(Ordering::Relaxed))
    }

    fn is_healthy_at(&self, i: usize, now: u64) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|e| e.ejected_until.load(Ordering::Acquire) <= now)
    }

    fn ejected_count_at(&self, now: u64) -> usize {
        self.endpoints
            .iter()
            .filter(|e| e.ejected_until.load(Ordering::Acquire) > now)
            .count()
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Balancer, Policy};

    const BASE: Duration = Duration::from_secs(30);

    fn config(failures: u32, percent: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: failures,
            base_ejection: BASE,
            max_ejection_percent: percent,
        }
    }

    /// Fails endpoint `i` until it is ejected (at most `limit` times);
    /// returns whether it was.
    fn fail(table: &HealthTable, i: usize, now: Instant, limit: u32) -> bool {
        (0..limit).any(|_| table.record_failure(i, now))
    }

    #[test]
    fn defaults() {
        let c = OutlierConfig::default();
        assert_eq!(
            (
                c.consecutive_failures,
                c.base_ejection,
                c.max_ejection_percent
            ),
            (5, BASE, 50)
        );
    }

    #[test]
    fn consecutive_failures_eject() {
        let t0 = Instant::now();
        let table = HealthTable::new(4, OutlierConfig::default(), t0);
        for k in 1..5 {
            assert!(!table.record_failure(2, t0));
            assert_eq!(table.consecutive_failures(2), k);
        }
        assert!(table.is_healthy(2, t0));
        assert!(table.record_failure(2, t0));
        assert!(!table.is_healthy(2, t0));
        assert_eq!(table.consecutive_failures(2), 0);
        assert_eq!(table.ejected_for(2, t0), Some(BASE));
        assert_eq!(table.ejected_count(t0), 1);
        assert!((0..4).filter(|&i| i != 2).all(|i| table.is_healthy(i, t0)));
    }

    #[test]
    fn the_clock_is_read_only_for_endpoints_ever_ejected() {
        let t0 = Instant::now();
        let table = HealthTable::new(2, OutlierConfig::default(), t0);
        let never = || -> Instant { panic!("the clock was read for a healthy endpoint") };
        assert!(table.is_healthy_with(0, never));
        assert!(!table.is_healthy_with(5, never), "out of range");
        assert!(fail(&table, 1, t0, 5));
        assert!(!table.is_healthy_with(1, || t0));
        assert!(table.is_healthy_with(1, || t0 + BASE));
        assert!(table.is_healthy_with(0, never));
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let table = HealthTable::new(4, OutlierConfig::default(), t0);
        for _ in 0..3 {
            for _ in 0..4 {
                assert!(!table.record_failure(0, t0));
            }
            table.record_success(0);
            assert_eq!(table.consecutive_failures(0), 0);
        }
        assert!(table.is_healthy(0, t0));
    }

    #[test]
    fn ejected_endpoint_returns_when_its_time_is_up() {
        let t0 = Instant::now();
        let table = HealthTable::new(4, config(1, 50), t0);
        assert!(table.record_failure(1, t0));
        assert!(!table.is_healthy(1, t0 + BASE - Duration::from_millis(1)));
        assert_eq!(
            table.ejected_for(1, t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
        assert!(table.is_healthy(1, t0 + BASE));
        assert_eq!(table.ejected_for(1, t0 + BASE), None);
        assert_eq!(table.ejected_count(t0 + BASE), 0);
    }

    #[test]
    fn ejections_back_off_exponentially_up_to_ten_times() {
        let t0 = Instant::now();
        let table = HealthTable::new(4, config(1, 50), t0);
        let mut now = t0;
        for multiplier in [1, 2, 4, 8, 10, 10, 10] {
            assert!(table.record_failure(0, now), "x{multiplier}");
            let length = BASE * multiplier;
            assert_eq!(table.ejected_for(0, now), Some(length));
            now += length;
            assert!(table.is_healthy(0, now));
        }
    }

    #[test]
    fn a_streak_ends_after_a_long_healthy_spell() {
        let t0 = Instant::now();
        let table = HealthTable::new(4, config(1, 50), t0);
        assert!(table.record_failure(0, t0));
        let back = t0 + BASE;
        assert!(table.record_failure(0, back));
        assert_eq!(table.ejected_for(0, back), Some(BASE * 2));
        let back = back + BASE * 2;
        // In service for the longest ejection time: the streak starts over.
        let later = back + BASE * MAX_EJECTION_MULTIPLIER + Duration::from_millis(1);
        assert!(table.record_failure(0, later));
        assert_eq!(table.ejected_for(0, later), Some(BASE));
        // Exactly at the end of that spell it would still have continued.
        let table = HealthTable::new(4, config(1, 50), t0);
        assert!(table.record_failure(0, t0));
        let at = t0 + BASE + BASE * MAX_EJECTION_MULTIPLIER;
        assert!(table.record_failure(0, at));
        assert_eq!(table.ejected_for(0, at), Some(BASE * 2));
    }

    #[test]
    fn outcomes_while_ejected_are_ignored() {
        let t0 = Instant::now();
        let table = HealthTable::new(4, config(2, 50), t0);
        assert!(fail(&table, 3, t0, 2));
        let during = t0 + Duration::from_secs(10);
        for _ in 0..10 {
            assert!(!table.record_failure(3, during));
        }
        assert_eq!(table.consecutive_failures(3), 0);
        assert_eq!(table.ejected_for(3, during), Some(Duration::from_secs(20)));
        // Back in service it needs a full run of failures again.
        assert!(!table.record_failure(3, t0 + BASE));
        assert!(table.is_healthy(3, t0 + BASE));
    }

    #[test]
    fn max_ejection_percent_is_respected() {
        let t0 = Instant::now();
        let table = HealthTable::new(10, config(3, 50), t0);
        assert_eq!(table.max_ejected(), 5);
        for i in 0..5 {
            assert!(fail(&table, i, t0, 3), "endpoint {i}");
        }
        // The sixth stays in service, keeping its failures.
        assert!(!fail(&table, 5, t0, 10));
        assert!(table.is_healthy(5, t0));
        assert!(table.consecutive_failures(5) >= 3);
        assert_eq!(table.ejected_count(t0), 5);
        // Once the first five are back, its next failure ejects it.
        let later = t0 + BASE;
        assert!(table.record_failure(5, later));
        assert_eq!(table.ejected_count(later), 1);
    }

    #[test]
    fn never_all_and_at_least_one() {
        let t0 = Instant::now();
        let cases = [
            // (endpoints, percent, ejectable)
            (0, 50, 0),
            (1, 100, 0),
            (2, 100, 1),
            (2, 50, 1),
            (3, 10, 1),
            (3, 100, 2),
            (10, 100, 9),
            (10, 0, 0),
            (10, 25, 2),
            (10, 500, 9),
            (1000, 1, 10),
        ];
        for (n, percent, want) in cases {
            let table = HealthTable::new(n, config(1, percent), t0);
            assert_eq!(table.max_ejected(), want, "{n} endpoints at {percent}%");
            let ejected = (0..n).filter(|&i| table.record_failure(i, t0)).count();
            assert_eq!(ejected, want, "{n} endpoints at {percent}%");
            assert_eq!(
                (0..n).filter(|&i| table.is_healthy(i, t0)).count(),
                n - want
            );
        }
    }

    #[test]
    fn zero_failures_disables_ejection() {
        let t0 = Instant::now();
        let table = HealthTable::new(4, config(0, 50), t0);
        assert!(!fail(&table, 0, t0, 100));
        assert!(table.is_healthy(0, t0));
    }

    #[test]
    fn out_of_range_and_odd_clocks_do_not_panic() {
        let t0 = Instant::now();
        let table = HealthTable::new(2, config(1, 50), t0);
        assert!(!table.record_failure(7, t0));
        table.record_success(7);
        assert!(!table.is_healthy(7, t0));
        assert_eq!(table.ejected_for(7, t0), None);
        assert_eq!(table.consecutive_failures(7), 0);
        // A `now` before the epoch counts as the epoch.
        let before = t0.checked_sub(Duration::from_secs(5)).unwrap_or(t0);
        assert!(table.record_failure(0, before));
        assert_eq!(table.ejected_for(0, t0), Some(BASE));

        let huge = OutlierConfig {
            base_ejection: Duration::MAX,
            ..config(1, 50)
        };
        let table = HealthTable::new(2, huge, t0);
        let far = t0 + Duration::from_secs(1 << 40);
        assert!(table.record_failure(0, far));
        assert!(!table.is_healthy(0, far + Duration::from_secs(1 << 40)));

        let tiny = OutlierConfig {
            base_ejection: Duration::ZERO,
            ..config(1, 50)
        };
        let table = HealthTable::new(2, tiny, t0);
        assert!(table.record_failure(0, t0));
        assert!(!table.is_healthy(0, t0));
        assert!(table.is_healthy(0, t0 + Duration::from_millis(1)));
    }

    #[test]
    fn concurrent_failures_never_exceed_the_limit() {
        let t0 = Instant::now();
        let table = HealthTable::new(20, config(2, 30), t0);
        let ejected: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let table = &table;
                    s.spawn(move || {
                        (0..2000)
                            .filter(|k| table.record_failure((k * 7 + t) % 20, t0))
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(table.max_ejected(), 6);
        assert_eq!(ejected, 6);
        assert_eq!(table.ejected_count(t0), 6);
    }

    #[test]
    fn balancer_skips_ejected_endpoints() {
        let t0 = Instant::now();
        let table = HealthTable::new(4, config(1, 50), t0);
        assert!(table.record_failure(1, t0));
        assert!(table.record_failure(3, t0));
        let endpoints: Vec<(String, u32)> = (0..4).map(|i| (format!("e{i}"), 1)).collect();
        for policy in [
            Policy::RoundRobin,
            Policy::LeastRequest,
            Policy::ConsistentHash,
        ] {
            let balancer = Balancer::new(policy, &endpoints);
            for key in 0..100 {
                let pick = balancer.pick(Some(key), &[], table.healthy(t0));
                assert!(matches!(pick, Some(0 | 2)), "{policy:?}: {pick:?}");
            }
            let later = t0 + BASE;
            let picked: std::collections::HashSet<_> = (0..200)
                .filter_map(|key| balancer.pick(Some(key), &[], table.healthy(later)))
                .collect();
            assert_eq!(picked.len(), 4, "{policy:?}: everyone is back");
        }
    }
}
