//! Configuration: the TOML file as written ([`RawConfig`], serde, unknown keys refused) and
//! the validated, typed [`Config`] the rest of the gateway uses.
//!
//! Validation happens once, here. Downstream code never re-checks strings, parses URLs or
//! unwraps options: a `Config` that exists is one the gateway can run.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Why a configuration was refused. The message always names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------
// The file as written.
// ---------------------------------------------------------------------------------------

/// The TOML file, with defaults filled in. Printed (secrets never included) by `check-config`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listener, limits and shutdown.
    #[serde(default)]
    pub server: RawServer,
    /// Where requests go.
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    /// Which model ids are served and by which upstream.
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// Image fetching, decoding limits and the processed-image cache.
    #[serde(default)]
    pub images: RawImages,
    /// Gateway API keys. None: no gateway authentication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<RawKey>,
    /// Where per-key limits are kept.
    #[serde(default)]
    pub rate_limits: RawRateLimits,
}

/// `[[keys]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Shown in logs and metrics; the key itself never is.
    pub name: String,
    /// Environment variable holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// Hex SHA-256 of the key, so the file holds no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Model ids the key may use; `"*"`: all.
    #[serde(default = "default_key_models")]
    pub models: Vec<String>,
    /// Requests per minute (GCRA, a minute's worth may come at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute, charged with the prompt estimate plus `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    /// Requests in flight at once; 0: no limit.
    #[serde(default)]
    pub max_concurrent: u32,
}

/// `[rate_limits]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    /// "memory" (this process) or "redis" (shared by every gateway using the same Redis).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// The Redis server for `backend = "redis"`.
    #[serde(default = "default_redis_url")]
    pub redis_url: String,
    /// "allow" or "deny" requests while Redis cannot be reached.
    #[serde(default = "default_on_backend_error")]
    pub on_backend_error: String,
    /// Milliseconds one Redis check may take before it counts as a backend error.
    #[serde(default = "default_redis_timeout_ms")]
    pub redis_timeout_ms: u64,
}

impl Default for RawRateLimits {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            redis_url: default_redis_url(),
            on_backend_error: default_on_backend_error(),
            redis_timeout_ms: default_redis_timeout_ms(),
        }
    }
}

fn default_key_models() -> Vec<String> {
    vec!["*".to_owned()]
}
fn default_backend() -> String {
    "memory".to_owned()
}
fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".to_owned()
}
fn default_on_backend_error() -> String {
    "allow".to_owned()
}
fn default_redis_timeout_ms() -> u64 {
    250
}
fn default_max_concurrent_requests() -> u32 {
    10_000
}

/// `[images]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawImages {
    /// Total time allowed for fetching one image URL, redirects included.
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
    /// TCP connect timeout for image fetches.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Largest image body fetched, counted while streaming.
    #[serde(default = "default_max_fetch_bytes")]
    pub max_fetch_bytes: u64,
    /// Redirects followed per image URL.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u32,
    /// Images with more pixels (read from the header) are refused before decoding.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Let image URLs reach non-public addresses (trusted set-ups only).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// "host" or "host:port" entries allowed to resolve to non-public addresses.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// "auto" (JPEG, PNG with transparency) | "jpeg" | "png".
    #[serde(default = "default_output_format")]
    pub output_format: String,
    /// JPEG quality of re-encoded images, 1..=100.
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: u8,
    /// Image fetches in flight at once, across all requests.
    #[serde(default = "default_max_concurrent_fetches")]
    pub max_concurrent_fetches: u32,
    /// Bytes of processed images kept for conversations that resend them; 0 turns it off.
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: u64,
}

impl Default for RawImages {
    fn default() -> Self {
        Self {
            fetch_timeout_ms: default_fetch_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            max_fetch_bytes: default_max_fetch_bytes(),
            max_redirects: default_max_redirects(),
            max_pixels: default_max_pixels(),
            allow_private_networks: false,
            allow_hosts: Vec::new(),
            output_format: default_output_format(),
            jpeg_quality: default_jpeg_quality(),
            max_concurrent_fetches: default_max_concurrent_fetches(),
            cache_max_bytes: default_cache_max_bytes(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Larger request bodies are refused with 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Seconds in-flight requests and streams get to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Seconds a client has to send a whole request body once its headers arrived; 408 after.
    #[serde(default = "default_body_read_timeout_secs")]
    pub body_read_timeout_secs: u64,
    /// Serve Prometheus metrics at `/metrics`.
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// Serve `/metrics` on this address instead of the main listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// `/readyz` turns 503 when no upstream has answered for this many seconds; the gateway
    /// probes `GET {base_url}/models` to keep it fresh. 0 turns the check off.
    #[serde(default)]
    pub readiness_upstream_window_secs: u64,
    /// Chat and inspect requests in flight at once; beyond it 503 `overloaded`, no queue.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: u32,
    /// Serve the browser playground at `/playground`.
    #[serde(default = "default_true")]
    pub playground: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            body_read_timeout_secs: default_body_read_timeout_secs(),
            metrics: true,
            metrics_listen: None,
            readiness_upstream_window_secs: 0,
            max_concurrent_requests: default_max_concurrent_requests(),
            playground: true,
        }
    }
}

/// `[[upstreams]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Unique name, referenced by `[[models]].upstream`.
    pub name: String,
    /// OpenAI-compatible base URL, e.g. `https://api.scaleway.ai/v1`.
    pub base_url: String,
    /// Environment variable holding the upstream API key. Without it the client's own
    /// `Authorization` header is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// TCP connect timeout (DNS and the TLS handshake count against `first_byte_timeout_ms`).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response headers; a stream may then run on.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
}

