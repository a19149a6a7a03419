//! Proxy overhead, measured with criterion.
//!
//! - `parse`: the request view parse (`ParsedChat::parse`) on a small request and on one
//!   carrying a 1 MiB inline image: the only work the core does on every request body.
//! - `splice`: rewriting `"model"` in the 1 MiB body (one copy of the body).
//! - `round_trip`: one non-streaming chat completion over loopback on a kept-alive
//!   connection, straight to the built-in stand-in upstream (the baseline) and through the
//!   gateway, in the same run. The difference is what the gateway adds per request.
//! - `metrics`: the metric updates of one request, and one `/metrics` scrape.
//!
//! Run: `cargo bench --bench proxy`. Fixtures are generated here; nothing is downloaded.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "benchmark set-up")]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use vision_gateway::chat::{Edit, ParsedChat, splice};
use vision_gateway::config::{Config, RawConfig};
use vision_gateway::mock::MockOptions;

const SMALL: &str = r#"{"model":"pixtral-12b-2409","messages":[{"role":"system","content":"You are a careful assistant."},{"role":"user","content":[{"type":"text","text":"What is in this image? Answer in one sentence."}]}],"temperature":0.7,"max_tokens":256,"top_p":0.95}"#;

fn large() -> Bytes {
    // 1 MiB of base64-alphabet bytes stands in for an inline image.
    let b64: String = (0..1024 * 1024)
        .map(|i| (b'A' + (i % 26) as u8) as char)
        .collect();
    Bytes::from(format!(
        r#"{{"model":"pixtral-12b-2409","messages":[{{"role":"user","content":[{{"type":"text","text":"Describe it."}},{{"type":"image_url","image_url":{{"url":"data:image/jpeg;base64,{b64}"}}}}]}}],"max_tokens":300}}"#
    ))
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let small = Bytes::from_static(SMALL.as_bytes());
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("small_request", |b| {
        b.iter(|| ParsedChat::parse(black_box(small.clone())).unwrap())
    });
    let big = large();
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("1MiB_inline_image", |b| {
        b.iter(|| ParsedChat::parse(black_box(big.clone())).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("splice");
    let parsed = ParsedChat::parse(big.clone()).unwrap();
    let edit = [Edit {
        range: parsed.model_span.clone(),
        with: Bytes::from_static(b"\"mistral/pixtral-12b\""),
    }];
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("model_rewrite_1MiB", |b| {
        b.iter(|| splice(black_box(&big), black_box(&edit)).unwrap())
    });
    g.bench_function("no_edit_1MiB", |b| {
        b.iter(|| splice(black_box(&big), &[]).unwrap())
    });
    g.finish();
}

/// A kept-alive HTTP/1.1 connection to `addr`.
async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
) -> usize {
    sender.ready().await.unwrap();
    let req = Request::post("/v1/chat/completions")
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(SMALL.as_bytes())))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap().to_bytes().len()
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mock, gateway) = rt.block_on(async {
        let mock = vision_gateway::spawn_mock("127.0.0.1:0".parse().unwrap(), MockOptions::default())
            .await
            .unwrap();
        let toml = format!("[[upstreams]]\nname = \"mock\"\nbase_url = \"http://{mock}/v1\"\n[[models]]\nid = \"*\"\nupstream = \"mock\"\n");
        let config = Config::from_raw(&RawConfig::from_toml(&toml).unwrap(), None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        tokio::spawn(async move { vision_gateway::serve_on(listener, &config, std::future::pending()).await });
        (mock, gateway)
    });
    let mut g = c.benchmark_group("round_trip");
    g.measurement_time(Duration::from_secs(8));
    for (name, addr) in [("direct_to_upstream", mock), ("through_gateway", gateway)] {
        let mut sender = rt.block_on(connect(addr));
        let host = addr.to_string();
        g.bench_function(name, |b| b.iter(|| rt.block_on(one(&mut sender, &host))));
    }
    g.finish();
}

/// What metrics cost per request: the updates the telemetry layer makes for one proxied
/// chat completion (a counter, four histograms, the in-flight gauge twice), on one thread
/// (the cost of sharing cache lines across cores shows only under load).
fn metrics(c: &mut Criterion) {
    use std::sync::Arc;
    use std::time::Duration;
    use vision_gateway::metrics::{Finished, Metrics, Route, UpstreamTimes};
    let m = Metrics::new();
    let model: Arc<str> = Arc::from("pixtral-12b-2409");
    let upstream: Arc<str> = Arc::from("scaleway");
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record_one_request", |b| {
        b.iter(|| {
            m.request_started();
            m.request_finished(black_box(&Finished {
                route: Route::ChatCompletions,
                model: Some(&model),
                status: 200,
                duration: Duration::from_micros(12_300),
                overhead: Some(Duration::from_micros(40)),
                upstream: Some(UpstreamTimes {
                    name: &upstream,
                    headers: Some(Duration::from_micros(11_000)),
                    first_byte: Some(Duration::from_micros(11_900)),
                }),
            }));
        })
    });
    g.bench_function("encode_exposition", |b| b.iter(|| black_box(m.encode())));
    g.finish();
}

criterion_group!(benches, parse, metrics, round_trip);
criterion_main!(benches);
