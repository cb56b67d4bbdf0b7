//! What `ferrogate demo` prepares before the gateway starts: a copy of
//! `examples/` adapted to this run, a CA and a serving certificate, an ES256
//! signing key and ready-made JWTs.
//!
//! The examples are written for a shop whose secrets would come from a
//! cluster. The demo cannot ship private keys that anyone could use, so each
//! run makes its own and writes a copy of the manifests that trusts them:
//!
//! - every `kubernetes.io/tls` Secret named by a TlsCertificate gets a fresh
//!   certificate for that TlsCertificate's hosts, signed by a fresh demo CA
//!   (`ca.pem`, for `curl --cacert`);
//! - every AuthPolicy with authentication gets, first in its method list, a
//!   JWT provider with an inline JWKS holding this run's public key, so the
//!   tokens minted here are accepted (API keys keep working too);
//! - URL backends on the sample services' default ports are moved when the
//!   services run on other ports (`--services-port-base`).
//!
//! The rewriting is a pure function over parsed documents
//! ([`rewrite_documents`]); key and certificate generation wrap `ring` and
//! `rcgen`.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The issuer of the demo's tokens.
pub const ISSUER: &str = "https://login.shop.localhost/";
/// The audience of the demo's tokens.
pub const AUDIENCE: &str = "shop";
/// How long minted tokens are valid.
pub const TOKEN_LIFETIME_SECS: i64 = 24 * 3600;

/// A certificate authority made for one demo run.
pub struct DemoCa {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl DemoCa {
    /// Generates a fresh CA (P-256, valid for the run and a bit more).
    pub fn generate() -> Result<DemoCa> {
        let key = KeyPair::generate().context("generating the demo CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .context("building the demo CA parameters")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Ferrogate demo CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .context("self-signing the demo CA")?;
        Ok(DemoCa {
            params,
            key,
            cert_pem: cert.pem(),
        })
    }

    /// Issues a serving certificate for `hosts`; returns (certificate,
    /// private key) in PEM.
    pub fn issue(&self, hosts: &[String]) -> Result<(String, String)> {
        let key = KeyPair::generate().context("generating a serving key")?;
        let mut params = CertificateParams::new(hosts.to_vec())
            .with_context(|| format!("building a certificate for {hosts:?}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts
                .first()
                .map(String::as_str)
                .unwrap_or("ferrogate-demo"),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing the certificate for {hosts:?}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// An ES256 key that signs the demo's JWTs.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// The key id (`kid`) in tokens and in the JWKS.
    pub kid: String,
}

/// The identity a minted token carries.
#[derive(Debug, Clone)]
pub struct TokenClaims<'a> {
    /// Consumer name (`sub`).
    pub subject: &'a str,
    /// Organization (`org`).
    pub organization: &'a str,
    /// Groups (`groups`).
    pub groups: &'a [&'a str],
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenSigner {
    /// Generates a fresh P-256 key.
    pub fn generate(kid: impl Into<String>) -> Result<TokenSigner> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("generating the demo's JWT signing key failed"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("loading the demo's JWT signing key: {e}"))?;
        Ok(TokenSigner {
            key,
            rng,
            kid: kid.into(),
        })
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> Value {
        // An uncompressed P-256 point: 0x04, then x and y (32 bytes each).
        let point = self.key.public_key().as_ref();
        let coordinates = point.get(1..).unwrap_or_default();
        let (x, y) = coordinates.split_at(coordinates.len() / 2);
        json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": b64(x),
            "y": b64(y),
        }]})
    }

    /// A signed token for `claims`, issued at `now` (unix seconds).
    pub fn mint(&self, claims: &TokenClaims<'_>, now: i64) -> Result<String> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let payload = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": claims.subject,
            "org": claims.organization,
            "groups": claims.groups,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow!("signing a demo token failed"))?;
        Ok(format!("{signing_input}.{}", b64(signature.as_ref())))
    }

    /// The AuthPolicy method that trusts this key.
    pub fn jwt_method(&self) -> Value {
        json!({"jwt": {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["ES256"],
            "jwks": self.jwks().to_string(),
        }})
    }
}

/// Issues (certificate, key) PEM for a list of hosts.
pub type IssueFn<'a> = &'a dyn Fn(&[String]) -> Result<(String, String)>;

