//! `pivot-sim`: run emulated hardware from the command line.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pivot_sim::miner::{Addressing, Dialect, Fault, MinerSpec, Timing, spawn_fleet};

/// mimalloc, not glibc's malloc: malloc and free were about a fifth of the busy CPU in a
/// 10,000-miner curtail; the emulator's CPU falls by a third (docs/BENCHMARKS.md, "The
/// simulated site").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Emulated miners (and later other hardware) for tests, benchmarks and dev mode.
#[derive(Debug, Parser)]
#[command(name = "pivot-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve emulated ASIC miners until SIGINT/SIGTERM. Prints `<dialect> <address>` per miner,
    /// the address as `pivot-agent` takes it (`HOST:PORT`, plus `,http=PORT` for Antminer and
    /// Braiins), then serves. SIGUSR1 ages the LuxOS sessions, Whatsminer v2 tokens and Antminer
    /// Digest nonces the miners gave by two hours, so the next command to each must log on again
    /// (benches of a curtail hours after the last one).
    Miners(MinersArgs),
}

#[derive(Debug, clap::Args)]
struct MinersArgs {
    /// antminer, braiins, luxos, whatsminer-v2, whatsminer-v3, bitaxe, or mixed (cycles through all).
    #[arg(long)]
    dialect: String,
    /// How many miners.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Each miner on its own address from this one up, with its dialect's real ports (80 needs root).
    #[arg(
        long,
        conflicts_with = "port_base",
        required_unless_present = "port_base"
    )]
    ip_range: Option<Ipv4Addr>,
    /// Consecutive ports on one address from this one up.
    #[arg(long)]
    port_base: Option<SocketAddr>,
    /// Short ramps, CGI replies and reboots (for tests).
    #[arg(long)]
    fast: bool,
    /// Faults every miner starts with (repeat or comma-separate): see the list in the docs of
    /// `pivot_sim::miner::Fault` — hang, close, no-nul, trailing-comma, status-14, noop, ...
    #[arg(long, value_delimiter = ',')]
    fault: Vec<String>,
    /// Runtime threads serving the miners: 0 for one per core, 1 for the process's own thread
    /// only. Benches that split a fleet across several processes on few cores give 1: each
    /// process then serves its miners without waking another thread for its I/O.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    raise_fd_limit();
    let cli = Cli::parse();
    match cli.command {
        Command::Miners(args) => runtime(args.threads)?.block_on(miners(args)),
    }
}

/// A runtime of `threads` workers (0: one per core), or one on this thread alone (1).
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    Ok(builder.enable_all().build()?)
}

/// Thousands of listeners need thousands of descriptors: lift the soft limit to the hard one.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit; large fleets may fail to bind");
        }
    }
}

async fn miners(args: MinersArgs) -> Result<()> {
    let dialects: Vec<Dialect> = if args.dialect == "mixed" {
        Dialect::ALL.to_vec()
    } else {
        vec![args.dialect.parse()?]
    };
    let faults = args
        .fault
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| f.parse::<Fault>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("known faults: {}", Fault::NAMES))?;
    let timing = if args.fast {
        Timing::fast()
    } else {
        Timing::realistic()
    };
    let specs = (0..args.count)
        .map(|i| {
            let dialect = dialects[i % dialects.len()];
            MinerSpec::new(dialect)
                .timing(timing)
                .faults(faults.clone())
                .serial(u32::try_from(i + 1).unwrap_or(u32::MAX))
        })
        .collect();
    let addressing = match (args.ip_range, args.port_base) {
        (Some(ip), _) => Addressing::IpRange(ip),
        (None, Some(base)) => Addressing::PortBase(base),
        (None, None) => anyhow::bail!("give --ip-range or --port-base"),
    };
    let fleet = spawn_fleet(specs, addressing).await?;
    let mut out = std::io::stdout().lock();
    for m in &fleet {
        writeln!(out, "{} {}", m.dialect(), m.agent_addr())?;
    }
    out.flush()?;
    drop(out);
    wait_for_signal().await?;
    drop(fleet);
    Ok(())
}

/// How far SIGUSR1 moves the miners' credentials' clock on: past every lifetime it judges (the
/// longest, a Whatsminer v2 token's, is 30 minutes).
const CREDENTIALS_SKIP: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// Serves until SIGINT or SIGTERM. Each SIGUSR1 ages the miners' sessions, tokens and nonces two
/// hours ([`pivot_sim::miner::auth_clock`]): the next command to each finds them lapsed, as a
/// command hours after the last one would.
async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.context("waiting for SIGINT"),
            _ = term.recv() => return Ok(()),
            _ = usr1.recv() => {
                pivot_sim::miner::auth_clock::skip(CREDENTIALS_SKIP);
                tracing::info!("SIGUSR1: the sessions, tokens and nonces the miners gave are now two hours older");
            }
        }
    }
}
