//! Turns every image part of a request into what is sent upstream: `data:` URIs are decoded
//! and checked, remote URLs fetched, and either goes upstream unchanged when it is within the
//! model's limits or downscaled and re-encoded when it is not. The images of one request are
//! processed concurrently; all CPU work (base64, hashing, decoding, resizing, encoding) runs
//! on the blocking pool, at most one image per core at a time (the permit travels with the
//! blocking job, so a client that leaves cannot free it early); processed images are cached
//! so a conversation never redoes one.

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
use super::sniff::{ImageFormat, Probe};
use super::transform::{self, Action, ImageError, Target};
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

/// A processed image, as cached: what is sent (as the JSON string that replaces the URL) and
/// what it was. The encoded bytes themselves are not kept twice: only their `data:` form.
#[derive(Debug)]
pub struct Processed {
    pub format: ImageFormat,
    /// Size as sent.
    pub width: u32,
    pub height: u32,
    /// What the input's header said.
    pub original: Probe,
    pub action: Action,
    /// Size of the image before processing, in bytes.
    pub input_bytes: usize,
    /// Size of the image sent, in bytes (before base64).
    pub sent_bytes: usize,
    /// The `"data:..."` JSON string to splice over the part's URL; `None` keeps the part's
    /// bytes exactly as received (a `data:` URI already within limits).
    pub replacement: Option<Bytes>,
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

/// Whose problem a failed image is, which decides status and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The URL could not be used: 400 `invalid_image_url`.
    Url,
    /// The bytes are not a usable image: 400 `invalid_image`.
    Image,
    /// The gateway failed (encoder, TLS set-up, worker): 500.
    Gateway,
}

impl ImageFailure {
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::DataUri(_) => FailureKind::Url,
            Self::Fetch(e) => match e {
                FetchError::TlsUnavailable | FetchError::Closed => FailureKind::Gateway,
                FetchError::InvalidUrl(_)
                | FetchError::UnsupportedScheme
                | FetchError::Credentials
                | FetchError::NoHost
                | FetchError::Unsendable
                | FetchError::Resolve
                | FetchError::NotPublic
                | FetchError::Connect
                | FetchError::Tls
                | FetchError::Protocol
                | FetchError::TooManyRedirects { .. }
                | FetchError::Downgrade
                | FetchError::BadRedirect
                | FetchError::Status(_)
                | FetchError::TooLarge { .. }
                | FetchError::NotAnImage
                | FetchError::Timeout { .. } => FailureKind::Url,
            },
            Self::Image(e) => match e {
                ImageError::TooManyPixels { .. } | ImageError::Probe(_) | ImageError::Decode => {
                    FailureKind::Image
                }
                ImageError::Encode => FailureKind::Gateway,
            },
            Self::Worker => FailureKind::Gateway,
        }
    }
}

/// How many results [`ImagePipeline::prepare_all`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// Every image (`/gateway/inspect` reports them all).
    All,
    /// Stop at the first failure in request order: the rest is aborted, so a bad image is
    /// refused without waiting for slow fetches behind it.
    UntilFailure,
}

/// A request's `data:` image after its first look (on the blocking pool).
enum Inline {
    /// Within limits: already prepared, sent as received.
    Done(Processed),
    /// Needs work: the decoded bytes and their content hash for the cache.
    Large(Bytes, [u8; 32]),
}

/// Shared by every request: the fetcher, the cache, the CPU gate.
#[derive(Clone)]
pub struct ImagePipeline {
    fetcher: Fetcher,
    cache: ImageCache,
    /// One permit per core: CPU work on images never takes more.
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
            cache: ImageCache::new(config.cache_max_bytes),
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

