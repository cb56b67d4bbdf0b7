//! TlsCertificate -> the Secret it names -> a checked [`Certificate`].
//!
//! The Secret (in the certificate's namespace) must hold `tls.crt` and
//! `tls.key`; its `type` is not checked, so an `Opaque` Secret with the
//! same keys works too. [`crate::certs::check_certificate`] decides whether
//! the pair can be served for every host at `now`.
//!
//! A certificate that was served before keeps serving (until it expires)
//! when its Secret goes missing or is replaced by something unusable, or
//! when the resource is edited into an invalid one: rotation mistakes must
//! not take a site off TLS. Two certificates claiming the same host name:
//! the older keeps it.

use super::index::{secret_value, Index};
use super::names;
use super::report::{Findings, NotAccepted, StatusInput};
use super::{AcceptedResource, AcceptedVersion, Meta, ObjectKey, Output, KIND_TLS_CERTIFICATE};
use crate::certs::{check_certificate, unix_to_rfc3339};
use crate::model::Certificate;
use crds::tls::{ClientValidationMode, TlsVersion};
use crds::TlsCertificate;
use rustls_pki_types::pem::{PemObject, SectionKind};
use std::collections::BTreeMap;

struct Candidate {
    meta: Meta,
    key: ObjectKey,
    findings: Findings,
    served: Option<Certificate>,
    serving_generation: Option<i64>,
    fallback_generation: Option<i64>,
    invalid_note: Option<String>,
}

pub(crate) fn compile_certificates(
    certificates: &[TlsCertificate],
    index: &Index<'_>,
    previous: Option<&BTreeMap<ObjectKey, AcceptedVersion>>,
    now: i64,
    out: &mut Output,
) -> Vec<Certificate> {
    let mut candidates = Vec::new();
    for (meta, cert) in super::sorted_unique(certificates, |c| &c.metadata) {
        let key = meta.key(KIND_TLS_CERTIFICATE);
        let mut findings = Findings::default();
        let compiled = compile_one(cert, &meta, index, now, &mut findings);
        let last = previous
            .and_then(|p| p.get(&key))
            .filter(|v| v.uid == meta.uid)
            .and_then(|v| match &v.resource {
                AcceptedResource::TlsCertificate { certificate, .. }
                    if certificate.not_after >= now =>
                {
                    Some((v, certificate.as_ref()))
                }
                _ => None,
            });
        let mut candidate = Candidate {
            meta: meta.clone(),
            key: key.clone(),
            findings,
            served: None,
            serving_generation: None,
            fallback_generation: None,
            invalid_note: None,
        };
        match compiled {
            Some(certificate) if !candidate.findings.is_invalid() => {
                out.accepted.insert(
                    key,
                    AcceptedVersion {
                        uid: meta.uid.clone(),
                        generation: meta.generation,
                        resource: AcceptedResource::TlsCertificate {
                            resource: Box::new(cert.clone()),
                            certificate: Box::new(certificate.clone()),
                        },
                    },
                );
                candidate.served = Some(certificate);
                candidate.serving_generation = Some(meta.generation.unwrap_or(0));
            }
            _ => {
                if let Some((version, certificate)) = last {
                    let generation = version.generation.unwrap_or(0);
                    let note = format!(
                        "still serving the last valid certificate (generation {generation}, valid until {})",
                        unix_to_rfc3339(certificate.not_after)
                    );
                    if candidate.findings.is_invalid() {
                        candidate.invalid_note = Some(note);
                    } else if let Some(p) = candidate.findings.refs.last_mut() {
                        p.message = format!("{}; {note}", p.message);
                    }
                    candidate.served = Some(certificate.clone());
                    candidate.serving_generation = Some(generation);
                    candidate.fallback_generation = Some(generation);
                    out.accepted.insert(key, version.clone());
                }
            }
        }
        candidates.push(candidate);
    }

    // Host conflicts: the older certificate keeps a host.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (ma, mb) = (&candidates[a].meta, &candidates[b].meta);
        (ma.created, &ma.namespace, &ma.name).cmp(&(mb.created, &mb.namespace, &mb.name))
    });
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut served = Vec::new();
    for i in order {
        let c = &mut candidates[i];
        let owner = format!("{}/{}", c.meta.namespace, c.meta.name);
        let mut not_accepted = None;
        if let Some(mut certificate) = c.served.take() {
            let mut kept = Vec::new();
            for host in &certificate.hosts {
                match owners.get(host) {
                    Some(other) => c.findings.conflict(
                        "spec.hosts",
                        format!(
                            "host {host:?} is already served by the older TlsCertificate {other}"
                        ),
                    ),
                    None => kept.push(host.clone()),
                }
            }
            if kept.is_empty() {
                not_accepted = Some(NotAccepted::AllConflicted);
                c.serving_generation = None;
            } else {
                for host in &kept {
                    owners.insert(host.clone(), owner.clone());
                }
                certificate.hosts = kept;
                c.served = Some(certificate);
            }
        }
        let not_after = c
            .served
            .as_ref()
            .map(|cert| unix_to_rfc3339(cert.not_after));
        let mut status = StatusInput::new(c.meta.generation, std::mem::take(&mut c.findings));
        status.serving_generation = c.serving_generation;
        status.fallback_generation = c.fallback_generation;
        status.not_accepted = not_accepted;
        status.not_after = not_after;
        status.invalid_note = c.invalid_note.take();
        out.statuses.insert(c.key.clone(), status.into_report());
        if let Some(cert) = c.served.take() {
            served.push(cert);
        }
    }
    served.sort_by(|a, b| a.name.cmp(&b.name));
    served
}

