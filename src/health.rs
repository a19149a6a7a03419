//! Liveness and readiness. `/healthz` is dependency-free: 200 while the process serves.
//! `/readyz` reflects [`Readiness`]: 200 once serving, 503 while draining for shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// Shared readiness state, flipped by the server as it starts and drains.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

/// What `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyState {
    Starting,
    Ready,
    Draining,
}

impl Readiness {
    /// The listener is bound and serving.
    pub fn set_ready(&self) {
        // Never go back from draining to ready.
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Shutdown has begun.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// The current state.
    pub fn state(&self) -> ReadyState {
        match self.0.load(Ordering::Acquire) {
            STARTING => ReadyState::Starting,
            READY => ReadyState::Ready,
            _ => ReadyState::Draining,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_is_final() {
        let r = Readiness::default();
        assert_eq!(r.state(), ReadyState::Starting);
        r.set_ready();
        assert_eq!(r.state(), ReadyState::Ready);
        r.set_draining();
        r.set_ready();
        assert_eq!(r.state(), ReadyState::Draining);
    }
}
