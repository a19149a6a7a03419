//! Resolves the requested model to its configured route.
//!
//! Rejects with 404 `model_not_found` when no `[[models]]` entry matches and there is no `"*"`
//! entry. When the route names an `upstream_model`, plans the one byte-range edit that
//! rewrites `"model"`; every other byte of the body stays as received.

use std::future::Future;
use std::sync::Arc;

use http::request::Parts;

use super::checkpoint::Checkpoint;
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
    /// The check itself: synchronous, so [`Checkpoint::check`] answers with a ready future.
    fn check_now(&self, head: &mut Parts, parsed: ParsedChat) -> Result<ChatRequest, GatewayError> {
        let Some(route) = self.models.resolve(&parsed.model).cloned() else {
            return Err(GatewayError::model_not_found(&parsed.model));
        };
        if let Some(ctx) = head.extensions.get::<Arc<RequestContext>>() {
            let _ = ctx.model_label.set(route.id.clone());
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

impl Checkpoint<ParsedChat> for ResolveModel {
    type Out = ChatRequest;

    fn check(
        &self,
        head: &mut Parts,
        body: ParsedChat,
    ) -> impl Future<Output = Result<ChatRequest, GatewayError>> + Send {
        std::future::ready(self.check_now(head, body))
    }
}
