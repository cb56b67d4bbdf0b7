//! Endpoint selection: which endpoint of a cluster gets the next request,
//! and which backend of a rule gets it ([`WeightedSplit`]).
//!
//! Everything here is built once per snapshot, off the request path
//! ([`Balancer::new`], [`WeightedSplit::new`]), and then shared read-only:
//! a pick takes `&self`, touches at most one atomic counter, never locks and
//! never allocates. Endpoints are plain indices `0..n` into the caller's
//! endpoint list, so this module knows nothing about addresses or the
//! snapshot; the caller keeps one [`InFlight`] table and one
//! [`HealthTable`](crate::health::HealthTable) per cluster indexed the same
//! way.
//!
//! # Weights and health
//!
//! Every endpoint has a weight; weight 0 means "never pick" (for example a
//! draining endpoint). Every pick takes a predicate `healthy(i)` and never
//! returns an endpoint for which it is false (outlier detection ejects
//! endpoints through it). When no endpoint with a positive weight is healthy,
//! the pick is `None` and the caller answers 503. Each algorithm first tries
//! its normal choice a few times ([`MAX_TRIES`]) and then falls back to a
//! scan of the endpoints, so the cost of a pick stays bounded (`O(n)` in the
//! worst case) even when almost every endpoint is ejected.
//!
//! # Algorithms
//!
//! - **Weighted round robin** ([`RoundRobin`]). At build time the weights
//!   (reduced by their gcd) are laid out into one cycle in which endpoint `i`
//!   appears exactly `w_i` times, spread evenly: the `k`-th appearance of `i`
//!   is placed by its ideal position `(k + ½) / w_i` in the cycle (the
//!   Sainte-Laguë divisor method; for `5,1,1` that is `0 0 0 1 2 0 0`). A pick
//!   is one `fetch_add` on a shared cursor into that cycle, so concurrent
//!   picks together follow the sequence exactly. An unhealthy entry costs
//!   another `fetch_add`, which keeps the proportions among the healthy
//!   endpoints exact too (instead of doubling the load on the endpoint that
//!   follows an ejected one). The cycle is capped at [`MAX_SCHEDULE`] entries;
//!   larger weight sums are scaled down, which rounds proportions slightly.
//!   Each build starts at a random point of the cycle so that replicas and
//!   fresh snapshots do not all send their first requests to endpoint 0.
//! - **Least request** ([`LeastRequest`]): the power of two choices. Two
//!   candidates are drawn at random in proportion to their weights; the one
//!   with fewer in-flight requests *per unit of weight* wins (ties go to the
//!   first draw). With no load this is a weighted random pick; under load,
//!   in-flight requests settle in proportion to the weights. In-flight counts
//!   live outside the balancer ([`InFlight`]) so that a request started before
//!   a snapshot swap is still counted after it.
//! - **Consistent hash** ([`ConsistentHash`]): a Maglev lookup table
//!   (Eisenbud et al., NSDI 2016) of 65,537 slots (a larger prime above 655
//!   endpoints; the size must stay put while endpoints come and go, since a
//!   key's slot is `hash % size`), filled from per-endpoint permutations
//!   derived from a stable endpoint identity (its address), with slots in
//!   proportion to the weights. Keys move (almost) only when their endpoint
//!   goes away: removing one endpoint of ten remaps about a tenth of the
//!   keys, adding an eleventh takes about an eleventh. When the
//!   key's endpoint is unhealthy, the key is re-hashed (deterministically) to
//!   another slot, so it sticks to one fallback and comes home when the
//!   endpoint is healthy again; the keys of healthy endpoints do not move.
//!   The table is rebuilt only with a new snapshot, never at pick time.
//! - **Weighted split** ([`WeightedSplit`]) chooses among a rule's backends
//!   (canary 90/10, blue/green). It is *random* in proportion to the
//!   weights, like Envoy's weighted clusters, rather than a deterministic
//!   cycle: a cycle correlates with periodic client behaviour (a client that
//!   always sends two requests per page would, with a 50/50 cycle, send every
//!   first request to one backend and every second to the other), which is
//!   exactly what a canary must not do. Proportions hold statistically: the
//!   standard deviation of a 10% share over 2,000 requests is 0.7 points.
//!
//! # Hashing keys
//!
//! [`stable_hash`] turns a key (a header value, a cookie, a client address)
//! into the `u64` that [`ConsistentHash::pick`] takes. It is written here
//! because the result must be identical in every dataplane replica, across
//! restarts and Rust releases, which `std`'s `DefaultHasher` does not
//! promise. It is a small word-at-a-time hash with the murmur3 finalizer:
//! fast and well distributed, not cryptographic. Its outputs are pinned by a
//! test. (An attacker choosing keys can only choose which endpoint serves
//! them, which consistent hashing offers anyway; there is no hash table to
//! flood.)

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

/// The largest round-robin cycle, in entries (4 bytes each).
pub const MAX_SCHEDULE: usize = 1 << 16;

/// How many times an algorithm retries its normal choice when it lands on
/// an unhealthy endpoint, before scanning for any healthy one.
pub const MAX_TRIES: usize = 8;

/// Slots per endpoint in a consistent-hash table (at least, up to the
/// largest table).
const SLOTS_PER_ENDPOINT: usize = 100;
/// Consistent-hash table sizes: the first prime at or above each of these.
/// The size must not change when an endpoint comes or goes (a key's slot is
/// `hash % size`), so it moves in large steps: 65,537 slots (256 KiB) up to
/// 655 endpoints, then ~262k up to 2,621, then ~1M (4 MiB), where the
/// slots per endpoint start to shrink instead.
const TABLE_TIERS: [usize; 3] = [1 << 16, 1 << 18, 1 << 20];

