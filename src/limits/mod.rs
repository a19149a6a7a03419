//! Per-key rate limits: GCRA over requests per minute and tokens per minute.
//!
//! A limit's state lives in this process ([`memory`], governor) or in Redis ([`redis`], one
//! Lua script per check, shared by every gateway replica). Both answer the same
//! [`Verdict`], which carries what the `x-ratelimit-*` headers report. [`enforce`] is the one
//! place a verdict becomes a refusal, a fact for the access log, or a backend-error policy.

pub mod memory;
pub mod redis;

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// The state the last check of this process saw, and when: what [`Limit::peek`]
    /// extrapolates for responses this limit did not check.
    last: Mutex<Option<(LimitState, Instant)>>,
}

impl Limit {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            last: Mutex::new(None),
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
            Store::Redis(l) => l.check(cost).await?,
        };
        let state = match verdict {
            Verdict::Allowed(s) | Verdict::Refused { state: s, .. } => s,
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some((state, Instant::now()));
        }
        Ok(verdict)
    }

    /// The state now, without charging anything: the last check's state plus what has come
    /// back since (GCRA earns back at a constant rate, so this is exact for the memory store
    /// and this process's view for Redis). For the headers of responses this limit did not
    /// check (a request refused before the token check, `/v1/models`, inspect).
    pub fn peek(&self) -> LimitState {
        let limit = u64::from(self.per_minute().get());
        let last = self.last.lock().ok().and_then(|l| *l);
        let Some((state, at)) = last else {
            return LimitState {
                limit,
                remaining: limit,
                reset: Duration::ZERO,
            };
        };
        let reset = state.reset.saturating_sub(at.elapsed());
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
    let ms = d.as_millis();
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

    #[tokio::test]
    async fn peek_reports_without_charging() {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        let limit = Limit::new(Store::Memory(memory::MemoryLimit::new(n(600))));
        let fresh = limit.peek();
        assert_eq!(
            (fresh.limit, fresh.remaining, fresh.reset),
            (600, 600, Duration::ZERO)
        );
        assert!(matches!(limit.check(n(300)).await, Ok(Verdict::Allowed(s)) if s.remaining == 300));
        for _ in 0..3 {
            let p = limit.peek();
            // 300 spent; at most a few ms have passed (one unit per 100 ms).
            assert!((300..=301).contains(&p.remaining), "{p:?}");
            assert!(
                p.reset <= Duration::from_secs(30) && p.reset > Duration::from_secs(29),
                "{p:?}"
            );
        }
        assert!(matches!(limit.check(n(300)).await, Ok(Verdict::Allowed(s)) if s.remaining <= 1));
    }

    #[test]
    fn reset_is_written_like_openai() {
        let cases = [
            (Duration::from_millis(0), "0ms"),
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
