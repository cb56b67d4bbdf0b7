//! Checking a TLS certificate and its private key before they reach a dataplane.
//!
//! The controller reads a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) for
//! every `TlsCertificate` and calls [`check_certificate`] with the hosts the
//! resource claims and the current time. The result is either a
//! [`CertificateInfo`] (shown in the resource status: `notAfter`, names,
//! fingerprint) or a [`CertificateError`] whose message tells the user exactly
//! what to fix and whose [`CertificateError::reason`] becomes the condition
//! reason. Only certificates that pass are put into the snapshot, so a
//! dataplane never has to reject one.
//!
//! The checks run in a fixed order, structural problems first, so that fixing
//! one error never uncovers an earlier one:
//!
//! 1. the chain is valid PEM with at least one `CERTIFICATE` block, each a valid
//!    X.509 certificate (the first one is the leaf);
//! 2. the key is valid PEM holding exactly one PKCS#8, PKCS#1 (RSA) or SEC1 (EC)
//!    private key of a type the dataplane can sign with (rustls + ring);
//! 3. the key's public key is the leaf certificate's public key;
//! 4. the leaf covers every requested host (DNS subjectAltNames, one-label
//!    wildcards, case-insensitive; the subject CN only when the certificate has
//!    no subjectAltName at all);
//! 5. the leaf is valid at `now`.
//!
//! The chain itself is not verified against a trust store: clients do that, and
//! a gateway commonly serves certificates from private CAs it does not know.
//!
//! This module is pure: no IO, no clock (the time is an argument) and no
//! randomness. The crate has no date library, so [`unix_to_rfc3339`] is written
//! by hand (Howard Hinnant's civil-from-days algorithm); it is the only date
//! formatting the snapshot needs.

use std::fmt;

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// What a valid certificate looks like, for the resource status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Start of the leaf's validity, in seconds since the Unix epoch.
    pub not_before: i64,
    /// End of the leaf's validity (inclusive), in seconds since the Unix epoch.
    pub not_after: i64,
    /// The DNS names the leaf covers, as written in the certificate: its DNS
    /// subjectAltNames, or its subject common name when it has no
    /// subjectAltName at all.
    pub dns_names: Vec<String>,
    /// SHA-256 of the leaf certificate's DER encoding, lowercase hex without
    /// separators (what `openssl x509 -outform der | sha256sum` prints).
    pub fingerprint_sha256: String,
}

/// Which input a PEM error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemPart {
    /// The certificate chain (`tls.crt` in a `kubernetes.io/tls` Secret).
    CertificateChain,
    /// The private key (`tls.key` in a `kubernetes.io/tls` Secret).
    PrivateKey,
}

impl fmt::Display for PemPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemPart::CertificateChain => "certificate chain (tls.crt)",
            PemPart::PrivateKey => "private key (tls.key)",
        })
    }
}

/// Why a certificate and key cannot be served.
///
/// The `Display` text is meant for users (status condition messages, the
/// `validate` command); [`CertificateError::reason`] gives the matching
/// CamelCase condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The PEM text of one input is malformed (bad base64, missing END line...).
    #[error("the {part} is not valid PEM: {detail}")]
    InvalidPem {
        /// The input that is malformed.
        part: PemPart,
        /// What the PEM parser found wrong.
        detail: String,
    },
    /// The certificate chain holds no `CERTIFICATE` PEM block.
    #[error(
        "the certificate chain (tls.crt) contains no \"-----BEGIN CERTIFICATE-----\" PEM block"
    )]
    NoCertificate,
    /// A `CERTIFICATE` PEM block does not hold a valid X.509 certificate.
    #[error("certificate {} of the chain (tls.crt) is not a valid X.509 certificate: {detail}", .index + 1)]
    InvalidCertificate {
        /// Position of the certificate in the chain, 0 for the leaf.
        index: usize,
        /// What the X.509 parser found wrong.
        detail: String,
    },
    /// The key input holds no private key PEM block.
    #[error(
        "the private key (tls.key) contains no \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" PEM block"
    )]
    NoPrivateKey,
    /// The private key is encrypted, of an unsupported algorithm or size, or
    /// there is more than one.
    #[error("the private key (tls.key) is not supported: {detail} (supported: unencrypted RSA of 2048 bits or more, ECDSA P-256 or P-384, Ed25519)")]
    UnsupportedKey {
        /// Why the key cannot be used.
        detail: String,
    },
    /// The private key does not belong to the leaf (first) certificate.
    #[error("{}", key_mismatch_message(*.matches_chain_index))]
    KeyMismatch {
        /// When the key belongs to another certificate of the chain (the chain
        /// is out of order), its position.
        matches_chain_index: Option<usize>,
    },
    /// The leaf certificate does not cover one of the requested hosts.
    #[error("the certificate does not cover host {host:?} (it covers: {})", covered_list(.dns_names))]
    HostNotCovered {
        /// The first requested host that is not covered.
        host: String,
        /// The names the certificate does cover.
        dns_names: Vec<String>,
    },
    /// The leaf certificate has expired.
    #[error("the certificate expired at {not_after}")]
    Expired {
        /// End of validity, RFC 3339 (UTC).
        not_after: String,
    },
    /// The leaf certificate is not valid yet.
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid {
        /// Start of validity, RFC 3339 (UTC).
        not_before: String,
    },
}

