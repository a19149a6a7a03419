//! The one error type of the gateway and its one mapping to HTTP.
//!
//! Every failure a request can meet is a [`GatewayError`] variant. Status, OpenAI `type`,
//! `code`, `param`, log level and whose fault it was are exhaustive `match`es with no
//! wildcard arm, so a new variant cannot be added without deciding all of them. Nothing
//! else in the crate builds an error response: `layer::error_response` turns these into
//! `{"error":{"message","type","param","code"}}` bodies.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use http::StatusCode;

use crate::images::pipeline::{FailureKind, ImageFailure};
use crate::limits::LimitKind;
use crate::openai::{ErrorBody, ErrorDetail};
use crate::tokens::{TokenCount, thousands};

/// Served if serialising an error body ever fails (it cannot for these types).
const FALLBACK_JSON: &[u8] = br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#;

/// Why the upstream could not be used, in words safe to show a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// TCP or TLS connection could not be established (refused, reset, DNS, handshake).
    Connect,
    /// The upstream accepted the request but closed or broke the connection before answering.
    Protocol,
}

/// Whose fault an error is: decides the log level and, later, metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong; the client can fix it.
    Client,
    /// The upstream failed or was too slow.
    Upstream,
    /// The gateway itself failed or is going away.
    Gateway,
}

/// Every error the gateway answers with. Messages say how to fix the request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The body is not JSON at all (syntax error, truncated, not UTF-8).
    #[error(
        "we could not parse the JSON body of your request ({detail}); send a JSON object with `model` and `messages`"
    )]
    BodyNotJson { detail: String },

    /// The body is JSON but not of the shape of a chat completion request.
    #[error("the request body is not a valid chat completion request: {detail}")]
    BodyShape { detail: String },

    /// A required field is missing.
    #[error("you must provide `{field}` in the request body")]
    MissingField { field: &'static str },

    /// A field has the wrong JSON type or an impossible value.
    #[error("`{field}` {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },

    /// The body could not be read from the client connection.
    #[error("the request body could not be read completely; resend the request")]
    BodyRead,

    /// The client did not finish sending the body within `server.body_read_timeout_secs`.
    #[error(
        "the request body did not arrive within {} s (server.body_read_timeout_secs); send it at once",
        after.as_secs()
    )]
    BodyTimeout { after: Duration },

    /// The body is larger than `server.max_body_bytes`.
    #[error(
        "the request body is larger than this gateway's limit of {limit} bytes (server.max_body_bytes); send fewer or smaller images"
    )]
    BodyTooLarge { limit: u64 },

    /// No `[[models]]` entry matches and there is no `"*"` entry.
    #[error(
        "the model `{model}` does not exist on this gateway; GET /v1/models lists the models it serves"
    )]
    ModelNotFound { model: String },

    /// More `image_url` parts than the model's `max_images`.
    #[error("messages contain {count} images; {model} accepts at most {max}")]
    TooManyImages {
        count: usize,
        model: String,
        max: u32,
    },

    /// An image part could not be used: its URL (`invalid_image_url`) or the image itself
    /// (`invalid_image`). `number` counts images from 1 in request order.
    #[error("image {number} ({at}): {failure}")]
    Image {
        number: usize,
        at: String,
        failure: Arc<ImageFailure>,
    },

    /// Text, images and the reserved completion do not fit the model's context window.
    #[error("the request {}; {model} holds {}", count.breakdown(), thousands(u64::from(*window)))]
    ContextLengthExceeded {
        count: TokenCount,
        model: String,
        window: u32,
    },

    /// Keys are configured and the request carries no `Authorization: Bearer` key.
    #[error(
        "you didn't provide an API key; send your gateway key as `Authorization: Bearer <key>` (the OpenAI SDKs do this with api_key)"
    )]
    MissingApiKey,

    /// The presented key is not one of the configured keys. The key is never echoed.
    #[error(
        "the API key provided is not valid for this gateway; check the key you were given (it is compared exactly)"
    )]
    InvalidApiKey,

    /// A known key asked for a model outside its `models` list.
    #[error(
        "the key `{key}` may not use the model `{model}`; GET /v1/models lists the models it may use"
    )]
    ModelNotPermitted { key: Arc<str>, model: String },

    /// Over a per-key allowance: retry after the given time.
    #[error(
        "rate limit reached for key `{key}`: {allowance} {} per minute; retry in {:.1} s",
        kind.as_str(),
        retry_after.as_secs_f64()
    )]
    RateLimited {
        kind: LimitKind,
        allowance: u32,
        key: Arc<str>,
        retry_after: Duration,
    },

    /// One request costs more than the key's whole allowance: retrying cannot help.
    #[error(
        "this request needs {cost} {} but key `{key}` has {allowance} per minute in all, so it can never fit; send less (fewer or smaller images, a lower max_tokens)",
        kind.as_str()
    )]
    NeverFits {
        kind: LimitKind,
        cost: u64,
        allowance: u32,
        key: Arc<str>,
    },

    /// The key already has `max_concurrent` requests in flight.
    #[error(
        "key `{key}` already has {max} requests in flight (its max_concurrent); wait for one to finish"
    )]
    TooManyConcurrent { key: Arc<str>, max: u32 },

    /// The gateway is at `server.max_concurrent_requests`.
    #[error(
        "the gateway is at its limit of {max} requests in flight (server.max_concurrent_requests); retry shortly"
    )]
    Overloaded { max: u32 },

    /// Redis is unreachable and `rate_limits.on_backend_error = "deny"`.
    #[error(
        "the rate-limit backend cannot be reached and this gateway denies requests until it can; retry shortly"
    )]
    LimitBackendUnavailable,

    /// The path is not one the gateway serves.
    #[error(
        "no route for `{path}`; this gateway serves POST /v1/chat/completions, POST /gateway/inspect, GET /v1/models, GET /healthz and GET /readyz"
    )]
    RouteNotFound { path: String },

    /// The path exists but not for this method.
    #[error("`{path}` does not accept {method}; use {allowed}")]
    MethodNotAllowed {
        path: String,
        method: String,
        allowed: &'static str,
    },

    /// The upstream could not be reached or broke the exchange before sending headers.
    #[error(
        "the upstream `{upstream}` could not be reached ({}); retry later, and check the gateway's [[upstreams]] configuration if it persists",
        match reason { UpstreamFailure::Connect => "connection failed", UpstreamFailure::Protocol => "connection closed before a response" }
    )]
    UpstreamUnavailable {
        upstream: Arc<str>,
        reason: UpstreamFailure,
    },

    /// The upstream's connection broke after the response began (reported in-band, as the
    /// last SSE event: the status line has already gone out).
    #[error(
        "the upstream `{upstream}` connection broke before the response was complete; the answer is truncated, retry the request"
    )]
    UpstreamCut { upstream: Arc<str> },

    /// The upstream sent no response headers within `first_byte_timeout_ms`.
    #[error(
        "the upstream `{upstream}` sent no response within {} ms (first_byte_timeout_ms); retry later or raise the timeout",
        after.as_millis()
    )]
    UpstreamTimeout { upstream: Arc<str>, after: Duration },

    /// The gateway is draining for shutdown and takes no new work.
    #[error("the gateway is shutting down; retry against another instance")]
    ShuttingDown,

    /// The gateway has not finished starting.
    #[error("the gateway is starting; retry in a moment")]
    Starting,

    /// Readiness requires an upstream answer and none came within the configured window.
    #[error(
        "no upstream has answered within server.readiness_upstream_window_secs; the gateway is not ready"
    )]
    UpstreamsSilent,

    /// A bug or an impossible state inside the gateway. Never caused by request content.
    #[error("internal gateway error: {0}")]
    Internal(&'static str),
}

