//! JWT bearer tokens: signature verification with `jsonwebtoken` (RustCrypto
//! backend), then our own claim checks as plain functions of the claims and
//! the time.
//!
//! ```text
//! token ─▶ size and header checks: alg must be one the provider allows
//!           (never `none`; HS* only with an HMAC secret)
//!       ─▶ keys (static, or the JWKS cache: fresh / stale / fail closed)
//!       ─▶ verified-token cache hit? (same key generation) ──▶ claim times
//!       ─▶ candidates by kid, family, curve (unknown kid: one refetch)
//!       ─▶ signature ─▶ iss, aud, exp (required), nbf, iat with skew
//!       ─▶ identity (consumer, organization, groups) + claim headers
//! ```
//!
//! Verified tokens are cached (bounded by bytes, 10 minutes at most, keyed
//! by the whole token) because an RSA verification costs tens of
//! microseconds, several times a proxied request; Envoy's `jwt_authn` does
//! the same. A cache hit still checks the times and the key generation, so
//! expiry, key rotation and the JWKS staleness limit apply to cached tokens
//! too.

use super::jwks::{JwksCache, KeySet};
use super::{Identity, Reason};
use base64::Engine;
use crds::auth::{ClaimToHeader, CredentialSource, JwtAlgorithm};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use snapshot::model::{JwtConfig, JwtKeys};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest token accepted.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Bytes of verified tokens kept per provider.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Longest a verified token stays cached.
const CACHE_TTL: Duration = Duration::from_secs(600);

/// Where a provider's keys come from.
pub enum Keys {
    /// Inline JWKS, JWKS from a Secret, or an HMAC secret.
    Static(Arc<KeySet>),
    /// Fetched from `jwksUri`.
    Remote(Arc<JwksCache>),
}

/// A verified token, as cached.
#[derive(Clone)]
pub struct Verified {
    /// Who the token says the caller is.
    pub identity: Identity,
    /// Claim headers for the upstream.
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
    times: Times,
    generation: u64,
}

/// One JWT provider, built from a snapshot.
pub struct JwtProvider {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    keys: Keys,
    skew_ms: u64,
    /// Where the token is read.
    pub token_from: CredentialSource,
    claims_to_headers: Vec<(String, HeaderName)>,
    consumer_claim: String,
    organization_claim: String,
    groups_claim: String,
    verified: moka::sync::Cache<String, Arc<Verified>>,
}

/// The `jsonwebtoken` algorithm for a CRD algorithm.
pub fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
    }
}

