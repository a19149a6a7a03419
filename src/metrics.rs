//! Prometheus metrics: the registry, the metric families, and the `/metrics` text.
//!
//! Labels are bounded by construction: `route` is an enum, `model` is a configured id (or
//! `-` when no model was resolved), `upstream` a configured name, `status` an HTTP status.
//! Client-chosen strings never become label values. Metrics are recorded in one place, the
//! telemetry layer, from the facts inner layers wrote into the request context.
//!
//! The metrics every request moves (requests, durations, in-flight, upstream timings) are
//! kept per worker thread ([`Shards`]) and summed when `/metrics` is scraped. Kept in one
//! shared family, each request would write a dozen cache lines (family locks, counters,
//! histogram locks) that the other cores wrote a moment before, and every such write waits
//! for the line to cross cores: `benches/load/metrics_overhead.sh` measured 0.8 µs a request
//! that way. The rarer metrics (images, refusals, errors) stay in prometheus-client's
//! families.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, MetricEncoder,
    NoLabelSet,
};

use crate::images::pipeline::FailureKind;
use crate::per_worker;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    /// Every route, in the order `/metrics` lists them.
    const ALL: [Self; 8] = [
        Self::ChatCompletions,
        Self::Inspect,
        Self::Models,
        Self::Healthz,
        Self::Readyz,
        Self::Metrics,
        Self::Playground,
        Self::Other,
    ];

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
const LATENCY_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Requests, durations, in-flight and upstream timings, per worker thread.
    shards: Arc<Shards>,
    /// The `model` label of a request that resolved none.
    no_model: Arc<str>,
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
        let shards = Arc::new(Shards::default());
        registry.register_collector(Box::new(PerRequest(shards.clone())));
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
            shards,
            no_model: Arc::from("-"),
            upstream_errors,
            images,
            image_step,
            image_refusals,
            rate_limited,
            limit_backend_errors,
        }
    }

    /// A request has begun (`requests_in_flight` until [`Self::request_finished`]).
    pub fn request_started(&self) {
        self.shards.here().in_flight += 1;
    }

    /// A request has ended: counted, timed, and no longer in flight.
    pub fn request_finished(&self, done: &Finished<'_>) {
        let mut guard = self.shards.here();
        let shard = &mut *guard;
        shard.in_flight -= 1;
        let model = done.model.unwrap_or(&self.no_model);
        // Looked up by `&str` first: cloning the label would write its shared count.
        if !shard.requests.contains_key(&**model) {
            shard.requests.insert(model.clone(), Vec::new());
        }
        let Some(counts) = shard.requests.get_mut(&**model) else {
            return;
        };
        match counts
            .iter_mut()
            .find(|(route, status, _)| *route == done.route && *status == done.status)
        {
            Some((_, _, n)) => *n += 1,
            None => counts.push((done.route, done.status, 1)),
        }
        if let Some(h) = shard.duration.get_mut(done.route as usize) {
            h.observe(done.duration);
        }
        if let Some(overhead) = done.overhead {
            shard.overhead.observe(overhead);
        }
        let Some(upstream) = &done.upstream else {
            return;
        };
        for (family, value) in [
            (&mut shard.upstream_headers, upstream.headers),
            (&mut shard.first_byte, upstream.first_byte),
        ] {
            let Some(value) = value else { continue };
            match family.get_mut(&**upstream.name) {
                Some(h) => h.observe(value),
                None => family
                    .entry(upstream.name.clone())
                    .or_default()
                    .observe(value),
            }
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

/// What [`Metrics::request_finished`] records of one request.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub route: Route,
    /// The configured model id; `None` counts as `-`.
    pub model: Option<&'a Arc<str>>,
    pub status: u16,
    /// From request headers to the end of the response body.
    pub duration: Duration,
    /// From the body fully read to the hand-off to the upstream client.
    pub overhead: Option<Duration>,
    /// The upstream's timings, for a request that was sent upstream.
    pub upstream: Option<UpstreamTimes<'a>>,
}

/// An upstream exchange's timings, as [`Finished`] carries them.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimes<'a> {
    /// The configured upstream name.
    pub name: &'a Arc<str>,
    /// From sending the request to the response headers.
    pub headers: Option<Duration>,
    /// From request headers to the first body byte sent to the client.
    pub first_byte: Option<Duration>,
}

