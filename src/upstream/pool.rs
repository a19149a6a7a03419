//! A lean HTTP/1.1 client for plain `http://` upstreams: `hyper::client::conn::http1` on
//! pooled TCP connections, each driven by the request that uses it.
//!
//! Why not hyper-util's legacy `Client` here: for every request it races a pool checkout
//! against a connect, spawns a task to hand the connection back once it is ready again, and
//! moves large futures around; under load that cost more user CPU than the rest of the
//! gateway. A plain-HTTP upstream needs none of it: no TLS, no ALPN, no HTTP/2. This pool does
//! the minimum: a LIFO stack of idle connections behind a mutex, a connect when it is empty,
//! and a connection goes back only when its response body ended cleanly
//! ([`PoolGuard::release`]), so a connection whose response was abandoned half-read is
//! closed, never reused.
//!
//! No task per connection: the request that has a connection checked out polls the
//! connection's future itself, first while it waits for the response head
//! ([`Http1Pool::request`]), then from the response body (`client.rs`), and an idle
//! connection is polled by no one. Handing a request to a connection task and the response
//! back cost two task wake-ups and polls per exchange; polled in place, an exchange runs in
//! the task of the client's connection. The response future and the body's channel are
//! filled only by that poll, right before they are read, so they are read with a no-op
//! waker: their hand-over wakes no task. An upstream that closes an idle connection is
//! noticed when the connection is next checked out ([`Http1Pool::checkout`]).
//!
//! The idle stacks are per worker thread (`server::worker_index`): a connection's socket
//! and timer belong to the runtime of the thread that opened it, and a request reuses only
//! connections of its own thread, so no exchange wakes another core.
//!
//! The first-byte deadline is kept by a timer per connection ([`super::first_byte`]), not by
//! a timer per request; a request it cuts fails with [`PoolError::TimedOut`].

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::first_byte::Watched;

/// Idle connections kept per upstream; more than this many concurrent requests is rare, and
/// the extra connections are closed when their responses end.
pub const MAX_IDLE: usize = 256;

/// Idle connections older than this are dropped at the next checkout (the legacy client's
/// `pool_idle_timeout`); upstream servers close idle connections themselves, typically sooner.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// An idle connection older than this is polled at checkout, to see whether the upstream
/// closed it meanwhile ([`Http1Pool::checkout`]); under load connections idle for far less,
/// and checkout costs no poll.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// TCP keep-alive on upstream connections, as the legacy client had.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request on the HTTP/1.1 pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (refused, unreachable, timed out, handshake failed).
    #[error("connect error: {0}")]
    Connect(std::io::Error),
    /// The request or the response head failed on an established connection.
    #[error("{0}")]
    Request(hyper::Error),
    /// The connection ended without answering the request, and hyper said nothing more.
    #[error("upstream connection closed before a response head")]
    Closed,
    /// No response head by the request's deadline (the connection was closed), or no
    /// connection made by then.
    #[error("no response head by the deadline")]
    TimedOut,
}

