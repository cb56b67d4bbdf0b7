//! JWT verification keys: key sets parsed from JWKS documents, and the
//! cache of key sets the dataplane fetches from a provider's `jwksUri`.
//!
//! Fetching (the dataplane's own HTTP client, 5 s timeout, 1 MiB limit):
//!
//! ```text
//!   age <= fresh_for            use the keys
//!   fresh_for < age <= max      use the keys, refresh in the background
//!   age > max staleness         fail closed (one refresh attempt a second)
//!   token kid unknown           refetch now, at most once per cooldown
//! ```
//!
//! `fresh_for` is the provider's `jwksCacheDuration`, shortened by the
//! server's `Cache-Control: max-age` (never below one second). The cooldown
//! is a tenth of the cache duration, between 1 s and 30 s, so a flood of
//! tokens with invented `kid`s costs at most one fetch per cooldown. Caches
//! live in [`super::AuthState`] and survive snapshot swaps; a key set that
//! comes back unchanged keeps its generation, so verified tokens stay
//! cached across refreshes.

use crate::upstream::HttpClient;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Time limit of one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Minimum spacing of refresh attempts after a failure.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Most keys tried for a token without `kid`.
const MAX_CANDIDATES: usize = 4;

/// One verification key.
pub struct KeyEntry {
    /// `kid`, if the key has one.
    pub kid: Option<String>,
    /// The only algorithm the key may be used with, when the JWK says.
    pub alg: Option<Algorithm>,
    family: AlgorithmFamily,
    /// For EC keys: the algorithm matching the curve.
    curve_alg: Option<Algorithm>,
    /// The key.
    pub key: DecodingKey,
}

/// A set of verification keys.
pub struct KeySet {
    /// The keys.
    pub entries: Vec<KeyEntry>,
    /// Changes whenever the set's content changes (for cached tokens).
    pub generation: u64,
    digest: [u8; 32],
}

impl KeySet {
    /// A set with one HMAC secret (base64, as the compiler stores it).
    pub fn hmac(secret_base64: &str) -> Result<KeySet, String> {
        let key = DecodingKey::from_base64_secret(secret_base64)
            .map_err(|e| format!("HMAC secret: {e}"))?;
        Ok(KeySet {
            entries: vec![KeyEntry {
                kid: None,
                alg: None,
                family: AlgorithmFamily::Hmac,
                curve_alg: None,
                key,
            }],
            generation: 0,
            digest: [0; 32],
        })
    }

    /// Parses a JWKS document. Keys this verifier cannot use (encryption
    /// keys, symmetric keys, unknown types or curves) are skipped and
    /// counted in the second value; a document that is not a JWKS is an
    /// error.
    pub fn from_jwks(doc: &[u8], generation: u64) -> Result<(KeySet, usize), String> {
        let value: serde_json::Value =
            serde_json::from_slice(doc).map_err(|e| format!("not JSON: {e}"))?;
        let keys = value
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("a JWKS is a JSON object with a \"keys\" array")?;
        let mut entries = Vec::new();
        let mut skipped = 0;
        for key in keys.iter().take(64) {
            match serde_json::from_value::<Jwk>(key.clone())
                .ok()
                .and_then(entry)
            {
                Some(e) => entries.push(e),
                None => skipped += 1,
            }
        }
        skipped += keys.len().saturating_sub(64);
        Ok((
            KeySet {
                entries,
                generation,
                digest: Sha256::digest(doc).into(),
            },
            skipped,
        ))
    }

    /// Keys that may verify a token with `alg` and `kid`. Without `kid`,
    /// every compatible key (at most a few) is a candidate.
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a KeyEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| {
                e.family == alg.family()
                    && e.alg.is_none_or(|a| a == alg)
                    && e.curve_alg.is_none_or(|a| a == alg)
                    && match kid {
                        Some(kid) => e.kid.as_deref() == Some(kid),
                        None => true,
                    }
            })
            .take(MAX_CANDIDATES)
    }

    /// Whether some key carries `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.entries.iter().any(|e| e.kid.as_deref() == Some(kid))
    }
}

fn entry(jwk: Jwk) -> Option<KeyEntry> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
    };
    let (family, curve_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (AlgorithmFamily::Ed, None)
        }
        // Symmetric keys never come from a JWKS: an HMAC secret is
        // configured on its own (`hmacSecretRef`), so a token can never be
        // checked with a public key used as an HMAC secret.
        _ => return None,
    };
    if alg.is_some_and(|a| a.family() != family) {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(KeyEntry {
        kid: jwk.common.key_id.filter(|k| k.len() <= 1024),
        alg,
        family,
        curve_alg,
        key,
    })
}

