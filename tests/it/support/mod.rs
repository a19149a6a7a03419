//! Test support: the gateway under test, a scripted stand-in upstream, and a raw HTTP client.

pub mod client;
pub mod gateway;
pub mod upstream;

pub use client::*;
pub use gateway::*;
pub use upstream::*;

/// How long any awaited event may take before a test fails.
pub const EVENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