fn key_mismatch_message(matches_chain_index: Option<usize>) -> String {
    match matches_chain_index {
        Some(index) => format!(
            "the private key (tls.key) matches certificate {} of the chain, not the first one: \
             put the server (leaf) certificate first in tls.crt, followed by its issuers",
            index + 1
        ),
        None => "the private key (tls.key) does not match the certificate (tls.crt)".to_owned(),
    }
}

fn covered_list(dns_names: &[String]) -> String {
    if dns_names.is_empty() {
        "no DNS names".to_owned()
    } else {
        dns_names.join(", ")
    }
}

impl CertificateError {
    /// The CamelCase reason for a status condition.
    ///
    /// | variant | reason |
    /// | --- | --- |
    /// | `InvalidPem`, `NoCertificate`, `InvalidCertificate` | `InvalidCertificate` |
    /// | `NoPrivateKey`, `UnsupportedKey` | `InvalidPrivateKey` |
    /// | `KeyMismatch` | `KeyMismatch` |
    /// | `HostNotCovered` | `HostNotCovered` |
    /// | `Expired` | `CertificateExpired` |
    /// | `NotYetValid` | `CertificateNotYetValid` |
    ///
    /// `InvalidPem` in the key input also reads `InvalidPrivateKey`.
    pub fn reason(&self) -> &'static str {
        match self {
            CertificateError::InvalidPem {
                part: PemPart::PrivateKey,
                ..
            }
            | CertificateError::NoPrivateKey
            | CertificateError::UnsupportedKey { .. } => "InvalidPrivateKey",
            CertificateError::InvalidPem { .. }
            | CertificateError::NoCertificate
            | CertificateError::InvalidCertificate { .. } => "InvalidCertificate",
            CertificateError::KeyMismatch { .. } => "KeyMismatch",
            CertificateError::HostNotCovered { .. } => "HostNotCovered",
            CertificateError::Expired { .. } => "CertificateExpired",
            CertificateError::NotYetValid { .. } => "CertificateNotYetValid",
        }
    }
}

/// Checks that `cert_chain_pem` and `key_pem` form a servable certificate for
/// every host of `hosts` at `now_unix_secs`, and describes the leaf.
///
/// `cert_chain_pem` holds one or more `CERTIFICATE` PEM blocks, leaf first
/// (other blocks are ignored). `key_pem` holds exactly one private key in
/// PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE
/// KEY`) form. A host may be a wildcard (`*.example.com`), which is covered only
/// by the same wildcard. See the module docs for the order of the checks.
pub fn check_certificate(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    hosts: &[String],
    now_unix_secs: i64,
) -> Result<CertificateInfo, CertificateError> {
    let chain = parse_chain_pem(cert_chain_pem)?;
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(index, der)| parse_certificate(index, der))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = parsed.first().ok_or(CertificateError::NoCertificate)?;

    let key = parse_key_pem(key_pem)?;
    let key_spki = key_public_key(&key)?;
    if !same_public_key(&key_spki, leaf.public_key()) {
        let matches_chain_index = parsed
            .iter()
            .position(|cert| same_public_key(&key_spki, cert.public_key()));
        return Err(CertificateError::KeyMismatch {
            matches_chain_index,
        });
    }

    let dns_names = certificate_dns_names(leaf)?;
    if let Some(host) = hosts
        .iter()
        .find(|host| !dns_names.iter().any(|name| name_covers(name, host)))
    {
        return Err(CertificateError::HostNotCovered {
            host: host.clone(),
            dns_names,
        });
    }

    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if now_unix_secs < not_before {
        return Err(CertificateError::NotYetValid {
            not_before: unix_to_rfc3339(not_before),
        });
    }
    if now_unix_secs > not_after {
        return Err(CertificateError::Expired {
            not_after: unix_to_rfc3339(not_after),
        });
    }

    let fingerprint_sha256 = chain
        .first()
        .map(|der| hex::encode(Sha256::digest(der)))
        .unwrap_or_default();
    Ok(CertificateInfo {
        not_before,
        not_after,
        dns_names,
        fingerprint_sha256,
    })
}

/// Whether a certificate name (`example.com`, `*.example.com`) covers `host`.
///
/// Both are compared case-insensitively, ignoring one trailing dot. A wildcard
/// name stands for exactly one whole leftmost label: `*.example.com` covers
/// `a.example.com` and the host `*.example.com` itself, but neither
/// `example.com` nor `a.b.example.com`. Partial-label wildcards (`w*.example.com`)
/// cover only themselves, as in browsers.
pub fn name_covers(cert_name: &str, host: &str) -> bool {
    let name = normalize(cert_name);
    let host = normalize(host);
    if host.is_empty() {
        return false;
    }
    if name == host {
        return true;
    }
    match name.strip_prefix("*.") {
        Some(suffix) if !suffix.is_empty() => match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && !label.contains('*') && rest == suffix,
            None => false,
        },
        _ => false,
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp,
/// `YYYY-MM-DDTHH:MM:SSZ`.
///
/// Total over `i64`: years outside 0..=9999 (which RFC 3339 cannot express and
/// X.509 never produces) are printed with more digits or a minus sign.
pub fn unix_to_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
///
/// Howard Hinnant, "chrono-Compatible Low-Level Date Algorithms",
/// `civil_from_days`. Eras are 400-year cycles of 146 097 days starting on
/// 0000-03-01, so that the leap day is the last day of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // i64 seconds give |days| < 1.1e14, far from overflow in what follows.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let shifted_month = (5 * day_of_year + 2) / 153; // [0, 11], March = 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1; // [1, 31]
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    }; // [1, 12]
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction.
    (year, month as u32, day as u32)
}