/// How [`rewrite_documents`] adapts the examples.
pub struct Rewrite<'a> {
    /// Loopback ports to move: (from, to).
    pub ports: Vec<(u16, u16)>,
    /// Issues (certificate, key) PEM for a list of hosts.
    pub issue: IssueFn<'a>,
    /// The authentication method put first in every AuthPolicy.
    pub jwt_method: Value,
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// (namespace, name) of an object; namespace `default` when unset.
fn object_key(doc: &Value) -> Option<(String, String)> {
    let name = str_at(doc, "/metadata/name")?;
    let namespace = str_at(doc, "/metadata/namespace").unwrap_or("default");
    Some((namespace.to_owned(), name.to_owned()))
}

/// Replaces `127.0.0.1:FROM` (a whole port number) by `127.0.0.1:TO` in
/// every string of `value`.
fn move_ports(value: &mut Value, ports: &[(u16, u16)]) {
    match value {
        Value::String(text) => {
            for (from, to) in ports {
                let needle = format!("127.0.0.1:{from}");
                let mut out = String::with_capacity(text.len());
                let mut rest = text.as_str();
                while let Some(at) = rest.find(&needle) {
                    let after = &rest[at + needle.len()..];
                    out.push_str(&rest[..at]);
                    if after.starts_with(|c: char| c.is_ascii_digit()) {
                        out.push_str(&needle);
                    } else {
                        out.push_str(&format!("127.0.0.1:{to}"));
                    }
                    rest = after;
                }
                out.push_str(rest);
                *text = out;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| move_ports(v, ports)),
        Value::Object(map) => map.values_mut().for_each(|v| move_ports(v, ports)),
        _ => {}
    }
}

/// Adapts parsed example documents to one demo run (see the module docs).
pub fn rewrite_documents(docs: &mut [Value], rewrite: &Rewrite<'_>) -> Result<()> {
    // Hosts of every TLS Secret that a TlsCertificate names.
    let mut tls_hosts: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for doc in docs.iter() {
        if doc["kind"] != "TlsCertificate" {
            continue;
        }
        let (Some((namespace, _)), Some(secret)) =
            (object_key(doc), str_at(doc, "/spec/secretName"))
        else {
            continue;
        };
        let hosts = doc
            .pointer("/spec/hosts")
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        tls_hosts
            .entry((namespace, secret.to_owned()))
            .or_default()
            .extend::<Vec<String>>(hosts);
    }

    for doc in docs.iter_mut() {
        if !rewrite.ports.is_empty() {
            move_ports(doc, &rewrite.ports);
        }
        match doc["kind"].as_str() {
            Some("Secret") if doc["type"] == "kubernetes.io/tls" => {
                let Some(hosts) = object_key(doc).and_then(|k| tls_hosts.get(&k)) else {
                    continue;
                };
                if hosts.is_empty() {
                    continue;
                }
                let (cert, key) = (rewrite.issue)(hosts)?;
                if let Some(map) = doc.as_object_mut() {
                    map.remove("data");
                    map.insert(
                        "stringData".into(),
                        json!({"tls.crt": cert, "tls.key": key}),
                    );
                }
            }
            Some("AuthPolicy") => {
                if let Some(methods) = doc
                    .pointer_mut("/spec/authentication/methods")
                    .and_then(Value::as_array_mut)
                {
                    methods.insert(0, rewrite.jwt_method.clone());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The YAML files of a folder, sorted by name (not recursive, like the
/// examples).
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .yaml files", dir.display());
    }
    Ok(files)
}

/// Copies the YAML files of `from` into `to`, adapted by `rewrite`. Every
/// document keeps its file; comments are not kept (each file says where it
/// came from instead).
pub fn copy_examples(from: &Path, to: &Path, rewrite: &Rewrite<'_>) -> Result<()> {
    let files = yaml_files(from)?;
    // Parse everything first: a TlsCertificate in one file names a Secret
    // in another.
    let mut parsed: Vec<(PathBuf, usize)> = Vec::new();
    let mut docs: Vec<Value> = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut count = 0;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            docs.push(value);
            count += 1;
        }
        parsed.push((file.clone(), count));
    }
    rewrite_documents(&mut docs, rewrite)?;
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut docs = docs.into_iter();
    for (file, count) in parsed {
        let name = file.file_name().unwrap_or_default();
        let mut out = format!(
            "# Written by `ferrogate demo` from {} (this run's certificate, JWT key and ports).\n",
            file.display()
        );
        for doc in docs.by_ref().take(count) {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&doc).context("writing YAML")?);
        }
        let target = to.join(name);
        std::fs::write(&target, out).with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(yaml: &str) -> Vec<Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| Value::deserialize(d).unwrap_or(Value::Null))
            .filter(|v| !v.is_null())
            .collect()
    }

    const EXAMPLE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: shop-tls, namespace: shop}
