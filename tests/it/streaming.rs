//! Streams: chunks pass as they come, cuts become SSE errors, disconnects close upstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::Notify;

use crate::support::*;

#[tokio::test]
async fn sse_chunks_reach_the_client_as_the_upstream_sends_them() {
    let go = Arc::new(Notify::new());
    let first = r#"{"choices":[{"delta":{"content":"Hel"}}]}"#;
    let up = StandIn::always(Script::sse(vec![
        sse_event(first),
        Step::WaitFor(go.clone()),
        sse_event(r#"{"choices":[{"delta":{"content":"lo"}}]}"#),
        sse_event("[DONE]"),
    ]))
    .await;
    let gw = Gateway::to(up.addr).await;
    let res = send(gw.addr, post("/v1/chat/completions", STREAM_REQ, &[])).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    // The upstream holds the rest back until we have seen the first chunk: any buffering in
    // the gateway would make this wait forever (and time out).
    let chunk = next_data(&mut body).await.expect("first chunk");
    assert_eq!(chunk, Bytes::from(format!("data: {first}\n\n")));
    go.notify_one();
    let rest = body.collect().await.expect("rest").to_bytes();
    assert!(rest.ends_with(b"data: [DONE]\n\n"), "{rest:?}");
}

#[tokio::test]
async fn an_upstream_cut_mid_stream_ends_with_an_error_event_and_a_clean_end() {
    let up = StandIn::always(Script::sse(vec![sse_event(r#"{"choices":[]}"#), Step::Cut])).await;
    let gw = Gateway::to(up.addr).await;
    let all = open_stream(gw.addr)
        .await
        .collect()
        .await
        .expect("a clean end, not a broken body")
        .to_bytes();
    let text = String::from_utf8_lossy(&all);
    let last = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .expect("an event");
    let data = last.trim().strip_prefix("data: ").expect("a data event");
    let v: serde_json::Value = serde_json::from_str(data).expect("JSON error event");
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert!(text.starts_with("data: {\"choices\":[]}\n\n"));
}

#[tokio::test]
async fn a_cut_json_body_is_an_error_for_the_client_not_a_short_answer() {
    let up = StandIn::always(Script {
        steps: vec![Step::Data(Bytes::from_static(b"{\"choices\":")), Step::Cut],
        ..Script::json("")
    })
    .await;
    let gw = Gateway::to(up.addr).await;
    // The head and the data before the cut are flushed first, even when the cut is read in
    // the same poll as the data: the client gets the status, then the cut.
    let res = send(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.into_body().collect().await.is_err(),
        "the client must see the cut"
    );
}

#[tokio::test]
async fn a_client_disconnect_closes_the_upstream_connection() {
    let mut steps = vec![sse_event(r#"{"choices":[]}"#)];
    for _ in 0..500 {
        steps.push(Step::Sleep(Duration::from_millis(20)));
        steps.push(sse_event(r#"{"choices":[]}"#));
    }
    let mut up = StandIn::always(Script::sse(steps)).await;
    let gw = Gateway::to(up.addr).await;
    let mut body = open_stream(gw.addr).await;
    next_data(&mut body).await.expect("first chunk");
    drop(body);
    up.connection_closed().await;
}

#[tokio::test]
async fn sixty_four_concurrent_streams_all_complete() {
    let mut steps = Vec::new();
    for i in 0..20 {
        steps.push(sse_event(&format!(
            r#"{{"choices":[{{"delta":{{"content":"{i} "}}}}]}}"#
        )));
        steps.push(Step::Sleep(Duration::from_millis(5)));
    }
    steps.push(sse_event("[DONE]"));
    let up = StandIn::always(Script::sse(steps)).await;
    let gw = Gateway::to(up.addr).await;
    let addr = gw.addr;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn(async move {
                open_stream(addr)
                    .await
                    .collect()
                    .await
                    .expect("stream")
                    .to_bytes()
            })
        })
        .collect();
    for t in tasks {
        let body = t.await.expect("task");
        assert_eq!(String::from_utf8_lossy(&body).matches("data: ").count(), 21);
        assert!(body.ends_with(b"data: [DONE]\n\n"));
    }
}

#[tokio::test]
async fn a_cut_inside_an_event_drops_the_half_event_before_the_error_event() {
    let up = StandIn::always(Script::sse(vec![
        sse_event(r#"{"n":1}"#),
        Step::Data(Bytes::from_static(b"data: {\"n\":2,\"half")),
        Step::Cut,
    ]))
    .await;
    let gw = Gateway::to(up.addr).await;
    let all = open_stream(gw.addr)
        .await
        .collect()
        .await
        .expect("clean end")
        .to_bytes();
    let text = String::from_utf8_lossy(&all);
    assert!(
        !text.contains("half"),
        "a half-written event must never reach the client: {text}"
    );
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0], r#"data: {"n":1}"#);
    assert!(events[1].contains("upstream_unavailable"));
}

#[tokio::test]
async fn an_event_split_across_frames_arrives_whole_and_unchanged() {
    let go = Arc::new(Notify::new());
    let up = StandIn::always(Script::sse(vec![
        Step::Data(Bytes::from_static(b"data: {\"n\":1}\n\ndata: {\"n\"")),
        Step::WaitFor(go.clone()),
        Step::Data(Bytes::from_static(b":2}\n")),
        Step::Data(Bytes::from_static(b"\ndata: [DONE]\n\n")),
    ]))
    .await;
    let gw = Gateway::to(up.addr).await;
    let mut body = open_stream(gw.addr).await;
    // The complete first event is not held back while the second is unfinished.
    assert_eq!(
        next_data(&mut body).await.expect("first"),
        Bytes::from_static(b"data: {\"n\":1}\n\n")
    );
    go.notify_one();
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(
        rest,
        Bytes::from_static(b"data: {\"n\":2}\n\ndata: [DONE]\n\n")
    );
}

#[tokio::test]
async fn an_event_that_never_ends_is_passed_on_once_it_passes_the_hold_cap() {
    let go = Arc::new(Notify::new());
    // 100 KiB of `data:` lines with no blank line, then the upstream waits.
    let line = format!("data: {}\n", "x".repeat(1000));
    let mut steps: Vec<Step> = (0..100)
        .map(|_| Step::Data(Bytes::from(line.clone())))
        .collect();
    steps.push(Step::WaitFor(go.clone()));
    steps.push(Step::Data(Bytes::from_static(b"\n")));
    let up = StandIn::always(Script::sse(steps)).await;
    let gw = Gateway::to(up.addr).await;
    let mut body = open_stream(gw.addr).await;
    // Bytes arrive while the upstream is still holding its event open: nothing waits unbounded.
    let mut got = 0;
    while got < vision_gateway::body::MAX_HELD {
        got += next_data(&mut body)
            .await
            .expect("data before the event ends")
            .len();
    }
    go.notify_one();
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(
        got + rest.len(),
        100 * line.len() + 1,
        "every byte, once, in order"
    );
}

#[tokio::test]
async fn an_event_boundary_spread_over_one_byte_frames_is_still_found() {
    let go = Arc::new(Notify::new());
    let event = "data: {\"n\":1}\r\n\r\n";
    let mut steps: Vec<Step> = event
        .bytes()
        .map(|b| Step::Data(Bytes::from(vec![b])))
        .collect();
    steps.push(Step::WaitFor(go.clone()));
    steps.push(sse_event("[DONE]"));
    let up = StandIn::always(Script::sse(steps)).await;
    let gw = Gateway::to(up.addr).await;
    let mut body = open_stream(gw.addr).await;
    // The whole event reaches the client while the upstream still holds the next one back.
    let mut got = Vec::new();
    while got.len() < event.len() {
        got.extend_from_slice(
            &next_data(&mut body)
                .await
                .expect("the event, before [DONE]"),
        );
    }
    assert_eq!(got, event.as_bytes());
    go.notify_one();
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(rest, Bytes::from_static(b"data: [DONE]\n\n"));
}

#[tokio::test]
async fn large_bodies_arrive_whole_and_in_order_several_at_once() {
    // 4 MiB in 64 KiB chunks, far more than the sockets and hyper's buffers hold: the
    // gateway reads the upstream connection only as fast as the client takes the body, so
    // every path that waits on the connection or on the client runs, for several responses
    // at once and again on reused connections.
    let chunk: Bytes = (0..64 * 1024u32)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect::<Vec<u8>>()
        .into();
    let total = chunk.len() * 64;
    let script = Script {
        steps: vec![Step::Data(chunk.clone()); 64],
        ..Script::json("")
    }
    .header("content-length", &total.to_string());
    let up = StandIn::always(script).await;
    let gw = Gateway::to(up.addr).await;
    for _ in 0..2 {
        let mut bodies = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let addr = gw.addr;
            bodies.spawn(async move {
                let res = send(addr, post("/v1/chat/completions", CHAT, &[])).await;
                assert_eq!(res.status(), 200);
                res.into_body()
                    .collect()
                    .await
                    .expect("whole body")
                    .to_bytes()
            });
        }
        while let Some(body) = bodies.join_next().await {
            let body = body.expect("client task");
            assert_eq!(body.len(), total);
            assert!(body.chunks(chunk.len()).all(|c| c == chunk));
        }
    }
}
