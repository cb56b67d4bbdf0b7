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
//! room for more than [`MAX_ROOM`] entries (about 330 KiB a thread at
//! most), so a burst of large heads leaves nothing large behind.

use http::header::{self, HeaderName, InvalidHeaderName};
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

/// The name of a field as it came in a head. The fields nearly every
/// request or response carries, in their usual spellings, are matched as
/// they are; others go through `HeaderName::from_bytes`, which lowercases
/// and checks the name byte by byte through its tables (about 110
/// instructions a name; a proxied request reads about 7 names).
pub(crate) fn name(bytes: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    Ok(match bytes {
        b"Host" | b"host" => header::HOST,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
        b"Authorization" | b"authorization" => header::AUTHORIZATION,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Connection" | b"connection" => header::CONNECTION,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Date" | b"date" => header::DATE,
        b"ETag" | b"Etag" | b"etag" => header::ETAG,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"Location" | b"location" => header::LOCATION,
        b"Origin" | b"origin" => header::ORIGIN,
        b"Referer" | b"referer" => header::REFERER,
        b"Server" | b"server" => header::SERVER,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"Vary" | b"vary" => header::VARY,
        _ => return HeaderName::from_bytes(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderValue, HOST};

    fn drain() {
        SPARE.with(|s| s.borrow_mut().clear());
    }

    #[test]
    fn names_match_the_general_parse() {
        let names = [
            "Host",
            "host",
            "HOST",
            "User-Agent",
            "user-agent",
            "Accept",
            "accept",
            "Accept-Encoding",
            "accept-encoding",
            "Accept-Language",
            "accept-language",
            "Authorization",
            "authorization",
            "Cache-Control",
            "cache-control",
            "Connection",
            "connection",
            "Content-Length",
            "content-length",
            "Content-Type",
            "content-type",
            "Cookie",
            "cookie",
            "Date",
            "date",
            "ETag",
            "Etag",
            "etag",
            "Last-Modified",
            "last-modified",
            "Location",
            "location",
            "Origin",
            "origin",
            "Referer",
            "referer",
            "Server",
            "server",
            "Set-Cookie",
            "set-cookie",
            "Transfer-Encoding",
            "transfer-encoding",
            "Vary",
            "vary",
            "X-Request-Id",
            "x-forwarded-for",
            "Hos",
            "Hostt",
            "",
            "bad name",
            "caf\u{e9}",
        ];
        for text in names {
            let general = HeaderName::from_bytes(text.as_bytes());
            match (name(text.as_bytes()), general) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{text:?}"),
                (Err(_), Err(_)) => {}
                (ours, theirs) => panic!("{text:?}: {ours:?} vs {theirs:?}"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_name_parses_as_the_general_parse_does(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24)) {
            let general = HeaderName::from_bytes(&bytes);
            match (name(&bytes), general) {
                (Ok(ours), Ok(theirs)) => proptest::prop_assert_eq!(ours, theirs),
                (Err(_), Err(_)) => {}
                (ours, theirs) => proptest::prop_assert!(false, "{ours:?} vs {theirs:?}"),
            }
        }
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
