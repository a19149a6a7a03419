//! Integration tests: the gateway in-process on `127.0.0.1:0`, driven over real sockets,
//! against scripted stand-in upstreams. One binary, one file per feature.

mod cli;
mod errors;
mod forwarding;
mod lifecycle;
mod streaming;
mod support;
