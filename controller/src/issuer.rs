//! Certificate issuance for TlsCertificates with `issuer`: the controller
//! signs a certificate for the resource's hosts with the CA from
//! `issuer.caSecretName`, writes it to `secretName`, and issues a new one
//! (with a new key) `renewBefore` its expiry.
//!
//! ```text
//! TlsCertificate{issuer} + CA Secret + target Secret (all from the index)
//!   └─► plan (pure): Issue(why) | RenewAt(time)
//!         Issue when the Secret is missing, was issued for other hosts /
//!         CA / key type / validity (annotation `ferrogate.dev/issued-for`),
//!         does not hold a servable certificate, or renewal time has come
//!   └─► issue (pure, rcgen): new key, leaf signed by the CA
//!   └─► server-side apply of the Secret (type kubernetes.io/tls: tls.crt =
//!         leaf + CA chain, tls.key, ca.crt), owned by the TlsCertificate
//!   └─► the written Secret goes straight into the index ─► recompile
//! ```
//!
//! Only the leader issues (two replicas would each write a different key).
//! The CA Secret's `tls.key` may be PKCS#8, PKCS#1 or SEC1 for the checks, but signing
//! (rcgen with ring) needs PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`).
//! Issued keys are ECDSA P-256; `Rsa2048` is refused with a clear reason
//! (ring cannot generate RSA keys).

use crate::compiler::unix_now;
use crate::index::{stores, SharedIndex};
use crds::tls::{Issuer, KeyAlgorithm};
use crds::TlsCertificate;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use sha2::{Digest, Sha256};
use snapshot::certs::{check_certificate, unix_to_rfc3339};
use snapshot::compile::{ObjectKey, KIND_TLS_CERTIFICATE};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Annotation on issued Secrets: what they were issued for (a hash of the
/// hosts, the CA certificate, the key type and the validity).
pub const ISSUED_FOR_ANNOTATION: &str = "ferrogate.dev/issued-for";
/// Default validity: 90 days.
pub const DEFAULT_VALIDITY_SECS: i64 = 2160 * 3600;
/// Default renew-before: 30 days.
pub const DEFAULT_RENEW_BEFORE_SECS: i64 = 720 * 3600;
/// Issued certificates start this long before the moment of issuance, for
/// clients whose clocks lag.
const BACKDATE_SECS: i64 = 60;

/// Validity of issued certificates in seconds.
pub fn validity_secs(issuer: &Issuer) -> i64 {
    issuer
        .validity
        .as_deref()
        .and_then(crds::common::parse_duration_ms)
        .map(|ms| (ms / 1000) as i64)
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_VALIDITY_SECS)
}

/// Renew-before in seconds, always shorter than the validity (else every
/// certificate would be due at once: then half the validity).
pub fn renew_before_secs(issuer: &Issuer) -> i64 {
    let validity = validity_secs(issuer);
    let renew = issuer
        .renew_before
        .as_deref()
        .and_then(crds::common::parse_duration_ms)
        .map(|ms| (ms / 1000) as i64)
        .unwrap_or(DEFAULT_RENEW_BEFORE_SECS.min(validity / 3));
    if renew <= 0 || renew >= validity {
        validity / 2
    } else {
        renew
    }
}

/// What a certificate is issued for, as stored in
/// [`ISSUED_FOR_ANNOTATION`].
pub fn issued_for(hosts: &[String], issuer: &Issuer, ca_cert_pem: &[u8]) -> String {
    let mut hosts: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    hosts.sort();
    hosts.dedup();
    let mut hasher = Sha256::new();
    hasher.update(hosts.join(",").as_bytes());
    hasher.update(b"\n");
    hasher.update(format!(
        "{:?}",
        issuer.key_algorithm.unwrap_or(KeyAlgorithm::EcdsaP256)
    ));
    hasher.update(b"\n");
    hasher.update(validity_secs(issuer).to_string().as_bytes());
    hasher.update(b"\n");
    hasher.update(Sha256::digest(ca_cert_pem));
    hex::encode(&hasher.finalize()[..16])
}

/// What to do about one TlsCertificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Issue now, for this reason.
    Issue(String),
    /// The current certificate is good until this time (seconds since the
    /// epoch), when it is renewed.
    RenewAt(i64),
}

fn secret_bytes<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

