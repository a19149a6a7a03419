//! Every error is OpenAI-shaped, has the right status and code, and never reaches the
//! upstream when the gateway can answer itself.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn malformed_requests_are_400_naming_the_field() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    let cases: [(&str, Option<&str>); 6] = [
        ("{not json", None),
        ("[1,2]", None),
        (
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            Some("model"),
        ),
        (
            r#"{"model":["a"],"messages":[{"role":"user","content":"hi"}]}"#,
            Some("model"),
        ),
        (r#"{"model":"pixtral-12b-2409"}"#, Some("messages")),
        (
            r#"{"model":"pixtral-12b-2409","messages":"hi"}"#,
            Some("messages"),
        ),
    ];
    for (body, param) in cases {
        let a = call(gw.addr, post("/v1/chat/completions", body, &[])).await;
        let e = a.expect_error(400, "invalid_request");
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"].as_str(), param, "{body}: {e}");
    }
    assert!(
        up.try_request().is_none(),
        "nothing malformed reaches the upstream"
    );
}

#[tokio::test]
async fn an_unknown_model_without_wildcard_is_404() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let toml = format!(
        "[[upstreams]]\nname = \"u\"\nbase_url = \"http://{}/v1\"\n[[models]]\nid = \"only\"\nupstream = \"u\"\n",
        up.addr
    );
    let gw = Gateway::from_toml(&toml).await;
    let a = call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    let e = a.expect_error(404, "model_not_found");
    assert_eq!(e["param"], "model");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("pixtral-12b-2409"))
    );
    assert!(up.try_request().is_none());
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods() {
    let up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    get(gw.addr, "/v2/whatever")
        .await
        .expect_error(404, "not_found");
    let a = get(gw.addr, "/v1/chat/completions").await;
    a.expect_error(405, "method_not_allowed");
    assert_eq!(a.header("allow"), Some("POST"));
    let a = call(gw.addr, post("/v1/models", "{}", &[])).await;
    a.expect_error(405, "method_not_allowed");
    assert_eq!(a.header("allow"), Some("GET"));
}

fn small_body_config(upstream: std::net::SocketAddr) -> String {
    config_for(upstream, "", "").replace("[server]\n", "[server]\nmax_body_bytes = 1024\n")
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_by_length_or_by_count() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::from_toml(&small_body_config(up.addr)).await;
    let big = format!(
        r#"{{"model":"pixtral-12b-2409","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(2000)
    );
    let a = call(gw.addr, post("/v1/chat/completions", big, &[])).await;
    let e = a.expect_error(413, "request_too_large");
    assert!(e["message"].as_str().is_some_and(|m| m.contains("1024")));

    // Chunked, no Content-Length: the cap is enforced on the bytes that arrive.
    let chunk = "b".repeat(600);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let head = raw_exchange(gw.addr, req.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("request_too_large"), "{head}");
    assert!(up.try_request().is_none());
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_without_waiting_for_the_connect_timeout() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let toml = config_for(closed, "connect_timeout_ms = 30000", "");
    let gw = Gateway::from_toml(&toml).await;
    let a = call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    let e = a.expect_error(502, "upstream_unavailable");
    assert_eq!(e["type"], "server_error");
    // A 502 (not the 504 a 2 s first-byte timeout would give) shows it did not wait for the
    // 30 s connect timeout.
    assert!(
        !e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "no addresses in messages"
    );
}

#[tokio::test]
async fn no_upstream_headers_in_time_is_504() {
    let mut slow = Script::json("{}");
    slow.delay_headers = Duration::from_secs(3);
    let up = StandIn::always(slow).await;
    let toml = config_for(up.addr, "", "").replace(
        "first_byte_timeout_ms = 2000",
        "first_byte_timeout_ms = 200",
    );
    let gw = Gateway::from_toml(&toml).await;
    let a = call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    let e = a.expect_error(504, "upstream_timeout");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("200 ms")),
        "{e}"
    );
}

