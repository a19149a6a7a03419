//! Per-key rate limits: GCRA over requests per minute and tokens per minute.
//!
//! A limit's state lives in this process ([`memory`], governor) or in Redis ([`redis`], one
//! Lua script per check, shared by every gateway replica). Both answer the same
//! [`Verdict`], which carries what the `x-ratelimit-*` headers report. [`enforce`] is the one
//! place a verdict becomes a refusal, a fact for the access log, or a backend-error policy.

pub mod in_flight;
pub mod memory;
pub mod redis;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::OnBackendError;
use crate::context::RequestContext;
use crate::error::GatewayError;

/// Which per-minute allowance a check charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Requests,
    Tokens,
}

impl LimitKind {
    /// The word OpenAI uses in header names and in the 429 `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }
}

/// A limit's state after a check: what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The allowance per minute.
    pub limit: u64,
    /// What could be spent right now.
    pub remaining: u64,
    /// Until the allowance is whole again.
    pub reset: Duration,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Charged.
    Allowed(LimitState),
    /// Not charged: the cost fits the allowance, but not yet.
    Refused {
        state: LimitState,
        retry_after: Duration,
    },
}

/// The backend could not answer (Redis unreachable or too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendError;

/// Where a limit's state is kept.
#[derive(Debug)]
pub enum Store {
    Memory(memory::MemoryLimit),
    Redis(redis::RedisLimit),
}

/// One per-minute allowance of one key.
#[derive(Debug)]
pub struct Limit {
    store: Store,
    /// When this process's last check expected the allowance to be whole again, in ns
    /// after `epoch`: what [`Limit::peek`] reads for responses this limit did not check.
    /// One atomic store per check, no lock.
    full_at: AtomicU64,
    epoch: Instant,
}

impl Limit {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            full_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The allowance per minute.
    pub fn per_minute(&self) -> NonZeroU32 {
        match &self.store {
            Store::Memory(l) => l.per_minute(),
            Store::Redis(l) => l.per_minute(),
        }
    }

    /// Charges `cost` (at most [`Self::per_minute`]) if it fits now.
    pub async fn check(&self, cost: NonZeroU32) -> Result<Verdict, BackendError> {
        let verdict = match &self.store {
            Store::Memory(l) => l.check(cost),
            // Boxed: the Redis round trip's future is large, and every checkpoint future
            // that may await a check would carry (and move) its size on every request.
            Store::Redis(l) => Box::pin(l.check(cost)).await?,
        };
        let (Verdict::Allowed(state) | Verdict::Refused { state, .. }) = verdict;
        let full_at = self.epoch.elapsed().saturating_add(state.reset);
        self.full_at.store(
            u64::try_from(full_at.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(verdict)
    }

    /// The state now, without charging anything: the last check's state plus what has come
    /// back since (GCRA earns back at a constant rate, so this is what a check would see for
    /// the memory store, and this process's latest view for Redis). For the headers of
    /// responses this limit did not check (a request refused earlier, `/v1/models`, inspect).
    pub fn peek(&self) -> LimitState {
        let limit = u64::from(self.per_minute().get());
        let full_at = Duration::from_nanos(self.full_at.load(Ordering::Relaxed));
        let reset = full_at.saturating_sub(self.epoch.elapsed());
        // Units still missing: the reset time in intervals of 60 s / limit, rounded up.
        let missing = (reset.as_nanos() * u128::from(limit)).div_ceil(60_000_000_000);
        LimitState {
            limit,
            remaining: limit.saturating_sub(u64::try_from(missing).unwrap_or(u64::MAX)),
            reset,
        }
    }
}

/// Charges `cost` against `limit` for the key `key`: records the state for the headers,
/// refuses with 429 when it does not fit (or can never fit), and applies `on_error` when the
/// backend cannot answer.
pub async fn enforce(
    limit: &Limit,
    kind: LimitKind,
    cost: u64,
    key: &str,
    on_error: OnBackendError,
    ctx: Option<&RequestContext>,
) -> Result<(), GatewayError> {
    let per_minute = limit.per_minute();
    let Some(charge) = u32::try_from(cost)
        .ok()
        .filter(|c| *c <= per_minute.get())
        .map(|c| NonZeroU32::new(c).unwrap_or(NonZeroU32::MIN))
    else {
        if let Some(ctx) = ctx {
            let _ = ctx.limit_refused.set(kind);
        }
        return Err(GatewayError::NeverFits {
            kind,
            cost,
            allowance: per_minute.get(),
            key: key.into(),
        });
    };
    match limit.check(charge).await {
        Ok(Verdict::Allowed(state)) => {
            if let Some(ctx) = ctx {
                ctx.record_limit(kind, state);
            }
            Ok(())
        }
        Ok(Verdict::Refused { state, retry_after }) => {
            if let Some(ctx) = ctx {
                ctx.record_limit(kind, state);
                let _ = ctx.limit_refused.set(kind);
            }
            Err(GatewayError::RateLimited {
                kind,
                allowance: per_minute.get(),
                key: key.into(),
                retry_after,
            })
        }
        Err(BackendError) => {
            if let Some(ctx) = ctx {
                let _ = ctx.limit_backend_error.set(());
            }
            match on_error {
                OnBackendError::Allow => Ok(()),
                OnBackendError::Deny => Err(GatewayError::LimitBackendUnavailable),
            }
        }
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: Go's format ("6m0s", "1.5s", "12ms").
pub fn reset_text(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    // Whole milliseconds, rounded up: a client waiting this long is never early.
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let seconds = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peek_reports_without_charging() {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        let limit = Limit::new(Store::Memory(memory::MemoryLimit::new(n(600))));
        let fresh = limit.peek();
        assert_eq!(
            (fresh.limit, fresh.remaining, fresh.reset),
            (600, 600, Duration::ZERO)
        );
        let charged = limit.check(n(300)).await;
        assert!(
            matches!(charged, Ok(Verdict::Allowed(s)) if s.remaining == 300),
            "{charged:?}"
        );
        for _ in 0..3 {
            let p = limit.peek();
            assert_eq!((p.remaining, p.reset), (300, Duration::from_secs(30)));
        }
        // Paused time: 10 s earn back exactly 100 (one per 100 ms).
        tokio::time::advance(Duration::from_secs(10)).await;
        let p = limit.peek();
        assert_eq!((p.remaining, p.reset), (400, Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limit.peek().remaining, 600);
    }

    #[test]
    fn reset_is_written_like_openai() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(1), "1ms"),
            (Duration::from_millis(12), "12ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(59_947), "59.947s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(61_050), "1m1.05s"),
            (Duration::from_secs(3600), "1h0m0s"),
        ];
        for (d, want) in cases {
            assert_eq!(reset_text(d), want, "{d:?}");
        }
    }
}
