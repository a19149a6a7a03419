//! The chat stack's endpoint: sends a checked chat request to its upstream and streams the
//! answer back.
//!
//! Request: the body is the client's bytes with only the planned edits spliced in; headers
//! minus hop-by-hop, with `host` the upstream's (set by the client, `UpstreamClient`) and
//! `content-length` the length sent (the client's own when the body is unedited);
//! `authorization` replaced by the upstream's key when it has one, so the client's key
//! never leaves. Response: status and headers minus
//! hop-by-hop, body frames passed through as they arrive ([`UpstreamBody`]).
//! Failures: connect errors → 502 `upstream_unavailable`, no headers within
//! `first_byte_timeout` → 504 `upstream_timeout`; upstream 4xx/5xx are passed through as is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::body::{ResponseBody, UpstreamBody};
use crate::chat::ReadyChat;
use crate::context::RequestContext;
use crate::error::{GatewayError, UpstreamFailure};
use crate::headers::strip_hop_by_hop;
use crate::layer::checkpoint::Endpoint;
use crate::layer::request_id::X_REQUEST_ID;
use crate::limits::in_flight::InFlight;
use crate::metrics::UpstreamErrorKind;
use crate::models::ModelRoute;
use crate::per_worker::Local;
use crate::upstream::{ClientError, UpstreamIncoming};

/// The upstream's own request id, kept under another name so ours stays authoritative.
static X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// Forwards requests to the upstream their route names.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forward;

impl Endpoint<Request<ReadyChat>> for Forward {
    // The pools connect on demand; there is no back-pressure to wait for.
    fn call(
        &self,
        req: Request<ReadyChat>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, GatewayError>> + Send {
        forward(req)
    }
}

/// Builds the upstream request and hands it to the upstream's client, before any await:
/// the returned future holds only the exchange in flight and what the answer needs, not
/// the request in its several forms (an async fn would keep each of them for its whole
/// life, and every request's future, with each move of it, would be that much bigger).
fn forward(req: Request<ReadyChat>) -> Forwarding<impl Future<Output = ClientAnswer> + Send> {
    let (mut parts, ReadyChat { chat, .. }) = req.into_parts();
    let body = match chat.upstream_body() {
        Ok(body) => body,
        Err(e) => return Forwarding::Refused { error: Some(e) },
    };
    let route = chat.route;
    let upstream = &route.upstream;

    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    // The client's `Host` is replaced by the upstream's in `UpstreamClient::request`.
    // An unedited body is the one the client's Content-Length announced (hyper read
    // exactly that many bytes): the header stays as it came, with no new value to build.
    if !chat.edits.is_empty() || !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if let Some(auth) = &upstream.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    let uri = match parts.uri.query() {
        None => upstream.chat_completions_url.clone(),
        Some(q) => match format!("{}?{q}", upstream.chat_completions_url).parse() {
            Ok(uri) => uri,
            Err(_) => {
                return Forwarding::Refused {
                    error: Some(GatewayError::Internal("cannot build the upstream URL")),
                };
            }
        },
    };
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = http::Method::POST;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;

    let ctx = parts.extensions.get::<Arc<RequestContext>>().cloned();
    // Admission's in-flight slots: held by the response body until it ends.
    let in_flight = parts.extensions.remove::<InFlight>();
    // One clock reading for the mark and the deadline.
    let now = tokio::time::Instant::now();
    if let Some(ctx) = &ctx {
        ctx.mark_at(&ctx.upstream_sent, now.into_std());
    }
    Forwarding::Sending {
        sent: upstream
            .client
            .request(out, now + upstream.first_byte_timeout),
        route: Some(route),
        ctx,
        in_flight,
    }
}

/// What the upstream's client answers.
type ClientAnswer = Result<Response<UpstreamIncoming>, ClientError>;

pin_project! {
    /// [`forward`]'s future: waits for the upstream's response head.
    #[project = ForwardingProj]
    enum Forwarding<F> {
        /// The request could not be built; answered at the first poll.
        Refused { error: Option<GatewayError> },
        Sending {
            #[pin]
            sent: F,
            route: Option<Local<ModelRoute>>,
            ctx: Option<Arc<RequestContext>>,
            in_flight: Option<InFlight>,
        },
    }
}

impl<F: Future<Output = ClientAnswer>> Future for Forwarding<F> {
    type Output = Result<Response<ResponseBody>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ForwardingProj::Refused { error } => Poll::Ready(Err(error.take().unwrap_or(
                GatewayError::Internal("upstream request polled after it ended"),
            ))),
            ForwardingProj::Sending {
                sent,
                route,
                ctx,
                in_flight,
            } => {
                let sent = ready!(sent.poll(cx));
                let Some(route) = route.take() else {
                    return Poll::Ready(Err(GatewayError::Internal(
                        "upstream request polled after it ended",
                    )));
                };
                Poll::Ready(answer(sent, route, ctx.take(), in_flight.take()))
            }
        }
    }
}

