//! A lean HTTP/1.1 client for plain `http://` upstreams: `hyper::client::conn::http1` on
//! pooled TCP connections.
//!
//! Why not hyper-util's legacy `Client` here: for every request it races a pool checkout
//! against a connect, spawns a task to hand the connection back once it is ready again, and
//! moves large futures around; under load that cost more user CPU than the rest of the
//! gateway. A plain-HTTP upstream needs none of it: no TLS, no ALPN, no HTTP/2. This pool does
//! the minimum: a LIFO stack of idle senders behind a mutex, a connect when it is empty, and
//! a sender goes back only when its response body ended cleanly ([`PoolGuard::release`]), so
//! a connection whose response was abandoned half-read is closed, never reused.
//!
//! The idle stacks are per worker thread (`server::worker_index`): a connection's task runs
//! on the thread that opened it, and a request reuses only connections of its own thread,
//! so no exchange wakes another core.
//!
//! The first-byte deadline is kept by each connection's task ([`super::first_byte`]), not by
//! a timer per request; a request it cuts fails with [`PoolError::TimedOut`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::first_byte::{FirstByte, Watched};

/// Idle connections kept per upstream; more than this many concurrent requests is rare, and
/// the extra connections are closed when their responses end.
pub const MAX_IDLE: usize = 256;

/// Idle connections older than this are dropped at the next checkout (the legacy client's
/// `pool_idle_timeout`); upstream servers close idle connections themselves, typically sooner.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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

/// One connection's request side: its sender and the deadline its task watches.
#[derive(Debug)]
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    first_byte: Arc<FirstByte>,
}

/// Why sending on one connection failed.
enum SendError {
    /// hyper gave the request back unsent: it may go out on another connection (boxed:
    /// the rare path).
    Unsent(Box<Request<Full<Bytes>>>, hyper::Error),
    Failed(PoolError),
}

impl Conn {
    /// Hands `req` to the connection, whose response head is due by `deadline` (the
    /// connection's task closes the connection if it is not). Awaited in the caller's
    /// future, not in an `async fn` of its own: that would hold the request in a second
    /// state machine, moved on every request.
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Full<Bytes>>>>> + use<>
    {
        self.first_byte.start(deadline);
        self.sender.try_send_request(req)
    }

    /// What became of a request [`Self::send`] handed over.
    fn settle(
        &self,
        sent: Result<Response<Incoming>, TrySendError<Request<Full<Bytes>>>>,
    ) -> Result<Response<Incoming>, SendError> {
        // Cut by the connection's task: a head that raced the deadline is dropped too (the
        // connection is closing).
        if self.first_byte.finish() {
            return Err(SendError::Failed(PoolError::TimedOut));
        }
        sent.map_err(|mut e| match e.take_message() {
            Some(req) => SendError::Unsent(Box::new(req), e.into_error()),
            None => SendError::Failed(PoolError::Request(e.into_error())),
        })
    }
}

/// A checked-out connection. Dropping it closes the connection (hyper ends a connection
/// whose sender and response body are gone); [`PoolGuard::release`] puts it back instead.
#[derive(Debug)]
pub struct PoolGuard {
    pool: Arc<Http1Pool>,
    conn: Conn,
    /// The idle stack of the thread that drives this connection.
    home: usize,
}

impl PoolGuard {
    /// Returns the connection to its pool. Call only once the response body has been read to
    /// its end without error: then the connection is between messages and safe to reuse.
    pub fn release(self) {
        let PoolGuard { pool, conn, home } = self;
        if conn.sender.is_closed() {
            return;
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
    /// resent. The future owns what it needs (no borrow of the pool), so callers can hold it.
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
            let sent = conn.send(req, deadline).await;
            let req = match conn.settle(sent) {
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
            let sent = conn.send(*req, deadline).await;
            match conn.settle(sent) {
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
    /// stack when its response has ended, by when its task has finished the exchange. One
    /// that is not ready (hyper still writing a request body the upstream answered early, or
    /// a task on another thread of a multi-threaded runtime lagging) is closed, not awaited:
    /// a new connection is quicker than a wait nothing bounds but the request's deadline.
    fn checkout(&self) -> Option<Conn> {
        loop {
            let conn = self.pop_idle()?;
            if conn.sender.is_ready() {
                return Some(conn);
            }
        }
    }

    fn pop_idle(&self) -> Option<Conn> {
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
        while let Some(c) = idle.pop_back() {
            if !c.conn.sender.is_closed() {
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
    /// the HTTP/1.1 handshake, and its connection task spawned (it lives as long as the
    /// connection, or until a request's first-byte deadline passes).
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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PoolError::Connect(std::io::Error::other(e)))?;
        let first_byte = Arc::new(FirstByte::new());
        let watched = Watched::new(conn, Arc::clone(&first_byte));
        tokio::spawn(async move {
            match watched.await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "upstream connection ended with an error")
                }
                None => tracing::debug!(
                    "no response head by the first-byte deadline; upstream connection closed"
                ),
            }
        });
        Ok(Conn { sender, first_byte })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

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

    async fn get(pool: &Arc<Http1Pool>, uri: &Uri) -> Bytes {
        let req = Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (res, guard) = pool.request(req, in_5s()).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        guard.release();
        body
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
        let in_flight = busy.send(first, tokio::time::Instant::now() + Duration::from_secs(60));
        let _first = tokio::spawn(in_flight);
        pool.guard(busy).release();

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
