//! The accept loop: HTTP/1.1 and HTTP/2 (auto-detected) on one listener, `TCP_NODELAY` on
//! every connection, connections dealt round-robin to [`Workers`], and a graceful drain on
//! shutdown.
//!
//! Workers: one single-threaded tokio runtime per core, each on its own thread, as nginx has
//! one event loop per worker process. A connection, and every task its requests spawn (the
//! upstream connection among them), stays on one thread: no work stealing, no cross-core
//! wake-ups, no allocation freed on another core. In interleaved load rounds on 2 cores it
//! raised throughput at c=32 from 0.86x to 0.95x nginx's against tokio's multi-threaded
//! scheduler (benches/load/interleaved.sh).
//!
//! Drain: stop accepting, flip readiness to draining, let in-flight requests and streams
//! finish for up to the grace period (idle keep-alive connections close at once, HTTP/2 gets
//! GOAWAY), then return. This module knows nothing about chat completions.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
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

/// The runtimes connections are served on.
#[derive(Debug)]
pub struct Workers {
    /// Empty: serve on the caller's runtime (tests, embedders, the stand-in upstream).
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with `Workers`: each worker thread then shuts its runtime down.
    _stops: Vec<oneshot::Sender<()>>,
}

thread_local! {
    /// 1.. on a worker thread, 0 elsewhere.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Which worker thread runs this: `1..=n` on one of [`Workers`]' threads, 0 on any other.
/// State kept per thread (the upstream pools' idle connections) is sharded by it, so a
/// connection is reused on the thread whose runtime drives it.
pub fn worker_index() -> usize {
    WORKER.with(std::cell::Cell::get)
}

/// How long a stopping worker waits for its blocking tasks (an image being resized).
const WORKER_STOP: Duration = Duration::from_secs(1);

impl Workers {
    /// Connections on the runtime that calls [`serve`].
    pub fn here() -> Self {
        Self {
            handles: Vec::new(),
            next: AtomicUsize::new(0),
            _stops: Vec::new(),
        }
    }

    /// `n` threads, each running a single-threaded runtime until `Workers` is dropped.
    pub async fn start(n: usize) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 0..n {
            let (handle_tx, handle_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("vg-worker-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(i + 1));
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                    rt.shutdown_timeout(WORKER_STOP);
                })?;
            let handle = handle_rx
                .await
                .map_err(|_| std::io::Error::other("worker thread ended while starting"))??;
            handles.push(handle);
            stops.push(stop_tx);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stops: stops,
        })
    }

    /// The runtime for the next connection, round-robin; `None` for the caller's own.
    fn pick(&self) -> Option<&Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles.get(i)
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then drains. Connections run on
/// `workers`, which stop when this returns.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    readiness: Readiness,
    grace: Duration,
    workers: Workers,
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
                // Reap finished connections so the set stays as small as the live ones.
                while connections.try_join_next().is_some() {}
                let builder = builder.clone();
                let service = TowerToHyperService::new(service.clone());
                let watcher = graceful.watcher();
                let serve_one = move |stream: TcpStream| async move {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                };
                match workers.pick() {
                    None => {
                        connections.spawn(serve_one(stream));
                    }
                    Some(worker) => {
                        // Moved to the worker's I/O driver: deregistered here, registered
                        // there (once per connection, not per request).
                        let stream = match stream.into_std() {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "cannot hand the connection to a worker");
                                continue;
                            }
                        };
                        connections.spawn_on(
                            async move {
                                match TcpStream::from_std(stream) {
                                    Ok(stream) => serve_one(stream).await,
                                    Err(e) => tracing::debug!(%peer, error = %e, "worker cannot register the connection"),
                                }
                            },
                            worker,
                        );
                    }
                }
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