/// The idle connections of one upstream, and how to make new ones.
#[derive(Debug)]
pub struct Http1Pool {
    /// `host:port`, as `TcpStream::connect` takes it (an IP literal is not resolved).
    addr: String,
    /// The `host` header every request carries: the upstream's authority.
    host: HeaderValue,
    connect_timeout: Duration,
    /// One stack per worker thread (index: `server::worker_index()` modulo the count).
    /// Most recently returned at the back; checkout pops from the back (the warmest
    /// connection), expiry trims from the front (the oldest).
    idle: Box<[Mutex<VecDeque<Idle>>]>,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// hyper's future of one HTTP/1.1 connection: it writes requests and reads responses when
/// polled.
type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One connection: its request side, and its future under the first-byte watch, polled by
/// whoever has the connection checked out.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once the connection's future has ended (its socket is then closed). Boxed:
    /// hyper's connection state is large, and a `Conn` moves in and out of the idle stack.
    driver: Option<Pin<Box<Watched<Driver>>>>,
    /// Whether the last poll of `driver` registered no waker ([`Conn::drive_quietly`]).
    quiet: bool,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("open", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

/// What one poll of a connection's future came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driven {
    /// Nothing more to do now. After [`Conn::drive`] the socket, the request channel or
    /// the first-byte timer wakes the polling task; after [`Conn::drive_quietly`] nothing
    /// does.
    Pending,
    /// The pending exchange's first-byte deadline passed.
    Expired,
    /// The connection ended (closed by either side, or failed); its future is dropped.
    Ended,
}

/// Why sending on one connection failed.
enum SendError {
    /// hyper gave the request back unsent: it may go out on another connection (boxed:
    /// the rare path).
    Unsent(Box<Request<Full<Bytes>>>, hyper::Error),
    Failed(PoolError),
}

/// The response future `SendRequest::try_send_request` returns.
type Answer = Result<Response<Incoming>, TrySendError<Request<Full<Bytes>>>>;

impl Conn {
    /// Hands `req` to the connection, whose response head is due by `deadline`; the
    /// returned future is then resolved by [`Self::poll_head`]. Not an `async fn` of its
    /// own: that would hold the request in a second state machine, moved on every request.
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Answer> + use<> {
        if let Some(driver) = self.driver.as_mut() {
            driver.as_mut().start(deadline);
        }
        self.sender.try_send_request(req)
    }

    /// Polls the connection's future with the calling task's waker: the socket, hyper's
    /// request channel and the first-byte timer wake that task.
    fn drive(&mut self, cx: &mut Context<'_>) -> Driven {
        let Some(driver) = self.driver.as_mut() else {
            return Driven::Ended;
        };
        self.quiet = false;
        match driver.as_mut().poll(cx) {
            Poll::Pending => Driven::Pending,
            Poll::Ready(None) => Driven::Expired,
            Poll::Ready(Some(end)) => self.end(end),
        }
    }

    /// Polls the connection's future with a no-op waker: it does what the socket allows
    /// now and leaves no task to wake. The wakers a connection keeps while idle must not be
    /// the last request's task: the next request's hand-over, or the upstream closing the
    /// idle connection, would wake that task for nothing.
    fn drive_quietly(&mut self) -> Driven {
        let Some(driver) = self.driver.as_mut() else {
            return Driven::Ended;
        };
        self.quiet = true;
        match driver
            .as_mut()
            .poll_conn(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => Driven::Pending,
            Poll::Ready(end) => self.end(end),
        }
    }

    fn end(&mut self, end: hyper::Result<()>) -> Driven {
        if let Err(e) = end {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
        // Dropping hyper's connection answers every request it still holds.
        self.driver = None;
        Driven::Ended
    }

    /// Drives the connection until `answer`, the future [`Self::send`] returned, has the
    /// response head, the request failed or its deadline passed. `written`: whether this
    /// exchange was polled before.
    ///
    /// The first poll writes the request, whose answer cannot be there yet: the task's
    /// waker goes in at once. A later poll (the socket woke the task) first reads quietly
    /// ([`Self::drive_quietly`]): a small response arrives whole, and the connection is
    /// then idle with no task's waker, so handing it back costs no further poll. Only an
    /// answer still missing after that needs the waker.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        mut answer: Pin<&mut impl Future<Output = Answer>>,
        written: &mut bool,
    ) -> Poll<Result<Response<Incoming>, SendError>> {
        if std::mem::replace(written, true) {
            self.drive_quietly();
            if let Poll::Ready(head) = self.take_head(answer.as_mut()) {
                return Poll::Ready(head);
            }
        }
        let driven = self.drive(cx);
        if let Poll::Ready(head) = self.take_head(answer.as_mut()) {
            return Poll::Ready(head);
        }
        match driven {
            Driven::Pending => Poll::Pending,
            Driven::Expired => {
                tracing::debug!(
                    "no response head by the first-byte deadline; upstream connection closed"
                );
                self.driver = None;
                Poll::Ready(Err(SendError::Failed(PoolError::TimedOut)))
            }
            // hyper answers every request when its connection is dropped, so this is not
            // expected; never wait for an answer nothing will give.
            Driven::Ended => Poll::Ready(Err(SendError::Failed(PoolError::Closed))),
        }
    }

