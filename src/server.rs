//! The accept loop: HTTP/1.1 and HTTP/2 (auto-detected) on one listener, `TCP_NODELAY` on
//! every connection, and a graceful drain on shutdown.
//!
//! Drain: stop accepting, flip readiness to draining, let in-flight requests and streams
//! finish for up to the grace period (idle keep-alive connections close at once, HTTP/2 gets
//! GOAWAY), then return. This module knows nothing about chat completions.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::health::Readiness;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the grace period.
    Clean,
    /// The grace period ran out; the remaining connections were cut.
    GraceExpired,
}

/// Serves `service` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    readiness: Readiness,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> Drained
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        // Each stream may hold a request body of up to server.max_body_bytes in memory.
        .max_concurrent_streams(128)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    // Owns every connection task: dropping it (when this function returns) aborts whatever
    // outlived the grace period, even when the runtime itself lives on (tests, embedders).
    let mut connections = JoinSet::new();
    readiness.set_ready();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
                let conn = graceful.watch(conn.into_owned());
                // Reap finished connections so the set stays as small as the live ones.
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    readiness.set_draining();
    drop(listener);
    tracing::info!(
        grace_secs = grace.as_secs(),
        "draining: no longer accepting; waiting for in-flight requests"
    );
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("drained cleanly");
            Drained::Clean
        }
        Err(_) => {
            tracing::warn!(
                connections = connections.len(),
                "grace period expired with requests still in flight; cutting them"
            );
            connections.abort_all();
            Drained::GraceExpired
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
