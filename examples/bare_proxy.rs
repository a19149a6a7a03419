//! The floor of the gateway's design, for load comparisons: the same accept loop, worker
//! threads, HTTP/1.1 upstream pool and allocator, and none of the layers (no id, no checks,
//! no parse, no metrics). Requests are forwarded as they come, hop-by-hop headers dropped.
//! What the gateway costs above this is the cost of its own work.
//!
//! Takes the gateway's arguments, so the load scripts can run it as a gateway:
//! `bare_proxy --config FILE --listen ADDR` (the first upstream's `base_url` is used).
//! Run: `cargo build --release --example bare_proxy`, then
//! `bash benches/load/interleaved.sh gateway=target/release/vision-gateway bare=target/release/examples/bare_proxy`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use vision_gateway::config::RawConfig;
use vision_gateway::headers::strip_hop_by_hop;
use vision_gateway::health::Readiness;
use vision_gateway::server::{self, Workers};
use vision_gateway::upstream::UpstreamIncoming;
use vision_gateway::upstream::client::UpstreamClient;
use vision_gateway::upstream::pool::Http1Pool;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = Either<UpstreamIncoming, Full<Bytes>>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut config, mut listen) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--listen" => listen = args.next(),
            _ => return Err(format!("unknown argument {arg}").into()),
        }
    }
    let (Some(config), Some(listen)) = (config, listen) else {
        return Err("usage: bare_proxy --config FILE --listen ADDR".into());
    };
    let raw = RawConfig::from_file(&config)?;
    let base: http::Uri = raw
        .upstreams
        .first()
        .ok_or("the config names no upstream")?
        .base_url
        .parse()?;
    let origin = Arc::<str>::from(format!(
        "{}://{}",
        base.scheme_str().unwrap_or("http"),
        base.authority().ok_or("the base_url has no host")?
    ));
    let pool = Http1Pool::new(&base, Duration::from_secs(3)).ok_or("not an http:// upstream")?;
    let client = Arc::new(UpstreamClient::Http1(Arc::new(pool)));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let workers = Workers::start(std::thread::available_parallelism()?.get()).await?;
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let client = Arc::clone(&client);
        let origin = Arc::clone(&origin);
        async move { Ok::<_, Infallible>(proxy(&client, &origin, req).await) }
    });
    server::serve(
        listener,
        service,
        Readiness::default(),
        Duration::from_secs(1),
        workers,
        server::shutdown_signal(),
    )
    .await;
    Ok(())
}

async fn proxy(client: &UpstreamClient, origin: &str, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        return Response::new(Either::Right(Full::new(Bytes::new())));
    }
    let (mut parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Ok(uri) = format!("{origin}{}", parts.uri.path()).parse() else {
        return status(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    // The gateway's default first-byte timeout, kept by the pool's connections.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    match client
        .request(Request::from_parts(parts, Full::new(body)), deadline)
        .await
    {
        Ok(res) => res.map(Either::Left),
        Err(e) => {
            eprintln!("bare_proxy: upstream request failed: {e}");
            status(StatusCode::BAD_GATEWAY)
        }
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::new())));
    *res.status_mut() = code;
    res
}
