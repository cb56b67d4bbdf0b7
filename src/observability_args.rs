//! Flags for the response cache, access log and traces, shared by
//! `ferrogate serve` and `ferrogate dataplane`.

use anyhow::Context;
use dataplane::accesslog::{AccessLogConfig, AccessLogTarget};
use dataplane::telemetry::TelemetryConfig;

/// Cache, access log and trace settings.
#[derive(clap::Args, Debug, Clone)]
pub struct ObservabilityArgs {
    /// Total memory of the response cache (bytes; suffixes k, m, g).
    #[arg(long, default_value = "128m", value_parser = parse_bytes)]
    pub cache_max_bytes: u64,
    /// Access log: `stdout` (one JSON line per request, after the
    /// listening line) or `off`.
    #[arg(long, default_value = "stdout", value_parser = ["stdout", "off"])]
    pub access_log: String,
    /// Share of requests written to the access log, 0 to 1 (5xx answers
    /// are always written).
    #[arg(long, default_value_t = 1.0)]
    pub access_log_sample: f64,
    /// OTLP/HTTP endpoint for traces (`http://collector:4318`; `/v1/traces`
    /// is added when the URL has no path). Without it, trace context is
    /// still propagated to upstreams, but nothing is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of traces started here (no sampled `traceparent` from the
    /// client) that are exported, 0 to 1.
    #[arg(long, default_value_t = 1.0)]
    pub trace_sample: f64,
}

impl ObservabilityArgs {
    /// The access log settings, checked.
    pub fn access_log(&self) -> anyhow::Result<AccessLogConfig> {
        if !(0.0..=1.0).contains(&self.access_log_sample) {
            anyhow::bail!(
                "--access-log-sample: {} is not between 0 and 1",
                self.access_log_sample
            );
        }
        Ok(AccessLogConfig {
            target: if self.access_log == "off" {
                AccessLogTarget::Off
            } else {
                AccessLogTarget::Stdout
            },
            sample: self.access_log_sample,
        })
    }

    /// The trace settings, checked.
    pub fn telemetry(&self) -> anyhow::Result<TelemetryConfig> {
        if !(0.0..=1.0).contains(&self.trace_sample) {
            anyhow::bail!(
                "--trace-sample: {} is not between 0 and 1",
                self.trace_sample
            );
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .with_context(|| format!("--otlp-endpoint: {endpoint:?} is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
                anyhow::bail!("--otlp-endpoint: {endpoint:?} must be an http:// or https:// URL");
            }
        }
        Ok(TelemetryConfig {
            otlp_endpoint: self.otlp_endpoint.clone(),
            sample: self.trace_sample,
            service_name: "ferrogate".to_owned(),
        })
    }
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 64m"))?;
    let factor = match unit.trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size like 64m")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("1t").is_err());
    }
}
