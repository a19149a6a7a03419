//! The one per-request context, created by the outermost layer and carried in request
//! extensions. Inner layers record facts (which model, which upstream, when each step
//! happened, how the upstream failed) that the telemetry layer turns into the log line and
//! the metrics when the response ends. Nothing else flows back up the stack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::images::pipeline::FailureKind;
use crate::keys::ApiKey;
use crate::limits::{LimitKind, LimitState};
use crate::metrics::UpstreamErrorKind;
use crate::models::ModelRoute;
use crate::per_worker::Local;

/// Facts about one request. Cheap to share: layers hold `Arc<RequestContext>`.
#[derive(Debug)]
pub struct RequestContext {
    /// The `x-request-id`: the client's when sane, else generated.
    pub id: HeaderValue,
    /// When the gateway received the request headers; every duration below counts from it.
    pub started: Instant,
    /// The model id the request asked for, once parsed (for the log line, so only while it
    /// is on; `error::bounded`).
    pub model: OnceLock<Box<str>>,
    /// The configured model entry it resolved to (its id, `"*"` for the wildcard, is a
    /// metrics label) and so the upstream it goes to.
    pub route: OnceLock<Local<ModelRoute>>,
    /// When the body was fully read.
    pub body_read: Mark,
    /// When the request was handed to the upstream client.
    pub upstream_sent: Mark,
    /// When the upstream's response headers arrived.
    pub upstream_headers: Mark,
    /// How the upstream exchange failed, if it did.
    pub upstream_error: OnceLock<UpstreamErrorKind>,
    /// What the image step did, for requests with images.
    pub images: OnceLock<ImageFacts>,
    /// The prompt estimate (text + images) once the budget was counted.
    pub prompt_tokens: OnceLock<u64>,
    /// Why the image step refused the request, if it did.
    pub image_failure: OnceLock<FailureKind>,
    /// The gateway key, once authenticated (logs show its configured name, never the key).
    pub caller: OnceLock<Arc<ApiKey>>,
    /// The key's request allowance after this request's check (`x-ratelimit-*-requests`).
    pub requests_limit: OnceLock<LimitState>,
    /// The key's token allowance after this request's check (`x-ratelimit-*-tokens`).
    pub tokens_limit: OnceLock<LimitState>,
    /// Which limit refused the request, if one did.
    pub limit_refused: OnceLock<LimitKind>,
    /// The per-key concurrency limit refused the request.
    pub concurrency_refused: OnceLock<()>,
    /// The limit backend could not answer for this request.
    pub limit_backend_error: OnceLock<()>,
}

/// What happened to a request's images: counts by outcome and the time the step took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// Images sent as received (`data:` URIs within limits).
    pub unchanged: u32,
    /// Remote images inlined as fetched (within limits).
    pub inlined: u32,
    /// Downscaled or re-encoded here.
    pub processed: u32,
    /// Served from the cache (nothing fetched or decoded).
    pub cached: u32,
    /// How long the image step took.
    pub took: Duration,
}

impl ImageFacts {
    pub fn total(&self) -> u32 {
        self.unchanged + self.inlined + self.processed + self.cached
    }
}

impl RequestContext {
    /// A new context for a request that arrived now.
    pub fn new(id: HeaderValue) -> Arc<Self> {
        Arc::new(Self {
            id,
            started: Instant::now(),
            model: OnceLock::new(),
            route: OnceLock::new(),
            body_read: Mark::default(),
            upstream_sent: Mark::default(),
            upstream_headers: Mark::default(),
            upstream_error: OnceLock::new(),
            images: OnceLock::new(),
            prompt_tokens: OnceLock::new(),
            image_failure: OnceLock::new(),
            caller: OnceLock::new(),
            requests_limit: OnceLock::new(),
            tokens_limit: OnceLock::new(),
            limit_refused: OnceLock::new(),
            concurrency_refused: OnceLock::new(),
            limit_backend_error: OnceLock::new(),
        })
    }

    /// Records a limit's state after its check, for the response headers.
    /// The configured model id the request resolved to (a metrics label).
    pub fn model_label(&self) -> Option<&Arc<str>> {
        self.route.get().map(|r| &r.id)
    }

    /// The configured upstream, once the request was handed to it.
    pub fn upstream_name(&self) -> Option<&Arc<str>> {
        self.upstream_sent.get()?;
        self.route.get().map(|r| &r.upstream.name)
    }

    pub fn record_limit(&self, kind: LimitKind, state: LimitState) {
        let _ = match kind {
            LimitKind::Requests => self.requests_limit.set(state),
            LimitKind::Tokens => self.tokens_limit.set(state),
        };
    }

    /// Records that a step happened now.
    pub fn mark(&self, step: &Mark) {
        self.mark_at(step, Instant::now());
    }

    /// Records that a step happened at `when` (a clock reading the caller already has).
    pub fn mark_at(&self, step: &Mark, when: Instant) {
        step.set(when.saturating_duration_since(self.started));
    }
}

/// When a step happened, counted from the request's start; the first record stands.
/// An atomic rather than a `OnceLock<Duration>`: a record is one compare-and-swap, not a
/// `Once` call, on a path every request takes three times.
#[derive(Debug, Default)]
pub struct Mark(
    /// Nanoseconds plus one; 0 while unrecorded.
    AtomicU64,
);

impl Mark {
    fn set(&self, at: Duration) {
        let nanos = u64::try_from(at.as_nanos()).map_or(u64::MAX, |n| n.saturating_add(1));
        let _ = self
            .0
            .compare_exchange(0, nanos, Ordering::Release, Ordering::Relaxed);
    }

    /// The recorded time, if the step happened.
    pub fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_unset_until_recorded_and_its_first_record_stands() {
        let mark = Mark::default();
        assert_eq!(mark.get(), None);
        mark.set(Duration::ZERO);
        assert_eq!(mark.get(), Some(Duration::ZERO));
        mark.set(Duration::from_millis(5));
        assert_eq!(mark.get(), Some(Duration::ZERO));
        let later = Mark::default();
        later.set(Duration::from_micros(1_234_567));
        assert_eq!(later.get(), Some(Duration::from_micros(1_234_567)));
    }
}
