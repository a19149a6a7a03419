//! Charges the request's token estimate (text + image tokens at the size sent +
//! `max_tokens`, the same count as the context budget) to the key's `tokens_per_minute`.
//! Last check before the upstream: the image work has settled the image sizes, and a
//! request refused earlier is not charged. 429 when it does not fit now, 429 with
//! `x-should-retry: false` when it never can.

use std::sync::Arc;

use http::request::Parts;

use super::checkpoint::Checkpoint;
use crate::chat::ReadyChat;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::keys::{Caller, KeyTable};
use crate::limits::{LimitKind, enforce};

/// The token-limit checkpoint.
#[derive(Debug, Clone)]
pub struct TokenLimit {
    pub keys: Arc<KeyTable>,
}

impl Checkpoint<ReadyChat> for TokenLimit {
    type Out = ReadyChat;

    async fn check(&self, head: &mut Parts, ready: ReadyChat) -> Result<ReadyChat, GatewayError> {
        if let Some(Caller(key)) = head.extensions.get::<Caller>()
            && let Some(limit) = &key.tokens
        {
            let ctx = head.extensions.get::<Arc<RequestContext>>();
            enforce(
                limit,
                LimitKind::Tokens,
                ready.tokens.total(),
                &key.name,
                self.keys.on_backend_error,
                ctx.map(Arc::as_ref),
            )
            .await?;
        }
        Ok(ready)
    }
}
