//! `pivot-site`: run a whole simulated site (`pivot-site`, or `pivot-site run`), or write the
//! bundled trace (`pivot-site generate-trace`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use pivot_site::fleet::{DEFAULT_GPU_HOSTS, DEFAULT_MINERS, DEFAULT_RACKS};
use pivot_site::site::{self, SiteOptions};
use pivot_site::sitemodel::Transitions;

/// mimalloc, not glibc's malloc, as the agent and pivot-sim binaries (this process runs their
/// code; docs/BENCHMARKS.md, "The simulated site").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pivot-site",
    version,
    about = "A whole simulated pivot site: controller, agents, emulated miners and GPU hosts, driven by a market trace in accelerated time"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

// Parsed once at start: the size of the run arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the site (the default).
    Run(RunArgs),
    /// Write the bundled synthetic trace (site/traces/two-days.csv) to stdout.
    GenerateTrace {
        #[arg(long, default_value_t = pivot_site::BUNDLED_SEED)]
        seed: u64,
    },
    /// The SIMULATED workload manager's exec hook, run by the site's GPU-host agents
    /// (`[workload.exec]`): PIVOT_ACTION and PIVOT_NODE in, the node's status line out.
    #[command(hide = true)]
    SimWorkloadHook {
        /// The SIMULATED workload manager's address, http://127.0.0.1:PORT.
        #[arg(long)]
        scheduler: String,
        /// The token it checks (the site writes it).
        #[arg(long)]
        token_file: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The controller's gRPC address (pivotctl's default).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The controller's web dashboard and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    web: SocketAddr,
    /// How much faster than the wall clock the trace plays (288: 48 h in 10 minutes).
    #[arg(long, default_value_t = 288.0)]
    speed: f64,
    /// Emulated miners (all six dialects, S19j Pro to S21 class).
    #[arg(long, default_value_t = DEFAULT_MINERS)]
    miners: usize,
    /// Rack agents the miners are spread over.
    #[arg(long, default_value_t = DEFAULT_RACKS)]
    racks: usize,
    /// GPU hosts (eight fake H100s each, one agent each).
    #[arg(long, default_value_t = DEFAULT_GPU_HOSTS)]
    gpu_hosts: usize,
    /// Market trace (TRACE.csv, docs/formats.md); default: the bundled 48-hour synthetic trace.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Start at the trace row in force at this time (RFC 3339); default: the first row.
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// Play this many hours of the trace; default: to its end.
    #[arg(long)]
    hours: Option<f64>,
    /// Policy document (docs/formats.md); default: the controller's built-in policy. Its time
    /// constants are scaled by --speed.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// How long before a trace cap the grid announces it, in trace time (e.g. 30m); the policy's shed lead must fit in it.
    #[arg(long, default_value = "30m", value_parser = pivot_controller::backtest::parse_duration)]
    dr_notice: chrono::Duration,
    /// Time zone decisions are printed in.
    #[arg(long, default_value = "America/Chicago")]
    time_zone: chrono_tz::Tz,
    /// Keep the site's files here (default: a temporary directory, removed at the end).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Keep serving after the trace ends, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// No status line every trace hour.
    #[arg(long)]
    no_hourly: bool,
    /// Modelled time for a miner to sleep or wake, trace seconds (SITE.toml's transition_s).
    #[arg(long, default_value_t = 120)]
    model_miner_transition_s: u32,
    /// Modelled time for a GPU host to be released or drained, trace seconds.
    #[arg(long, default_value_t = 300)]
    model_host_transition_s: u32,
}

/// Thousands of emulated miners need thousands of descriptors: lift the soft limit to the hard.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit; large fleets may fail to start");
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The decisions go to stdout; the parts' own logs to stderr, warnings and above unless
    // PIVOT_LOG says otherwise.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PIVOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::GenerateTrace { seed }) => {
            pivot_site::generate::bundled_csv(seed, pivot_site::BUNDLED_REFERENCE)
                .map(|text| print!("{text}"))
                .context("generating the trace")
        }
        Some(Command::SimWorkloadHook {
            scheduler,
            token_file,
        }) => {
            let out =
                pivot_site::workload::run_hook(&scheduler, &token_file, |k| std::env::var(k).ok())
                    .await;
            print!("{}", out.stdout);
            if !out.stderr.is_empty() {
                eprintln!("pivot-site sim-workload-hook: {}", out.stderr);
            }
            return std::process::ExitCode::from(u8::try_from(out.code).unwrap_or(1));
        }
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "pivot-site: {}",
                pivot_proto::report::error_chain(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    site::run(SiteOptions {
        listen: a.listen,
        web: a.web,
        speed: a.speed,
        miners: a.miners,
        racks: a.racks,
        gpu_hosts: a.gpu_hosts,
        trace: a.trace,
        from: a.from,
        hours: a.hours,
        policy: a.policy,
        dr_notice: a.dr_notice,
        zone: a.time_zone,
        out_dir: a.out_dir,
        keep_running: a.keep_running,
        hourly: !a.no_hourly,
        model_transitions: Transitions {
            miner_s: a.model_miner_transition_s,
            host_s: a.model_host_transition_s,
        },
    })
    .await?;
    Ok(())
}