/// The load-balancing algorithm of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    /// Maglev consistent hashing on a request key.
    ConsistentHash,
}

/// The endpoint selector of one cluster. See the module docs.
#[derive(Debug)]
pub struct Balancer {
    len: usize,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    RoundRobin(RoundRobin),
    LeastRequest(LeastRequest),
    ConsistentHash(ConsistentHash),
}

impl Balancer {
    /// Builds a balancer for endpoints `0..endpoints.len()`, each given as
    /// (stable identity, weight). The identity (for example `"10.0.0.7:8080"`)
    /// only matters for consistent hashing, where it decides the endpoint's
    /// slots; the other policies ignore it.
    pub fn new<K: AsRef<[u8]>>(policy: Policy, endpoints: &[(K, u32)]) -> Balancer {
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
        let inner = match policy {
            Policy::RoundRobin => Inner::RoundRobin(RoundRobin::new(&weights)),
            Policy::LeastRequest => Inner::LeastRequest(LeastRequest::new(&weights)),
            Policy::ConsistentHash => Inner::ConsistentHash(ConsistentHash::new(endpoints)),
        };
        Balancer {
            len: endpoints.len(),
            inner,
        }
    }

    /// The algorithm this balancer runs.
    pub fn policy(&self) -> Policy {
        match self.inner {
            Inner::RoundRobin(_) => Policy::RoundRobin,
            Inner::LeastRequest(_) => Policy::LeastRequest,
            Inner::ConsistentHash(_) => Policy::ConsistentHash,
        }
    }

    /// The number of endpoints it was built for (including weight 0).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it was built without endpoints.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Picks an endpoint among those for which `healthy` is true.
    ///
    /// `key` is the request's hash key for consistent hashing (see
    /// [`stable_hash`]); a request without one gets a random endpoint. The
    /// other policies ignore it. `in_flight` is the cluster's in-flight
    /// table ([`InFlight::counts`]), read only by least request; missing
    /// entries count as zero.
    pub fn pick(
        &self,
        key: Option<u64>,
        in_flight: &[AtomicU32],
        healthy: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match &self.inner {
            Inner::RoundRobin(rr) => rr.pick(healthy),
            Inner::LeastRequest(lr) => lr.pick(in_flight, healthy),
            Inner::ConsistentHash(ch) => {
                let key = key.unwrap_or_else(rand::random);
                ch.pick(key, healthy)
            }
        }
    }
}

/// The endpoints with a positive weight, in index order: what every
/// algorithm chooses from, and the order of the fallback scan.
#[derive(Debug, Default)]
struct Members {
    ids: Box<[u32]>,
}

impl Members {
    fn new(weights: &[u32]) -> Members {
        let ids = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .filter_map(|(i, _)| u32::try_from(i).ok())
            .collect();
        Members { ids }
    }

    /// The endpoint at a position of the member list.
    fn id(&self, position: usize) -> usize {
        self.ids[position] as usize
    }

    /// The position of the first healthy member at or after position
    /// `start` (wrapping).
    fn scan_from(&self, start: usize, healthy: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.ids.len();
        if n == 0 {
            return None;
        }
        (0..n)
            .map(|step| (start % n + step) % n)
            .find(|&position| healthy(self.id(position)))
    }
}

/// Draws members at random in proportion to their weights.
#[derive(Debug, Default)]
struct Sampler {
    members: Members,
    /// `cumulative[j]` is the sum of the weights of members `0..=j`.
    cumulative: Box<[u64]>,
}

impl Sampler {
    fn new(weights: &[u32]) -> Sampler {
        let members = Members::new(weights);
        let mut sum = 0u64;
        let cumulative = members
            .ids
            .iter()
            .map(|&id| {
                sum += u64::from(weights[id as usize]);
                sum
            })
            .collect();
        Sampler {
            members,
            cumulative,
        }
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// A member's position in `members.ids`, drawn by weight.
    fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        match self.members.ids.len() {
            0 => None,
            1 => Some(0),
            _ => {
                let x = rng.random_range(0..self.total());
                Some(self.cumulative.partition_point(|&c| c <= x))
            }
        }
    }

    /// Like [`Sampler::draw`], but never the member at `excluded`: the draw
    /// is over the other members' weights only.
    fn draw_excluding<R: Rng + ?Sized>(&self, rng: &mut R, excluded: usize) -> Option<usize> {
        let end = *self.cumulative.get(excluded)?;
        let start = match excluded {
            0 => 0,
            _ => self.cumulative[excluded - 1],
        };
        let rest = self.total() - (end - start);
        if rest == 0 {
            return None;
        }
        let mut x = rng.random_range(0..rest);
        if x >= start {
            x += end - start;
        }
        Some(self.cumulative.partition_point(|&c| c <= x))
    }
}

/// Smooth weighted round robin over a precomputed cycle.
#[derive(Debug)]
pub struct RoundRobin {
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
    members: Members,
}

impl RoundRobin {
    /// Builds the cycle for `weights` (endpoint `i` has `weights[i]`) and
    /// starts at a random point of it.
    pub fn new(weights: &[u32]) -> RoundRobin {
        RoundRobin::starting_at(weights, rand::random::<u32>() as usize)
    }

