//! Header maps reused from one request to the next, per thread.
//!
//! A proxied HTTP/1.1 request builds two maps: the request's (parsed from
//! the client, sent upstream) and the response's (parsed from the upstream,
//! written to the client). With the fields the proxy adds, the request's
//! map needs room for 7-12 entries, and at 104 bytes an entry that is an
//! allocation of more than 1 KiB, which the allocator serves on its slow
//! path (a page search each time) where smaller blocks come from a free
//! list. A map whose request is done is cleared (its values dropped, its
//! room kept) and handed to the next head that is parsed on the thread.
//!
//! Only what the gateway's own paths parse is taken from here
//! (`h1server::parse`, `h1client`'s response head), and only maps that
//! reached the end of their request are given back; a map that never comes
//! back is simply freed. At most [`KEEP`] maps wait per thread, none with
//! room for more than [`MAX_ROOM`] entries, so a burst of large heads
//! leaves nothing large behind.

use http::HeaderMap;
use std::cell::RefCell;

/// Maps kept per thread.
const KEEP: usize = 64;
/// Maps with room for more entries than this are freed, not kept.
const MAX_ROOM: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `room` entries: a kept one when the
/// thread has one, else a new one.
pub(crate) fn take(room: usize) -> HeaderMap {
    let kept = SPARE
        .try_with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten();
    match kept {
        Some(mut map) => {
            map.reserve(room);
            map
        }
        None => HeaderMap::with_capacity(room),
    }
}

/// Gives back the map of a request or response that is done with it.
pub(crate) fn give(mut map: HeaderMap) {
    let room = map.capacity();
    if room == 0 || room > MAX_ROOM {
        return;
    }
    map.clear();
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < KEEP {
                spare.push(map);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderValue, HOST};

    fn drain() {
        SPARE.with(|s| s.borrow_mut().clear());
    }

    #[test]
    fn a_given_map_comes_back_empty_with_its_room() {
        drain();
        let mut map = take(10);
        let room = map.capacity();
        assert!(room >= 10);
        map.insert(HOST, HeaderValue::from_static("shop.test"));
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        give(map);
        let again = take(4);
        assert!(again.is_empty(), "a kept map is cleared");
        assert_eq!(again.capacity(), room, "and keeps its room");
        assert!(again.get(HOST).is_none());
        assert!(again.get("x-a").is_none());
    }

    #[test]
    fn large_and_empty_maps_are_not_kept() {
        drain();
        give(HeaderMap::new());
        give(HeaderMap::with_capacity(MAX_ROOM * 4));
        assert_eq!(
            take(1).capacity(),
            HeaderMap::<HeaderValue>::with_capacity(1).capacity()
        );
    }

    #[test]
    fn at_most_keep_maps_wait() {
        drain();
        for _ in 0..KEEP + 10 {
            give(HeaderMap::with_capacity(8));
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), KEEP);
    }
}
