//! What reaches the upstream and what comes back: bytes, headers, keys, ids.

use bytes::Bytes;
use vision_gateway::config::{Config, RawConfig, Secret};

use crate::support::*;

const ODD_BODY: &str = "{ \"model\" :\"pixtral-12b-2409\",\n  \"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"caf\\u00e9 \u{1F600}\"}]}],\n \"temperature\":0.70, \"max_tokens\":  100, \"top_p\":1e0,\"stop\":[\"\\n\"],\"x_unknown\":{\"deep\":[1,2,3]}}";

#[tokio::test]
async fn request_bytes_reach_the_upstream_unchanged() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    let a = call(gw.addr, post("/v1/chat/completions", ODD_BODY, &[])).await;
    assert_eq!(a.status, 200);
    let got = up.next_request().await;
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.uri.path(), "/v1/chat/completions");
    assert_eq!(
        got.body,
        Bytes::from(ODD_BODY),
        "body bytes must be forwarded exactly"
    );
    assert_eq!(
        got.headers["content-length"],
        ODD_BODY.len().to_string().as_str()
    );
}

#[tokio::test]
async fn upstream_model_rewrites_only_the_model_value() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let toml = config_for(up.addr, "", "upstream_model = \"mistral/pixtral-12b\"");
    let gw = Gateway::from_toml(&toml).await;
    let a = call(gw.addr, post("/v1/chat/completions", ODD_BODY, &[])).await;
    assert_eq!(a.status, 200);
    let got = up.next_request().await;
    let expected = ODD_BODY.replacen("\"pixtral-12b-2409\"", "\"mistral/pixtral-12b\"", 1);
    assert_eq!(got.body, Bytes::from(expected));
    assert_eq!(got.json()["model"], "mistral/pixtral-12b");
}

#[tokio::test]
async fn response_status_headers_and_bytes_pass_through() {
    let body = "{\"id\" : \"x\",\n \"choices\":[] }";
    let up = StandIn::always(
        Script::status(201, body)
            .header("x-custom", "kept")
            .header("x-request-id", "theirs-123")
            .header("connection", "x-hop-resp")
            .header("x-hop-resp", "dropped"),
    )
    .await;
    let gw = Gateway::to(up.addr).await;
    let a = call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.body, Bytes::from(body));
    assert_eq!(a.header("x-custom"), Some("kept"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-upstream-request-id"), Some("theirs-123"));
    assert_ne!(
        a.header("x-request-id"),
        Some("theirs-123"),
        "the gateway's id is authoritative"
    );
    assert_eq!(
        a.header("x-hop-resp"),
        None,
        "headers named by Connection are hop-by-hop"
    );
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_dropped_and_others_kept() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    let headers = [
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("openai-organization", "org-1"),
        ("x-stainless-lang", "python"),
    ];
    call(
        gw.addr,
        post("/v1/chat/completions?api-version=2024", CHAT, &headers),
    )
    .await;
    let got = up.next_request().await;
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(
            !got.headers.contains_key(gone),
            "{gone} must not be forwarded"
        );
    }
    assert_eq!(got.headers["openai-organization"], "org-1");
    assert_eq!(got.headers["x-stainless-lang"], "python");
    assert_eq!(got.uri.query(), Some("api-version=2024"));
    assert_eq!(
        got.headers["host"],
        up.addr.to_string().as_str(),
        "host is the upstream's"
    );
}

#[tokio::test]
async fn without_an_upstream_key_the_clients_authorization_is_forwarded() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    call(
        gw.addr,
        post(
            "/v1/chat/completions",
            CHAT,
            &[("authorization", "Bearer sk-client")],
        ),
    )
    .await;
    assert_eq!(
        up.next_request().await.headers["authorization"],
        "Bearer sk-client"
    );
}

#[tokio::test]
async fn an_upstream_key_replaces_the_clients_which_never_leaves() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let raw = RawConfig::from_toml(&config_for(up.addr, "", "")).expect("parses");
    let mut config = Config::from_raw(&raw, None).expect("valid");
    config.upstreams[0].api_key = Some(Secret::new("sk-upstream".into()));
    let gw = Gateway::from_config(config).await;
    call(
        gw.addr,
        post(
            "/v1/chat/completions",
            CHAT,
            &[("authorization", "Bearer sk-client")],
        ),
    )
    .await;
    let got = up.next_request().await;
    let auth: Vec<_> = got.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Bearer sk-upstream"]);
    let all = format!("{:?}{:?}", got.headers, got.body);
    assert!(!all.contains("sk-client"));
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
    let mut up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;

    let a = call(
        gw.addr,
        post(
            "/v1/chat/completions",
            CHAT,
            &[("x-request-id", "client-id_42")],
        ),
    )
    .await;
    assert_eq!(a.header("x-request-id"), Some("client-id_42"));
    assert_eq!(
        up.next_request().await.headers["x-request-id"],
        "client-id_42",
        "forwarded upstream"
    );

    let a = call(
        gw.addr,
        post(
            "/v1/chat/completions",
            CHAT,
            &[("x-request-id", "bad id with spaces")],
        ),
    )
    .await;
    let id = a.header("x-request-id").expect("an id").to_owned();
    assert!(id.starts_with("req_") && id.len() > 10, "{id}");
    assert_eq!(up.next_request().await.headers["x-request-id"], id.as_str());

    let a = call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    assert!(
        a.header("x-request-id")
            .is_some_and(|i| i.starts_with("req_"))
    );
}

#[tokio::test]
async fn models_are_listed_without_the_wildcard() {
    let up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    let a = get(gw.addr, "/v1/models").await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<_> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [Some("pixtral-12b-2409")]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "standin");
    assert!(v["data"][0]["created"].is_u64());

    let one = get(gw.addr, "/v1/models/pixtral-12b-2409").await;
    assert_eq!(one.json()["id"], "pixtral-12b-2409");
    get(gw.addr, "/v1/models/nope")
        .await
        .expect_error(404, "model_not_found");
}

#[tokio::test]
async fn http2_clients_are_served_and_streams_pass_through() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut up = StandIn::always(Script::sse(vec![
        sse_event("{\"a\":1}"),
        sse_event("[DONE]"),
    ]))
    .await;
    let gw = Gateway::to(up.addr).await;
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        body,
        Bytes::from_static(b"data: {\"a\":1}\n\ndata: [DONE]\n\n")
    );
    assert_eq!(
        up.next_request().await.body,
        Bytes::from_static(CHAT.as_bytes())
    );
}

#[tokio::test]
async fn head_gets_headers_and_no_body_over_http1_and_http2() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    let head = |path: &str| {
        http::Request::head(format!("http://{}{path}", gw.addr))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let a = call(gw.addr, head("/v1/models")).await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());

    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for (path, status) in [("/v1/models", 200), ("/healthz", 200), ("/nope", 404)] {
        let res = sender.send_request(head(path)).await.expect("response");
        assert_eq!(res.status().as_u16(), status, "{path}");
        let len: usize = res.headers()["content-length"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("number");
        assert!(len > 0, "{path}: content-length is the GET's");
        let body = res
            .into_body()
            .collect()
            .await
            .expect("no protocol error")
            .to_bytes();
        assert!(body.is_empty(), "{path}");
    }
}
