//! Walks a request's `messages` once: where each `image_url` part's URL sits in the body (so
//! it can be replaced by a byte-range edit) and how much text there is (for the token
//! estimate). Nothing is copied or re-serialised: parts are borrowed `RawValue`s.
//!
//! Accepted shapes, as the OpenAI API and vLLM take them: `content` is a string, an array of
//! parts, or null/absent (assistant tool calls); a part is `{"type":"text","text":..}`,
//! `{"type":"image_url","image_url":{"url":..,"detail":..}}` (a bare string `image_url` is
//! tolerated), or any other typed part, which is forwarded untouched.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::chat::span_in;
use crate::error::GatewayError;
use crate::tokens::{TextCounter, TextTokenizer};

/// One `image_url` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Where the URL's JSON string (quotes included) sits in the body.
    pub url_span: Range<usize>,
    /// `messages[message].content[part]`, for error messages.
    pub message: usize,
    pub part: usize,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "messages[{}].content[{}]", self.message, self.part)
    }
}

/// What the messages hold.
#[derive(Debug, Clone, Default)]
pub struct MessageScan {
    /// Every `image_url` part, in request order (the index used in error messages).
    pub images: Vec<ImageRef>,
    /// Estimated tokens of all text, roles and per-message framing.
    pub text_tokens: u64,
}

#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PartView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ImageUrlView<'a> {
    #[serde(borrow)]
    url: &'a RawValue,
}

/// False only when the messages' bytes cannot hold a media part: no `_url"` key or type
/// (`image_url`, `video_url`, `audio_url`), no `"input_image"`, and no `\u` escape (which
/// could spell either). A cheap byte search that lets a request without images skip the walk:
/// one pass for the bytes every marker contains (`_` or `\`), each hit checked in place,
/// where a search per marker took three passes.
pub fn might_carry_media(messages: &[u8]) -> bool {
    memchr::memchr2_iter(b'_', b'\\', messages).any(|i| {
        let (before, rest) = messages.split_at(i);
        if rest.starts_with(b"\\") {
            rest.starts_with(b"\\u")
        } else {
            rest.starts_with(b"_url\"")
                || (rest.starts_with(b"_image\"") && before.ends_with(b"\"input"))
        }
    })
}

fn shape(expected: &'static str) -> GatewayError {
    GatewayError::InvalidField {
        field: "messages",
        expected,
    }
}

/// Scans the `messages` array found at `span` of `body`, counting text with the model's
/// tokenizer when it has one.
pub fn scan(
    body: &[u8],
    span: Range<usize>,
    tokenizer: Option<&TextTokenizer>,
) -> Result<MessageScan, GatewayError> {
    let text = body
        .get(span)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(GatewayError::Internal("messages span outside the body"))?;
    let list: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|_| shape("must be an array of messages"))?;
    let mut out = MessageScan::default();
    let mut counter = TextCounter::new(tokenizer);
    for (index, message) in list.into_iter().enumerate() {
        let m: MessageView<'_> = serde_json::from_str(message.get())
            .map_err(|_| shape("must be an array of message objects with a `role`"))?;
        counter.message();
        if let Some(role) = &m.role {
            counter.add(role);
        }
        if let Some(name) = &m.name {
            counter.add(name);
        }
        let Some(content) = m.content else { continue };
        match content.get().as_bytes().first() {
            Some(b'"') => {
                let s: Cow<'_, str> = serde_json::from_str(content.get())
                    .map_err(|_| shape("has a message whose `content` is not a valid string"))?;
                counter.add(&s);
            }
            Some(b'[') => {
                let parts: Vec<&RawValue> = serde_json::from_str(content.get())
                    .map_err(|_| shape("has a message whose `content` is not an array"))?;
                for (part_index, part) in parts.into_iter().enumerate() {
                    let at = (index, part_index);
                    scan_part(body, part, at, &mut out, &mut counter)?;
                }
            }
            Some(b'n') => {}
            _ => {
                return Err(shape(
                    "has a message whose `content` is neither a string nor an array of parts",
                ));
            }
        }
    }
    out.text_tokens = counter.total();
    Ok(out)
}

fn scan_part(
    body: &[u8],
    part: &RawValue,
    (message, part_index): (usize, usize),
    out: &mut MessageScan,
    counter: &mut TextCounter,
) -> Result<(), GatewayError> {
    let p: PartView<'_> = serde_json::from_str(part.get())
        .map_err(|_| shape("has a content part that is not an object with a string `type`"))?;
    match p.kind.as_ref() {
        "text" => {
            let text = p
                .text
                .ok_or_else(|| shape("has a `text` part without a `text` string"))?;
            counter.add(&text);
        }
        // `input_image` is the Responses-API spelling some servers (vLLM) also accept here.
        "image_url" | "input_image" => {
            let value = p
                .image_url
                .ok_or_else(|| shape("has an `image_url` part without `image_url`"))?;
            let url = if value.get().starts_with('"') {
                value
            } else {
                let view: ImageUrlView<'_> = serde_json::from_str(value.get())
                    .map_err(|_| shape("has an `image_url` part without an `image_url.url`"))?;
                view.url
            };
            if !url.get().starts_with('"') {
                return Err(shape("has an `image_url.url` that is not a string"));
            }
            let url_span =
                span_in(body, url).ok_or(GatewayError::Internal("image URL outside the body"))?;
            out.images.push(ImageRef {
                url_span,
                message,
                part: part_index,
            });
        }
        // The upstream would fetch these itself: from inside the network the gateway guards.
        "video_url" | "audio_url" | "input_video" => {
            return Err(shape(
                "has a video_url or audio_url part; this gateway sends only images, inline, so the upstream never fetches anything",
            ));
        }
        // Text-like and inline parts (input_audio, file, refusal, ...) pass untouched.
        _ => {}
    }
    Ok(())
}