/// Decides whether the Secret needs a new certificate.
pub fn plan(
    hosts: &[String],
    issuer: &Issuer,
    issued_for: &str,
    secret: Option<&Secret>,
    now: i64,
) -> Plan {
    let Some(secret) = secret else {
        return Plan::Issue("the Secret does not exist".into());
    };
    let annotation = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ISSUED_FOR_ANNOTATION));
    if annotation.map(String::as_str) != Some(issued_for) {
        return Plan::Issue(
            "the Secret was not issued for these hosts, CA, key type and validity".into(),
        );
    }
    let (Some(chain), Some(key)) = (
        secret_bytes(secret, "tls.crt"),
        secret_bytes(secret, "tls.key"),
    ) else {
        return Plan::Issue("the Secret lacks tls.crt or tls.key".into());
    };
    match check_certificate(chain, key, hosts, now) {
        Err(error) => Plan::Issue(format!("the Secret's certificate cannot serve: {error}")),
        Ok(info) => {
            let renew_at = info.not_after - renew_before_secs(issuer);
            if now >= renew_at {
                Plan::Issue(format!(
                    "renewal time {} has come",
                    unix_to_rfc3339(renew_at)
                ))
            } else {
                Plan::RenewAt(renew_at)
            }
        }
    }
}

/// Why issuance failed: a condition reason and a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IssueError {
    /// CamelCase reason for the `Issued=False` condition.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

fn issue_error(reason: &'static str, message: impl Into<String>) -> IssueError {
    IssueError {
        reason,
        message: message.into(),
    }
}

/// A newly issued certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf, then the CA chain (PEM).
    pub chain_pem: String,
    /// The new private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The CA certificate(s) (PEM), for `ca.crt`.
    pub ca_pem: String,
    /// Expiry, seconds since the epoch.
    pub not_after: i64,
}

/// Issues a certificate for `hosts` from a CA (PEM certificate chain, its
/// certificate first, and PKCS#8 key), valid from a minute before `now` for
/// `validity_secs`.
pub fn issue(
    ca_chain_pem: &[u8],
    ca_key_pem: &[u8],
    hosts: &[String],
    key_algorithm: KeyAlgorithm,
    validity_secs: i64,
    now: i64,
) -> Result<Issued, IssueError> {
    if key_algorithm == KeyAlgorithm::Rsa2048 {
        return Err(issue_error(
            "UnsupportedKeyAlgorithm",
            "spec.issuer.keyAlgorithm: Rsa2048 keys cannot be generated by this build (ring); use EcdsaP256",
        ));
    }
    check_certificate(ca_chain_pem, ca_key_pem, &[], now)
        .map_err(|e| issue_error("InvalidCA", format!("the CA Secret: {e}")))?;
    let ca_chain = std::str::from_utf8(ca_chain_pem)
        .map_err(|_| issue_error("InvalidCA", "the CA Secret's tls.crt is not UTF-8 PEM"))?;
    let ca_key_text = std::str::from_utf8(ca_key_pem)
        .map_err(|_| issue_error("InvalidCA", "the CA Secret's tls.key is not UTF-8 PEM"))?;
    let ca_key = rcgen::KeyPair::from_pem(ca_key_text).map_err(|e| {
        issue_error(
            "InvalidCA",
            format!(
                "the CA Secret's tls.key cannot sign ({e}); it must be an unencrypted PKCS#8 key \
                 (BEGIN PRIVATE KEY): convert with `openssl pkcs8 -topk8 -nocrypt`"
            ),
        )
    })?;
    let ca = rcgen::Issuer::from_ca_cert_pem(ca_chain, ca_key)
        .map_err(|e| issue_error("InvalidCA", format!("the CA Secret's tls.crt: {e}")))?;

    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| issue_error("InvalidHost", format!("spec.hosts: {e}")))?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let start = (now - BACKDATE_SECS).max(0) as u64;
    let end = (now + validity_secs).max(0) as u64;
    params.not_before = epoch + Duration::from_secs(start);
    params.not_after = epoch + Duration::from_secs(end);
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = hosts.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.clone());
    }
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let mut serial = Sha256::new();
    serial.update(now.to_be_bytes());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| issue_error("IssueFailed", format!("generating a key: {e}")))?;
    serial.update(key.public_key_raw());
    let mut serial = serial.finalize()[..16].to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let leaf = params
        .signed_by(&key, &ca)
        .map_err(|e| issue_error("IssueFailed", format!("signing: {e}")))?;

    let mut chain_pem = leaf.pem();
    if !chain_pem.ends_with('\n') {
        chain_pem.push('\n');
    }
    chain_pem.push_str(ca_chain.trim_end());
    chain_pem.push('\n');
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
        ca_pem: format!("{}\n", ca_chain.trim_end()),
        not_after: now + validity_secs,
    })
}