    /// Like [`RoundRobin::new`], starting at position `start` of the cycle.
    pub fn starting_at(weights: &[u32], start: usize) -> RoundRobin {
        let schedule = build_schedule(weights);
        let start = if schedule.is_empty() {
            0
        } else {
            start % schedule.len()
        };
        RoundRobin {
            schedule,
            cursor: AtomicUsize::new(start),
            members: Members::new(weights),
        }
    }

    /// One cycle of picks when every endpoint is healthy.
    pub fn cycle(&self) -> &[u32] {
        &self.schedule
    }

    /// The next endpoint in the cycle for which `healthy` is true.
    pub fn pick(&self, healthy: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let mut position = 0;
        for _ in 0..MAX_TRIES {
            position = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
            let id = self.schedule[position] as usize;
            if healthy(id) {
                return Some(id);
            }
        }
        let found = self.members.scan_from(position, &healthy)?;
        Some(self.members.id(found))
    }
}

/// Lays out one cycle of a smooth weighted round robin: endpoint `i`
/// appears `w_i` times (after reducing by the gcd and capping the sum at
/// [`MAX_SCHEDULE`]), its `k`-th appearance ordered by `(2k + 1) / 2w_i`.
fn build_schedule(weights: &[u32]) -> Box<[u32]> {
    let weights = reduce_weights(weights);
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();

    /// The next appearance of an endpoint: its ideal position in the cycle
    /// is `num / den`; earlier positions come first, then lower indices.
    #[derive(PartialEq, Eq)]
    struct Due {
        num: u64,
        den: u64,
        id: u32,
    }
    impl Ord for Due {
        fn cmp(&self, other: &Self) -> CmpOrdering {
            let lhs = u128::from(self.num) * u128::from(other.den);
            let rhs = u128::from(other.num) * u128::from(self.den);
            lhs.cmp(&rhs).then(self.id.cmp(&other.id))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(other))
        }
    }

    let mut heap: BinaryHeap<Reverse<Due>> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .filter_map(|(i, &w)| {
            let id = u32::try_from(i).ok()?;
            Some(Reverse(Due {
                num: 1,
                den: 2 * u64::from(w),
                id,
            }))
        })
        .collect();
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    while let Some(Reverse(due)) = heap.pop() {
        schedule.push(due.id);
        // num = 2k + 1 for the k-th appearance; there are den / 2 of them.
        let next = due.num + 2;
        if next < due.den {
            heap.push(Reverse(Due { num: next, ..due }));
        }
    }
    schedule.into_boxed_slice()
}

/// Divides the weights by their gcd and, when the sum still exceeds
/// [`MAX_SCHEDULE`], scales them down (keeping every positive weight at
/// least 1).
fn reduce_weights(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let mut reduced: Vec<u32> = weights.iter().map(|&w| w / divisor).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    let cap = MAX_SCHEDULE as u64;
    if total > cap {
        for w in &mut reduced {
            if *w > 0 {
                let scaled = u128::from(*w) * u128::from(cap) / u128::from(total);
                *w = u32::try_from(scaled).unwrap_or(u32::MAX).max(1);
            }
        }
        let divisor = reduced.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
        for w in &mut reduced {
            *w /= divisor;
        }
    }
    reduced
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Least request by the power of two choices.
#[derive(Debug)]
pub struct LeastRequest {
    sampler: Sampler,
    weights: Box<[u32]>,
}

impl LeastRequest {
    /// Builds the sampler for `weights` (endpoint `i` has `weights[i]`).
    pub fn new(weights: &[u32]) -> LeastRequest {
        LeastRequest {
            sampler: Sampler::new(weights),
            weights: weights.into(),
        }
    }

    /// Picks with the thread's random generator.
    pub fn pick(&self, in_flight: &[AtomicU32], healthy: impl Fn(usize) -> bool) -> Option<usize> {
        self.pick_with(&mut rand::rng(), in_flight, healthy)
    }

    /// Draws two distinct healthy candidates by weight and returns the one
    /// with fewer in-flight requests per unit of weight (the first on a
    /// tie).
    pub fn pick_with<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        in_flight: &[AtomicU32],
        healthy: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let members = &self.sampler.members;
        let first = (0..MAX_TRIES)
            .filter_map(|_| self.sampler.draw(rng))
            .find(|&position| healthy(members.id(position)));
        let first = match first {
            Some(position) => position,
            None => {
                let start = rng.random_range(0..members.ids.len().max(1));
                members.scan_from(start, &healthy)?
            }
        };
        let second = (0..MAX_TRIES)
            .map_while(|_| self.sampler.draw_excluding(rng, first))
            .find(|&position| healthy(members.id(position)));
        let first = members.id(first);
        let Some(second) = second.map(|position| members.id(position)) else {
            return Some(first);
        };

        let load =
            |id: usize| u64::from(in_flight.get(id).map_or(0, |c| c.load(Ordering::Relaxed)));
        let weight = |id: usize| u64::from(self.weights.get(id).copied().unwrap_or(1));
        // load(second) / weight(second) < load(first) / weight(first)
        if load(second) * weight(first) < load(first) * weight(second) {
            Some(second)
        } else {
            Some(first)
        }
    }
}

/// Maglev consistent hashing.
#[derive(Debug)]
pub struct ConsistentHash {
    table: Box<[u32]>,
    members: Members,
}

impl ConsistentHash {
    /// Builds the lookup table for endpoints given as (stable identity,
    /// weight). Same identities and weights in the same order give the same
    /// table in every process.
    pub fn new<K: AsRef<[u8]>>(endpoints: &[(K, u32)]) -> ConsistentHash {
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
        let members = Members::new(&weights);
        let table = build_maglev(endpoints, &members);
        ConsistentHash { table, members }
    }

