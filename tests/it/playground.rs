//! `GET /playground`: the page, its script and stylesheet come from the binary with strict
//! headers, reference nothing outside the gateway, and disappear with
//! `server.playground = false`. (The page's behaviour in a browser: tests/python/
//! test_playground.py.)

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

const PAGE: &str = "/playground";
const SCRIPT: &str = "/playground/playground.js";
const STYLE: &str = "/playground/playground.css";

/// A gateway whose upstream is never contacted: these routes answer from memory.
async fn gateway(extra_server: &str) -> Gateway {
    let toml = config_for("127.0.0.1:9".parse().unwrap(), "", "")
        .replace("[server]\n", &format!("[server]\n{extra_server}\n"));
    Gateway::from_toml(&toml).await
}

fn text(a: &Answer) -> &str {
    std::str::from_utf8(&a.body).expect("UTF-8 asset")
}

/// Every value of `attr="..."` in the text.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

#[tokio::test]
async fn the_page_its_script_and_style_are_served_with_strict_headers() {
    let gw = gateway("").await;
    for (path, content_type) in [
        (PAGE, "text/html; charset=utf-8"),
        ("/playground/", "text/html; charset=utf-8"),
        (SCRIPT, "text/javascript; charset=utf-8"),
        (STYLE, "text/css; charset=utf-8"),
    ] {
        let a = get(gw.addr, path).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("content-type"), Some(content_type), "{path}");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(a.header("cache-control"), Some("no-cache"));
        assert!(a.header("etag").is_some_and(|e| e.starts_with('"')));
        let csp = a.header("content-security-policy").expect("a CSP");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "img-src 'self' data: blob: http: https:",
            "frame-ancestors 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: {directive} missing in {csp}"
            );
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(!a.body.is_empty());
    }
    let html = text(&get(gw.addr, PAGE).await).to_owned();
    assert!(html.contains(&format!(
        r#"<script type="module" src="{SCRIPT}"></script>"#
    )));
    assert!(html.contains(&format!(r#"<link rel="stylesheet" href="{STYLE}">"#)));
}

#[tokio::test]
async fn the_assets_reference_nothing_outside_the_gateway() {
    let gw = gateway("").await;
    let html = text(&get(gw.addr, PAGE).await).to_owned();
    let script = text(&get(gw.addr, SCRIPT).await).to_owned();
    let style = text(&get(gw.addr, STYLE).await).to_owned();
    for (name, body) in [("page", &html), ("script", &script), ("style", &style)] {
        for scheme in ["http://", "https://", "url("] {
            assert!(!body.contains(scheme), "the {name} mentions {scheme}");
        }
        assert!(!body.contains("@import"), "the {name} imports");
    }
    // Every src and href is a path on this gateway, a fragment or an inline data: URI.
    let refs: Vec<&str> = ["src", "href"]
        .iter()
        .flat_map(|attr| attribute_values(&html, attr))
        .collect();
    assert!(refs.len() >= 3, "{refs:?}");
    for r in refs {
        let local = (r.starts_with('/') && !r.starts_with("//"))
            || r.starts_with('#')
            || r.starts_with("data:");
        assert!(local, "external reference {r:?}");
    }
    // The CSP forbids inline code and inline styles; the page must not need them.
    assert_eq!(html.matches("<script").count(), 1, "one script, by src");
    assert!(!html.contains("<style"), "no inline stylesheet");
    assert!(!html.contains(" style=\""), "no style attributes");
    assert!(!html.contains(" onclick=") && !html.contains(" onload="));
    // The script only talks to the gateway's own routes.
    for route in [
        "\"/v1/models\"",
        "\"/gateway/inspect\"",
        "\"/v1/chat/completions\"",
    ] {
        assert!(script.contains(route), "{route}");
    }
    assert!(!script.contains("eval(") && !script.contains("new Function"));
}

#[tokio::test]
async fn head_revalidation_and_wrong_methods() {
    let gw = gateway("").await;
    let first = get(gw.addr, SCRIPT).await;
    let etag = first.header("etag").expect("etag").to_owned();
    let again = call(
        gw.addr,
        Request::get(SCRIPT)
            .header("if-none-match", &etag)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));

    let head = call(
        gw.addr,
        Request::head(PAGE).body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    let post = call(gw.addr, post(PAGE, "{}", &[])).await;
    post.expect_error(405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET"));
    get(gw.addr, "/playground/nope.js")
        .await
        .expect_error(404, "not_found");
    get(gw.addr, "/playgrounds")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn server_playground_false_turns_every_playground_route_into_404() {
    let gw = gateway("playground = false").await;
    for path in [PAGE, "/playground/", SCRIPT, STYLE] {
        get(gw.addr, path).await.expect_error(404, "not_found");
    }
    // The rest of the gateway is unaffected.
    assert_eq!(get(gw.addr, "/v1/models").await.status, 200);
}
