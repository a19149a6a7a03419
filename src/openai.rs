//! OpenAI wire types the gateway reads or writes. Serde only: no IO, no policy.
//!
//! The request is never deserialised whole. [`ChatRequestView`] borrows the few fields the
//! gateway needs as `RawValue`s pointing into the received bytes, so everything else is
//! forwarded exactly as the client wrote it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The fields of a chat completion request the gateway looks at. Unknown fields are skipped
/// without being allocated.
#[derive(Debug, Deserialize)]
pub struct ChatRequestView<'a> {
    #[serde(borrow, default)]
    pub model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub messages: Option<&'a RawValue>,
    /// Reserved completion tokens, for the context budget (the newer name wins).
    #[serde(borrow, default)]
    pub max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub max_completion_tokens: Option<&'a RawValue>,
}

/// `{"error": {...}}`, the body of every error the gateway makes.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

/// The inside of an OpenAI error body.
#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: std::borrow::Cow<'a, str>,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: &'a str,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<Model<'a>>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct Model<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'a str,
}
