//! Stamps OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` on every
//! response to a key whose limits were checked, errors included (a 429 says how far over
//! the key is). The values are the states the checks left in the request context.
//! Built only when `[[keys]]` exist; an open gateway does not pay for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::context::RequestContext;
use crate::limits::{LimitState, reset_text};

static NAMES: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// Adds [`RateLimitHeaders`] to a stack; `enabled: false` makes it a pass-through.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitHeadersLayer {
    pub enabled: bool,
}

impl<S> Layer<S> for RateLimitHeadersLayer {
    type Service = RateLimitHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitHeaders {
            inner,
            enabled: self.enabled,
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RateLimitHeaders<S> {
    inner: S,
    enabled: bool,
}

impl<S, B, RB> Service<Request<B>> for RateLimitHeaders<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Stamped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ctx = if self.enabled {
            req.extensions().get::<Arc<RequestContext>>().cloned()
        } else {
            None
        };
        Stamped {
            inner: Box::pin(self.inner.call(req)),
            ctx,
        }
    }
}

/// The response future of [`RateLimitHeaders`].
pub struct Stamped<F> {
    inner: Pin<Box<F>>,
    ctx: Option<Arc<RequestContext>>,
}

impl<F, RB, E> Future for Stamped<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut res = ready!(self.inner.as_mut().poll(cx));
        if let (Ok(res), Some(ctx)) = (&mut res, self.ctx.take()) {
            let h = res.headers_mut();
            if let Some(s) = ctx.requests_limit.get() {
                stamp(h, &NAMES[0], s);
            }
            if let Some(s) = ctx.tokens_limit.get() {
                stamp(h, &NAMES[1], s);
            }
        }
        Poll::Ready(res)
    }
}

fn stamp(h: &mut HeaderMap, names: &[HeaderName; 3], s: &LimitState) {
    h.insert(&names[0], HeaderValue::from(s.limit));
    h.insert(&names[1], HeaderValue::from(s.remaining));
    if let Ok(v) = HeaderValue::try_from(reset_text(s.reset)) {
        h.insert(&names[2], v);
    }
}
