//! `TlsCertificate`: which certificate serves which host names.
//!
//! The certificate always lives in a `kubernetes.io/tls` Secret
//! (`secretName`), so cert-manager, `kubectl create secret tls` and
//! Ferrogate's own issuer all work the same way: updating the Secret rotates
//! the certificate on every dataplane without a restart. With `issuer`, the
//! controller itself issues the certificate from a CA Secret and renews it
//! `renewBefore` its expiry with a fresh key — the "rotate every month"
//! practice without an extra component. Client-certificate validation (mTLS)
//! and the minimum TLS version are per certificate, so they follow SNI.

use crate::common::Duration;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A certificate for a set of host names.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrogate.dev",
    version = "v1alpha1",
    kind = "TlsCertificate",
    namespaced,
    status = "TlsCertificateStatus",
    shortname = "tlscert",
    category = "ferrogate",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.secretName"}"#,
    printcolumn = r#"{"name":"NotAfter","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificateSpec {
    /// SNI names served with this certificate; `*.example.com` for a
    /// wildcard. The certificate must cover every name.
    #[schemars(length(min = 1, max = 64))]
    pub hosts: Vec<String>,
    /// The `kubernetes.io/tls` Secret (in this namespace) holding `tls.crt`
    /// and `tls.key`. With `issuer`, the controller writes it.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Have the controller issue and renew the certificate from a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Issuer>,
    /// Lowest TLS version offered: `1.2` (default) or `1.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    /// Require (or request) client certificates signed by a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidation>,
}

/// Issuance from a CA held in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Issuer {
    /// A Secret in this namespace with the CA's `tls.crt` and `tls.key`.
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret_name: String,
    /// Validity of issued certificates. Default 2160h (90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub validity: Option<Duration>,
    /// Renew (with a new key) this long before expiry. Default 720h (30
    /// days); must be shorter than `validity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub renew_before: Option<Duration>,
    /// Key type of issued certificates: `EcdsaP256` (default) or `Rsa2048`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<KeyAlgorithm>,
}

/// Key types for issued certificates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256.
    EcdsaP256,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
}

/// TLS protocol versions.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

/// Client certificate validation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientValidation {
    /// A Secret in this namespace whose `ca.crt` holds the trusted CAs.
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret_name: String,
    /// `Require` (default): handshakes without a valid client certificate
    /// fail. `Optional`: a certificate is requested and checked if sent.
    #[serde(default)]
    pub mode: ClientValidationMode,
}

/// Whether client certificates are required.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ClientValidationMode {
    /// A valid client certificate is required.
    #[default]
    Require,
    /// A client certificate is checked when sent.
    Optional,
}

/// Status of a TlsCertificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificateStatus {
    /// The `metadata.generation` the controller last processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Accepted`, `ResolvedRefs`, `Programmed`, and `Expiring`
    /// when the certificate expires within 14 days.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::common::Condition>,
    /// Expiry of the served certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the controller will renew it (with `issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// How many connected dataplanes serve the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplanes: Option<String>,
}
