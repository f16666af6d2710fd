//! The `ssemux-mock-upstream` binary: runs one mock backend until Ctrl-C.
//!
//! Owns argument parsing and logging setup only; it must never reach into
//! the library's internals.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ssemux_mock_upstream::{MockBackend, MockConfig};

/// A posta-like chat backend with fault controls under /__admin/.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Seconds of idle before a stream sends a keepalive comment (0 = never).
    #[arg(long, default_value_t = 15)]
    keepalive_secs: u64,
    /// Events kept per user for Last-Event-ID replay.
    #[arg(long, default_value_t = 1024)]
    log_capacity: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let cfg = MockConfig {
        log_capacity: args.log_capacity,
        keepalive: Duration::from_secs(args.keepalive_secs),
    };
    let backend = MockBackend::start_with(args.listen, cfg).await?;
    println!("mock-upstream listening on {}", backend.url());
    tokio::signal::ctrl_c().await?;
    backend.shutdown();
    Ok(())
}
