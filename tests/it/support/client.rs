//! A raw HTTP/1.1 client, one connection per request, so tests control exactly what is sent
//! and can drop a connection mid-stream.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends one request on a fresh connection and returns the response with its body unread.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect to gateway");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = req;
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().expect("host"));
    }
    tokio::time::timeout(super::EVENT_TIMEOUT, sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response")
}

/// A POST with a body and extra headers.
pub fn post(path: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).expect("request")
}

/// A complete response.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OpenAI-style error with this status and code, and returns its `error`.
    pub fn expect_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "body: {:?}", self.body);
        let v = self.json();
        let e = v["error"].clone();
        assert_eq!(e["code"], code, "{v}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some(), "{v}");
        assert!(
            self.header("x-request-id").is_some(),
            "errors carry x-request-id"
        );
        e
    }
}

/// Sends a request and reads the whole response.
pub async fn call(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    let res = send(addr, req).await;
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(super::EVENT_TIMEOUT, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A GET.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(
        addr,
        Request::get(path)
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
}

/// Reads the next data frame of a streaming body.
pub async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(super::EVENT_TIMEOUT, body.frame())
            .await
            .expect("frame in time")?
            .ok()?;
        if let Ok(d) = frame.into_data() {
            return Some(d);
        }
    }
}

/// A minimal streaming chat request.
pub const STREAM_REQ: &str =
    r#"{"model":"pixtral-12b-2409","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Sends [`STREAM_REQ`], checks the 200, and returns the unread response body.
pub async fn open_stream(addr: SocketAddr) -> Incoming {
    let res = send(addr, post("/v1/chat/completions", STREAM_REQ, &[])).await;
    assert_eq!(res.status(), 200);
    res.into_body()
}

/// A minimal valid chat request.
pub const CHAT: &str =
    r#"{"model":"pixtral-12b-2409","messages":[{"role":"user","content":"hi"}]}"#;

/// Writes raw bytes on a fresh connection and returns the first bytes of the answer as text,
/// for requests a well-behaved client library would not send (chunked past a limit, a body
/// that stalls).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(super::EVENT_TIMEOUT, s.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
