//! Response bodies. [`ResponseBody`] is the one body type the stack returns: either a small
//! body the gateway wrote itself or the upstream's body passed through frame by frame.
//!
//! The passthrough never buffers, parses or copies: each `Frame<Bytes>` from hyper is handed
//! on as is (moving a `Bytes` is a pointer copy). Its one intervention is at a cut: if the
//! upstream connection breaks in the middle of an SSE stream, the client gets a final
//! `data: {"error": ...}` event and a clean end, so SDKs raise instead of returning a
//! silently truncated answer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::limits::in_flight::InFlight;
use crate::metrics::UpstreamErrorKind;
use crate::models::ModelRoute;
use crate::per_worker::Local;
use crate::upstream::UpstreamIncoming;

/// Errors a response body can end with (only a non-SSE upstream body that was cut).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the gateway sends.
#[derive(Debug)]
pub enum ResponseBody {
    /// A body the gateway made (errors, `/v1/models`, health).
    Full(Full<Bytes>),
    /// The upstream's body, streamed through.
    Upstream(UpstreamBody),
}

impl ResponseBody {
    /// A body from owned bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Full::new(bytes.into()))
    }

    /// Keeps the request's in-flight slots until the upstream body ends (is dropped). A body
    /// the gateway wrote itself is already complete: the slots are released now.
    pub fn hold(self, in_flight: InFlight) -> Self {
        match self {
            Self::Upstream(mut b) => {
                b.in_flight = Some(in_flight);
                Self::Upstream(b)
            }
            full @ Self::Full(_) => full,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            Self::Upstream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_end_stream(),
            Self::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => b.size_hint(),
            Self::Upstream(b) => b.size_hint(),
        }
    }
}

/// The upstream's response body, passed through.
///
/// In SSE mode, each frame is split (zero-copy `Bytes` slices) at the last event boundary:
/// complete events go out at once; the tail of an event the upstream has not finished is
/// held until its end arrives. A client can use only complete events anyway, so nothing it
/// could use is delayed, and on a cut the half event is dropped and the error event is the
/// clean last word. At most [`MAX_HELD`] bytes are held: past that (an upstream that never
/// ends an event) they go out as they are, so memory and latency stay bounded; a cut inside
/// such a giant event still ends with the error event, after the partial bytes.
#[derive(Debug)]
pub struct UpstreamBody {
    /// hyper's body plus the pooled connection, which it hands back at a clean end.
    inner: UpstreamIncoming,
    /// Event tracking, when a cut may be reported in-band as an SSE event (the response is
    /// an uncompressed `text/event-stream` without a fixed length). Boxed: other responses
    /// carry one pointer instead of the state, and the response moves through every layer.
    sse: Option<Box<SseWatch>>,
    done: bool,
    /// The route it came by: the upstream's name, for a cut's log line and message.
    route: Local<ModelRoute>,
    /// Where a cut is recorded for the metrics.
    ctx: Option<Arc<RequestContext>>,
    /// Admission's slots, released when the body is dropped.
    in_flight: Option<InFlight>,
}

/// An SSE stream's state between frames.
#[derive(Debug, Default)]
struct SseWatch {
    /// Bytes after the last complete event.
    held: Vec<Bytes>,
    /// Their total length.
    held_bytes: usize,
    /// Whether part of an unfinished event went out (it was larger than [`MAX_HELD`]).
    partial_out: bool,
    /// The last (up to 3) bytes of the stream so far, to find a boundary split over frames
    /// however small they are.
    tail: [u8; 3],
    tail_len: usize,
    /// Frames ready to go out, in order.
    ready: VecDeque<Frame<Bytes>>,
}

impl UpstreamBody {
    /// Wraps an upstream body. `sse` enables event-boundary tracking and the in-band error
    /// event on a cut.
    pub fn new(
        inner: UpstreamIncoming,
        sse: bool,
        route: Local<ModelRoute>,
        ctx: Option<Arc<RequestContext>>,
    ) -> Self {
        Self {
            inner,
            sse: sse.then(Box::default),
            done: false,
            route,
            ctx,
            in_flight: None,
        }
    }
}

impl SseWatch {
    /// Queues the complete events of `data` (with any held bytes before them) and holds the
    /// incomplete rest, up to [`MAX_HELD`] bytes.
    fn split_at_event_boundary(&mut self, data: Bytes) {
        let end = last_event_end(&self.tail[..self.tail_len], &data);
        self.remember_tail(&data);
        match end {
            Some(end) => {
                self.release_held();
                self.partial_out = false;
                self.ready.push_back(Frame::data(data.slice(..end)));
                if end < data.len() {
                    self.held_bytes = data.len() - end;
                    self.held.push(data.slice(end..));
                }
            }
            None => {
                self.held_bytes += data.len();
                self.held.push(data);
            }
        }
        if self.held_bytes > MAX_HELD {
            self.release_held();
            self.partial_out = true;
        }
    }

    /// Queues every held byte, in order.
    fn release_held(&mut self) {
        self.ready.extend(self.held.drain(..).map(Frame::data));
        self.held_bytes = 0;
    }

