//! Admission: who is calling and whether the gateway takes the request now. The first
//! checkpoint of the chat and inspect chains, before the body is read, so a refused request
//! is never buffered or parsed. Its body is only read and discarded (up to 1 MiB, for at most
//! 2 s), so the client's connection stays usable for its next request.
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

use http::header;
use http::request::Parts;
use hyper::body::Incoming;

use super::checkpoint::Checkpoint;
use super::read_body::drain_unread;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::keys::KeyTable;
use crate::limits::in_flight::{InFlight, InFlightCap};
use crate::limits::{LimitKind, enforce};

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

impl Checkpoint<Incoming> for Admit {
    type Out = Incoming;

    async fn check(&self, head: &mut Parts, mut body: Incoming) -> Result<Incoming, GatewayError> {
        match self.admit(head).await {
            Ok(()) => Ok(body),
            Err(refused) => {
                // Read what the client is still sending (bounded) before refusing: left
                // unread, hyper closes the connection after the refusal, and a client that
                // reuses it meanwhile loses its next request.
                drain_unread(head, &mut body).await;
                Err(refused)
            }
        }
    }
}

impl Admit {
    async fn admit(&self, head: &mut Parts) -> Result<(), GatewayError> {
        let caller = self
            .keys
            .authenticate_request(&head.headers, &head.extensions)?;
        let gateway = self.in_flight.try_take().ok_or(GatewayError::Overloaded {
            max: self.in_flight.max(),
        })?;
        let mut key_slot = None;
        if let Some(caller) = caller {
            let key = &caller.0;
            // Checked, it has done its work: nothing below may see or forward it.
            head.headers.remove(header::AUTHORIZATION);
            let ctx = head.extensions.get::<Arc<RequestContext>>().cloned();
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
            // The checks below read it here; the context's copy serves the response side.
            head.extensions.insert(caller);
        }
        head.extensions.insert(InFlight::new(gateway, key_slot));
        Ok(())
    }
}
