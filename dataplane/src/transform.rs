//! Response JSON transform: remove key paths from JSON bodies, or keep
//! only some, for example to send phones less data.
//!
//! # Key paths
//!
//! A path is keys joined by `.`; a key followed by `[]` names an array
//! whose every element the rest of the path applies to:
//!
//! - `a.b.c`: key `c` of the object under `b` of the object under `a`.
//! - `items[].internal`: key `internal` of every element of the array
//!   `items`.
//! - `items[]` as the last step means the key `items` itself.
//!
//! When the whole body is an array, the paths apply to each of its
//! elements (`[{...}, {...}]` is trimmed like a list of objects).
//!
//! With `remove`, every value a path reaches is removed; a path that meets
//! a value of another type than it expects (a number where it expects an
//! object) removes nothing. With `keep`, a key survives when a path names
//! it; a value a path goes through is trimmed by the rest of the path, and
//! one of the wrong type is dropped (nulls are kept: they say "absent").
//!
//! # Lossless by construction
//!
//! The body is parsed with `serde_json` into [`RawValue`]s level by level,
//! and only the objects and arrays that a path goes through are rewritten;
//! everything else (numbers of any precision, string escapes, nested
//! values) is copied byte for byte. A body that is not valid JSON, not
//! UTF-8, or too deep, passes through unchanged. Nothing here panics on any
//! input (see the property tests).
//!
//! # Encodings
//!
//! Bodies with `Content-Encoding: gzip` or `br` are decoded (never past
//! the size limit, so a compression bomb costs at most the limit),
//! transformed and encoded again with the same coding. Any other coding,
//! or a list of codings, passes through unchanged.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use snapshot::model::JsonTransform;
use std::fmt;
use std::io::{Read, Write};

/// One step of a key path.
#[derive(Clone, Debug, Default)]
struct Node {
    /// Children by key, in the order the paths name them.
    children: Vec<(String, Child)>,
}

#[derive(Clone, Debug, Default)]
struct Child {
    /// A path ends here: the whole value is removed (or kept).
    terminal: bool,
    /// The value is an array; `next` applies to each element.
    each: bool,
    next: Node,
}

impl Node {
    fn insert(&mut self, path: &str) {
        let mut node = self;
        let mut steps = path.split('.').peekable();
        while let Some(step) = steps.next() {
            let (name, each) = match step.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (step, false),
            };
            let index = match node.children.iter().position(|(key, _)| key == name) {
                Some(index) => index,
                None => {
                    node.children.push((name.to_owned(), Child::default()));
                    node.children.len() - 1
                }
            };
            let child = &mut node.children[index].1;
            if steps.peek().is_none() {
                child.terminal = true;
                return;
            }
            child.each |= each;
            node = &mut child.next;
        }
    }

    fn child(&self, key: &str) -> Option<&Child> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, c)| c)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Remove,
    Keep,
}

/// Why a body was passed through unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Larger than `maxBodyBytes` (before or after decoding).
    TooLarge,
    /// Not JSON, not UTF-8, or nested too deeply.
    Invalid,
    /// A `Content-Encoding` this filter does not handle, or a body that
    /// does not decode.
    Encoding,
}

impl Skip {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::TooLarge => "oversize",
            Skip::Invalid => "invalid",
            Skip::Encoding => "encoding",
        }
    }
}

/// A compiled transform, built once per snapshot.
#[derive(Clone, Debug)]
pub struct Trimmer {
    mode: Mode,
    root: Node,
    devices: Vec<crds::DeviceClass>,
    /// Larger bodies pass unchanged.
    pub max_body_bytes: usize,
}

/// Content codings the transform can undo and redo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// No coding.
    Identity,
    /// `gzip` (or `x-gzip`).
    Gzip,
    /// `br`.
    Brotli,
}

