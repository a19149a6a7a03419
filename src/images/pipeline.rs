//! Turns every image part of a request into what is sent upstream: `data:` URIs are decoded
//! and checked, remote URLs fetched, and either goes upstream unchanged when it is within the
//! model's limits or downscaled and re-encoded when it is not. The images of one request are
//! processed concurrently; CPU work runs on the blocking pool, at most one image per core at
//! a time; processed images are cached so a conversation never redoes one.

use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::cache::{CacheKey, ImageCache, SourceKey};
use super::data_uri::{self, DataUriError};
use super::fetch::{FetchError, Fetcher, parse_image_url};
use super::sniff::ProbeError;
use super::transform::{self, Action, ImageError, Prepared, Target};
use crate::config::{ImagesConfig, ModelConfig, OutputFormat};
use crate::messages::{ImageRef, image_url};

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A `data:` URI in the request.
    Data,
    /// An `http(s)` URL the gateway fetched.
    Remote,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Data => "data_uri",
            Self::Remote => "url",
        }
    }
}

/// A processed image, as cached: what is sent and the JSON string that replaces the URL.
pub struct Processed {
    pub prepared: Prepared,
    /// Size of the image before processing, in bytes.
    pub input_bytes: usize,
    /// The `"data:..."` JSON string to splice over the part's URL; `None` keeps the part's
    /// bytes exactly as received (a `data:` URI already within limits).
    pub replacement: Option<Bytes>,
}

impl std::fmt::Debug for Processed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processed")
            .field("format", &self.prepared.format)
            .field("width", &self.prepared.width)
            .field("height", &self.prepared.height)
            .field("input_bytes", &self.input_bytes)
            .finish_non_exhaustive()
    }
}