/// Outcome of issuance: `Ok(message)` or `Err((reason, message))`.
pub type Outcome = Result<String, (String, String)>;

/// Outcome of issuance per TlsCertificate, for the status writer.
#[derive(Debug, Default)]
pub struct IssuerStates {
    outcomes: Mutex<BTreeMap<ObjectKey, Outcome>>,
    changed: watch::Sender<u64>,
}

impl IssuerStates {
    /// The last outcome for a resource.
    pub fn outcome(&self, key: &ObjectKey) -> Option<Outcome> {
        let map = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    fn set(&self, key: &ObjectKey, outcome: Outcome) {
        let mut map = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key) != Some(&outcome) {
            map.insert(key.clone(), outcome);
            drop(map);
            self.changed.send_modify(|c| *c += 1);
        }
    }

    fn retain(&self, keep: impl Fn(&ObjectKey) -> bool) {
        let mut map = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| keep(k));
    }

    /// Ticks when an outcome changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// One certificate to look at, copied out of the index.
struct Job {
    key: ObjectKey,
    certificate: TlsCertificate,
    issuer: Issuer,
    ca: Option<Secret>,
    target: Option<Secret>,
}

/// Runs the issuer until `shutdown` turns true; acts only while `leader`.
pub async fn run(
    client: Client,
    shared: Arc<SharedIndex>,
    states: Arc<IssuerStates>,
    mut leader: watch::Receiver<bool>,
    tick: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ferrogate-controller".into(),
            instance: None,
        },
    );
    let mut changes = shared.compile_changes();
    let mut ready = shared.ready();
    tokio::select! {
        _ = ready.wait_for(|s| *s) => {}
        _ = shutdown.wait_for(|s| *s) => return,
    }
    let mut failures: HashMap<ObjectKey, (u32, Instant)> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let mut wake = Instant::now() + tick;
        if *leader.borrow_and_update() {
            let jobs = shared.read(|index| {
                index
                    .tls_certificates
                    .iter()
                    .filter_map(|c| {
                        let issuer = c.spec.issuer.clone()?;
                        let ns = c.metadata.namespace.clone().unwrap_or_default();
                        let name = c.metadata.name.clone().unwrap_or_default();
                        Some(Job {
                            key: ObjectKey::new(KIND_TLS_CERTIFICATE, &ns, &name),
                            ca: index.secret(&ns, &issuer.ca_secret_name).cloned(),
                            target: index.secret(&ns, &c.spec.secret_name).cloned(),
                            certificate: c.clone(),
                            issuer,
                        })
                    })
                    .collect::<Vec<_>>()
            });
            states.retain(|k| jobs.iter().any(|j| j.key == *k));
            for job in jobs {
                if !*leader.borrow() || *shutdown.borrow() {
                    break;
                }
                if let Some((_, until)) = failures.get(&job.key) {
                    if *until > Instant::now() {
                        wake = wake.min(*until);
                        continue;
                    }
                }
                match handle(&client, &shared, &job).await {
                    Ok(Handled { renew_at, issued }) => {
                        failures.remove(&job.key);
                        let ca = format!("{}/{}", job.key.namespace, job.issuer.ca_secret_name);
                        states.set(&job.key, Ok(format!("issued from the CA in Secret {ca}")));
                        if let Some(why) = issued {
                            tracing::info!(certificate = %job.key, why = %why, "issued a certificate");
                            note(
                                &recorder,
                                &job.certificate,
                                EventType::Normal,
                                "Issued",
                                format!(
                                    "issued a new certificate and key into Secret {}: {why}",
                                    job.certificate.spec.secret_name
                                ),
                            )
                            .await;
                        }
                        if let Some(at) = renew_at {
                            let secs = (at - unix_now()).max(0) as u64;
                            wake = wake.min(Instant::now() + Duration::from_secs(secs));
                        }
                    }
                    Err(error) => {
                        let entry = failures
                            .entry(job.key.clone())
                            .or_insert((0, Instant::now()));
                        entry.0 = entry.0.saturating_add(1);
                        let backoff = Duration::from_secs(2u64 << entry.0.min(7));
                        entry.1 = Instant::now() + backoff;
                        wake = wake.min(entry.1);
                        tracing::warn!(certificate = %job.key, reason = error.reason, error = %error.message, "cannot issue");
                        let before = states.outcome(&job.key);
                        let outcome = Err((error.reason.to_owned(), error.message.clone()));
                        if before.as_ref() != Some(&outcome) {
                            note(
                                &recorder,
                                &job.certificate,
                                EventType::Warning,
                                error.reason,
                                error.message.clone(),
                            )
                            .await;
                        }
                        states.set(&job.key, outcome);
                    }
                }
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

struct Handled {
    renew_at: Option<i64>,
    issued: Option<String>,
}

async fn handle(client: &Client, shared: &SharedIndex, job: &Job) -> Result<Handled, IssueError> {
    let ns = &job.key.namespace;
    let Some(ca) = &job.ca else {
        return Err(issue_error(
            "CASecretNotFound",
            format!(
                "spec.issuer.caSecretName: Secret {ns}/{} not found",
                job.issuer.ca_secret_name
            ),
        ));
    };
    let (Some(ca_chain), Some(ca_key)) = (secret_bytes(ca, "tls.crt"), secret_bytes(ca, "tls.key"))
    else {
        return Err(issue_error(
            "InvalidCA",
            format!(
                "spec.issuer.caSecretName: Secret {ns}/{} lacks tls.crt or tls.key",
                job.issuer.ca_secret_name
            ),
        ));
    };
    let hosts = &job.certificate.spec.hosts;
    let fingerprint = issued_for(hosts, &job.issuer, ca_chain);
    let now = unix_now();
    let why = match plan(hosts, &job.issuer, &fingerprint, job.target.as_ref(), now) {
        Plan::RenewAt(at) => {
            return Ok(Handled {
                renew_at: Some(at),
                issued: None,
            })
        }
        Plan::Issue(why) => why,
    };
    let algorithm = job.issuer.key_algorithm.unwrap_or(KeyAlgorithm::EcdsaP256);
    let validity = validity_secs(&job.issuer);
    let (ca_chain, ca_key, hosts_owned) = (ca_chain.to_vec(), ca_key.to_vec(), hosts.clone());
    let issued = tokio::task::spawn_blocking(move || {
        issue(&ca_chain, &ca_key, &hosts_owned, algorithm, validity, now)
    })
    .await
    .map_err(|e| issue_error("IssueFailed", format!("issuing: {e}")))??;

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(job.certificate.spec.secret_name.clone()),
            namespace: Some(ns.clone()),
            annotations: Some(BTreeMap::from([(
                ISSUED_FOR_ANNOTATION.to_owned(),
                fingerprint,
            )])),
            owner_references: job.certificate.controller_owner_ref(&()).map(|mut o| {
                o.block_owner_deletion = None;
                vec![OwnerReference { ..o }]
            }),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(issued.chain_pem.into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(issued.key_pem.into_bytes()),
            ),
            ("ca.crt".to_owned(), ByteString(issued.ca_pem.into_bytes())),
        ])),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply("ferrogate-issuer").force();
    let written = api
        .patch(
            &job.certificate.spec.secret_name,
            &params,
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|e| {
            issue_error(
                "SecretWriteFailed",
                format!(
                    "writing Secret {ns}/{}: {e}",
                    job.certificate.spec.secret_name
                ),
            )
        })?;
    shared.update(|index| index.apply(stores::secrets, written));
    Ok(Handled {
        renew_at: Some(issued.not_after - renew_before_secs(&job.issuer)),
        issued: Some(why),
    })
}

