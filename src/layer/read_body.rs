//! Reads the request body into memory, capped at `server.max_body_bytes`.
//!
//! Rejects with 413 `request_too_large` when Content-Length announces more than the cap
//! (before keeping a byte) or when the bytes received pass it (whatever Content-Length said),
//! with 400 if the client stops sending mid-body, and with 408 `request_timeout` if the body
//! takes longer than `server.body_read_timeout_secs` (a slow sender holds memory). It sits
//! first in the chat stack because every later check needs the body, and nothing unbounded
//! may be read before it.
//!
//! Before a 413 it reads and discards up to [`DRAIN_MAX`] more bytes: closing a connection
//! with unread request bytes makes the kernel send a reset, which can destroy the 413 before
//! the client reads it. Larger bodies are not drained (the client may then see a reset).

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::checkpoint::Checkpoint;
use crate::context::RequestContext;
use crate::error::GatewayError;

/// The most bytes read and thrown away to deliver a 413 cleanly.
pub const DRAIN_MAX: u64 = 1024 * 1024;

/// The longest time spent draining.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The body-reading checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct ReadBody {
    /// The largest body accepted, in bytes.
    pub max_bytes: u64,
    /// How long the whole body may take to arrive.
    pub timeout: Duration,
}

/// How a read ended.
enum Read {
    Whole(Bytes),
    TooLarge,
    Broken,
}

impl Checkpoint<Incoming> for ReadBody {
    type Out = Bytes;

    async fn check(&self, head: &mut Parts, mut body: Incoming) -> Result<Bytes, GatewayError> {
        let too_large = GatewayError::BodyTooLarge {
            limit: self.max_bytes,
        };
        let announced = announced_length(head);
        if let Some(len) = announced.filter(|&len| len > self.max_bytes) {
            if len <= self.max_bytes.saturating_add(DRAIN_MAX) {
                drain(&mut body, len).await;
            }
            return Err(too_large);
        }
        let read = {
            let mut reading = std::pin::pin!(read(&mut body, self.max_bytes, announced));
            // hyper has usually queued a small body whole by the time this runs: read it
            // without arming (and then cancelling) a timer, most of this step's cost.
            match std::future::poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await {
                Poll::Ready(read) => Ok(read),
                Poll::Pending => tokio::time::timeout(self.timeout, reading).await,
            }
        };
        match read {
            Err(_elapsed) => Err(GatewayError::BodyTimeout {
                after: self.timeout,
            }),
            Ok(Read::TooLarge) => {
                drain(&mut body, DRAIN_MAX).await;
                Err(too_large)
            }
            Ok(Read::Broken) => Err(GatewayError::BodyRead),
            Ok(Read::Whole(bytes)) => {
                if let Some(ctx) = head.extensions.get::<std::sync::Arc<RequestContext>>() {
                    ctx.mark(&ctx.body_read);
                }
                Ok(bytes)
            }
        }
    }
}

/// Reads frames until the end or until more than `max` bytes arrived. A body in one frame is
/// kept as it is; several frames are joined once, into a buffer sized from Content-Length.
async fn read<B>(body: &mut B, max: u64, announced: Option<u64>) -> Read
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Read::Broken;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max {
            return Read::TooLarge;
        }
        chunks.push(data);
    }
    if chunks.len() <= 1 {
        return Read::Whole(chunks.pop().unwrap_or_default());
    }
    let capacity = usize::try_from(announced.unwrap_or(total).max(total)).unwrap_or(0);
    let mut joined = BytesMut::with_capacity(capacity);
    for c in chunks {
        joined.extend_from_slice(&c);
    }
    Read::Whole(joined.freeze())
}

/// Reads and discards a body that will not be used, when its announced length is within
/// [`DRAIN_MAX`] (or unannounced), so the connection can serve the client's next request.
/// Admission's refusals and the router's on-the-spot answers use it.
pub async fn drain_unread(head: &Parts, body: &mut Incoming) {
    if announced_length(head).is_none_or(|len| len <= DRAIN_MAX) {
        drain(body, DRAIN_MAX).await;
    }
}

fn announced_length(head: &Parts) -> Option<u64> {
    head.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads and discards up to `limit` bytes for at most [`DRAIN_TIME`].
async fn drain<B>(body: &mut B, limit: u64)
where
    B: Body<Data = Bytes> + Unpin,
{
    let discard = async {
        let mut seen: u64 = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen >= limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}
