//! Gives every request an id and a context, and every response an `x-request-id`.
//!
//! A client-sent `x-request-id` is kept when it is sane (1 to 128 characters of
//! `[A-Za-z0-9._:-]`), otherwise a fresh one replaces it, so ids in logs are always safe to
//! print and grep. The id is forwarded upstream too. Outermost layer: nothing, not even an
//! error, leaves without the header.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::RequestContext;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_ID_LEN: usize = 128;

/// Adds [`RequestId`] to a stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

/// Whether a client-sent id may be kept.
pub fn is_sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ID_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// `req_` and a random UUID in 32 lowercase hex digits, written into a stack buffer (this
/// runs on every request without a client id). The buffer becomes the value's owner, in
/// one allocation shared by the value's clones (request, context, response): bytes copied
/// into a `Vec` would take a second allocation at the first clone.
fn fresh_id() -> HeaderValue {
    let mut buf = [0u8; 4 + uuid::fmt::Simple::LENGTH];
    let (prefix, hex) = buf.split_at_mut(4);
    prefix.copy_from_slice(b"req_");
    uuid::Uuid::new_v4().simple().encode_lower(hex);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = WithId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if is_sane(v) => v.clone(),
            _ => fresh_id(),
        };
        req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
        req.extensions_mut().insert(RequestContext::new(id.clone()));
        WithId {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The response future: stamps the id on the way out.
    pub struct WithId<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for WithId<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(res))
    }
}

/// The context of a request that passed [`RequestId`].
pub fn context<B>(req: &Request<B>) -> Option<&Arc<RequestContext>> {
    req.extensions().get::<Arc<RequestContext>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanity_of_client_ids() {
        assert!(is_sane(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!is_sane(&HeaderValue::from_static("")));
        assert!(!is_sane(&HeaderValue::from_static("has space")));
        assert!(!is_sane(&HeaderValue::from_static("a\"b")));
        let long = "a".repeat(129);
        assert!(!is_sane(
            &HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static(""))
        ));
        assert!(is_sane(&fresh_id()));
    }
}