/// The client's response (or failure) to the response this gateway sends.
fn answer(
    sent: ClientAnswer,
    route: Local<ModelRoute>,
    ctx: Option<Arc<RequestContext>>,
    in_flight: Option<InFlight>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let upstream = &route.upstream;
    let failed = |kind: UpstreamErrorKind| {
        if let Some(ctx) = &ctx {
            let _ = ctx.upstream_error.set(kind);
        }
    };
    let res = match sent {
        Err(ClientError::TimedOut) => {
            failed(UpstreamErrorKind::Timeout);
            return Err(GatewayError::UpstreamTimeout {
                upstream: upstream.name.clone(),
                after: upstream.first_byte_timeout,
            });
        }
        Err(e) => {
            let (reason, kind) = if e.is_connect() {
                (UpstreamFailure::Connect, UpstreamErrorKind::Connect)
            } else {
                (UpstreamFailure::Protocol, UpstreamErrorKind::Reset)
            };
            failed(kind);
            tracing::warn!(upstream = %upstream.name, error = %e, "upstream request failed");
            return Err(GatewayError::UpstreamUnavailable {
                upstream: upstream.name.clone(),
                reason,
            });
        }
        Ok(res) => res,
    };
    let now = Instant::now();
    upstream.last_answer.at(now);
    if let Some(ctx) = &ctx {
        ctx.mark_at(&ctx.upstream_headers, now);
    }

    let (mut head, incoming) = res.into_parts();
    strip_hop_by_hop(&mut head.headers);
    // Copied, not removed: `RequestId` (outermost) overwrites `x-request-id` with ours in
    // place on the way out, cheaper than a removal from the map.
    if let Some(theirs) = head.headers.get(&X_REQUEST_ID) {
        let theirs = theirs.clone();
        head.headers.insert(X_UPSTREAM_REQUEST_ID.clone(), theirs);
    }
    let sse = is_uncompressed_unsized_sse(&head.headers);
    let body = UpstreamBody::new(incoming, sse, route, ctx);
    let body = match in_flight {
        Some(slots) => ResponseBody::Upstream(body).hold(slots),
        None => ResponseBody::Upstream(body),
    };
    Ok(Response::from_parts(head, body))
}

/// Whether an in-band error event may be appended to this response on a cut: only to an SSE
/// stream whose bytes the gateway may extend (no content-encoding, no fixed length).
fn is_uncompressed_unsized_sse(h: &http::HeaderMap) -> bool {
    // Compared in place, without lowercasing into a new string: this runs on every response.
    const SSE: &[u8] = b"text/event-stream";
    let is_sse = h.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .trim_ascii_start()
            .get(..SSE.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(SSE))
    });
    is_sse && !h.contains_key(header::CONTENT_ENCODING) && !h.contains_key(header::CONTENT_LENGTH)
}
