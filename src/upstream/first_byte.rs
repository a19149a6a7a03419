//! The first-byte deadline of requests on the pool's HTTP/1.1 connections: one timer per
//! connection instead of one per request.
//!
//! Why: a `tokio::time::Timeout` around each request puts a timer into the runtime's wheel
//! and takes it out again for every request (with the future that wraps it, about 1.2% of a
//! proxied request's instructions). An HTTP/1.1 connection carries one exchange at a time,
//! so its task can hold the timer: the request side writes its deadline into the
//! connection's [`FirstByte`] before handing the request over ([`FirstByte::start`]) and
//! clears it when the response head arrives ([`FirstByte::finish`]). The connection's task
//! ([`Watched`]) leaves its timer set for an earlier request's deadline (a chat request's
//! deadline is always later than the previous one's) and, when it fires, moves it on to the
//! pending request's deadline (at once, for a deadline earlier than the timer's); if that
//! deadline has passed with the head still missing, it marks the exchange expired and closes
//! the connection, so the pool reports a timeout (504), not a broken connection (502).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// `FirstByte::due` of an exchange the connection's task cut.
const EXPIRED: u64 = u64::MAX;

/// The deadline of the request in flight on one connection, shared by the request side and
/// the connection's task. One atomic holds the whole state, so the two sides cannot both
/// win: the head arriving (`finish`) and the deadline passing (the task) each replace the
/// pending deadline, and whichever comes second sees the other's mark.
#[derive(Debug)]
pub(crate) struct FirstByte {
    /// Deadlines are stored as microseconds after this instant (atomics hold no `Instant`).
    base: Instant,
    /// The pending request's deadline in microseconds after `base`, plus one; 0: none;
    /// [`EXPIRED`]: the task cut the exchange and closes the connection.
    due: AtomicU64,
}

impl FirstByte {
    /// The state of a new connection; `base` is read now, on the connection's runtime.
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            due: AtomicU64::new(0),
        }
    }

    /// A request is about to be handed to the connection and must have its response head by
    /// `deadline`. Relaxed is enough: the hand-over itself (hyper's channel) orders this
    /// write before the connection's task reads it.
    pub(crate) fn start(&self, deadline: Instant) {
        let micros = u64::try_from(deadline.saturating_duration_since(self.base).as_micros())
            .unwrap_or(u64::MAX);
        self.due
            .store(micros.saturating_add(1).min(EXPIRED - 1), Ordering::Relaxed);
    }

    /// The exchange's head arrived or it failed: clears the deadline and says whether the
    /// task had cut the exchange first (then the request timed out, whatever hyper says).
    pub(crate) fn finish(&self) -> bool {
        self.due.swap(0, Ordering::AcqRel) == EXPIRED
    }

    /// The instant a stored `due` stands for.
    fn instant(&self, due: u64) -> Instant {
        let after = Duration::from_micros(due.saturating_sub(1));
        // Far beyond any configured timeout: the deadline never passes.
        self.base
            .checked_add(after)
            .unwrap_or_else(|| self.base + Duration::from_secs(86_400 * 365 * 30))
    }
}

pin_project! {
    /// A connection's future with its [`FirstByte`] watch: ends with the connection's own
    /// result, or with `None` when a request's deadline passed (the connection is dropped
    /// with this future, which closes it and fails the request).
    pub(crate) struct Watched<C> {
        #[pin]
        conn: C,
        first_byte: Arc<FirstByte>,
        #[pin]
        timer: Sleep,
        // The `due` the timer is set for; 0 before the first request.
        armed: u64,
        // Whether this task's waker is registered with the timer since its last reset.
        registered: bool,
    }
}

impl<C> Watched<C> {
    /// Call inside the runtime that will drive it (the timer belongs to that runtime).
    pub(crate) fn new(conn: C, first_byte: Arc<FirstByte>) -> Self {
        // Not registered until first polled, which happens only after a reset to a deadline.
        let timer = tokio::time::sleep_until(first_byte.base);
        Self {
            conn,
            first_byte,
            timer,
            armed: 0,
            registered: false,
        }
    }
}

impl<C: Future> Future for Watched<C> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.conn.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let due = this.first_byte.due.load(Ordering::Acquire);
        if due == 0 || due == EXPIRED {
            // Nothing in flight: a timer that fires meanwhile is left fired.
            return Poll::Pending;
        }
        // The timer stays set for the deadline it was armed with (`armed`) while that is at
        // or before `due`: most requests get their head long before it fires, so a request
        // costs the timer nothing.
        let fired = this.timer.is_elapsed();
        if *this.armed != 0 && *this.registered && !fired && due >= *this.armed {
            return Poll::Pending;
        }
        if (fired && *this.armed == due)
            || (*this.armed != 0 && Instant::now() >= this.first_byte.instant(due))
        {
            return expire(this.first_byte, due);
        }
        if *this.armed != due {
            this.timer.as_mut().reset(this.first_byte.instant(due));
            *this.armed = due;
        }
        // Register this task's waker. With the task's budget spent, tokio's timer would
        // answer Pending without registering (and wake the task to come back): poll it then.
        *this.registered = tokio::task::coop::has_budget_remaining();
        if this.timer.poll(cx).is_ready() {
            return expire(this.first_byte, due);
        }
        Poll::Pending
    }
}