/// The deadline is kept by the pooled upstream connection's task, not by a timer per request:
/// a request on a reused connection is held to its own deadline, the connection it timed out
/// on is closed, and the next request gets a fresh one.
#[tokio::test]
async fn a_request_on_a_reused_upstream_connection_times_out_and_the_next_one_is_answered() {
    let mut up = StandIn::start(|rec| {
        let mut s = Script::json(r#"{"ok":true}"#);
        if rec.body.windows(4).any(|w| w == b"slow") {
            s.delay_headers = Duration::from_secs(3);
        }
        s
    })
    .await;
    let toml = config_for(up.addr, "", "").replace(
        "first_byte_timeout_ms = 2000",
        "first_byte_timeout_ms = 300",
    );
    assert!(toml.contains("first_byte_timeout_ms = 300"), "{toml}");
    let gw = Gateway::from_toml(&toml).await;
    // One client connection, served in order: the second request goes out on the upstream
    // connection the first one released.
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let slow = r#"{"model":"pixtral-12b-2409","messages":[{"role":"user","content":"slow"}]}"#;
    let mut statuses = Vec::new();
    for body in [CHAT, slow, CHAT] {
        let started = tokio::time::Instant::now();
        let mut req = post("/v1/chat/completions", body, &[]);
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("gw"));
        let res = tokio::time::timeout(EVENT_TIMEOUT, sender.send_request(req))
            .await
            .expect("answered in time")
            .expect("answered");
        let status = res.status().as_u16();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .expect("body")
            .to_bytes();
        if status == 504 {
            assert!(started.elapsed() >= Duration::from_millis(300), "too early");
            let e: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(e["error"]["code"], "upstream_timeout", "{e}");
            up.connection_closed().await;
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 504, 200]);
    for _ in 0..3 {
        up.next_request().await;
    }
    assert!(
        up.try_request().is_none(),
        "the timed-out request was not sent again"
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_with_body_and_retry_after() {
    for (status, body) in [
        (
            500u16,
            r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            403,
            r#"{"error":{"message":"no permission","type":"invalid_request_error","param":null,"code":null}}"#,
        ),
    ] {
        let up = StandIn::always(Script::status(status, body).header("retry-after", "7")).await;
        let gw = Gateway::to(up.addr).await;
        let a = call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
        assert_eq!(a.status.as_u16(), status);
        assert_eq!(a.body, bytes::Bytes::from(body));
        assert_eq!(a.header("retry-after"), Some("7"));
    }
}

#[tokio::test]
async fn a_body_that_arrives_too_slowly_is_408() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let toml =
        config_for(up.addr, "", "").replace("[server]\n", "[server]\nbody_read_timeout_secs = 1\n");
    let gw = Gateway::from_toml(&toml).await;
    let head = raw_exchange(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request_timeout"), "{head}");
    assert!(up.try_request().is_none());
}

#[tokio::test]
async fn an_unknown_model_is_echoed_bounded_and_on_one_line() {
    let up = StandIn::always(Script::json("{}")).await;
    let toml = format!(
        "[[upstreams]]\nname = \"u\"\nbase_url = \"http://{}/v1\"\n[[models]]\nid = \"only\"\nupstream = \"u\"\n",
        up.addr
    );
    let gw = Gateway::from_toml(&toml).await;
    let model = format!("evil\\nline{}", "x".repeat(100_000));
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let a = call(gw.addr, post("/v1/chat/completions", body, &[])).await;
    let e = a.expect_error(404, "model_not_found");
    let message = e["message"].as_str().expect("message");
    assert!(message.len() < 600, "{}", message.len());
    assert!(!message.contains('\n'));
}

#[tokio::test]
async fn an_https_upstream_that_does_not_speak_tls_is_502_connect() {
    // The https:// path (hyper-util + rustls) end to end: a plain-HTTP stand-in fails the
    // TLS handshake, which must be a connect failure, not a hang or a 500.
    let mut up = StandIn::always(Script::json("{}")).await;
    let toml = config_for(up.addr, "", "").replace("base_url = \"http://", "base_url = \"https://");
    let gw = Gateway::from_toml(&toml).await;
    let a = call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    a.expect_error(502, "upstream_unavailable");
    assert!(
        up.try_request().is_none(),
        "no HTTP request reached the upstream"
    );
    let m = get(gw.addr, "/metrics").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(
            r#"vision_gateway_upstream_errors_total{upstream="standin",kind="connect"} 1"#
        ),
        "{text}"
    );
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) from `s`; `None` when the
/// connection closes first.
async fn read_response(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&got[..end + 4 + len]).into_owned());
            }
        }
        let n = tokio::time::timeout(EVENT_TIMEOUT, s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// Sends `head` alone, then `body`, and checks the refusal (`status`) waited for the body and
/// left the connection usable for the next request.
async fn refusal_keeps_the_connection(
    addr: std::net::SocketAddr,
    head: &str,
    body: &str,
    status: &str,
) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    // The head alone: a client library often sends the body in a second packet. The
    // refusal waits for it (it would otherwise race hyper closing the connection).
    s.write_all(head.as_bytes()).await.expect("write");
    let early = tokio::time::timeout(Duration::from_millis(200), read_response(&mut s)).await;
    assert!(
        early.is_err(),
        "answered before the body arrived: {early:?}"
    );
    s.write_all(body.as_bytes()).await.expect("write");
    let first = read_response(&mut s).await.expect("a response");
    assert!(first.starts_with(status), "{first}");
    // The same connection serves the next request.
    s.write_all(format!("{head}{body}").as_bytes())
        .await
        .expect("write");
    let second = read_response(&mut s)
        .await
        .expect("the connection was closed after the refusal");
    assert!(second.starts_with(status), "{second}");
}

#[tokio::test]
async fn a_refusal_before_the_body_is_read_keeps_the_connection_usable() {
    let up = StandIn::always(Script::json("{}")).await;
    let keys = r#"
[[keys]]
name = "team-a"
sha256 = "90aec5e445670b3bcab75159dad55a95381d97886440422e6d5cad1675c63ce5"
models = ["*"]
"#;
    let gw = Gateway::from_toml(&format!("{}{keys}", config_for(up.addr, "", ""))).await;
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-wrong\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            CHAT.len()
        )
    };
    // Admission's 401, and the router's 404 for a route that reads no body.
    refusal_keeps_the_connection(gw.addr, &head("/v1/chat/completions"), CHAT, "HTTP/1.1 401")
        .await;
    refusal_keeps_the_connection(gw.addr, &head("/v1/completions"), CHAT, "HTTP/1.1 404").await;
}
