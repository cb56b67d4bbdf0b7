//! Types shared by all four kinds: references to targets and Secrets, status
//! conditions, and the duration format.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration such as `250ms`, `5s`, `1m30s` or `720h` (units h, m, s, ms;
/// the same format as Gateway API's `Duration`).
pub type Duration = String;

/// The pattern every duration field must match.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// Parses a duration in the `Duration` format into milliseconds.
///
/// Returns `None` when the text does not match the format.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let bytes = text.as_bytes();
    let mut total: u64 = 0;
    let mut i = 0;
    let mut parts = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 5 {
            return None;
        }
        let value: u64 = text[start..i].parse().ok()?;
        let unit_ms = if text[i..].starts_with("ms") {
            i += 2;
            1
        } else if text[i..].starts_with('h') {
            i += 1;
            3_600_000
        } else if text[i..].starts_with('m') {
            i += 1;
            60_000
        } else if text[i..].starts_with('s') {
            i += 1;
            1_000
        } else {
            return None;
        };
        total = total.checked_add(value.checked_mul(unit_ms)?)?;
        parts += 1;
        if parts > 4 {
            return None;
        }
    }
    Some(total)
}

/// A reference from a policy to the ApiRoute it applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Kind of the target. Only `ApiRoute` is supported.
    #[serde(default = "default_target_kind")]
    pub kind: TargetKind,
    /// Name of the ApiRoute, in the policy's own namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Name of one rule of the ApiRoute (`rules[].name`). When empty the policy
    /// applies to every rule of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub section_name: Option<String>,
}

fn default_target_kind() -> TargetKind {
    TargetKind::ApiRoute
}

/// Kinds a policy can target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetKind {
    /// An ApiRoute (`ferrogate.dev/v1alpha1`).
    ApiRoute,
}

/// A reference to a key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret; defaults to the referring resource's namespace.
    /// A Secret in another namespace must grant access with the
    /// `ferrogate.dev/allowed-namespaces` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A condition on a resource's status, following the Kubernetes convention
/// (`metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition: `Accepted`, `ResolvedRefs`, `Programmed`, or
    /// `Conflicted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One word in CamelCase saying why the condition has its status.
    pub reason: String,
    /// A human-readable message naming the field at fault, if any.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the condition last changed status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Status shared by every Ferrogate resource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The `metadata.generation` the controller last processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Accepted`, `ResolvedRefs`, `Programmed` (and `Conflicted`
    /// for routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How many connected dataplanes serve the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplanes: Option<String>,
}

/// Classes of client device, derived from `User-Agent` and the
/// `Sec-CH-UA-Mobile` client hint.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// Phones.
    Mobile,
    /// Tablets.
    Tablet,
    /// Desktop and laptop browsers, and clients that say nothing else.
    Desktop,
    /// Crawlers, monitors and scripted clients that identify as such.
    Bot,
}

impl DeviceClass {
    /// The lowercase name used in the API, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Mobile => "mobile",
            DeviceClass::Tablet => "tablet",
            DeviceClass::Desktop => "desktop",
            DeviceClass::Bot => "bot",
        }
    }
}

/// HTTP methods a match or rule can name.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Connect,
    Trace,
}

impl Method {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations_parse_like_gateway_api() {
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("5s"), Some(5_000));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("720h"), Some(2_592_000_000));
        assert_eq!(parse_duration_ms(""), None);
        assert_eq!(parse_duration_ms("5"), None);
        assert_eq!(parse_duration_ms("s"), None);
        assert_eq!(parse_duration_ms("1d"), None);
        assert_eq!(parse_duration_ms("123456s"), None);
        assert_eq!(parse_duration_ms("1h1m1s1ms1s"), None);
    }
}
