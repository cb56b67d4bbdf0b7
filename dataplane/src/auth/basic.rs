//! HTTP basic authentication against htpasswd entries (bcrypt `$2a$`,
//! `$2b$`, `$2y$`; SHA-crypt `$5$`, `$6$`; the compiler refuses the rest).
//!
//! Password hashes are slow on purpose, so checks run on the blocking pool,
//! at most one per core at a time, and outcomes are remembered for ten
//! minutes under a keyed digest of (user, password, stored hash): a client
//! sending the same credentials on every request pays the hash once, and a
//! changed htpasswd entry is a different cache key. An unknown user is
//! checked against a real hash too, so timing does not reveal which users
//! exist.

use super::{Identity, Reason};
use base64::Engine;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use sha_crypt::PasswordVerifier;
use snapshot::model::BasicConfig;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest `Authorization: Basic` credential accepted.
const MAX_CREDENTIAL_BYTES: usize = 4096;
/// Longest wait for a free hashing slot before refusing (503).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Password checks shared by all basic-auth methods (outlives snapshots).
pub struct PasswordCheck {
    permits: tokio::sync::Semaphore,
    outcomes: moka::sync::Cache<[u8; 32], bool>,
    key: [u8; 32],
}

impl Default for PasswordCheck {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        PasswordCheck {
            permits: tokio::sync::Semaphore::new(cores),
            outcomes: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            key: rand::random(),
        }
    }
}

impl PasswordCheck {
    /// Whether `password` matches `hash`.
    pub async fn verify(&self, user: &str, password: &str, hash: Arc<str>) -> Result<bool, Reason> {
        let mut h = Sha256::new();
        h.update(self.key);
        for part in [user.as_bytes(), password.as_bytes(), hash.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let cache_key: [u8; 32] = h.finalize().into();
        if let Some(ok) = self.outcomes.get(&cache_key) {
            return Ok(ok);
        }
        let _permit = tokio::time::timeout(QUEUE_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| Reason::Busy)?
            .map_err(|_| Reason::Busy)?;
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || check_hash(&password, &hash))
            .await
            .unwrap_or(false);
        self.outcomes.insert(cache_key, ok);
        Ok(ok)
    }
}

/// Verifies a password against one htpasswd hash.
pub fn check_hash(password: &str, hash: &str) -> bool {
    if hash.starts_with("$2") {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        sha_crypt::ShaCrypt::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok()
    } else {
        false
    }
}

/// One basic-auth method.
pub struct Basic {
    users: HashMap<String, Arc<str>>,
    /// Any stored hash: what unknown users are checked against.
    decoy: Option<Arc<str>>,
    /// The `WWW-Authenticate` challenge.
    pub challenge: HeaderValue,
}

impl Basic {
    /// Builds the user table.
    pub fn build(config: &BasicConfig) -> Result<Basic, String> {
        let users: HashMap<String, Arc<str>> = config
            .users
            .iter()
            .map(|(u, h)| (u.clone(), Arc::from(h.as_str())))
            .collect();
        let decoy = config.users.first().map(|(_, h)| Arc::from(h.as_str()));
        let challenge = HeaderValue::from_str(&format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            config.realm
        ))
        .map_err(|_| format!("realm {:?} is not a header value", config.realm))?;
        Ok(Basic {
            users,
            decoy,
            challenge,
        })
    }

    /// Checks the credentials of an `Authorization: Basic ...` value.
    pub async fn authenticate(
        &self,
        credential: &str,
        check: &PasswordCheck,
    ) -> Result<Identity, Reason> {
        let (user, password) = parse(credential).ok_or(Reason::Malformed)?;
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (self.decoy.clone().ok_or(Reason::BadPassword)?, false),
        };
        let ok = check.verify(&user, &password, hash).await?;
        if ok && known {
            Ok(Identity {
                consumer: Some(Arc::from(user.as_str())),
                organization: None,
                groups: Arc::new([]),
                claims: None,
                method: "basic",
            })
        } else {
            Err(Reason::BadPassword)
        }
    }
}

/// `user:password` from the base64 part of a basic credential.
fn parse(credential: &str) -> Option<(String, String)> {
    if credential.len() > MAX_CREDENTIAL_BYTES {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(credential.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_parsed() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            parse(&b64("alice:pw:with:colons")),
            Some(("alice".into(), "pw:with:colons".into()))
        );
        assert_eq!(parse(&b64(":pw")), None);
        assert_eq!(parse(&b64("nocolon")), None);
        assert_eq!(parse("!!!"), None);
    }

    #[test]
    fn bcrypt_and_sha_crypt_hashes_verify() {
        let bcrypt_hash = bcrypt::hash("secret", 4).expect("hash");
        assert!(check_hash("secret", &bcrypt_hash));
        assert!(!check_hash("wrong", &bcrypt_hash));
        // From `openssl passwd -6 -salt saltsalt secret`.
        let sha512 = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        assert!(check_hash("secret", sha512));
        assert!(!check_hash("wrong", sha512));
        let sha256 = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
        assert!(check_hash("secret", sha256));
        assert!(!check_hash("secret", "$apr1$x$y"));
        assert!(!check_hash("secret", "secret"));
    }

    #[tokio::test]
    async fn users_authenticate_and_outcomes_are_cached() {
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let basic = Basic::build(&BasicConfig {
            realm: "shop".into(),
            users: vec![("alice".into(), hash)],
        })
        .expect("basic");
        assert_eq!(basic.challenge, "Basic realm=\"shop\", charset=\"UTF-8\"");
        let check = PasswordCheck::default();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let id = basic
            .authenticate(&b64("alice:pw"), &check)
            .await
            .expect("ok");
        assert_eq!(id.consumer.as_deref(), Some("alice"));
        assert!(basic.authenticate(&b64("alice:pw"), &check).await.is_ok());
        assert_eq!(
            basic
                .authenticate(&b64("alice:no"), &check)
                .await
                .map(|_| ()),
            Err(Reason::BadPassword)
        );
        assert_eq!(
            basic.authenticate(&b64("bob:pw"), &check).await.map(|_| ()),
            Err(Reason::BadPassword)
        );
    }
}