/// The longest piece of client text (a model id, a path) an error message or log line
/// repeats.
const MAX_ECHO: usize = 200;

/// Client text cut to a bounded length with control characters replaced, so it is safe to
/// repeat in an error message or a log line. The one place client text is made echo-safe.
pub fn bounded(text: &str) -> String {
    // Nearly every text is short printable ASCII: a plain copy, without the walk per char.
    if text.len() <= MAX_ECHO && text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return text.to_owned();
    }
    let mut out: String = text
        .chars()
        .take(MAX_ECHO)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().nth(MAX_ECHO).is_some() {
        out.push('…');
    }
    out
}

impl GatewayError {
    /// 404 for a model id, echoing it bounded.
    pub fn model_not_found(model: &str) -> Self {
        Self::ModelNotFound {
            model: bounded(model),
        }
    }

    /// The OpenAI error body, `{"error":{"message","type","param","code"}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail {
                message: Cow::Owned(self.to_string()),
                kind: self.openai_type(),
                param: self.param(),
                code: self.code(),
            },
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| FALLBACK_JSON.to_vec())
    }

    /// The error as the last event of an SSE stream (`data: {...}\n\n`), which the OpenAI
    /// SDKs raise as an API error.
    pub fn to_sse_event(&self) -> Bytes {
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(&self.to_json());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The HTTP status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyNotJson { .. }
            | Self::BodyShape { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::BodyRead
            | Self::TooManyImages { .. }
            | Self::ContextLengthExceeded { .. } => StatusCode::BAD_REQUEST,
            Self::Image { failure, .. } => match failure.kind() {
                FailureKind::Url | FailureKind::Image => StatusCode::BAD_REQUEST,
                FailureKind::Gateway => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ModelNotFound { .. } | Self::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::MissingApiKey | Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::ModelNotPermitted { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::NeverFits { .. } | Self::TooManyConcurrent { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Overloaded { .. } | Self::LimitBackendUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamUnavailable { .. } | Self::UpstreamCut { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ShuttingDown | Self::Starting | Self::UpstreamsSilent => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `error.type`, as the official API uses it.
    pub fn openai_type(&self) -> &'static str {
        match self {
            Self::BodyNotJson { .. }
            | Self::BodyShape { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::BodyRead
            | Self::BodyTimeout { .. }
            | Self::BodyTooLarge { .. }
            | Self::TooManyImages { .. }
            | Self::ContextLengthExceeded { .. }
            | Self::ModelNotFound { .. }
            | Self::RouteNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::ModelNotPermitted { .. } => "invalid_request_error",
            Self::Image { failure, .. } => match failure.kind() {
                FailureKind::Url | FailureKind::Image => "invalid_request_error",
                FailureKind::Gateway => "server_error",
            },
            // OpenAI names the exhausted limit in `type`.
            Self::RateLimited { kind, .. } | Self::NeverFits { kind, .. } => kind.as_str(),
            Self::TooManyConcurrent { .. } => "requests",
            Self::Overloaded { .. }
            | Self::LimitBackendUnavailable
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamCut { .. }
            | Self::UpstreamTimeout { .. }
            | Self::ShuttingDown
            | Self::Starting
            | Self::UpstreamsSilent
            | Self::Internal(_) => "server_error",
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BodyNotJson { .. }
            | Self::BodyShape { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::BodyRead => "invalid_request",
            Self::BodyTimeout { .. } => "request_timeout",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::TooManyImages { .. } => "too_many_images",
            Self::Image { failure, .. } => match failure.kind() {
                FailureKind::Url => "invalid_image_url",
                FailureKind::Image => "invalid_image",
                FailureKind::Gateway => "image_processing_failed",
            },
            Self::ContextLengthExceeded { .. } => "context_length_exceeded",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::RouteNotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::MissingApiKey | Self::InvalidApiKey => "invalid_api_key",
            Self::ModelNotPermitted { .. } => "model_not_permitted",
            Self::RateLimited { .. } | Self::NeverFits { .. } | Self::TooManyConcurrent { .. } => {
                "rate_limit_exceeded"
            }
            Self::Overloaded { .. } | Self::LimitBackendUnavailable => "overloaded",
            Self::UpstreamUnavailable { .. } | Self::UpstreamCut { .. } => "upstream_unavailable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::Starting => "starting",
            Self::UpstreamsSilent => "upstream_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The request field at fault, if one is.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::MissingField { field } | Self::InvalidField { field, .. } => Some(field),
            Self::ModelNotFound { .. } | Self::ModelNotPermitted { .. } => Some("model"),
            Self::TooManyImages { .. }
            | Self::Image { .. }
            | Self::ContextLengthExceeded { .. } => Some("messages"),
            Self::BodyNotJson { .. }
            | Self::BodyShape { .. }
            | Self::BodyRead
            | Self::BodyTimeout { .. }
            | Self::BodyTooLarge { .. }
            | Self::RouteNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::RateLimited { .. }
            | Self::NeverFits { .. }
            | Self::TooManyConcurrent { .. }
            | Self::Overloaded { .. }
            | Self::LimitBackendUnavailable
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamCut { .. }
            | Self::UpstreamTimeout { .. }
            | Self::ShuttingDown
            | Self::Starting
            | Self::UpstreamsSilent
            | Self::Internal(_) => None,
        }
    }

    /// How long the client should wait before retrying, when the gateway knows
    /// (`retry-after`, `retry-after-ms`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::TooManyConcurrent { .. }
            | Self::Overloaded { .. }
            | Self::LimitBackendUnavailable => Some(Duration::from_secs(1)),
            Self::BodyNotJson { .. }
            | Self::BodyShape { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::BodyRead
            | Self::BodyTimeout { .. }
            | Self::BodyTooLarge { .. }
            | Self::ModelNotFound { .. }
            | Self::TooManyImages { .. }
            | Self::Image { .. }
            | Self::ContextLengthExceeded { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::ModelNotPermitted { .. }
            | Self::NeverFits { .. }
            | Self::RouteNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamCut { .. }
            | Self::UpstreamTimeout { .. }
            | Self::ShuttingDown
            | Self::Starting
            | Self::UpstreamsSilent
            | Self::Internal(_) => None,
        }
    }

    /// Whether retrying can ever help (`x-should-retry`, which the OpenAI SDKs obey), when
    /// the status alone would mislead them.
    pub fn should_retry(&self) -> Option<bool> {
        match self {
            Self::NeverFits { .. } => Some(false),
            Self::BodyNotJson { .. }
            | Self::BodyShape { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::BodyRead
            | Self::BodyTimeout { .. }
            | Self::BodyTooLarge { .. }
            | Self::ModelNotFound { .. }
            | Self::TooManyImages { .. }
            | Self::Image { .. }
            | Self::ContextLengthExceeded { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::ModelNotPermitted { .. }
            | Self::RouteNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamCut { .. }
            | Self::UpstreamTimeout { .. }
            | Self::ShuttingDown
            | Self::Starting
            | Self::UpstreamsSilent
            | Self::Internal(_)
            | Self::RateLimited { .. }
            | Self::TooManyConcurrent { .. }
            | Self::Overloaded { .. }
            | Self::LimitBackendUnavailable => None,
        }
    }

    /// Whose fault it was.
    pub fn fault(&self) -> Fault {
        match self {
            Self::BodyNotJson { .. }
            | Self::BodyShape { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::BodyRead
            | Self::BodyTimeout { .. }
            | Self::BodyTooLarge { .. }
            | Self::TooManyImages { .. }
            | Self::ContextLengthExceeded { .. }
            | Self::ModelNotFound { .. }
            | Self::RouteNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::ModelNotPermitted { .. }
            | Self::RateLimited { .. }
            | Self::NeverFits { .. }
            | Self::TooManyConcurrent { .. } => Fault::Client,
            Self::Image { failure, .. } => match failure.kind() {
                FailureKind::Url | FailureKind::Image => Fault::Client,
                FailureKind::Gateway => Fault::Gateway,
            },
            Self::UpstreamUnavailable { .. }
            | Self::UpstreamCut { .. }
            | Self::UpstreamTimeout { .. } => Fault::Upstream,
            Self::UpstreamsSilent => Fault::Upstream,
            Self::ShuttingDown
            | Self::Starting
            | Self::Overloaded { .. }
            | Self::LimitBackendUnavailable
            | Self::Internal(_) => Fault::Gateway,
        }
    }

    /// How loudly to log it: client mistakes are routine, upstream trouble is a warning,
    /// our own failures are errors.
    pub fn log_level(&self) -> tracing::Level {
        match self.fault() {
            Fault::Client => tracing::Level::DEBUG,
            Fault::Upstream => tracing::Level::WARN,
            Fault::Gateway => match self {
                Self::ShuttingDown | Self::Starting => tracing::Level::INFO,
                // Counted in metrics; an outage is logged once by the backend itself.
                Self::Overloaded { .. } | Self::LimitBackendUnavailable => tracing::Level::DEBUG,
                _ => tracing::Level::ERROR,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_follow_the_contract() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (
                GatewayError::MissingField { field: "model" },
                400,
                "invalid_request",
            ),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                413,
                "request_too_large",
            ),
            (
                GatewayError::ModelNotFound { model: "x".into() },
                404,
                "model_not_found",
            ),
            (
                GatewayError::RouteNotFound { path: "/x".into() },
                404,
                "not_found",
            ),
            (
                GatewayError::UpstreamUnavailable {
                    upstream: "u".into(),
                    reason: UpstreamFailure::Connect,
                },
                502,
                "upstream_unavailable",
            ),
            (
                GatewayError::UpstreamTimeout {
                    upstream: "u".into(),
                    after: Duration::from_millis(5),
                },
                504,
                "upstream_timeout",
            ),
            (GatewayError::ShuttingDown, 503, "shutting_down"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn echoed_client_text_is_bounded_and_single_line() {
        let long = "m".repeat(10_000);
        let e = GatewayError::model_not_found(&long);
        assert!(e.to_string().len() < 600, "{}", e.to_string().len());
        let forged = bounded("a\nlevel=ERROR forged\r\t");
        assert!(!forged.contains(['\n', '\r', '\t']), "{forged}");
    }

    #[test]
    fn messages_name_the_field_and_limit() {
        let e = GatewayError::BodyTooLarge { limit: 1024 };
        assert!(e.to_string().contains("1024 bytes"));
        assert!(e.to_string().contains("max_body_bytes"));
        let e = GatewayError::MissingField { field: "messages" };
        assert_eq!(e.param(), Some("messages"));
    }
}
