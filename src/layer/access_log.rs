//! One log line per request, written when its response body ends (or the client goes away):
//! request id, method, path, model, status, bytes sent, total time, time to upstream headers.
//!
//! The line is written when the body finishes because a stream's size and duration are only
//! known then. The body wrapper only counts frame lengths; it never copies or holds data.
//! Sits inside `request_id` (so it has the id) and outside `error_response` (so it sees the
//! final status of errors too).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::context::RequestContext;

/// Adds [`AccessLog`] to a stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes>,
{
    type Response = Response<LoggedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
        let method = req.method().clone();
        let path: Box<str> = req.uri().path().chars().take(256).collect();
        let span = match &ctx {
            Some(c) => {
                tracing::info_span!("request", id = %String::from_utf8_lossy(c.id.as_bytes()))
            }
            None => tracing::info_span!("request"),
        };
        let fut = self.inner.call(req).instrument(span);
        Box::pin(async move {
            let res = fut.await?;
            let status = res.status();
            Ok(res.map(|body| LoggedBody {
                inner: body,
                line: Some(Line {
                    ctx,
                    method,
                    path,
                    status,
                    bytes: 0,
                }),
                ended: false,
            }))
        })
    }
}

struct Line {
    ctx: Option<Arc<RequestContext>>,
    method: Method,
    path: Box<str>,
    status: StatusCode,
    bytes: u64,
}

/// A response body that counts what passes and logs the request when dropped.
pub struct LoggedBody<B: Body> {
    inner: B,
    line: Option<Line>,
    ended: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Body for LoggedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(d), Some(line)) = (f.data_ref(), this.line.as_mut()) {
                    line.bytes += d.len() as u64;
                }
            }
            Some(Err(_)) | None => this.ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        let Some(line) = self.line.take() else { return };
        let complete = self.ended || self.inner.is_end_stream();
        let (id, model, upstream_ms, total_ms) = match &line.ctx {
            Some(c) => (
                String::from_utf8_lossy(c.id.as_bytes()).into_owned(),
                c.model.get().map(|m| &**m),
                c.upstream_headers.get().map(|d| d.as_secs_f64() * 1e3),
                c.started.elapsed().as_secs_f64() * 1e3,
            ),
            None => (String::new(), None, None, 0.0),
        };
        tracing::info!(
            target: "vision_gateway::access",
            request_id = %id,
            method = %line.method,
            path = %line.path,
            model = model.unwrap_or("-"),
            status = line.status.as_u16(),
            bytes = line.bytes,
            total_ms,
            upstream_headers_ms = upstream_ms,
            complete,
            "request"
        );
    }
}
