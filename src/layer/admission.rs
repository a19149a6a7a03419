//! Admission: who is calling and whether the gateway takes the request now. Runs before
//! the body is read, so a refused request costs no body bytes.
//!
//! In order: the gateway key (401 `invalid_api_key`; the key is then removed from the
//! request, so it can never be forwarded or logged), the gateway-wide in-flight cap
//! (`server.max_concurrent_requests`: 503 `overloaded`, no queue), the key's in-flight cap
//! (`max_concurrent`: 429), and, on the chat route, one request charged to the key's
//! `requests_per_minute` (429). The in-flight slots are held until the response body ends
//! (a stream holds them while it streams), by the body itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Service, ServiceExt};

use crate::body::ResponseBody;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::keys::KeyTable;
use crate::limits::{LimitKind, enforce};

/// The in-flight slots a request holds until its response body ends.
#[derive(Debug)]
pub struct InFlight {
    _gateway: OwnedSemaphorePermit,
    _key: Option<OwnedSemaphorePermit>,
}

/// What admission shares between the routes it guards.
#[derive(Debug, Clone)]
pub struct Gate {
    pub keys: Arc<KeyTable>,
    /// `server.max_concurrent_requests` slots.
    pub in_flight: Arc<Semaphore>,
    pub max_in_flight: u32,
}

impl Gate {
    pub fn new(keys: Arc<KeyTable>, max_in_flight: u32) -> Self {
        Self {
            keys,
            in_flight: Arc::new(Semaphore::new(
                usize::try_from(max_in_flight).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            max_in_flight,
        }
    }
}

/// A route's service behind admission. `charge_requests`: whether a request counts against
/// `requests_per_minute` (the chat route; not `/gateway/inspect`, which sends nothing
/// upstream).
#[derive(Debug, Clone)]
pub struct Admission<S> {
    pub gate: Gate,
    pub charge_requests: bool,
    pub inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<ResponseBody>, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let gate = self.gate.clone();
        let charge = self.charge_requests;
        let inner = self.inner.clone();
        Box::pin(async move {
            let caller = gate.keys.authenticate(req.headers())?;
            let gateway = gate.in_flight.clone().try_acquire_owned().map_err(|_| {
                GatewayError::Overloaded {
                    max: gate.max_in_flight,
                }
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
                if let Some((slots, max)) = &key.concurrency {
                    key_slot = Some(slots.clone().try_acquire_owned().map_err(|_| {
                        if let Some(ctx) = &ctx {
                            let _ = ctx.concurrency_refused.set(());
                        }
                        GatewayError::TooManyConcurrent {
                            key: key.name.clone(),
                            max: *max,
                        }
                    })?);
                }
                if charge && let Some(limit) = &key.requests {
                    enforce(
                        limit,
                        LimitKind::Requests,
                        1,
                        &key.name,
                        gate.keys.on_backend_error,
                        ctx.as_deref(),
                    )
                    .await?;
                }
                req.extensions_mut().insert(caller);
            }
            let res = inner.oneshot(req).await?;
            let held = InFlight {
                _gateway: gateway,
                _key: key_slot,
            };
            Ok(res.map(|body| body.hold(held)))
        })
    }
}
