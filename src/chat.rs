//! The chat completion request as it moves through the layers, and the splicing that turns it
//! into the bytes sent upstream.
//!
//! Each stage has its own type, so a later stage cannot receive a request an earlier one has
//! not checked: `Bytes` (read, size-capped) → [`ParsedChat`] (valid JSON, `model` and
//! `messages` present) → [`ChatRequest`] (model resolved to a route). Edits are byte-range
//! replacements into the original body; unedited bytes are never re-serialised.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;

use crate::error::GatewayError;
use crate::images::pipeline::SentImage;
use crate::messages::MessageScan;
use crate::models::ModelRoute;
use crate::openai::ChatRequestView;
use crate::per_worker::Local;
use crate::tokens::TokenCount;

/// A body that parsed as a chat completion request.
#[derive(Debug)]
pub struct ParsedChat {
    /// The body exactly as received.
    pub raw: Bytes,
    /// The requested model id.
    pub model: String,
    /// Where the `model` value (including its quotes) sits in `raw`.
    pub model_span: Range<usize>,
    /// Where the `messages` array sits in `raw`.
    pub messages_span: Range<usize>,
    /// `max_completion_tokens`, else `max_tokens`, when a non-negative integer (anything else
    /// is left for the upstream to refuse).
    pub max_tokens: Option<u64>,
}

/// A parsed request whose model resolved to an upstream.
#[derive(Debug)]
pub struct ChatRequest {
    pub parsed: ParsedChat,
    pub route: Local<ModelRoute>,
    /// Byte-range replacements to apply before forwarding, in any order, non-overlapping.
    pub edits: Vec<Edit>,
}

/// A routed request whose messages were scanned and whose image count is within limits.
#[derive(Debug)]
pub struct ScannedChat {
    pub chat: ChatRequest,
    pub scan: MessageScan,
}

/// A request whose images are all inline and within the model's limits; the edits that
/// put them in the body are planned.
#[derive(Debug)]
pub struct VisionChat {
    pub chat: ChatRequest,
    pub text_tokens: u64,
    pub images: Vec<SentImage>,
}

/// A request that passed every check and may go upstream, with what it costs.
#[derive(Debug)]
pub struct ReadyChat {
    pub chat: ChatRequest,
    pub tokens: TokenCount,
}

/// Replace `range` of the original body with `with`.
#[derive(Debug, Clone)]
pub struct Edit {
    pub range: Range<usize>,
    pub with: Bytes,
}

impl ParsedChat {
    /// Parses the body just enough to find `model` and check `messages`.
    pub fn parse(raw: Bytes) -> Result<Self, GatewayError> {
        let text = std::str::from_utf8(&raw).map_err(|e| GatewayError::BodyNotJson {
            detail: format!("body is not UTF-8: {e}"),
        })?;
        // serde fills a struct from an array too (by position); only an object is a request.
        if !text.trim_start().starts_with('{') {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => GatewayError::BodyShape {
                    detail: "the body must be a JSON object".to_owned(),
                },
                Err(e) => GatewayError::BodyNotJson {
                    detail: e.to_string(),
                },
            });
        }
        let view: ChatRequestView<'_> =
            serde_json::from_str(text).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => GatewayError::BodyShape {
                    detail: e.to_string(),
                },
                _ => GatewayError::BodyNotJson {
                    detail: e.to_string(),
                },
            })?;
        let model_raw = view
            .model
            .ok_or(GatewayError::MissingField { field: "model" })?;
        let model: String =
            serde_json::from_str(model_raw.get()).map_err(|_| GatewayError::InvalidField {
                field: "model",
                expected: "must be a string naming a model, e.g. \"pixtral-12b-2409\"",
            })?;
        let messages = view
            .messages
            .ok_or(GatewayError::MissingField { field: "messages" })?;
        // A `RawValue` is valid JSON without surrounding whitespace, so its first byte says
        // whether it is an array, and the next non-blank byte whether that array is empty:
        // no second walk over the messages.
        let Some(inner) = messages.get().strip_prefix('[') else {
            return Err(GatewayError::InvalidField {
                field: "messages",
                expected: "must be an array of messages",
            });
        };
        if inner.trim_start().starts_with(']') {
            return Err(GatewayError::InvalidField {
                field: "messages",
                expected: "must contain at least one message",
            });
        }
        let model_span = span_in(&raw, model_raw)
            .ok_or(GatewayError::Internal("model value outside the body"))?;
        let messages_span = span_in(&raw, messages)
            .ok_or(GatewayError::Internal("messages value outside the body"))?;
        let max_tokens = [view.max_completion_tokens, view.max_tokens]
            .into_iter()
            .flatten()
            .find_map(|v| v.get().parse::<u64>().ok());
        Ok(Self {
            raw,
            model,
            model_span,
            messages_span,
            max_tokens,
        })
    }
}

