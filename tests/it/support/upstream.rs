//! A scripted stand-in upstream: records each request, answers with a script of steps
//! (data, waits on the test's signal, pauses, cuts), and reports closed connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// What the stand-in received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream received JSON")
    }
}

/// One step of a response body.
#[derive(Clone)]
pub enum Step {
    Data(Bytes),
    /// Wait until the test calls `notify_one` on this.
    WaitFor(Arc<Notify>),
    Sleep(Duration),
    /// Break the connection (the body errors; hyper aborts).
    Cut,
}

/// A scripted response.
#[derive(Clone)]
pub struct Script {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub delay_headers: Duration,
    pub steps: Vec<Step>,
}

impl Script {
    /// 200 with a JSON body.
    pub fn json(body: &str) -> Self {
        Self {
            status: StatusCode::OK,
            headers: vec![("content-type", "application/json".into())],
            delay_headers: Duration::ZERO,
            steps: vec![Step::Data(Bytes::copy_from_slice(body.as_bytes()))],
        }
    }

    /// A status with a JSON body.
    pub fn status(status: u16, body: &str) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("status"),
            ..Self::json(body)
        }
    }

    /// 200 SSE with the given steps.
    pub fn sse(steps: Vec<Step>) -> Self {
        Self {
            status: StatusCode::OK,
            headers: vec![("content-type", "text/event-stream".into())],
            delay_headers: Duration::ZERO,
            steps,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// An SSE `data:` event.
pub fn sse_event(data: &str) -> Step {
    Step::Data(Bytes::from(format!("data: {data}\n\n")))
}

type Handler = Arc<dyn Fn(&Recorded) -> Script + Send + Sync>;

/// A running stand-in.
pub struct StandIn {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Recorded>,
    closed: mpsc::UnboundedReceiver<()>,
}

impl StandIn {
    /// Starts a stand-in answering every request with `handler(request)`.
    pub async fn start(handler: impl Fn(&Recorded) -> Script + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let req_tx = req_tx.clone();
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let req_tx = req_tx.clone();
                        async move { Ok::<_, Infallible>(answer(req, &handler, &req_tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    let _ = closed_tx.send(());
                });
            }
        });
        Self {
            addr,
            requests,
            closed,
        }
    }

    /// A stand-in that always answers with `script`.
    pub async fn always(script: Script) -> Self {
        Self::start(move |_| script.clone()).await
    }

    /// The next request it received.
    pub async fn next_request(&mut self) -> Recorded {
        tokio::time::timeout(super::EVENT_TIMEOUT, self.requests.recv())
            .await
            .expect("upstream received a request in time")
            .expect("stand-in running")
    }

    /// Whether a request arrived (without waiting).
    pub fn try_request(&mut self) -> Option<Recorded> {
        self.requests.try_recv().ok()
    }

    /// Waits until one of its connections closes.
    pub async fn connection_closed(&mut self) {
        tokio::time::timeout(super::EVENT_TIMEOUT, self.closed.recv())
            .await
            .expect("upstream connection closed in time")
            .expect("stand-in running");
    }
}

async fn answer(
    req: Request<Incoming>,
    handler: &Handler,
    tx: &mpsc::UnboundedSender<Recorded>,
) -> Response<ScriptBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    let script = handler(&rec);
    let _ = tx.send(rec);
    if !script.delay_headers.is_zero() {
        tokio::time::sleep(script.delay_headers).await;
    }
    let (frames_tx, frames_rx) = mpsc::channel(1);
    let steps = script.steps.clone();
    tokio::spawn(async move {
        for step in steps {
            match step {
                Step::Data(b) => {
                    if frames_tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                }
                Step::WaitFor(n) => n.notified().await,
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Cut => {
                    let _ = frames_tx.send(Err(std::io::Error::other("cut"))).await;
                    return;
                }
            }
        }
    });
    let mut res = Response::new(ScriptBody(frames_rx));
    *res.status_mut() = script.status;
    for (k, v) in script.headers {
        res.headers_mut()
            .append(k, v.parse().expect("header value"));
    }
    res
}

/// A body fed by the script task.
pub struct ScriptBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}
