//! The first-byte deadline of requests on the pool's HTTP/1.1 connections: one timer per
//! connection instead of one per request.
//!
//! Why: a `tokio::time::Timeout` around each request puts a timer into the runtime's wheel
//! and takes it out again for every request (with the future that wraps it, about 1.2% of a
//! proxied request's instructions). An HTTP/1.1 connection carries one exchange at a time,
//! so the connection can hold the timer. [`Watched`] wraps the connection's future, which
//! the request that has the connection checked out polls itself (`pool.rs`): the request
//! sets its deadline before handing its request over ([`Watched::start`]) and clears it when
//! the response head arrives ([`Watched::finish`]). The timer stays set for an earlier
//! request's deadline (a chat request's deadline is always later than the previous one's)
//! and, when it fires, is moved on to the pending request's deadline (at once, for a
//! deadline earlier than the timer's); if that deadline has passed with the head still
//! missing, the watch ends with `None` and the request closes the connection: a timeout
//! (504), not a broken connection (502).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// A connection's future with the first-byte watch of the exchange in flight on it:
    /// ends with the connection's own result, or with `None` when the exchange's deadline
    /// passed without [`Watched::finish`].
    pub(crate) struct Watched<C> {
        #[pin]
        conn: C,
        #[pin]
        timer: Sleep,
        // The pending exchange's deadline; `None`: no exchange awaits its head.
        due: Option<Instant>,
        // The deadline the timer is set for; `None` before the first exchange.
        armed: Option<Instant>,
        // Whether the waker of the task polling the pending exchange is registered with
        // the timer (each exchange is polled by the task of the request that sent it).
        registered: bool,
    }
}

impl<C> Watched<C> {
    /// Call inside the runtime that will drive it (the timer belongs to that runtime).
    pub(crate) fn new(conn: C) -> Self {
        // Not registered until polled, which happens only after a reset to a deadline.
        let timer = tokio::time::sleep_until(Instant::now());
        Self {
            conn,
            timer,
            due: None,
            armed: None,
            registered: false,
        }
    }

    /// An exchange is about to be handed to the connection and must have its response head
    /// by `deadline`; the next poll registers the caller's task with the timer.
    pub(crate) fn start(self: Pin<&mut Self>, deadline: Instant) {
        let this = self.project();
        *this.due = Some(deadline);
        *this.registered = false;
    }

    /// The exchange's head arrived or it failed: its deadline no longer applies.
    pub(crate) fn finish(self: Pin<&mut Self>) {
        *self.project().due = None;
    }

    /// Polls the connection alone, leaving the timer as it is: for a poll that registers
    /// no waker, after which the timer needs none either (the caller polls the whole watch
    /// before it waits).
    pub(crate) fn poll_conn(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output>
    where
        C: Future,
    {
        self.project().conn.poll(cx)
    }
}

impl<C: Future> Future for Watched<C> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.conn.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let Some(due) = *this.due else {
            // Nothing in flight: a timer that fires meanwhile is left fired.
            return Poll::Pending;
        };
        // At most three rounds: a fired timer is moved on to `due` (or `due` has passed),
        // and a timer set for `due` that has fired means it has passed.
        loop {
            if this.timer.is_elapsed() {
                if *this.armed == Some(due) || Instant::now() >= due {
                    return Poll::Ready(None);
                }
                // Fired for an earlier exchange's deadline: move it on.
                this.timer.as_mut().reset(due);
                *this.armed = Some(due);
            } else if this.armed.is_none_or(|armed| armed > due) {
                this.timer.as_mut().reset(due);
                *this.armed = Some(due);
            } else if *this.registered {
                // Set for `due` or an earlier deadline and it will wake this task: most
                // exchanges get their head long before it fires, so they cost the timer
                // nothing more.
                return Poll::Pending;
            }
            // Register this task's waker. With the task's budget spent, tokio's timer
            // answers Pending without registering (and wakes the task to come back): then
            // it is registered on that next poll.
            *this.registered = tokio::task::coop::has_budget_remaining();
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use std::time::Duration;

    use super::*;

    /// A task polling the connection: counts its wake-ups, so a test sees whether the timer
    /// would bring it back.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Probe {
        w: Pin<Box<Watched<std::future::Pending<()>>>>,
        task: Arc<Task>,
    }

