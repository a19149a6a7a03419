//! Resolves the requested model to its configured route.
//!
//! Rejects with 404 `model_not_found` when no `[[models]]` entry matches and there is no `"*"`
//! entry. When the route names an `upstream_model`, plans the one byte-range edit that
//! rewrites `"model"`; every other byte of the body stays as received.

use std::sync::Arc;

use http::request::Parts;

use super::checkpoint::checks_now;
use crate::chat::{ChatRequest, Edit, ParsedChat};
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::models::ModelTable;

/// The model-resolution checkpoint.
#[derive(Debug, Clone)]
pub struct ResolveModel {
    pub models: Arc<ModelTable>,
}

impl ResolveModel {
    /// The check itself. Synchronous: `checks_now!` makes it a checkpoint with a ready future.
    fn check_now(&self, head: &mut Parts, parsed: ParsedChat) -> Result<ChatRequest, GatewayError> {
        let Some(route) = self.models.resolve(&parsed.model) else {
            return Err(GatewayError::model_not_found(&parsed.model));
        };
        if let Some(ctx) = head.extensions.get::<Arc<RequestContext>>() {
            let _ = ctx.route.set(route.clone());
        }
        let mut edits = Vec::new();
        if let Some(name) = &route.upstream_model_json {
            edits.push(Edit {
                range: parsed.model_span.clone(),
                with: name.clone(),
            });
        }
        Ok(ChatRequest {
            parsed,
            route,
            edits,
        })
    }
}

checks_now!(ResolveModel, ParsedChat => ChatRequest);
