//! The fields the gateway adds to a request it forwards: X-Forwarded-For,
//! -Proto and -Host, X-Request-ID, and for each attempt `traceparent`
//! (with the client's `tracestate` when the client's trace continues).
//!
//! They are kept beside the request's header map rather than inserted
//! into it. None of these names is one of the standard names that hash
//! cheaply: each insert hashes the name byte by byte and probes the map,
//! about 450 instructions, five times for every request. The gateway's own
//! HTTP/1.1 client writes them after the client's fields
//! ([`crate::h1client::encode_request`]). A head that goes to hyper, or
//! that something else reads or changes (route header changes, the cache
//! and transform filters), gets them inserted first
//! ([`Added::insert_into`], [`Added::move_into`]).
//!
//! Whoever fills an [`Added`] has removed the client's fields of the same
//! names from the map first (or kept a trusted client's and added none),
//! so that no name is sent twice.

use crate::telemetry::{TraceContext, TRACEPARENT, TRACESTATE};
use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `x-forwarded-for`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The fields an [`Added`] holds values for, in the order they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    RequestId,
    TraceState,
}

const FIELDS: usize = 5;

const NAMES: [HeaderName; FIELDS] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REQUEST_ID,
    TRACESTATE,
];

/// The start of each field's line, `name: `, for [`Added::encode`].
const PREFIXES: [&[u8]; FIELDS] = [
    b"x-forwarded-for: ",
    b"x-forwarded-proto: ",
    b"x-forwarded-host: ",
    b"x-request-id: ",
    b"tracestate: ",
];

/// Length of a `traceparent` value: `00-{32 hex}-{16 hex}-{2 hex}`.
pub const TRACEPARENT_LEN: usize = 55;

/// Fields to add to a forwarded request's head.
#[derive(Debug, Default, Clone)]
pub struct Added {
    values: [Option<HeaderValue>; FIELDS],
    /// Set for each attempt; hex, so always a valid value.
    traceparent: Option<[u8; TRACEPARENT_LEN]>,
}

impl Added {
    /// Sets `field` (replacing a value set before).
    pub fn set(&mut self, field: Field, value: HeaderValue) {
        self.values[field as usize] = Some(value);
    }