/// Validates the spec and checks the Secret; `None` when nothing can be
/// served from the current version.
fn compile_one(
    cert: &TlsCertificate,
    meta: &Meta,
    index: &Index<'_>,
    now: i64,
    f: &mut Findings,
) -> Option<Certificate> {
    let spec = &cert.spec;
    let ns = meta.namespace.as_str();
    let mut hosts: Vec<String> = Vec::new();
    if spec.hosts.is_empty() || spec.hosts.len() > 64 {
        f.invalid("spec.hosts", "Invalid", "must have 1 to 64 hosts");
    }
    for (i, host) in spec.hosts.iter().enumerate().take(64) {
        match names::check_host(host) {
            Ok(()) => {
                if !hosts.contains(host) {
                    hosts.push(host.clone());
                }
            }
            Err(e) => f.invalid(format!("spec.hosts[{i}]"), "Invalid", e),
        }
    }
    if let Err(e) = names::check_dns_name(&spec.secret_name) {
        f.invalid("spec.secretName", "Invalid", e);
    }
    if let Some(issuer) = &spec.issuer {
        let validity = issuer
            .validity
            .as_ref()
            .map(|d| names::duration_ms(d))
            .unwrap_or(Ok(2160 * 3_600_000));
        let renew = issuer
            .renew_before
            .as_ref()
            .map(|d| names::duration_ms(d))
            .unwrap_or(Ok(720 * 3_600_000));
        match (&validity, &renew) {
            (Err(e), _) => f.invalid("spec.issuer.validity", "InvalidDuration", e.clone()),
            (_, Err(e)) => f.invalid("spec.issuer.renewBefore", "InvalidDuration", e.clone()),
            (Ok(v), Ok(r)) if r >= v => f.invalid(
                "spec.issuer.renewBefore",
                "Invalid",
                "must be shorter than validity",
            ),
            _ => {}
        }
        if let Err(e) = names::check_dns_name(&issuer.ca_secret_name) {
            f.invalid("spec.issuer.caSecretName", "Invalid", e);
        }
    }
    let mut client_ca_pem = None;
    let mut client_cert_required = false;
    if let Some(cv) = &spec.client_validation {
        client_cert_required = cv.mode == ClientValidationMode::Require;
        let field = "spec.clientValidation.caSecretName";
        match index.secret(ns, ns, &cv.ca_secret_name) {
            Err(e) => f.unresolved(field, e.reason, e.message),
            Ok(secret) => match secret_value(secret, "ca.crt") {
                None => f.invalid(
                    field,
                    "InvalidCertificate",
                    format!("Secret {ns}/{} has no key ca.crt", cv.ca_secret_name),
                ),
                Some(bytes) => {
                    let has_cert = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
                        .any(|s| matches!(s, Ok((SectionKind::Certificate, _))));
                    match String::from_utf8(bytes) {
                        Ok(pem) if has_cert => client_ca_pem = Some(pem),
                        _ => f.invalid(
                            field,
                            "InvalidCertificate",
                            format!(
                                "ca.crt of Secret {ns}/{} holds no PEM CERTIFICATE block",
                                cv.ca_secret_name
                            ),
                        ),
                    }
                }
            },
        }
    }
    if f.is_invalid() {
        return None;
    }
    let secret = match index.secret(ns, ns, &spec.secret_name) {
        Ok(s) => s,
        Err(e) => {
            let hint = if spec.issuer.is_some() {
                " (the controller creates it from the issuer)"
            } else {
                ""
            };
            f.unresolved("spec.secretName", e.reason, format!("{}{hint}", e.message));
            return None;
        }
    };
    let what = format!("Secret {ns}/{}", spec.secret_name);
    let (Some(chain), Some(key)) = (
        secret_value(secret, "tls.crt"),
        secret_value(secret, "tls.key"),
    ) else {
        f.invalid(
            "spec.secretName",
            "InvalidCertificate",
            format!("{what} must have the keys tls.crt and tls.key"),
        );
        return None;
    };
    match check_certificate(&chain, &key, &hosts, now) {
        Err(e) => {
            f.invalid("spec.secretName", e.reason(), format!("{what}: {e}"));
            None
        }
        Ok(info) => {
            let (Ok(cert_chain_pem), Ok(key_pem)) =
                (String::from_utf8(chain), String::from_utf8(key))
            else {
                f.invalid(
                    "spec.secretName",
                    "InvalidCertificate",
                    format!("{what}: tls.crt and tls.key must be PEM text"),
                );
                return None;
            };
            Some(Certificate {
                name: format!("{ns}/{}", meta.name),
                hosts,
                cert_chain_pem,
                key_pem,
                tls13_only: spec.min_version == Some(TlsVersion::Tls13),
                client_ca_pem,
                client_cert_required,
                not_after: info.not_after,
            })
        }
    }
}
