//! Observes every request once, when its response body ends (or the client goes away): one
//! access-log line (request id, method, path, model, status, bytes, total time, time to
//! upstream headers) and the request metrics (count, duration, in-flight, upstream timings
//! and errors, time to first byte).
//!
//! It records at the end because a stream's size and duration are only known then, and it
//! reads the facts inner layers wrote into the `RequestContext`, so no other layer needs the
//! metrics registry. The body wrapper counts frame lengths and notes the first byte; it never
//! copies or holds data. While the body streams it enters the request's span, so every log
//! line about the request carries its id. Sits inside `request_id` (so it has the id) and
//! outside `error_response` (so it sees the final status of errors too).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::context::RequestContext;
use crate::error::bounded;
use crate::limits::LimitKind;
use crate::metrics::{
    Finished, ImageLabels, ImageOutcome, ImageRefusal, ImageRefusalLabels, LimitLabel, Metrics,
    RateLimitedLabels, Route, UpstreamErrorLabels, UpstreamTimes,
};
use crate::per_worker::{Local, PerWorker};

/// Adds [`Telemetry`] to a stack. `metrics: None` turns metrics off (logs stay).
#[derive(Debug, Clone, Default)]
pub struct TelemetryLayer {
    pub metrics: Option<Arc<Metrics>>,
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            metrics: self.metrics.clone().map(PerWorker::new),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Telemetry<S> {
    inner: S,
    /// Each record holds its worker's handle (see `per_worker`).
    metrics: Option<PerWorker<Metrics>>,
}

impl<S, B, RB> Service<Request<B>> for Telemetry<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body<Data = Bytes>,
{
    type Response = Response<ObservedBody<RB>>;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
        let span = match &ctx {
            Some(c) => {
                tracing::info_span!("request", id = %String::from_utf8_lossy(c.id.as_bytes()))
            }
            None => tracing::info_span!("request"),
        };
        if let Some(m) = &self.metrics {
            m.get().request_started();
        }
        // Recorded as 499 (client closed) if the future is dropped before a response exists.
        let pending = Pending(Some(Record {
            ctx,
            metrics: self.metrics.as_ref().map(PerWorker::local),
            method: req.method().clone(),
            route: Route::of(req.uri().path()),
            // Only the log line prints it: not copied when the line is off.
            path: access_log_on().then(|| bounded(req.uri().path()).into()),
            status: CLIENT_CLOSED,
            bytes: 0,
            first_byte: None,
            errored: false,
        }));
        Observed {
            inner: self.inner.call(req).instrument(span),
            pending,
        }
    }
}

pin_project! {
    /// The response future: hands the record to the response body once there is one.
    /// Written out rather than boxed: it runs on every request.
    pub struct Observed<F> {
        #[pin]
        inner: Instrumented<F>,
        pending: Pending,
    }
}

impl<F, RB, E> Future for Observed<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Body<Data = Bytes>,
{
    type Output = Result<Response<ObservedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let res = ready!(this.inner.as_mut().poll(cx))?;
        let span = this.inner.as_ref().get_ref().span().clone();
        let mut record = this.pending.0.take();
        if let Some(r) = &mut record {
            r.status = res.status();
        }
        Poll::Ready(Ok(res.map(|body| ObservedBody {
            inner: body,
            span,
            record,
            ended: false,
        })))
    }
}

/// nginx's "client closed request": the client left before the response began.
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

struct Record {
    ctx: Option<Arc<RequestContext>>,
    metrics: Option<Local<Metrics>>,
    method: Method,
    route: Route,
    /// `None` when the access log is off.
    path: Option<Box<str>>,
    status: StatusCode,
    bytes: u64,
    first_byte: Option<Duration>,
    /// The body ended with an error (the client saw a broken response).
    errored: bool,
}

impl Record {
    /// Writes the metrics and the log line.
    fn finish(self, ended: bool) {
        let complete = ended
            && !self.errored
            && self
                .ctx
                .as_ref()
                .is_none_or(|c| c.upstream_error.get().is_none());
        if let Some(m) = &self.metrics {
            record_metrics(m, &self);
        }
        if access_log_on() {
            log_line(&self, complete);
        }
    }
}

/// Whether the access-log line is written (`RUST_LOG` at info or finer for it). What only
/// the line prints is not gathered when it is off.
pub fn access_log_on() -> bool {
    tracing::enabled!(target: "vision_gateway::access", tracing::Level::INFO)
}

/// Owns the record until a response exists.
struct Pending(Option<Record>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.finish(false);
        }
    }
}

