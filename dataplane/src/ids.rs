//! Random bits for identifiers: request ids, trace ids and span ids.
//!
//! Every proxied request draws about 40 random bytes for them. They must
//! not collide, but they are not secrets: the gateway hands them to
//! clients and upstreams and never decides anything by them. So each
//! thread draws from its own small generator (`rand`'s `SmallRng`, a
//! xoshiro generator), seeded once from the operating system, instead of
//! `rand::random`'s thread-local ChaCha12, which did several times the
//! work (about 1.5% of a proxied request's instructions, `bench/
//! instructions.py`). Nothing that has to be unguessable (keys, tokens,
//! nonces) may come from here.

use rand::distr::{Distribution, StandardUniform};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;

thread_local! {
    static GENERATOR: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// A random value of type `T` from this thread's generator. Draw bytes
/// as an integer (`random::<u64>().to_be_bytes()`): an array is drawn one
/// element at a time, a generator step for every byte.
pub fn random<T>() -> T
where
    StandardUniform: Distribution<T>,
{
    GENERATOR.with(|generator| generator.borrow_mut().random())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_do_not_repeat_within_or_across_threads() {
        let draw = || (0..50_000).map(|_| random::<u128>()).collect::<Vec<_>>();
        let here = draw();
        let there = std::thread::spawn(draw).join().expect("thread");
        let mut seen = HashSet::new();
        for id in here.iter().chain(&there) {
            assert!(seen.insert(*id), "{id:032x} drawn twice");
        }
        // Every bit position takes both values: the draws are not stuck.
        let (ones, zeros) = here
            .iter()
            .fold((0u128, 0u128), |(o, z), id| (o | id, z | !id));
        assert_eq!((ones, zeros), (u128::MAX, u128::MAX));
    }
}
