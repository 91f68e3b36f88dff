//! `mock-upstream`: the test suite's mock OpenAI upstream as a standalone server, for the
//! benchmark and for poking at the gateway by hand.
//!
//! Prints exactly one line, `mock-upstream listening on http://ADDR`, once the port is
//! bound (a parent process waits for it to learn the port when `--listen` uses port 0),
//! then serves until SIGTERM or ctrl-c. See `tollgate_tests::upstream` for the endpoints
//! and the `"mock"` scripting knobs.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tollgate_tests::upstream::{MockOptions, MockUpstream};

/// A mock OpenAI-compatible upstream (chat, completions, embeddings, images, moderations).
#[derive(Parser, Debug)]
#[command(name = "mock-upstream", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Latency added before the response headers of every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Keep only this many recent requests for `GET /_mock/requests` (0: record none).
    /// Unlimited by default; long benchmark runs should bound it.
    #[arg(long)]
    record_limit: Option<usize>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let opts = MockOptions {
        latency: Duration::from_millis(args.latency_ms),
        addr: Some(args.listen),
    };
    let mock = MockUpstream::try_start_with(opts)
        .await
        .map_err(|e| format!("mock-upstream: cannot listen on {}: {e}", args.listen))?;
    if args.record_limit.is_some() {
        mock.set_record_limit(args.record_limit);
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mock-upstream listening on http://{}", mock.addr())?;
        out.flush()?;
    }
    shutdown_signal().await?;
    drop(mock);
    Ok(())
}

/// Resolves on ctrl-c, or on SIGTERM (what process supervisors and test harnesses send).
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