/// `[[models]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Model id clients send; `"*"` matches every model not listed.
    pub id: String,
    /// Name of the upstream serving it.
    pub upstream: String,
    /// Name sent upstream instead of `id` (rewrites `"model"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    /// Context window in tokens, for the budget check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
    /// Images allowed per request.
    #[serde(default = "default_max_images")]
    pub max_images: u32,
    /// Longest image side sent upstream, in pixels.
    #[serde(default = "default_max_image_edge")]
    pub max_image_edge: u32,
    /// How an image is counted: "pixtral" | "patch" | "fixed".
    #[serde(default = "default_image_tokens")]
    pub image_tokens: String,
    /// Patch edge in pixels for "pixtral" and "patch".
    #[serde(default = "default_patch_size")]
    pub patch_size: u32,
    /// Tokens per image for "fixed".
    #[serde(default)]
    pub tokens_per_image: u32,
    /// A Hugging Face `tokenizer.json` for exact text counts (needs the `tokenizer` feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
}

fn default_fetch_timeout_ms() -> u64 {
    10_000
}
fn default_max_fetch_bytes() -> u64 {
    20 * 1024 * 1024
}
fn default_max_redirects() -> u32 {
    3
}
fn default_max_pixels() -> u64 {
    50_000_000
}
fn default_output_format() -> String {
    "auto".to_owned()
}
fn default_jpeg_quality() -> u8 {
    85
}
fn default_max_concurrent_fetches() -> u32 {
    64
}
fn default_cache_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_body_read_timeout_secs() -> u64 {
    30
}
fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_max_body_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_shutdown_grace_secs() -> u64 {
    30
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_first_byte_timeout_ms() -> u64 {
    120_000
}
fn default_max_images() -> u32 {
    12
}
fn default_max_image_edge() -> u32 {
    1024
}
fn default_image_tokens() -> String {
    "pixtral".to_owned()
}
fn default_patch_size() -> u32 {
    16
}

impl RawConfig {
    /// Reads and parses a TOML file. Unknown keys are errors that name the key.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".to_owned(),
            source: Box::new(e),
        })
    }

    /// The resolved configuration as TOML. It holds no secret: keys live in the environment
    /// and only the variable names are printed.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        // A Redis password in the URL is a secret too.
        if let Ok(mut url) = url::Url::parse(&shown.rate_limits.redis_url)
            && url.password().is_some()
            && url.set_password(Some("REDACTED")).is_ok()
        {
            shown.rate_limits.redis_url = url.into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

// ---------------------------------------------------------------------------------------
// The validated configuration.
// ---------------------------------------------------------------------------------------

/// A secret read from the environment. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value (for configs built in code, e.g. tests).
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for building the upstream `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub models: Vec<ModelConfig>,
    pub images: ImagesConfig,
    /// Empty: no gateway authentication.
    pub keys: Vec<KeyConfig>,
    pub rate_limits: RateLimitsConfig,
}

/// Validated `[[keys]]`.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub name: Arc<str>,
    /// SHA-256 of the key: all the gateway keeps of it.
    pub digest: [u8; 32],
    pub models: ModelPermission,
    pub requests_per_minute: Option<NonZeroU32>,
    pub tokens_per_minute: Option<NonZeroU32>,
    pub max_concurrent: Option<NonZeroU32>,
}

/// Which model ids a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPermission {
    All,
    Only(Vec<String>),
}

impl ModelPermission {
    pub fn allows(&self, model: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(ids) => ids.iter().any(|id| id == model),
        }
    }
}

/// Validated `[rate_limits]`.
#[derive(Debug, Clone)]
pub struct RateLimitsConfig {
    pub backend: LimitBackend,
    pub on_backend_error: OnBackendError,
}

/// Where limit state lives.
#[derive(Debug, Clone)]
pub enum LimitBackend {
    /// In this process.
    Memory,
    /// In Redis, shared by every gateway using it.
    Redis {
        /// `redis://` URL (may hold a password: never printed).
        url: Secret,
        /// How long one check may take before it counts as a backend error.
        timeout: Duration,
    },
}

