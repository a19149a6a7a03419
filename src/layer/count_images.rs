//! Counts the request's images before any image work.
//!
//! Walks `messages` once (`messages::scan`): malformed parts get 400 `invalid_request` with
//! `param: "messages"`, and more `image_url` parts than the model's `max_images` get 400
//! `too_many_images`, before anything is fetched or decoded.

use http::Request;

use super::checkpoint::Checkpoint;
use crate::chat::{ChatRequest, ScannedChat};
use crate::error::{GatewayError, bounded};
use crate::messages;

/// The image-count checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct CountImages;

impl CountImages {
    /// The scan, or the refusal: shared with `/gateway/inspect`.
    pub fn scan(chat: &ChatRequest) -> Result<messages::MessageScan, GatewayError> {
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

impl Checkpoint<ChatRequest> for CountImages {
    type Out = ScannedChat;

    async fn check(&self, req: Request<ChatRequest>) -> Result<Request<ScannedChat>, GatewayError> {
        let (parts, chat) = req.into_parts();
        let scan = Self::scan(&chat)?;
        Ok(Request::from_parts(parts, ScannedChat { chat, scan }))
    }
}