/// The per-request metrics, one [`Shard`] per worker slot (`per_worker::slot`). A worker locks only its own shard, so the lock and the
/// values stay in its core's cache; a scrape locks each in turn and sums them.
struct Shards([Padded; per_worker::SLOTS]);

impl Default for Shards {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Padded::default()))
    }
}

impl Shards {
    /// This thread's shard, locked.
    fn here(&self) -> std::sync::MutexGuard<'_, Shard> {
        self.0[per_worker::slot()]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every shard summed.
    fn sum(&self) -> Sum {
        let mut sum = Sum::default();
        for padded in &self.0 {
            let shard = padded.0.lock().unwrap_or_else(PoisonError::into_inner);
            sum.in_flight += shard.in_flight;
            for (model, counts) in &shard.requests {
                for &(route, status, n) in counts {
                    *sum.requests
                        .entry((route as usize, model.clone(), status))
                        .or_default() += n;
                }
            }
            for (total, h) in sum.duration.iter_mut().zip(&shard.duration) {
                total.add(h);
            }
            sum.overhead.add(&shard.overhead);
            for (total, family) in [
                (&mut sum.upstream_headers, &shard.upstream_headers),
                (&mut sum.first_byte, &shard.first_byte),
            ] {
                for (name, h) in family {
                    total.entry(name.clone()).or_default().add(h);
                }
            }
        }
        sum
    }
}

/// A shard on cache lines of its own (128 bytes: adjacent-line prefetching pairs lines).
#[derive(Default)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// A map keyed by configured names, looked up on every request: foldhash, not SipHash (the
/// keys are from the config, not from clients).
type ByName<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// One worker's share of the per-request metrics.
#[derive(Default)]
struct Shard {
    /// Started minus finished here (a shard's own count may be negative; the sum is not).
    in_flight: i64,
    /// Request counts by model label, then (route, status).
    requests: ByName<Vec<(Route, u16, u64)>>,
    /// Request durations, indexed by `Route as usize`.
    duration: [Hist; Route::ALL.len()],
    overhead: Hist,
    upstream_headers: ByName<Hist>,
    first_byte: ByName<Hist>,
}

/// All shards added up, ordered for a stable exposition.
#[derive(Default)]
struct Sum {
    in_flight: i64,
    requests: BTreeMap<(usize, Arc<str>, u16), u64>,
    duration: [Hist; Route::ALL.len()],
    overhead: Hist,
    upstream_headers: BTreeMap<Arc<str>, Hist>,
    first_byte: BTreeMap<Arc<str>, Hist>,
}

/// A latency histogram on [`LATENCY_BUCKETS`] (and +Inf), in seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Hist {
    sum: f64,
    count: u64,
    /// Not cumulative: each bucket counts what fell above the previous bound.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
}

impl Hist {
    fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        self.sum += v;
        self.count += 1;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|bound| v <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
    }

    fn add(&mut self, other: &Self) {
        self.sum += other.sum;
        self.count += other.count;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }

    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        // prometheus-client writes an upper bound of infinity as +Inf.
        let mut buckets = [(0.0, 0); LATENCY_BUCKETS.len() + 1];
        for ((slot, bound), n) in buckets
            .iter_mut()
            .zip(LATENCY_BUCKETS.iter().chain([&f64::INFINITY]))
            .zip(self.buckets)
        {
            *slot = (*bound, n);
        }
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &buckets, None)
    }
}

/// Encodes the shards' sum at each scrape, with the same names, help (a registered metric's
/// gets a final full stop) and labels a prometheus-client family of each would have.
struct PerRequest(Arc<Shards>);

impl std::fmt::Debug for PerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerRequest")
    }
}

