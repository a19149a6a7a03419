//! The processed-image cache. Chat history resends earlier images on every turn; this keeps
//! what was sent for each (keyed by URL or content hash plus the target settings), bounded by
//! `images.cache_max_bytes`, for `CACHE_TTL` at most (a URL's image may change).
//!
//! Concurrent requests for the same image share one computation: the first starts it as a
//! task of its own, later ones wait for its result. The task does not belong to any request,
//! so a client that leaves neither cancels the work others wait for nor makes them restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::future::Cache;
use tokio::sync::watch;

use super::pipeline::{ImageFailure, Processed};
use super::transform::Target;
use crate::config::OutputFormat;

/// How long a processed image is kept at most.
const CACHE_TTL: Duration = Duration::from_secs(15 * 60);

/// What the image was, before processing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// The URL after parsing (normalised by `url::Url`, fragment removed).
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

type Outcome = Result<Arc<Processed>, Arc<ImageFailure>>;

/// Bounded by the bytes it holds; `max_bytes = 0` keeps nothing (sharing still applies).
#[derive(Clone)]
pub struct ImageCache {
    done: Option<Cache<CacheKey, Arc<Processed>>>,
    running: Arc<Mutex<HashMap<CacheKey, watch::Receiver<Option<Outcome>>>>>,
}

impl ImageCache {
    pub fn new(max_bytes: u64) -> Self {
        let done = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(max_bytes)
                .time_to_live(CACHE_TTL)
                .weigher(|key: &CacheKey, value: &Arc<Processed>| {
                    let key_len = match &key.source {
                        SourceKey::Url(u) => u.len(),
                        SourceKey::Content(_) => 32,
                    };
                    let bytes = value.replacement.as_ref().map_or(0, |r| r.len()) + key_len + 256;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self {
            done,
            running: Arc::default(),
        }
    }

    /// The cached image and `true`; or the result of `compute` (run once for all concurrent
    /// askers of `key`) and `false`. Failures are shared with the waiters but not cached.
    pub async fn get_or_compute(
        &self,
        key: CacheKey,
        compute: impl Future<Output = Outcome> + Send + 'static,
    ) -> Result<(Arc<Processed>, bool), Arc<ImageFailure>> {
        if let Some(done) = &self.done
            && let Some(hit) = done.get(&key).await
        {
            return Ok((hit, true));
        }
        let mut rx = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            match running.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(key.clone(), rx.clone());
                    let this = self.clone();
                    tokio::spawn(async move {
                        let outcome = compute.await;
                        if let (Some(done), Ok(value)) = (&this.done, &outcome) {
                            done.insert(key.clone(), value.clone()).await;
                        }
                        this.running
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&key);
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            // The computing task ended without an answer (it panicked).
            Err(_) => None,
        };
        match outcome {
            Some(Ok(value)) => Ok((value, false)),
            Some(Err(e)) => Err(e),
            None => Err(Arc::new(ImageFailure::Worker)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::images::sniff::{ImageFormat, Probe};
    use crate::images::transform::Action;

    fn key(n: u8) -> CacheKey {
        CacheKey::new(
            SourceKey::Content([n; 32]),
            &Target {
                max_edge: 1024,
                max_pixels: 1,
                output: OutputFormat::Auto,
                jpeg_quality: 85,
            },
        )
    }

    fn processed() -> Arc<Processed> {
        let original = Probe {
            format: ImageFormat::Png,
            width: 1,
            height: 1,
        };
        Arc::new(Processed {
            format: ImageFormat::Png,
            width: 1,
            height: 1,
            original,
            action: Action::Unchanged,
            input_bytes: 1,
            sent_bytes: 1,
            replacement: None,
        })
    }

    #[tokio::test]
    async fn concurrent_askers_share_one_computation_that_survives_the_first_leaving() {
        let cache = ImageCache::new(1 << 20);
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let compute = |runs: Arc<AtomicUsize>, gate: Arc<Notify>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
            Ok(processed())
        };
        // The first asker starts the work, then leaves (its future is dropped).
        let first = tokio::spawn({
            let cache = cache.clone();
            let work = compute(runs.clone(), gate.clone());
            async move { cache.get_or_compute(key(1), work).await }
        });
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let cache = cache.clone();
                let work = compute(runs.clone(), gate.clone());
                tokio::spawn(async move { cache.get_or_compute(key(1), work).await })
            })
            .collect();
        // Let every asker register before the work may finish.
        while cache.running.lock().map(|m| m.len()).unwrap_or(0) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        first.abort();
        gate.notify_one();
        for w in waiters {
            let got = w.await.unwrap();
            assert!(matches!(got, Ok((_, false))), "{got:?}");
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one computation for four askers"
        );
        // Now it is cached.
        let again = cache
            .get_or_compute(key(1), compute(runs.clone(), gate.clone()))
            .await;
        assert!(matches!(again, Ok((_, true))));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_shared_but_not_kept() {
        let cache = ImageCache::new(1 << 20);
        let failed = cache
            .get_or_compute(key(2), async { Err(Arc::new(ImageFailure::Worker)) })
            .await;
        assert!(failed.is_err());
        let ok = cache
            .get_or_compute(key(2), async { Ok(processed()) })
            .await;
        assert!(matches!(ok, Ok((_, false))));
    }
}
