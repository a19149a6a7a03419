//! `GET /playground`: a browser page to try the gateway's models with images, served from
//! files compiled into the binary (`src/playground/`), so it works offline and needs no
//! build step, CDN or network fetch. The page itself talks to the gateway's public routes
//! only (`/v1/models`, `/gateway/inspect`, `/v1/chat/completions`), as any client would.
//!
//! This module owns the three assets and the headers they go out with: a strict
//! `content-security-policy` (scripts and styles from the gateway only, no inline script,
//! connections to the gateway only; images also from `data:`/`blob:` thumbnails and pasted
//! `http(s)` URLs), `x-content-type-options: nosniff`, and `cache-control: no-cache` with an
//! `ETag`, so a browser revalidates (304) and never runs a page older than the binary.
//! It must not read request bodies or carry state: `server.playground = false` removes the
//! routes (they answer 404 like any unknown path).

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::body::ResponseBody;

/// The page's path; its script and stylesheet live under it.
pub const PATH: &str = "/playground";

/// Only the gateway's own origin, with the exceptions the page needs: image previews of
/// `data:`/`blob:` uploads and of pasted `http(s)` URLs. No inline script or style, no
/// framing, no forms posting elsewhere, no `<base>`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob: http: https:; connect-src 'self'; font-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every asset, by the path it is served at.
pub static ASSETS: [Asset; 3] = [
    Asset {
        path: PATH,
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("playground/index.html"),
    },
    Asset {
        path: "/playground/playground.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("playground/playground.js"),
    },
    Asset {
        path: "/playground/playground.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("playground/playground.css"),
    },
];

/// The `ETag` of each asset (same order as [`ASSETS`]): a hash of its bytes, so it changes
/// exactly when the file does. Computed once, on first use.
static ETAGS: LazyLock<[HeaderValue; 3]> = LazyLock::new(|| ASSETS.each_ref().map(etag_of));

fn etag_of(asset: &Asset) -> HeaderValue {
    let digest = Sha256::digest(asset.body);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::try_from(format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The response for `path` when it names an asset (`/playground/` is the page too): 200 with
/// the file, or 304 when the request's `If-None-Match` already names its `ETag`. `None` for
/// any other path.
pub fn response(path: &str, request_headers: &HeaderMap) -> Option<Response<ResponseBody>> {
    let path = if path == "/playground/" { PATH } else { path };
    let index = ASSETS.iter().position(|a| a.path == path)?;
    let (asset, etag) = (ASSETS.get(index)?, ETAGS.get(index)?);
    let fresh = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == etag.as_bytes()
        });
    let mut res = if fresh {
        let mut res = Response::new(ResponseBody::full(bytes::Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        Response::new(ResponseBody::full(bytes::Bytes::from_static(asset.body)))
    };
    let h = res.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, if_none_match: Option<&HeaderValue>) -> Response<ResponseBody> {
        let mut h = HeaderMap::new();
        if let Some(v) = if_none_match {
            h.insert(header::IF_NONE_MATCH, v.clone());
        }
        response(path, &h).unwrap_or_else(|| panic!("{path} is not served"))
    }

    #[test]
    fn every_asset_is_served_and_the_page_names_its_script_and_style() {
        for a in &ASSETS {
            let res = get(a.path, None);
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()[header::CONTENT_TYPE], a.content_type);
        }
        assert_eq!(get("/playground/", None).status(), StatusCode::OK);
        assert!(response("/playground/nope.js", &HeaderMap::new()).is_none());
        assert!(response("/playgroundx", &HeaderMap::new()).is_none());
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(html.contains(r#"src="/playground/playground.js""#));
        assert!(html.contains(r#"href="/playground/playground.css""#));
    }

    #[test]
    fn a_matching_if_none_match_gets_304_without_a_body() {
        let js = "/playground/playground.js";
        let etag = ETAGS[1].clone();
        let res = get(js, Some(&etag));
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()[header::ETAG], etag);
        assert_eq!(
            get(js, Some(&HeaderValue::from_static("\"other\""))).status(),
            StatusCode::OK
        );
        // The page's tag does not match the script.
        assert_eq!(get(js, Some(&ETAGS[0])).status(), StatusCode::OK);
        let weak = HeaderValue::try_from(format!("\"x\", W/{}", etag.to_str().unwrap())).unwrap();
        assert_eq!(get(js, Some(&weak)).status(), StatusCode::NOT_MODIFIED);
    }
}