    /// The number of slots in the lookup table (a prime).
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The endpoint for `hash` (from [`stable_hash`]); when it is unhealthy,
    /// the endpoint of the key's next deterministic re-hash.
    pub fn pick(&self, hash: u64, healthy: impl Fn(usize) -> bool) -> Option<usize> {
        let size = self.table.len() as u64;
        if size == 0 {
            return None;
        }
        let mut slot = 0;
        for attempt in 0..MAX_TRIES as u64 {
            slot = (fmix64(hash ^ attempt.wrapping_mul(GOLDEN)) % size) as usize;
            let id = self.table[slot] as usize;
            if healthy(id) {
                return Some(id);
            }
        }
        let found = self.members.scan_from(slot, &healthy)?;
        Some(self.members.id(found))
    }
}

fn build_maglev<K: AsRef<[u8]>>(endpoints: &[(K, u32)], members: &Members) -> Box<[u32]> {
    const EMPTY: u32 = u32::MAX;
    let count = members.ids.len();
    if count == 0 {
        return Box::default();
    }
    let size = next_prime(table_tier(count));
    let size64 = size as u64;

    struct Filler {
        id: u32,
        weight: u64,
        /// Where this member's permutation continues, and its stride.
        position: u64,
        skip: u64,
        /// The member fills a slot in round `r` once `r * weight >= target`.
        target: u64,
    }
    let mut fillers: Vec<Filler> = members
        .ids
        .iter()
        .map(|&id| {
            let (key, weight) = &endpoints[id as usize];
            let key = key.as_ref();
            Filler {
                id,
                weight: u64::from(*weight),
                position: hash_seeded(SEED_OFFSET, key) % size64,
                skip: hash_seeded(SEED_SKIP, key) % (size64 - 1) + 1,
                target: 0,
            }
        })
        .collect();
    let max_weight = fillers.iter().map(|f| f.weight).max().unwrap_or(1);
    for filler in &mut fillers {
        filler.target = max_weight;
    }

    // Members take turns in rounds, in index order; a member with weight w
    // takes a turn in a round only every max_weight / w rounds, so slots
    // end up in proportion to the weights. The heap replays exactly that
    // order: (round of the next turn, member).
    let round_of = |f: &Filler| f.target.div_ceil(f.weight);
    let mut turns: BinaryHeap<Reverse<(u64, usize)>> = fillers
        .iter()
        .enumerate()
        .map(|(j, f)| Reverse((round_of(f), j)))
        .collect();
    let mut table = vec![EMPTY; size];
    let mut filled = 0;
    while filled < size {
        let Some(Reverse((_, j))) = turns.pop() else {
            break;
        };
        let filler = &mut fillers[j];
        // The permutation visits every slot (size is prime), and some slot
        // is still empty, so this ends within `size` steps.
        for _ in 0..size {
            let slot = filler.position as usize;
            filler.position = (filler.position + filler.skip) % size64;
            if table[slot] == EMPTY {
                table[slot] = filler.id;
                filled += 1;
                break;
            }
        }
        filler.target += max_weight;
        turns.push(Reverse((round_of(filler), j)));
    }
    table.into_boxed_slice()
}

/// The table size tier for `count` endpoints (before rounding to a prime).
fn table_tier(count: usize) -> usize {
    let wanted = count.saturating_mul(SLOTS_PER_ENDPOINT);
    TABLE_TIERS
        .into_iter()
        .find(|&tier| tier >= wanted)
        .unwrap_or(TABLE_TIERS[TABLE_TIERS.len() - 1])
}

/// The smallest prime >= `n` (trial division; `n` is at most ~1M).
fn next_prime(n: usize) -> usize {
    let is_prime = |k: usize| {
        k >= 2
            && (2..)
                .take_while(|d| d * d <= k)
                .all(|d| !k.is_multiple_of(d))
    };
    (n.max(2)..).find(|&k| is_prime(k)).unwrap_or(n)
}

/// Chooses among a rule's backends at random, in proportion to their
/// weights; weight 0 is never chosen.
#[derive(Debug, Default)]
pub struct WeightedSplit {
    sampler: Sampler,
}

impl WeightedSplit {
    /// Builds the split for backends `0..weights.len()`.
    pub fn new(weights: &[u32]) -> WeightedSplit {
        WeightedSplit {
            sampler: Sampler::new(weights),
        }
    }

    /// Whether no backend has a positive weight (every pick is `None`).
    pub fn is_empty(&self) -> bool {
        self.sampler.members.ids.is_empty()
    }

    /// Picks with the thread's random generator; with one backend, no
    /// random number is drawn.
    pub fn pick(&self) -> Option<usize> {
        self.pick_with(&mut rand::rng())
    }

    /// Picks with the given random generator.
    pub fn pick_with<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        let position = self.sampler.draw(rng)?;
        Some(self.sampler.members.id(position))
    }
}

/// In-flight request counts of one cluster's endpoints, for least request.
/// Shared through an `Arc` by the balancer's callers so that guards of
/// requests started under an older snapshot still decrement the same
/// counters.
#[derive(Debug)]
pub struct InFlight {
    counts: Box<[AtomicU32]>,
}

