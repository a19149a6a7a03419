//! The drain signal: tells every open connection to finish what it is doing and close.
//!
//! hyper-util's `GracefulShutdown` does the same through a `watch` channel whose `changed()`
//! future each connection polls on every wake-up, several times per request. Here a
//! connection reads one atomic flag per poll and touches the `Notify` only when its task's
//! waker changes (for a spawned connection: once), so a request pays nothing for a drain
//! that has not begun.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// Starts the drain of every connection it watches.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    draining: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Drain {
    /// Asks every watched connection, now and later, to close once its in-flight work ends.
    pub fn start(&self) {
        // The flag first: a connection that polls between the two sees it.
        self.draining.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether [`Drain::start`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started.
    pub async fn started(&self) {
        // Created before the flag is read, so a `start` in between still wakes it.
        let notified = Arc::clone(&self.notify).notified_owned();
        if !self.is_draining() {
            notified.await;
        }
    }

    /// `conn`, shut down gracefully (hyper: idle keep-alive closes, HTTP/2 sends GOAWAY,
    /// in-flight requests finish) once the drain starts.
    pub fn watch<C: GracefulConnection>(&self, conn: C) -> Watched<C> {
        Watched {
            conn,
            draining: Arc::clone(&self.draining),
            // Created now, so a `start` before its first poll still makes it ready.
            notified: Box::pin(Arc::clone(&self.notify).notified_owned()),
            registered: None,
            shutting_down: false,
        }
    }
}

pin_project! {
    /// A connection under a [`Drain`].
    pub struct Watched<C> {
        #[pin]
        conn: C,
        draining: Arc<AtomicBool>,
        notified: Pin<Box<OwnedNotified>>,
        // The waker the `Notify` holds for this connection.
        registered: Option<Waker>,
        shutting_down: bool,
    }
}

impl<C: GracefulConnection> crate::idle::Idle for Watched<C> {
    /// A connection closed for idleness ended without error.
    fn closed_idle() -> C::Output {
        Ok(())
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shutting_down {
            let mut woken = this.draining.load(Ordering::Acquire);
            if !woken
                && !this
                    .registered
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
            {
                // First poll, or a new waker: hand it to the `Notify`.
                woken = this.notified.as_mut().poll(cx).is_ready();
                *this.registered = Some(cx.waker().clone());
            }
            if woken {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}
