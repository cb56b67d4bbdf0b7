//! The JSON access log: one line per request on standard output.
//!
//! ```text
//!  proxy::handle ─▶ AccessLog::log (sampling, one JSON line)
//!                      │ bounded queue (try_send: never blocks a request)
//!                      ▼
//!                  writer thread ─▶ buffered stdout, flushed when idle
//! ```
//!
//! `--access-log stdout` (the default, like nginx and Kong) or `off`;
//! `--access-log-sample 0.1` logs one request in ten, chosen at random,
//! but every 5xx answer is logged whatever the sampling. When the writer
//! cannot keep up (stdout blocked), lines are dropped rather than slowing
//! requests or growing memory; `ferrogate_access_log_lines_total` counts
//! what was written.
//!
//! `ferrogate serve` prints its `{"event":"listening",...}` line first;
//! access log lines follow it, so a reader can take the first line as the
//! listening report and everything after as the log.
//!
//! Fields of a line (absent values are `null`):
//!
//! | field | meaning |
//! | --- | --- |
//! | `time` | when the request arrived, RFC 3339 UTC with milliseconds |
//! | `request_id` | the `x-request-id` sent upstream and to the client |
//! | `trace_id` | W3C trace id |
//! | `route`, `rule` | `namespace/name` and rule of the matched route |
//! | `method`, `host`, `path` | of the request (path without query) |
//! | `status` | status sent to the client |
//! | `error` | error code when Ferrogate answered with an error |
//! | `bytes_in` | request body size when known (`Content-Length`) |
//! | `bytes_out` | response body size: known when the head is sent, or counted as the body streams (the line is then written when the body ends, or when the client goes away, with the bytes sent until then) |
//! | `duration_ms` | time until the response head was ready |
//! | `upstream` | `host:port` of the last upstream attempt |
//! | `upstream_cluster` | its cluster |
//! | `upstream_duration_ms` | time of the upstream exchange(s) |
//! | `attempts` | upstream attempts made |
//! | `device` | device class of the client |
//! | `consumer` | authenticated consumer |
//! | `cache` | cache result (`hit`, `miss`, `revalidated`, `collapsed`, `bypass`) |
//! | `rate_limit` | rate-limit decision: `allowed`, `limited`, `shadow_exceeded`, `allowed_store_unavailable` |
//! | `rate_limited_by` | the limit that refused the request |

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where access log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AccessLogTarget {
    /// Nowhere.
    Off,
    /// Standard output.
    #[default]
    Stdout,
}

/// Access log settings.
#[derive(Clone, Debug)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub target: AccessLogTarget,
    /// Share of requests logged, 0 to 1 (5xx answers are always logged).
    pub sample: f64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            target: AccessLogTarget::Stdout,
            sample: 1.0,
        }
    }
}

/// Lines queued for the writer at most.
const QUEUE: usize = 16 * 1024;

/// The access log.
pub struct AccessLog {
    sender: Option<SyncSender<String>>,
    sample: f64,
    lines: Counter,
}

/// One request, as logged.
#[derive(Serialize, Debug, Default)]
pub struct Line<'a> {
    /// See the module docs for each field.
    pub time: String,
    #[allow(missing_docs)]
    pub request_id: &'a str,
    #[allow(missing_docs)]
    pub trace_id: Option<String>,
    #[allow(missing_docs)]
    pub route: Option<&'a str>,
    #[allow(missing_docs)]
    pub rule: Option<&'a str>,
    #[allow(missing_docs)]
    pub method: &'a str,
    #[allow(missing_docs)]
    pub host: Option<&'a str>,
    #[allow(missing_docs)]
    pub path: &'a str,
    #[allow(missing_docs)]
    pub status: u16,
    #[allow(missing_docs)]
    pub error: Option<&'a str>,
    #[allow(missing_docs)]
    pub bytes_in: Option<u64>,
    #[allow(missing_docs)]
    pub bytes_out: Option<u64>,
    #[allow(missing_docs)]
    pub duration_ms: f64,
    #[allow(missing_docs)]
    pub upstream: Option<&'a str>,
    #[allow(missing_docs)]
    pub upstream_cluster: Option<&'a str>,
    #[allow(missing_docs)]
    pub upstream_duration_ms: Option<f64>,
    #[allow(missing_docs)]
    pub attempts: u32,
    #[allow(missing_docs)]
    pub device: Option<&'a str>,
    #[allow(missing_docs)]
    pub consumer: Option<&'a str>,
    #[allow(missing_docs)]
    pub cache: Option<&'a str>,
    #[allow(missing_docs)]
    pub rate_limit: Option<&'a str>,
    #[allow(missing_docs)]
    pub rate_limited_by: Option<&'a str>,
}

