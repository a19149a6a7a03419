//! `/metrics` after real traffic, its on/off and separate-listener modes, and readiness tied
//! to upstream answers.

use std::time::Duration;

use crate::support::*;

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let a = get(addr, "/metrics").await;
    assert_eq!(a.status, 200);
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.contains("openmetrics-text"))
    );
    String::from_utf8(a.body.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn counters_and_histograms_move_with_real_traffic() {
    let up = StandIn::always(Script::sse(vec![sse_event("{}"), sse_event("[DONE]")])).await;
    let gw = Gateway::to(up.addr).await;
    for _ in 0..2 {
        let a = call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
        assert_eq!(a.status, 200);
    }
    call(gw.addr, post("/v1/chat/completions", "{bad", &[])).await;
    get(gw.addr, "/nope").await;
    get(gw.addr, "/healthz").await;

    let text = scrape(gw.addr).await;
    let s =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no `{series}` in:\n{text}"));
    assert_eq!(
        s(
            r#"vision_gateway_requests_total{route="chat_completions",model="pixtral-12b-2409",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        s(r#"vision_gateway_requests_total{route="chat_completions",model="-",status="400"}"#),
        1.0
    );
    assert_eq!(
        s(r#"vision_gateway_requests_total{route="other",model="-",status="404"}"#),
        1.0
    );
    assert_eq!(
        s(r#"vision_gateway_requests_total{route="healthz",model="-",status="200"}"#),
        1.0
    );
    assert_eq!(
        s(r#"vision_gateway_request_duration_seconds_count{route="chat_completions"}"#),
        3.0
    );
    assert_eq!(
        s(r#"vision_gateway_upstream_headers_seconds_count{upstream="standin"}"#),
        2.0
    );
    assert_eq!(
        s(r#"vision_gateway_first_byte_seconds_count{upstream="standin"}"#),
        2.0
    );
    assert_eq!(s("vision_gateway_overhead_seconds_count"), 2.0);
    // The scrape itself is the one request in flight.
    assert_eq!(s("vision_gateway_requests_in_flight"), 1.0);
    assert!(
        text.contains(r#"vision_gateway_build_info{version=""#),
        "{text}"
    );
    for name in [
        "requests",
        "request_duration_seconds",
        "requests_in_flight",
        "upstream_headers_seconds",
        "overhead_seconds",
        "first_byte_seconds",
        "build",
    ] {
        assert!(
            text.contains(&format!("# HELP vision_gateway_{name} ")),
            "HELP for {name}"
        );
    }
    assert!(
        !text.contains("/nope"),
        "client-chosen strings never become labels"
    );
}

#[tokio::test]
async fn upstream_errors_are_counted_by_kind() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gw = Gateway::to(closed).await;
    call(gw.addr, post("/v1/chat/completions", CHAT, &[]))
        .await
        .expect_error(502, "upstream_unavailable");
    let text = scrape(gw.addr).await;
    assert!(text.contains("# HELP vision_gateway_upstream_errors "));
    assert_eq!(
        sample(
            &text,
            r#"vision_gateway_upstream_errors_total{upstream="standin",kind="connect"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"vision_gateway_requests_total{route="chat_completions",model="pixtral-12b-2409",status="502"}"#
        ),
        Some(1.0)
    );

    let up = StandIn::always(Script::sse(vec![sse_event("{}"), Step::Cut])).await;
    let gw = Gateway::to(up.addr).await;
    let res = send(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("clean end");
    let text = scrape(gw.addr).await;
    assert_eq!(
        sample(
            &text,
            r#"vision_gateway_upstream_errors_total{upstream="standin",kind="reset"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_can_be_off_or_on_a_listener_of_their_own() {
    let up = StandIn::always(Script::json("{}")).await;
    let off = config_for(up.addr, "", "").replace("[server]\n", "[server]\nmetrics = false\n");
    let gw = Gateway::from_toml(&off).await;
    get(gw.addr, "/metrics")
        .await
        .expect_error(404, "not_found");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let separate = config_for(up.addr, "", "").replace(
        "[server]\n",
        &format!("[server]\nmetrics_listen = \"{port}\"\n"),
    );
    let gw = Gateway::from_toml(&separate).await;
    call(gw.addr, post("/v1/chat/completions", CHAT, &[])).await;
    get(gw.addr, "/metrics")
        .await
        .expect_error(404, "not_found");
    // The separate listener is bound before the main one accepts, so it is up by now.
    let text = scrape(port).await;
    assert_eq!(
        sample(
            &text,
            r#"vision_gateway_requests_total{route="chat_completions",model="pixtral-12b-2409",status="200"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn readiness_can_require_an_answering_upstream() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let window = |addr| {
        config_for(addr, "", "").replace(
            "[server]\n",
            "[server]\nreadiness_upstream_window_secs = 3\n",
        )
    };
    let gw = Gateway::from_toml(&window(closed)).await;
    get(gw.addr, "/readyz")
        .await
        .expect_error(503, "upstream_unavailable");
    assert_eq!(
        get(gw.addr, "/healthz").await.status,
        200,
        "liveness never depends on upstreams"
    );

    let mut up = StandIn::always(Script::json("{\"object\":\"list\",\"data\":[]}")).await;
    let gw = Gateway::from_toml(&window(up.addr)).await;
    // The first probe goes out at start; once the upstream has seen it, readiness follows.
    let probe = up.next_request().await;
    assert_eq!(probe.method, http::Method::GET);
    assert_eq!(probe.uri.path(), "/v1/models");
    let mut ready = false;
    for _ in 0..100 {
        if get(gw.addr, "/readyz").await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "/readyz turns 200 once the upstream answered");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_counted_as_499_and_leaves_no_gauge_behind() {
    let mut slow = Script::json("{}");
    slow.delay_headers = Duration::from_secs(3);
    let mut up = StandIn::always(slow).await;
    let gw = Gateway::to(up.addr).await;
    let addr = gw.addr;
    let client =
        tokio::spawn(async move { call(addr, post("/v1/chat/completions", CHAT, &[])).await });
    up.next_request().await;
    client.abort();
    let series = r#"vision_gateway_requests_total{route="chat_completions",model="pixtral-12b-2409",status="499"}"#;
    let mut text = String::new();
    for _ in 0..200 {
        text = scrape(gw.addr).await;
        if sample(&text, series).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sample(&text, series), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "vision_gateway_requests_in_flight"),
        Some(1.0),
        "only the scrape"
    );
}

#[tokio::test]
async fn a_model_served_by_the_wildcard_is_labelled_with_the_wildcard() {
    let up = StandIn::always(Script::json("{}")).await;
    let gw = Gateway::to(up.addr).await;
    let body = r#"{"model":"client-invented-name","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(
        call(gw.addr, post("/v1/chat/completions", body, &[]))
            .await
            .status,
        200
    );
    let text = scrape(gw.addr).await;
    assert_eq!(
        sample(
            &text,
            r#"vision_gateway_requests_total{route="chat_completions",model="*",status="200"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("client-invented-name"));
}
