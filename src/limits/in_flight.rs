//! Caps on requests in flight (`server.max_concurrent_requests`, a key's `max_concurrent`).
//! A slot is taken or refused at once, never waited for, so a counter is all a cap needs:
//! two atomic operations a request, no lock, no queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The in-flight slots a request holds until its response body ends. Shared (request
/// extensions must be `Clone`): the slots return when the last holder is dropped.
#[derive(Debug, Clone)]
pub struct InFlight {
    _slots: Arc<Slots>,
}

#[derive(Debug)]
struct Slots {
    _gateway: Slot,
    _key: Option<Slot>,
}

/// A cap on requests in flight.
#[derive(Debug)]
pub struct InFlightCap {
    taken: AtomicU32,
    max: u32,
}

impl InFlightCap {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            taken: AtomicU32::new(0),
            max,
        })
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// One slot, if one is free.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let before = self.taken.fetch_add(1, Ordering::Acquire);
        if before < self.max {
            Some(Slot(self.clone()))
        } else {
            self.taken.fetch_sub(1, Ordering::Release);
            None
        }
    }

    /// Slots taken now.
    pub fn taken(&self) -> u32 {
        self.taken.load(Ordering::Relaxed).min(self.max)
    }
}

/// One taken slot, returned on drop.
#[derive(Debug)]
pub struct Slot(Arc<InFlightCap>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::Release);
    }
}

impl InFlight {
    /// The gateway's slot and the key's, if it has a cap.
    pub fn new(gateway: Slot, key: Option<Slot>) -> Self {
        Self {
            _slots: Arc::new(Slots {
                _gateway: gateway,
                _key: key,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_gives_out_max_slots_and_takes_them_back() {
        let cap = InFlightCap::new(2);
        let a = cap.try_take();
        let b = cap.try_take();
        assert!(a.is_some() && b.is_some());
        assert!(cap.try_take().is_none());
        assert!(cap.try_take().is_none());
        assert_eq!(cap.taken(), 2);
        drop(a);
        assert_eq!(cap.taken(), 1);
        let c = cap.try_take();
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(cap.taken(), 0);
    }
}
