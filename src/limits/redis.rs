//! Limits kept in Redis, so every gateway replica pointing at the same Redis shares one
//! allowance per key.
//!
//! Each check is one `EVALSHA` of [`GCRA_SCRIPT`] (one round trip; the script is loaded on
//! first use, `redis::Script` falls back to `SCRIPT LOAD` after a `NOSCRIPT`). Time is
//! Redis's own `TIME`, so replicas with drifting clocks still agree. A key's state expires
//! when its allowance is whole again: Redis keeps nothing for idle keys.
//!
//! An outage (refused connection, timeout) is reported as [`BackendError`] to the caller,
//! which applies `on_backend_error`; it is logged once when it starts and once when Redis
//! answers again. While it lasts, one check every 250 ms tries Redis and the others fail at
//! once, so a Redis that drops packets does not add `redis_timeout_ms` to every request.
//! The connection manager reconnects in the background: no restart needed.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BackendError, LimitKind, LimitState, Verdict};

/// GCRA in one atomic step. KEYS[1]: the limit's theoretical arrival time (µs, Redis time,
/// stored with full double precision). ARGV: emission interval (µs per unit, at least 1:
/// config refuses larger allowances with this backend), allowance (units), cost (units).
/// Returns {allowed 0|1, remaining, retry_after_µs, reset_µs}. Needs Redis 5 or newer
/// (scripts that call TIME before writing are replicated by effects).
pub const GCRA_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local allowance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local window = interval * allowance
local new_tat = tat + interval * cost
local allow_at = new_tat - window
-- Units are floored with a little slack so that float error never loses a whole one.
if allow_at > now then
  return {0, math.floor((now - (tat - window)) / interval + 1e-6), math.ceil(allow_at - now), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return {1, math.floor((now - allow_at) / interval + 1e-6), 0, math.ceil(new_tat - now)}
";

/// The connection shared by every Redis-backed limit.
pub struct RedisBackend {
    conn: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    /// False during an outage, so it is logged once, not once per request.
    reachable: AtomicBool,
    /// During an outage, when the last attempt went out (ms after `epoch`): other checks
    /// fail at once instead of each waiting `timeout` for a Redis that drops packets.
    last_attempt_ms: AtomicU64,
    epoch: Instant,
}

/// During an outage, at most one check every this many ms tries Redis.
const PROBE_EVERY_MS: u64 = 250;

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects lazily: a Redis that is down at start-up is an outage, not a start failure.
    /// Must be called inside a tokio runtime.
    pub fn new(url: &str, timeout: Duration) -> Result<Arc<Self>, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Arc::new(Self {
            conn,
            script: redis::Script::new(GCRA_SCRIPT),
            timeout,
            reachable: AtomicBool::new(true),
            last_attempt_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }

    /// One `PING`, for benchmarks and readiness of tests.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        pong.map(drop).map_err(|_| BackendError)
    }

    async fn eval(
        &self,
        key: &str,
        interval_us: f64,
        allowance: u32,
        cost: u32,
    ) -> Result<[i64; 4], BackendError> {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !self.reachable.load(Ordering::Relaxed) {
            let last = self.last_attempt_ms.load(Ordering::Relaxed);
            let due = now_ms.saturating_sub(last) >= PROBE_EVERY_MS;
            // One caller wins the probe; the others fail fast.
            if !due
                || self
                    .last_attempt_ms
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return Err(BackendError);
            }
        }
        let mut conn = self.conn.clone();
        let mut call = self.script.key(key);
        call.arg(interval_us).arg(allowance).arg(cost);
        let answer =
            tokio::time::timeout(self.timeout, call.invoke_async::<Vec<i64>>(&mut conn)).await;
        let result = match answer {
            Ok(Ok(v)) => <[i64; 4]>::try_from(v).map_err(|_| "unexpected script answer".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_elapsed) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match result {
            Ok(v) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "rate-limit backend (Redis) answers again; limits are shared again"
                    );
                }
                Ok(v)
            }
            Err(error) => {
                self.last_attempt_ms.store(now_ms, Ordering::Relaxed);
                if self.reachable.swap(false, Ordering::Relaxed) {
                    tracing::error!(%error, "rate-limit backend (Redis) unreachable; rate_limits.on_backend_error applies until it answers");
                }
                Err(BackendError)
            }
        }
    }
}

/// One per-minute allowance of one key, in Redis.
#[derive(Debug)]
pub struct RedisLimit {
    backend: Arc<RedisBackend>,
    /// `vision-gateway:{kind}:{key name}`.
    key: String,
    per_minute: NonZeroU32,
    /// µs to earn back one unit.
    interval_us: f64,
}

impl RedisLimit {
    pub fn new(
        backend: Arc<RedisBackend>,
        key_name: &str,
        kind: LimitKind,
        per_minute: NonZeroU32,
    ) -> Self {
        Self {
            backend,
            key: format!("vision-gateway:{}:{key_name}", kind.as_str()),
            per_minute,
            interval_us: 60_000_000.0 / f64::from(per_minute.get()),
        }
    }

    pub fn per_minute(&self) -> NonZeroU32 {
        self.per_minute
    }

    /// Charges `cost` if it fits now: one round trip.
    pub async fn check(&self, cost: NonZeroU32) -> Result<Verdict, BackendError> {
        let [allowed, remaining, retry_us, reset_us] = self
            .backend
            .eval(
                &self.key,
                self.interval_us,
                self.per_minute.get(),
                cost.get(),
            )
            .await?;
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let state = LimitState {
            limit: u64::from(self.per_minute.get()),
            remaining: u64::try_from(remaining)
                .unwrap_or(0)
                .min(u64::from(self.per_minute.get())),
            reset: micros(reset_us),
        };
        Ok(if allowed == 1 {
            Verdict::Allowed(state)
        } else {
            Verdict::Refused {
                state,
                retry_after: micros(retry_us),
            }
        })
    }
}