impl InFlight {
    /// Counters for endpoints `0..n`, all zero.
    pub fn new(n: usize) -> InFlight {
        InFlight {
            counts: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The counters, for [`Balancer::pick`].
    pub fn counts(&self) -> &[AtomicU32] {
        &self.counts
    }

    /// The current count of endpoint `i` (0 if out of range).
    pub fn get(&self, i: usize) -> u32 {
        self.counts.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a request to endpoint `i` until the guard is dropped.
    pub fn start(self: &Arc<Self>, i: usize) -> InFlightGuard {
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        InFlightGuard {
            table: Arc::clone(self),
            index: i,
        }
    }
}

/// One in-flight request; decrements its endpoint's counter when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    table: Arc<InFlight>,
    index: usize,
}

impl InFlightGuard {
    /// The endpoint this request went to.
    pub fn endpoint(&self) -> usize {
        self.index
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(c) = self.table.counts.get(self.index) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const SEED_OFFSET: u64 = 0x6F66_6673_6574; // "offset"
const SEED_SKIP: u64 = 0x736B_6970; // "skip"

/// A stable 64-bit hash of `bytes`: the same in every process, platform and
/// release. See the module docs.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    hash_seeded(0, bytes)
}

fn hash_seeded(seed: u64, bytes: &[u8]) -> u64 {
    let round = |word: u64| word.wrapping_mul(P2).rotate_left(31).wrapping_mul(P1);
    let mut h = seed ^ P5 ^ (bytes.len() as u64).wrapping_mul(P1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ round(u64::from_le_bytes(word)))
            .rotate_left(27)
            .wrapping_mul(P1)
            .wrapping_add(P4);
    }
    let tail = chunks.remainder();
    let mut word = [0u8; 8];
    word[..tail.len()].copy_from_slice(tail);
    h = (h ^ round(u64::from_le_bytes(word)))
        .rotate_left(27)
        .wrapping_mul(P1)
        .wrapping_add(P4);
    fmix64(h)
}

/// The murmur3 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    k ^= k >> 33;
    k = k.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashMap;

    fn all(_: usize) -> bool {
        true
    }

    fn counts(picks: impl IntoIterator<Item = Option<usize>>, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for pick in picks {
            counts[pick.expect("a pick")] += 1;
        }
        counts
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| stable_hash(format!("user-{i}").as_bytes()))
            .collect()
    }

