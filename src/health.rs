//! Liveness and readiness. `/healthz` is dependency-free: 200 while the process serves.
//! `/readyz` reflects [`Readiness`]: 503 while starting and while draining for shutdown, and,
//! when `server.readiness_upstream_window_secs` is set, 503 while no upstream has answered
//! within that window. [`probe_upstreams`] keeps that fresh when traffic is quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::upstream::Upstream;

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// Shared readiness state, flipped by the server as it starts and drains.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    state: Arc<AtomicU8>,
    upstream_check: Option<Arc<UpstreamCheck>>,
}

#[derive(Debug)]
struct UpstreamCheck {
    window: Duration,
    upstreams: Vec<Arc<Upstream>>,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyState {
    Starting,
    Ready,
    Draining,
    /// No upstream has answered within the configured window.
    UpstreamsSilent,
}

impl Readiness {
    /// Readiness that also requires an upstream answer within `window`.
    pub fn with_upstreams(window: Duration, upstreams: Vec<Arc<Upstream>>) -> Self {
        Self {
            state: Arc::default(),
            upstream_check: Some(Arc::new(UpstreamCheck { window, upstreams })),
        }
    }

    /// The listener is bound and serving.
    pub fn set_ready(&self) {
        // Never go back from draining to ready.
        let _ = self
            .state
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Shutdown has begun.
    pub fn set_draining(&self) {
        self.state.store(DRAINING, Ordering::Release);
    }

    /// The current state.
    pub fn state(&self) -> ReadyState {
        match self.state.load(Ordering::Acquire) {
            STARTING => ReadyState::Starting,
            READY => match &self.upstream_check {
                Some(c) if !c.upstreams.iter().any(|u| u.last_answer.within(c.window)) => {
                    ReadyState::UpstreamsSilent
                }
                _ => ReadyState::Ready,
            },
            _ => ReadyState::Draining,
        }
    }
}

/// Asks every upstream `GET {base_url}/models` every `interval`, each upstream in its own
/// task so a silent one cannot delay the others; any HTTP answer (even 401) counts as the
/// upstream answering. Errors are logged at debug: readiness is what reports them.
pub fn probe_upstreams(upstreams: &[Arc<Upstream>], interval: Duration) {
    for u in upstreams {
        tokio::spawn(probe(u.clone(), interval));
    }
}

async fn probe(u: Arc<Upstream>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut req = Request::get(u.models_url.clone());
        if let Some(auth) = &u.authorization {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        let Ok(req) = req.body(Full::new(Bytes::new())) else {
            continue;
        };
        let deadline = tokio::time::Instant::now() + u.first_byte_timeout.min(interval);
        match u.client.request(req, deadline).await {
            Ok(_) => u.last_answer.now(),
            Err(e) => tracing::debug!(upstream = %u.name, error = %e, "readiness probe failed"),
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
