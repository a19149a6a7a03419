//! Images in chat requests: finding them, fetching remote ones safely, checking and
//! downscaling them, and counting their tokens.
//!
//! - `sniff`: format from magic bytes, dimensions from the header.
//! - `data_uri`: strict `data:` URI decoding and encoding.
//! - `addr`: which IP addresses are publicly routable (the SSRF rule).
//! - `fetch`: the fetcher for `http(s)` image URLs (vetted addresses only, redirects by hand).
//! - `transform`: decode (with JPEG DCT scaling), orient, resize, encode; CPU work only.
//! - `cache`: processed images by URL or content hash, bounded in bytes.
//! - `pipeline`: all images of one request, concurrently, through the above.

pub mod addr;
pub mod cache;
pub mod data_uri;
pub mod fetch;
pub mod pipeline;
pub mod sniff;
pub mod transform;