impl Coding {
    /// The coding named by a `Content-Encoding` value, if supported.
    pub fn parse(value: Option<&[u8]>) -> Option<Coding> {
        let Some(value) = value else {
            return Some(Coding::Identity);
        };
        let text = std::str::from_utf8(value).ok()?.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("identity") {
            Some(Coding::Identity)
        } else if text.eq_ignore_ascii_case("gzip") || text.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if text.eq_ignore_ascii_case("br") {
            Some(Coding::Brotli)
        } else {
            None
        }
    }
}

impl Trimmer {
    /// Compiles the snapshot's transform. Paths were checked by the
    /// compiler; odd ones here only match nothing.
    pub fn new(config: &JsonTransform) -> Trimmer {
        let (mode, paths) = if config.keep.is_empty() {
            (Mode::Remove, &config.remove)
        } else {
            (Mode::Keep, &config.keep)
        };
        let mut root = Node::default();
        for path in paths {
            if !path.is_empty() {
                root.insert(path);
            }
        }
        Trimmer {
            mode,
            root,
            devices: config.devices.clone(),
            max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Whether the transform applies to clients of this device class.
    pub fn applies_to(&self, device: crds::DeviceClass) -> bool {
        self.devices.is_empty() || self.devices.contains(&device)
    }

    /// Whether the transform depends on the device class (cache entries
    /// then record whether it was applied).
    pub fn device_specific(&self) -> bool {
        !self.devices.is_empty()
    }

    /// Transforms a JSON document.
    pub fn apply(&self, body: &[u8]) -> Result<Vec<u8>, Skip> {
        if body.len() > self.max_body_bytes {
            return Err(Skip::TooLarge);
        }
        // Each level is parsed once, straight from the text: no separate
        // validation pass over the whole body.
        let text = std::str::from_utf8(body).map_err(|_| Skip::Invalid)?;
        let mut out = Vec::with_capacity(body.len());
        match text.bytes().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => self.object(text, &self.root, &mut out)?,
            Some(b'[') => {
                let elements = parse_array(text)?;
                out.push(b'[');
                for (i, element) in elements.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if first_byte(element) == b'{' {
                        self.object(element.get(), &self.root, &mut out)?;
                    } else {
                        out.extend_from_slice(element.get().as_bytes());
                    }
                }
                out.push(b']');
            }
            _ => {
                let raw: &RawValue = serde_json::from_str(text).map_err(|_| Skip::Invalid)?;
                out.extend_from_slice(raw.get().as_bytes());
            }
        }
        Ok(out)
    }