    impl Probe {
        /// A connection that never ends on its own, watched, polled by one task.
        fn new() -> Self {
            let w = Box::pin(Watched::new(std::future::pending::<()>()));
            Self {
                w,
                task: Arc::default(),
            }
        }

        fn start(&mut self, deadline: Instant) {
            self.w.as_mut().start(deadline);
        }

        fn finish(&mut self) {
            self.w.as_mut().finish();
        }

        fn poll(&mut self) -> Poll<Option<()>> {
            let task = Arc::clone(&self.task);
            self.poll_by(&task)
        }

        fn poll_by(&mut self, task: &Arc<Task>) -> Poll<Option<()>> {
            let waker = Waker::from(Arc::clone(task));
            self.w.as_mut().poll(&mut Context::from_waker(&waker))
        }

        fn wakes(&self) -> usize {
            self.task.0.load(Ordering::SeqCst)
        }
    }

    const T: Duration = Duration::from_millis(300);
    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_request_without_a_head_by_its_deadline_ends_the_watch() {
        let mut p = Probe::new();
        p.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        tokio::time::advance(T - MS * 2).await;
        assert_eq!(p.wakes(), 0);
        assert!(p.poll().is_pending());
        tokio::time::advance(MS * 3).await;
        assert!(p.wakes() > 0, "the timer wakes the polling task");
        assert!(matches!(p.poll(), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_request_leaves_the_connection_open() {
        let mut p = Probe::new();
        p.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        p.finish();
        tokio::time::advance(T * 3).await;
        assert!(p.poll().is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_is_held_to_its_own_deadline() {
        let mut p = Probe::new();
        let t0 = Instant::now();
        p.start(t0 + T);
        assert!(p.poll().is_pending());
        p.finish();
        // The second request starts 200 ms later: its deadline is t0 + 500 ms.
        tokio::time::advance(MS * 200).await;
        p.start(Instant::now() + T);
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
    async fn each_request_s_own_task_is_woken_at_its_deadline() {
        // Requests on one connection come from different tasks (one per client connection):
        // the timer, still set for the first request's deadline, must wake the second's.
        let mut p = Probe::new();
        let t0 = Instant::now();
        p.start(t0 + T);
        assert!(p.poll().is_pending());
        p.finish();
        tokio::time::advance(MS * 100).await;
        let second = Arc::new(Task::default());
        p.start(Instant::now() + T); // t0 + 400
        assert!(p.poll_by(&second).is_pending());
        tokio::time::advance(MS * 201).await; // t0 + 301: the timer fires
        assert_eq!(p.wakes(), 0, "not the first request's task");
        assert!(
            second.0.load(Ordering::SeqCst) > 0,
            "the second request's task"
        );
        assert!(p.poll_by(&second).is_pending(), "moved on to t0 + 400");
        let woken = second.0.load(Ordering::SeqCst);
        tokio::time::advance(MS * 100).await; // t0 + 401
        assert!(second.0.load(Ordering::SeqCst) > woken);
        assert!(matches!(p.poll_by(&second), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_timer_s_is_kept() {
        // A readiness probe with a short deadline after a chat request with a long one.
        let mut p = Probe::new();
        p.start(Instant::now() + T * 10);
        assert!(p.poll().is_pending());
        p.finish();
        p.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        tokio::time::advance(T + MS).await;
        assert!(p.wakes() > 0);
        assert!(matches!(p.poll(), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_after_the_timer_fired_idle_gets_a_fresh_timer() {
        let mut p = Probe::new();
        p.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        p.finish();
        // The timer fires with nothing in flight and is left fired.
        tokio::time::advance(T * 2).await;
        assert!(p.poll().is_pending());
        p.start(Instant::now() + T);
        assert!(p.poll().is_pending(), "not the old, fired timer");
        tokio::time::advance(T + MS).await;
        assert!(matches!(p.poll(), Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_arrives_as_the_deadline_passes_keeps_the_connection() {
        let mut p = Probe::new();
        p.start(Instant::now() + T);
        assert!(p.poll().is_pending());
        tokio::time::advance(T + MS).await;
        // The request takes the head before it polls the connection again.
        p.finish();
        assert!(p.poll().is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_s_own_end_comes_through() {
        let mut w = Box::pin(Watched::new(std::future::ready(7)));
        w.as_mut().start(Instant::now() + T);
        let waker = Waker::from(Arc::new(Task::default()));
        assert!(matches!(
            w.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(Some(7))
        ));
    }
}
