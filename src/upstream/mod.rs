//! The upstream side: one pooled HTTP client per configured upstream (a lean HTTP/1.1 pool
//! of our own for `http://`, hyper-util's client for `https://`, see [`client`]), and the
//! innermost service that forwards a checked request to it.
//!
//! This module owns every outbound connection to model servers. It must not inspect or
//! rewrite response bodies: frames go back to the client as they arrive.

pub mod client;
pub mod first_byte;
pub mod forward;
pub mod pool;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;

pub use client::{ClientError, UpstreamClient, UpstreamIncoming};
use pool::Http1Pool;

/// The pooled HTTP/1.1 + HTTP/2 client for `https://` upstreams, TLS by rustls with the
/// bundled Mozilla roots (so it works without system certificates).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A configured upstream, ready to take requests.
#[derive(Debug)]
pub struct Upstream {
    /// The configured name: used in logs, messages and as a metrics label.
    pub name: Arc<str>,
    /// `{base_url}/models`, probed for readiness.
    pub models_url: http::Uri,
    pub chat_completions_url: http::Uri,
    /// `Bearer <key>`, marked sensitive so it is never printed by `http`'s Debug.
    pub authorization: Option<HeaderValue>,
    pub first_byte_timeout: Duration,
    /// The lean HTTP/1.1 pool for `http://`, hyper-util's client for `https://`.
    pub client: UpstreamClient,
    /// When the upstream last answered anything (for readiness).
    pub last_answer: LastAnswer,
}

/// When an upstream last sent any HTTP response: milliseconds since the process-wide
/// [`epoch`], 0 for never. Updated by real traffic and by readiness probes.
#[derive(Debug, Default)]
pub struct LastAnswer(AtomicU64);

impl LastAnswer {
    /// Records an answer now.
    pub fn now(&self) {
        self.at(Instant::now());
    }

    /// Records an answer at `when` (a clock reading the caller already has).
    pub fn at(&self, when: Instant) {
        let ms = u64::try_from(when.saturating_duration_since(epoch()).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // Every response on every worker lands here: writing only when the millisecond
        // changed keeps the shared cache line from bouncing between cores on each one.
        if self.0.load(Ordering::Relaxed) != ms {
            self.0.store(ms, Ordering::Relaxed);
        }
    }

    /// Whether an answer came within `window` of now.
    pub fn within(&self, window: Duration) -> bool {
        let at = self.0.load(Ordering::Relaxed);
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        at != 0 && now.saturating_sub(at) <= window
    }
}

/// A fixed instant all [`LastAnswer`]s count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Why an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("upstream `{name}`: TLS set-up failed: {source}")]
    Tls { name: String, source: rustls::Error },
    #[error("upstream `{name}`: the API key is not a valid HTTP header value")]
    Key { name: String },
}

impl Upstream {
    /// Builds the client for one upstream.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, UpstreamBuildError> {
        let client = match Http1Pool::new(&cfg.chat_completions_url, cfg.connect_timeout) {
            Some(pool) => UpstreamClient::Http1(Arc::new(pool)),
            None => UpstreamClient::Legacy(Box::new(legacy_client(cfg)?)),
        };
        let authorization = match &cfg.api_key {
            None => None,
            Some(key) => {
                let mut v =
                    HeaderValue::try_from(format!("Bearer {}", key.expose())).map_err(|_| {
                        UpstreamBuildError::Key {
                            name: cfg.name.clone(),
                        }
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(Self {
            name: Arc::from(cfg.name.as_str()),
            models_url: cfg.models_url.clone(),
            chat_completions_url: cfg.chat_completions_url.clone(),
            authorization,
            first_byte_timeout: cfg.first_byte_timeout,
            client,
            last_answer: LastAnswer::default(),
        })
    }
}

/// hyper-util's pooled client with rustls, for `https://` upstreams.
fn legacy_client(cfg: &UpstreamConfig) -> Result<HttpClient, UpstreamBuildError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|source| UpstreamBuildError::Tls {
            name: cfg.name.clone(),
            source,
        })?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}
