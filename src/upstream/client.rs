//! The one client interface the request path and the readiness probe use, over two
//! implementations: the lean HTTP/1.1 pool ([`super::pool`]) for plain `http://` upstreams,
//! where the gateway's overhead matters most (local model servers), and hyper-util's legacy
//! `Client` for `https://` ones, which need TLS, ALPN and HTTP/2.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Timeout};

use super::HttpClient;
use super::pool::{Http1Pool, PoolError, PoolGuard};

/// How requests reach one upstream.
#[derive(Debug)]
pub enum UpstreamClient {
    /// Plain HTTP/1.1 on a pool of our own.
    Http1(Arc<Http1Pool>),
    /// TLS, HTTP/1.1 or HTTP/2 by ALPN, hyper-util's pooled client.
    Legacy(Box<HttpClient>),
}

/// Why an upstream request failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No response head by the request's deadline.
    #[error("no response head by the deadline")]
    TimedOut,
    /// No connection to the upstream could be made (refused, unreachable, handshake).
    #[error("connect error: {0}")]
    Connect(std::io::Error),
    /// The request or the response head failed on an established connection.
    #[error("{0}")]
    Request(hyper::Error),
    /// The connection ended without answering and without saying why.
    #[error("upstream connection closed before a response head")]
    Closed,
    #[error(transparent)]
    Legacy(#[from] hyper_util::client::legacy::Error),
}

impl From<PoolError> for ClientError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::TimedOut => Self::TimedOut,
            PoolError::Connect(e) => Self::Connect(e),
            PoolError::Request(e) => Self::Request(e),
            PoolError::Closed => Self::Closed,
        }
    }
}

impl ClientError {
    /// Whether no connection could be made (502 `connect`), as opposed to a failure on an
    /// established one (502 `reset`) or a timeout (504).
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::Request(_) | Self::Closed | Self::TimedOut => false,
            Self::Legacy(e) => e.is_connect(),
        }
    }
}

impl UpstreamClient {
    /// Sends `req`, whose URI is the absolute URL of an endpoint of this upstream, and fails
    /// with [`ClientError::TimedOut`] if no response head has arrived by `deadline`. The
    /// response body hands a pooled connection back when it ends cleanly. The request is
    /// handed to the pool or client before this returns; the future owns the rest.
    /// The request's `Host` header, if any, is the client's: both paths replace it.
    pub fn request(
        &self,
        mut req: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Response<UpstreamIncoming>, ClientError>> + Send + use<> {
        match self {
            // The pool sets `Host` itself (an insert, replacing the client's in place), and
            // its connections keep the deadline (`first_byte.rs`).
            Self::Http1(pool) => Sent::Pool {
                fut: pool.request(req, deadline),
            },
            // hyper-util's client sets `Host` from the URI only when there is none.
            Self::Legacy(client) => {
                req.headers_mut().remove(http::header::HOST);
                Sent::Legacy {
                    fut: tokio::time::timeout_at(deadline, client.request(req)),
                }
            }
        }
    }
}

pin_project! {
    /// A request in flight on either implementation.
    #[project = SentProj]
    enum Sent<P, L> {
        Pool { #[pin] fut: P },
        Legacy { #[pin] fut: Timeout<L> },
    }
}

impl<P, L> Future for Sent<P, L>
where
    P: Future<Output = Result<(Response<Incoming>, PoolGuard), PoolError>>,
    L: Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>>,
{
    type Output = Result<Response<UpstreamIncoming>, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.project() {
            SentProj::Pool { fut } => ready!(fut.poll(cx))
                .map(|(res, guard)| res.map(|body| UpstreamIncoming::new(body, Some(guard))))
                .map_err(ClientError::from),
            SentProj::Legacy { fut } => match ready!(fut.poll(cx)) {
                Ok(sent) => sent
                    .map(|res| res.map(|body| UpstreamIncoming::new(body, None)))
                    .map_err(ClientError::from),
                Err(_elapsed) => Err(ClientError::TimedOut),
            },
        })
    }
}

/// An upstream response body: hyper's, plus the pooled connection it arrives on. The
/// connection goes back to the pool the moment the body has been read to its end without
/// error (after the last data frame when the length is known, since hyper's server may then
/// drop the body without polling it again); if the body errs or is dropped before that, the
/// guard is dropped with it and the connection closes, so a half-read response never leaves
/// bytes on a connection someone else reuses.
///
/// A body error is returned one poll late: the task is woken and the poll answers Pending
/// first, so hyper's server flushes what it holds (the head and the data before the error)
/// before it sees the error and aborts the connection. A client then gets the status and
/// the data, then the cut, rather than a connection closed with no response, whose request
/// an SDK may retry.
#[derive(Debug)]
pub struct UpstreamIncoming {
    inner: Incoming,
    guard: Option<PoolGuard>,
    /// The body's error, held back for one poll.
    failed: Option<hyper::Error>,
}

impl UpstreamIncoming {
    fn new(inner: Incoming, guard: Option<PoolGuard>) -> Self {
        let mut body = Self {
            inner,
            guard,
            failed: None,
        };
        // An empty body (e.g. `content-length: 0`) is over before it is polled.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release();
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let frame = match this.guard.as_mut() {
            // The pool's connection is polled by its response body (`pool.rs`).
            Some(guard) => ready!(guard.poll_frame(&mut this.inner, cx)),
            None => ready!(Pin::new(&mut this.inner).poll_frame(cx)),
        };
        match &frame {
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            None => this.release(),
            Some(Err(_)) => {
                this.guard = None;
                this.failed = frame.and_then(Result::err);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
