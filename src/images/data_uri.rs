//! Strict parsing of `data:` image URIs: `data:<type>;base64,<payload>` with standard,
//! padded base64 and nothing else (no whitespace, no URL-safe alphabet, no trailing bits).
//! The declared type is not trusted: the format is sniffed from the decoded bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

/// Why a `data:` URI was refused. Messages never repeat the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataUriError {
    #[error("the data URI must look like data:image/png;base64,<data>")]
    Shape,
    #[error("the data URI must be base64-encoded (;base64,)")]
    NotBase64,
    #[error("the data URI's base64 payload is invalid")]
    BadBase64,
    #[error("the data URI is empty")]
    Empty,
}

/// True when `url` is a `data:` URI (scheme compared case-insensitively).
pub fn is_data_uri(url: &str) -> bool {
    url.get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("data:"))
}

/// The payload of a `data:` URI: where its base64 starts in `url` and the decoded bytes.
pub fn decode(url: &str) -> Result<Bytes, DataUriError> {
    let rest = url
        .get(5..)
        .filter(|_| is_data_uri(url))
        .ok_or(DataUriError::Shape)?;
    let (meta, payload) = rest.split_once(',').ok_or(DataUriError::Shape)?;
    let mut params = meta.split(';');
    let media_type = params.next().unwrap_or_default();
    if !media_type.is_empty() && !media_type.contains('/') {
        return Err(DataUriError::Shape);
    }
    if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(DataUriError::NotBase64);
    }
    if payload.is_empty() {
        return Err(DataUriError::Empty);
    }
    STANDARD
        .decode(payload)
        .map(Bytes::from)
        .map_err(|_| DataUriError::BadBase64)
}

/// `data:<mime>;base64,<base64 of bytes>` as a JSON string (quotes included), ready to splice
/// into the body. Base64 never needs JSON escaping.
pub fn encode_json(mime: &str, bytes: &[u8]) -> Bytes {
    let prefix_len = "\"data:".len() + mime.len() + ";base64,".len();
    let mut out =
        Vec::with_capacity(prefix_len + base64::encoded_len(bytes.len(), true).unwrap_or(0) + 1);
    out.extend_from_slice(b"\"data:");
    out.extend_from_slice(mime.as_bytes());
    out.extend_from_slice(b";base64,");
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    let written = STANDARD.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_the_provider_docs_form() {
        let b = decode("data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(b.as_deref().ok(), Some(&b"\x89PNG\r\n\x1a\n"[..]));
        assert!(decode("DATA:image/jpeg;BASE64,/9j/").is_ok());
        assert!(decode("data:;base64,/9j/").is_ok());
    }

    #[test]
    fn refuses_anything_loose() {
        let cases = [
            ("data:image/png,iVBORw0KGgo=", DataUriError::NotBase64),
            ("data:image/png;base64", DataUriError::Shape),
            ("data:image/png;base64,", DataUriError::Empty),
            ("data:image/png;base64,iVBORw0KGgo", DataUriError::BadBase64),
            (
                "data:image/png;base64,iVBO Rw0KGgo=",
                DataUriError::BadBase64,
            ),
            (
                "data:image/png;base64,iVBO\nRw0KGgo=",
                DataUriError::BadBase64,
            ),
            (
                "data:image/png;base64,iVBORw0KGg-_",
                DataUriError::BadBase64,
            ),
            (
                "data:image/png;base64,iVBORw0KGgp=",
                DataUriError::BadBase64,
            ),
            ("data:png;base64,iVBORw0KGgo=", DataUriError::Shape),
            ("http://x/y.png", DataUriError::Shape),
        ];
        for (uri, want) in cases {
            assert_eq!(decode(uri).err(), Some(want), "{uri}");
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(bytes in proptest::collection::vec(any::<u8>(), 1..600)) {
            let json = encode_json("image/png", &bytes);
            let text = std::str::from_utf8(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let uri: String = serde_json::from_str(text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(uri.starts_with("data:image/png;base64,"));
            let decoded = decode(&uri).ok();
            prop_assert_eq!(decoded.as_deref(), Some(&bytes[..]));
        }

        #[test]
        fn decode_never_panics(s in "data:[a-z/;]{0,20},[A-Za-z0-9+/=\\-_ ]{0,64}") {
            let _ = decode(&s);
        }
    }
}