/// The URL of an image part as text (JSON escapes decoded; borrowed when there are none).
pub fn image_url<'a>(body: &'a [u8], span: &Range<usize>) -> Result<Cow<'a, str>, GatewayError> {
    let raw = body
        .get(span.clone())
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(GatewayError::Internal("image URL span outside the body"))?;
    serde_json::from_str(raw).map_err(|_| GatewayError::Internal("image URL is not a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_str(messages: &str) -> Result<MessageScan, GatewayError> {
        scan(messages.as_bytes(), 0..messages.len(), None)
    }

    #[test]
    fn finds_image_urls_across_messages_with_exact_spans() {
        let m = r#"[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[
                {"type":"text","text":"what is this?"},
                {"type":"image_url","image_url":{"detail":"high","url":"https://a/x.png"}}
            ]},
            {"role":"assistant","content":null,"tool_calls":[]},
            {"role":"user","content":[{"type":"image_url","image_url":"data:image/png;base64,AA=="},
                {"type":"input_audio","input_audio":{}}]},
            {"role":"user","content":[{"type":"input_image","image_url":"https://b/y.png"}]}
        ]"#;
        let s = scan_str(m).map_err(|e| e.to_string());
        let Ok(s) = s else { panic!("{s:?}") };
        assert_eq!(s.images.len(), 3, "input_image parts are images too");
        assert_eq!(s.images[1].to_string(), "messages[3].content[0]");
        assert_eq!(&m[s.images[0].url_span.clone()], r#""https://a/x.png""#);
        assert_eq!(
            &m[s.images[1].url_span.clone()],
            r#""data:image/png;base64,AA==""#
        );
        assert_eq!(
            image_url(m.as_bytes(), &s.images[0].url_span)
                .ok()
                .as_deref(),
            Some("https://a/x.png")
        );
        assert!(s.text_tokens > 0);
    }

    #[test]
    fn only_bytes_without_media_markers_skip_the_walk() {
        for (m, media) in [
            (
                r#"[{"role":"user","content":"what is in this image?"}]"#,
                false,
            ),
            (
                r#"[{"role":"user","content":[{"type":"text","text":"an image url"}]}]"#,
                false,
            ),
            (r#"[{"type":"image_url","image_url":{"url":"x"}}]"#, true),
            (r#"[{"type":"video_url"}]"#, true),
            (r#"[{"type":"input_image"}]"#, true),
            (r#"[{"type":"image\u005furl"}]"#, true),
        ] {
            assert_eq!(might_carry_media(m.as_bytes()), media, "{m}");
        }
    }

    /// The one-pass search finds exactly what a search for each marker finds.
    fn any_marker(m: &[u8]) -> bool {
        [&b"_url\""[..], b"\"input_image\"", b"\\u"]
            .iter()
            .any(|n| memchr::memmem::find(m, n).is_some())
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_search_agrees_with_a_search_per_marker(
            parts in proptest::collection::vec(
                proptest::sample::select(&[
                    "_", "\\", "u", "\"", "input", "image", "url", "_url", "_image",
                    "\"input", "\\n", "x", " ",
                ][..]),
                0..24,
            )
        ) {
            let m = parts.concat();
            proptest::prop_assert_eq!(might_carry_media(m.as_bytes()), any_marker(m.as_bytes()));
        }
    }

    #[test]
    fn escaped_urls_are_decoded() {
        let m = r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https:\/\/a\/b"}}]}]"#;
        let s = scan_str(m).map_err(|e| e.to_string());
        let Ok(s) = s else { panic!("{s:?}") };
        assert_eq!(
            image_url(m.as_bytes(), &s.images[0].url_span)
                .ok()
                .as_deref(),
            Some("https://a/b")
        );
    }

    #[test]
    fn malformed_parts_are_refused_with_param_messages() {
        for m in [
            r#"[3]"#,
            r#"[{"role":"user","content":5}]"#,
            r#"[{"role":"user","content":[{"text":"no type"}]}]"#,
            r#"[{"role":"user","content":[{"type":"text"}]}]"#,
            r#"[{"role":"user","content":[{"type":"image_url"}]}]"#,
            r#"[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]"#,
            r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":7}}]}]"#,
            r#"[{"role":"user","content":[{"type":"video_url","video_url":{"url":"http://x/v"}}]}]"#,
            r#"[{"role":"user","content":[{"type":"audio_url","audio_url":{"url":"http://x/a"}}]}]"#,
        ] {
            match scan_str(m) {
                Ok(s) => panic!("{m} should be refused, got {s:?}"),
                Err(e) => assert_eq!(e.param(), Some("messages"), "{m}: {e}"),
            }
        }
    }
}