impl AccessLog {
    /// Starts the writer thread when logging is on.
    pub fn new(config: &AccessLogConfig, lines: Counter) -> AccessLog {
        let sender = match config.target {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stdout => {
                let (tx, rx) = sync_channel::<String>(QUEUE);
                let spawned = std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || write_lines(rx, std::io::stdout()));
                spawned.ok().map(|_| tx)
            }
        };
        AccessLog {
            sender,
            sample: config.sample.clamp(0.0, 1.0),
            lines,
        }
    }

    /// Whether the access log is on at all.
    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Whether a request with this status would be logged (decides the
    /// sampling; call once per request).
    pub fn wants(&self, status: u16) -> bool {
        self.sender.is_some()
            && (status >= 500 || self.sample >= 1.0 || rand::random::<f64>() < self.sample)
    }

    /// Queues a line; drops it when the writer is behind.
    pub fn write(&self, line: &Line<'_>) {
        let Some(sender) = &self.sender else { return };
        let Ok(text) = serde_json::to_string(line) else {
            return;
        };
        match sender.try_send(text) {
            Ok(()) => {
                self.lines.inc();
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl AccessLog {
    /// A line to write later, when its `bytes_out` is known (the response
    /// body streams); `None` when logging is off.
    pub fn pending(&self, line: &Line<'_>) -> Option<PendingLine> {
        let sender = self.sender.clone()?;
        let line = serde_json::to_value(line).ok()?;
        Some(PendingLine {
            line,
            sender,
            lines: self.lines.clone(),
        })
    }
}

/// An access log line waiting for the end of its response body.
#[derive(Debug)]
pub struct PendingLine {
    line: serde_json::Value,
    sender: SyncSender<String>,
    lines: Counter,
}

impl PendingLine {
    /// Queues the line with the bytes sent; drops it when the writer is
    /// behind.
    pub fn finish(mut self, bytes_out: u64) {
        if let Some(fields) = self.line.as_object_mut() {
            fields.insert("bytes_out".into(), bytes_out.into());
        }
        let Ok(text) = serde_json::to_string(&self.line) else {
            return;
        };
        if self.sender.try_send(text).is_ok() {
            self.lines.inc();
        }
    }
}

fn write_lines(rx: Receiver<String>, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        if writeln!(out, "{line}").is_err() {
            return;
        }
        // Write what is queued, then flush while idle.
        while let Ok(line) = rx.try_recv() {
            if writeln!(out, "{line}").is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// `time` as RFC 3339 UTC with milliseconds: `2024-05-01T12:34:56.789Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(rfc3339(t), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn lines_are_json_and_the_writer_drains_the_queue() {
        let (tx, rx) = sync_channel::<String>(8);
        let line = Line {
            time: rfc3339(UNIX_EPOCH),
            request_id: "r1",
            method: "GET",
            path: "/a\"b",
            status: 200,
            ..Default::default()
        };
        tx.send(serde_json::to_string(&line).unwrap()).unwrap();
        tx.send("{}".into()).unwrap();
        drop(tx);
        let mut out = Vec::new();
        write_lines(rx, &mut out);
        let text = String::from_utf8(out).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["path"], "/a\"b");
        assert_eq!(first["route"], serde_json::Value::Null);
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn sampling() {
        let off = AccessLog::new(
            &AccessLogConfig {
                target: AccessLogTarget::Off,
                sample: 1.0,
            },
            Counter::default(),
        );
        assert!(!off.wants(500));
        let (tx, _rx) = sync_channel::<String>(1);
        let none = AccessLog {
            sender: Some(tx),
            sample: 0.0,
            lines: Counter::default(),
        };
        assert!(!none.wants(200));
        assert!(none.wants(503));
    }
}
