//! Reads the request body into memory, capped at `server.max_body_bytes`.
//!
//! Rejects with 413 `request_too_large` when Content-Length announces more than the cap
//! (before reading a byte) or when the bytes received pass it (whatever Content-Length said),
//! with 400 if the client stops sending mid-body, and with 408 `request_timeout` if the body
//! takes longer than `server.body_read_timeout_secs` (a slow sender holds memory). It sits first in the chat stack because
//! every later check needs the body, and nothing unbounded may be read before it.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::checkpoint::Checkpoint;
use crate::context::RequestContext;
use crate::error::GatewayError;

/// The body-reading checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct ReadBody {
    /// The largest body accepted, in bytes.
    pub max_bytes: u64,
    /// How long the whole body may take to arrive.
    pub timeout: Duration,
}

impl<B> Checkpoint<B> for ReadBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Out = Bytes;

    async fn check(&self, req: Request<B>) -> Result<Request<Bytes>, GatewayError> {
        let too_large = GatewayError::BodyTooLarge {
            limit: self.max_bytes,
        };
        let announced = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|len| len > self.max_bytes) {
            return Err(too_large);
        }
        let (parts, body) = req.into_parts();
        let cap = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let read = tokio::time::timeout(self.timeout, Limited::new(body, cap).collect());
        let Ok(read) = read.await else {
            return Err(GatewayError::BodyTimeout {
                after: self.timeout,
            });
        };
        match read {
            Ok(collected) => {
                if let Some(ctx) = parts.extensions.get::<std::sync::Arc<RequestContext>>() {
                    ctx.mark(&ctx.body_read);
                }
                Ok(Request::from_parts(parts, collected.to_bytes()))
            }
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large),
            Err(_) => Err(GatewayError::BodyRead),
        }
    }
}

/// The request body type the chat stack starts from.
pub type ClientBody = Incoming;
