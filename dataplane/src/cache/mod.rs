//! The response cache: one in-memory store per dataplane, shared by every
//! route whose rule has `filters.cache`, kept across snapshot swaps.
//!
//! ```text
//!  request ─▶ policy::request_mode ─▶ Bypass ────────────────▶ upstream
//!                  │ Lookup / Revalidate
//!                  ▼
//!             key (host, path, query, rule, device, headers) + Vary
//!                  │
//!      fresh hit ◀─┤─▶ stale with validators: conditional upstream request
//!   (304 if the    │       (304 refreshes the entry)
//!    client's      ▼
//!    validators    miss: first request leads, concurrent ones wait for it
//!    match)             (coalescing), then look up again
//!                  │
//!                  ▼
//!             upstream ─▶ transform ─▶ policy::storable ─▶ insert
//! ```
//!
//! - **Bounded.** [`moka`] holds the entries, weighed by their size in
//!   bytes, so the store never exceeds `--cache-max-bytes`; entries larger
//!   than the rule's `maxEntryBytes` are never read into memory whole.
//!   Entries leave when their freshness ends, or, when they have a
//!   validator (`ETag`, `Last-Modified`), [`STALE_KEEP`] later so that they
//!   can be revalidated.
//! - **Keys** start with `host` + `path` + `?query`, so an admin purge by
//!   prefix (`POST /cache/purge?prefix=shop.example/products`) removes a
//!   host's path subtree. Then, one per line: the route and rule, the
//!   device class (`keyDevice`), whether a device-specific transform was
//!   applied, and the configured `keyHeaders` values.
//! - **Vary.** The names a response varies on are remembered per key; the
//!   stored entry's key adds the request's values of those headers, so
//!   variants live side by side.
//! - **Never stored:** `private`, `no-store`, `Vary: *`, `Set-Cookie`
//!   (unless the rule says so), answers to requests with `Authorization`
//!   (unless the rule says so), statuses that are not cacheable, responses
//!   without freshness (no `max-age`, `s-maxage` or `Expires`, and no
//!   `defaultTtl`), responses with trailers (entries keep none): those
//!   that announce them (`Trailer`, gRPC) are never buffered and stream
//!   through with their trailers; trailers found after a body read for
//!   the cache are sent after it, unstored. Stale answers are never
//!   served.

pub mod policy;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How long an expired entry with a validator is kept for revalidation.
pub const STALE_KEEP: Duration = Duration::from_secs(600);

/// Default total size of the store.
pub const DEFAULT_MAX_BYTES: u64 = 128 << 20;

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    /// Status code.
    pub status: StatusCode,
    /// Headers as served (after the transform), without hop-by-hop
    /// headers, `Age` and `Cache-Status`.
    pub headers: HeaderMap,
    /// The head of a full answer from this entry, built once when it is
    /// stored so that a hit clones one map and fills three values:
    /// `headers` as they leave the gateway (hop-by-hop headers removed,
    /// the device `Vary` added when the key depends on the transform),
    /// with `Age`, `Cache-Status` and `x-request-id` in place, to be
    /// overwritten per answer. See `filters::served_headers`.
    pub served: HeaderMap,
    /// The body as served.
    pub body: Bytes,
    /// When the response was received.
    pub stored_at: SystemTime,
    /// Its age when received.
    pub initial_age: Duration,
    /// Freshness lifetime.
    pub lifetime: Duration,
    /// The upstream's `ETag` (differs from the served one when the body
    /// was transformed), for revalidation.
    pub upstream_etag: Option<HeaderValue>,
    /// The upstream's `Last-Modified`, for revalidation.
    pub upstream_last_modified: Option<HeaderValue>,
}

impl Entry {
    /// The entry's current age.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.stored_at).unwrap_or(Duration::ZERO)
    }

    /// Freshness left, zero when stale.
    pub fn ttl(&self, now: SystemTime) -> Duration {
        self.lifetime.saturating_sub(self.age(now))
    }

    /// Whether the entry may be served without revalidation.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.age(now) < self.lifetime
    }

    /// Whether the entry can be revalidated.
    pub fn has_validator(&self) -> bool {
        self.upstream_etag.is_some() || self.upstream_last_modified.is_some()
    }

    /// Approximate memory the entry holds, for the store's bound.
    fn weight(&self, key: &str) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .chain(self.served.iter())
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + key.len() + 256).unwrap_or(u32::MAX)
    }

    /// How long the store keeps the entry.
    fn keep_for(&self) -> Duration {
        let fresh = self.lifetime.saturating_sub(self.initial_age);
        if self.has_validator() {
            fresh + STALE_KEEP
        } else {
            fresh
        }
    }
}

struct KeepFor;

impl Expiry<Arc<str>, Arc<Entry>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for())
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_for())
    }
}

