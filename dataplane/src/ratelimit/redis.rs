//! Global limits: GCRA state shared by every dataplane through Redis.
//!
//! One Lua script decides all the global limits of a request atomically on
//! the server: it reads each key's TAT, decides with the same arithmetic as
//! [`super::gcra`], and writes the new TATs only when no enforced limit
//! refused (so a refused request consumes nothing). Time is Redis's own
//! (`TIME`), so dataplanes with skewed clocks still agree. Each key expires
//! when its TAT passes (it is idle then), so Redis memory is bounded by the
//! keys active within one period.
//!
//! Failures: every call is bounded by a timeout. After a failure the store
//! is considered down for a second and requests go straight to the policy's
//! `failureMode` without waiting; then one request probes again. The
//! connection manager reconnects in the background.

use super::gcra::{Decision, Rate};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// GCRA over several keys; see the module docs. KEYS: one per limit.
/// ARGV: per key, interval (µs), tolerance (µs), enforce (1 or 0). Returns
/// per key: passed (1/0), remaining, retry-after (µs), reset-after (µs).
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local tats = {}
local refused = false
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local enforce = ARGV[3 * i] == '1'
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then
    if enforce then refused = true end
    tats[i] = false
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = allow_at - now
    out[#out + 1] = tat - now
  else
    local new_tat = tat + interval
    tats[i] = new_tat
    local remaining = 0
    if now + tolerance >= new_tat then
      remaining = math.floor((now + tolerance - new_tat) / interval) + 1
    end
    out[#out + 1] = 1
    out[#out + 1] = remaining
    out[#out + 1] = 0
    out[#out + 1] = new_tat - now
  end
end
if not refused then
  for i, key in ipairs(KEYS) do
    if tats[i] then
      local ttl = math.ceil((tats[i] - now) / 1000) + 1000
      redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl)
    end
  end
end
return out
"#;

/// How long the store is skipped after a failure.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// One global limit of a request.
#[derive(Clone, Debug)]
pub struct GlobalItem {
    /// The Redis key.
    pub key: String,
    /// The limit.
    pub rate: Rate,
    /// Whether a refusal refuses the request (not shadow mode).
    pub enforce: bool,
}

/// Why the store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store failed recently and is being skipped.
    #[error("redis is marked down after a recent failure")]
    Down,
    /// No answer within the timeout.
    #[error("redis did not answer in time")]
    Timeout,
    /// The call failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The answer did not have the expected shape.
    #[error("unexpected answer from the rate-limit script")]
    BadAnswer,
}

/// A connection to Redis for global limits.
pub struct RedisStore {
    client: redis::Client,
    manager: OnceLock<Result<ConnectionManager, String>>,
    script: redis::Script,
    timeout: Duration,
    epoch: Instant,
    down_until: AtomicU64,
}

/// Checks a Redis URL (`redis://host:port/db`).
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("{url:?} is not a Redis URL: {e}"))
}

impl RedisStore {
    /// A store for `url`; connects on first use. `timeout` bounds each call.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(RedisStore {
            client,
            manager: OnceLock::new(),
            script: redis::Script::new(SCRIPT),
            timeout,
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
        })
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn manager(&self) -> Result<ConnectionManager, StoreError> {
        let created = self.manager.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                .map_err(|e| e.to_string())
        });
        match created {
            Ok(manager) => Ok(manager.clone()),
            Err(_) => Err(StoreError::BadAnswer),
        }
    }

    /// Decides `items` atomically. Errors mean "could not decide"; the
    /// caller applies the failure mode.
    pub async fn check(&self, items: &[GlobalItem]) -> Result<Vec<Decision>, StoreError> {
        if self.elapsed_ms() < self.down_until.load(Ordering::Relaxed) {
            return Err(StoreError::Down);
        }
        let result = tokio::time::timeout(self.timeout, self.call(items)).await;
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        };
        if result.is_err() {
            let until = self
                .elapsed_ms()
                .saturating_add(DOWN_FOR.as_millis() as u64);
            self.down_until.store(until, Ordering::Relaxed);
        }
        result
    }

    async fn call(&self, items: &[GlobalItem]) -> Result<Vec<Decision>, StoreError> {
        let mut manager = self.manager()?;
        let mut invocation = self.script.prepare_invoke();
        for item in items {
            invocation.key(item.key.as_str());
            invocation.arg(micros(item.rate.interval));
            invocation.arg(micros(item.rate.tolerance));
            invocation.arg(if item.enforce { "1" } else { "0" });
        }
        let answer: Vec<i64> = invocation.invoke_async(&mut manager).await?;
        parse_answer(&answer, items.len())
    }
}

/// Nanoseconds as decimal microseconds for the script.
fn micros(ns: u64) -> String {
    format!("{}.{:03}", ns / 1_000, ns % 1_000)
}

fn parse_answer(answer: &[i64], items: usize) -> Result<Vec<Decision>, StoreError> {
    if answer.len() != items * 4 {
        return Err(StoreError::BadAnswer);
    }
    let ns = |us: i64| u64::try_from(us.max(0)).unwrap_or(0).saturating_mul(1_000);
    Ok(answer
        .chunks_exact(4)
        .map(|c| Decision {
            allowed: c[0] == 1,
            remaining: u64::try_from(c[1].max(0)).unwrap_or(0),
            retry_after: ns(c[2]),
            reset_after: ns(c[3]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_keep_sub_microsecond_precision() {
        assert_eq!(micros(1_714_285_715), "1714285.715");
        assert_eq!(micros(1), "0.001");
    }

    #[test]
    fn answers_map_to_decisions() {
        let d = parse_answer(&[1, 4, 0, 400_000, 0, 0, 250_000, 2_000_000], 2).expect("answer");
        assert!(d[0].allowed);
        assert_eq!(d[0].remaining, 4);
        assert_eq!(d[0].reset_after, 400_000_000);
        assert!(!d[1].allowed);
        assert_eq!(d[1].retry_after, 250_000_000);
        assert!(parse_answer(&[1, 2, 3], 1).is_err());
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_url("http://nope").is_err());
    }
}
