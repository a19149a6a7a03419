//! Task polls per HTTP/1.1 exchange in hyper, on both of the gateway's sides (its server
//! connections and its pooled upstream connections), with the fix of `vendor/hyper.patch`.
//!
//! hyper hands a message body from the connection's task to the body's reader through a
//! channel. Unpatched, the reader taking a chunk wakes the connection's task even after the
//! sender is gone, which it is for every Content-Length body read whole: each exchange then
//! polls the upstream connection's task once more for nothing, and the server connection's
//! task once more too (the request body's sender is its own dispatcher). The two polls were
//! about 5% of the gateway's instructions a request (`benches/load/instructions.sh`).
//! If this test fails, the `[patch.crates-io]` for hyper is gone or no longer applies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// A future that counts how often it is polled.
struct Counted<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

fn counted<F: Future>(inner: F) -> (Counted<F>, Arc<AtomicUsize>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let fut = Counted {
        inner: Box::pin(inner),
        polls: Arc::clone(&polls),
    };
    (fut, polls)
}

/// One request with a small JSON body, its response body read to the end.
async fn exchange(sender: &mut SendRequest<Full<Bytes>>) {
    sender.ready().await.unwrap();
    let req = Request::post("/v1/chat/completions")
        .header(http::header::HOST, "127.0.0.1")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 57, "the echo of the request body");
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_that_arrives_whole_costs_its_connection_task_no_extra_poll() {
    const EXCHANGES: usize = 200;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (server_ready, server_polls_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        // Reads the request body through hyper's channel, as the gateway's body read does.
        let echo = service_fn(|req: Request<Incoming>| async move {
            let body = req.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Response::new(Full::new(body)))
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), echo);
        let (conn, polls) = counted(conn);
        server_ready.send(polls).unwrap();
        conn.await.unwrap();
    });

    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let (conn, client_polls) = counted(conn);
    tokio::spawn(conn);
    // The first exchange also sets the connections up.
    exchange(&mut sender).await;
    let server_polls = server_polls_rx.await.unwrap();
    let (server0, client0) = (
        server_polls.load(Ordering::Relaxed),
        client_polls.load(Ordering::Relaxed),
    );

    for _ in 0..EXCHANGES {
        exchange(&mut sender).await;
        // Let every woken task run before the next request, as in the gateway, where the
        // next request on an upstream connection is another client's: a wake left pending
        // would otherwise merge with the next request's wake and hide.
        tokio::task::yield_now().await;
    }

    let per_exchange = |polls: &AtomicUsize, before: usize| {
        (polls.load(Ordering::Relaxed) - before) as f64 / EXCHANGES as f64
    };
    let client = per_exchange(&client_polls, client0);
    let server = per_exchange(&server_polls, server0);
    // The client connection: the request's hand-over and the response's arrival (3 unpatched).
    assert!(
        client < 2.5,
        "the client connection's task was polled {client:.2} times an exchange (2 expected)"
    );
    // The server connection answers at once here: the request's arrival (2 unpatched).
    assert!(
        server < 1.5,
        "the server connection's task was polled {server:.2} times an exchange (1 expected)"
    );
}
