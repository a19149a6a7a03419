//! Response bodies. [`ResponseBody`] is the one body type the stack returns: either a small
//! body the gateway wrote itself or the upstream's body passed through frame by frame.
//!
//! The passthrough never buffers, parses or copies: each `Frame<Bytes>` from hyper is handed
//! on as is (moving a `Bytes` is a pointer copy). Its one intervention is at a cut: if the
//! upstream connection breaks in the middle of an SSE stream, the client gets a final
//! `data: {"error": ...}` event and a clean end, so SDKs raise instead of returning a
//! silently truncated answer.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

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

/// The event sent when the upstream cuts an SSE stream. The leading blank lines end any
/// event the upstream left half-written; at an event boundary they are ignored by SSE parsers.
const SSE_CUT_EVENT: &[u8] = b"\n\ndata: {\"error\":{\"message\":\"the upstream connection broke before the response was complete; the answer is truncated, retry the request\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_unavailable\"}}\n\n";

/// The upstream's response body, passed through.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    /// Whether a cut may be reported in-band as an SSE event (the response is an
    /// uncompressed `text/event-stream` without a fixed length).
    sse: bool,
    done: bool,
    upstream: std::sync::Arc<str>,
}

impl UpstreamBody {
    /// Wraps an upstream body. `sse` enables the in-band error event on a cut.
    pub fn new(inner: Incoming, sse: bool, upstream: std::sync::Arc<str>) -> Self {
        Self {
            inner,
            sse,
            done: false,
            upstream,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            None => {
                this.done = true;
                Poll::Ready(None)
            }
            Some(Err(err)) => {
                this.done = true;
                tracing::warn!(upstream = %this.upstream, error = %err, sse = this.sse, "upstream body cut mid-response");
                if this.sse {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(SSE_CUT_EVENT)))))
                } else {
                    Poll::Ready(Some(Err(Box::new(err))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_event_is_an_openai_error_the_sdk_recognises() {
        let text = std::str::from_utf8(SSE_CUT_EVENT).unwrap_or_default();
        let data = text.trim().strip_prefix("data: ").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        assert_eq!(v["error"]["code"], "upstream_unavailable");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("truncated"))
        );
    }
}
