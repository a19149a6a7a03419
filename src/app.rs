//! Builds the gateway: shared state once, and the one layer stack, top to bottom.
//! `layer/mod.rs` says what each layer rejects and why it sits where it does.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

use crate::body::ResponseBody;
use crate::config::Config;
use crate::health::Readiness;
use crate::layer::access_log::{AccessLog, AccessLogLayer};
use crate::layer::checkpoint::CheckpointLayer;
use crate::layer::error_response::{ErrorResponse, ErrorResponseLayer};
use crate::layer::parse_chat::ParseChat;
use crate::layer::read_body::ReadBody;
use crate::layer::request_id::{RequestId, RequestIdLayer};
use crate::layer::resolve_model::ResolveModel;
use crate::models::ModelTable;
use crate::routes::Router;
use crate::upstream::UpstreamBuildError;
use crate::upstream::forward::Forward;

/// The complete service handed to the server.
pub type GatewayService = RequestId<AccessLog<ErrorResponse<Router>>>;

/// The gateway, built and ready to serve.
pub struct App {
    pub service: GatewayService,
    pub readiness: Readiness,
}

/// Builds the stack from a validated config.
pub fn build(config: &Config) -> Result<App, UpstreamBuildError> {
    let models = Arc::new(ModelTable::new(config)?);
    let readiness = Readiness::default();

    let chat = ServiceBuilder::new()
        // 5. Bounded body read: nothing unbounded is read before this.
        .layer(CheckpointLayer(ReadBody {
            max_bytes: config.server.max_body_bytes.get(),
        }))
        // 6. Cheap JSON checks before any costly work.
        .layer(CheckpointLayer(ParseChat))
        // 7. Route (404 for unknown models) and plan the `model` rewrite.
        .layer(CheckpointLayer(ResolveModel {
            models: models.clone(),
        }))
        // 8. Upstream.
        .service(Forward);
    let chat: BoxCloneService<Request<Incoming>, Response<ResponseBody>, _> = chat.boxed_clone();

    let router = Router {
        chat,
        models,
        readiness: readiness.clone(),
    };
    let service = ServiceBuilder::new()
        // 1. Id first, so everything below (including errors) carries it.
        .layer(RequestIdLayer)
        // 2. One log line per request, after the body ends.
        .layer(AccessLogLayer)
        // 3. Errors become OpenAI-style JSON here and nowhere else.
        .layer(ErrorResponseLayer)
        // 4. Route.
        .service(router);
    Ok(App { service, readiness })
}