    /// Decodes `body` with `coding`, transforms it, encodes it again.
    pub fn apply_encoded(&self, body: &[u8], coding: Coding) -> Result<Vec<u8>, Skip> {
        match coding {
            Coding::Identity => self.apply(body),
            Coding::Gzip => {
                let plain =
                    decode_limited(flate2::read::GzDecoder::new(body), self.max_body_bytes)?;
                let trimmed = self.apply(&plain)?;
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len()),
                    flate2::Compression::new(6),
                );
                encoder.write_all(&trimmed).map_err(|_| Skip::Encoding)?;
                encoder.finish().map_err(|_| Skip::Encoding)
            }
            Coding::Brotli => {
                let plain =
                    decode_limited(brotli::Decompressor::new(body, 4096), self.max_body_bytes)?;
                let trimmed = self.apply(&plain)?;
                let mut out = Vec::with_capacity(body.len());
                {
                    let mut encoder = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    encoder.write_all(&trimmed).map_err(|_| Skip::Encoding)?;
                    encoder.flush().map_err(|_| Skip::Encoding)?;
                }
                Ok(out)
            }
        }
    }

    /// Writes the object `raw` trimmed by `node` into `out`.
    fn object(&self, text: &str, node: &Node, out: &mut Vec<u8>) -> Result<(), Skip> {
        let entries = parse_object(text)?;
        out.push(b'{');
        let mut first = true;
        for (key, value) in entries {
            let emitted = match (node.child(&key), self.mode) {
                (None, Mode::Remove) => Some(Emit::Raw),
                (None, Mode::Keep) => None,
                (Some(child), Mode::Remove) if child.terminal => None,
                (Some(child), Mode::Keep) if child.terminal => Some(Emit::Raw),
                (Some(child), _) => self.descend(value, child),
            };
            let Some(emit) = emitted else { continue };
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut *out, &*key).map_err(|_| Skip::Invalid)?;
            out.push(b':');
            match emit {
                Emit::Raw => out.extend_from_slice(value.get().as_bytes()),
                Emit::Object(child) => self.object(value.get(), &child.next, out)?,
                Emit::Each(child) => self.array(value.get(), child, out)?,
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// What happens to a value a non-terminal path goes through.
    fn descend<'c>(&self, value: &RawValue, child: &'c Child) -> Option<Emit<'c>> {
        let kind = first_byte(value);
        let fits = if child.each {
            kind == b'['
        } else {
            kind == b'{'
        };
        match (fits, self.mode) {
            (true, _) if child.each => Some(Emit::Each(child)),
            (true, _) => Some(Emit::Object(child)),
            (false, Mode::Remove) => Some(Emit::Raw),
            (false, Mode::Keep) => (kind == b'n').then_some(Emit::Raw),
        }
    }

    fn array(&self, text: &str, child: &Child, out: &mut Vec<u8>) -> Result<(), Skip> {
        let elements = parse_array(text)?;
        out.push(b'[');
        let mut first = true;
        for element in elements {
            let kind = first_byte(element);
            if kind != b'{' && self.mode == Mode::Keep && kind != b'n' {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            if kind == b'{' {
                self.object(element.get(), &child.next, out)?;
            } else {
                out.extend_from_slice(element.get().as_bytes());
            }
        }
        out.push(b']');
        Ok(())
    }
}

enum Emit<'c> {
    Raw,
    Object(&'c Child),
    Each(&'c Child),
}

fn first_byte(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

/// Decodes a `gzip` or `br` body, refusing more than `limit` decoded
/// bytes. Identity bodies are copied.
pub fn decode(body: &[u8], coding: Coding, limit: usize) -> Result<Vec<u8>, Skip> {
    match coding {
        Coding::Identity if body.len() > limit => Err(Skip::TooLarge),
        Coding::Identity => Ok(body.to_vec()),
        Coding::Gzip => decode_limited(flate2::read::GzDecoder::new(body), limit),
        Coding::Brotli => decode_limited(brotli::Decompressor::new(body, 4096), limit),
    }
}

/// Reads at most `limit` decoded bytes.
fn decode_limited(reader: impl Read, limit: usize) -> Result<Vec<u8>, Skip> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|_| Skip::Encoding)?;
    if out.len() > limit {
        return Err(Skip::TooLarge);
    }
    Ok(out)
}

/// An object key, borrowed from the body unless it has escapes.
struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// An object's entries in order (duplicates kept), values unparsed.
struct Entries<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8).min(256));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key.0, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// An array's elements, unparsed.
struct Elements<'a>(Vec<&'a RawValue>);

impl<'de> serde::Deserialize<'de> for Elements<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Elements<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(1024));
                while let Some(element) = seq.next_element::<&'de RawValue>()? {
                    elements.push(element);
                }
                Ok(Elements(elements))
            }
        }
        deserializer.deserialize_seq(V)
    }
}

fn parse_object(text: &str) -> Result<Vec<(std::borrow::Cow<'_, str>, &RawValue)>, Skip> {
    serde_json::from_str::<Entries>(text)
        .map(|e| e.0)
        .map_err(|_| Skip::Invalid)
}

