//! GCRA, the generic cell rate algorithm: the arithmetic of rate limiting,
//! with time passed in (no clock, no IO).
//!
//! Why GCRA (a token bucket stored as one timestamp per key) rather than a
//! token bucket with a refill task, or fixed windows: it keeps **one
//! timestamp per key** (the theoretical arrival time, TAT), needs no timer,
//! refills continuously (fixed windows let `2 x limit` through around a
//! window edge), and an entry whose TAT is in the past carries no
//! information, so idle keys can be dropped at any time without changing a
//! decision. The same arithmetic runs in the local limiter and in the Redis
//! Lua script.
//!
//! Semantics: a full bucket holds `requests + burst`; it refills
//! continuously at `requests` per `period`. In GCRA terms the emission
//! interval is `T = ceil(period / requests)` and the tolerance
//! `tau = (requests + burst - 1) x T`; a request at `now` passes when
//! `now >= TAT - tau`, and then `TAT = max(TAT, now) + T`. Guarantees
//! (proved by the tests below):
//!
//! - a quiet client gets exactly `requests + burst` at once, then one
//!   every `T`;
//! - no interval shorter than `T` ever holds more than `requests + burst`
//!   passes, however requests are timed (no doubling at a window edge);
//! - over any span `L`, at most `requests + burst + L / T` pass: the
//!   long-run rate is `requests` per `period`.

/// A limit in GCRA terms. Times are nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Emission interval `T`: the steady spacing between requests.
    pub interval: u64,
    /// Tolerance `tau = (requests + burst - 1) x T`.
    pub tolerance: u64,
}

impl Rate {
    /// `requests` per `period_ms`, with `burst` extra in a full bucket.
    /// `requests` of 0 is treated as 1 (the compiler refuses it).
    pub fn new(requests: u32, period_ms: u64, burst: u32) -> Rate {
        let period = u128::from(period_ms.max(1)) * 1_000_000;
        let requests = u128::from(requests.max(1));
        // Rounding up keeps the long-run rate at or under the limit.
        let interval = period.div_ceil(requests).max(1);
        let tolerance = interval.saturating_mul(requests - 1 + u128::from(burst));
        Rate {
            interval: u64::try_from(interval).unwrap_or(u64::MAX / 4),
            tolerance: u64::try_from(tolerance)
                .unwrap_or(u64::MAX / 4)
                .min(u64::MAX / 4),
        }
    }
}

/// The outcome of one request against one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The request passes.
    pub allowed: bool,
    /// Requests that would still pass right now after this one.
    pub remaining: u64,
    /// When refused: time until a request would pass.
    pub retry_after: u64,
    /// Time until the limit is fully replenished.
    pub reset_after: u64,
}

/// Decides a request arriving at `now` for a key whose TAT is `tat` (`None`
/// for a key never seen or forgotten). Returns the decision and the new TAT
/// to store (`None`: nothing changes, the request was refused).
pub fn check(tat: Option<u64>, now: u64, rate: Rate) -> (Decision, Option<u64>) {
    let tat = tat.unwrap_or(now).max(now);
    let allow_at = tat.saturating_sub(rate.tolerance);
    if now < allow_at {
        return (
            Decision {
                allowed: false,
                remaining: 0,
                retry_after: allow_at - now,
                reset_after: tat - now,
            },
            None,
        );
    }
    let new_tat = tat.saturating_add(rate.interval);
    (
        Decision {
            allowed: true,
            remaining: remaining(new_tat, now, rate),
            retry_after: 0,
            reset_after: new_tat - now,
        },
        Some(new_tat),
    )
}

/// Requests that would pass at `now` given `tat`.
fn remaining(tat: u64, now: u64, rate: Rate) -> u64 {
    let horizon = now.saturating_add(rate.tolerance);
    if horizon < tat {
        0
    } else {
        (horizon - tat) / rate.interval + 1
    }
}

