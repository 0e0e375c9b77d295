//! The `sessiongate` binary: configuration, logging and signals around [`sessiongate::start`].

use std::io::IsTerminal;
use std::process::ExitCode;

use sessiongate::config::{Config, LogFormat};
use sessiongate::StartError;
use tracing_subscriber::EnvFilter;

// glibc's malloc was a tenth of the CPU of a request (`perf`), and its per-thread arenas kept
// tens of MiB after a load had passed; mimalloc does both with less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sessiongate: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sessiongate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let gateway = match sessiongate::start(config).await {
            Ok(gateway) => gateway,
            Err(error) => {
                tracing::error!(%error, "start-up failed");
                eprintln!("sessiongate: {error}");
                return match error {
                    StartError::Config(_) => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        gateway.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// JSON lines in production (for log pipelines), readable text elsewhere, coloured only on a
/// terminal; the level comes from `RUST_LOG` (checked with the configuration; default `info`).
fn init_logging(config: &Config) {
    let filter = EnvFilter::new(&config.log_filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if config.log_format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