impl JwtProvider {
    /// Builds a provider. `remote` gives the JWKS cache for a `jwksUri`.
    pub fn build(
        config: &JwtConfig,
        remote: impl FnOnce(&str) -> Result<Arc<JwksCache>, String>,
    ) -> Result<JwtProvider, String> {
        let algorithms: Vec<Algorithm> = config.algorithms.iter().copied().map(algorithm).collect();
        if algorithms.is_empty() {
            return Err("no algorithms".to_owned());
        }
        let hmac = matches!(config.keys, JwtKeys::Hmac(_));
        // The compiler enforces this; a snapshot from elsewhere must too:
        // HMAC algorithms only with an HMAC secret, and the other way round.
        if algorithms
            .iter()
            .any(|a| (a.family() == jsonwebtoken::AlgorithmFamily::Hmac) != hmac)
        {
            return Err(
                "HS256/384/512 need an HMAC secret, and an HMAC secret only HS*".to_owned(),
            );
        }
        let keys = match &config.keys {
            JwtKeys::Hmac(secret) => Keys::Static(Arc::new(KeySet::hmac(secret)?)),
            JwtKeys::Jwks(doc) => {
                let (set, skipped) = KeySet::from_jwks(doc.as_bytes(), 0)?;
                if skipped > 0 {
                    tracing::warn!(issuer = %config.issuer, skipped, "JWKS keys this verifier cannot use were skipped");
                }
                Keys::Static(Arc::new(set))
            }
            JwtKeys::JwksUri(uri) => Keys::Remote(remote(uri)?),
        };
        let mut claims_to_headers = Vec::new();
        for ClaimToHeader { claim, header } in &config.claims_to_headers {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("claimsToHeaders: {header:?} is not a header name"))?;
            claims_to_headers.push((claim.clone(), name));
        }
        Ok(JwtProvider {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            algorithms,
            keys,
            skew_ms: config.clock_skew_ms.min(300_000),
            token_from: config.token_from.clone(),
            claims_to_headers,
            consumer_claim: config.consumer_claim.clone(),
            organization_claim: config.organization_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            verified: moka::sync::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|token: &String, _: &Arc<Verified>| {
                    u32::try_from(token.len() + 512).unwrap_or(u32::MAX)
                })
                .time_to_live(CACHE_TTL)
                .build(),
        })
    }

    /// Names of the headers this provider sets from claims (removed from
    /// every request first, so clients cannot forge them).
    pub fn injected_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.claims_to_headers.iter().map(|(_, h)| h)
    }

    /// Starts fetching remote keys (at table build).
    pub fn prefetch(&self) {
        if let Keys::Remote(cache) = &self.keys {
            cache.prefetch();
        }
    }

    /// Verifies `token` now.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, Reason> {
        self.verify_at(token, unix_ms(), Instant::now()).await
    }

    /// Verifies `token` at `now_ms` (Unix time) / `now` (for key ages).
    pub async fn verify_at(
        &self,
        token: &str,
        now_ms: u64,
        now: Instant,
    ) -> Result<Arc<Verified>, Reason> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Reason::Malformed);
        }
        let mut keys = match &self.keys {
            Keys::Static(set) => set.clone(),
            Keys::Remote(cache) => cache.keys(now).await.map_err(|_| Reason::KeysUnavailable)?,
        };
        // A token this provider verified with the same keys: only the times
        // can have changed.
        if let Some(hit) = self.verified.get(token) {
            if hit.generation == keys.generation {
                hit.times.check(now_ms, self.skew_ms)?;
                return Ok(hit);
            }
        }
        let alg = header_algorithm(token)?;
        if !self.algorithms.contains(&alg) {
            return Err(Reason::Algorithm);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reason::Malformed)?;
        let kid = header.kid.as_deref().filter(|k| k.len() <= 1024);
        if header.kid.is_some() && kid.is_none() {
            return Err(Reason::UnknownKey);
        }
        if let (Some(kid), Keys::Remote(cache)) = (kid, &self.keys) {
            if !keys.has_kid(kid) {
                match cache.refetch_for_unknown_kid().await {
                    Some(fresh) => keys = fresh,
                    None => return Err(Reason::UnknownKey),
                }
            }
        }
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut outcome = Err(Reason::UnknownKey);
        for candidate in keys.candidates(alg, kid) {
            match jsonwebtoken::decode::<Value>(token, &candidate.key, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    outcome = Err(match e.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => Reason::Signature,
                        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => Reason::Algorithm,
                        _ => Reason::Malformed,
                    });
                }
            }
        }
        let claims = outcome?;
        let times = check_claims(&claims, &self.issuer, &self.audiences, now_ms, self.skew_ms)?;
        let verified = Arc::new(Verified {
            identity: self.identity(claims.clone()),
            headers: self.claim_headers(&claims).into(),
            times,
            generation: keys.generation,
        });
        self.verified.insert(token.to_owned(), verified.clone());
        Ok(verified)
    }

    fn identity(&self, claims: Value) -> Identity {
        let text = |name: &str| {
            claim(&claims, name)
                .and_then(claim_text)
                .map(Arc::<str>::from)
        };
        let groups: Vec<Arc<str>> = match claim(&claims, &self.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .take(256)
                .filter_map(|v| v.as_str().map(Arc::from))
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().take(256).map(Arc::from).collect(),
            _ => Vec::new(),
        };
        Identity {
            consumer: text(&self.consumer_claim),
            organization: text(&self.organization_claim),
            groups: groups.into(),
            claims: Some(Arc::new(claims)),
            method: "jwt",
        }
    }

    fn claim_headers(&self, claims: &Value) -> Vec<(HeaderName, HeaderValue)> {
        self.claims_to_headers
            .iter()
            .filter_map(|(path, name)| {
                let value = claim(claims, path)?;
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => return None,
                    other => other.to_string(),
                };
                let value = HeaderValue::from_str(&text).ok()?;
                Some((name.clone(), value))
            })
            .collect()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `alg` of a token's header, refusing `none` and unknown names before
/// anything else is parsed.
fn header_algorithm(token: &str) -> Result<Algorithm, Reason> {
    let encoded = token.split('.').next().ok_or(Reason::Malformed)?;
    if encoded.len() > 4096 {
        return Err(Reason::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| Reason::Malformed)?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Reason::Malformed)?;
    alg.parse::<Algorithm>().map_err(|_| Reason::Algorithm)
}

/// A claim by path (`a.b` looks into nested objects; a claim whose name
/// contains a dot is found too).
pub fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut current = claims;
    for segment in path.split('.') {
        current = current.get(segment)?;
    }
    Some(current)
}

/// A scalar claim as text.
pub fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The time claims of a token, in Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Times {
    exp: u64,
    nbf: Option<u64>,
    iat: Option<u64>,
}