type: kubernetes.io/tls
stringData: {tls.crt: OLD, tls.key: OLD}
---
apiVersion: v1
kind: Secret
metadata: {name: other, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: T0xE, tls.key: T0xE}
---
apiVersion: ferrogate.dev/v1alpha1
kind: TlsCertificate
metadata: {name: shop, namespace: shop}
spec: {hosts: [shop.localhost, "*.shop.localhost"], secretName: shop-tls}
---
apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {name: r, namespace: shop}
spec:
  hosts: [shop.localhost]
  rules:
  - backends: [{url: "http://127.0.0.1:9101"}, {url: "http://127.0.0.1:91011/x"}]
  - backends: [{url: "http://127.0.0.1:9102/api"}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: p, namespace: shop}
spec:
  targetRefs: [{name: r}]
  authentication:
    methods: [{apiKey: {secretSelector: {a: b}}}]
"#;

    #[test]
    fn rewrites_certificates_ports_and_auth() -> Result<()> {
        let mut docs = docs(EXAMPLE);
        let issue = |hosts: &[String]| Ok((format!("CERT {}", hosts.join(",")), "KEY".to_owned()));
        let rewrite = Rewrite {
            ports: vec![(9101, 20001), (9102, 20002)],
            issue: &issue,
            jwt_method: json!({"jwt": {"issuer": "i"}}),
        };
        rewrite_documents(&mut docs, &rewrite)?;
        assert_eq!(
            docs[0]["stringData"]["tls.crt"],
            "CERT shop.localhost,*.shop.localhost"
        );
        // A TLS Secret no TlsCertificate names is left alone.
        assert_eq!(docs[1]["data"]["tls.crt"], "T0xE");
        let rules = &docs[3]["spec"]["rules"];
        assert_eq!(rules[0]["backends"][0]["url"], "http://127.0.0.1:20001");
        assert_eq!(rules[0]["backends"][1]["url"], "http://127.0.0.1:91011/x");
        assert_eq!(rules[1]["backends"][0]["url"], "http://127.0.0.1:20002/api");
        let methods = &docs[4]["spec"]["authentication"]["methods"];
        assert_eq!(methods[0]["jwt"]["issuer"], "i");
        assert!(methods[1]["apiKey"].is_object());
        Ok(())
    }

    #[test]
    fn minted_tokens_verify_with_the_published_key() -> Result<()> {
        use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
        let signer = TokenSigner::generate("k1")?;
        let token = signer.mint(
            &TokenClaims {
                subject: "alice",
                organization: "A",
                groups: &["buyers"],
            },
            1_800_000_000,
        )?;
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
        assert_eq!(payload["org"], "A");
        assert_eq!(payload["exp"], 1_800_000_000 + TOKEN_LIFETIME_SECS);
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0])?)?;
        assert_eq!(header["kid"], "k1");

        // Rebuild the public key from the JWKS, as a verifier would.
        let jwk = &signer.jwks()["keys"][0];
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap_or_default())?;
        let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap_or_default())?;
        assert_eq!((x.len(), y.len()), (32, 32));
        let mut point = vec![4u8];
        point.extend(x);
        point.extend(y);
        let signature = URL_SAFE_NO_PAD.decode(parts[2])?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .map_err(|_| anyhow!("the signature does not verify"))?;
        Ok(())
    }

    #[test]
    fn the_ca_issues_certificates_for_the_hosts() -> Result<()> {
        let ca = DemoCa::generate()?;
        let (cert, key) = ca.issue(&["shop.localhost".into(), "*.shop.localhost".into()])?;
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        Ok(())
    }
}