impl Collector for PerRequest {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let sum = self.0.sum();
        let mut family = encoder.encode_descriptor(
            "requests",
            "Requests answered, by route, configured model id (- when none) and HTTP status.",
            None,
            MetricType::Counter,
        )?;
        for ((route, model, status), n) in &sum.requests {
            let labels = RequestLabels {
                route: Route::ALL.get(*route).copied().unwrap_or(Route::Other),
                model: model.clone(),
                status: *status,
            };
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "request_duration_seconds",
            "Time from request headers to the end of the response body (a stream's whole length).",
            None,
            MetricType::Histogram,
        )?;
        for (route, h) in Route::ALL.iter().zip(&sum.duration) {
            if h.count > 0 {
                h.encode(family.encode_family(&RouteLabels { route: *route })?)?;
            }
        }
        encoder
            .encode_descriptor(
                "requests_in_flight",
                "Requests whose response has not yet ended.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&sum.in_flight)?;
        for (name, help, hists) in [
            (
                "upstream_headers_seconds",
                "Time from sending a request upstream to the upstream's response headers.",
                &sum.upstream_headers,
            ),
            (
                "first_byte_seconds",
                "Time from request headers to the first response body byte sent to the client.",
                &sum.first_byte,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (upstream, h) in hists {
                let labels = UpstreamLabels {
                    upstream: upstream.clone(),
                };
                h.encode(family.encode_family(&labels)?)?;
            }
        }
        sum.overhead.encode(encoder.encode_descriptor(
            "overhead_seconds",
            "The gateway's own work on a chat request: from its body fully read to its hand-off to the upstream client.",
            None,
            MetricType::Histogram,
        )?)
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
        m.request_started();
        m.request_finished(&Finished {
            route: Route::ChatCompletions,
            model: Some(&Arc::from("m")),
            status: 200,
            duration: Duration::from_millis(3),
            overhead: None,
            upstream: None,
        });
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

    /// Requests recorded on different worker threads land in different shards; `/metrics`
    /// shows their sum, with the histogram buckets cumulative and ending in +Inf.
    #[test]
    fn shards_are_summed_at_scrape() {
        let m = Metrics::new();
        let model: Arc<str> = Arc::from("m");
        let upstream: Arc<str> = Arc::from("up");
        let record = |worker: usize, ms: u64, finish: bool| {
            crate::server::act_as_worker(worker);
            m.request_started();
            if finish {
                m.request_finished(&Finished {
                    route: Route::ChatCompletions,
                    model: Some(&model),
                    status: 200,
                    duration: Duration::from_millis(ms),
                    overhead: Some(Duration::from_micros(50)),
                    upstream: Some(UpstreamTimes {
                        name: &upstream,
                        headers: Some(Duration::from_millis(ms)),
                        first_byte: None,
                    }),
                });
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                record(1, 3, true);
                // Still in flight at the scrape.
                record(1, 0, false);
            });
            s.spawn(|| record(2, 200, true));
            s.spawn(|| record(0, 3, true));
        });
        let used = |i: usize| m.shards.0[i].0.lock().map(|s| !s.requests.is_empty());
        assert!(
            matches!((used(1), used(2)), (Ok(true), Ok(true))),
            "one shard per worker"
        );

        let text = m.encode();
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        has(r#"vision_gateway_requests_total{route="chat_completions",model="m",status="200"} 3"#);
        has("vision_gateway_requests_in_flight 1");
        has(r#"vision_gateway_request_duration_seconds_count{route="chat_completions"} 3"#);
        has(
            r#"vision_gateway_request_duration_seconds_bucket{le="0.005",route="chat_completions"} 2"#,
        );
        has(
            r#"vision_gateway_request_duration_seconds_bucket{le="0.25",route="chat_completions"} 3"#,
        );
        has(
            r#"vision_gateway_request_duration_seconds_bucket{le="+Inf",route="chat_completions"} 3"#,
        );
        has(r#"vision_gateway_upstream_headers_seconds_count{upstream="up"} 3"#);
        has("vision_gateway_overhead_seconds_count 3");
        has(
            "# HELP vision_gateway_requests Requests answered, by route, configured model id (- when none) and HTTP status.",
        );
        assert!(
            !text.contains("vision_gateway_first_byte_seconds_count"),
            "no first byte was recorded: {text}"
        );
        // Routes nobody asked for are not listed.
        assert!(!text.contains(r#"route="healthz""#), "{text}");
    }
}
