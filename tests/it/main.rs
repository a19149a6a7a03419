//! Integration tests: the gateway in-process on `127.0.0.1:0`, driven over real sockets,
//! against scripted stand-in upstreams. One binary, one file per feature.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed expectation is a test failure"
)]

mod cli;
mod errors;
mod forwarding;
mod lifecycle;
mod metrics;
mod playground;
mod streaming;
mod support;
mod tokens;
mod wakeups;