    /// Keeps the last 3 bytes of the stream after `data`.
    fn remember_tail(&mut self, data: &[u8]) {
        let mut joint = [0u8; 6];
        joint[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        let take = data.len().min(3);
        joint[self.tail_len..self.tail_len + take].copy_from_slice(&data[data.len() - take..]);
        let len = self.tail_len + take;
        let keep = len.min(3);
        self.tail[..keep].copy_from_slice(&joint[len - keep..len]);
        self.tail_len = keep;
    }

    /// Ends the stream after a cut: the held half event is dropped, and the error event is
    /// the last word.
    fn cut(&mut self, upstream: &Arc<str>) {
        self.held.clear();
        self.held_bytes = 0;
        if self.partial_out {
            // A giant event already went out in part: end its line first.
            self.ready
                .push_back(Frame::data(Bytes::from_static(b"\n\n")));
        }
        let cut = GatewayError::UpstreamCut {
            upstream: upstream.clone(),
        };
        self.ready.push_back(Frame::data(cut.to_sse_event()));
    }
}

/// Held bytes beyond which an unfinished SSE event is passed on as it is.
pub const MAX_HELD: usize = 64 * 1024;

/// The end of the last SSE event boundary (a blank line: two line ends, each `\n`, `\r\n` or
/// `\r`) that ends inside `data`, looking at the last bytes of `before` for a boundary split
/// across frames.
fn last_event_end(before: &[u8], data: &[u8]) -> Option<usize> {
    const BOUNDARIES: [&[u8]; 5] = [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n"];
    let within = BOUNDARIES
        .iter()
        .filter_map(|b| memchr::memmem::rfind(data, b).map(|i| i + b.len()))
        .max();
    if within.is_some() {
        return within;
    }
    // A boundary straddling the previous frame and this one.
    let keep = before.len().min(3);
    let head = data.len().min(3);
    let mut joint = [0u8; 6];
    joint[..keep].copy_from_slice(&before[before.len() - keep..]);
    joint[keep..keep + head].copy_from_slice(&data[..head]);
    let joint = &joint[..keep + head];
    BOUNDARIES
        .iter()
        .filter_map(|b| memchr::memmem::rfind(joint, b).map(|i| i + b.len()))
        .filter(|&end| end > keep)
        .map(|end| end - keep)
        .max()
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.sse.as_mut().and_then(|w| w.ready.pop_front()) {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match &mut this.sse {
                    None => return Poll::Ready(Some(Ok(frame))),
                    Some(watch) => match frame.into_data() {
                        Ok(data) => watch.split_at_event_boundary(data),
                        Err(trailers) => {
                            // Trailers end the body: held bytes go first.
                            watch.release_held();
                            watch.ready.push_back(trailers);
                        }
                    },
                },
                None => {
                    // A clean end: whatever was held goes out as the upstream sent it.
                    this.done = true;
                    if let Some(watch) = &mut this.sse {
                        watch.release_held();
                    }
                }
                Some(Err(err)) => {
                    this.done = true;
                    if let Some(ctx) = &this.ctx {
                        let _ = ctx.upstream_error.set(UpstreamErrorKind::Reset);
                    }
                    let sse = this.sse.is_some();
                    tracing::warn!(upstream = %this.route.upstream.name, error = %err, sse, "upstream body cut mid-response");
                    match &mut this.sse {
                        None => return Poll::Ready(Some(Err(Box::new(err)))),
                        Some(watch) => watch.cut(&this.route.upstream.name),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.sse {
            None => self.done || self.inner.is_end_stream(),
            Some(w) => {
                w.ready.is_empty()
                    && (self.done || (w.held.is_empty() && self.inner.is_end_stream()))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse.is_some() {
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_event_is_an_openai_error_the_sdk_recognises() {
        let event = GatewayError::UpstreamCut {
            upstream: Arc::from("u"),
        }
        .to_sse_event();
        let text = std::str::from_utf8(&event).unwrap_or_default();
        assert!(text.starts_with("data: ") && text.ends_with("\n\n"));
        let data = text.trim().strip_prefix("data: ").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        assert_eq!(v["error"]["code"], "upstream_unavailable");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("truncated"))
        );
    }

    #[test]
    fn event_boundaries_are_found_within_and_across_frames() {
        assert_eq!(last_event_end(b"", b"data: a\n\ndata: b"), Some(9));
        assert_eq!(last_event_end(b"", b"data: a\n\ndata: b\n\n"), Some(18));
        assert_eq!(last_event_end(b"", b"data: a\r\n\r\nda"), Some(11));
        assert_eq!(last_event_end(b"", b"data: partial"), None);
        assert_eq!(last_event_end(b"data: a\n", b"\ndata"), Some(1));
        assert_eq!(last_event_end(b"data: a\r\n", b"\r\n"), Some(2));
        assert_eq!(
            last_event_end(b"data: a\n\n", b"more"),
            None,
            "a boundary wholly before is not new"
        );
    }
}
