//! The in-process limiter: one GCRA timestamp per key, in a sharded map
//! whose size is bounded.
//!
//! Keys are 64-bit SipHash digests (random key per process) of the limit's
//! identity and the request's key parts, so an entry is 16 bytes whatever
//! the client sends, and clients cannot aim collisions. The store lives in
//! [`crate::Shared`], not in a table: a snapshot swap keeps every count.
//!
//! Memory: at most `max_keys` entries. An entry whose TAT is in the past is
//! idle and says nothing GCRA would not assume for a missing key, so idle
//! entries are dropped freely (a periodic sweep, and whenever a shard is
//! full). When a shard is full of live entries (a flood of distinct keys),
//! the entries closest to idle go first: the least information is lost and
//! a flood can never grow memory.

use super::gcra::{self, Decision, Rate};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

const SHARDS: usize = 64;

/// Maps already-random 64-bit keys to buckets without hashing them again.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

/// The bounded store of local rate-limit state.
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    epoch: Instant,
}

impl LocalStore {
    /// A store keeping at most about `max_keys` keys (at least 1,024).
    pub fn new(max_keys: usize) -> LocalStore {
        let per_shard = (max_keys / SHARDS).max(16);
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds on the store's clock (monotonic, from its creation).
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
    }

    /// The key for a limit (`limit_id`, stable across snapshots) and the
    /// request's key parts. Parts are length-prefixed so that ("ab", "c")
    /// and ("a", "bc") differ.
    pub fn key(&self, limit_id: u64, parts: &[&[u8]]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(limit_id);
        for part in parts {
            h.write_usize(part.len());
            h.write(part);
        }
        h.finish()
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // The low bits pick the bucket inside the map; the high bits the shard.
        let index = usize::try_from(key >> 58).unwrap_or(0) % self.shards.len();
        &self.shards[index]
    }

    /// Decides one request for `key` at `now` and records it when it passes.
    pub fn check(&self, key: u64, now: u64, rate: Rate) -> Decision {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (decision, new_tat) = gcra::check(shard.get(&key).copied(), now, rate);
        if let Some(tat) = new_tat {
            if shard.len() >= self.per_shard && !shard.contains_key(&key) {
                make_room(&mut shard, self.per_shard, now);
            }
            shard.insert(key, tat);
        }
        decision
    }

    /// Gives back one request that passed `check` (a later limit refused).
    pub fn refund(&self, key: u64, now: u64, rate: Rate) {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tat) = shard.get_mut(&key) {
            *tat = gcra::refund(*tat, now, rate);
        }
    }

    /// Drops idle entries (TAT not after `now`); returns how many remain.
    pub fn sweep(&self, now: u64) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.retain(|_, tat| *tat > now);
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                shard.shrink_to_fit();
            }
            left += shard.len();
        }
        left
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries the store keeps.
    pub fn max_keys(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Bytes the maps have allocated (entries and control bytes), an
    /// estimate of the store's memory.
    pub fn allocated_bytes(&self) -> usize {
        let per_slot = std::mem::size_of::<(u64, u64)>() + 1;
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).capacity() * per_slot)
            .sum()
    }
}

/// Frees at least a quarter of a full shard: idle entries first, then the
/// live entries closest to idle (smallest TAT).
fn make_room(shard: &mut Shard, per_shard: usize, now: u64) {
    shard.retain(|_, tat| *tat > now);
    let target = per_shard - per_shard / 4;
    if shard.len() <= target {
        return;
    }
    let mut tats: Vec<u64> = shard.values().copied().collect();
    let drop = shard.len() - target;
    let (_, threshold, _) = tats.select_nth_unstable(drop - 1);
    let threshold = *threshold;
    let mut dropped = 0;
    shard.retain(|_, tat| {
        if *tat <= threshold && dropped < drop {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn keys_are_counted_separately() {
        let store = LocalStore::new(1_024);
        let rate = Rate::new(1, 1_000, 0);
        let a = store.key(1, &[b"alice"]);
        let b = store.key(1, &[b"bob"]);
        assert!(store.check(a, 0, rate).allowed);
        assert!(!store.check(a, 0, rate).allowed);
        assert!(store.check(b, 0, rate).allowed);
        // Another limit, same client: its own counter.
        let other = store.key(2, &[b"alice"]);
        assert!(store.check(other, 0, rate).allowed);
        // Part boundaries matter.
        assert_ne!(store.key(1, &[b"ab", b"c"]), store.key(1, &[b"a", b"bc"]));
    }

    #[test]
    fn a_million_distinct_keys_keep_memory_bounded() {
        let store = LocalStore::new(10_000);
        let rate = Rate::new(10, 60_000, 0);
        let mut most_bytes = 0;
        for i in 0..1_000_000u64 {
            let key = store.key(7, &[&i.to_be_bytes()]);
            // All within one millisecond: every entry is live (none idle).
            assert!(store.check(key, i, rate).allowed);
            if i % 10_000 == 0 {
                assert!(store.len() <= store.max_keys(), "{} entries", store.len());
                most_bytes = most_bytes.max(store.allocated_bytes());
            }
        }
        assert!(store.len() <= store.max_keys(), "{} entries", store.len());
        assert!(store.max_keys() <= 10_240);
        // About 50 bytes per key kept at most (hash tables keep spare room),
        // whatever the number of keys seen.
        assert!(most_bytes < 1024 * 1024, "{most_bytes} bytes");
    }

    #[test]
    fn a_flood_of_new_keys_evicts_the_entries_closest_to_idle() {
        let store = LocalStore::new(1_024);
        let slow = Rate::new(1, 3_600_000, 0);
        // A client limited for an hour...
        let victim = store.key(1, &[b"victim"]);
        assert!(store.check(victim, 0, slow).allowed);
        assert!(!store.check(victim, 0, slow).allowed);
        // ... survives a flood of keys that will be idle sooner.
        let fast = Rate::new(1, 1_000, 0);
        for i in 0..100_000u64 {
            let key = store.key(2, &[&i.to_be_bytes()]);
            store.check(key, MS, fast);
        }
        assert!(!store.check(victim, 2 * MS, slow).allowed);
    }

    #[test]
    fn idle_entries_are_swept() {
        // Room for every key in every shard: 500 keys over 64 shards of 16
        // would sometimes fill one, and a full shard makes room by evicting.
        let store = LocalStore::new(64 * 1_024);
        let rate = Rate::new(1, 1_000, 0);
        for i in 0..500u64 {
            store.check(store.key(1, &[&i.to_be_bytes()]), 0, rate);
        }
        assert_eq!(store.len(), 500);
        assert_eq!(store.sweep(999 * MS), 500);
        assert_eq!(store.sweep(1_000 * MS), 0);
        assert!(store.is_empty());
    }

    #[test]
    fn a_refund_returns_the_request() {
        let store = LocalStore::new(1_024);
        let rate = Rate::new(1, 1_000, 0);
        let key = store.key(1, &[b"k"]);
        assert!(store.check(key, 0, rate).allowed);
        store.refund(key, 0, rate);
        assert!(store.check(key, 0, rate).allowed);
        assert!(!store.check(key, 0, rate).allowed);
    }
}