/// Cuts the exchange whose deadline `due` passed, unless its head arrived meanwhile (the
/// request side cleared `due`): then the connection lives on.
fn expire<T>(first_byte: &FirstByte, due: u64) -> Poll<Option<T>> {
    match first_byte
        .due
        .compare_exchange(due, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
    {
        Ok(_) => Poll::Ready(None),
        Err(_) => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    /// Counts its wake-ups: a test sees whether the timer would bring the task back.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Probe {
        fb: Arc<FirstByte>,
        w: Pin<Box<Watched<std::future::Pending<()>>>>,
        wakes: Arc<Counter>,
        waker: Waker,
    }

    impl Probe {
        /// A connection that never ends on its own, watched.
        fn new() -> Self {
            let fb = Arc::new(FirstByte::new());
            let w = Box::pin(Watched::new(std::future::pending::<()>(), Arc::clone(&fb)));
            let wakes = Arc::new(Counter::default());
            let waker = Waker::from(Arc::clone(&wakes));
            Self {
                fb,
                w,
                wakes,
                waker,
            }
        }

        fn poll(&mut self) -> Poll<Option<()>> {
            self.w.as_mut().poll(&mut Context::from_waker(&self.waker))
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    const T: Duration = Duration::from_millis(300);
    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_request_without_a_head_by_its_deadline_closes_the_connection() {
        let mut p = Probe::new();
        p.fb.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        tokio::time::advance(T - MS * 2).await;
        assert_eq!(p.wakes(), 0);
        assert!(p.poll().is_pending());
        tokio::time::advance(MS * 3).await;
        assert!(p.wakes() > 0, "the timer wakes the connection's task");
        assert!(matches!(p.poll(), Poll::Ready(None)));
        assert!(p.fb.finish(), "the request side learns it timed out");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_request_leaves_the_connection_open() {
        let mut p = Probe::new();
        p.fb.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        assert!(!p.fb.finish());
        tokio::time::advance(T * 3).await;
        assert!(p.poll().is_pending());
        assert!(!p.fb.finish());
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_is_held_to_its_own_deadline() {
        let mut p = Probe::new();
        let t0 = Instant::now();
        p.fb.start(t0 + T);
        assert!(p.poll().is_pending());
        p.fb.finish();
        // The second request starts 200 ms later: its deadline is t0 + 500 ms.
        tokio::time::advance(MS * 200).await;
        p.fb.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        tokio::time::advance(MS * 110).await; // t0 + 310: past the first
        assert!(p.poll().is_pending(), "held to the first deadline");
        let wakes = p.wakes();
        tokio::time::advance(MS * 188).await; // t0 + 498
        assert!(p.poll().is_pending());
        tokio::time::advance(MS * 3).await; // t0 + 501
        assert!(p.wakes() > wakes, "the moved timer wakes the task again");
        assert!(matches!(p.poll(), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_timer_s_is_kept() {
        // A readiness probe with a short deadline after a chat request with a long one.
        let mut p = Probe::new();
        p.fb.start(Instant::now() + T * 10);
        assert!(p.poll().is_pending());
        p.fb.finish();
        p.fb.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        tokio::time::advance(T + MS).await;
        assert!(p.wakes() > 0);
        assert!(matches!(p.poll(), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_after_the_timer_fired_idle_gets_a_fresh_timer() {
        let mut p = Probe::new();
        p.fb.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        p.fb.finish();
        // The timer fires with nothing in flight and is left fired.
        tokio::time::advance(T * 2).await;
        assert!(p.poll().is_pending());
        p.fb.start(Instant::now() + T);
        assert!(p.poll().is_pending(), "not the old, fired timer");
        tokio::time::advance(T + MS).await;
        assert!(matches!(p.poll(), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_arrives_as_the_deadline_passes_keeps_the_connection() {
        let mut p = Probe::new();
        p.fb.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        tokio::time::advance(T + MS).await;
        // The request side takes the head before the task runs: the task must not cut.
        assert!(!p.fb.finish());
        assert!(p.poll().is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_s_own_end_comes_through() {
        let fb = Arc::new(FirstByte::new());
        fb.start(Instant::now() + T);
        let mut w = Box::pin(Watched::new(std::future::ready(7), fb));
        let waker = Waker::from(Arc::new(Counter::default()));
        assert!(matches!(
            w.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(Some(7))
        ));
    }
}
