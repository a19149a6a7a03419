//! Checks that text, images (at the size actually sent) and the reserved completion fit the
//! model's `context_window`. Rejects with 400 `context_length_exceeded` and the breakdown
//! ("needs 4,460 tokens: text 200, 1 image 4,160, max_tokens 100; tiny-ctx holds 2,000").
//! Models without a `context_window` are not checked. Runs after the image work, because the
//! image tokens depend on the final sizes.

use std::sync::Arc;

use http::request::Parts;

use super::checkpoint::checks_now;
use crate::chat::{ReadyChat, VisionChat};
use crate::context::RequestContext;
use crate::error::{GatewayError, bounded};
use crate::keys::Caller;
use crate::tokens::{TokenCount, image_tokens};

/// The context-budget checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct ContextBudget;

impl ContextBudget {
    /// What the request costs.
    pub fn count(vision: &VisionChat) -> TokenCount {
        let rule = vision.chat.route.config.image_tokens;
        TokenCount {
            text: vision.text_tokens,
            images: vision
                .images
                .iter()
                .map(|i| image_tokens(rule, i.processed.width, i.processed.height))
                .fold(0u64, u64::saturating_add),
            image_count: vision.images.len(),
            max_tokens: vision.chat.parsed.max_tokens.unwrap_or(0),
        }
    }

    /// The refusal, if the count does not fit (shared with `/gateway/inspect`).
    pub fn check(vision: &VisionChat, count: TokenCount) -> Result<(), GatewayError> {
        match vision.chat.route.config.context_window {
            Some(window) if count.total() > u64::from(window.get()) => {
                Err(GatewayError::ContextLengthExceeded {
                    count,
                    model: bounded(&vision.chat.parsed.model),
                    window: window.get(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl ContextBudget {
    /// The check itself. Synchronous: `checks_now!` makes it a checkpoint with a ready future.
    fn check_now(&self, head: &mut Parts, vision: VisionChat) -> Result<ReadyChat, GatewayError> {
        let tokens = Self::count(&vision);
        // Without a window and without images the text was not counted (`CountImages` skips
        // the walk): log no estimate rather than a zero.
        let counted = vision.chat.route.config.context_window.is_some()
            || !vision.images.is_empty()
            || head
                .extensions
                .get::<Caller>()
                .is_some_and(Caller::counts_tokens);
        if let Some(ctx) = head.extensions.get::<Arc<RequestContext>>()
            && counted
        {
            let _ = ctx
                .prompt_tokens
                .set(tokens.text.saturating_add(tokens.images));
        }
        Self::check(&vision, tokens)?;
        Ok(ReadyChat {
            chat: vision.chat,
            tokens,
        })
    }
}

checks_now!(ContextBudget, VisionChat => ReadyChat);
