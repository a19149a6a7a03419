//! The processed-image cache. Chat history resends earlier images on every turn; this keeps
//! what was sent for each (keyed by URL or content hash plus the target settings), bounded by
//! `images.cache_max_bytes`. Concurrent requests for the same image share one computation
//! (moka's `try_get_with`), so a burst of identical requests fetches once.

use std::sync::Arc;

use moka::future::Cache;

use super::pipeline::{ImageFailure, Processed};
use super::transform::Target;
use crate::config::OutputFormat;

/// What the image was, before processing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// The URL after parsing (normalised by `url::Url`).
    Url(Box<str>),
    /// SHA-256 of a `data:` URI's decoded bytes.
    Content([u8; 32]),
}

/// A source and every setting that changes the result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    source: SourceKey,
    max_edge: u32,
    max_pixels: u64,
    output: OutputFormat,
    jpeg_quality: u8,
}

impl CacheKey {
    pub fn new(source: SourceKey, target: &Target) -> Self {
        Self {
            source,
            max_edge: target.max_edge,
            max_pixels: target.max_pixels,
            output: target.output,
            jpeg_quality: target.jpeg_quality,
        }
    }
}

/// Bounded by the bytes it holds.
#[derive(Clone)]
pub struct ImageCache {
    inner: Cache<CacheKey, Arc<Processed>>,
}

impl ImageCache {
    pub fn new(max_bytes: u64) -> Self {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, value: &Arc<Processed>| {
                let key_len = match &key.source {
                    SourceKey::Url(u) => u.len(),
                    SourceKey::Content(_) => 32,
                };
                let bytes = value.prepared.bytes.len()
                    + value.replacement.as_ref().map_or(0, |r| r.len())
                    + key_len
                    + 128;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Self { inner }
    }

    /// The cached image and `true`, or the computed one and `false`. Failures are not cached.
    pub async fn get_or_compute(
        &self,
        key: CacheKey,
        compute: impl Future<Output = Result<Arc<Processed>, Arc<ImageFailure>>>,
    ) -> Result<(Arc<Processed>, bool), Arc<ImageFailure>> {
        if let Some(hit) = self.inner.get(&key).await {
            return Ok((hit, true));
        }
        let computed = std::sync::atomic::AtomicBool::new(false);
        let value = self
            .inner
            .try_get_with(key, async {
                computed.store(true, std::sync::atomic::Ordering::Relaxed);
                compute.await
            })
            .await
            .map_err(|e: Arc<Arc<ImageFailure>>| Arc::clone(&*e))?;
        Ok((value, !computed.load(std::sync::atomic::Ordering::Relaxed)))
    }
}