async fn note(
    recorder: &Recorder,
    certificate: &TlsCertificate,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let reference = certificate.object_ref(&());
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Issue".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &reference).await {
        tracing::warn!(error = %error, "cannot record event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn ca() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), key.serialize_pem())
    }

    fn issuer_spec(validity: &str, renew: &str) -> Issuer {
        Issuer {
            ca_secret_name: "ca".into(),
            validity: Some(validity.into()),
            renew_before: Some(renew.into()),
            key_algorithm: None,
        }
    }

    fn secret_of(issued: &Issued, annotation: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    ISSUED_FOR_ANNOTATION.to_owned(),
                    annotation.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (
                    "tls.crt".into(),
                    ByteString(issued.chain_pem.clone().into_bytes()),
                ),
                (
                    "tls.key".into(),
                    ByteString(issued.key_pem.clone().into_bytes()),
                ),
            ])),
            ..Secret::default()
        }
    }

    #[test]
    fn durations_default_and_stay_inside_the_validity() {
        let spec = issuer_spec("2m", "1m50s");
        assert_eq!(validity_secs(&spec), 120);
        assert_eq!(renew_before_secs(&spec), 110);
        assert_eq!(renew_before_secs(&issuer_spec("2m", "5m")), 60);
        let none = Issuer {
            ca_secret_name: "ca".into(),
            validity: None,
            renew_before: None,
            key_algorithm: None,
        };
        assert_eq!(validity_secs(&none), DEFAULT_VALIDITY_SECS);
        assert_eq!(renew_before_secs(&none), DEFAULT_RENEW_BEFORE_SECS);
    }

    #[test]
    fn issues_a_servable_certificate_and_renews_on_schedule() {
        let (ca_cert, ca_key) = ca();
        let hosts = vec!["a.example.com".to_owned(), "*.b.example.com".to_owned()];
        let spec = issuer_spec("2m", "1m50s");
        let issued = issue(
            ca_cert.as_bytes(),
            ca_key.as_bytes(),
            &hosts,
            KeyAlgorithm::EcdsaP256,
            120,
            NOW,
        )
        .expect("issued");
        let info = check_certificate(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            &hosts,
            NOW,
        )
        .expect("servable");
        assert_eq!(info.not_after, NOW + 120);
        assert!(issued.chain_pem.contains(ca_cert.trim_end()));

        let fp = issued_for(&hosts, &spec, ca_cert.as_bytes());
        let secret = secret_of(&issued, &fp);
        assert_eq!(
            plan(&hosts, &spec, &fp, Some(&secret), NOW),
            Plan::RenewAt(NOW + 10)
        );
        assert!(matches!(
            plan(&hosts, &spec, &fp, Some(&secret), NOW + 10),
            Plan::Issue(_)
        ));
        assert!(matches!(
            plan(&hosts, &spec, &fp, None, NOW),
            Plan::Issue(_)
        ));
        let other_hosts = vec!["c.example.com".to_owned()];
        let fp2 = issued_for(&other_hosts, &spec, ca_cert.as_bytes());
        assert!(matches!(
            plan(&other_hosts, &spec, &fp2, Some(&secret), NOW),
            Plan::Issue(_)
        ));

        let again = issue(
            ca_cert.as_bytes(),
            ca_key.as_bytes(),
            &hosts,
            KeyAlgorithm::EcdsaP256,
            120,
            NOW + 10,
        )
        .expect("renewed");
        assert_ne!(again.key_pem, issued.key_pem, "a renewal has a new key");
    }

    #[test]
    fn refuses_bad_cas_and_rsa_with_reasons() {
        let (ca_cert, ca_key) = ca();
        let (_, other_key) = ca();
        let hosts = vec!["a.example.com".to_owned()];
        let err = issue(
            ca_cert.as_bytes(),
            other_key.as_bytes(),
            &hosts,
            KeyAlgorithm::EcdsaP256,
            60,
            NOW,
        )
        .expect_err("mismatch");
        assert_eq!(err.reason, "InvalidCA");
        let err = issue(
            ca_cert.as_bytes(),
            ca_key.as_bytes(),
            &hosts,
            KeyAlgorithm::Rsa2048,
            60,
            NOW,
        )
        .expect_err("rsa");
        assert_eq!(err.reason, "UnsupportedKeyAlgorithm");
        let err = issue(
            b"junk",
            ca_key.as_bytes(),
            &hosts,
            KeyAlgorithm::EcdsaP256,
            60,
            NOW,
        )
        .expect_err("junk");
        assert_eq!(err.reason, "InvalidCA");
    }
}