/// What to do with a request while the limit backend cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    Allow,
    Deny,
}

/// The format re-encoded images are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    /// JPEG, or PNG when the image has real transparency.
    Auto,
    Jpeg,
    Png,
}

/// A host image URLs may reach even when it resolves to a non-public address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// Lower-case host name or IP literal as the URL parser prints it (IPv6 in brackets).
    pub host: String,
    /// `None`: any port.
    pub port: Option<u16>,
}

/// Validated `[images]`.
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    pub fetch_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_fetch_bytes: NonZeroU64,
    pub max_redirects: u32,
    pub max_pixels: NonZeroU64,
    pub allow_private_networks: bool,
    pub allow_hosts: Vec<AllowedHost>,
    pub output_format: OutputFormat,
    /// 1..=100.
    pub jpeg_quality: u8,
    pub max_concurrent_fetches: NonZeroU32,
    /// 0: no cache.
    pub cache_max_bytes: u64,
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: NonZeroU64,
    pub shutdown_grace: Duration,
    pub body_read_timeout: Duration,
    pub metrics: MetricsExport,
    /// `None`: readiness does not depend on upstreams.
    pub readiness_upstream_window: Option<Duration>,
    /// Chat and inspect requests in flight at once.
    pub max_concurrent_requests: NonZeroU32,
    /// Serve `/playground`.
    pub playground: bool,
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsExport {
    Off,
    /// On the main listener.
    Main,
    /// On a listener of its own.
    Separate(SocketAddr),
}

/// Validated `[[upstreams]]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// The URL chat completions are posted to: `{base_url}/chat/completions`.
    pub chat_completions_url: http::Uri,
    /// `{base_url}/models`, for readiness probes.
    pub models_url: http::Uri,
    /// The key sent as `Authorization: Bearer`, when the upstream has its own.
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
}

/// Which requests a model entry serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelMatch {
    /// Exactly this id.
    Exact(String),
    /// Every id not listed elsewhere (`"*"`).
    Wildcard,
}

/// How an image is counted against the context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageTokens {
    /// `ceil(h/p) * (ceil(w/p) + 1)`: one token per patch plus one break token per row.
    Pixtral { patch: NonZeroU32 },
    /// `ceil(h/p) * ceil(w/p)`.
    Patch { patch: NonZeroU32 },
    /// The same count for every image.
    Fixed { tokens: NonZeroU32 },
}

/// Validated `[[models]]`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub matches: ModelMatch,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub upstream_model: Option<String>,
    pub context_window: Option<NonZeroU32>,
    pub max_images: u32,
    pub max_image_edge: NonZeroU32,
    pub image_tokens: ImageTokens,
    /// Counts text exactly when set; else the estimate is used.
    pub tokenizer: Option<crate::tokens::TextTokenizer>,
}

impl Config {
    /// Validates a raw config. `listen_override` (CLI or environment) wins over the file.
    pub fn from_raw(
        raw: &RawConfig,
        listen_override: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let server = validate_server(&raw.server, listen_override)?;
        if raw.upstreams.is_empty() {
            return Err(invalid(
                "upstreams",
                "at least one [[upstreams]] entry is required",
            ));
        }
        let mut names = HashSet::new();
        let mut upstreams = Vec::with_capacity(raw.upstreams.len());
        for (i, u) in raw.upstreams.iter().enumerate() {
            if !names.insert(u.name.as_str()) {
                return Err(invalid(
                    format!("upstreams[{i}].name"),
                    format!("the name `{}` is used by more than one upstream", u.name),
                ));
            }
            upstreams.push(validate_upstream(i, u)?);
        }
        if raw.models.is_empty() {
            return Err(invalid(
                "models",
                "at least one [[models]] entry is required (id = \"*\" serves every model)",
            ));
        }
        let mut ids = HashSet::new();
        let mut models = Vec::with_capacity(raw.models.len());
        for (i, m) in raw.models.iter().enumerate() {
            if !ids.insert(m.id.as_str()) {
                return Err(invalid(
                    format!("models[{i}].id"),
                    format!("the id `{}` is listed more than once", m.id),
                ));
            }
            models.push(validate_model(i, m, &raw.upstreams)?);
        }
        let keys = validate_keys(&raw.keys, &raw.models)?;
        let rate_limits = validate_rate_limits(&raw.rate_limits)?;
        if matches!(rate_limits.backend, LimitBackend::Redis { .. }) {
            check_redis_allowances(&keys)?;
        }
        Ok(Self {
            server,
            upstreams,
            models,
            images: validate_images(&raw.images)?,
            keys,
            rate_limits,
        })
    }