/// A response body that counts what passes and observes the request when dropped.
pub struct ObservedBody<B: Body> {
    inner: B,
    span: tracing::Span,
    record: Option<Record>,
    ended: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Body for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(d), Some(r)) = (f.data_ref(), this.record.as_mut()) {
                    if r.first_byte.is_none() && !d.is_empty() {
                        r.first_byte = r.ctx.as_ref().map(|c| c.started.elapsed());
                    }
                    r.bytes += d.len() as u64;
                }
            }
            Some(Err(_)) => {
                this.ended = true;
                if let Some(r) = this.record.as_mut() {
                    r.errored = true;
                }
            }
            None => this.ended = true,
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

impl<B: Body> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        let Some(r) = self.record.take() else { return };
        let _entered = self.span.enter();
        let ended = self.ended || self.inner.is_end_stream();
        r.finish(ended);
    }
}

fn record_metrics(m: &Metrics, r: &Record) {
    let ctx = r.ctx.as_deref();
    let upstream = ctx.and_then(|c| {
        let sent = c.upstream_sent.get();
        let headers = sent
            .zip(c.upstream_headers.get())
            .map(|(sent, headers)| headers.saturating_sub(sent));
        Some(UpstreamTimes {
            name: c.upstream_name()?,
            headers,
            first_byte: headers.and(r.first_byte),
        })
    });
    m.request_finished(&Finished {
        route: r.route,
        model: ctx.and_then(RequestContext::model_label),
        status: r.status.as_u16(),
        duration: ctx.map_or(Duration::ZERO, |c| c.started.elapsed()),
        overhead: ctx.and_then(|c| {
            let (read, sent) = (c.body_read.get()?, c.upstream_sent.get()?);
            Some(sent.saturating_sub(read))
        }),
        upstream,
    });
    let Some(ctx) = ctx else { return };
    if let Some(images) = ctx.images.get() {
        for (outcome, n) in [
            (ImageOutcome::Unchanged, images.unchanged),
            (ImageOutcome::Inlined, images.inlined),
            (ImageOutcome::Processed, images.processed),
            (ImageOutcome::Cached, images.cached),
        ] {
            if n > 0 {
                m.images
                    .get_or_create(&ImageLabels { outcome })
                    .inc_by(u64::from(n));
            }
        }
        m.image_step.observe(images.took.as_secs_f64());
    }
    if let Some(kind) = ctx.image_failure.get() {
        m.image_refusals
            .get_or_create(&ImageRefusalLabels {
                code: ImageRefusal(*kind),
            })
            .inc();
    }
    if let Some(key) = ctx.caller.get() {
        let limit = match (ctx.limit_refused.get(), ctx.concurrency_refused.get()) {
            (Some(LimitKind::Requests), _) => Some(LimitLabel::Requests),
            (Some(LimitKind::Tokens), _) => Some(LimitLabel::Tokens),
            (None, Some(())) => Some(LimitLabel::Concurrency),
            (None, None) => None,
        };
        if let Some(limit) = limit {
            m.rate_limited
                .get_or_create(&RateLimitedLabels {
                    key: key.name.clone(),
                    limit,
                })
                .inc();
        }
    }
    if ctx.limit_backend_error.get().is_some() {
        m.limit_backend_errors.inc();
    }
    let Some(upstream) = ctx.upstream_name() else {
        return;
    };
    if let Some(kind) = ctx.upstream_error.get() {
        m.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: upstream.clone(),
                kind: *kind,
            })
            .inc();
    }
}

fn log_line(r: &Record, complete: bool) {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let ctx = r.ctx.as_deref();
    let id = ctx
        .map(|c| String::from_utf8_lossy(c.id.as_bytes()).into_owned())
        .unwrap_or_default();
    let images = ctx.and_then(|c| c.images.get());
    tracing::info!(
        target: "vision_gateway::access",
        request_id = %id,
        method = %r.method,
        path = r.path.as_deref().unwrap_or("-"),
        model = ctx.and_then(|c| c.model.get()).map_or("-", |m| &**m),
        key = ctx.and_then(|c| c.caller.get()).map(|k| &*k.name),
        status = r.status.as_u16(),
        bytes = r.bytes,
        total_ms = ctx.map_or(0.0, |c| c.started.elapsed().as_secs_f64() * 1e3),
        upstream_headers_ms = ms(ctx.and_then(|c| c.upstream_headers.get())),
        first_byte_ms = ms(r.first_byte),
        upstream_error = ctx.and_then(|c| c.upstream_error.get()).map(|k| k.as_str()),
        images = images.map(|i| i.total()),
        images_processed = images.map(|i| i.processed),
        images_cached = images.map(|i| i.cached),
        image_ms = ms(images.map(|i| i.took)),
        prompt_tokens = ctx.and_then(|c| c.prompt_tokens.get()),
        complete,
        "request"
    );
}