/// The TAT after giving back one request that passed (when a later limit
/// refused the request after all). Never goes below `now`, where it would
/// mean the same as an empty entry.
pub fn refund(tat: u64, now: u64, rate: Rate) -> u64 {
    tat.saturating_sub(rate.interval).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    /// Runs arrivals through one key; returns the times that passed.
    fn run(rate: Rate, arrivals: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut tat = None;
        let mut passed = Vec::new();
        for now in arrivals {
            let (decision, new_tat) = check(tat, now, rate);
            if let Some(t) = new_tat {
                tat = Some(t);
            }
            if decision.allowed {
                passed.push(now);
            }
        }
        passed
    }

    /// The most passes within any half-open interval of length `window`.
    fn max_in_window(passed: &[u64], window: u64) -> usize {
        let mut best = 0;
        let mut start = 0;
        for end in 0..passed.len() {
            while passed[end] - passed[start] >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    #[test]
    fn thirty_five_a_minute_admits_exactly_thirty_five_at_once() {
        let rate = Rate::new(35, 60_000, 0);
        // 100 requests within the first second: exactly 35 pass.
        let passed = run(rate, (0..100).map(|i| i * 10 * MS));
        assert_eq!(passed.len(), 35);
        // Then one every 60/35 s: a request every 10 ms for the rest of the
        // minute gets 34 more (the 35th refill lands at 60 s).
        let passed = run(rate, (0..6_000).map(|i| i * 10 * MS));
        assert_eq!(passed.len(), 35 + 34);
        // Over ten minutes of hammering, the rate is 35 a minute.
        let passed = run(rate, (0..60_000).map(|i| i * 10 * MS));
        assert_eq!(passed.len(), 35 + 349);
    }

    #[test]
    fn other_keys_are_unaffected() {
        let rate = Rate::new(35, 60_000, 0);
        assert_eq!(run(rate, (0..100).map(|_| S)).len(), 35);
        assert_eq!(run(rate, (0..100).map(|_| S)).len(), 35);
    }

    #[test]
    fn burst_adds_to_the_bucket() {
        let rate = Rate::new(10, 60_000, 5);
        assert_eq!(run(rate, (0..100).map(|_| S)).len(), 15);
    }

    #[test]
    fn bursts_straddling_a_window_edge_do_not_double() {
        // 5 per 2 s. Drain at 0; then bursts of 20 just before and just
        // after the 2 s edge. A fixed window would pass 5 + 5 there.
        let rate = Rate::new(5, 2_000, 0);
        let mut arrivals: Vec<u64> = vec![0; 20];
        arrivals.extend(std::iter::repeat_n(1_950 * MS, 20));
        arrivals.extend(std::iter::repeat_n(2_050 * MS, 20));
        let passed = run(rate, arrivals);
        let at_edge = passed.iter().filter(|&&t| t >= 1_950 * MS).count();
        assert_eq!(passed.len() - at_edge, 5);
        assert_eq!(at_edge, 5);
    }

    #[test]
    fn decisions_report_remaining_and_when_to_retry() {
        let rate = Rate::new(5, 2_000, 0);
        let (first, tat) = check(None, 0, rate);
        assert!(first.allowed);
        assert_eq!(first.remaining, 4);
        assert_eq!(first.reset_after, 400 * MS);
        let mut tat = tat;
        for expected in (0..4).rev() {
            let (d, t) = check(tat, 0, rate);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected);
            tat = t;
        }
        let (refused, unchanged) = check(tat, 0, rate);
        assert!(!refused.allowed);
        assert_eq!(unchanged, None);
        assert_eq!(refused.retry_after, 400 * MS);
        assert_eq!(refused.reset_after, 2 * S);
        // 400 ms later exactly one more passes.
        let (d, t) = check(tat, 400 * MS, rate);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!check(t, 400 * MS, rate).0.allowed);
    }

    #[test]
    fn a_refund_gives_back_exactly_one_request() {
        let rate = Rate::new(1, 1_000, 0);
        let (_, tat) = check(None, 0, rate);
        let tat = tat.expect("passed");
        assert!(!check(Some(tat), 0, rate).0.allowed);
        let refunded = refund(tat, 0, rate);
        assert!(check(Some(refunded), 0, rate).0.allowed);
    }

    #[test]
    fn extreme_parameters_do_not_overflow() {
        let rate = Rate::new(1_000_000_000, 1_000, 1_000_000_000);
        assert_eq!(rate.interval, 1);
        let rate = Rate::new(1, 86_400_000, 1_000_000_000);
        let (d, _) = check(Some(u64::MAX - 1), u64::MAX - 10, rate);
        assert!(d.allowed);
        let (d, _) = check(None, 0, Rate::new(0, 0, 0));
        assert!(d.allowed);
    }

    proptest! {
        /// Whatever the arrival pattern: no interval shorter than `T` holds
        /// more than the bucket, and no span more than the bucket plus what
        /// the steady rate earns in it.
        #[test]
        fn passes_never_exceed_the_bucket_and_the_rate(
            requests in 1u32..50,
            burst in 0u32..10,
            period_ms in 1_000u64..10_000,
            gaps in proptest::collection::vec(0u64..500, 1..400),
        ) {
            let rate = Rate::new(requests, period_ms, burst);
            let mut now = 0;
            let arrivals: Vec<u64> = gaps.iter().map(|g| { now += g * MS; now }).collect();
            let passed = run(rate, arrivals);
            let bucket = (requests + burst) as usize;
            prop_assert!(max_in_window(&passed, rate.interval) <= bucket);
            if let (Some(first), Some(last)) = (passed.first(), passed.last()) {
                let earned = ((last - first) / rate.interval) as usize;
                prop_assert!(passed.len() <= bucket + earned);
            }
        }
    }
}
