//! Stamps OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` on every
//! response to a key with limits, errors included (a 429 says how far over the key is), on
//! every route it authenticated on. The values are the states this request's checks left in
//! the request context; for a limit the request did not reach (refused earlier, or a route
//! that is not charged) the key's current state, uncharged (`Limit::peek`). An upstream's
//! own 429 keeps its own headers; on other upstream responses to a limited key the
//! upstream's `x-ratelimit-*` (the shared provider account's) are removed. Built only when
//! `[[keys]]` exist.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
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
            inner: self.inner.call(req),
            ctx,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RateLimitHeaders`] (not boxed: an open gateway pays nothing).
    pub struct Stamped<F> {
        #[pin]
        inner: F,
        ctx: Option<Arc<RequestContext>>,
    }
}

impl<F, RB, E> Future for Stamped<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx));
        if let (Ok(res), Some(ctx)) = (&mut res, this.ctx.take())
            && let Some(key) = ctx.caller.get()
            // An upstream's own 429 passes with its own headers: its limit is the one hit.
            && !(res.status() == StatusCode::TOO_MANY_REQUESTS
                && ctx.upstream_headers.get().is_some())
        {
            let h = res.headers_mut();
            // The upstream's own figures describe the shared provider account, not this key:
            // they never mix with the key's.
            if key.requests.is_some() || key.tokens.is_some() {
                for names in &NAMES {
                    for name in names {
                        h.remove(name);
                    }
                }
            }
            for (names, checked, limit) in [
                (&NAMES[0], ctx.requests_limit.get(), &key.requests),
                (&NAMES[1], ctx.tokens_limit.get(), &key.tokens),
            ] {
                // The state this request's check left, else the key's current state.
                match (checked, limit) {
                    (Some(s), _) => stamp(h, names, s),
                    // Not while the backend is unreachable: nothing is known then.
                    (None, Some(limit)) if ctx.limit_backend_error.get().is_none() => {
                        stamp(h, names, &limit.peek());
                    }
                    (None, _) => {}
                }
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
