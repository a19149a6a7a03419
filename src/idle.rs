//! Closes HTTP/1.1 connections that sit idle: a connection with no request in flight (an
//! idle keep-alive connection, or one whose client began a request head and stalled, or
//! trickles it in a byte at a time) is closed once it has been idle for the limit. A request
//! is in flight from hyper's call of the service until hyper has taken the last frame of its
//! response body, however long it waits for its answer or its answer pauses. (Bytes hyper
//! still holds then wait on the client to read them: a client that reads nothing for the
//! whole limit is cut, as with hyper's own timer.)
//!
//! Why not hyper's `header_read_timeout`: it allocates a timer, registers it with the
//! runtime's wheel and cancels it again for every request, and makes hyper poll the socket
//! once more after each response: 1,237 instructions a request (callgrind), 0.6 µs in
//! interleaved load rounds. Here a connection has one timer for its life, re-armed every
//! quarter limit, and a request costs a counter write and one `Arc` clone, which the request
//! and then its response body hold until the body ends.
//!
//! The rule, checked at each tick (every quarter limit): the connection is idle at this tick
//! if no request is in flight and none has started since the previous tick. Five idle ticks
//! in a row close it: the first may come just after the last response ended, so the
//! connection has then been idle for at least the limit and less than 1.5 times it. It is
//! dropped, not shut down gracefully: hyper's graceful shutdown leaves a connection that has
//! not finished its first request head open, and with nothing in flight there is nothing
//! to finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Ticks per limit.
const TICKS: u32 = 4;

/// Consecutive idle ticks that close a connection (see the module doc).
const IDLE_TICKS: u8 = 5;

/// What a connection's requests tell its [`IdleGuard`]. The guard and the service adapter
/// hold one reference each; every request in flight holds another ([`InFlight`]).
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests started on the connection. Only the connection's own task writes it.
    started: AtomicU64,
}

/// References to an [`Activity`] held for the connection's whole life.
const HOLDERS: usize = 2;

