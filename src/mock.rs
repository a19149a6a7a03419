//! The built-in stand-in upstream (`vision-gateway mock-upstream`): an OpenAI-compatible
//! chat completion server for the default run, demos, tests and benchmarks. It is clearly
//! not a model: every answer says so and describes what it received (messages, images,
//! their media types and pixel sizes).
//!
//! Shapes for benchmarks come from [`MockOptions`] (chunk count, delay between chunks). A
//! request may override them, and inject faults, with a `"mock"` object in its body, which
//! the gateway forwards untouched like any unknown field:
//! `{"chunks": N, "chunk_delay_ms": D, "delay_ms": D, "status": 429, "cut_after_chunks": K}`.
//! Responses carry `x-mock-request-sha256` (of the exact body received) and
//! `x-mock-authorization-sha256`, so tests can check bytes and keys without echoing secrets.
//!
//! Never used when an upstream is configured.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::Service;

/// Largest body the stand-in reads.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Default shapes of the stand-in's answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockOptions {
    /// Content chunks per streamed answer; 0 = one per word.
    pub chunks: usize,
    /// Pause between streamed chunks.
    pub chunk_delay: Duration,
}

/// The stand-in upstream as a tower service.
#[derive(Debug, Clone)]
pub struct MockUpstream {
    opts: MockOptions,
    counter: Arc<AtomicU64>,
}

impl MockUpstream {
    /// A stand-in with the given default shapes.
    pub fn new(opts: MockOptions) -> Self {
        Self {
            opts,
            counter: Arc::new(AtomicU64::new(0)),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<MockBody>, Infallible>> + Send>>;

impl<B> Service<Request<B>> for MockUpstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<MockBody>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let opts = self.opts;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { Ok(handle(req, opts, n).await) })
    }
}

async fn handle<B>(req: Request<B>, opts: MockOptions, n: u64) -> Response<MockBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object":"list","data":[{"id":"mock-vision","object":"model","created":0,"owned_by":"vision-gateway-mock"}]}),
        ),
        (&Method::POST, "/v1/chat/completions") => chat(req, opts, n).await,
        _ => error_response(
            StatusCode::NOT_FOUND,
            "no such route on the stand-in upstream",
            "not_found",
        ),
    }
}

async fn chat<B>(req: Request<B>, opts: MockOptions, n: u64) -> Response<MockBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let auth_digest = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| hex(&Sha256::digest(v.as_bytes())));
    let raw = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "body unreadable or too large",
                "invalid_request",
            );
        }
    };
    let body_digest = hex(&Sha256::digest(&raw));
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "body is not JSON",
            "invalid_request",
        );
    };
    let ctl = Control::from(&body, opts);
    if !ctl.delay.is_zero() {
        tokio::time::sleep(ctl.delay).await;
    }
    let mut res = if let Some(status) = ctl.status {
        let mut r = error_response(
            status,
            "fault injected by the stand-in upstream",
            "mock_fault",
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
            r.headers_mut().insert(
                "x-ratelimit-remaining-requests",
                HeaderValue::from_static("0"),
            );
        }
        r
    } else {
        answer(&body, raw.len(), &ctl, n)
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::try_from(body_digest) {
        h.insert("x-mock-request-sha256", v);
    }
    if let Some(Ok(v)) = auth_digest.map(HeaderValue::try_from) {
        h.insert("x-mock-authorization-sha256", v);
    }
    h.insert("x-request-id", HeaderValue::from_static("mock-upstream-id"));
    res
}

/// The most content chunks a request may ask for.
const MAX_MOCK_CHUNKS: u64 = 100_000;
/// The longest delay a request may ask for.
const MAX_MOCK_DELAY_MS: u64 = 600_000;

/// Per-request shape and faults, from the body's `"mock"` object over the defaults.
struct Control {
    chunks: usize,
    chunk_delay: Duration,
    delay: Duration,
    status: Option<StatusCode>,
    cut_after: Option<usize>,
}

impl Control {
    fn from(body: &Value, opts: MockOptions) -> Self {
        let m = &body["mock"];
        let num = |k: &str| m[k].as_u64();
        // Clamped: the stand-in must not be a way to exhaust the host it runs on.
        let ms = |v: u64| Duration::from_millis(v.min(MAX_MOCK_DELAY_MS));
        Self {
            chunks: num("chunks").map_or(opts.chunks, |v| {
                usize::try_from(v.min(MAX_MOCK_CHUNKS)).unwrap_or(0)
            }),
            chunk_delay: num("chunk_delay_ms").map_or(opts.chunk_delay, ms),
            delay: num("delay_ms").map_or(Duration::ZERO, ms),
            status: num("status")
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok()),
            cut_after: num("cut_after_chunks").and_then(|v| usize::try_from(v).ok()),
        }
    }
}