    /// The answer, if the connection's last poll gave one. Only a poll of the connection
    /// answers: read without registering a waker, or the answer would wake this very task
    /// for nothing.
    fn take_head(
        &mut self,
        answer: Pin<&mut impl Future<Output = Answer>>,
    ) -> Poll<Result<Response<Incoming>, SendError>> {
        // Unconstrained: with the task's budget spent, tokio's oneshot would answer Pending
        // and wake the no-op waker, and an answer already there would be missed.
        let answer = pin!(tokio::task::coop::unconstrained(answer));
        let answer = std::task::ready!(answer.poll(&mut Context::from_waker(Waker::noop())));
        // A head that raced the deadline is taken: it arrived.
        if let Some(driver) = self.driver.as_mut() {
            driver.as_mut().finish();
        }
        Poll::Ready(answer.map_err(|mut e| match e.take_message() {
            Some(req) => SendError::Unsent(Box::new(req), e.into_error()),
            None => SendError::Failed(PoolError::Request(e.into_error())),
        }))
    }

    /// Whether the connection can take a request now.
    fn is_ready(&self) -> bool {
        self.driver.is_some() && self.sender.is_ready()
    }
}

/// A checked-out connection. Dropping it closes the connection; [`PoolGuard::release`]
/// puts it back instead.
#[derive(Debug)]
pub struct PoolGuard {
    pool: Arc<Http1Pool>,
    conn: Conn,
    /// The idle stack of the thread whose runtime the connection belongs to.
    home: usize,
}

impl PoolGuard {
    /// The next frame of `body`, the response on this connection. Frames the connection
    /// has already read come first; otherwise the connection is polled with the caller's
    /// waker, which the socket wakes when more arrives. The body's channel is read with a
    /// no-op waker: only that poll fills it, and its hand-over would wake this very task.
    pub(crate) fn poll_frame(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut noop = Context::from_waker(Waker::noop());
        if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(&mut noop) {
            return Poll::Ready(frame);
        }
        let driven = self.conn.drive(cx);
        match Pin::new(&mut *body).poll_frame(&mut noop) {
            Poll::Ready(frame) => Poll::Ready(frame),
            // hyper ends the body when its connection is dropped; should it not, the body
            // is waited on like any other.
            Poll::Pending if driven == Driven::Ended => Pin::new(body).poll_frame(cx),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Returns the connection to its pool. Call only once the response body has been read to
    /// its end without error: then the connection is between messages and safe to reuse.
    pub fn release(self) {
        let PoolGuard {
            pool,
            mut conn,
            home,
        } = self;
        // Idle, its socket and request channel holding no task's waker
        // ([`Conn::drive_quietly`]): so already when the quiet read that brought the head
        // brought the whole body too (a small response); otherwise one more quiet poll
        // settles it. A connection that is not idle then (hyper still writing a request body
        // the upstream answered early) is closed. The first-byte timer keeps the last
        // exchange's waker until it fires: at most one spurious wake-up a deadline period.
        if !(conn.quiet && conn.is_ready()) {
            conn.drive_quietly();
            if !conn.is_ready() {
                return;
            }
        }
        let Some(idle) = pool.idle.get(home) else {
            return;
        };
        let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

impl Http1Pool {
    /// A pool for the upstream at `base` (any of its URLs: only scheme and authority count).
    /// `None` when `base` is not a plain `http://` URL with a host.
    pub fn new(base: &Uri, connect_timeout: Duration) -> Option<Self> {
        if base.scheme_str() != Some("http") {
            return None;
        }
        let authority = base.authority()?;
        let port = authority.port_u16().unwrap_or(80);
        // `host()` keeps the brackets of an IPv6 literal, so `[::1]:80` parses as an address.
        let addr = format!("{}:{port}", authority.host());
        // The legacy client sent the host with the port unless it was the default.
        let host = match authority.port_u16() {
            Some(p) if p != 80 => format!("{}:{p}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let host = HeaderValue::try_from(host).ok()?;
        Some(Self {
            addr,
            host,
            connect_timeout,
            // Worker threads are one per core, plus index 0 for any other thread.
            idle: (0..=std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
        })
    }

    /// Sends `req` (absolute URI of this upstream) on a pooled or new connection, in
    /// origin-form with `host` set, and fails with [`PoolError::TimedOut`] if its response
    /// head has not arrived by `deadline`. A request that fails on a reused connection before
    /// hyper started writing it (the upstream closed the connection while it was idle) is
    /// retried once on a new connection; one that may have reached the upstream is never
    /// resent. The future owns what it needs (no borrow of the pool), so callers can hold it;
    /// dropping it closes the connection.
    pub fn request(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<(Response<Incoming>, PoolGuard), PoolError>> + Send + use<>
    {
        let origin = match req.uri().path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
        *req.uri_mut() = origin;
        req.headers_mut().insert(header::HOST, self.host.clone());
        let pool = Arc::clone(self);
        async move {
            let (mut conn, reused) = match pool.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting (TCP, handshake, timer) is the rare path, and unboxed its
                // state would make every request's future, and each move of it, that much
                // bigger.
                None => (Box::pin(pool.connect_by(deadline)).await?, false),
            };
            let mut answer = pin!(conn.send(req, deadline));
            let mut written = false;
            let req = match poll_fn(|cx| conn.poll_head(cx, answer.as_mut(), &mut written)).await {
                Ok(res) => return Ok((res, pool.guard(conn))),
                Err(SendError::Unsent(req, e)) if reused => {
                    tracing::debug!(error = %e, "pooled upstream connection closed; retrying on a new one");
                    req
                }
                Err(SendError::Unsent(_, e)) => return Err(PoolError::Request(e)),
                Err(SendError::Failed(e)) => return Err(e),
            };
            drop(conn);
            let mut conn = Box::pin(pool.connect_by(deadline)).await?;
            let mut answer = pin!(conn.send(*req, deadline));
            let mut written = false;
            match poll_fn(|cx| conn.poll_head(cx, answer.as_mut(), &mut written)).await {
                Ok(res) => Ok((res, pool.guard(conn))),
                Err(SendError::Unsent(_, e)) => Err(PoolError::Request(e)),
                Err(SendError::Failed(e)) => Err(e),
            }
        }
    }

    fn guard(self: &Arc<Self>, conn: Conn) -> PoolGuard {
        PoolGuard {
            pool: Arc::clone(self),
            conn,
            home: self.home(),
        }
    }

    /// This thread's idle stack.
    fn home(&self) -> usize {
        crate::server::worker_index() % self.idle.len().max(1)
    }

    /// The most recently used idle connection that is open and ready for a request, dropping
    /// expired, closed and busy ones on the way. Never waits: a connection goes back to its
    /// stack only once it is idle ([`PoolGuard::release`]), so one that is not ready is
    /// closed, not awaited: a new connection is quicker than a wait nothing bounds but the
    /// request's deadline.
    ///
    /// Nothing polls an idle connection, so an upstream's close is seen only when the
    /// connection is polled again: a connection idle for [`RECHECK_AFTER`] is polled
    /// quietly first, which reads a close the upstream sent meanwhile (its idle timeout,
    /// typically 5 s or more) without a request spent on it. A close it misses is seen
    /// before the request is written, and the request goes out on a new connection. A
    /// closed connection keeps its socket until a checkout on its thread reaches it or
    /// [`IDLE_TIMEOUT`] drops it.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self
            .idle
            .get(self.home())?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        while let Some(mut c) = idle.pop_back() {
            if now.saturating_duration_since(c.since) > RECHECK_AFTER {
                c.conn.drive_quietly();
            }
            if c.conn.is_ready() {
                return Some(c.conn);
            }
        }
        None
    }

    /// [`Self::connect`], failing with [`PoolError::TimedOut`] at `deadline`: the first-byte
    /// deadline covers connecting too.
    async fn connect_by(&self, deadline: tokio::time::Instant) -> Result<Conn, PoolError> {
        tokio::time::timeout_at(deadline, self.connect())
            .await
            .unwrap_or(Err(PoolError::TimedOut))
    }

    /// A new connection: TCP connect under the connect timeout, TCP_NODELAY and keep-alive,
    /// and the HTTP/1.1 handshake. Nothing polls it until a request is sent on it.
    async fn connect(&self) -> Result<Conn, PoolError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.addr)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(PoolError::Connect(e)),
                Err(_elapsed) => {
                    return Err(PoolError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    )));
                }
            };
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "cannot set TCP keep-alive on an upstream connection");
        }
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PoolError::Connect(std::io::Error::other(e)))?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(Watched::new(driver))),
            quiet: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::client::UpstreamClient;

    /// A raw upstream answering every request head with `ok`. It counts accepted connections,
    /// keeps the first request head, and with `close_after_each` closes each connection after
    /// its answer without saying so (as an upstream whose idle timeout fired would).
    async fn stand_in(
        close_after_each: bool,
    ) -> (Uri, Arc<AtomicUsize>, Arc<Mutex<Option<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let first_head = Arc::new(Mutex::new(None));
        let (count, head) = (accepted.clone(), first_head.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let head = head.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
                            head.lock().unwrap().get_or_insert(text);
                            buf.drain(..end + 4);
                            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .unwrap();
                            if close_after_each {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let uri = format!("http://{addr}/v1/models").parse().unwrap();
        (uri, accepted, first_head)
    }

    /// A GET through the pool as the gateway makes it: the response body drives the
    /// connection and hands it back at its end.
    async fn get(pool: &Arc<Http1Pool>, uri: &Uri) -> Bytes {
        let req = Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = UpstreamClient::Http1(Arc::clone(pool));
        let res = client.request(req, in_5s()).await.unwrap();
        res.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_cleanly_ended_connection_is_reused_in_origin_form_with_host() {
        let (uri, accepted, head) = stand_in(false).await;
        let pool = Arc::new(Http1Pool::new(&uri, Duration::from_secs(1)).unwrap());
        for _ in 0..3 {
            assert_eq!(get(&pool, &uri).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let head = head.lock().unwrap().clone().unwrap();
        assert!(head.starts_with("GET /v1/models HTTP/1.1\r\n"), "{head}");
        let authority = uri.authority().unwrap().as_str();
        assert!(head.contains(&format!("host: {authority}")), "{head}");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        let (uri, accepted, _) = stand_in(true).await;
        let pool = Arc::new(Http1Pool::new(&uri, Duration::from_secs(1)).unwrap());
        for _ in 0..3 {
            assert_eq!(get(&pool, &uri).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_idle_for_a_while_is_looked_at_for_a_close_at_checkout() {
        // An upstream that answers one request, then closes the connection when told to
        // and says so.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close) = tokio::sync::oneshot::channel::<()>();
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 1024];
            let _ = s.read(&mut chunk).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = close.await;
            drop(s);
            let _ = closed_tx.send(());
        });
        let uri: Uri = format!("http://{addr}/v1/models").parse().unwrap();
        let pool = Arc::new(Http1Pool::new(&uri, Duration::from_secs(1)).unwrap());
        assert_eq!(get(&pool, &uri).await, "ok");
        close_tx.send(()).unwrap();
        closed.await.unwrap();
        // A yield lets the runtime's reactor take in the close.
        tokio::task::yield_now().await;
        // Idle only just now: taken without a look (under load that costs nothing; the
        // close would be seen as the request is sent, and the request retried).
        let conn = pool.checkout().expect("the idle connection");
        let long_ago = Instant::now()
            .checked_sub(RECHECK_AFTER * 2)
            .unwrap_or_else(Instant::now);
        pool.idle[pool.home()].lock().unwrap().push_back(Idle {
            conn,
            since: long_ago,
        });
        assert!(pool.checkout().is_none(), "a closed connection is dropped");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: Uri = format!("http://{addr}/v1/models").parse().unwrap();
        let pool = Arc::new(Http1Pool::new(&uri, Duration::from_secs(1)).unwrap());
        let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        assert!(matches!(
            pool.request(req, in_5s()).await,
            Err(PoolError::Connect(_))
        ));
    }

    fn in_5s() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_head_missing_at_the_deadline_is_a_timeout_and_the_connection_closes() {
        // An upstream that reads requests and never answers; it reports each closed connection.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let mut chunk = [0u8; 1024];
                    while s.read(&mut chunk).await.unwrap_or(0) > 0 {}
                    let _ = closed_tx.send(());
                });
            }
        });
        let uri: Uri = format!("http://{addr}/v1/models").parse().unwrap();
        let pool = Arc::new(Http1Pool::new(&uri, Duration::from_secs(1)).unwrap());
        let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(200);
        let answer = tokio::time::timeout(Duration::from_secs(5), pool.request(req, deadline))
            .await
            .expect("the deadline ends the request");
        assert!(matches!(answer, Err(PoolError::TimedOut)), "{answer:?}");
        assert!(tokio::time::Instant::now() >= deadline);
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("the upstream connection is closed");
    }

    #[tokio::test]
    async fn a_pooled_connection_that_is_not_ready_is_replaced_not_awaited() {
        // An upstream that never answers on its first connection and answers `ok` on the
        // others.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut chunk = [0u8; 1024];
                    while s.read(&mut chunk).await.unwrap_or(0) > 0 {
                        if !first {
                            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .unwrap();
                        }
                    }
                });
            }
        });
        let uri: Uri = format!("http://{addr}/v1/models").parse().unwrap();
        let pool = Arc::new(Http1Pool::new(&uri, Duration::from_secs(1)).unwrap());
        // A connection whose exchange is still in flight (due in a minute) sits in the idle
        // stack: it is not ready for another request.
        let mut busy = pool.connect().await.unwrap();
        let first = Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let _answer = busy.send(first, tokio::time::Instant::now() + Duration::from_secs(60));
        let written = busy.drive(&mut Context::from_waker(Waker::noop()));
        assert_eq!(written, Driven::Pending);
        assert!(!busy.is_ready());
        pool.idle[pool.home()].lock().unwrap().push_back(Idle {
            conn: busy,
            since: Instant::now(),
        });

        let answer = tokio::time::timeout(Duration::from_secs(5), get(&pool, &uri))
            .await
            .expect("the busy connection is not waited for");
        assert_eq!(answer, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_plain_http_gets_a_pool_and_host_drops_the_default_port() {
        let t = Duration::from_secs(1);
        let https: Uri = "https://api.example.com/v1/models"
            .parse()
            .unwrap_or_default();
        assert!(Http1Pool::new(&https, t).is_none());

        let plain: Uri = "http://127.0.0.1:8000/v1/models"
            .parse()
            .unwrap_or_default();
        let p = Http1Pool::new(&plain, t);
        assert_eq!(p.as_ref().map(|p| p.addr.as_str()), Some("127.0.0.1:8000"));
        assert_eq!(
            p.as_ref().map(|p| p.host.as_bytes()),
            Some(&b"127.0.0.1:8000"[..])
        );

        let default: Uri = "http://[::1]:80/v1".parse().unwrap_or_default();
        let p = Http1Pool::new(&default, t);
        assert_eq!(p.as_ref().map(|p| p.addr.as_str()), Some("[::1]:80"));
        assert_eq!(p.as_ref().map(|p| p.host.as_bytes()), Some(&b"[::1]"[..]));
    }
}