    /// The configuration used when no file is given: every model goes to the built-in
    /// stand-in upstream at `mock`, which must be a loopback address.
    pub fn builtin(
        mock: SocketAddr,
        listen_override: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let raw = RawConfig::builtin(mock);
        Self::from_raw(&raw, listen_override)
    }
}

impl RawConfig {
    /// The raw form of [`Config::builtin`].
    pub fn builtin(mock: SocketAddr) -> Self {
        let upstream = "builtin-mock".to_owned();
        let model = |id: &str, context_window| RawModel {
            id: id.to_owned(),
            upstream: upstream.clone(),
            upstream_model: None,
            context_window,
            max_images: default_max_images(),
            max_image_edge: default_max_image_edge(),
            image_tokens: default_image_tokens(),
            patch_size: default_patch_size(),
            tokens_per_image: 0,
            tokenizer: None,
        };
        Self {
            server: RawServer::default(),
            upstreams: vec![RawUpstream {
                name: upstream.clone(),
                base_url: format!("http://{mock}/v1"),
                api_key_env: None,
                connect_timeout_ms: default_connect_timeout_ms(),
                first_byte_timeout_ms: default_first_byte_timeout_ms(),
            }],
            models: vec![model("pixtral-12b-2409", Some(128_000)), model("*", None)],
            images: RawImages::default(),
            keys: Vec::new(),
            rate_limits: RawRateLimits::default(),
        }
    }
}

fn validate_server(
    raw: &RawServer,
    listen_override: Option<SocketAddr>,
) -> Result<ServerConfig, ConfigError> {
    let listen = match listen_override {
        Some(addr) => addr,
        None => raw.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080 or [::1]:8080",
                    raw.listen
                ),
            )
        })?,
    };
    let max_body_bytes = NonZeroU64::new(raw.max_body_bytes)
        .ok_or_else(|| invalid("server.max_body_bytes", "must be greater than 0"))?;
    let metrics = match (raw.metrics, &raw.metrics_listen) {
        (false, _) => MetricsExport::Off,
        (true, None) => MetricsExport::Main,
        (true, Some(addr)) => MetricsExport::Separate(addr.parse().map_err(|_| {
            invalid(
                "server.metrics_listen",
                format!("`{addr}` is not an address like 127.0.0.1:9090"),
            )
        })?),
    };
    Ok(ServerConfig {
        listen,
        max_body_bytes,
        shutdown_grace: Duration::from_secs(raw.shutdown_grace_secs),
        body_read_timeout: positive_secs(
            raw.body_read_timeout_secs,
            "server.body_read_timeout_secs",
        )?,
        metrics,
        readiness_upstream_window: (raw.readiness_upstream_window_secs > 0)
            .then(|| Duration::from_secs(raw.readiness_upstream_window_secs)),
        max_concurrent_requests: NonZeroU32::new(raw.max_concurrent_requests)
            .ok_or_else(|| invalid("server.max_concurrent_requests", "must be greater than 0"))?,
        playground: raw.playground,
    })
}

fn validate_upstream(i: usize, raw: &RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let key = |field: &str| format!("upstreams[{i}].{field}");
    if raw.name.is_empty() {
        return Err(invalid(key("name"), "must not be empty"));
    }
    let base = url::Url::parse(&raw.base_url).map_err(|e| {
        invalid(
            key("base_url"),
            format!("`{}` is not a URL: {e}", raw.base_url),
        )
    })?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid(
            key("base_url"),
            "must start with http:// or https://",
        ));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(invalid(
            key("base_url"),
            "must not contain credentials; use api_key_env for the upstream key",
        ));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid(
            key("base_url"),
            "must not have a query or fragment",
        ));
    }
    let endpoint = |path: &str| -> Result<http::Uri, ConfigError> {
        format!("{}/{path}", base.as_str().trim_end_matches('/'))
            .parse()
            .map_err(|e| {
                invalid(
                    key("base_url"),
                    format!("`{}` is not usable: {e}", raw.base_url),
                )
            })
    };
    let chat_completions_url = endpoint("chat/completions")?;
    let models_url = endpoint("models")?;
    let api_key = match &raw.api_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret(v)),
            _ => {
                return Err(invalid(
                    key("api_key_env"),
                    format!("the environment variable `{var}` is not set or empty"),
                ));
            }
        },
    };
    let connect_timeout = positive_ms(raw.connect_timeout_ms, || key("connect_timeout_ms"))?;
    let first_byte_timeout =
        positive_ms(raw.first_byte_timeout_ms, || key("first_byte_timeout_ms"))?;
    Ok(UpstreamConfig {
        name: raw.name.clone(),
        chat_completions_url,
        models_url,
        api_key,
        connect_timeout,
        first_byte_timeout,
    })
}

