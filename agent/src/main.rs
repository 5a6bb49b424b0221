//! `pivot-agent`: the per-host daemon and its operator commands.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pivot-agent", version, about = "Pivot per-host agent: ASIC miners, GPUs, host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read and control ASIC miners directly.
    Miner(pivot_agent::miner::cli::MinerArgs),
    /// Read GPUs and set their power caps through NVML.
    Gpu(pivot_agent::gpu::cli::GpuArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PIVOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Miner(args) => pivot_agent::miner::cli::run(args).await,
        Command::Gpu(args) => pivot_agent::gpu::cli::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pivot-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