impl Times {
    /// Checks the times at `now_ms` with `skew_ms` of tolerance.
    pub fn check(&self, now_ms: u64, skew_ms: u64) -> Result<(), Reason> {
        if now_ms > self.exp.saturating_add(skew_ms) {
            return Err(Reason::Expired);
        }
        if self
            .nbf
            .is_some_and(|nbf| nbf > now_ms.saturating_add(skew_ms))
        {
            return Err(Reason::NotYetValid);
        }
        if self
            .iat
            .is_some_and(|iat| iat > now_ms.saturating_add(skew_ms))
        {
            return Err(Reason::IssuedInFuture);
        }
        Ok(())
    }
}

fn numeric_date(claims: &Value, name: &str) -> Result<Option<u64>, Reason> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().ok_or(Reason::Malformed)?;
            if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
                return Err(Reason::Malformed);
            }
            Ok(Some((secs * 1000.0) as u64))
        }
        Some(_) => Err(Reason::Malformed),
    }
}

/// The claim checks: issuer, audience, `exp` (required), `nbf`, `iat`.
pub fn check_claims(
    claims: &Value,
    issuer: &str,
    audiences: &[String],
    now_ms: u64,
    skew_ms: u64,
) -> Result<Times, Reason> {
    if !claims.is_object() {
        return Err(Reason::Malformed);
    }
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(Reason::Issuer);
    }
    if !audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(Reason::Audience);
        }
    }
    let times = Times {
        exp: numeric_date(claims, "exp")?.ok_or(Reason::MissingExpiry)?,
        nbf: numeric_date(claims, "nbf")?,
        iat: numeric_date(claims, "iat")?,
    };
    times.check(now_ms, skew_ms)?;
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000_000;

    fn check(claims: Value) -> Result<Times, Reason> {
        check_claims(&claims, "https://issuer", &["api".to_owned()], NOW, 30_000)
    }

    #[test]
    fn valid_claims_pass() {
        let now = NOW / 1000;
        assert!(check(json!({"iss": "https://issuer", "aud": "api", "exp": now + 60})).is_ok());
        assert!(check(json!({"iss": "https://issuer", "aud": ["x", "api"], "exp": now + 60, "nbf": now, "iat": now})).is_ok());
    }

    #[test]
    fn time_claims_are_checked_with_bounded_skew() {
        let now = NOW / 1000;
        let base = |extra: Value| {
            let mut c = json!({"iss": "https://issuer", "aud": "api", "exp": now + 60});
            for (k, v) in extra.as_object().expect("object") {
                c[k] = v.clone();
            }
            check(c)
        };
        assert_eq!(
            base(json!({"exp": now - 10})).map(|_| ()),
            Ok(()),
            "within skew"
        );
        assert_eq!(
            base(json!({"exp": now - 31})).map(|_| ()),
            Err(Reason::Expired)
        );
        assert_eq!(
            base(json!({"nbf": now + 60})).map(|_| ()),
            Err(Reason::NotYetValid)
        );
        assert_eq!(base(json!({"nbf": now + 20})).map(|_| ()), Ok(()));
        assert_eq!(
            base(json!({"iat": now + 3600})).map(|_| ()),
            Err(Reason::IssuedInFuture)
        );
        assert_eq!(
            base(json!({"exp": "tomorrow"})).map(|_| ()),
            Err(Reason::Malformed)
        );
        assert_eq!(
            base(json!({"exp": 1e300})).map(|_| ()),
            Err(Reason::Malformed)
        );
        assert_eq!(
            check(json!({"iss": "https://issuer", "aud": "api"})).map(|_| ()),
            Err(Reason::MissingExpiry)
        );
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let exp = NOW / 1000 + 60;
        assert_eq!(
            check(json!({"iss": "https://other", "aud": "api", "exp": exp})).map(|_| ()),
            Err(Reason::Issuer)
        );
        assert_eq!(
            check(json!({"iss": "https://issuer", "aud": "web", "exp": exp})).map(|_| ()),
            Err(Reason::Audience)
        );
        assert_eq!(
            check(json!({"iss": "https://issuer", "exp": exp})).map(|_| ()),
            Err(Reason::Audience)
        );
        assert!(check_claims(&json!({"iss": "i", "exp": exp}), "i", &[], NOW, 0).is_ok());
        assert_eq!(check(json!([1, 2])).map(|_| ()), Err(Reason::Malformed));
    }

    #[test]
    fn header_algorithms_none_and_unknown_are_refused_early() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(header_algorithm(&none), Err(Reason::Algorithm));
        let rs = format!("{}.{}.sig", b64(r#"{"alg":"RS256","kid":"k"}"#), b64("{}"));
        assert_eq!(header_algorithm(&rs), Ok(Algorithm::RS256));
        assert_eq!(header_algorithm("garbage"), Err(Reason::Malformed));
        assert_eq!(header_algorithm(""), Err(Reason::Malformed));
    }

    #[test]
    fn claims_are_found_by_path() {
        let c = json!({"a": {"b": "x"}, "a.c": 1, "n": 5, "t": true});
        assert_eq!(claim(&c, "a.b"), Some(&json!("x")));
        assert_eq!(claim(&c, "a.c"), Some(&json!(1)));
        assert_eq!(claim(&c, "a.z"), None);
        assert_eq!(claim(&c, "n").and_then(claim_text), Some("5".to_owned()));
        assert_eq!(claim(&c, "t").and_then(claim_text), Some("true".to_owned()));
    }

    fn hmac_provider(algs: Vec<JwtAlgorithm>) -> JwtProvider {
        let secret =
            base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef0123456789abcdef");
        JwtProvider::build(
            &JwtConfig {
                issuer: "i".into(),
                audiences: vec![],
                algorithms: algs,
                keys: JwtKeys::Hmac(secret),
                jwks_cache_ms: 1,
                jwks_max_staleness_ms: 1,
                clock_skew_ms: 0,
                token_from: CredentialSource::default(),
                claims_to_headers: vec![ClaimToHeader {
                    claim: "sub".into(),
                    header: "x-user".into(),
                }],
                consumer_claim: "sub".into(),
                organization_claim: "org".into(),
                groups_claim: "groups".into(),
            },
            |_| Err("no remote".into()),
        )
        .expect("provider")
    }

    #[tokio::test]
    async fn hmac_tokens_verify_and_are_cached_with_their_times() {
        let provider = hmac_provider(vec![JwtAlgorithm::HS256]);
        let key = jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let claims = json!({"iss": "i", "sub": "alice", "org": "A", "groups": "a b", "exp": NOW / 1000 + 10});
        let token =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
                .expect("token");
        let now = Instant::now();
        let v = provider.verify_at(&token, NOW, now).await.expect("valid");
        assert_eq!(v.identity.consumer.as_deref(), Some("alice"));
        assert_eq!(v.identity.organization.as_deref(), Some("A"));
        assert_eq!(v.identity.groups.len(), 2);
        assert_eq!(v.headers[0].1, "alice");
        // Cached, but expiry still applies.
        assert!(provider.verify_at(&token, NOW + 5_000, now).await.is_ok());
        assert_eq!(
            provider
                .verify_at(&token, NOW + 11_000, now)
                .await
                .map(|_| ()),
            Err(Reason::Expired)
        );
        // A tampered payload fails the signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"iss": "i", "sub": "admin", "exp": NOW / 1000 + 10}).to_string());
        parts[1] = &forged;
        assert_eq!(
            provider
                .verify_at(&parts.join("."), NOW, now)
                .await
                .map(|_| ()),
            Err(Reason::Signature)
        );
    }

    #[tokio::test]
    async fn algorithms_outside_the_list_are_refused() {
        let provider = hmac_provider(vec![JwtAlgorithm::HS512]);
        let key = jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &json!({"iss": "i", "exp": NOW / 1000 + 10}),
            &key,
        )
        .expect("token");
        assert_eq!(
            provider
                .verify_at(&token, NOW, Instant::now())
                .await
                .map(|_| ()),
            Err(Reason::Algorithm)
        );
    }

    proptest::proptest! {
        /// Untrusted tokens never panic the verifier and never pass.
        #[test]
        fn arbitrary_tokens_are_refused_without_panics(
            header in "[ -~]{0,80}",
            payload in "[ -~]{0,200}",
            signature in "[A-Za-z0-9_-]{0,90}",
            raw in "\\PC{0,300}",
        ) {
            let provider = hmac_provider(vec![JwtAlgorithm::HS256]);
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            let token = format!("{}.{}.{signature}", b64(&header), b64(&payload));
            for t in [token.as_str(), raw.as_str()] {
                let outcome = runtime.block_on(provider.verify_at(t, NOW, Instant::now()));
                proptest::prop_assert!(outcome.is_err());
            }
        }
    }

    #[test]
    fn hmac_algorithms_need_an_hmac_secret() {
        let built = JwtProvider::build(
            &JwtConfig {
                issuer: "i".into(),
                audiences: vec![],
                algorithms: vec![JwtAlgorithm::RS256, JwtAlgorithm::HS256],
                keys: JwtKeys::Jwks(r#"{"keys":[]}"#.into()),
                jwks_cache_ms: 1,
                jwks_max_staleness_ms: 1,
                clock_skew_ms: 0,
                token_from: CredentialSource::default(),
                claims_to_headers: vec![],
                consumer_claim: "sub".into(),
                organization_claim: "org".into(),
                groups_claim: "groups".into(),
            },
            |_| Err("no remote".into()),
        );
        assert!(built.is_err());
    }
}
