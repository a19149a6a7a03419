//! Health, readiness and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::Notify;
use vision_gateway::server::Drained;

use crate::support::*;

#[tokio::test]
async fn health_and_readiness_answer_while_serving() {
    let up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    let h = get(gw.addr, "/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    let r = get(gw.addr, "/readyz").await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-request-id").is_some());
}

/// Waits (bounded) until the gateway no longer accepts connections.
async fn until_refused(addr: std::net::SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gateway kept accepting connections after shutdown began");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_a_live_stream() {
    let go = Arc::new(Notify::new());
    let up = StandIn::always(Script::sse(vec![
        sse_event("{\"n\":1}"),
        Step::WaitFor(go.clone()),
        sse_event("{\"n\":2}"),
        sse_event("[DONE]"),
    ]))
    .await;
    let mut gw = Gateway::to(up.addr).await;
    let mut body = open_stream(gw.addr).await;
    next_data(&mut body).await.expect("first chunk");

    gw.begin_shutdown();
    until_refused(gw.addr).await;
    go.notify_one();
    let rest = body
        .collect()
        .await
        .expect("the stream finishes during the drain")
        .to_bytes();
    assert_eq!(
        rest,
        bytes::Bytes::from_static(b"data: {\"n\":2}\n\ndata: [DONE]\n\n")
    );
    assert_eq!(gw.finished().await, Drained::Clean);
}

#[tokio::test]
async fn a_stream_outliving_the_grace_period_is_cut_and_reported() {
    let never = Arc::new(Notify::new());
    let up = StandIn::always(Script::sse(vec![
        sse_event("{}"),
        Step::WaitFor(never.clone()),
    ]))
    .await;
    let toml =
        config_for(up.addr, "", "").replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 1");
    let mut gw = Gateway::from_toml(&toml).await;
    let mut body = open_stream(gw.addr).await;
    next_data(&mut body).await.expect("first chunk");
    gw.begin_shutdown();
    assert_eq!(gw.finished().await, Drained::GraceExpired);
    // The stream was cut, not left running on a drained server.
    let rest = tokio::time::timeout(EVENT_TIMEOUT, body.collect())
        .await
        .expect("the cut arrives");
    assert!(rest.is_err(), "the client sees the cut");
}

/// With worker threads, connections are dealt round-robin to them, each request runs on its
/// connection's worker (never on the accepting runtime), and a drain still ends cleanly.
#[tokio::test]
async fn connections_are_dealt_round_robin_to_worker_threads() {
    use std::convert::Infallible;

    use http::{Request, Response};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use vision_gateway::health::Readiness;
    use vision_gateway::server::{Workers, serve, worker_index};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let workers = Workers::start(2).await.unwrap();
    let service = tower::service_fn(|_req: Request<Incoming>| async {
        let here = format!("{}", worker_index());
        Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from(here))))
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        service,
        Readiness::default(),
        Duration::from_secs(5),
        workers,
        async {
            let _ = stopped.await;
        },
    ));
    let mut seen = Vec::new();
    // `get` opens a new connection for every request.
    for _ in 0..4 {
        let answer = get(addr, "/").await;
        seen.push(String::from_utf8(answer.body.to_vec()).unwrap());
    }
    assert_eq!(seen, ["1", "2", "1", "2"]);
    assert_eq!(worker_index(), 0, "the test's own thread is not a worker");
    stop.send(()).unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the drain ends")
        .unwrap();
    assert_eq!(drained, Drained::Clean);
}
