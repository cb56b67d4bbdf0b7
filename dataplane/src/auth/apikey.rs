//! API keys: the presented key's SHA-256 digest is looked up among the
//! digests the compiler put in the snapshot (the keys themselves never
//! reach the dataplane, and are never logged).
//!
//! Timing: the lookup hashes a digest the caller cannot steer (finding a
//! key whose digest starts with chosen bytes is a preimage search), and the
//! final comparison is constant-time, so response times say nothing about
//! the configured keys.

use super::Identity;
use crds::auth::CredentialSource;
use sha2::{Digest, Sha256};
use snapshot::model::ApiKeyConfig;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Longest key accepted.
const MAX_KEY_BYTES: usize = 4096;

/// The API keys of one method.
pub struct ApiKeys {
    /// Where the key is read.
    pub key_from: CredentialSource,
    by_digest: HashMap<[u8; 32], Identity>,
}

impl ApiKeys {
    /// Builds the lookup table; an entry whose digest is not 64 hex digits
    /// is an error (the snapshot is corrupt).
    pub fn build(config: &ApiKeyConfig) -> Result<ApiKeys, String> {
        let mut by_digest = HashMap::with_capacity(config.keys.len());
        for entry in &config.keys {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&entry.sha256, &mut digest)
                .map_err(|_| format!("API key of {:?}: bad digest", entry.consumer))?;
            by_digest.insert(
                digest,
                Identity {
                    consumer: Some(Arc::from(entry.consumer.as_str())),
                    organization: entry.organization.as_deref().map(Arc::from),
                    groups: entry.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                    claims: None,
                    method: "api-key",
                },
            );
        }
        Ok(ApiKeys {
            key_from: config.key_from.clone(),
            by_digest,
        })
    }

    /// The consumer owning `key`, if any.
    pub fn authenticate(&self, key: &str) -> Option<Identity> {
        let key = key.trim_ascii();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let (stored, identity) = self.by_digest.get_key_value(&digest)?;
        bool::from(stored.ct_eq(&digest)).then(|| identity.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot::model::ApiKeyEntry;

    #[test]
    fn keys_are_matched_by_digest() {
        let keys = ApiKeys::build(&ApiKeyConfig {
            key_from: CredentialSource::default(),
            keys: vec![ApiKeyEntry {
                sha256: hex::encode(Sha256::digest(b"s3cret")),
                consumer: "shop".into(),
                groups: vec!["buyers".into()],
                organization: Some("A".into()),
            }],
        })
        .expect("keys");
        let id = keys.authenticate("s3cret").expect("known key");
        assert_eq!(id.consumer.as_deref(), Some("shop"));
        assert_eq!(id.organization.as_deref(), Some("A"));
        assert_eq!(id.groups[0].as_ref(), "buyers");
        assert!(keys.authenticate(" s3cret ").is_some());
        assert!(keys.authenticate("s3cret2").is_none());
        assert!(keys.authenticate("").is_none());
        assert!(ApiKeys::build(&ApiKeyConfig {
            key_from: CredentialSource::default(),
            keys: vec![ApiKeyEntry {
                sha256: "zz".into(),
                consumer: "x".into(),
                groups: vec![],
                organization: None,
            }],
        })
        .is_err());
    }
}