/// One image of a request, ready to send.
#[derive(Debug, Clone)]
pub struct SentImage {
    pub source: SourceKind,
    pub processed: Arc<Processed>,
    /// Served from the cache (nothing fetched or resized for this request).
    pub cached: bool,
}

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageFailure {
    #[error(transparent)]
    DataUri(#[from] DataUriError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the image could not be processed")]
    Worker,
}

impl ImageFailure {
    /// The URL was unusable (`invalid_image_url`) rather than the image itself (`invalid_image`).
    pub fn is_url_problem(&self) -> bool {
        match self {
            Self::DataUri(_) | Self::Fetch(_) => true,
            Self::Image(_) | Self::Worker => false,
        }
    }
}

/// Shared by every request: the fetcher, the cache, the CPU gate.
#[derive(Clone)]
pub struct ImagePipeline {
    fetcher: Fetcher,
    cache: Option<ImageCache>,
    /// One permit per core: decoding and resizing never take more.
    cpu: Arc<Semaphore>,
    max_pixels: u64,
    output: OutputFormat,
    jpeg_quality: u8,
}

impl ImagePipeline {
    pub fn new(config: &ImagesConfig) -> Self {
        Self::with_fetcher(config, Fetcher::new(config))
    }

    /// A pipeline around a given fetcher (tests use a fetcher with a fake resolver).
    pub fn with_fetcher(config: &ImagesConfig, fetcher: Fetcher) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            fetcher,
            cache: (config.cache_max_bytes > 0).then(|| ImageCache::new(config.cache_max_bytes)),
            cpu: Arc::new(Semaphore::new(cores)),
            max_pixels: config.max_pixels.get(),
            output: config.output_format,
            jpeg_quality: config.jpeg_quality,
        }
    }

    fn target(&self, model: &ModelConfig) -> Target {
        Target {
            max_edge: model.max_image_edge.get(),
            max_pixels: self.max_pixels,
            output: self.output,
            jpeg_quality: self.jpeg_quality,
        }
    }

    /// Processes every image of a request concurrently; results in request order.
    pub async fn prepare_all(
        &self,
        body: &Bytes,
        images: &[ImageRef],
        model: &ModelConfig,
    ) -> Vec<Result<SentImage, Arc<ImageFailure>>> {
        let mut out: Vec<Option<Result<SentImage, Arc<ImageFailure>>>> =
            std::iter::repeat_with(|| None).take(images.len()).collect();
        let mut tasks = JoinSet::new();
        for (i, image) in images.iter().enumerate() {
            let this = self.clone();
            let body = body.clone();
            let image = image.clone();
            let target = self.target(model);
            tasks.spawn(async move { (i, this.prepare_one(&body, &image, target).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, result)) => {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(result);
                    }
                }
                Err(_) => break,
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Arc::new(ImageFailure::Worker))))
            .collect()
    }

    async fn prepare_one(
        &self,
        body: &Bytes,
        image: &ImageRef,
        target: Target,
    ) -> Result<SentImage, Arc<ImageFailure>> {
        let url = image_url(body, image).map_err(|_| Arc::new(ImageFailure::Worker))?;
        if data_uri::is_data_uri(&url) {
            let bytes = data_uri::decode(&url).map_err(|e| Arc::new(e.into()))?;
            // Within limits: checked and sent byte for byte; too cheap to be worth caching.
            let probe = super::sniff::probe(&bytes).map_err(|e| Arc::new(e.into()))?;
            if probe.long_edge() <= target.max_edge {
                let processed = self.run(bytes, target, false).await?;
                return Ok(SentImage {
                    source: SourceKind::Data,
                    processed,
                    cached: false,
                });
            }
            let key = CacheKey::new(SourceKey::Content(Sha256::digest(&bytes).into()), &target);
            let (processed, cached) = self
                .cached(key, async { self.run(bytes, target, true).await })
                .await?;
            return Ok(SentImage {
                source: SourceKind::Data,
                processed,
                cached,
            });
        }
        let url = parse_image_url(&url).map_err(|e| Arc::new(e.into()))?;
        let key = CacheKey::new(SourceKey::Url(url.as_str().into()), &target);
        let (processed, cached) = self
            .cached(key, async {
                let fetched = self
                    .fetcher
                    .fetch(&url)
                    .await
                    .map_err(|e| Arc::new(ImageFailure::from(e)))?;
                self.run(fetched.bytes, target, true).await
            })
            .await?;
        Ok(SentImage {
            source: SourceKind::Remote,
            processed,
            cached,
        })
    }

    /// Looks the image up, or computes it once for all concurrent askers.
    async fn cached(
        &self,
        key: CacheKey,
        compute: impl Future<Output = Result<Arc<Processed>, Arc<ImageFailure>>>,
    ) -> Result<(Arc<Processed>, bool), Arc<ImageFailure>> {
        match &self.cache {
            None => compute.await.map(|p| (p, false)),
            Some(cache) => cache.get_or_compute(key, compute).await,
        }
    }

    /// Decodes, resizes and encodes on the blocking pool, one image per core at a time.
    /// `always_inline`: even an unchanged image gets a `data:` replacement (remote URLs, and
    /// data URIs re-encoded anyway).
    async fn run(
        &self,
        bytes: Bytes,
        target: Target,
        always_inline: bool,
    ) -> Result<Arc<Processed>, Arc<ImageFailure>> {
        let _permit = self
            .cpu
            .acquire()
            .await
            .map_err(|_| Arc::new(ImageFailure::Worker))?;
        let input_bytes = bytes.len();
        let work = tokio::task::spawn_blocking(move || {
            let prepared = transform::prepare(bytes, &target)?;
            let replacement = (always_inline || prepared.action != Action::Unchanged)
                .then(|| data_uri::encode_json(prepared.format.mime(), &prepared.bytes));
            Ok::<_, ImageError>(Processed {
                prepared,
                input_bytes,
                replacement,
            })
        });
        match work.await {
            Ok(Ok(p)) => Ok(Arc::new(p)),
            Ok(Err(e)) => Err(Arc::new(e.into())),
            Err(_) => Err(Arc::new(ImageFailure::Worker)),
        }
    }
}

impl From<ProbeError> for ImageFailure {
    fn from(e: ProbeError) -> Self {
        Self::Image(ImageError::Probe(e))
    }
}
