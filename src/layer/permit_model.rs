//! 403 `model_not_permitted` when the caller's key may not use the model it asked for.
//! After `resolve_model`, so an unknown model is still 404 for everyone; on an open gateway
//! (no `[[keys]]`, no `Caller`) it lets everything through.

use http::request::Parts;

use super::checkpoint::checks_now;
use crate::chat::ChatRequest;
use crate::error::{GatewayError, bounded};
use crate::keys::Caller;

/// The per-key model permission checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct PermitModel;

impl PermitModel {
    /// The check itself. Synchronous: `checks_now!` makes it a checkpoint with a ready future.
    fn check_now(&self, head: &mut Parts, chat: ChatRequest) -> Result<ChatRequest, GatewayError> {
        if let Some(Caller(key)) = head.extensions.get::<Caller>()
            && !key.models.allows(&chat.parsed.model)
        {
            return Err(GatewayError::ModelNotPermitted {
                key: key.name.clone(),
                model: bounded(&chat.parsed.model),
            });
        }
        Ok(chat)
    }
}

checks_now!(PermitModel, ChatRequest => ChatRequest);
