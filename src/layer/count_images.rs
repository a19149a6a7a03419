//! Counts the request's images before any image work.
//!
//! Walks `messages` once (`messages::scan`): malformed parts get 400 `invalid_request` with
//! `param: "messages"`, and more `image_url` parts than the model's `max_images` get 400
//! `too_many_images`, before anything is fetched or decoded.

use http::request::Parts;

use super::checkpoint::checks_now;
use crate::chat::{ChatRequest, ScannedChat};
use crate::error::{GatewayError, bounded};
use crate::keys::Caller;
use crate::messages;

/// The image-count checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct CountImages;

impl CountImages {
    /// The scan, or the refusal: shared with `/gateway/inspect`. `need_text`: the text
    /// estimate is wanted even if the route has no context window (inspect reports it).
    pub fn scan(
        chat: &ChatRequest,
        need_text: bool,
    ) -> Result<messages::MessageScan, GatewayError> {
        let need_text = need_text || chat.route.config.context_window.is_some();
        let span = chat.parsed.messages_span.clone();
        // The common case on a route without a budget: no media parts at all. Walking the
        // messages again would cost more than the rest of the gateway's work on the request.
        if !need_text
            && !chat
                .parsed
                .raw
                .get(span.clone())
                .is_some_and(messages::might_carry_media)
        {
            return Ok(messages::MessageScan::default());
        }
        let scan = messages::scan(
            &chat.parsed.raw,
            chat.parsed.messages_span.clone(),
            chat.route.config.tokenizer.as_ref(),
        )?;
        let max = chat.route.config.max_images;
        if scan.images.len() > usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(GatewayError::TooManyImages {
                count: scan.images.len(),
                model: bounded(&chat.parsed.model),
                max,
            });
        }
        Ok(scan)
    }
}

impl CountImages {
    /// The check itself. Synchronous: `checks_now!` makes it a checkpoint with a ready future.
    fn check_now(&self, head: &mut Parts, chat: ChatRequest) -> Result<ScannedChat, GatewayError> {
        // A key with a token limit is charged the estimate: the text must be counted.
        let need_text = head
            .extensions
            .get::<Caller>()
            .is_some_and(Caller::counts_tokens);
        let scan = Self::scan(&chat, need_text)?;
        Ok(ScannedChat { chat, scan })
    }
}

checks_now!(CountImages, ChatRequest => ScannedChat);
