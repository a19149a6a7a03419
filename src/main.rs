//! The `vision-gateway` binary: command line, logging, config, run. No logic of its own.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vision_gateway::cli::{Cli, Command};
use vision_gateway::config::{Config, RawConfig};
use vision_gateway::mock::{MockOptions, MockUpstream};
use vision_gateway::server::{self, Drained};
use vision_gateway::{health, telemetry};

/// mimalloc: per-thread free lists for every size. hyper's 8 KiB read buffers and the
/// per-request futures are allocated and freed on every request, which glibc's malloc
/// serves from its slower shared bins (7% fewer instructions per proxied request). Built
/// with `no_thp`: with transparent huge pages its arenas doubled idle RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chunk pacing of the in-process stand-in, so a demo visibly streams.
const DEMO_CHUNK_DELAY: Duration = Duration::from_millis(30);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Some(Command::CheckConfig) => check_config(&cli),
        Some(Command::MockUpstream(ref args)) => {
            let opts = MockOptions {
                chunks: args.chunks,
                chunk_delay: Duration::from_millis(args.chunk_delay_ms),
            };
            mock_upstream(args.listen, opts).await
        }
        Some(Command::Serve) | None => serve(&cli).await,
    }
}

fn check_config(cli: &Cli) -> ExitCode {
    let Some(path) = &cli.config else {
        eprintln!("error: check-config needs --config FILE (or VISION_GATEWAY_CONFIG)");
        return ExitCode::from(2);
    };
    let raw = match RawConfig::from_file(path) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = Config::from_raw(&raw, cli.listen) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "# {}: valid. Resolved configuration (secrets are read from the environment and never printed):",
        path.display()
    );
    print!("{}", raw.to_toml());
    ExitCode::SUCCESS
}

async fn serve(cli: &Cli) -> ExitCode {
    let config = match &cli.config {
        Some(path) => RawConfig::from_file(path).and_then(|raw| Config::from_raw(&raw, cli.listen)),
        None => {
            let opts = MockOptions {
                chunks: 0,
                chunk_delay: DEMO_CHUNK_DELAY,
            };
            let mock =
                match vision_gateway::spawn_mock(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), opts)
                    .await
                {
                    Ok(addr) => addr,
                    Err(e) => {
                        tracing::error!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
            tracing::warn!(
                "NO CONFIG FILE (--config or VISION_GATEWAY_CONFIG): every model is answered by the BUILT-IN STAND-IN UPSTREAM at http://{mock}/v1. Its answers are canned descriptions of your request, not a model's. Pass --config to use a real upstream."
            );
            Config::builtin(mock, cli.listen)
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match vision_gateway::run(config, server::shutdown_signal()).await {
        Ok(Drained::Clean) => ExitCode::SUCCESS,
        Ok(Drained::GraceExpired) => ExitCode::from(3),
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn mock_upstream(listen: SocketAddr, opts: MockOptions) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %listener.local_addr().map_or(listen, |a| a), "stand-in upstream listening (not a model)");
    server::serve(
        listener,
        MockUpstream::new(opts),
        health::Readiness::default(),
        Duration::from_secs(5),
        server::Workers::here(),
        server::shutdown_signal(),
    )
    .await;
    ExitCode::SUCCESS
}