impl Activity {
    /// A request has started; the returned token travels with it, then with its response
    /// body ([`Tracked`]), and the request counts as in flight until the token is dropped
    /// (hyper drops the body once it has taken its last frame).
    pub fn start(self: &Arc<Self>) -> InFlight {
        // A load and a store, not an atomic add: one task writes, the guard only reads.
        let n = self.started.load(Ordering::Relaxed);
        self.started.store(n.wrapping_add(1), Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether a request is in flight: a reference beyond the holders'.
    fn busy(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > HOLDERS
    }
}

/// A request in flight.
#[derive(Debug)]
pub struct InFlight(
    #[expect(dead_code, reason = "held for the reference it counts, never read")] Arc<Activity>,
);

pin_project! {
    /// A response body that keeps its request in flight until the body is dropped.
    #[derive(Debug)]
    pub struct Tracked<B> {
        #[pin]
        body: B,
        in_flight: InFlight,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self { body, in_flight }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection the guard can drop: what it resolves to when dropped for idleness.
pub trait Idle: Future {
    fn closed_idle() -> Self::Output;
}

pin_project! {
    /// A connection under an idle limit (see the module doc).
    pub struct IdleGuard<C> {
        #[pin]
        conn: C,
        activity: Arc<Activity>,
        #[pin]
        tick: Sleep,
        every: Duration,
        // `started` at the previous tick.
        seen: u64,
        idle_ticks: u8,
        // The waker `tick` was last polled with.
        registered: Option<Waker>,
    }
}

impl<C: Idle> IdleGuard<C> {
    /// `conn`, closed once idle for `limit`; `activity` is the one its service adapter
    /// reports to.
    pub fn new(conn: C, activity: Arc<Activity>, limit: Duration) -> Self {
        let every = limit / TICKS;
        Self {
            conn,
            seen: activity.started(),
            activity,
            tick: tokio::time::sleep(every),
            every,
            idle_ticks: 0,
            registered: None,
        }
    }
}

impl<C: Idle> Future for IdleGuard<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            // Armed anew, or polled by a new task: the timer must wake this one. A task out
            // of its tokio budget gets `Pending` without the waker being stored (and is
            // woken to try again), so only a poll with budget left counts as registered.
            let had_budget = tokio::task::coop::has_budget_remaining();
            // Due already or not, the tick is judged below.
            let _ = this.tick.as_mut().poll(cx);
            *this.registered = had_budget.then(|| cx.waker().clone());
        }
        // The connection first: a request whose head is already in the socket starts now,
        // and is counted before the tick is judged.
        if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        // `is_elapsed` reads one atomic: this is all a poll between ticks costs, with the
        // waker comparison above.
        if this.tick.is_elapsed() {
            let started = this.activity.started();
            if started != *this.seen || this.activity.busy() {
                *this.idle_ticks = 0;
            } else {
                *this.idle_ticks += 1;
            }
            *this.seen = started;
            if *this.idle_ticks >= IDLE_TICKS {
                return Poll::Ready(C::closed_idle());
            }
            this.tick.as_mut().reset(Instant::now() + *this.every);
            // Polled again at once, to register the re-armed timer with a fresh budget.
            *this.registered = None;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A connection that never ends by itself.
    struct Conn;

    impl Future for Conn {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    impl Idle for Conn {
        fn closed_idle() {}
    }

    const LIMIT: Duration = Duration::from_secs(30);

    /// A guarded connection, the activity its service adapter would hold, and a flag set
    /// when the guard has closed it.
    fn guarded() -> (
        tokio::task::JoinHandle<Instant>,
        Arc<Activity>,
        Arc<AtomicBool>,
    ) {
        let activity = Arc::new(Activity::default());
        let guard = IdleGuard::new(Conn, Arc::clone(&activity), LIMIT);
        let closed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let closed = Arc::clone(&closed);
            async move {
                guard.await;
                closed.store(true, Ordering::SeqCst);
                Instant::now()
            }
        });
        (task, activity, closed)
    }

    /// How long the connection was idle before `task` closed it, from `since`.
    async fn idle_for(task: tokio::task::JoinHandle<Instant>, since: Instant) -> Duration {
        let closed = tokio::time::timeout(LIMIT * 10, task)
            .await
            .expect("the guard did not close the connection")
            .expect("guard task");
        closed - since
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_after_the_limit_and_before_one_and_a_half() {
        let begun = Instant::now();
        let (task, _activity, _closed) = guarded();
        let idle = idle_for(task, begun).await;
        assert!(
            idle >= LIMIT && idle < LIMIT * 3 / 2,
            "closed after {idle:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_for_many_limits_keeps_the_connection_open() {
        let (task, activity, closed) = guarded();
        let in_flight = activity.start();
        // Not on a tick: which of two timers due at one instant fires first is not fixed.
        tokio::time::sleep(LIMIT * 5 + Duration::from_secs(1)).await;
        assert!(
            !closed.load(Ordering::SeqCst),
            "closed with a request in flight"
        );
        let ended = Instant::now();
        drop(in_flight);
        let idle = idle_for(task, ended).await;
        assert!(
            idle >= LIMIT && idle < LIMIT * 3 / 2,
            "closed after {idle:?}"
        );
    }

    /// Requests that each end before the next tick are only seen by the count of starts.
    #[tokio::test(start_paused = true)]
    async fn short_requests_more_often_than_the_limit_keep_the_connection_open() {
        let (task, activity, closed) = guarded();
        for _ in 0..10 {
            tokio::time::sleep(LIMIT * 9 / 10 + Duration::from_millis(100)).await;
            drop(activity.start());
        }
        assert!(!closed.load(Ordering::SeqCst), "closed while in use");
        let last = Instant::now();
        let idle = idle_for(task, last).await;
        assert!(
            idle >= LIMIT && idle < LIMIT * 3 / 2,
            "closed after {idle:?}"
        );
    }
}
