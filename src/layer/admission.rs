//! Admission: who is calling and whether the gateway takes the request now. The first
//! checkpoint of the chat and inspect chains, before the body is read, so a refused request
//! costs no body bytes.
//!
//! In order: the gateway key (401 `invalid_api_key`; the key is then removed from the
//! request, so it can never be forwarded or logged), the gateway-wide in-flight cap
//! (`server.max_concurrent_requests`: 503 `overloaded`, no queue), the key's in-flight cap
//! (`max_concurrent`: 429), and, on the chat route, one request charged to the key's
//! `requests_per_minute` (429). The in-flight slots ([`InFlight`]) travel in the request's
//! extensions: a request refused further on drops them with itself; `Forward` moves them
//! into the upstream response body, which holds them until it ends (a stream holds them
//! while it streams).

use std::sync::Arc;

use std::sync::atomic::{AtomicU32, Ordering};

use http::{Request, header};

use super::checkpoint::Checkpoint;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::keys::KeyTable;
use crate::limits::{LimitKind, enforce};

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

/// A cap on requests in flight: taken or refused at once, never waited for, so a counter
/// is all it needs (two atomic operations a request, no lock).
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

/// The admission checkpoint. `charge_requests`: whether a request counts against
/// `requests_per_minute` (the chat route; not `/gateway/inspect`, which sends nothing
/// upstream).
#[derive(Debug, Clone)]
pub struct Admit {
    pub keys: Arc<KeyTable>,
    /// `server.max_concurrent_requests` slots, shared by the routes admitted.
    pub in_flight: Arc<InFlightCap>,
    pub charge_requests: bool,
}

impl Admit {
    /// Admission for the chat route; [`Admit::uncharged`] gives the inspect route's, sharing
    /// the in-flight slots.
    pub fn new(keys: Arc<KeyTable>, max_in_flight: u32) -> Self {
        Self {
            keys,
            in_flight: InFlightCap::new(max_in_flight),
            charge_requests: true,
        }
    }

    pub fn uncharged(&self) -> Self {
        Self {
            charge_requests: false,
            ..self.clone()
        }
    }
}

impl<B: Send + 'static> Checkpoint<B> for Admit {
    type Out = B;

    async fn check(&self, mut req: Request<B>) -> Result<Request<B>, GatewayError> {
        let caller = self.keys.authenticate(req.headers())?;
        let gateway = self.in_flight.try_take().ok_or(GatewayError::Overloaded {
            max: self.in_flight.max(),
        })?;
        let mut key_slot = None;
        if let Some(caller) = caller {
            let key = &caller.0;
            // Checked, it has done its work: nothing below may see or forward it.
            req.headers_mut().remove(header::AUTHORIZATION);
            let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
            if let Some(ctx) = &ctx {
                let _ = ctx.caller.set(key.clone());
            }
            if let Some(cap) = &key.concurrency {
                key_slot = Some(cap.try_take().ok_or_else(|| {
                    if let Some(ctx) = &ctx {
                        let _ = ctx.concurrency_refused.set(());
                    }
                    GatewayError::TooManyConcurrent {
                        key: key.name.clone(),
                        max: cap.max(),
                    }
                })?);
            }
            if self.charge_requests
                && let Some(limit) = &key.requests
            {
                enforce(
                    limit,
                    LimitKind::Requests,
                    1,
                    &key.name,
                    self.keys.on_backend_error,
                    ctx.as_deref(),
                )
                .await?;
            }
            req.extensions_mut().insert(caller);
        }
        req.extensions_mut().insert(InFlight {
            _slots: Arc::new(Slots {
                _gateway: gateway,
                _key: key_slot,
            }),
        });
        Ok(req)
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
