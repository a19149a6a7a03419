//! The tower layers, one file each, listed here in the order a request meets them.
//!
//! Every route:
//! 1. [`request_id`]: keeps a sane client `x-request-id` or makes one; creates the
//!    per-request context; stamps the id on every response. Outermost, so even errors and
//!    the access log carry it.
//! - [`rate_limit_headers`]: `x-ratelimit-*` on every response to a key whose limits were
//!   checked (only built when `[[keys]]` exist), errors included.
//! 2. [`telemetry`]: the access-log line and the request metrics, recorded once when the
//!    response body ends, from the facts inner layers left in the request context. Wraps the
//!    body, never copies it.
//! 3. [`head`]: HEAD gets the headers of a GET and no body (hyper's HTTP/2 server would
//!    send the body).
//! 4. [`error_response`]: the one place a `GatewayError` becomes an OpenAI-style JSON
//!    response. Below it, everything returns `Result<_, GatewayError>`.
//! 5. `routes::Router`: health, readiness, models, metrics, 404/405, and the chat stack below.
//!
//! `POST /v1/chat/completions` (and, not charged, `POST /gateway/inspect`):
//! - [`admission`]: 401 `invalid_api_key`, 503 `overloaded` at `server.max_concurrent_requests`,
//!   429 for the key's `max_concurrent` and `requests_per_minute`; before the body is read.
//!
//! Then checkpoints (each takes a request of one type and returns the next type or an error;
//! none builds a response):
//! 6. [`read_body`]: 413 above `server.max_body_bytes` (from Content-Length before reading,
//!    and while reading); `Incoming` → `Bytes`.
//! 7. [`parse_chat`]: 400 `invalid_request` for bad JSON or missing/ill-typed `model` and
//!    `messages`; `Bytes` → `ParsedChat`. Cheap, so it runs before anything costly.
//! 8. [`resolve_model`]: 404 `model_not_found`; picks the route and plans the `model`
//!    rewrite; `ParsedChat` → `ChatRequest`. Then [`permit_model`]: 403 `model_not_permitted`.
//! 9. [`count_images`]: 400 for malformed content parts, 400 `too_many_images` above the
//!    model's `max_images`, before any image work; `ChatRequest` → `ScannedChat`.
//! 10. [`prepare_images`]: 400 `invalid_image_url` / `invalid_image`; fetches, checks and
//!    downscales every image and plans the edits that inline them; `ScannedChat` →
//!    `VisionChat`.
//! 11. [`context_budget`]: 400 `context_length_exceeded` when text + images + `max_tokens`
//!    exceed the model's `context_window`; `VisionChat` → `ReadyChat`. Then [`token_limit`]:
//!    429 over the key's `tokens_per_minute`, charged with the same count.
//! 12. `upstream::forward::Forward`: sends upstream; 502 / 504; streams the answer back.

pub mod admission;
pub mod checkpoint;
pub mod context_budget;
pub mod count_images;
pub mod error_response;
pub mod head;
pub mod parse_chat;
pub mod permit_model;
pub mod prepare_images;
pub mod rate_limit_headers;
pub mod read_body;
pub mod request_id;
pub mod resolve_model;
pub mod telemetry;
pub mod token_limit;
