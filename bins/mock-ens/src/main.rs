//! `mock-ens run --config ens.toml`: the ENS2 stand-in; see the library docs.

use clap::{Parser, Subcommand};
use mock_ens::MockEns;
use mock_ens::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mock-ens",
    version,
    about = "A stand-in for ENS2 behind the gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM or SIGINT.
    Run {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let Command::Run { config } = Cli::parse().command;
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mock-ens: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mock-ens: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signalled = termination();
        match MockEns::start(config).await {
            Ok(ens) => {
                println!("mock-ens listening on {}", ens.addr());
                signalled.await;
                ens.shutdown().await;
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("mock-ens: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on SIGTERM or SIGINT; the handlers are installed when called.
fn termination() -> impl std::future::Future<Output = ()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        match term.as_mut() {
            Some(term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
