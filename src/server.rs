//! The accept loop: HTTP/1.1 and HTTP/2 (told apart by peeking at the first bytes) on one
//! listener, `TCP_NODELAY` on every connection, connections dealt round-robin to
//! [`Workers`], and a graceful drain on shutdown ([`crate::drain`]).
//!
//! Workers: one single-threaded tokio runtime per core, each on its own thread, as nginx has
//! one event loop per worker process. A connection, every task its requests spawn, and the
//! pooled upstream connections its requests poll stay on one thread: no work stealing, no
//! cross-core wake-ups, no allocation freed on another core. In interleaved load rounds on 2
//! cores it raised throughput at c=32 from 0.86x to 0.95x nginx's against tokio's
//! multi-threaded scheduler (benches/load/interleaved.sh).
//!
//! Drain: stop accepting, flip readiness to draining, let in-flight requests and streams
//! finish for up to the grace period (idle keep-alive connections close at once, HTTP/2 gets
//! GOAWAY), then return. This module knows nothing about chat completions.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::drain::Drain;
use crate::health::Readiness;
use crate::idle::{Activity, IdleGuard, InFlight, Tracked};

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

/// Makes this thread count as worker `i` (tests of per-worker state).
#[cfg(test)]
pub(crate) fn act_as_worker(i: usize) {
    WORKER.with(|w| w.set(i));
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

/// What [`serve`] serves: a cloneable tower service that answers every request (its errors
/// are responses), with futures that may run on any worker thread.
pub trait Servable<B>:
    tower::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Servable<B> for S where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body [`serve`] can write: bytes, sendable to any worker thread.
pub trait ServableBody:
    http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> ServableBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
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
    S: Servable<B>,
    B: ServableBody,
{
    let protocols = Arc::new(Protocols::new(IDLE_TIMEOUT));
    let drain = Drain::default();
    // Owns every connection task: the drain waits for it to empty, and dropping it (when
    // this function returns) aborts whatever outlived the grace period, even when the
    // runtime itself lives on (tests, embedders).
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
                let serve_one = {
                    let protocols = Arc::clone(&protocols);
                    let service = Direct::new(service.clone());
                    let drain = drain.clone();
                    move |stream: TcpStream| async move {
                        if let Err(e) = protocols.serve(stream, service, &drain).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
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
    drain.start();
    let all_closed = async { while connections.join_next().await.is_some() {} };
    match tokio::time::timeout(grace, all_closed).await {
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

/// The HTTP/2 connection preface (RFC 9113, 3.4): how a client speaking HTTP/2 without TLS
/// (prior knowledge) opens.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an HTTP/1.1 connection may sit idle, between requests or in the middle of a
/// request's headers, before it is closed (`idle.rs`: after 30 to 45 s); also how long any
/// connection may take to send its first bytes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How connections are served, by protocol.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// For a connection whose first bytes are a strict prefix of the preface: reads until
    /// it can tell, then replays what it read.
    auto: auto::Builder<TokioExecutor>,
    /// How long an HTTP/1.1 connection may sit idle (`idle.rs`; hyper's header-read timeout
    /// on the auto-detecting path), and how long any may take to send its first bytes.
    idle_timeout: Duration,
}

impl Protocols {
    fn new(idle_timeout: Duration) -> Self {
        // The same settings on both paths to each protocol.
        // Plain HTTP/1.1 has no `header_read_timeout`: the idle guard (`idle.rs`) closes a
        // stalled head, at a fraction of the cost per request. The auto-detecting builder
        // keeps hyper's timer: what it serves may turn out to be HTTP/2, which the guard
        // must not cut (it would drop the connection without a GOAWAY), and it serves only
        // a client whose preface arrived in pieces.
        macro_rules! http1 {
            ($b:expr) => {
                $b.timer(TokioTimer::new())
            };
        }
        macro_rules! http2 {
            ($b:expr) => {
                $b.timer(TokioTimer::new())
                    // Each stream may hold a request body of up to server.max_body_bytes.
                    .max_concurrent_streams(128)
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .keep_alive_timeout(Duration::from_secs(20))
            };
        }
        let mut h1 = http1::Builder::new();
        http1!(h1).header_read_timeout(None);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        http2!(h2);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        http1!(auto.http1()).header_read_timeout(idle_timeout);
        http2!(auto.http2());
        Self {
            http1: h1,
            http2: h2,
            auto,
            idle_timeout,
        }
    }

    /// Serves one connection until it closes, or until the drain has shut it down.
    /// The protocol is told from the first bytes, peeked rather than read, so hyper gets the
    /// socket itself (hyper-util's auto-detection wraps every read of the connection's life
    /// in a replay buffer).
    async fn serve<S, B>(
        &self,
        stream: TcpStream,
        service: Direct<S>,
        drain: &Drain,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        S: Servable<B>,
        B: ServableBody,
    {
        let mut first = [0u8; H2_PREFACE.len()];
        let seen = tokio::select! {
            // Nothing guards a connection until its protocol is known: this covers the wait
            // for the first byte, so a connection that never speaks does not stay forever.
            peeked = tokio::time::timeout(self.idle_timeout, stream.peek(&mut first)) => {
                match peeked {
                    Ok(peeked) => peeked?,
                    Err(_silent) => return Ok(()),
                }
            }
            // A connection that has sent nothing yet closes at once.
            () = drain.started() => return Ok(()),
        };
        let first = first.get(..seen).unwrap_or_default();
        let io = TokioIo::new(stream);
        let activity = Arc::clone(&service.activity);
        if seen == 0 || !H2_PREFACE.starts_with(first) {
            let conn = drain.watch(self.http1.serve_connection(io, service));
            Ok(IdleGuard::new(conn, activity, self.idle_timeout).await?)
        } else if seen == H2_PREFACE.len() {
            // HTTP/2 has its own watch (pings) and no idle guard.
            Ok(drain
                .watch(self.http2.serve_connection(io, service))
                .await?)
        } else {
            drain.watch(self.auto.serve_connection(io, service)).await
        }
    }
}

/// Hands hyper's requests to the tower stack without a clone of the stack per request
/// (hyper-util's `TowerToHyperService` clones it for each one, which writes the shared count
/// of every `Arc` in the stack, on lines every core writes). Each connection owns its copy
/// and hyper calls it from the connection's task, one call at a time, so the `RefCell` is
/// never contended.
struct Direct<S> {
    service: RefCell<S>,
    /// For a call while the service is borrowed, which hyper never makes: answered on a
    /// clone of this, as `TowerToHyperService` would.
    spare: S,
    /// Told of every request, for the connection's idle guard.
    activity: Arc<Activity>,
}

impl<S: Clone> Direct<S> {
    fn new(service: S) -> Self {
        Self {
            spare: service.clone(),
            service: RefCell::new(service),
            activity: Arc::default(),
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Direct<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
{
    type Response = Response<Tracked<B>>;
    type Error = Infallible;
    type Future = Called<S::Future, tower::util::Oneshot<S, Request<Incoming>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = Some(self.activity.start());
        let Ok(mut service) = self.service.try_borrow_mut() else {
            return Called {
                call: Call::Waiting {
                    inner: tower::util::Oneshot::new(self.spare.clone(), req),
                },
                in_flight,
            };
        };
        // The gateway's services are always ready. One that is not gets the request on a
        // clone, which waits for readiness with the request's own waker.
        let mut cx = Context::from_waker(Waker::noop());
        let call = match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Call::Now {
                inner: service.call(req),
            },
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Call::Waiting {
                inner: tower::util::Oneshot::new(service.clone(), req),
            },
        };
        Called { call, in_flight }
    }
}

pin_project_lite::pin_project! {
    /// [`Direct`]'s response future: the request is in flight for the connection's idle
    /// guard until its response body is dropped.
    struct Called<F, W> {
        #[pin]
        call: Call<F, W>,
        in_flight: Option<InFlight>,
    }
}

pin_project_lite::pin_project! {
    #[project = CallProj]
    enum Call<F, W> {
        Now { #[pin] inner: F },
        Waiting { #[pin] inner: W },
    }
}

impl<F, W, B> Future for Called<F, W>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    W: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<Tracked<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = match this.call.project() {
            CallProj::Now { inner } => inner.poll(cx),
            CallProj::Waiting { inner } => inner.poll(cx),
        };
        let response = match answered {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
        };
        let Some(in_flight) = this.in_flight.take() else {
            // Polled after it finished: hyper never does.
            return Poll::Pending;
        };
        Poll::Ready(Ok(response.map(|body| Tracked::new(body, in_flight))))
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

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves the server's end of a connection with `service` until it closes or `drain`
    /// has shut it down.
    fn spawn_serving<S, B>(
        idle_timeout: Duration,
        server: TcpStream,
        service: S,
        drain: Drain,
    ) -> tokio::task::JoinHandle<Result<(), String>>
    where
        S: Servable<B>,
        B: ServableBody,
    {
        tokio::spawn(async move {
            Protocols::new(idle_timeout)
                .serve(server, Direct::new(service), &drain)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// Sends `GET /` on `client` and reads the answer until it ends with `end` (it may come
    /// in more than one read); panics if the connection closes first.
    async fn get(client: &mut TcpStream, end: &[u8]) -> String {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let mut chunk = [0u8; 256];
        while !answer.ends_with(end) {
            let n = client.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before the answer ended");
            answer.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// A service that answers every request with 200 and the body `ok`.
    fn answers_ok() -> impl Servable<Full<Bytes>> {
        tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    }

    /// A client socket and the server's end of its connection, on loopback.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// A connection whose first bytes are only part of the HTTP/2 preface cannot be told
    /// from a peek; it is still served as HTTP/2 once the rest arrives.
    #[tokio::test]
    async fn a_preface_arriving_in_pieces_is_still_served_as_http2() {
        let (mut client, server) = connected().await;
        // Only the first 5 bytes are on the wire when the server peeks.
        client.write_all(&H2_PREFACE[..5]).await.expect("write");
        let service = tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
        let drain = Drain::default();
        let serving = spawn_serving(IDLE_TIMEOUT, server, service, drain.clone());
        client.write_all(&H2_PREFACE[5..]).await.expect("write");
        // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
        client
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .expect("write");
        let mut frame_head = [0u8; 9];
        client.read_exact(&mut frame_head).await.expect("read");
        assert_eq!(frame_head[3], 4, "the server's first frame is its SETTINGS");
        drain.start();
        drop(client);
        assert!(serving.await.is_ok());
    }

    /// A client that starts a request head and stalls is cut off once the idle timeout has
    /// passed, after a first request served normally on the same connection.
    #[tokio::test]
    async fn a_stalled_request_head_is_cut_off_after_the_idle_timeout() {
        let timeout = Duration::from_millis(1500);
        let (mut client, server) = connected().await;
        let service = answers_ok();
        let drain = Drain::default();
        let serving = spawn_serving(timeout, server, service, drain);
        let first = get(&mut client, b"ok").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.ends_with("ok"), "{first}");

        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        let stalled = tokio::time::Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(
            timeout + Duration::from_secs(5),
            client.read_to_end(&mut rest),
        )
        .await
        .expect("the server did not close the connection in time")
        .expect("read");
        let waited = stalled.elapsed();
        assert!(waited >= timeout, "closed after {waited:?}");
        assert!(
            !String::from_utf8_lossy(&rest).contains(" 200 "),
            "the stalled head was not answered"
        );
        assert!(serving.await.is_ok());
    }

    /// A request head trickled in a byte at a time, never finished, is cut off too: bytes
    /// read do not count as activity, only requests.
    #[tokio::test]
    async fn a_request_head_trickled_in_byte_by_byte_is_cut_off() {
        let timeout = Duration::from_millis(400);
        let (mut client, server) = connected().await;
        let service = answers_ok();
        let serving = spawn_serving(timeout, server, service, Drain::default());
        let began = tokio::time::Instant::now();
        let trickle = async {
            let (mut read, mut write) = client.split();
            let mut answer = Vec::new();
            let reading = read.read_to_end(&mut answer);
            tokio::pin!(reading);
            // An endless header line, one byte every tenth of the timeout.
            let head = b"GET / HTTP/1.1\r\nx-slow: "
                .iter()
                .chain(std::iter::repeat(&b'a'));
            for byte in head {
                tokio::select! {
                    read = &mut reading => return (read, answer),
                    () = tokio::time::sleep(timeout / 10) => {
                        if write.write_all(&[*byte]).await.is_err() {
                            return ((&mut reading).await, answer);
                        }
                    }
                }
            }
            unreachable!("the head never ends");
        };
        let (read, answer) = tokio::time::timeout(timeout * 10, trickle)
            .await
            .expect("the server did not close the connection in time");
        let waited = began.elapsed();
        assert!(read.is_ok(), "{read:?}");
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        assert!(waited >= timeout, "closed after {waited:?}");
        assert!(serving.await.is_ok());
    }

    /// A request is not taken for an idle connection while it waits longer than the idle
    /// timeout for its response, nor while that response pauses for longer: the answer
    /// ends whole, and the connection then serves another request.
    #[tokio::test]
    async fn a_slow_answer_streaming_past_the_idle_timeout_keeps_its_connection() {
        /// `FRAMES` frames of one byte, `gap` apart.
        struct Drip {
            sent: u8,
            gap: Duration,
            next: Pin<Box<tokio::time::Sleep>>,
        }
        const FRAMES: u8 = 3;

        impl http_body::Body for Drip {
            type Data = Bytes;
            type Error = Infallible;

            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
                if self.sent == FRAMES {
                    return Poll::Ready(None);
                }
                std::task::ready!(self.next.as_mut().poll(cx));
                let at = tokio::time::Instant::now() + self.gap;
                self.next.as_mut().reset(at);
                self.sent += 1;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"x")))))
            }
        }

        let timeout = Duration::from_millis(300);
        let (mut client, server) = connected().await;
        let service = tower::service_fn(move |_req: Request<Incoming>| async move {
            // Twice the idle timeout before the head, and twice between frames.
            tokio::time::sleep(timeout * 2).await;
            Ok::<_, Infallible>(Response::new(Drip {
                sent: 0,
                gap: timeout * 2,
                next: Box::pin(tokio::time::sleep(Duration::ZERO)),
            }))
        });
        let serving = spawn_serving(timeout, server, service, Drain::default());
        for _round in 0..2 {
            // A chunked body ends with an empty chunk.
            let text = get(&mut client, b"0\r\n\r\n").await;
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(!text.contains("connection: close"), "{text}");
            assert_eq!(text.matches("1\r\nx\r\n").count(), 3, "{text}");
        }
        drop(client);
        assert!(serving.await.is_ok());
    }

    /// A service that is not ready when hyper calls it still answers: the request waits on
    /// a clone for readiness (with the connection's waker), as with hyper-util's adapter.
    #[tokio::test]
    async fn a_service_that_is_not_ready_at_once_still_answers() {
        use std::sync::atomic::AtomicBool;

        /// Pending on its first readiness poll (waking the caller), ready after that; a call
        /// on a copy that never saw `Ready` answers 500.
        #[derive(Clone)]
        struct Late {
            polled: Arc<AtomicBool>,
            ready: bool,
        }

        impl tower::Service<Request<Incoming>> for Late {
            type Response = Response<http_body_util::Full<Bytes>>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                if self.polled.swap(true, Ordering::SeqCst) {
                    self.ready = true;
                    Poll::Ready(Ok(()))
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }

            fn call(&mut self, _req: Request<Incoming>) -> Self::Future {
                let mut res = Response::new(http_body_util::Full::new(Bytes::from_static(b"late")));
                if !std::mem::take(&mut self.ready) {
                    *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                std::future::ready(Ok(res))
            }
        }

        let (mut client, server) = connected().await;
        let polled = Arc::new(AtomicBool::new(false));
        let drain = Drain::default();
        let service = Late {
            polled: polled.clone(),
            ready: false,
        };
        let serving = spawn_serving(IDLE_TIMEOUT, server, service, drain.clone());
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
            .await
            .expect("answered in time")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("late"), "{answer}");
        assert!(polled.load(Ordering::SeqCst), "readiness was polled");
        assert!(serving.await.is_ok());
    }
}