fn positive_secs(secs: u64, key: &str) -> Result<Duration, ConfigError> {
    if secs == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(Duration::from_secs(secs))
}

fn positive_ms(ms: u64, key: impl FnOnce() -> String) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(invalid(key(), "must be greater than 0"));
    }
    Ok(Duration::from_millis(ms))
}

fn validate_images(raw: &RawImages) -> Result<ImagesConfig, ConfigError> {
    let key = |field: &str| format!("images.{field}");
    let output_format = match raw.output_format.as_str() {
        "auto" => OutputFormat::Auto,
        "jpeg" => OutputFormat::Jpeg,
        "png" => OutputFormat::Png,
        other => {
            return Err(invalid(
                key("output_format"),
                format!("`{other}` is not one of \"auto\", \"jpeg\", \"png\""),
            ));
        }
    };
    if !(1..=100).contains(&raw.jpeg_quality) {
        return Err(invalid(key("jpeg_quality"), "must be between 1 and 100"));
    }
    let allow_hosts = raw
        .allow_hosts
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            parse_allowed_host(entry).ok_or_else(|| {
                invalid(
                    format!("images.allow_hosts[{i}]"),
                    format!("`{entry}` is not a \"host\" or \"host:port\" entry"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImagesConfig {
        fetch_timeout: positive_ms(raw.fetch_timeout_ms, || key("fetch_timeout_ms"))?,
        connect_timeout: positive_ms(raw.connect_timeout_ms, || key("connect_timeout_ms"))?,
        max_fetch_bytes: NonZeroU64::new(raw.max_fetch_bytes)
            .ok_or_else(|| invalid(key("max_fetch_bytes"), "must be greater than 0"))?,
        max_redirects: raw.max_redirects,
        max_pixels: NonZeroU64::new(raw.max_pixels)
            .ok_or_else(|| invalid(key("max_pixels"), "must be greater than 0"))?,
        allow_private_networks: raw.allow_private_networks,
        allow_hosts,
        output_format,
        jpeg_quality: raw.jpeg_quality,
        max_concurrent_fetches: NonZeroU32::new(raw.max_concurrent_fetches)
            .ok_or_else(|| invalid(key("max_concurrent_fetches"), "must be greater than 0"))?,
        cache_max_bytes: raw.cache_max_bytes,
    })
}

/// Parses an `allow_hosts` entry with the same URL parser that parses image URLs, so an
/// entry and a URL naming the same host compare equal (`127.1` is `127.0.0.1`, case folded).
fn parse_allowed_host(entry: &str) -> Option<AllowedHost> {
    if entry.is_empty() || entry.contains(['/', '@', '?', '#']) {
        return None;
    }
    let url = url::Url::parse(&format!("http://{entry}/")).ok()?;
    let host = url.host_str()?.to_owned();
    // `Url::port` hides the scheme's default port; an explicit `:80` must still count.
    let explicit_port = entry.rsplit_once(':').is_some_and(|(h, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':')
    });
    let port = if explicit_port {
        url.port_or_known_default()
    } else {
        None
    };
    Some(AllowedHost { host, port })
}

fn validate_keys(raw: &[RawKey], models: &[RawModel]) -> Result<Vec<KeyConfig>, ConfigError> {
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    let has_wildcard = models.iter().any(|m| m.id == "*");
    raw.iter()
        .enumerate()
        .map(|(i, k)| {
            let key = |field: &str| format!("keys[{i}].{field}");
            if k.name.is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(k.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("the name `{}` is used by more than one key", k.name),
                ));
            }
            let digest = match (&k.key_env, &k.sha256) {
                (Some(var), None) => match std::env::var(var) {
                    Ok(v) if !v.is_empty() => sha2::Sha256::digest(v.as_bytes()).into(),
                    _ => {
                        return Err(invalid(
                            key("key_env"),
                            format!("the environment variable `{var}` is not set or empty"),
                        ));
                    }
                },
                (None, Some(hex)) => parse_sha256(hex).ok_or_else(|| {
                    invalid(key("sha256"), "must be 64 hexadecimal digits (a SHA-256)")
                })?,
                _ => {
                    return Err(invalid(
                        key("key_env"),
                        "give exactly one of key_env and sha256",
                    ));
                }
            };
            if !digests.insert(digest) {
                return Err(invalid(
                    key("name"),
                    format!("key `{}` has the same secret as another key", k.name),
                ));
            }
            let models = if k.models.iter().any(|m| m == "*") {
                ModelPermission::All
            } else {
                for (j, m) in k.models.iter().enumerate() {
                    if !has_wildcard && !models.iter().any(|c| &c.id == m) {
                        return Err(invalid(
                            format!("keys[{i}].models[{j}]"),
                            format!("`{m}` is not a [[models]] id and there is no \"*\" model"),
                        ));
                    }
                }
                ModelPermission::Only(k.models.clone())
            };
            let positive = |v: Option<u32>, field: &str| match v {
                None => Ok(None),
                Some(n) => NonZeroU32::new(n)
                    .map(Some)
                    .ok_or_else(|| invalid(key(field), "must be greater than 0 (or left out)")),
            };
            Ok(KeyConfig {
                name: Arc::from(k.name.as_str()),
                digest,
                models,
                requests_per_minute: positive(k.requests_per_minute, "requests_per_minute")?,
                tokens_per_minute: positive(k.tokens_per_minute, "tokens_per_minute")?,
                max_concurrent: NonZeroU32::new(k.max_concurrent),
            })
        })
        .collect()
}