/// What the stand-in says: a description of the request.
fn describe(body: &Value) -> String {
    let messages = body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut images = Vec::new();
    let mut last_text = String::new();
    for m in messages {
        match &m["content"] {
            Value::String(s) => last_text.clone_from(s),
            Value::Array(parts) => {
                for p in parts {
                    match p["type"].as_str() {
                        Some("text") => {
                            last_text = p["text"].as_str().unwrap_or_default().to_owned()
                        }
                        Some("image_url") => {
                            let url = p["image_url"]["url"]
                                .as_str()
                                .or(p["image_url"].as_str())
                                .unwrap_or_default();
                            images.push(describe_image(url));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let short: String = last_text.chars().take(200).collect();
    let listed = if images.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = images
            .iter()
            .enumerate()
            .map(|(i, d)| format!("#{} {d}", i + 1))
            .collect();
        format!(": {}", list.join("; "))
    };
    format!(
        "This is vision-gateway's built-in stand-in upstream, not a model. I received {} message(s) with {} image(s){listed}. Your last text was: \"{short}\".",
        messages.len(),
        images.len(),
    )
}

fn describe_image(url: &str) -> String {
    let Some(rest) = url.strip_prefix("data:") else {
        return "a remote URL (not fetched)".to_owned();
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return "a malformed data URI".to_owned();
    };
    let media = meta.split(';').next().unwrap_or_default();
    match base64::engine::general_purpose::STANDARD.decode(data) {
        Ok(bytes) => match imagesize::blob_size(&bytes) {
            Ok(size) => format!(
                "{media} {}x{} ({} bytes)",
                size.width,
                size.height,
                bytes.len()
            ),
            Err(_) => format!("{media} of unknown size ({} bytes)", bytes.len()),
        },
        Err(_) => format!("{media} with invalid base64"),
    }
}

fn answer(body: &Value, body_len: usize, ctl: &Control, n: u64) -> Response<MockBody> {
    let text = describe(body);
    let model = body["model"].as_str().unwrap_or("mock-vision").to_owned();
    let id = format!("chatcmpl-mock-{n}");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let pieces = split(&text, ctl.chunks);
    let usage = json!({
        "prompt_tokens": body_len / 4,
        "completion_tokens": pieces.len(),
        "total_tokens": body_len / 4 + pieces.len(),
    });
    if body["stream"].as_bool() != Some(true) {
        let v = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        });
        let mut res = json_response(StatusCode::OK, &v);
        if ctl.cut_after.is_some() {
            // Half the JSON, then the connection breaks.
            let bytes = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
            let half = bytes.slice(..bytes.len() / 2);
            *res.body_mut() = MockBody::events(VecDeque::from([half]), Duration::ZERO, Some(1));
        }
        return res;
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse(&c)
    };
    let mut events = VecDeque::with_capacity(pieces.len() + 4);
    events.push_back(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    for p in &pieces {
        events.push_back(chunk(json!({"content": p}), Value::Null));
    }
    events.push_back(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push_back(sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        })));
    }
    events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    let mut res = Response::new(MockBody::events(events, ctl.chunk_delay, ctl.cut_after));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// Splits the answer into `chunks` content pieces (0 = one per word). More chunks than words
/// repeat the words, for long benchmark streams.
fn split(text: &str, chunks: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    if chunks == 0 || words.is_empty() {
        return words.into_iter().map(str::to_owned).collect();
    }
    if chunks >= words.len() {
        return (0..chunks)
            .map(|i| words[i % words.len()].to_owned())
            .collect();
    }
    (0..chunks)
        .map(|i| words[i * words.len() / chunks..(i + 1) * words.len() / chunks].concat())
        .collect()
}

fn sse(v: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn json_response(status: StatusCode, v: &Value) -> Response<MockBody> {
    let bytes = Bytes::from(serde_json::to_vec(v).unwrap_or_default());
    let mut res = Response::new(MockBody::events(
        VecDeque::from([bytes]),
        Duration::ZERO,
        None,
    ));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn error_response(status: StatusCode, message: &str, code: &str) -> Response<MockBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    )
}

/// The stand-in's body: queued events, released one per `delay`, optionally cut (the
/// connection is aborted) after `cut_after` of them.
pub struct MockBody {
    events: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: usize,
    cut_after: Option<usize>,
}

impl MockBody {
    fn events(events: VecDeque<Bytes>, delay: Duration, cut_after: Option<usize>) -> Self {
        Self {
            events,
            delay,
            sleep: None,
            sent: 0,
            cut_after,
        }
    }
}

/// How long a cut waits so the frames before it reach the wire.
const CUT_FLUSH: Duration = Duration::from_millis(20);

/// The error a cut stream ends with.
#[derive(Debug, thiserror::Error)]
#[error("stand-in upstream cut the stream on purpose")]
pub struct Cut;

impl Body for MockBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = self.get_mut();
        if this.cut_after == Some(this.sent) {
            // Let hyper flush the frames before the cut (it writes on Pending), then abort.
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_FLUSH)));
            ready!(sleep.as_mut().poll(cx));
            return Poll::Ready(Some(Err(Cut)));
        }
        if this.events.is_empty() {
            return Poll::Ready(None);
        }
        if this.sent > 0 && !this.delay.is_zero() {
            let delay = this.delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        this.sent += 1;
        Poll::Ready(this.events.pop_front().map(|e| Ok(Frame::data(e))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_empty() && self.cut_after.is_none_or(|k| k > self.sent)
    }

    fn size_hint(&self) -> SizeHint {
        if self.events.len() == 1 && self.cut_after.is_none() {
            let len = self.events.front().map_or(0, |e| e.len() as u64);
            return SizeHint::with_exact(len);
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_makes_the_requested_number_of_chunks() {
        let t = "one two three four five";
        assert_eq!(split(t, 0).len(), 5);
        assert_eq!(split(t, 2).concat(), t);
        assert_eq!(split(t, 2).len(), 2);
        assert_eq!(split(t, 12).len(), 12);
    }

    #[test]
    fn describes_images_with_media_type_and_size() {
        // A 1x1 PNG.
        let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
        let body = json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"what is it?"},
            {"type":"image_url","image_url":{"url": format!("data:image/png;base64,{png}")}},
            {"type":"image_url","image_url":{"url":"https://example.com/a.jpg"}}
        ]}]});
        let d = describe(&body);
        assert!(d.contains("2 image(s)"), "{d}");
        assert!(d.contains("image/png 1x1"), "{d}");
        assert!(d.contains("remote URL"), "{d}");
        assert!(d.contains("what is it?"), "{d}");
    }
}