    /// Processes the images of a request concurrently; results in request order. With
    /// [`Collect::UntilFailure`], images not finished when an earlier one failed are
    /// reported as that failure's siblings: only the first failure matters then.
    pub async fn prepare_all(
        &self,
        body: &Bytes,
        images: &[ImageRef],
        model: &ModelConfig,
        collect: Collect,
    ) -> Vec<Result<SentImage, Arc<ImageFailure>>> {
        let mut out: Vec<Option<Result<SentImage, Arc<ImageFailure>>>> =
            std::iter::repeat_with(|| None).take(images.len()).collect();
        let mut tasks = JoinSet::new();
        for (i, image) in images.iter().enumerate() {
            let this = self.clone();
            let body = body.clone();
            let span = image.url_span.clone();
            let target = self.target(model);
            tasks.spawn(async move { (i, this.prepare_one(body, span, target).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            // A task that panicked leaves its slot empty: reported as a worker failure.
            let Ok((i, result)) = joined else { continue };
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(result);
            }
            if collect == Collect::UntilFailure && first_failure_known(&out) {
                tasks.abort_all();
                break;
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Arc::new(ImageFailure::Worker))))
            .collect()
    }

    async fn prepare_one(
        &self,
        body: Bytes,
        span: std::ops::Range<usize>,
        target: Target,
    ) -> Result<SentImage, Arc<ImageFailure>> {
        // Decide from the raw JSON whether this is a data URI, without decoding the string:
        // a data URI can be as large as the body, and all work on it belongs off the executor.
        let raw_is_data = body
            .get(span.start..)
            .and_then(|raw| raw.get(1..6))
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"data:"));
        if raw_is_data {
            // Base64, the header probe and hashing are CPU work on up to max_body_bytes.
            let first = self
                .blocking(move || {
                    let url = image_url(&body, &span).map_err(|_| ImageFailure::Worker)?;
                    let bytes = data_uri::decode(&url)?;
                    let probe = super::sniff::probe(&bytes)?;
                    if probe.long_edge() <= target.max_edge {
                        // Within limits: checked and sent byte for byte; not worth caching.
                        return process(bytes, target, false).map(Inline::Done);
                    }
                    let hash: [u8; 32] = Sha256::digest(&bytes).into();
                    Ok(Inline::Large(bytes, hash))
                })
                .await?;
            let (bytes, hash) = match first {
                Inline::Done(processed) => {
                    return Ok(SentImage {
                        source: SourceKind::Data,
                        processed: Arc::new(processed),
                        cached: false,
                    });
                }
                Inline::Large(bytes, hash) => (bytes, hash),
            };
            let key = CacheKey::new(SourceKey::Content(hash), &target);
            let this = self.clone();
            let (processed, cached) = self
                .cache
                .get_or_compute(key, async move { this.run(bytes, target, true).await })
                .await?;
            return Ok(SentImage {
                source: SourceKind::Data,
                processed,
                cached,
            });
        }
        // A URL (or a data URI spelled with JSON escapes, which the URL parser refuses).
        let url = image_url(&body, &span).map_err(|_| Arc::new(ImageFailure::Worker))?;
        let url = parse_image_url(&url).map_err(|e| Arc::new(e.into()))?;
        let mut key_url = url.clone();
        key_url.set_fragment(None);
        let key = CacheKey::new(SourceKey::Url(key_url.as_str().into()), &target);
        let this = self.clone();
        let (processed, cached) = self
            .cache
            .get_or_compute(key, async move {
                let fetched = this
                    .fetcher
                    .fetch(&url)
                    .await
                    .map_err(|e| Arc::new(ImageFailure::from(e)))?;
                this.run(fetched.bytes, target, true).await
            })
            .await?;
        Ok(SentImage {
            source: SourceKind::Remote,
            processed,
            cached,
        })
    }

    /// Runs CPU work on the blocking pool under a CPU permit that the job itself holds, so
    /// the permit is released when the work ends, not when an impatient caller leaves.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ImageFailure> + Send + 'static,
    ) -> Result<T, Arc<ImageFailure>> {
        let permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Arc::new(ImageFailure::Worker))?;
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        match job.await {
            Ok(result) => result.map_err(Arc::new),
            Err(_) => Err(Arc::new(ImageFailure::Worker)),
        }
    }

    /// Decode, resize and encode one image. `always_inline`: even an unchanged image gets a
    /// `data:` replacement (remote URLs, and data URIs re-encoded anyway).
    async fn run(
        &self,
        bytes: Bytes,
        target: Target,
        always_inline: bool,
    ) -> Result<Arc<Processed>, Arc<ImageFailure>> {
        self.blocking(move || process(bytes, target, always_inline))
            .await
            .map(Arc::new)
    }
}

/// The CPU work for one image: `transform::prepare`, then the `data:` string when needed.
fn process(bytes: Bytes, target: Target, always_inline: bool) -> Result<Processed, ImageFailure> {
    let input_bytes = bytes.len();
    let prepared = transform::prepare(bytes, &target)?;
    let replacement = (always_inline || prepared.action != Action::Unchanged)
        .then(|| data_uri::encode_json(prepared.format.mime(), &prepared.bytes));
    Ok(Processed {
        format: prepared.format,
        width: prepared.width,
        height: prepared.height,
        original: prepared.original,
        action: prepared.action,
        input_bytes,
        sent_bytes: prepared.bytes.len(),
        replacement,
    })
}

/// True once some image failed and every image before it has a result.
fn first_failure_known(out: &[Option<Result<SentImage, Arc<ImageFailure>>>]) -> bool {
    for slot in out {
        match slot {
            None => return false,
            Some(Err(_)) => return true,
            Some(Ok(_)) => {}
        }
    }
    false
}

impl From<ProbeError> for ImageFailure {
    fn from(e: ProbeError) -> Self {
        Self::Image(ImageError::Probe(e))
    }
}
