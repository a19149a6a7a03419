//! `POST /gateway/inspect`: what the gateway would do with a chat completion request,
//! without calling the upstream. Takes the same body, runs the same checks with the same
//! code (image count, image pipeline, context budget), and answers 200 with a report: each
//! image (source, original and sent format, size, bytes, tokens, what was done), the text
//! tokens, the total against the window, and whether the request would be accepted (with
//! the error it would get when not). The playground's budget preview uses it.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, header};
use serde::Serialize;

use crate::body::ResponseBody;
use crate::chat::{ChatRequest, VisionChat};
use crate::error::GatewayError;
use crate::images::pipeline::{Collect, ImagePipeline, SentImage};
use crate::images::transform::Action;
use crate::layer::checkpoint::Endpoint;
use crate::layer::context_budget::ContextBudget;
use crate::layer::count_images::CountImages;
use crate::layer::prepare_images::PrepareImages;
use crate::tokens::image_tokens;

/// The innermost service of the inspect route.
#[derive(Clone)]
pub struct Inspect {
    pub pipeline: Arc<ImagePipeline>,
}

#[derive(Serialize)]
struct Report<'a> {
    object: &'static str,
    model: &'a str,
    accepted: bool,
    error: Option<ErrorView>,
    max_images: u32,
    image_count: usize,
    images: Vec<ImageView>,
    tokens: TokensView,
}

#[derive(Serialize)]
struct ErrorView {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: &'static str,
}

impl From<&GatewayError> for ErrorView {
    fn from(e: &GatewayError) -> Self {
        Self {
            message: e.to_string(),
            kind: e.openai_type(),
            param: e.param(),
            code: e.code(),
        }
    }
}

#[derive(Serialize)]
struct ImageView {
    index: usize,
    at: String,
    source: Option<&'static str>,
    original: Option<Shape>,
    sent: Option<Shape>,
    tokens: Option<u64>,
    action: Option<&'static str>,
    cached: Option<bool>,
    error: Option<ErrorView>,
}

#[derive(Serialize)]
struct Shape {
    format: &'static str,
    width: u32,
    height: u32,
    bytes: usize,
}

#[derive(Serialize, Default)]
struct TokensView {
    text: u64,
    images: u64,
    max_tokens: u64,
    total: u64,
    context_window: Option<u32>,
}

impl Endpoint<Request<ChatRequest>> for Inspect {
    async fn call(
        &self,
        req: Request<ChatRequest>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        inspect(&self.pipeline, req.into_body()).await
    }
}

async fn inspect(
    pipeline: &ImagePipeline,
    chat: ChatRequest,
) -> Result<Response<ResponseBody>, GatewayError> {
    let model = chat.parsed.model.clone();
    let config = &chat.route.config;
    let mut report = Report {
        object: "gateway.inspection",
        model: &model,
        accepted: true,
        error: None,
        max_images: config.max_images,
        image_count: 0,
        images: Vec::new(),
        tokens: TokensView {
            context_window: config.context_window.map(|w| w.get()),
            ..TokensView::default()
        },
    };
    // Malformed messages are a plain 400, as on the chat route; too many images is a verdict.
    let scan = match CountImages::scan(&chat, true) {
        Ok(scan) => scan,
        Err(e @ GatewayError::TooManyImages { count, .. }) => {
            report.accepted = false;
            report.image_count = count;
            report.error = Some((&e).into());
            return Ok(json(&report));
        }
        Err(e) => return Err(e),
    };
    report.image_count = scan.images.len();
    let results = pipeline
        .prepare_all(&chat.parsed.raw, &scan.images, config, Collect::All)
        .await;
    let rule = config.image_tokens;
    let mut sent: Vec<SentImage> = Vec::new();
    for (i, (result, image)) in results.iter().zip(&scan.images).enumerate() {
        let mut view = ImageView {
            index: i + 1,
            at: image.to_string(),
            source: None,
            original: None,
            sent: None,
            tokens: None,
            action: None,
            cached: None,
            error: None,
        };
        match result {
            Ok(s) => {
                let p = &s.processed;
                view.source = Some(s.source.name());
                view.original = Some(Shape {
                    format: p.original.format.name(),
                    width: p.original.width,
                    height: p.original.height,
                    bytes: s.processed.input_bytes,
                });
                view.sent = Some(Shape {
                    format: p.format.name(),
                    width: p.width,
                    height: p.height,
                    bytes: p.sent_bytes,
                });
                view.tokens = Some(image_tokens(rule, p.width, p.height));
                view.action = Some(match p.action {
                    Action::Unchanged => "unchanged",
                    Action::Downscaled => "downscaled",
                    Action::Reencoded => "reencoded",
                });
                view.cached = Some(s.cached);
                sent.push(s.clone());
            }
            Err(failure) => {
                let e = GatewayError::Image {
                    number: i + 1,
                    at: image.to_string(),
                    failure: failure.clone(),
                };
                view.error = Some((&e).into());
            }
        }
        report.images.push(view);
    }
    let first_failure = PrepareImages::first_failure(&scan.images, results).err();
    let vision = VisionChat {
        chat,
        text_tokens: scan.text_tokens,
        images: sent,
    };
    let count = ContextBudget::count(&vision);
    report.tokens.text = count.text;
    report.tokens.images = count.images;
    report.tokens.max_tokens = count.max_tokens;
    report.tokens.total = count.total();
    let verdict = match first_failure {
        Some(e) => Err(e),
        None => ContextBudget::check(&vision, count),
    };
    if let Err(e) = verdict {
        report.accepted = false;
        report.error = Some((&e).into());
    }
    Ok(json(&report))
}

fn json(report: &Report<'_>) -> Response<ResponseBody> {
    let body = serde_json::to_vec(report).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(ResponseBody::full(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
