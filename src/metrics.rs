//! Prometheus metrics: the registry, the metric families, and the `/metrics` text.
//!
//! Labels are bounded by construction: `route` is an enum, `model` is a configured id (or
//! `-` when no model was resolved), `upstream` a configured name, `status` an HTTP status.
//! Client-chosen strings never become label values. Metrics are recorded in one place, the
//! telemetry layer, from the facts inner layers wrote into the request context.

use std::sync::Arc;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::images::pipeline::FailureKind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Which endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    ChatCompletions,
    Inspect,
    Models,
    Healthz,
    Readyz,
    Metrics,
    Playground,
    Other,
}

impl Route {
    /// The route of a request path (unknown paths are `Other`, never the path itself).
    pub fn of(path: &str) -> Self {
        match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/gateway/inspect" => Self::Inspect,
            "/healthz" => Self::Healthz,
            "/readyz" => Self::Readyz,
            "/metrics" => Self::Metrics,
            p if p == "/v1/models" || p.starts_with("/v1/models/") => Self::Models,
            p if p == "/playground" || p.starts_with("/playground/") => Self::Playground,
            _ => Self::Other,
        }
    }
}

/// How an upstream exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    /// Could not connect (refused, DNS, TLS).
    Connect,
    /// No response headers within `first_byte_timeout_ms`.
    Timeout,
    /// The connection broke after it was established (before or during the response).
    Reset,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Models => "models",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::Inspect => "inspect",
            Self::Playground => "playground",
            Self::Other => "other",
        }
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl UpstreamErrorKind {
    /// The label value and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
        }
    }
}

impl EncodeLabelValue for UpstreamErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Route,
    pub model: Arc<str>,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Route,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub upstream: Arc<str>,
    pub kind: UpstreamErrorKind,
}

/// Latency buckets in seconds, from 100 µs (gateway overhead) to 2 minutes (long answers).
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0, 120.0,
    ]
    .into_iter()
}

fn histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub in_flight: Gauge,
    pub upstream_headers: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    pub overhead: Histogram,
    pub first_byte: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub images: Family<ImageLabels, Counter>,
    pub image_step: Histogram,
    pub image_refusals: Family<ImageRefusalLabels, Counter>,
    pub rate_limited: Family<RateLimitedLabels, Counter>,
    pub limit_backend_errors: Counter,
}

/// Which per-key limit refused a request (bounded: three values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitLabel {
    Requests,
    Tokens,
    Concurrency,
}

impl EncodeLabelValue for LimitLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Concurrency => "concurrency",
        })
    }
}

/// `key` is a configured key name, never a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RateLimitedLabels {
    pub key: Arc<str>,
    pub limit: LimitLabel,
}

/// Why the image step refused a request (bounded: three values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageRefusal(pub FailureKind);

impl EncodeLabelValue for ImageRefusal {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self.0 {
            FailureKind::Url => "invalid_image_url",
            FailureKind::Image => "invalid_image",
            FailureKind::Gateway => "image_processing_failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ImageRefusalLabels {
    pub code: ImageRefusal,
}

/// What happened to an image (bounded: four values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageOutcome {
    Unchanged,
    Inlined,
    Processed,
    Cached,
}

impl EncodeLabelValue for ImageOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Self::Unchanged => "unchanged",
            Self::Inlined => "inlined",
            Self::Processed => "processed",
            Self::Cached => "cached",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ImageLabels {
    pub outcome: ImageOutcome,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vision_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, configured model id (- when none) and HTTP status",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request headers to the end of the response body (a stream's whole length)",
            request_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests whose response has not yet ended",
            in_flight.clone(),
        );
        let upstream_headers =
            Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "upstream_headers_seconds",
            "Time from sending a request upstream to the upstream's response headers",
            upstream_headers.clone(),
        );
        let overhead = histogram();
        registry.register(
            "overhead_seconds",
            "The gateway's own work on a chat request: from its body fully read to its hand-off to the upstream client",
            overhead.clone(),
        );
        let first_byte =
            Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "first_byte_seconds",
            "Time from request headers to the first response body byte sent to the client",
            first_byte.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by kind: connect, timeout (no headers in time), reset (connection broke)",
            upstream_errors.clone(),
        );
        let images = Family::<ImageLabels, Counter>::default();
        registry.register(
            "images",
            "Images in chat requests that passed the image step, by outcome: unchanged (data URI within limits), inlined (fetched, within limits), processed (downscaled or re-encoded), cached",
            images.clone(),
        );
        let image_step = histogram();
        registry.register(
            "image_step_seconds",
            "Time a request with images spent fetching, checking and downscaling them",
            image_step.clone(),
        );
        let image_refusals = Family::<ImageRefusalLabels, Counter>::default();
        registry.register(
            "image_refusals",
            "Requests the image step refused, by error code (the first failing image decides)",
            image_refusals.clone(),
        );
        let rate_limited = Family::<RateLimitedLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 by a per-key limit, by configured key name and limit",
            rate_limited.clone(),
        );
        let limit_backend_errors = Counter::default();
        registry.register(
            "rate_limit_backend_errors",
            "Requests whose limit check could not reach the backend (Redis); rate_limits.on_backend_error decided them",
            limit_backend_errors.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            requests,
            request_duration,
            in_flight,
            upstream_headers,
            overhead,
            first_byte,
            upstream_errors,
            images,
            image_step,
            image_refusals,
            rate_limited,
            limit_backend_errors,
        }
    }

    /// The exposition text, OpenMetrics format (read by Prometheus).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `Content-Type` of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_bounded() {
        assert_eq!(Route::of("/v1/chat/completions"), Route::ChatCompletions);
        assert_eq!(Route::of("/v1/models/abc"), Route::Models);
        assert_eq!(Route::of("/etc/passwd"), Route::Other);
        assert_eq!(Route::of("/playground/playground.js"), Route::Playground);
        assert_eq!(Route::of("/playgrounds"), Route::Other);
    }

    #[test]
    fn exposition_has_help_and_prefix() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: Route::ChatCompletions,
                model: Arc::from("m"),
                status: 200,
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("# HELP vision_gateway_requests Requests answered"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"vision_gateway_requests_total{route="chat_completions",model="m",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("vision_gateway_build_info{version="),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