/// The Redis script keeps time in microseconds: one unit must take at least one to earn
/// back, so an allowance is at most 60,000,000 a minute with that backend.
const REDIS_MAX_PER_MINUTE: u32 = 60_000_000;

fn check_redis_allowances(keys: &[KeyConfig]) -> Result<(), ConfigError> {
    for (i, k) in keys.iter().enumerate() {
        for (field, value) in [
            ("requests_per_minute", k.requests_per_minute),
            ("tokens_per_minute", k.tokens_per_minute),
        ] {
            if value.is_some_and(|v| v.get() > REDIS_MAX_PER_MINUTE) {
                return Err(invalid(
                    format!("keys[{i}].{field}"),
                    format!(
                        "at most {REDIS_MAX_PER_MINUTE} with rate_limits.backend = \"redis\" (it counts in microseconds)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

fn validate_rate_limits(raw: &RawRateLimits) -> Result<RateLimitsConfig, ConfigError> {
    let on_backend_error = match raw.on_backend_error.as_str() {
        "allow" => OnBackendError::Allow,
        "deny" => OnBackendError::Deny,
        other => {
            return Err(invalid(
                "rate_limits.on_backend_error",
                format!("`{other}` is not one of \"allow\", \"deny\""),
            ));
        }
    };
    let backend = match raw.backend.as_str() {
        "memory" => LimitBackend::Memory,
        "redis" => {
            let url = url::Url::parse(&raw.redis_url)
                .ok()
                .filter(|u| u.scheme() == "redis");
            if url.is_none() {
                return Err(invalid(
                    "rate_limits.redis_url",
                    "must be a redis://[:password@]host[:port][/db] URL",
                ));
            }
            LimitBackend::Redis {
                url: Secret(raw.redis_url.clone()),
                timeout: positive_ms(raw.redis_timeout_ms, || {
                    "rate_limits.redis_timeout_ms".to_owned()
                })?,
            }
        }
        other => {
            return Err(invalid(
                "rate_limits.backend",
                format!("`{other}` is not one of \"memory\", \"redis\""),
            ));
        }
    };
    Ok(RateLimitsConfig {
        backend,
        on_backend_error,
    })
}

fn validate_model(
    i: usize,
    raw: &RawModel,
    upstreams: &[RawUpstream],
) -> Result<ModelConfig, ConfigError> {
    let key = |field: &str| format!("models[{i}].{field}");
    let matches = match raw.id.as_str() {
        "" => return Err(invalid(key("id"), "must not be empty")),
        "*" => ModelMatch::Wildcard,
        id => ModelMatch::Exact(id.to_owned()),
    };
    let upstream = upstreams
        .iter()
        .position(|u| u.name == raw.upstream)
        .ok_or_else(|| {
            invalid(
                key("upstream"),
                format!(
                    "model `{}` names the upstream `{}`, which is not defined in [[upstreams]]",
                    raw.id, raw.upstream
                ),
            )
        })?;
    if raw.upstream_model.as_deref() == Some("") {
        return Err(invalid(key("upstream_model"), "must not be empty"));
    }
    let context_window = match raw.context_window {
        None => None,
        Some(n) => Some(
            NonZeroU32::new(n)
                .ok_or_else(|| invalid(key("context_window"), "must be greater than 0"))?,
        ),
    };
    let max_image_edge = NonZeroU32::new(raw.max_image_edge)
        .ok_or_else(|| invalid(key("max_image_edge"), "must be greater than 0"))?;
    let patch = || {
        NonZeroU32::new(raw.patch_size)
            .ok_or_else(|| invalid(key("patch_size"), "must be greater than 0"))
    };
    let image_tokens = match raw.image_tokens.as_str() {
        "pixtral" => ImageTokens::Pixtral { patch: patch()? },
        "patch" => ImageTokens::Patch { patch: patch()? },
        "fixed" => ImageTokens::Fixed {
            tokens: NonZeroU32::new(raw.tokens_per_image).ok_or_else(|| {
                invalid(
                    key("tokens_per_image"),
                    "must be greater than 0 when image_tokens = \"fixed\"",
                )
            })?,
        },
        other => {
            return Err(invalid(
                key("image_tokens"),
                format!("`{other}` is not one of \"pixtral\", \"patch\", \"fixed\""),
            ));
        }
    };
    let tokenizer = match &raw.tokenizer {
        None => None,
        Some(path) => Some(
            crate::tokens::TextTokenizer::load(Path::new(path))
                .map_err(|e| invalid(key("tokenizer"), format!("cannot load `{path}`: {e}")))?,
        ),
    };
    Ok(ModelConfig {
        matches,
        upstream,
        upstream_model: raw.upstream_model.clone(),
        context_window,
        max_images: raw.max_images,
        max_image_edge,
        image_tokens,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_raw(&RawConfig::from_toml(text)?, None)
    }

    const MINIMAL: &str = r#"
        [[upstreams]]
        name = "up"
        base_url = "http://127.0.0.1:9/v1/"
        [[models]]
        id = "*"
        upstream = "up"
    "#;

    #[test]
    fn the_annotated_example_parses_and_validates() {
        let text = include_str!("../config/vision-gateway.toml");
        let raw = RawConfig::from_toml(text).map_err(|e| e.to_string());
        // The example names SCW_SECRET_KEY; validation needs it set.
        // SAFETY of the test: no other test reads this variable.
        let raw = match raw {
            Ok(r) => r,
            Err(e) => panic!("example config does not parse: {e}"),
        };
        let mut raw = raw;
        for u in &mut raw.upstreams {
            u.api_key_env = None;
        }
        // Its keys name TEAM_A_KEY; stand in a digest for the variable.
        assert!(raw.keys.iter().any(|k| k.key_env.is_some()));
        for k in &mut raw.keys {
            if k.key_env.take().is_some() {
                k.sha256 = Some("ab".repeat(32));
            }
        }
        let cfg = Config::from_raw(&raw, None);
        assert!(cfg.is_ok(), "{cfg:?}");
    }

    #[test]
    fn the_minimal_example_parses() {
        let text = include_str!("../config/minimal.toml");
        let cfg = parse(text);
        assert!(cfg.is_ok(), "{cfg:?}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cfg = parse(MINIMAL).map_err(|e| e.to_string());
        let Ok(cfg) = cfg else { panic!("{cfg:?}") };
        assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.server.max_body_bytes.get(), 33_554_432);
        assert_eq!(cfg.server.shutdown_grace, Duration::from_secs(30));
        assert!(cfg.server.playground);
        let up = &cfg.upstreams[0];
        assert_eq!(
            up.chat_completions_url.to_string(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert_eq!(up.connect_timeout, Duration::from_millis(3000));
        assert_eq!(up.first_byte_timeout, Duration::from_millis(120_000));
        let m = &cfg.models[0];
        assert_eq!(m.matches, ModelMatch::Wildcard);
        assert_eq!(m.max_images, 12);
        assert_eq!(m.max_image_edge.get(), 1024);
        assert!(matches!(m.image_tokens, ImageTokens::Pixtral { patch } if patch.get() == 16));
    }

    fn err_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config should be refused:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = err_of(&format!("{MINIMAL}\n[server]\nlisten_port = 1\n"));
        assert!(e.contains("listen_port"), "{e}");
        let e = err_of("[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\nbase_ulr = \"y\"\n");
        assert!(e.contains("base_ulr"), "{e}");
    }

    #[test]
    fn a_model_naming_a_missing_upstream_is_refused() {
        let e = err_of(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\n[[models]]\nid = \"m\"\nupstream = \"nope\"\n",
        );
        assert!(
            e.contains("models[0].upstream") && e.contains("`nope`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"ftp://x\"\n[[models]]\nid = \"*\"\nupstream = \"a\"\n",
                "upstreams[0].base_url",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://u:p@x\"\n[[models]]\nid = \"*\"\nupstream = \"a\"\n",
                "upstreams[0].base_url",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\n[[upstreams]]\nname = \"a\"\nbase_url = \"http://y\"\n[[models]]\nid = \"*\"\nupstream = \"a\"\n",
                "upstreams[1].name",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\napi_key_env = \"VG_TEST_SURELY_UNSET_VAR\"\n[[models]]\nid = \"*\"\nupstream = \"a\"\n",
                "VG_TEST_SURELY_UNSET_VAR",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\n[[models]]\nid = \"m\"\nupstream = \"a\"\nimage_tokens = \"tiles\"\n",
                "models[0].image_tokens",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\n[[models]]\nid = \"m\"\nupstream = \"a\"\nimage_tokens = \"fixed\"\n",
                "models[0].tokens_per_image",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\n[[models]]\nid = \"m\"\nupstream = \"a\"\n[[models]]\nid = \"m\"\nupstream = \"a\"\n",
                "models[1].id",
            ),
            (
                "[server]\nlisten = \"localhost\"\n[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\n[[models]]\nid = \"m\"\nupstream = \"a\"\n",
                "server.listen",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\n",
                "models",
            ),
        ];
        for (text, key) in cases {
            let e = err_of(text);
            assert!(e.contains(key), "expected `{key}` in: {e}");
        }
    }

    #[test]
    fn key_and_limit_mistakes_name_their_key() {
        let base = "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\n[[models]]\nid = \"m\"\nupstream = \"a\"\n";
        let digest = "ab".repeat(32);
        let cases = [
            ("[[keys]]\nname = \"k\"\n".to_owned(), "keys[0].key_env"),
            (
                format!("[[keys]]\nname = \"k\"\nsha256 = \"{digest}\"\nkey_env = \"X\"\n"),
                "keys[0].key_env",
            ),
            (
                "[[keys]]\nname = \"k\"\nsha256 = \"abc\"\n".to_owned(),
                "keys[0].sha256",
            ),
            (
                "[[keys]]\nname = \"k\"\nkey_env = \"VG_TEST_SURELY_UNSET_VAR\"\n".to_owned(),
                "VG_TEST_SURELY_UNSET_VAR",
            ),
            (
                format!("[[keys]]\nname = \"k\"\nsha256 = \"{digest}\"\nmodels = [\"nope\"]\n"),
                "keys[0].models[0]",
            ),
            (
                format!("[[keys]]\nname = \"k\"\nsha256 = \"{digest}\"\nrequests_per_minute = 0\n"),
                "keys[0].requests_per_minute",
            ),
            (
                format!(
                    "[[keys]]\nname = \"k\"\nsha256 = \"{digest}\"\n[[keys]]\nname = \"k\"\nsha256 = \"{}\"\n",
                    "cd".repeat(32)
                ),
                "keys[1].name",
            ),
            (
                format!(
                    "[[keys]]\nname = \"k\"\nsha256 = \"{digest}\"\n[[keys]]\nname = \"j\"\nsha256 = \"{digest}\"\n"
                ),
                "keys[1].name",
            ),
            (
                "[rate_limits]\nbackend = \"etcd\"\n".to_owned(),
                "rate_limits.backend",
            ),
            (
                "[rate_limits]\nbackend = \"redis\"\nredis_url = \"http://x\"\n".to_owned(),
                "rate_limits.redis_url",
            ),
            (
                "[rate_limits]\non_backend_error = \"maybe\"\n".to_owned(),
                "rate_limits.on_backend_error",
            ),
            (
                "[server]\nmax_concurrent_requests = 0\n".to_owned(),
                "server.max_concurrent_requests",
            ),
            (
                format!(
                    "[rate_limits]\nbackend = \"redis\"\n[[keys]]\nname = \"k\"\nsha256 = \"{digest}\"\ntokens_per_minute = 60000001\n"
                ),
                "keys[0].tokens_per_minute",
            ),
        ];
        for (extra, key) in cases {
            let e = err_of(&format!("{extra}{base}"));
            assert!(e.contains(key), "expected `{key}` in: {e}");
        }
    }

    #[test]
    fn a_redis_password_is_not_printed() {
        let raw = RawConfig::from_toml(
            "[rate_limits]\nbackend = \"redis\"\nredis_url = \"redis://:hunter2@127.0.0.1:6379/0\"\n",
        );
        let Ok(raw) = raw else { panic!("{raw:?}") };
        let shown = raw.to_toml();
        assert!(
            !shown.contains("hunter2") && shown.contains("REDACTED"),
            "{shown}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret("sk-very-secret".into());
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
