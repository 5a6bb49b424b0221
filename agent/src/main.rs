//! `pivot-agent`: the per-host daemon and its operator commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pivot_agent::config::{Config, ProcessEnv};
use pivot_agent::link;

/// mimalloc, not glibc's malloc: malloc and free were about a fifth of the busy CPU in a
/// 10,000-miner curtail; the agents' CPU falls by a fifth for about 10 MiB more RSS each
/// (docs/BENCHMARKS.md, "The simulated site"). The controller keeps glibc's, arena-capped.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pivot-agent",
    version,
    about = "Pivot per-host agent: ASIC miners, GPUs, host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: poll miners and GPUs, hold the controller's intents, serve /metrics.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file without starting anything.
    CheckConfig { config: PathBuf },
    /// Read and control ASIC miners directly.
    Miner(pivot_agent::miner::cli::MinerArgs),
    /// Read GPUs and set their power caps through NVML.
    Gpu(pivot_agent::gpu::cli::GpuArgs),
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    let c = Config::load(path, &ProcessEnv)?;
    c.check_files(path)?;
    let miners = c.miner_targets(path)?.len();
    println!(
        "{}: ok (host {}, controller {}, {miners} miner address(es), GPUs {}, fallback {:?})",
        path.display(),
        c.host_id,
        c.controller.url,
        if c.gpus.enabled { "on" } else { "off" },
        c.fallback
    );
    // The controller's own figures come with its welcome (the daemon checks them then); here,
    // those of a controller with default settings.
    let telemetry = link::DEFAULT_TELEMETRY_INTERVAL;
    let believed = link::default_stale_after(telemetry);
    for problem in link::unseen_between_polls(&c.polls(), telemetry, believed) {
        println!("note, for a controller with default settings: {problem}");
    }
    Ok(ExitCode::SUCCESS)
}

// One thread for the whole daemon. A sweep is one task driving up to `poll.concurrency` reads,
// and nothing else the agent does needs more than a fraction of a core; worker threads only
// added a wake-up of another thread (futex, context switch) to much of the I/O a read waits on
// and a malloc arena per thread. Measured at 10,000 miners against two workers (docs/BENCHMARKS.md,
// issue 12): CPU per read 86-92 -> 72-74 µs (as with the sweep alone on a thread of its own), peak
// RSS 86 -> 66 MiB LuxOS-only and 105 -> 83 MiB mixed. Blocking work (NVML) goes through
// `spawn_blocking`.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let default_level = match std::env::args().nth(1).as_deref() {
        Some("run") => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PIVOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => match Config::load(&config, &ProcessEnv)
            .and_then(|c| c.check_files(&config).map(|()| c))
        {
            Ok(c) => pivot_agent::daemon::run(c, &config, shutdown_signal())
                .await
                .map(|()| ExitCode::SUCCESS),
            Err(e) => Err(e.into()),
        },
        Command::CheckConfig { config } => check_config(&config),
        Command::Miner(args) => pivot_agent::miner::cli::run(args).await,
        Command::Gpu(args) => pivot_agent::gpu::cli::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "pivot-agent: {}",
                pivot_proto::report::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}