    fn endpoints(weights: &[u32]) -> Vec<(String, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (format!("10.0.0.{i}:8080"), w))
            .collect()
    }

    // ---- stable_hash ----

    #[test]
    fn stable_hash_is_pinned() {
        // These values must never change: replicas and restarts agree on
        // them, and consistent-hash tables are built from them.
        let got = [
            stable_hash(b""),
            stable_hash(b"a"),
            stable_hash(b"user-42"),
            stable_hash(b"10.0.0.1:8080 and some more bytes"),
        ];
        assert_eq!(
            got,
            [
                8_771_566_167_959_682_263,
                2_883_337_340_356_492_108,
                11_434_745_161_059_338_377,
                13_998_406_992_292_490_815,
            ]
        );
    }

    #[test]
    fn stable_hash_separates_similar_inputs() {
        let inputs: &[&[u8]] = &[
            b"",
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"ab",
            b"ba",
            b"abcdefgh",
            b"abcdefgh\0",
        ];
        let mut seen = std::collections::HashSet::new();
        for input in inputs {
            assert!(seen.insert(stable_hash(input)), "collision on {input:?}");
        }
        assert_ne!(hash_seeded(SEED_OFFSET, b"x"), hash_seeded(SEED_SKIP, b"x"));
    }

    #[test]
    fn stable_hash_spreads_sequential_keys() {
        let mut buckets = [0usize; 16];
        for key in keys(16_000) {
            buckets[(key % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((850..1150).contains(&b), "{buckets:?}");
        }
    }

    // ---- round robin ----

    #[test]
    fn round_robin_equal_weights_cycles_in_order() {
        let rr = RoundRobin::starting_at(&[1, 1, 1], 0);
        let picks: Vec<_> = (0..7).map(|_| rr.pick(all).expect("a pick")).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_is_smooth() {
        assert_eq!(
            RoundRobin::starting_at(&[5, 1, 1], 0).cycle(),
            [0, 0, 0, 1, 2, 0, 0]
        );
        assert_eq!(RoundRobin::starting_at(&[2, 1], 0).cycle(), [0, 1, 0]);
        // A 90/10 split puts the light endpoint in the middle of the cycle,
        // not in a burst.
        assert_eq!(
            RoundRobin::starting_at(&[9, 1], 0).cycle(),
            [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        let rr = RoundRobin::starting_at(&[3, 3, 2], 0);
        let cycle = rr.cycle();
        assert_eq!(cycle.len(), 8);
        assert!(cycle.windows(2).all(|w| w[0] != w[1]), "{cycle:?}");
    }

    #[test]
    fn round_robin_reduces_by_gcd() {
        assert_eq!(RoundRobin::starting_at(&[100, 300], 0).cycle().len(), 4);
        assert_eq!(RoundRobin::starting_at(&[0, 7], 0).cycle(), [1]);
    }

    #[test]
    fn round_robin_exact_over_a_cycle_from_any_start() {
        let weights = [5, 3, 0, 2, 1];
        for start in 0..11 {
            let rr = RoundRobin::starting_at(&weights, start);
            let got = counts((0..11 * 4).map(|_| rr.pick(all)), 5);
            assert_eq!(got, [20, 12, 0, 8, 4], "start {start}");
        }
    }

    #[test]
    fn round_robin_keeps_proportions_among_healthy() {
        let rr = RoundRobin::starting_at(&[1, 2, 3], 0);
        let got = counts((0..400).map(|_| rr.pick(|i| i != 1)), 3);
        assert_eq!(got, [100, 0, 300]);
    }

    #[test]
    fn round_robin_none_healthy_or_no_weight() {
        assert_eq!(RoundRobin::starting_at(&[1, 1], 0).pick(|_| false), None);
        assert_eq!(RoundRobin::starting_at(&[0, 0], 0).pick(all), None);
        assert_eq!(RoundRobin::starting_at(&[], 0).pick(all), None);
        assert_eq!(RoundRobin::new(&[]).pick(all), None);
    }

    #[test]
    fn round_robin_finds_a_lone_healthy_endpoint() {
        let mut weights = vec![100; 200];
        weights[123] = 1;
        let rr = RoundRobin::starting_at(&weights, 0);
        for _ in 0..50 {
            assert_eq!(rr.pick(|i| i == 123), Some(123));
        }
    }

    #[test]
    fn round_robin_caps_the_cycle() {
        let weights = [u32::MAX, 1, 12_345, u32::MAX / 3];
        let rr = RoundRobin::starting_at(&weights, 0);
        let cycle = rr.cycle();
        assert!(
            cycle.len() <= MAX_SCHEDULE + weights.len(),
            "{}",
            cycle.len()
        );
        let got = counts(cycle.iter().map(|&i| Some(i as usize)), 4);
        assert!(
            got[1] >= 1 && got[2] >= 1,
            "every endpoint keeps a slot: {got:?}"
        );
        let share = got[0] as f64 / cycle.len() as f64;
        assert!((share - 0.75).abs() < 0.001, "{share}");
    }

    #[test]
    fn round_robin_concurrent_picks_follow_the_cycle() {
        let rr = RoundRobin::starting_at(&[3, 2, 1], 0);
        let per_thread = 6 * 1000;
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| counts((0..per_thread).map(|_| rr.pick(all)), 3)))
                .collect();
            handles.into_iter().fold(vec![0; 3], |mut acc, h| {
                for (a, c) in acc.iter_mut().zip(h.join().expect("thread")) {
                    *a += c;
                }
                acc
            })
        });
        assert_eq!(total, [12_000, 8_000, 4_000]);
    }

    // ---- least request ----

    #[test]
    fn least_request_without_load_follows_weights() {
        let lr = LeastRequest::new(&[1, 1, 2]);
        let idle = InFlight::new(3);
        let mut rng = StdRng::seed_from_u64(7);
        let got = counts(
            (0..8000).map(|_| lr.pick_with(&mut rng, idle.counts(), all)),
            3,
        );
        for (g, want) in got.iter().zip([2000.0, 2000.0, 4000.0]) {
            assert!((*g as f64 - want).abs() < want * 0.08, "{got:?}");
        }
    }

    #[test]
    fn least_request_prefers_fewer_in_flight() {
        let lr = LeastRequest::new(&[1, 1]);
        let in_flight = InFlight::new(2);
        in_flight.counts()[0].store(5, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(1);
        // Two distinct candidates are always drawn, so the idle one wins.
        for _ in 0..200 {
            assert_eq!(lr.pick_with(&mut rng, in_flight.counts(), all), Some(1));
        }
    }

    #[test]
    fn least_request_load_is_per_unit_of_weight() {
        let lr = LeastRequest::new(&[1, 3]);
        let in_flight = InFlight::new(2);
        // 3 in flight on weight 1 is busier than 6 on weight 3.
        in_flight.counts()[0].store(3, Ordering::Relaxed);
        in_flight.counts()[1].store(6, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..100 {
            assert_eq!(lr.pick_with(&mut rng, in_flight.counts(), all), Some(1));
        }
    }

    #[test]
    fn least_request_balances_outstanding_requests() {
        // Requests that never finish: in-flight counts must stay close to
        // the weights' proportions.
        let weights = [1, 1, 2, 4];
        let lr = LeastRequest::new(&weights);
        let in_flight = Arc::new(InFlight::new(4));
        let mut rng = StdRng::seed_from_u64(3);
        let mut guards = Vec::new();
        for _ in 0..8000 {
            let i = lr
                .pick_with(&mut rng, in_flight.counts(), all)
                .expect("a pick");
            guards.push(in_flight.start(i));
        }
        for (i, w) in weights.iter().enumerate() {
            let want = 1000.0 * f64::from(*w);
            let got = f64::from(in_flight.get(i));
            assert!(
                (got - want).abs() <= want * 0.02 + 2.0,
                "endpoint {i}: {got} vs {want}"
            );
        }
        drop(guards);
        assert!((0..4).all(|i| in_flight.get(i) == 0));
    }

    #[test]
    fn least_request_skips_unhealthy() {
        let lr = LeastRequest::new(&[1, 1, 1, 1]);
        let in_flight = InFlight::new(4);
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..500 {
            let pick = lr.pick_with(&mut rng, in_flight.counts(), |i| i == 2);
            assert_eq!(pick, Some(2));
        }
        assert_eq!(lr.pick_with(&mut rng, in_flight.counts(), |_| false), None);
        assert_eq!(
            LeastRequest::new(&[0, 0]).pick(in_flight.counts(), all),
            None
        );
        assert_eq!(LeastRequest::new(&[]).pick(&[], all), None);
    }

    #[test]
    fn least_request_finds_a_lone_healthy_endpoint_among_many() {
        let lr = LeastRequest::new(&vec![1; 1000]);
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..50 {
            assert_eq!(lr.pick_with(&mut rng, &[], |i| i == 777), Some(777));
        }
    }

    #[test]
    fn least_request_tolerates_a_short_in_flight_table() {
        let lr = LeastRequest::new(&[1, 1, 1]);
        let short = InFlight::new(1);
        short.counts()[0].store(9, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(6);
        let got = counts(
            (0..300).map(|_| lr.pick_with(&mut rng, short.counts(), all)),
            3,
        );
        assert!(got[0] < got[1] && got[0] < got[2], "{got:?}");
    }

    // ---- consistent hash ----

    #[test]
    fn consistent_hash_is_sticky_and_deterministic() {
        let a = ConsistentHash::new(&endpoints(&[1; 5]));
        let b = ConsistentHash::new(&endpoints(&[1; 5]));
        assert_eq!(a.table, b.table);
        for key in keys(1000) {
            let first = a.pick(key, all);
            assert!(first.is_some());
            assert_eq!(a.pick(key, all), first);
            assert_eq!(b.pick(key, all), first);
        }
    }

    #[test]
    fn consistent_hash_table_size_is_a_stable_prime() {
        let size = |n: usize| ConsistentHash::new(&endpoints(&vec![1; n])).table_size();
        // Growing and shrinking within a tier keeps the size (and so every
        // key's slot).
        for n in [1, 10, 11, 100, 655] {
            assert_eq!(size(n), 65_537, "{n}");
        }
        for n in [656, 2000] {
            let s = size(n);
            assert!(s >= n * SLOTS_PER_ENDPOINT && s < 1 << 19, "{n}: {s}");
            assert!((2..).take_while(|d| d * d <= s).all(|d| s % d != 0), "{s}");
        }
        assert_eq!(table_tier(1_000_000), 1 << 20);
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(1021), 1021);
        assert_eq!(next_prime(0), 2);
    }

    #[test]
    fn consistent_hash_slots_follow_weights() {
        let ch = ConsistentHash::new(&endpoints(&[1, 2, 0, 3, 4]));
        let got = counts(ch.table.iter().map(|&i| Some(i as usize)), 5);
        let size = ch.table_size() as f64;
        assert_eq!(got[2], 0);
        for (i, w) in [(0, 1.0), (1, 2.0), (3, 3.0), (4, 4.0)] {
            let share = got[i] as f64 / size;
            assert!((share - w / 10.0).abs() < 0.01, "{got:?}");
        }
        let keys = keys(20_000);
        let by_key = counts(keys.iter().map(|&k| ch.pick(k, all)), 5);
        assert!(
            (by_key[4] as f64 / 20_000.0 - 0.4).abs() < 0.02,
            "{by_key:?}"
        );
    }

    #[test]
    fn consistent_hash_removing_one_of_ten_moves_about_a_tenth() {
        let before = endpoints(&[1; 10]);
        let mut after = before.clone();
        let removed = after.remove(3);
        let old = ConsistentHash::new(&before);
        let new = ConsistentHash::new(&after);
        let name = |eps: &[(String, u32)], i: Option<usize>| eps[i.expect("a pick")].0.clone();

        let keys = keys(20_000);
        let mut moved = 0;
        for &key in &keys {
            let was = name(&before, old.pick(key, all));
            let is = name(&after, new.pick(key, all));
            if was != is {
                moved += 1;
            } else {
                assert_ne!(was, removed.0);
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!((0.08..0.14).contains(&share), "moved {share}");
    }

    #[test]
    fn consistent_hash_adding_one_moves_about_its_share() {
        let before = endpoints(&[1; 10]);
        let after = endpoints(&[1; 11]);
        let old = ConsistentHash::new(&before);
        let new = ConsistentHash::new(&after);
        let keys = keys(20_000);
        let moved = keys
            .iter()
            .filter(|&&k| {
                before[old.pick(k, all).expect("a pick")].0
                    != after[new.pick(k, all).expect("a pick")].0
            })
            .count();
        let share = moved as f64 / keys.len() as f64;
        assert!((0.07..0.13).contains(&share), "moved {share}");
    }

    #[test]
    fn consistent_hash_ejection_only_moves_the_ejected_keys() {
        let ch = ConsistentHash::new(&endpoints(&[1; 10]));
        let healthy = |i: usize| i != 4;
        let mut moved_to = HashMap::new();
        for key in keys(10_000) {
            let home = ch.pick(key, all).expect("a pick");
            let now = ch.pick(key, healthy).expect("a pick");
            if home == 4 {
                assert_ne!(now, 4);
                // The fallback is itself sticky.
                assert_eq!(ch.pick(key, healthy), Some(now));
                *moved_to.entry(now).or_insert(0) += 1;
            } else {
                assert_eq!(now, home);
            }
        }
        // The ejected endpoint's keys spread over the others.
        assert_eq!(moved_to.len(), 9, "{moved_to:?}");
    }

    #[test]
    fn consistent_hash_none_healthy_or_empty() {
        let ch = ConsistentHash::new(&endpoints(&[1, 1, 1]));
        assert_eq!(ch.pick(42, |_| false), None);
        assert_eq!(ch.pick(42, |i| i == 1), Some(1));
        assert_eq!(ConsistentHash::new(&endpoints(&[0, 0])).pick(42, all), None);
        assert_eq!(ConsistentHash::new::<&str>(&[]).pick(42, all), None);
    }

    #[test]
    fn consistent_hash_with_skewed_weights_builds_fast_and_full() {
        let mut weights = vec![1; 500];
        weights[0] = u32::MAX;
        let ch = ConsistentHash::new(&endpoints(&weights));
        assert!(ch.table.iter().all(|&i| (i as usize) < 500));
        assert!(ch.table.iter().filter(|&&i| i == 0).count() > ch.table_size() * 99 / 100);
    }

    // ---- balancer ----

    #[test]
    fn balancer_dispatches_by_policy() {
        let eps = endpoints(&[1, 1, 1]);
        let in_flight = InFlight::new(3);
        for policy in [
            Policy::RoundRobin,
            Policy::LeastRequest,
            Policy::ConsistentHash,
        ] {
            let b = Balancer::new(policy, &eps);
            assert_eq!(b.policy(), policy);
            assert_eq!(b.len(), 3);
            assert!(!b.is_empty());
            for key in [None, Some(1), Some(u64::MAX)] {
                let pick = b.pick(key, in_flight.counts(), |i| i != 0);
                assert!(matches!(pick, Some(1 | 2)), "{policy:?}: {pick:?}");
            }
            assert_eq!(b.pick(Some(5), in_flight.counts(), |_| false), None);
        }
        let ch = Balancer::new(Policy::ConsistentHash, &eps);
        let first = ch.pick(Some(99), &[], all);
        assert!((0..20).all(|_| ch.pick(Some(99), &[], all) == first));
        let empty = Balancer::new::<&str>(Policy::RoundRobin, &[]);
        assert!(empty.is_empty());
        assert_eq!(empty.pick(None, &[], all), None);
    }

    // ---- weighted split ----

    fn assert_split(weights: &[u32], rng: &mut impl Rng) {
        let split = WeightedSplit::new(weights);
        let picks = 2000;
        let got = counts((0..picks).map(|_| split.pick_with(rng)), weights.len());
        let total: u32 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let want = f64::from(*w) / f64::from(total);
            let share = got[i] as f64 / f64::from(picks);
            assert!((share - want).abs() <= 0.05, "{weights:?}: {got:?}");
        }
    }

    #[test]
    fn weighted_split_proportions_seeded() {
        let mut rng = StdRng::seed_from_u64(11);
        for weights in [
            &[90, 10][..],
            &[50, 50],
            &[70, 20, 10],
            &[1, 1, 1, 1],
            &[99, 1],
            &[0, 3, 1],
        ] {
            assert_split(weights, &mut rng);
        }
    }

    #[test]
    fn weighted_split_proportions_thread_rng() {
        // Unseeded: the ±5 point bound is over 7 standard deviations here.
        assert_split(&[90, 10], &mut rand::rng());
        assert_split(&[80, 20, 0], &mut rand::rng());
    }

    #[test]
    fn weighted_split_excludes_zero_weights() {
        let split = WeightedSplit::new(&[0, 5, 0]);
        assert!((0..100).all(|_| split.pick() == Some(1)));
        assert!(WeightedSplit::new(&[0, 0]).is_empty());
        assert_eq!(WeightedSplit::new(&[0, 0]).pick(), None);
        assert_eq!(WeightedSplit::new(&[]).pick(), None);
        assert!(!WeightedSplit::new(&[0, 1]).is_empty());
    }

    #[test]
    fn weighted_split_handles_huge_weights() {
        let split = WeightedSplit::new(&[u32::MAX, u32::MAX, 1]);
        let mut rng = StdRng::seed_from_u64(12);
        let got = counts((0..2000).map(|_| split.pick_with(&mut rng)), 3);
        assert_eq!(got[2], 0);
        assert!(got[0] > 900 && got[1] > 900, "{got:?}");
    }

    // ---- in flight ----

    #[test]
    fn in_flight_guards_count_and_release() {
        let table = Arc::new(InFlight::new(2));
        let a = table.start(1);
        let b = table.start(1);
        let out_of_range = table.start(9);
        assert_eq!((table.get(0), table.get(1), table.get(9)), (0, 2, 0));
        assert_eq!(a.endpoint(), 1);
        drop(a);
        assert_eq!(table.get(1), 1);
        drop((b, out_of_range));
        assert_eq!(table.get(1), 0);
    }

    proptest::proptest! {
        #[test]
        fn round_robin_cycle_is_exact(weights in proptest::collection::vec(0u32..50, 0..12), start in 0usize..10_000) {
            let rr = RoundRobin::starting_at(&weights, start);
            let reduced = reduce_weights(&weights);
            let cycle_len: u32 = reduced.iter().sum();
            proptest::prop_assert_eq!(rr.cycle().len(), cycle_len as usize);
            let got = counts((0..cycle_len).map(|_| rr.pick(all)), weights.len());
            let want: Vec<usize> = reduced.iter().map(|&w| w as usize).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    proptest::proptest! {
        // Each case builds a 65,537-slot table; fewer cases keep debug test
        // runs quick.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        #[test]
        fn picks_are_healthy_members(
            weights in proptest::collection::vec(0u32..5, 0..20),
            healthy_bits in proptest::num::u32::ANY,
            key in proptest::num::u64::ANY,
        ) {
            let healthy = |i: usize| healthy_bits & (1 << (i % 32)) != 0;
            let any = weights.iter().enumerate().any(|(i, &w)| w > 0 && healthy(i));
            let eps = endpoints(&weights);
            let in_flight = InFlight::new(weights.len());
            for policy in [Policy::RoundRobin, Policy::LeastRequest, Policy::ConsistentHash] {
                let b = Balancer::new(policy, &eps);
                for _ in 0..4 {
                    match b.pick(Some(key), in_flight.counts(), healthy) {
                        Some(i) => proptest::prop_assert!(i < weights.len() && weights[i] > 0 && healthy(i)),
                        None => proptest::prop_assert!(!any),
                    }
                }
            }
        }
    }
}
