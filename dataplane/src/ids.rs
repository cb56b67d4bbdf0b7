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

/// Lower-case hex of `bytes` into `out` (twice as long; what does not fit
/// is left out). Four bytes at a time, in an integer's lanes: ids are
/// written in hex for every request (request id, `traceparent`).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    let mut words = bytes.chunks_exact(4);
    let mut outs = out.chunks_exact_mut(8);
    for (word, out) in (&mut words).zip(&mut outs) {
        let mut four = [0u8; 4];
        four.copy_from_slice(word);
        out.copy_from_slice(&hex_word(u32::from_be_bytes(four)));
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let done = (bytes.len() / 4).min(out.len() / 8) * 4;
    for (pair, b) in out[done * 2..].chunks_exact_mut(2).zip(&bytes[done..]) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// The eight hex digits of `word`, most significant first.
fn hex_word(word: u32) -> [u8; 8] {
    let v = u64::from(word);
    // One nibble per byte, in order: 0xAABBCCDD -> 0x0A0A0B0B0C0C0D0D.
    let mut x = ((v & 0xFFFF_0000) << 16) | (v & 0xFFFF);
    x = ((x & 0x0000_FF00_0000_FF00) << 8) | (x & 0x0000_00FF_0000_00FF);
    x = ((x & 0x00F0_00F0_00F0_00F0) << 4) | (x & 0x000F_000F_000F_000F);
    // 1 in the lanes holding 10..=15 (adding 6 carries into bit 4).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    // '0' + n, and 'a' - '0' - 10 = 39 more for letters; no lane carries.
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hex_matches_formatting() {
        let mut samples: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0xff; 16],
            (0..=255).collect(),
            (0..=255).rev().collect(),
        ];
        for len in 0..20 {
            samples.push((0..len).map(|_| random::<u8>()).collect());
        }
        for bytes in samples {
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut out = vec![b'-'; bytes.len() * 2];
            hex_into(&bytes, &mut out);
            assert_eq!(
                String::from_utf8(out).expect("ASCII"),
                expected,
                "{bytes:?}"
            );
            // A shorter `out` gets what fits, whole bytes only.
            for room in [0, 3, 9, 10] {
                let mut short = vec![b'-'; room.min(bytes.len() * 2)];
                hex_into(&bytes, &mut short);
                let fits = short.len() / 2 * 2;
                assert_eq!(
                    &short[..fits],
                    &expected.as_bytes()[..fits],
                    "{bytes:?} in {room}"
                );
            }
        }
    }

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
