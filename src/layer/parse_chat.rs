//! Parses the body as a chat completion request, just far enough to route it.
//!
//! Rejects with 400 `invalid_request` (with `param` naming the field) when the body is not
//! JSON, not an object, or lacks a string `model` or a non-empty `messages` array. Runs right
//! after the body is read: it is cheap, and every later step needs the model.

use bytes::Bytes;
use http::request::Parts;

use super::checkpoint::checks_now;
use crate::chat::ParsedChat;
use crate::context::RequestContext;
use crate::error::{GatewayError, bounded};
use crate::layer::telemetry::access_log_on;

/// The parsing checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct ParseChat;

impl ParseChat {
    /// The check itself. Synchronous: `checks_now!` makes it a checkpoint with a ready future.
    fn check_now(&self, head: &mut Parts, body: Bytes) -> Result<ParsedChat, GatewayError> {
        let parsed = ParsedChat::parse(body)?;
        // Only the access log prints it: not copied when the log line is off.
        if let Some(ctx) = head.extensions.get::<std::sync::Arc<RequestContext>>()
            && access_log_on()
        {
            let _ = ctx.model.set(bounded(&parsed.model).into());
        }
        Ok(parsed)
    }
}

checks_now!(ParseChat, Bytes => ParsedChat);