fn pem_error(part: PemPart, err: rustls_pki_types::pem::Error) -> CertificateError {
    CertificateError::InvalidPem {
        part,
        detail: match err {
            rustls_pki_types::pem::Error::MissingSectionEnd { end_marker } => format!(
                "a \"{}\" block has no END line",
                String::from_utf8_lossy(&end_marker)
            ),
            rustls_pki_types::pem::Error::IllegalSectionStart { line } => format!(
                "malformed BEGIN line {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            ),
            rustls_pki_types::pem::Error::Base64Decode(_) => {
                "a block's body is not valid base64".to_owned()
            }
            other => other.to_string(),
        },
    }
}

fn parse_chain_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, CertificateError> {
    let mut chain = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|err| pem_error(PemPart::CertificateChain, err))?;
        if kind == SectionKind::Certificate {
            chain.push(der);
        }
    }
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate);
    }
    Ok(chain)
}

fn parse_certificate(index: usize, der: &[u8]) -> Result<X509Certificate<'_>, CertificateError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertificateError::InvalidCertificate {
            index,
            detail: "unexpected bytes after the certificate".to_owned(),
        }),
        Err(err) => Err(CertificateError::InvalidCertificate {
            index,
            detail: err.to_string(),
        }),
    }
}

fn parse_key_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertificateError> {
    if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || contains(pem, b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(CertificateError::UnsupportedKey {
            detail: "the key is encrypted with a passphrase; store it unencrypted".to_owned(),
        });
    }
    let mut keys = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|err| pem_error(PemPart::PrivateKey, err))?;
        match kind {
            SectionKind::PrivateKey => keys.push(PrivatePkcs8KeyDer::from(der).into()),
            SectionKind::RsaPrivateKey => keys.push(PrivatePkcs1KeyDer::from(der).into()),
            SectionKind::EcPrivateKey => keys.push(PrivateSec1KeyDer::from(der).into()),
            _ => {}
        }
    }
    match keys.len() {
        0 => Err(CertificateError::NoPrivateKey),
        1 => Ok(keys.remove(0)),
        n => Err(CertificateError::UnsupportedKey {
            detail: format!("found {n} private keys, expected exactly one"),
        }),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The SubjectPublicKeyInfo DER of a private key, as rustls (ring) loads it:
/// a key rustls cannot load is one the dataplane cannot serve.
fn key_public_key(key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, CertificateError> {
    let signing_key = rustls::crypto::ring::sign::any_supported_type(key).map_err(|err| {
        CertificateError::UnsupportedKey {
            detail: err.to_string(),
        }
    })?;
    signing_key
        .public_key()
        .map(|spki| spki.as_ref().to_vec())
        .ok_or_else(|| CertificateError::UnsupportedKey {
            detail: "its public key cannot be derived".to_owned(),
        })
}

/// Compares the algorithm and the key bits rather than the whole DER, so that
/// encodings that differ only in optional parameters (RSA's NULL) still match.
fn same_public_key(key_spki_der: &[u8], cert_spki: &SubjectPublicKeyInfo<'_>) -> bool {
    match SubjectPublicKeyInfo::from_der(key_spki_der) {
        Ok((_, key_spki)) => {
            key_spki.algorithm.algorithm == cert_spki.algorithm.algorithm
                && key_spki.subject_public_key.data == cert_spki.subject_public_key.data
        }
        Err(_) => false,
    }
}

fn certificate_dns_names(cert: &X509Certificate<'_>) -> Result<Vec<String>, CertificateError> {
    let san =
        cert.subject_alternative_name()
            .map_err(|err| CertificateError::InvalidCertificate {
                index: 0,
                detail: format!("bad subjectAltName extension: {err}"),
            })?;
    match san {
        Some(san) if !san.value.general_names.is_empty() => Ok(san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
            .collect()),
        // Legacy certificates without subjectAltName: clients that still accept
        // them match the common name.
        _ => Ok(cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .collect()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    };

    /// 2025-06-01T00:00:00Z.
    const NOW: i64 = 1_748_736_000;

    // Test-only keys, generated with openssl 3 for this file. ring cannot
    // generate RSA keys, and rcgen reads only PKCS#8, so the PKCS#1 and SEC1
    // forms of these keys are needed to test those encodings.
    const RSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDHyuI6wjtD3/Se
Y6saX6syzCb2fR5nJUeLfhN8xpE8GUHsotu3sAh2zjnozLZpZEU55KRMZlsvi1b7
yt2moGfSOqcOJvntpo4Z+0FRy+BWQQ18DfhJbFALJ36sg3fCHKPAzlmCwx5KRUwp
lTfuSmPhqmmzqHEodBtGD/TVwN2Dpy9aVzTRsHHhb90WY/d1EVGtxeUEQIGV0xv/
AgIcix33KmPMIJlfUBw9VTUzVNtWkMNvIZnUdzKlEWRJsguDVKT/UekM5DaauhoC
dnK6ib+SNYE4F54Zn60CsYPgJM9ROt1UtjpYexMAClsj+zioISE0B0hcKsAMQsyn
/2PmueNVAgMBAAECggEAGDs6ke7Ruks0w2sKKwI0ZM5O4XFOWSsz0K7DVUxN/BCC
Jt2fsVkXxbUAYARIEWM4ZCufY6a8Y3lOXO5/UIC+5sf3T+eZQ2ICdRM8mluUQ1HT
fVrCZMFOufOZ0PmG8lN/5tgAEjRw/YgHEzoGVQ/PqmR9Om1w//uI/UfdJXmlRByx
HSusFCs8/BTlkFgIffsDuoq2EWNrVsx+IdknW+eV92Hko6x/JwSBdKNSNIw3hvpA
pd2zaVrSIW9HiaGL9JgU2MpmSLt7fWhFFYODspoCYfjrlyOzrI1HUaFwTGLv8e2s
eXG92wuR/zhKKLqwU9sfQ13bJ5YMp54spobQwpz99wKBgQD7ogl2MxD1pjAUaQJC
Qsg8Fs1ctBL7iHeoD7Pt34Oa8mS9m0UQp8ODkGUTPrPceZ6e9iwpEW9IJkaa/8Ny
mcfNE13knNxU8FCIVuHBlLj6wg+AVCIWPDaW/BfUcCUUkcYt+TQ4olC8aqiKIxK8
iBRQqg9Drtysq/c2NrAHciInVwKBgQDLQodCRbA2SGz/kSH5ijo2wu+PJ2+bE5hD
NdBRn6qEa7H0JYQlIaaziCX45Tx9et2S9LhmDRWOaAIiruIZG+vXQ/vn3Y8xhv32
7+OwlJHibaYOzVcTntVKbhceeliULxUlIsik0P8ZOB3UpHIe/woGW5Yflos+6kLJ
UuALGh07MwKBgQCKkNM3BK3tJ+PICX9V76KF/GSADSV6385MfMEvV2sIUzyIcM1a
e5edhlEyhM/UtCBWFueAgfpOt80fo4IERIyS8Hw+3OYz29XtDjLpP7WRWHXiy/Gt
XuEMyatxr4OrzQ5d2KIaIb/l0bIXx3KU4TaWqN8Y/VzFtTi/4OOUZhRKpwKBgBn6
Tr8xmOvXJdcj/WufNwF4uJVbPPBc+MDeR9mmxmxWN1A020bDnkKjy/ablbeT1G3L
ySWB1pd0w5EbONpsrx+8GJ3xuzNhRWQiFL+kvWBrEyYhKFfhnPD+UQYcLOYDfnhY
kbw+2dunSGi8+7jqb6WQXwd6fiF0X0TLysagd8vxAoGABWSKgjthlxar/vIL9hO7
6jGXIq0BgfMCmNPzjxVA5ZF4VNHsrhC9pEsyk+jl6kCyy7fZwAnmdjWnCLMIC0LI
euZNGJf9f7B95khOnkQHkN+ngK2zFbzrYB+jArZkXNwQV7U+g/Taiod38fkO3Nbc
kzOdfQnW2c/3ZZcemzbHlxk=
-----END PRIVATE KEY-----
";
    const RSA_PKCS1: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAx8riOsI7Q9/0nmOrGl+rMswm9n0eZyVHi34TfMaRPBlB7KLb
t7AIds456My2aWRFOeSkTGZbL4tW+8rdpqBn0jqnDib57aaOGftBUcvgVkENfA34
SWxQCyd+rIN3whyjwM5ZgsMeSkVMKZU37kpj4apps6hxKHQbRg/01cDdg6cvWlc0
0bBx4W/dFmP3dRFRrcXlBECBldMb/wICHIsd9ypjzCCZX1AcPVU1M1TbVpDDbyGZ
1HcypRFkSbILg1Sk/1HpDOQ2mroaAnZyuom/kjWBOBeeGZ+tArGD4CTPUTrdVLY6
WHsTAApbI/s4qCEhNAdIXCrADELMp/9j5rnjVQIDAQABAoIBABg7OpHu0bpLNMNr
CisCNGTOTuFxTlkrM9Cuw1VMTfwQgibdn7FZF8W1AGAESBFjOGQrn2OmvGN5Tlzu
f1CAvubH90/nmUNiAnUTPJpblENR031awmTBTrnzmdD5hvJTf+bYABI0cP2IBxM6
BlUPz6pkfTptcP/7iP1H3SV5pUQcsR0rrBQrPPwU5ZBYCH37A7qKthFja1bMfiHZ
J1vnlfdh5KOsfycEgXSjUjSMN4b6QKXds2la0iFvR4mhi/SYFNjKZki7e31oRRWD
g7KaAmH465cjs6yNR1GhcExi7/HtrHlxvdsLkf84Sii6sFPbH0Nd2yeWDKeeLKaG
0MKc/fcCgYEA+6IJdjMQ9aYwFGkCQkLIPBbNXLQS+4h3qA+z7d+DmvJkvZtFEKfD
g5BlEz6z3HmenvYsKRFvSCZGmv/DcpnHzRNd5JzcVPBQiFbhwZS4+sIPgFQiFjw2
lvwX1HAlFJHGLfk0OKJQvGqoiiMSvIgUUKoPQ67crKv3NjawB3IiJ1cCgYEAy0KH
QkWwNkhs/5Eh+Yo6NsLvjydvmxOYQzXQUZ+qhGux9CWEJSGms4gl+OU8fXrdkvS4
Zg0VjmgCIq7iGRvr10P7592PMYb99u/jsJSR4m2mDs1XE57VSm4XHnpYlC8VJSLI
pND/GTgd1KRyHv8KBluWH5aLPupCyVLgCxodOzMCgYEAipDTNwSt7SfjyAl/Ve+i
hfxkgA0let/OTHzBL1drCFM8iHDNWnuXnYZRMoTP1LQgVhbngIH6TrfNH6OCBESM
kvB8PtzmM9vV7Q4y6T+1kVh14svxrV7hDMmrca+Dq80OXdiiGiG/5dGyF8dylOE2
lqjfGP1cxbU4v+DjlGYUSqcCgYAZ+k6/MZjr1yXXI/1rnzcBeLiVWzzwXPjA3kfZ
psZsVjdQNNtGw55Co8v2m5W3k9Rty8klgdaXdMORGzjabK8fvBid8bszYUVkIhS/
pL1gaxMmIShX4Zzw/lEGHCzmA354WJG8Ptnbp0hovPu46m+lkF8Hen4hdF9Ey8rG
oHfL8QKBgAVkioI7YZcWq/7yC/YTu+oxlyKtAYHzApjT848VQOWReFTR7K4QvaRL
MpPo5epAssu32cAJ5nY1pwizCAtCyHrmTRiX/X+wfeZITp5EB5Dfp4CtsxW862Af
owK2ZFzcEFe1PoP02oqHd/H5DtzW3JMznX0J1tnP92WXHps2x5cZ
-----END RSA PRIVATE KEY-----
";
    const EC_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmxbDQpL6PSYY7B/b
6bKKtYOAWiFtQ2Dyszwcv1xjfI6hRANCAAQrQdjV9wnt3NB0HTDCqbpWxFPykZ+z
sfq63XSnWnS3hb+3zTqsZhDv0DZrUnStwfzfntTwZQDcQ7aoOiWmSB6d
-----END PRIVATE KEY-----
";
    const EC_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIJsWw0KS+j0mGOwf2+myirWDgFohbUNg8rM8HL9cY3yOoAoGCCqGSM49
AwEHoUQDQgAEK0HY1fcJ7dzQdB0wwqm6VsRT8pGfs7H6ut10p1p0t4W/t806rGYQ
79A2a1J0rcH8357U8GUA3EO2qDolpkgenQ==
-----END EC PRIVATE KEY-----
";
    /// Ed448: valid PKCS#8 that rustls with ring cannot sign with.
    const ED448_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MEcCAQAwBQYDK2VxBDsEOX9VtMe8Vg8ChKYzOxRPeuWDy7B5MfIB5CGUg2TyhFK5
3P5YlqNJ8XhRisDM6SMEAg8HG9pUuesOqw==
-----END PRIVATE KEY-----
";
    const ENCRYPTED_PKCS8: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAgtUxg+jnqrRgICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEPAv3AUNZCV2VtLYQxZcQGYEgZBx
+GztSLDNXKLTE9859fiAz2gVAR5FdEiD/+TZzSnbp5jt0E+WroFy0f32I7nRxu0L
S4F6iD4U3fwTZSjD1vXU22otYqP7gUcFhCytswtJNxTXt+t0v/zU2U88doBd7/LS
Kd5y7x7P8PnFuR1UjPDRbGzc5dOCfGUeP3mRR7rxVJyErgvN+E0xoeIFyLhYnCQ=
-----END ENCRYPTED PRIVATE KEY-----
";

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn params(names: &[&str]) -> CertificateParams {
        let mut params = CertificateParams::new(hosts(names)).unwrap();
        params.not_before = date_time_ymd(2025, 1, 1);
        params.not_after = date_time_ymd(2026, 1, 1);
        params
    }

    /// A self-signed leaf for `names` and its key, both PEM.
    fn self_signed(names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params(names).self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn check(cert: &str, key: &str, names: &[&str]) -> Result<CertificateInfo, CertificateError> {
        check_certificate(cert.as_bytes(), key.as_bytes(), &hosts(names), NOW)
    }

    #[test]
    fn valid_certificate_is_described() {
        let key = KeyPair::generate().unwrap();
        let cert = params(&["example.com", "www.example.com"])
            .self_signed(&key)
            .unwrap();
        let info = check(
            &cert.pem(),
            &key.serialize_pem(),
            &["example.com", "WWW.Example.com."],
        )
        .unwrap();
        assert_eq!(info.not_before, date_time_ymd(2025, 1, 1).unix_timestamp());
        assert_eq!(info.not_after, date_time_ymd(2026, 1, 1).unix_timestamp());
        assert_eq!(info.dns_names, hosts(&["example.com", "www.example.com"]));
        assert_eq!(
            info.fingerprint_sha256,
            hex::encode(Sha256::digest(cert.der()))
        );
        assert_eq!(info.fingerprint_sha256.len(), 64);
    }

    #[test]
    fn no_hosts_requested_checks_the_pair_only() {
        let (cert, key) = self_signed(&["example.com"]);
        assert!(check(&cert, &key, &[]).is_ok());
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let (cert, _) = self_signed(&["example.com"]);
        let (_, other_key) = self_signed(&["example.com"]);
        let err = check(&cert, &other_key, &["example.com"]).unwrap_err();
        assert_eq!(
            err,
            CertificateError::KeyMismatch {
                matches_chain_index: None
            }
        );
        assert_eq!(err.reason(), "KeyMismatch");
        assert_eq!(
            err.to_string(),
            "the private key (tls.key) does not match the certificate (tls.crt)"
        );
    }

    struct Chain {
        leaf: String,
        leaf_key: String,
        intermediate: String,
        intermediate_key: String,
        root: String,
    }

    fn chain(names: &[&str]) -> Chain {
        let ca_params = |name: &str| {
            let mut params = params(&[]);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params
        };
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("Test Root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let intermediate_key = KeyPair::generate().unwrap();
        let intermediate_params = ca_params("Test Intermediate");
        let intermediate = intermediate_params
            .signed_by(&intermediate_key, &root_issuer)
            .unwrap();
        let intermediate_pem = intermediate.pem();
        let intermediate_key_pem = intermediate_key.serialize_pem();
        let intermediate_issuer = Issuer::new(intermediate_params, intermediate_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params(names)
            .signed_by(&leaf_key, &intermediate_issuer)
            .unwrap();
        Chain {
            leaf: leaf.pem(),
            leaf_key: leaf_key.serialize_pem(),
            intermediate: intermediate_pem,
            intermediate_key: intermediate_key_pem,
            root: root.pem(),
        }
    }

    #[test]
    fn chain_with_intermediate_is_accepted() {
        let chain = chain(&["api.example.com"]);
        let pem = format!("{}{}", chain.leaf, chain.intermediate);
        let info = check(&pem, &chain.leaf_key, &["api.example.com"]).unwrap();
        assert_eq!(info.dns_names, hosts(&["api.example.com"]));
        let leaf_der = der_from_pem(&chain.leaf);
        assert_eq!(
            info.fingerprint_sha256,
            hex::encode(Sha256::digest(leaf_der))
        );

        // The root may be included too, and text between blocks is ignored.
        let pem = format!(
            "subject=api.example.com\n{}\n# intermediate\n{}{}",
            chain.leaf, chain.intermediate, chain.root
        );
        assert!(check(&pem, &chain.leaf_key, &["api.example.com"]).is_ok());
    }

    fn der_from_pem(pem: &str) -> Vec<u8> {
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn chain_out_of_order_names_the_fix() {
        let chain = chain(&["api.example.com"]);
        let pem = format!("{}{}", chain.intermediate, chain.leaf);
        let err = check(&pem, &chain.leaf_key, &["api.example.com"]).unwrap_err();
        assert_eq!(
            err,
            CertificateError::KeyMismatch {
                matches_chain_index: Some(1)
            }
        );
        assert!(err
            .to_string()
            .contains("matches certificate 2 of the chain"));
        assert!(err
            .to_string()
            .contains("put the server (leaf) certificate first"));

        // The intermediate's own key matches the first certificate: fine for the
        // pair check, but it does not cover the host.
        let err = check(&pem, &chain.intermediate_key, &["api.example.com"]).unwrap_err();
        assert!(matches!(err, CertificateError::HostNotCovered { .. }));
    }

    #[test]
    fn wildcard_coverage() {
        let (cert, key) = self_signed(&["*.example.com"]);
        for covered in [
            "a.example.com",
            "*.example.com",
            "A.EXAMPLE.COM",
            "b.example.com.",
        ] {
            assert!(check(&cert, &key, &[covered]).is_ok(), "{covered}");
        }
        for not_covered in [
            "example.com",
            "a.b.example.com",
            "*.b.example.com",
            "aexample.com",
            ".example.com",
            "a.example.org",
            "",
        ] {
            let err = check(&cert, &key, &["a.example.com", not_covered]).unwrap_err();
            assert_eq!(
                err,
                CertificateError::HostNotCovered {
                    host: not_covered.to_owned(),
                    dns_names: hosts(&["*.example.com"]),
                },
                "{not_covered}"
            );
            assert_eq!(err.reason(), "HostNotCovered");
        }
    }

    #[test]
    fn wildcard_host_needs_a_wildcard_name() {
        let (cert, key) = self_signed(&["a.example.com", "b.example.com"]);
        let err = check(&cert, &key, &["*.example.com"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the certificate does not cover host \"*.example.com\" (it covers: a.example.com, b.example.com)"
        );
    }

    #[test]
    fn name_covers_rules() {
        assert!(name_covers("Example.COM", "example.com."));
        assert!(name_covers("*.example.com", "x.example.com"));
        assert!(!name_covers("*.example.com", "*x.example.com"));
        assert!(!name_covers("w*.example.com", "www.example.com"));
        assert!(name_covers("w*.example.com", "w*.example.com"));
        assert!(!name_covers("*.", "a."));
        assert!(!name_covers("*", "a"));
        assert!(!name_covers("", ""));
    }

    #[test]
    fn common_name_is_used_only_without_subject_alt_names() {
        // No SAN at all: the CN counts.
        let key = KeyPair::generate().unwrap();
        let mut legacy = params(&[]);
        legacy.distinguished_name = rcgen::DistinguishedName::new();
        legacy
            .distinguished_name
            .push(DnType::CommonName, "legacy.example.com");
        let cert = legacy.self_signed(&key).unwrap();
        let info = check(&cert.pem(), &key.serialize_pem(), &["legacy.example.com"]).unwrap();
        assert_eq!(info.dns_names, hosts(&["legacy.example.com"]));

        // With a SAN, the CN is ignored.
        let mut modern = params(&["san.example.com"]);
        modern
            .distinguished_name
            .push(DnType::CommonName, "cn.example.com");
        let cert = modern.self_signed(&key).unwrap();
        let err = check(&cert.pem(), &key.serialize_pem(), &["cn.example.com"]).unwrap_err();
        assert!(matches!(err, CertificateError::HostNotCovered { .. }));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let (cert, key) = self_signed(&["example.com"]);
        let not_after = date_time_ymd(2026, 1, 1).unix_timestamp();
        let not_before = date_time_ymd(2025, 1, 1).unix_timestamp();
        let at = |now| {
            check_certificate(
                cert.as_bytes(),
                key.as_bytes(),
                &hosts(&["example.com"]),
                now,
            )
        };

        assert!(at(not_before).is_ok());
        assert!(at(not_after).is_ok());
        let err = at(not_after + 1).unwrap_err();
        assert_eq!(
            err,
            CertificateError::Expired {
                not_after: "2026-01-01T00:00:00Z".to_owned()
            }
        );
        assert_eq!(err.reason(), "CertificateExpired");
        assert_eq!(
            err.to_string(),
            "the certificate expired at 2026-01-01T00:00:00Z"
        );

        let err = at(not_before - 1).unwrap_err();
        assert_eq!(
            err,
            CertificateError::NotYetValid {
                not_before: "2025-01-01T00:00:00Z".to_owned()
            }
        );
        assert_eq!(err.reason(), "CertificateNotYetValid");
    }

    #[test]
    fn garbage_pem() {
        let (cert, key) = self_signed(&["example.com"]);

        let err = check("not a certificate", &key, &[]).unwrap_err();
        assert_eq!(err, CertificateError::NoCertificate);
        assert_eq!(err.reason(), "InvalidCertificate");

        // The key given twice, no certificate.
        assert_eq!(
            check(&key, &key, &[]).unwrap_err(),
            CertificateError::NoCertificate
        );

        let truncated = &cert[..cert.len() - 30];
        let err = check(truncated, &key, &[]).unwrap_err();
        assert!(
            matches!(
                err,
                CertificateError::InvalidPem {
                    part: PemPart::CertificateChain,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("the certificate chain (tls.crt) is not valid PEM: "),
            "{err}"
        );

        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = check(bad_base64, &key, &[]).unwrap_err();
        assert!(
            matches!(err, CertificateError::InvalidPem { .. }),
            "{err:?}"
        );

        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let err = check(not_x509, &key, &[]).unwrap_err();
        assert!(
            matches!(err, CertificateError::InvalidCertificate { index: 0, .. }),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("certificate 1 of the chain (tls.crt) is not a valid X.509 certificate"));

        let err = check(&format!("{cert}{not_x509}"), &key, &[]).unwrap_err();
        assert!(
            matches!(err, CertificateError::InvalidCertificate { index: 1, .. }),
            "{err:?}"
        );

        let err = check(&cert, "", &[]).unwrap_err();
        assert_eq!(err, CertificateError::NoPrivateKey);
        assert_eq!(err.reason(), "InvalidPrivateKey");
        // The certificate given twice, no key.
        assert_eq!(
            check(&cert, &cert, &[]).unwrap_err(),
            CertificateError::NoPrivateKey
        );

        let err = check(&cert, &key[..key.len() - 20], &[]).unwrap_err();
        assert!(
            matches!(
                err,
                CertificateError::InvalidPem {
                    part: PemPart::PrivateKey,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.reason(), "InvalidPrivateKey");

        let not_a_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
        let err = check(&cert, not_a_key, &[]).unwrap_err();
        assert!(
            matches!(err, CertificateError::UnsupportedKey { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn unsupported_keys() {
        let (cert, key) = self_signed(&["example.com"]);

        let err = check(&cert, ENCRYPTED_PKCS8, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the private key (tls.key) is not supported: the key is encrypted with a passphrase; \
             store it unencrypted (supported: unencrypted RSA of 2048 bits or more, ECDSA P-256 \
             or P-384, Ed25519)"
        );
        assert_eq!(err.reason(), "InvalidPrivateKey");

        let err = check(&cert, ED448_PKCS8, &[]).unwrap_err();
        assert!(
            matches!(err, CertificateError::UnsupportedKey { .. }),
            "{err:?}"
        );

        let err = check(&cert, &format!("{key}{key}"), &[]).unwrap_err();
        assert_eq!(
            err,
            CertificateError::UnsupportedKey {
                detail: "found 2 private keys, expected exactly one".to_owned()
            }
        );
    }

    #[test]
    fn rsa_keys_in_pkcs8_and_pkcs1() {
        let key = KeyPair::from_pem(RSA_PKCS8).unwrap();
        let cert = params(&["rsa.example.com"])
            .self_signed(&key)
            .unwrap()
            .pem();
        assert!(check(&cert, RSA_PKCS8, &["rsa.example.com"]).is_ok());
        assert!(check(&cert, RSA_PKCS1, &["rsa.example.com"]).is_ok());
        // An RSA key with an ECDSA certificate, and the other way round.
        let (ec_cert, ec_key) = self_signed(&["rsa.example.com"]);
        assert!(matches!(
            check(&ec_cert, RSA_PKCS1, &[]),
            Err(CertificateError::KeyMismatch { .. })
        ));
        assert!(matches!(
            check(&cert, &ec_key, &[]),
            Err(CertificateError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn ec_keys_in_pkcs8_and_sec1() {
        let key = KeyPair::from_pem(EC_PKCS8).unwrap();
        let cert = params(&["ec.example.com"]).self_signed(&key).unwrap().pem();
        assert!(check(&cert, EC_PKCS8, &["ec.example.com"]).is_ok());
        // `openssl ecparam -genkey` also writes an EC PARAMETERS block.
        let with_params =
            format!("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{EC_SEC1}");
        assert!(check(&cert, &with_params, &["ec.example.com"]).is_ok());
        let (_, other) = self_signed(&[]);
        assert!(check(&cert, &other, &[]).is_err());
    }

    #[test]
    fn ed25519_key() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = params(&["ed.example.com"]).self_signed(&key).unwrap().pem();
        assert!(check(&cert, &key.serialize_pem(), &["ed.example.com"]).is_ok());
    }

    #[test]
    fn info_serializes_in_camel_case() {
        let info = CertificateInfo {
            not_before: 1,
            not_after: 2,
            dns_names: hosts(&["a"]),
            fingerprint_sha256: "ab".to_owned(),
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(
            json,
            r#"{"notBefore":1,"notAfter":2,"dnsNames":["a"],"fingerprintSha256":"ab"}"#
        );
        assert_eq!(
            serde_json::from_str::<CertificateInfo>(&json).unwrap(),
            info
        );
    }

    #[test]
    fn rfc3339_known_dates() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (951_868_799, "2000-02-29T23:59:59Z"),
            (1_709_210_096, "2024-02-29T12:34:56Z"),
            (NOW, "2025-06-01T00:00:00Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
            (4_107_456_000, "2100-02-28T00:00:00Z"), // 2100 is not a leap year
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (-62_135_596_800, "0001-01-01T00:00:00Z"),
            (-2_208_988_800, "1900-01-01T00:00:00Z"),
        ] {
            assert_eq!(unix_to_rfc3339(secs), text, "{secs}");
        }
    }

    #[test]
    fn rfc3339_agrees_with_the_time_crate() {
        for year in (1600..=2400).step_by(7).chain(1999..=2030) {
            for (month, day) in [(1, 1), (2, 28), (2, 29), (3, 1), (6, 30), (12, 31)] {
                if month == 2
                    && day == 29
                    && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))
                {
                    continue;
                }
                let secs = date_time_ymd(year, month, day).unix_timestamp() + 3_723;
                assert_eq!(
                    unix_to_rfc3339(secs),
                    format!("{year:04}-{month:02}-{day:02}T01:02:03Z")
                );
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(cert in proptest::collection::vec(any::<u8>(), 0..512),
                                       key in proptest::collection::vec(any::<u8>(), 0..512),
                                       now in any::<i64>()) {
            let _ = check_certificate(&cert, &key, &hosts(&["example.com"]), now);
        }

        #[test]
        fn arbitrary_der_in_pem_never_panics(der in proptest::collection::vec(any::<u8>(), 0..512),
                                             flip in any::<prop::sample::Index>(),
                                             now in any::<i64>()) {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
            let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
            let key = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
            let _ = check_certificate(pem.as_bytes(), key.as_bytes(), &[], now);
            // A real certificate with one byte changed.
            let (cert, key) = FIXED.clone();
            let mut cert_der = der_from_pem(&cert);
            let i = flip.index(cert_der.len());
            cert_der[i] ^= 0x5a;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&cert_der);
            let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
            let _ = check_certificate(pem.as_bytes(), key.as_bytes(), &hosts(&["example.com"]), now);
        }

        #[test]
        fn rfc3339_is_total(secs in any::<i64>()) {
            let text = unix_to_rfc3339(secs);
            prop_assert!(text.ends_with('Z'));
        }

        #[test]
        fn rfc3339_round_trips_in_range(secs in -62_135_596_800_i64..=253_402_300_799) {
            let text = unix_to_rfc3339(secs);
            let year: i32 = text[0..4].parse().unwrap();
            let month: u8 = text[5..7].parse().unwrap();
            let day: u8 = text[8..10].parse().unwrap();
            let h: i64 = text[11..13].parse().unwrap();
            let m: i64 = text[14..16].parse().unwrap();
            let s: i64 = text[17..19].parse().unwrap();
            prop_assert_eq!(date_time_ymd(year, month, day).unix_timestamp() + h * 3600 + m * 60 + s, secs);
        }
    }

    static FIXED: std::sync::LazyLock<(String, String)> =
        std::sync::LazyLock::new(|| self_signed(&["example.com"]));
}