fn parse_array(text: &str) -> Result<Vec<&RawValue>, Skip> {
    serde_json::from_str::<Elements>(text)
        .map(|e| e.0)
        .map_err(|_| Skip::Invalid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn trimmer(remove: &[&str], keep: &[&str]) -> Trimmer {
        Trimmer::new(&JsonTransform {
            devices: vec![],
            remove: remove.iter().map(|s| s.to_string()).collect(),
            keep: keep.iter().map(|s| s.to_string()).collect(),
            max_body_bytes: 1 << 20,
        })
    }

    fn run(t: &Trimmer, input: Value) -> Value {
        let out = t.apply(input.to_string().as_bytes()).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn removes_top_level_nested_and_array_paths() {
        let t = trimmer(
            &["secret", "a.b.c", "items[].internal", "items[].meta.x"],
            &[],
        );
        let input = json!({
            "secret": 1, "id": 7,
            "a": {"b": {"c": 1, "d": 2}, "e": 3},
            "items": [
                {"id": 1, "internal": "x", "meta": {"x": 1, "y": 2}},
                {"id": 2},
                5,
                {"id": 3, "internal": [1, 2]}
            ]
        });
        assert_eq!(
            run(&t, input),
            json!({
                "id": 7,
                "a": {"b": {"d": 2}, "e": 3},
                "items": [{"id": 1, "meta": {"y": 2}}, {"id": 2}, 5, {"id": 3}]
            })
        );
    }

    #[test]
    fn keeps_only_named_paths() {
        let t = trimmer(&[], &["id", "user.name", "items[].id", "tags"]);
        let input = json!({
            "id": 1, "extra": true,
            "user": {"name": "ann", "email": "a@x"},
            "items": [{"id": 1, "big": "..."}, {"big": "..."}, "scalar", null],
            "tags": ["a", {"b": 1}]
        });
        assert_eq!(
            run(&t, input),
            json!({
                "id": 1,
                "user": {"name": "ann"},
                "items": [{"id": 1}, {}, null],
                "tags": ["a", {"b": 1}]
            })
        );
    }

    #[test]
    fn keep_drops_values_of_the_wrong_type_but_keeps_null() {
        let t = trimmer(&[], &["user.name", "list[].id"]);
        let out = run(&t, json!({"user": 5, "list": {"id": 1}}));
        assert_eq!(out, json!({}));
        let out = run(&t, json!({"user": null, "list": null}));
        assert_eq!(out, json!({"user": null, "list": null}));
    }

    #[test]
    fn remove_ignores_values_of_the_wrong_type() {
        let t = trimmer(&["a.b", "list[].id"], &[]);
        let input = json!({"a": [1, 2], "list": {"id": 1}});
        assert_eq!(run(&t, input.clone()), input);
    }

    #[test]
    fn a_top_level_array_is_trimmed_element_by_element() {
        let t = trimmer(&["x"], &[]);
        assert_eq!(
            run(&t, json!([{"x": 1, "y": 2}, 3, {"x": 4}])),
            json!([{"y": 2}, 3, {}])
        );
    }

    #[test]
    fn untouched_values_are_copied_byte_for_byte() {
        let t = trimmer(&["drop"], &[]);
        let body = br#"{"big": 123456789012345678901234567890, "f": 1.50, "s": "\u00e9\n", "n": { "k" : [1, 2] }, "drop": 1}"#;
        let out = t.apply(body).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"big":123456789012345678901234567890,"f":1.50,"s":"\u00e9\n","n":{ "k" : [1, 2] }}"#
        );
    }

    #[test]
    fn scalars_and_invalid_bodies() {
        let t = trimmer(&["a"], &[]);
        assert_eq!(t.apply(b"\"text\"").unwrap(), b"\"text\"");
        assert_eq!(t.apply(b"{\"a\": 1").unwrap_err(), Skip::Invalid);
        assert_eq!(t.apply(b"\xff\xfe").unwrap_err(), Skip::Invalid);
        assert_eq!(t.apply(b"").unwrap_err(), Skip::Invalid);
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        // Deep nesting is either copied untouched or refused, never a crash.
        match t.apply(deep.as_bytes()) {
            Ok(out) => assert_eq!(out, deep.as_bytes()),
            Err(skip) => assert_eq!(skip, Skip::Invalid),
        }
        let deep_objects = "{\"a\":".repeat(10_000) + "1" + &"}".repeat(10_000);
        assert_eq!(t.apply(deep_objects.as_bytes()).unwrap(), b"{}");
    }

    #[test]
    fn duplicate_keys_are_all_handled() {
        let t = trimmer(&["a"], &[]);
        assert_eq!(t.apply(br#"{"a":1,"b":2,"a":3}"#).unwrap(), br#"{"b":2}"#);
    }

    #[test]
    fn oversize_bodies_are_refused() {
        let mut t = trimmer(&["a"], &[]);
        t.max_body_bytes = 8;
        assert_eq!(t.apply(br#"{"a":1,"b":2}"#).unwrap_err(), Skip::TooLarge);
    }

    #[test]
    fn gzip_and_brotli_round_trip() {
        let t = trimmer(&["items[].d"], &[]);
        let plain = json!({"items": [{"id": 1, "d": "x"}, {"id": 2, "d": "y"}]}).to_string();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(plain.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let out = t.apply_encoded(&gz, Coding::Gzip).unwrap();
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, r#"{"items":[{"id":1},{"id":2}]}"#);

        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(plain.as_bytes()).unwrap();
        }
        let out = t.apply_encoded(&br, Coding::Brotli).unwrap();
        let mut decoded = String::new();
        brotli::Decompressor::new(&out[..], 4096)
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, r#"{"items":[{"id":1},{"id":2}]}"#);

        // Not actually gzip: refused, so the caller passes it through.
        assert_eq!(
            t.apply_encoded(plain.as_bytes(), Coding::Gzip).unwrap_err(),
            Skip::Encoding
        );
    }

    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        let mut t = trimmer(&["a"], &[]);
        t.max_body_bytes = 1000;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 10 << 20]).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 100_000);
        assert_eq!(
            t.apply_encoded(&gz, Coding::Gzip).unwrap_err(),
            Skip::TooLarge
        );
    }

    #[test]
    fn codings() {
        assert_eq!(Coding::parse(None), Some(Coding::Identity));
        assert_eq!(Coding::parse(Some(b"GZIP")), Some(Coding::Gzip));
        assert_eq!(Coding::parse(Some(b"br")), Some(Coding::Brotli));
        assert_eq!(Coding::parse(Some(b"gzip, br")), None);
        assert_eq!(Coding::parse(Some(b"deflate")), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_bytes(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            path in "[a-z\\[\\].]{0,12}",
        ) {
            let t = trimmer(&[&path], &[]);
            let _ = t.apply(&body);
            let _ = t.apply_encoded(&body, Coding::Gzip);
            let _ = t.apply_encoded(&body, Coding::Brotli);
            let k = trimmer(&[], &[&path]);
            let _ = k.apply(&body);
        }

        #[test]
        fn output_is_valid_json_and_never_has_removed_keys(
            value in arb_json(),
            key in "[a-c]",
        ) {
            let t = trimmer(&[&key, &format!("{key}.{key}"), &format!("{key}[].{key}")], &[]);
            let out = t.apply(value.to_string().as_bytes()).unwrap();
            let parsed: Value = serde_json::from_slice(&out).unwrap();
            if let Value::Object(map) = &parsed {
                proptest::prop_assert!(!map.contains_key(&key));
            }
            // Keeping everything the body has is the identity.
            if let Value::Object(map) = &value {
                let all: Vec<&str> = map.keys().map(String::as_str).collect();
                if !all.is_empty() {
                    let k = trimmer(&[], &all);
                    let same: Value = serde_json::from_slice(&k.apply(value.to_string().as_bytes()).unwrap()).unwrap();
                    proptest::prop_assert_eq!(&same, &value);
                }
            }
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
