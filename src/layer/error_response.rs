//! The one place a [`GatewayError`] becomes an HTTP response:
//! `{"error":{"message","type","param","code"}}` with the error's status, plus `allow` on 405.
//! Everything below returns `Result<_, GatewayError>`; everything above sees only responses.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response, header};
use tower::{Layer, Service};

use crate::body::ResponseBody;
use crate::error::GatewayError;

static RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
static X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// Adds [`ErrorResponse`] to a stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorResponseLayer;

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ErrorResponse<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ErrorResponse<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = GatewayError>,
{
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = Converted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every service below is always ready; an error here can only be a bug.
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) | Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Converted {
            inner: Box::pin(self.inner.call(req)),
        }
    }
}

/// The response future of [`ErrorResponse`].
pub struct Converted<F> {
    inner: Pin<Box<F>>,
}

impl<F> Future for Converted<F>
where
    F: Future<Output = Result<Response<ResponseBody>, GatewayError>>,
{
    type Output = Result<Response<ResponseBody>, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.inner.as_mut().poll(cx)) {
            Ok(res) => res,
            Err(err) => into_response(&err),
        }))
    }
}

/// Renders an error as the client sees it, and logs it at its level.
pub fn into_response(err: &GatewayError) -> Response<ResponseBody> {
    match err.log_level() {
        tracing::Level::ERROR => tracing::error!(code = err.code(), "{err}"),
        tracing::Level::WARN => tracing::warn!(code = err.code(), "{err}"),
        tracing::Level::INFO => tracing::info!(code = err.code(), "{err}"),
        _ => tracing::debug!(code = err.code(), "{err}"),
    }
    let json = err.to_json();
    let mut res = Response::new(ResponseBody::full(json));
    *res.status_mut() = err.status();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let GatewayError::MethodNotAllowed { allowed, .. } = err {
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    if let Some(wait) = err.retry_after() {
        // Rounded up, both: a client waiting exactly this long must not be early.
        let nanos = wait.as_nanos();
        let ms = u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let secs = u64::try_from(nanos.div_ceil(1_000_000_000).max(1)).unwrap_or(u64::MAX);
        let h = res.headers_mut();
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        h.insert(&RETRY_AFTER_MS, HeaderValue::from(ms));
    }
    if let Some(retry) = err.should_retry() {
        res.headers_mut().insert(
            &X_SHOULD_RETRY,
            HeaderValue::from_static(if retry { "true" } else { "false" }),
        );
    }
    res
}
