//! Answers `HEAD` with the headers a `GET` would get and no body.
//!
//! hyper's HTTP/1 server drops the body of a HEAD response itself, but its HTTP/2 server
//! sends it, which breaks the stream (`PROTOCOL_ERROR`). So the body is replaced here, for
//! routed answers and errors alike, keeping `content-length` as the GET would have it. Sits
//! just above `error_response`, so error bodies are covered too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body;
use tower::{Layer, Service};

use crate::body::ResponseBody;

/// Adds [`Head`] to a stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadLayer;

impl<S> Layer<S> for HeadLayer {
    type Service = Head<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Head { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Head<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Head<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = HeadFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        HeadFuture {
            is_head: req.method() == Method::HEAD,
            inner: Box::pin(self.inner.call(req)),
        }
    }
}

/// The response future of [`Head`].
pub struct HeadFuture<F> {
    is_head: bool,
    inner: Pin<Box<F>>,
}

impl<F, E> Future for HeadFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut res = ready!(self.inner.as_mut().poll(cx))?;
        if self.is_head {
            if let Some(len) = res.body().size_hint().exact() {
                res.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            *res.body_mut() = ResponseBody::full(bytes::Bytes::new());
        }
        Poll::Ready(Ok(res))
    }
}
