//! Command-line arguments (clap). Environment variables mirror the flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// A local gateway for OpenAI-compatible vision language models.
#[derive(Debug, Parser)]
#[command(name = "vision-gateway", version, about)]
pub struct Cli {
    /// TOML configuration file. Without one, every model goes to the built-in stand-in upstream.
    #[arg(
        long,
        global = true,
        env = "VISION_GATEWAY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Address to listen on, overriding `server.listen`.
    #[arg(long, env = "VISION_GATEWAY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Log format.
    #[arg(
        long,
        global = true,
        env = "VISION_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do (default: serve).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default).
    Serve,
    /// Validate a config file, print it resolved (no secrets), exit non-zero if invalid.
    CheckConfig,
    /// Run the built-in stand-in upstream, for demos, tests and benchmarks.
    MockUpstream(MockArgs),
}

/// `mock-upstream` flags.
#[derive(Debug, clap::Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Content chunks per streamed answer (0 = one per word).
    #[arg(long, default_value_t = 0)]
    pub chunks: usize,
    /// Milliseconds between streamed chunks.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
}
