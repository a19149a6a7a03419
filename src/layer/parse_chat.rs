//! Parses the body as a chat completion request, just far enough to route it.
//!
//! Rejects with 400 `invalid_request` (with `param` naming the field) when the body is not
//! JSON, not an object, or lacks a string `model` or a non-empty `messages` array. Runs right
//! after the body is read: it is cheap, and every later step needs the model.

use std::future::Future;

use bytes::Bytes;
use http::request::Parts;

use super::checkpoint::Checkpoint;
use crate::chat::ParsedChat;
use crate::context::RequestContext;
use crate::error::{GatewayError, bounded};

/// The parsing checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct ParseChat;

impl ParseChat {
    /// The check itself: synchronous, so [`Checkpoint::check`] answers with a ready future.
    fn check_now(&self, head: &mut Parts, body: Bytes) -> Result<ParsedChat, GatewayError> {
        let parsed = ParsedChat::parse(body)?;
        if let Some(ctx) = head.extensions.get::<std::sync::Arc<RequestContext>>() {
            let _ = ctx.model.set(bounded(&parsed.model).into());
        }
        Ok(parsed)
    }
}

impl Checkpoint<Bytes> for ParseChat {
    type Out = ParsedChat;

    fn check(
        &self,
        head: &mut Parts,
        body: Bytes,
    ) -> impl Future<Output = Result<ParsedChat, GatewayError>> + Send {
        std::future::ready(self.check_now(head, body))
    }
}
