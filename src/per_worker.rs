//! Shared values handed out per worker thread, so that what every request clones or writes
//! stays in its own core's cache.
//!
//! Two cores serving requests at once must not write the same cache line on every request:
//! each such write waits for the line to come over from the other core. An `Arc` of shared
//! state cloned per request is such a write (its count), and so is a counter. [`PerWorker`]
//! keeps one handle per worker thread ([`crate::server::worker_index`]): a request clones
//! its own worker's handle, whose count no other core touches, and reads the shared value
//! behind it (reads of lines nobody writes stay cheap on every core).

use std::ops::Deref;
use std::sync::Arc;

/// How many worker threads get a slot of their own; threads beyond it share (still correct,
/// just contended). Slot 0 is every thread that is not a worker (tests, the stand-in).
pub const SLOTS: usize = 32;

/// This thread's slot, `0..SLOTS`.
pub fn slot() -> usize {
    crate::server::worker_index() % SLOTS
}

/// One shared `T`, with a handle per worker slot. Clone it once per connection, not per
/// request (a clone shares the table); call [`PerWorker::local`] per request.
pub struct PerWorker<T: ?Sized> {
    handles: Arc<[Local<T>; SLOTS]>,
}

impl<T: ?Sized> PerWorker<T> {
    pub fn new(shared: Arc<T>) -> Self {
        Self {
            handles: Arc::new(std::array::from_fn(|_| Local(Arc::new(shared.clone())))),
        }
    }

    /// The shared value, borrowed (no count is touched).
    pub fn get(&self) -> &T {
        &self.handles[0]
    }

    /// The calling worker's handle: an owned pointer to the shared value whose clone and
    /// drop touch only this worker's count.
    pub fn local(&self) -> Local<T> {
        self.handles[slot()].clone()
    }
}

impl<T: ?Sized> Clone for PerWorker<T> {
    fn clone(&self) -> Self {
        Self {
            handles: Arc::clone(&self.handles),
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for PerWorker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerWorker")
    }
}

/// A worker's handle to the shared value (see [`PerWorker`]).
pub struct Local<T: ?Sized>(Arc<Arc<T>>);

impl<T: ?Sized> Clone for Local<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized> Deref for Local<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handle_reaches_the_one_shared_value() {
        let shared = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let per = PerWorker::new(shared.clone());
        let local = per.local();
        local.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let other = per.clone().local();
        other.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(shared.load(std::sync::atomic::Ordering::Relaxed), 2);
        // Off the workers every thread has slot 0: the same handle.
        assert!(Arc::ptr_eq(&local.0, &other.0));
        // One count per slot, plus the test's own.
        assert_eq!(Arc::strong_count(&shared), SLOTS + 1);
    }
}
