//! The one per-request context, created by the outermost layer and carried in request
//! extensions. Inner layers record facts (which model, when upstream headers arrived) that
//! the access log reads when the response ends; nothing else flows back up the stack.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;

/// Facts about one request. Cheap to share: layers hold `Arc<RequestContext>`.
#[derive(Debug)]
pub struct RequestContext {
    /// The `x-request-id`: the client's when sane, else generated.
    pub id: HeaderValue,
    /// When the gateway received the request headers.
    pub started: Instant,
    /// The model id the request asked for, once parsed (for the log line; at most 256 bytes).
    pub model: OnceLock<Box<str>>,
    /// Time from `started` until the upstream's response headers.
    pub upstream_headers: OnceLock<Duration>,
}

impl RequestContext {
    /// A new context for a request that arrived now.
    pub fn new(id: HeaderValue) -> Arc<Self> {
        Arc::new(Self {
            id,
            started: Instant::now(),
            model: OnceLock::new(),
            upstream_headers: OnceLock::new(),
        })
    }
}
