//! vision-gateway: a local gateway for OpenAI-compatible vision language models.
//!
//! `main.rs` parses the command line and calls [`run`]; tests and benchmarks call
//! [`app::build`] and [`server::serve`] directly. ARCHITECTURE.md maps the modules.

pub mod app;
pub mod body;
pub mod chat;
pub mod cli;
pub mod config;
pub mod context;
pub mod drain;
pub mod error;
pub mod headers;
pub mod health;
pub mod idle;
pub mod images;
pub mod inspect;
pub mod keys;
pub mod layer;
pub mod limits;
pub mod messages;
pub mod metrics;
pub mod mock;
pub mod models;
pub mod openai;
pub mod per_worker;
pub mod playground;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tokens;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{Config, MetricsExport};
use crate::mock::{MockOptions, MockUpstream};
use crate::server::Drained;

/// Why the gateway could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Build(#[from] app::BuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

/// Binds the configured address and serves until `shutdown`, then drains. Connections run on
/// one worker thread per available core (`server::Workers`).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Drained, RunError> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let workers = server::Workers::start(cores)
        .await
        .map_err(RunError::Workers)?;
    serve_with(listener, &config, workers, shutdown).await
}

/// Serves on an already bound listener, on the caller's runtime (tests bind `127.0.0.1:0`).
pub async fn serve_on(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Drained, RunError> {
    serve_with(listener, config, server::Workers::here(), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    config: &Config,
    workers: server::Workers,
    shutdown: impl Future<Output = ()>,
) -> Result<Drained, RunError> {
    let app = app::build(config)?;
    if let (MetricsExport::Separate(addr), Some(metrics)) = (config.server.metrics, &app.metrics) {
        let metrics_listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })?;
        tracing::info!(%addr, "metrics listening");
        tokio::spawn(server::serve(
            metrics_listener,
            routes::MetricsOnly(metrics.clone()),
            health::Readiness::default(),
            Duration::from_secs(1),
            server::Workers::here(),
            std::future::pending(),
        ));
    }
    if let Some(window) = config.server.readiness_upstream_window {
        let interval = (window / 3).max(Duration::from_secs(1));
        health::probe_upstreams(app.models.upstreams(), interval);
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "vision-gateway listening");
    }
    Ok(server::serve(
        listener,
        app.service,
        app.readiness,
        config.server.shutdown_grace,
        workers,
        shutdown,
    )
    .await)
}

/// Starts the built-in stand-in upstream on a loopback port in this process and returns its
/// address. It runs until the process exits.
pub async fn spawn_mock(addr: SocketAddr, opts: MockOptions) -> Result<SocketAddr, RunError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RunError::Bind { addr, source })?;
    tokio::spawn(server::serve(
        listener,
        MockUpstream::new(opts),
        health::Readiness::default(),
        Duration::from_secs(1),
        server::Workers::here(),
        std::future::pending(),
    ));
    Ok(bound)
}
