//! Images in chat requests: finding them, fetching remote ones safely, checking and
//! downscaling them, and counting their tokens.
//!
//! - `sniff`: format from magic bytes, dimensions from the header.
//! - `addr`: which IP addresses are publicly routable (the SSRF rule).
//! - `fetch`: the fetcher for `http(s)` image URLs (vetted addresses only, redirects by hand).
//! - `transform`: decode (with JPEG DCT scaling), orient, resize, encode; CPU work only.

pub mod data_uri;
pub mod addr;
pub mod fetch;
pub mod sniff;
pub mod transform;