    /// The value of `name`, if it is one of the fields set here (not
    /// `traceparent`, which changes with every attempt).
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        let index = NAMES
            .iter()
            .position(|known| known.as_str().eq_ignore_ascii_case(name))?;
        self.values[index].as_ref()
    }

    /// Sets `traceparent` for an attempt whose span is `span_id`, and the
    /// client's `tracestate` when `trace` continues the client's trace.
    /// Without a trace, neither is sent.
    pub fn trace(&mut self, trace: Option<&TraceContext>, span_id: &[u8; 8]) {
        self.traceparent = trace.map(|trace| trace.traceparent(span_id));
        self.values[Field::TraceState as usize] = trace.and_then(|t| t.tracestate.clone());
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none() && self.values.iter().all(Option::is_none)
    }

    /// Inserts every field set here into `headers` (replacing fields of
    /// the same names), and leaves this set.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        self.each(|name, value| {
            let value = match value {
                Value::Set(value) => value.clone(),
                Value::Trace(text) => match HeaderValue::from_bytes(text) {
                    Ok(value) => value,
                    Err(_) => return,
                },
            };
            headers.insert(name.clone(), value);
        });
    }

    /// Moves every field set here into `headers` (replacing fields of the
    /// same names), and leaves this empty.
    pub fn move_into(&mut self, headers: &mut HeaderMap) {
        self.insert_into(headers);
        *self = Added::default();
    }

    /// Calls `f` with every field set here, in the order they are sent:
    /// `traceparent` after the request id, before the `tracestate` that
    /// belongs to it.
    fn each<'a>(&'a self, mut f: impl FnMut(&HeaderName, Value<'a>)) {
        for (i, (name, value)) in NAMES.iter().zip(&self.values).enumerate() {
            if i == Field::TraceState as usize {
                if let Some(text) = &self.traceparent {
                    f(&TRACEPARENT, Value::Trace(text));
                }
            }
            if let Some(value) = value {
                f(name, Value::Set(value));
            }
        }
    }

    /// Writes the fields as HTTP/1.1 header lines (`name: value\r\n`), in
    /// the order `each` gives.
    pub fn encode(&self, out: &mut BytesMut) {
        for (i, (prefix, value)) in PREFIXES.iter().zip(&self.values).enumerate() {
            if i == Field::TraceState as usize {
                if let Some(text) = &self.traceparent {
                    out.extend_from_slice(b"traceparent: ");
                    out.extend_from_slice(text);
                    out.extend_from_slice(b"\r\n");
                }
            }
            if let Some(value) = value {
                out.extend_from_slice(prefix);
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

enum Value<'a> {
    Set(&'a HeaderValue),
    Trace(&'a [u8; TRACEPARENT_LEN]),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(state: Option<&'static str>) -> TraceContext {
        TraceContext {
            trace_id: [0xab; 16],
            parent: state.map(|_| [1; 8]),
            span_id: [2; 8],
            sampled: true,
            tracestate: state.map(HeaderValue::from_static),
        }
    }

    fn filled() -> Added {
        let mut added = Added::default();
        added.set(Field::ForwardedFor, HeaderValue::from_static("10.0.0.1"));
        added.set(Field::ForwardedProto, HeaderValue::from_static("https"));
        added.set(Field::ForwardedHost, HeaderValue::from_static("a.example"));
        added.set(Field::RequestId, HeaderValue::from_static("id-1"));
        added.trace(Some(&trace(Some("vendor=x"))), &[3; 8]);
        added
    }

    /// The lines `encode` writes, parsed back as a head.
    fn encoded(added: &Added) -> Vec<(String, String)> {
        let mut out = BytesMut::new();
        added.encode(&mut out);
        let text = String::from_utf8(out.to_vec()).expect("ASCII");
        assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
        text.split_terminator("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").expect("name: value");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn encoded_fields_are_the_ones_inserted_into_a_map() {
        let added = filled();
        let mut map = HeaderMap::new();
        map.insert(X_FORWARDED_FOR, HeaderValue::from_static("spoofed"));
        added.insert_into(&mut map);
        let lines = encoded(&added);
        assert_eq!(lines.len(), map.len(), "{lines:?}");
        for (name, value) in &lines {
            assert_eq!(map.get(name.as_str()).expect(name), value.as_str());
        }
        assert_eq!(map[X_FORWARDED_FOR], "10.0.0.1");
        let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-request-id",
                "traceparent",
                "tracestate"
            ]
        );
        let expected = format!("00-{}-{}-01", "ab".repeat(16), "03".repeat(8));
        assert_eq!(map[TRACEPARENT], expected.as_str());
        assert_eq!(map[TRACESTATE], "vendor=x");
    }

    #[test]
    fn line_prefixes_are_the_names() {
        for (prefix, name) in PREFIXES.iter().zip(&NAMES) {
            assert_eq!(*prefix, format!("{}: ", name.as_str()).as_bytes());
        }
    }

    #[test]
    fn moving_empties_and_inserting_keeps() {
        let mut added = filled();
        let mut kept = HeaderMap::new();
        added.insert_into(&mut kept);
        assert!(!added.is_empty());
        let mut moved = HeaderMap::new();
        added.move_into(&mut moved);
        assert!(added.is_empty());
        assert!(encoded(&added).is_empty());
        assert_eq!(kept, moved);
    }

    #[test]
    fn a_new_trace_sends_no_tracestate_and_no_trace_sends_neither() {
        let mut added = filled();
        added.trace(Some(&trace(None)), &[4; 8]);
        let lines = encoded(&added);
        assert!(lines.iter().any(|(n, _)| n == "traceparent"));
        assert!(!lines.iter().any(|(n, _)| n == "tracestate"));
        added.trace(None, &[4; 8]);
        let lines = encoded(&added);
        assert!(!lines.iter().any(|(n, _)| n.starts_with("trace")));
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn get_finds_set_fields_only() {
        let mut added = Added::default();
        assert!(added.get("x-request-id").is_none());
        added.set(Field::RequestId, HeaderValue::from_static("id-2"));
        assert_eq!(added.get("X-Request-ID").expect("set"), "id-2");
        assert!(added.get("x-forwarded-for").is_none());
        assert!(added.get("host").is_none());
    }
}