/// Where a value borrowed from `body` sits in it. Pointer arithmetic on addresses only: no
/// unsafe, and `None` if the value did not come from `body`.
pub fn span_in(body: &[u8], value: &RawValue) -> Option<Range<usize>> {
    let start = value
        .get()
        .as_ptr()
        .addr()
        .checked_sub(body.as_ptr().addr())?;
    let end = start.checked_add(value.get().len())?;
    (end <= body.len()).then_some(start..end)
}

impl ChatRequest {
    /// The body to send upstream: the original bytes (a reference-count bump, no copy) when
    /// there is nothing to change, else the original with each edit spliced in.
    pub fn upstream_body(&self) -> Result<Bytes, GatewayError> {
        splice(&self.parsed.raw, &self.edits)
    }
}

/// Applies non-overlapping edits to `raw`.
pub fn splice(raw: &Bytes, edits: &[Edit]) -> Result<Bytes, GatewayError> {
    if edits.is_empty() {
        return Ok(raw.clone());
    }
    let mut order: Vec<&Edit> = edits.iter().collect();
    order.sort_by_key(|e| e.range.start);
    let added: usize = order.iter().map(|e| e.with.len()).sum();
    let mut out = BytesMut::with_capacity(raw.len() + added);
    let mut at = 0;
    for e in order {
        let before = raw.get(at..e.range.start).ok_or(GatewayError::Internal(
            "overlapping or out-of-range body edits",
        ))?;
        out.extend_from_slice(before);
        out.extend_from_slice(&e.with);
        at = e.range.end;
    }
    let rest = raw
        .get(at..)
        .ok_or(GatewayError::Internal("body edit past the end"))?;
    out.extend_from_slice(rest);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ParsedChat, GatewayError> {
        ParsedChat::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn finds_the_model_and_its_exact_span() {
        let body = r#"{ "temperature" : 0.7, "model":  "pix\u0074ral" , "messages":[{"role":"user","content":"hi"}]}"#;
        let p = parse(body).map_err(|e| e.to_string());
        let Ok(p) = p else { panic!("{p:?}") };
        assert_eq!(p.model, "pixtral");
        assert_eq!(&body[p.model_span.clone()], r#""pix\u0074ral""#);
    }

    #[test]
    fn splicing_changes_only_the_edited_range() {
        let body = Bytes::from_static(br#"{"model":"a","x":[1,  2],"messages":[{}]}"#);
        let p = match ParsedChat::parse(body.clone()) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let edit = Edit {
            range: p.model_span.clone(),
            with: Bytes::from_static(b"\"bb\""),
        };
        let out = splice(&body, &[edit]).map_err(|e| e.to_string());
        assert_eq!(
            out.as_deref().ok(),
            Some(&br#"{"model":"bb","x":[1,  2],"messages":[{}]}"#[..])
        );
        let same = splice(&body, &[]).map_err(|e| e.to_string());
        assert_eq!(
            same.ok().map(|b| b.as_ptr()),
            Some(body.as_ptr()),
            "no edits must not copy"
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            ("{", "invalid_request", None),
            ("[1]", "invalid_request", None),
            (r#"{"messages":[{}]}"#, "invalid_request", Some("model")),
            (
                r#"{"model":3,"messages":[{}]}"#,
                "invalid_request",
                Some("model"),
            ),
            (r#"{"model":"m"}"#, "invalid_request", Some("messages")),
            (
                r#"{"model":"m","messages":{}}"#,
                "invalid_request",
                Some("messages"),
            ),
            (
                r#"{"model":"m","messages":[]}"#,
                "invalid_request",
                Some("messages"),
            ),
            (
                r#"{"model":"m","model":"n","messages":[{}]}"#,
                "invalid_request",
                None,
            ),
        ];
        for (body, code, param) in cases {
            match parse(body) {
                Ok(p) => panic!("{body} should be refused, got {p:?}"),
                Err(e) => {
                    assert_eq!(e.code(), code, "{body}");
                    assert_eq!(e.param(), param, "{body}: {e}");
                }
            }
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let r = ParsedChat::parse(Bytes::from_static(b"{\"model\":\"\xff\",\"messages\":[1]}"));
        assert!(matches!(r, Err(GatewayError::BodyNotJson { .. })));
    }
}
