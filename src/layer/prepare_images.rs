//! Makes every image inline and within the model's limits (`images::pipeline`): `data:`
//! URIs within limits stay byte for byte, everything else is fetched and/or downscaled and
//! spliced in as a `data:` URI, so the upstream never fetches anything.
//!
//! Rejects with 400 `invalid_image_url` (bad `data:` URI, refused or failed fetch) or
//! `invalid_image` (not an image, too many pixels, undecodable), naming the image; the first
//! failing image in request order is reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;

use super::checkpoint::Checkpoint;
use crate::chat::{Edit, ScannedChat, VisionChat};
use crate::context::{ImageFacts, RequestContext};
use crate::error::GatewayError;
use crate::images::pipeline::{Collect, ImagePipeline, SentImage, SourceKind};
use crate::images::transform::Action;
use crate::messages::ImageRef;

/// The image checkpoint.
#[derive(Clone)]
pub struct PrepareImages {
    pub pipeline: Arc<ImagePipeline>,
}

impl PrepareImages {
    /// Every image processed, or the first failure (shared with `/gateway/inspect`, which
    /// wants every result instead: see [`ImagePipeline::prepare_all`]).
    pub fn first_failure(
        images: &[ImageRef],
        results: Vec<Result<SentImage, Arc<crate::images::pipeline::ImageFailure>>>,
    ) -> Result<Vec<SentImage>, GatewayError> {
        let mut sent = Vec::with_capacity(results.len());
        for (i, (result, image)) in results.into_iter().zip(images).enumerate() {
            match result {
                Ok(s) => sent.push(s),
                Err(failure) => {
                    return Err(GatewayError::Image {
                        number: i + 1,
                        at: image.to_string(),
                        failure,
                    });
                }
            }
        }
        Ok(sent)
    }
}

impl Checkpoint<ScannedChat> for PrepareImages {
    type Out = VisionChat;

    async fn check(
        &self,
        head: &mut Parts,
        ScannedChat { mut chat, scan }: ScannedChat,
    ) -> Result<VisionChat, GatewayError> {
        let images = if scan.images.is_empty() {
            Vec::new()
        } else {
            let started = Instant::now();
            let results = self
                .pipeline
                .prepare_all(
                    &chat.parsed.raw,
                    &scan.images,
                    &chat.route.config,
                    Collect::UntilFailure,
                )
                .await;
            let ctx = head.extensions.get::<Arc<RequestContext>>();
            let sent = Self::first_failure(&scan.images, results).inspect_err(|e| {
                if let (Some(ctx), GatewayError::Image { failure, .. }) = (ctx, e) {
                    let _ = ctx.image_failure.set(failure.kind());
                }
            })?;
            if let Some(ctx) = ctx {
                let _ = ctx.images.set(facts(&sent, started.elapsed()));
            }
            for (image, s) in scan.images.iter().zip(&sent) {
                if let Some(with) = &s.processed.replacement {
                    chat.edits.push(Edit {
                        range: image.url_span.clone(),
                        with: with.clone(),
                    });
                }
            }
            sent
        };
        Ok(VisionChat {
            chat,
            text_tokens: scan.text_tokens,
            images,
        })
    }
}

/// Counts the outcomes for the log line and the metrics.
fn facts(sent: &[SentImage], took: Duration) -> ImageFacts {
    let mut f = ImageFacts {
        took,
        ..ImageFacts::default()
    };
    for s in sent {
        let slot = match (s.cached, s.processed.action, s.source) {
            (true, _, _) => &mut f.cached,
            (false, Action::Downscaled | Action::Reencoded, _) => &mut f.processed,
            (false, Action::Unchanged, SourceKind::Remote) => &mut f.inlined,
            (false, Action::Unchanged, SourceKind::Data) => &mut f.unchanged,
        };
        *slot += 1;
    }
    f
}
