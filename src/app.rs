//! Builds the gateway: shared state once, and the one layer stack, top to bottom.
//! `layer/mod.rs` says what each layer rejects and why it sits where it does.

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::config::{Config, MetricsExport};
use crate::health::Readiness;
use crate::images::pipeline::ImagePipeline;
use crate::inspect::Inspect;
use crate::keys::{BackendSetupError, KeyTable};
use crate::layer::admission::Admit;
use crate::layer::checkpoint::{Checkpoint, CheckpointLayer};
use crate::layer::context_budget::ContextBudget;
use crate::layer::count_images::CountImages;
use crate::layer::error_response::{ErrorResponse, ErrorResponseLayer};
use crate::layer::head::{Head, HeadLayer};
use crate::layer::parse_chat::ParseChat;
use crate::layer::permit_model::PermitModel;
use crate::layer::prepare_images::PrepareImages;
use crate::layer::rate_limit_headers::{RateLimitHeaders, RateLimitHeadersLayer};
use crate::layer::read_body::ReadBody;
use crate::layer::request_id::{RequestId, RequestIdLayer};
use crate::layer::resolve_model::ResolveModel;
use crate::layer::telemetry::{Telemetry, TelemetryLayer};
use crate::layer::token_limit::TokenLimit;
use crate::metrics::Metrics;
use crate::models::ModelTable;
use crate::routes::{ChatService, Router, Routes};
use crate::upstream::UpstreamBuildError;
use crate::upstream::forward::Forward;

/// The complete service handed to the server.
pub type GatewayService = RequestId<RateLimitHeaders<Telemetry<Head<ErrorResponse<Router>>>>>;

/// Why the gateway could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] UpstreamBuildError),
    #[error(transparent)]
    Limits(#[from] BackendSetupError),
}

/// The gateway, built and ready to serve.
pub struct App {
    pub service: GatewayService,
    pub readiness: Readiness,
    pub models: Arc<ModelTable>,
    /// The registry, when metrics are on (served by `service` or on a listener of its own).
    pub metrics: Option<Arc<Metrics>>,
}

/// Builds the stack from a validated config.
pub fn build(config: &Config) -> Result<App, BuildError> {
    let models = Arc::new(ModelTable::new(config)?);
    let keys = Arc::new(KeyTable::new(config, &models)?);
    let readiness = match config.server.readiness_upstream_window {
        Some(window) => Readiness::with_upstreams(window, models.upstreams().to_vec()),
        None => Readiness::default(),
    };
    let metrics = match config.server.metrics {
        MetricsExport::Off => None,
        MetricsExport::Main | MetricsExport::Separate(_) => Some(Arc::new(Metrics::new())),
    };

    let images = Arc::new(ImagePipeline::new(&config.images));
    let read_body = ReadBody {
        max_bytes: config.server.max_body_bytes.get(),
        timeout: config.server.body_read_timeout,
    };
    let resolve_model = ResolveModel {
        models: models.clone(),
    };
    // The chat checkpoints, in order, joined into one layer (`Checkpoint::then`).
    // Admission first, before the body is read: key (401), in-flight caps (503, 429),
    // requests per minute (429). Its slots ride with the request, then in the response body.
    let admit = Admit::new(keys.clone(), config.server.max_concurrent_requests.get());
    let checks = admit
        .clone()
        // 6. Bounded body read: nothing unbounded is read before this.
        .then(read_body)
        // 7. Cheap JSON checks before any costly work.
        .then(ParseChat)
        // 8. Route (404 for unknown models) and plan the `model` rewrite.
        .then(resolve_model.clone())
        // The key's model list (403).
        .then(PermitModel)
        // 9. Image count, before any image work.
        .then(CountImages)
        // 10. Fetch, check and downscale images; inline them.
        .then(PrepareImages {
            pipeline: images.clone(),
        })
        // 11. Context budget, on the final image sizes.
        .then(ContextBudget)
        // Tokens per minute, charged with the same count.
        .then(TokenLimit { keys: keys.clone() });
    let chat = ServiceBuilder::new()
        .layer(CheckpointLayer(checks))
        // 12. Upstream.
        .service(Forward);
    let chat = ChatService::new(chat);

    let inspect = ChatService::new(
        ServiceBuilder::new()
            .layer(CheckpointLayer(
                admit
                    .uncharged()
                    .then(read_body)
                    .then(ParseChat)
                    .then(resolve_model)
                    .then(PermitModel),
            ))
            // The same checks as the chat stack, reported instead of enforced (inspect.rs).
            .service(Inspect {
                pipeline: images.clone(),
            }),
    );

    let router = Router::new(Routes {
        chat,
        inspect,
        models: models.clone(),
        keys: keys.clone(),
        readiness: readiness.clone(),
        metrics: match config.server.metrics {
            MetricsExport::Main => metrics.clone(),
            MetricsExport::Off | MetricsExport::Separate(_) => None,
        },
        playground: config.server.playground,
    });
    let service = ServiceBuilder::new()
        // 1. Id first, so everything below (including errors) carries it.
        .layer(RequestIdLayer)
        // x-ratelimit-* from the checks' results, on every response to a limited key.
        .layer(RateLimitHeadersLayer {
            enabled: !keys.is_open(),
        })
        // 2. Log line and metrics, once per request, after the body ends.
        .layer(TelemetryLayer {
            metrics: metrics.clone(),
        })
        // 3. HEAD: headers only, also for errors (hyper's HTTP/2 server would send bodies).
        .layer(HeadLayer)
        // 4. Errors become OpenAI-style JSON here and nowhere else.
        .layer(ErrorResponseLayer)
        // 5. Route.
        .service(router);
    Ok(App {
        service,
        readiness,
        models,
        metrics,
    })
}