/// Who fetches a missing entry.
pub enum Flight {
    /// This request fetches; others wait until the guard drops.
    Leader(LeaderGuard),
    /// Another request is fetching: wait on this, then look up again.
    Follower(watch::Receiver<()>),
}

/// Held by the request that fetches a key; dropping it wakes the
/// followers.
pub struct LeaderGuard {
    inflight: Arc<Mutex<HashMap<Arc<str>, watch::Receiver<()>>>>,
    key: Arc<str>,
    _done: watch::Sender<()>,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.key);
    }
}

/// The store.
pub struct Store {
    entries: Cache<Arc<str>, Arc<Entry>>,
    vary: Cache<Arc<str>, Arc<[HeaderName]>>,
    inflight: Arc<Mutex<HashMap<Arc<str>, watch::Receiver<()>>>>,
    varies: std::sync::atomic::AtomicBool,
    bytes: Gauge,
    count: Gauge,
}

impl Store {
    /// A store of at most `max_bytes`, reporting its size to the gauges.
    pub fn new(max_bytes: u64, bytes: Gauge, count: Gauge) -> Store {
        let (b, c) = (bytes.clone(), count.clone());
        let entries = Cache::builder()
            .max_capacity(max_bytes.max(1))
            .weigher(|key: &Arc<str>, entry: &Arc<Entry>| entry.weight(key))
            .expire_after(KeepFor)
            .eviction_listener(
                move |key: Arc<Arc<str>>, entry: Arc<Entry>, _: RemovalCause| {
                    b.dec_by(i64::from(entry.weight(&key)));
                    c.dec();
                },
            )
            .build();
        let vary = Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(STALE_KEEP * 6)
            .build();
        Store {
            entries,
            vary,
            inflight: Arc::default(),
            varies: std::sync::atomic::AtomicBool::new(false),
            bytes,
            count,
        }
    }

    /// The full key of a request: `primary` plus the request's values of
    /// the headers earlier responses for `primary` varied on.
    pub async fn full_key(&self, primary: &Arc<str>, request: &HeaderMap) -> Arc<str> {
        match self.vary_names(primary).await {
            Some(names) if !names.is_empty() => Arc::from(vary_key(primary, &names, request)),
            _ => primary.clone(),
        }
    }

    /// The header names earlier responses for `primary` varied on.
    pub async fn vary_names(&self, primary: &str) -> Option<Arc<[HeaderName]>> {
        // Most stores never see a Vary: skip the second lookup then.
        if !self.varies.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.vary.get(primary).await
    }

