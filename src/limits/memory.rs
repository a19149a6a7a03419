//! Limits kept in this process: governor's GCRA, one state per configured key and limit.
//!
//! State is allocated once per `[[keys]]` entry at start-up, so memory does not grow with
//! traffic or with the number of distinct (wrong) keys clients try: there is nothing to
//! prune. The clock is a parameter so tests drive time by hand.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{LimitState, Verdict};

/// One per-minute allowance.
///
/// Each unit (a request, a token) is `scale` governor cells, so the state governor reports
/// (whole cells left) gives the time until the allowance is whole again to within
/// 1/`scale` of a unit's interval, not a whole interval (at 1 request a minute that is the
/// difference between 60 ms and 60 s). GCRA is linear, so decisions are unchanged.
pub struct MemoryLimit<C: Clock + Clone = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
    clock: C,
    per_minute: NonZeroU32,
    /// Cells per unit.
    scale: u32,
    /// Time to earn back one cell.
    cell: Duration,
}

impl std::fmt::Debug for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLimit")
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

impl MemoryLimit {
    /// `per_minute` units a minute, all of which may be spent at once.
    pub fn new(per_minute: NonZeroU32) -> Self {
        Self::with_clock(per_minute, DefaultClock::default())
    }
}

/// Cells per unit: as many as fit governor's `u32` burst, at most 1000.
fn scale_for(per_minute: NonZeroU32) -> u32 {
    (u32::MAX / per_minute.get()).clamp(1, 1000)
}

impl<C: Clock + Clone> MemoryLimit<C> {
    /// The same, on a given clock.
    pub fn with_clock(per_minute: NonZeroU32, clock: C) -> Self {
        let scale = scale_for(per_minute);
        let cells = per_minute.saturating_mul(NonZeroU32::new(scale).unwrap_or(NonZeroU32::MIN));
        let quota = Quota::per_minute(cells);
        let cell = quota.replenish_interval();
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Self {
            limiter,
            clock,
            per_minute,
            scale,
            cell,
        }
    }

    pub fn per_minute(&self) -> NonZeroU32 {
        self.per_minute
    }

    /// Charges `cost` (at most `per_minute`) if it fits now.
    pub fn check(&self, cost: NonZeroU32) -> Verdict {
        let charge = cost.saturating_mul(NonZeroU32::new(self.scale).unwrap_or(NonZeroU32::MIN));
        match self.limiter.check_n(charge) {
            Ok(Ok(snapshot)) => {
                Verdict::Allowed(self.state(u64::from(snapshot.remaining_burst_capacity())))
            }
            Ok(Err(not_until)) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                // Waiting earns one cell per interval: what is missing is what the wait buys.
                let missing = ceil_div(retry_after, self.cell);
                let left = u64::from(charge.get()).saturating_sub(missing);
                // Exact: once `cost` is back, the rest of the allowance follows.
                let rest = self.per_minute.get() - cost.get().min(self.per_minute.get());
                let reset = retry_after
                    .saturating_add(self.cell.saturating_mul(self.scale.saturating_mul(rest)));
                Verdict::Refused {
                    state: LimitState {
                        reset,
                        ..self.state(left)
                    },
                    retry_after,
                }
            }
            // Callers never charge more than the allowance (`limits::enforce`).
            Err(_insufficient) => Verdict::Refused {
                state: self.state(0),
                retry_after: Duration::from_secs(60),
            },
        }
    }

    /// The state with `cells` left.
    fn state(&self, cells: u64) -> LimitState {
        let limit = u64::from(self.per_minute.get());
        let all = limit * u64::from(self.scale);
        let cells = cells.min(all);
        let spent = u32::try_from(all - cells).unwrap_or(u32::MAX);
        LimitState {
            limit,
            remaining: cells / u64::from(self.scale),
            reset: self.cell.saturating_mul(spent),
        }
    }
}

fn ceil_div(a: Duration, b: Duration) -> u64 {
    let (a, b) = (a.as_nanos(), b.as_nanos().max(1));
    u64::try_from(a.div_ceil(b)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limit(per_minute: u32) -> (MemoryLimit<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        (MemoryLimit::with_clock(n, clock.clone()), clock)
    }

    fn one() -> NonZeroU32 {
        NonZeroU32::MIN
    }

    #[test]
    fn a_minutes_allowance_may_come_at_once_then_one_per_interval() {
        let (l, clock) = limit(60);
        for i in 0..60u64 {
            match l.check(one()) {
                Verdict::Allowed(s) => assert_eq!(s.remaining, 59 - i),
                v => panic!("request {i} refused: {v:?}"),
            }
        }
        let Verdict::Refused { retry_after, state } = l.check(one()) else {
            panic!("61st allowed");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!(state.remaining, 0);
        assert_eq!(state.reset, Duration::from_secs(60));
        clock.advance(Duration::from_millis(999));
        assert!(matches!(l.check(one()), Verdict::Refused { .. }));
        clock.advance(Duration::from_millis(1));
        assert!(matches!(l.check(one()), Verdict::Allowed(_)));
    }

    #[test]
    fn costs_are_charged_whole_and_refusals_charge_nothing() {
        let (l, clock) = limit(1000);
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        assert!(matches!(l.check(n(600)), Verdict::Allowed(s) if s.remaining == 400));
        // 500 does not fit in 400: refused, and the 400 stay.
        let Verdict::Refused { retry_after, state } = l.check(n(500)) else {
            panic!("500 of 400 allowed");
        };
        assert_eq!(state.remaining, 400);
        // 100 tokens come back in 6 s (60 ms each).
        assert_eq!(retry_after, Duration::from_secs(6));
        assert!(matches!(l.check(n(400)), Verdict::Allowed(s) if s.remaining == 0));
        clock.advance(Duration::from_secs(60));
        assert!(matches!(l.check(n(1000)), Verdict::Allowed(s) if s.remaining == 0));
    }

    #[test]
    fn reset_counts_partly_earned_units() {
        let (l, clock) = limit(1);
        assert!(
            matches!(l.check(one()), Verdict::Allowed(s) if s.reset == Duration::from_secs(60))
        );
        clock.advance(Duration::from_secs(59));
        let Verdict::Refused { state, retry_after } = l.check(one()) else {
            panic!("allowed after 59 s of 60");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!((state.remaining, state.reset), (0, Duration::from_secs(1)));
    }

    #[test]
    fn reset_is_the_time_until_the_allowance_is_whole() {
        let (l, clock) = limit(600);
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        let Verdict::Allowed(s) = l.check(n(300)) else {
            panic!("refused");
        };
        assert_eq!(s.reset, Duration::from_secs(30));
        clock.advance(Duration::from_secs(10));
        let Verdict::Allowed(s) = l.check(n(1)) else {
            panic!("refused");
        };
        // 300 spent, 100 earned back, 1 more spent: 201 missing, 100 ms each.
        assert_eq!(s.remaining, 399);
        assert_eq!(s.reset, Duration::from_millis(20_100));
    }
}