/// How usable cached keys of some age are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Within the cache duration.
    Fresh,
    /// Past it, but within the maximum staleness: use, and refresh.
    Stale,
    /// Past the maximum staleness: not trusted any more.
    Expired,
}

/// Pure freshness rule (see the module docs).
pub fn freshness(age: Duration, fresh_for: Duration, max_staleness: Duration) -> Freshness {
    if age > max_staleness {
        Freshness::Expired
    } else if age > fresh_for {
        Freshness::Stale
    } else {
        Freshness::Fresh
    }
}

/// How long a fetched set is fresh: the configured duration, shortened by
/// the server's `max-age`, at least a second.
pub fn fresh_for(configured: Duration, cache_control: Option<&str>) -> Duration {
    let max_age = cache_control.and_then(|v| {
        v.split(',').find_map(|d| {
            let (name, value) = d.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
    });
    let d = match max_age {
        Some(secs) => configured.min(Duration::from_secs(secs)),
        None => configured,
    };
    d.max(Duration::from_secs(1))
}

/// The cooldown between refetches triggered by unknown `kid`s.
pub fn kid_cooldown(cache_for: Duration) -> Duration {
    (cache_for / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Why no keys can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeysError {
    /// Never fetched successfully, or older than the maximum staleness.
    Unavailable,
}

struct Fetched {
    keys: Arc<KeySet>,
    at: Instant,
    fresh_for: Duration,
}

/// The keys of one `jwksUri`, fetched and refreshed by the dataplane.
pub struct JwksCache {
    uri: Uri,
    client: HttpClient,
    cache_for: Duration,
    max_staleness: Duration,
    current: ArcSwapOption<Fetched>,
    generation: AtomicU64,
    fetch_lock: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    refreshing: AtomicBool,
}

impl JwksCache {
    /// A cache for `uri` (not fetched yet).
    pub fn new(
        uri: Uri,
        client: HttpClient,
        cache_for: Duration,
        max_staleness: Duration,
    ) -> JwksCache {
        JwksCache {
            uri,
            client,
            cache_for,
            max_staleness,
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(1),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    /// Starts a fetch in the background when there is a runtime.
    pub fn prefetch(self: &Arc<Self>) {
        if self.current.load().is_none() {
            self.spawn_refresh();
        }
    }

    /// The keys to verify with now, refreshing as the module docs say.
    pub async fn keys(self: &Arc<Self>, now: Instant) -> Result<Arc<KeySet>, KeysError> {
        if let Some(fetched) = self.current.load_full() {
            let age = now.saturating_duration_since(fetched.at);
            match freshness(age, fetched.fresh_for, self.max_staleness) {
                Freshness::Fresh => return Ok(fetched.keys.clone()),
                Freshness::Stale => {
                    self.spawn_refresh();
                    return Ok(fetched.keys.clone());
                }
                Freshness::Expired => {}
            }
        }
        // No usable keys: wait for a fetch in flight, or fetch now (one
        // attempt a second at most).
        self.refresh(RETRY_AFTER_FAILURE).await;
        match self.current.load_full() {
            Some(f)
                if freshness(
                    Instant::now().saturating_duration_since(f.at),
                    f.fresh_for,
                    self.max_staleness,
                ) != Freshness::Expired =>
            {
                Ok(f.keys.clone())
            }
            _ => Err(KeysError::Unavailable),
        }
    }

    /// A token named a `kid` the set does not have: refetch, at most once
    /// per cooldown. Returns the keys after the refetch, if one happened.
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if !self.refresh(kid_cooldown(self.cache_for)).await {
            return None;
        }
        self.current.load_full().map(|f| f.keys.clone())
    }

    fn spawn_refresh(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let cache = self.clone();
                handle.spawn(async move {
                    cache.refresh(RETRY_AFTER_FAILURE).await;
                    cache.refreshing.store(false, Ordering::Release);
                });
            }
            Err(_) => self.refreshing.store(false, Ordering::Release),
        }
    }

    /// One fetch, unless another caller's fetch completed while this one
    /// waited for its turn, or an attempt was made within `spacing`. Keeps
    /// the old keys on failure. Returns whether the keys may have changed.
    async fn refresh(&self, spacing: Duration) -> bool {
        let started = Instant::now();
        let _one_at_a_time = self.fetch_lock.lock().await;
        if self
            .current
            .load()
            .as_ref()
            .is_some_and(|f| f.at >= started)
        {
            return true;
        }
        {
            let mut last = self
                .last_attempt
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            if last.is_some_and(|t| now.saturating_duration_since(t) < spacing) {
                return false;
            }
            *last = Some(now);
        }
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok((body, cache_control))) => {
                self.install(&body, cache_control.as_deref());
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(uri = %self.uri, %error, "JWKS fetch failed; keeping the cached keys");
                false
            }
            Err(_) => {
                tracing::warn!(uri = %self.uri, "JWKS fetch timed out; keeping the cached keys");
                false
            }
        }
    }

    fn install(&self, body: &[u8], cache_control: Option<&str>) {
        let previous = self.current.load_full();
        let same = previous
            .as_ref()
            .is_some_and(|p| p.keys.digest == <[u8; 32]>::from(Sha256::digest(body)));
        let generation = match (&previous, same) {
            (Some(p), true) => p.keys.generation,
            _ => self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        match KeySet::from_jwks(body, generation) {
            Ok((keys, skipped)) => {
                if skipped > 0 {
                    tracing::debug!(uri = %self.uri, skipped, "JWKS keys this verifier cannot use were skipped");
                }
                self.current.store(Some(Arc::new(Fetched {
                    keys: Arc::new(keys),
                    at: Instant::now(),
                    fresh_for: fresh_for(self.cache_for, cache_control),
                })));
            }
            Err(error) => {
                tracing::warn!(uri = %self.uri, %error, "JWKS document refused; keeping the cached keys");
            }
        }
    }

    async fn fetch(&self) -> Result<(Bytes, Option<String>), String> {
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let request = Request::get(self.uri.clone())
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .body(Either::Right(Full::new(Bytes::new())))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        let cache_control = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((body, cache_control))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
    const EC_JWK: &str = r#"{"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    fn doc(keys: &[&str]) -> Vec<u8> {
        format!("{{\"keys\":[{}]}}", keys.join(",")).into_bytes()
    }

    #[test]
    fn keys_are_selected_by_kid_family_and_curve() {
        let (set, skipped) = KeySet::from_jwks(
            &doc(&[
                RSA_JWK,
                EC_JWK,
                r#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#,
                r#"{"kty":"RSA","use":"enc","kid":"x","n":"AQAB","e":"AQAB"}"#,
                r#"{"kty":"weird"}"#,
            ]),
            3,
        )
        .expect("jwks");
        assert_eq!(set.entries.len(), 2);
        assert_eq!(skipped, 3);
        assert_eq!(set.generation, 3);
        assert_eq!(set.candidates(Algorithm::RS256, Some("r1")).count(), 1);
        // The JWK pins RS256: not usable for PS256 or RS512.
        assert_eq!(set.candidates(Algorithm::PS256, Some("r1")).count(), 0);
        // An RSA key is never a candidate for HMAC.
        assert_eq!(set.candidates(Algorithm::HS256, None).count(), 0);
        // P-256 only verifies ES256.
        assert_eq!(set.candidates(Algorithm::ES256, None).count(), 1);
        assert_eq!(set.candidates(Algorithm::ES384, None).count(), 0);
        assert_eq!(
            set.candidates(Algorithm::RS256, Some("../../etc")).count(),
            0
        );
        assert!(set.has_kid("e1"));
    }

    #[test]
    fn non_jwks_documents_are_refused() {
        assert!(KeySet::from_jwks(b"[]", 1).is_err());
        assert!(KeySet::from_jwks(b"{\"keys\":{}}", 1).is_err());
        assert!(KeySet::from_jwks(b"not json", 1).is_err());
    }

    #[test]
    fn freshness_follows_cache_duration_then_staleness() {
        let s = Duration::from_secs;
        assert_eq!(freshness(s(5), s(10), s(60)), Freshness::Fresh);
        assert_eq!(freshness(s(11), s(10), s(60)), Freshness::Stale);
        assert_eq!(freshness(s(61), s(10), s(60)), Freshness::Expired);
    }

    #[test]
    fn max_age_shortens_the_cache_duration() {
        let s = Duration::from_secs;
        assert_eq!(fresh_for(s(600), Some("public, max-age=60")), s(60));
        assert_eq!(fresh_for(s(30), Some("max-age=3600")), s(30));
        assert_eq!(fresh_for(s(600), Some("max-age=0")), s(1));
        assert_eq!(fresh_for(s(600), Some("no-store")), s(600));
        assert_eq!(fresh_for(s(600), None), s(600));
    }

    #[test]
    fn unknown_kid_refetches_are_spaced() {
        let s = Duration::from_secs;
        assert_eq!(kid_cooldown(s(600)), s(30));
        assert_eq!(kid_cooldown(s(20)), s(2));
        assert_eq!(kid_cooldown(s(1)), s(1));
    }
}