    /// The stored entry under `key`.
    pub async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key).await
    }

    /// Stores `entry` for a request with `primary` key and `request`
    /// headers, varying on `vary` names.
    pub async fn insert(
        &self,
        primary: &Arc<str>,
        vary: &[HeaderName],
        request: &HeaderMap,
        entry: Entry,
    ) {
        let key: Arc<str> = if vary.is_empty() {
            self.vary.invalidate(primary).await;
            primary.clone()
        } else {
            self.varies
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.vary.insert(primary.clone(), Arc::from(vary)).await;
            Arc::from(vary_key(primary, vary, request))
        };
        self.bytes.inc_by(i64::from(entry.weight(&key)));
        self.count.inc();
        self.entries.insert(key, Arc::new(entry)).await;
    }

    /// Removes the entry under `key`.
    pub async fn remove(&self, key: &Arc<str>) {
        self.entries.invalidate(key).await;
    }

    /// Removes every entry whose key starts with `prefix`; returns how many.
    pub async fn purge(&self, prefix: &str) -> usize {
        let keys: Vec<Arc<Arc<str>>> = self
            .entries
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            self.entries.invalidate(&**key).await;
        }
        let vary: Vec<Arc<Arc<str>>> = self
            .vary
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key)
            .collect();
        for key in &vary {
            self.vary.invalidate(&**key).await;
        }
        self.entries.run_pending_tasks().await;
        keys.len()
    }

    /// Joins the fetch of `key`: the first caller leads, later ones follow
    /// until the leader is done.
    pub fn join(&self, key: &Arc<str>) -> Flight {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(key) {
            return Flight::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.clone(), rx);
        Flight::Leader(LeaderGuard {
            inflight: self.inflight.clone(),
            key: key.clone(),
            _done: tx,
        })
    }

    /// Entries and bytes held (approximate until pending work runs).
    pub fn usage(&self) -> (u64, u64) {
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

/// Builds the primary key. See the module docs for its layout.
#[allow(clippy::too_many_arguments)]
pub fn primary_key(
    host: &str,
    path: &str,
    query: Option<&str>,
    rule: (&str, &str),
    device: Option<crds::DeviceClass>,
    transformed: Option<bool>,
    key_headers: &[String],
    request: &HeaderMap,
) -> String {
    let mut key = String::with_capacity(host.len() + path.len() + 64);
    key.push_str(host);
    key.push_str(path);
    if let Some(query) = query {
        key.push('?');
        key.push_str(query);
    }
    key.push('\n');
    key.push_str(rule.0);
    key.push('/');
    key.push_str(rule.1);
    if let Some(device) = device {
        key.push_str("\ndevice=");
        key.push_str(device.as_str());
    }
    if let Some(transformed) = transformed {
        key.push_str(if transformed {
            "\ntransform=1"
        } else {
            "\ntransform=0"
        });
    }
    for name in key_headers {
        push_header(&mut key, name, request);
    }
    key
}

/// The key of the variant of `primary` that `request` selects, for a
/// response varying on `names`.
pub fn vary_key(primary: &str, names: &[HeaderName], request: &HeaderMap) -> String {
    let mut key = String::with_capacity(primary.len() + 64);
    key.push_str(primary);
    key.push_str("\nvary");
    for name in names {
        push_header(&mut key, name.as_str(), request);
    }
    key
}

fn push_header(key: &mut String, name: &str, request: &HeaderMap) {
    key.push('\n');
    key.push_str(name);
    key.push('=');
    for (i, value) in request.get_all(name).iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(body: &str, lifetime: u64) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            served: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            stored_at: SystemTime::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(lifetime),
            upstream_etag: None,
            upstream_last_modified: None,
        }
    }

    #[test]
    fn keys_start_with_host_path_and_query() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("a"));
        let key = primary_key(
            "shop.example",
            "/products",
            Some("page=2"),
            ("ns/route", "rule"),
            Some(crds::DeviceClass::Mobile),
            Some(true),
            &["x-tenant".into(), "x-none".into()],
            &h,
        );
        assert_eq!(
            &*key,
            "shop.example/products?page=2\nns/route/rule\ndevice=mobile\ntransform=1\nx-tenant=a\nx-none="
        );
    }

    #[test]
    fn ages_and_freshness() {
        let t0 = SystemTime::now();
        let mut e = entry("x", 10);
        e.stored_at = t0;
        e.initial_age = Duration::from_secs(3);
        assert_eq!(e.age(t0 + Duration::from_secs(2)), Duration::from_secs(5));
        assert!(e.is_fresh(t0 + Duration::from_secs(6)));
        assert!(!e.is_fresh(t0 + Duration::from_secs(7)));
        assert_eq!(e.ttl(t0 + Duration::from_secs(100)), Duration::ZERO);
    }

    #[tokio::test]
    async fn vary_keeps_variants_apart_and_purge_by_prefix() {
        let store = Store::new(1 << 20, Gauge::default(), Gauge::default());
        let primary: Arc<str> = Arc::from("h/a\nr");
        let mut en = HeaderMap::new();
        en.insert("accept-language", HeaderValue::from_static("en"));
        let mut de = HeaderMap::new();
        de.insert("accept-language", HeaderValue::from_static("de"));
        let vary = [HeaderName::from_static("accept-language")];
        store
            .insert(&primary, &vary, &en, entry("english", 60))
            .await;
        store
            .insert(&primary, &vary, &de, entry("deutsch", 60))
            .await;
        let k_en = store.full_key(&primary, &en).await;
        let k_de = store.full_key(&primary, &de).await;
        assert_eq!(store.get(&k_en).await.unwrap().body, "english");
        assert_eq!(store.get(&k_de).await.unwrap().body, "deutsch");
        let other: Arc<str> = Arc::from("h/b\nr");
        store.insert(&other, &[], &en, entry("b", 60)).await;
        assert_eq!(store.purge("h/a").await, 2);
        assert!(store.get(&k_en).await.is_none());
        assert!(store.get(&other).await.is_some());
    }

    #[tokio::test]
    async fn the_store_stays_within_its_bytes() {
        let store = Store::new(64 * 1024, Gauge::default(), Gauge::default());
        for i in 0..100 {
            let key: Arc<str> = Arc::from(format!("h/{i}"));
            store
                .insert(&key, &[], &HeaderMap::new(), entry(&"x".repeat(4096), 60))
                .await;
        }
        store.entries.run_pending_tasks().await;
        let (_, bytes) = store.usage();
        assert!(bytes <= 64 * 1024, "{bytes}");
    }

    #[tokio::test]
    async fn one_leader_per_key() {
        let store = Store::new(1 << 20, Gauge::default(), Gauge::default());
        let key: Arc<str> = Arc::from("k");
        let leader = store.join(&key);
        let Flight::Leader(guard) = leader else {
            panic!("first caller leads")
        };
        let Flight::Follower(mut rx) = store.join(&key) else {
            panic!("second caller follows")
        };
        let waiter = tokio::spawn(async move { rx.changed().await.is_err() });
        drop(guard);
        assert!(waiter.await.unwrap());
        assert!(matches!(store.join(&key), Flight::Leader(_)));
    }
}
