//! The first-byte deadline of requests on the pool's HTTP/1.1 connections: one timer per
//! connection instead of one per request.
//!
//! Why: a `tokio::time::Timeout` around each request puts a timer into the runtime's wheel
//! and takes it out again for every request (with the future that wraps it, about 1.2% of a
//! proxied request's instructions). An HTTP/1.1 connection carries one exchange at a time,
//! so its task can hold the timer: the request side writes its deadline into the
//! connection's [`FirstByte`] before handing the request over ([`FirstByte::start`]) and
//! clears it when the response head arrives ([`FirstByte::finish`]). The connection's task
//! ([`Watched`]) leaves its timer set for an earlier request's deadline (deadlines on one
//! connection only grow) and, when it fires, moves it on to the pending request's deadline;
//! if that deadline has passed with the head still missing, it closes the connection and
//! marks it expired, so the pool reports a timeout (504), not a broken connection (502).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The deadline of the request in flight on one connection, shared by the request side and
/// the connection's task.
#[derive(Debug)]
pub struct FirstByte {
    /// Deadlines are stored as microseconds after this instant (atomics hold no `Instant`).
    base: Instant,
    /// The pending request's deadline in microseconds after `base`, plus one; 0: none.
    due: AtomicU64,
    /// Set by the connection's task when a deadline passed and it closed the connection.
    expired: AtomicBool,
}

impl Default for FirstByte {
    fn default() -> Self {
        Self::new()
    }
}

impl FirstByte {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            due: AtomicU64::new(0),
            expired: AtomicBool::new(false),
        }
    }

    /// A request is about to be handed to the connection and must have its response head by
    /// `deadline`. Relaxed is enough: the hand-over itself (hyper's channel) orders this
    /// write before the connection's task reads it.
    pub fn start(&self, deadline: Instant) {
        let micros = u64::try_from(deadline.saturating_duration_since(self.base).as_micros())
            .unwrap_or(u64::MAX);
        self.due.store(micros.saturating_add(1), Ordering::Relaxed);
    }

    /// The response head arrived (or the exchange ended otherwise): no deadline is pending.
    pub fn finish(&self) {
        self.due.store(0, Ordering::Relaxed);
    }

    /// Whether the connection was closed because a deadline passed. Read after the request
    /// failed: hyper's report of the failure orders the task's write before this read.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
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
    pub struct Watched<C> {
        #[pin]
        conn: C,
        first_byte: std::sync::Arc<FirstByte>,
        timer: Pin<Box<Sleep>>,
        // The `due` the timer is set for; 0 before the first request.
        armed: u64,
    }
}

impl<C> Watched<C> {
    /// Call inside the runtime that will drive it (the timer belongs to that runtime).
    pub fn new(conn: C, first_byte: std::sync::Arc<FirstByte>) -> Self {
        // Not registered until first polled, which happens only after a reset to a deadline.
        let timer = Box::pin(tokio::time::sleep_until(first_byte.base));
        Self {
            conn,
            first_byte,
            timer,
            armed: 0,
        }
    }
}

impl<C: Future> Future for Watched<C> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.conn.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let due = this.first_byte.due.load(Ordering::Relaxed);
        if due == 0 {
            // Nothing in flight: a timer that fires meanwhile is left fired.
            return Poll::Pending;
        }
        // The timer stays set for the deadline it was armed with (`armed`), which is at or
        // before `due`: deadlines on one connection only grow. Most requests get their head
        // long before it fires, so a request costs the timer nothing; when it fires, it is
        // moved on to the pending request's deadline, or that request has run out of time.
        if *this.armed != 0 && !this.timer.is_elapsed() {
            return Poll::Pending;
        }
        if *this.armed == due
            || (*this.armed != 0 && Instant::now() >= this.first_byte.instant(due))
        {
            this.first_byte.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(None);
        }
        this.timer.as_mut().reset(this.first_byte.instant(due));
        *this.armed = due;
        // Polled once after each reset, to register this task's waker with the timer.
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.first_byte.expired.store(true, Ordering::Relaxed);
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Waker;

    use super::*;

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    type Endless = Pin<Box<Watched<std::future::Pending<()>>>>;

    /// A connection that never ends on its own, watched.
    fn watched() -> (Arc<FirstByte>, Endless) {
        let fb = Arc::new(FirstByte::new());
        let w = Box::pin(Watched::new(std::future::pending::<()>(), Arc::clone(&fb)));
        (fb, w)
    }

    const T: Duration = Duration::from_millis(300);

    #[tokio::test(start_paused = true)]
    async fn a_request_without_a_head_by_its_deadline_closes_the_connection() {
        let (fb, mut w) = watched();
        fb.start(Instant::now() + T);
        assert!(poll_once(w.as_mut()).is_pending());
        tokio::time::advance(T - Duration::from_millis(2)).await;
        assert!(poll_once(w.as_mut()).is_pending());
        assert!(!fb.expired());
        tokio::time::advance(Duration::from_millis(3)).await;
        assert!(matches!(poll_once(w.as_mut()), Poll::Ready(None)));
        assert!(fb.expired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_request_leaves_the_connection_open() {
        let (fb, mut w) = watched();
        fb.start(Instant::now() + T);
        assert!(poll_once(w.as_mut()).is_pending());
        fb.finish();
        tokio::time::advance(T * 3).await;
        assert!(poll_once(w.as_mut()).is_pending());
        assert!(!fb.expired());
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_is_held_to_its_own_deadline() {
        let (fb, mut w) = watched();
        let t0 = Instant::now();
        fb.start(t0 + T);
        assert!(poll_once(w.as_mut()).is_pending());
        fb.finish();
        // The second request starts 200 ms later: its deadline is t0 + 500 ms.
        tokio::time::advance(Duration::from_millis(200)).await;
        fb.start(Instant::now() + T);
        assert!(poll_once(w.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(110)).await; // t0 + 310: past the first
        assert!(
            poll_once(w.as_mut()).is_pending(),
            "held to the first deadline"
        );
        tokio::time::advance(Duration::from_millis(188)).await; // t0 + 498
        assert!(poll_once(w.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(3)).await; // t0 + 501
        assert!(matches!(poll_once(w.as_mut()), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_after_the_timer_fired_idle_gets_a_fresh_timer() {
        let (fb, mut w) = watched();
        fb.start(Instant::now() + T);
        assert!(poll_once(w.as_mut()).is_pending());
        fb.finish();
        // The timer fires with nothing in flight and is left fired.
        tokio::time::advance(T * 2).await;
        assert!(poll_once(w.as_mut()).is_pending());
        fb.start(Instant::now() + T);
        assert!(
            poll_once(w.as_mut()).is_pending(),
            "not the old, fired timer"
        );
        tokio::time::advance(T + Duration::from_millis(1)).await;
        assert!(matches!(poll_once(w.as_mut()), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_s_own_end_comes_through() {
        let fb = Arc::new(FirstByte::new());
        fb.start(Instant::now() + T);
        let mut w = Box::pin(Watched::new(std::future::ready(7), fb));
        assert!(matches!(poll_once(w.as_mut()), Poll::Ready(Some(7))));
    }
}
