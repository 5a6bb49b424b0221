//! Miner sweep benchmark (issue 3): reads an emulated fleet through the daemon's own code path —
//! `inventory::discover_miners` to build the slots, then `poll::sweep` with the daemon's
//! per-miner deadline — and reports sweep time, TCP connections per miner per sweep, CPU time and
//! peak RSS as one `RESULT {json}` line. `scripts/bench-miner-sweep` starts the fleets (pivot-sim
//! processes), runs this and pyasic against them, and prints the table for docs/BENCHMARKS.md.
//!
//! Connections are counted by the kernel: the script runs everything in a private network
//! namespace, so the delta of `Tcp: ActiveOpens` in /proc/net/snmp over a sweep is exactly the
//! connections this process opened. CPU time and peak RSS come from /proc/self (the same
//! accounting getrusage reads), so only this process's work is counted, not the emulator's.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use pivot_agent::config::{Config, ProcessEnv};
use pivot_agent::inventory::{MinerSlot, discover_miners, miner_device_id};
use pivot_agent::miner::MinerAddr;
use pivot_agent::poll::sweep;
use serde_json::json;

/// Sweep an emulated fleet with pivot's drivers.
#[derive(Debug, Parser)]
struct Args {
    /// Files of `pivot-sim miners` output lines (`<dialect> <address>`, the address as the agent
    /// takes it: `HOST:PORT[,http=PORT]`).
    #[arg(long, required = true)]
    fleet: Vec<PathBuf>,
    /// Miners to read: the first COUNT lines of the fleet files (all when absent).
    #[arg(long)]
    count: Option<usize>,
    /// Files of hung miners (same format); they replace the last lines of the COUNT.
    #[arg(long)]
    hung: Vec<PathBuf>,
    /// `sorted`: the daemon's order (by device id, so the hung range comes last); `spread`: the
    /// hung miners interleaved evenly among the healthy ones.
    #[arg(long, default_value = "sorted")]
    order: String,
    /// Detect every miner's dialect instead of configuring it (`dialect = "auto"`).
    #[arg(long)]
    detect: bool,
    /// Sweeps to time after discovery.
    #[arg(long, default_value_t = 3)]
    sweeps: usize,
    /// `poll.concurrency`.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// `poll.timeout_ms`: each request's timeout; a read's deadline is four of them, as in the daemon.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Also sweep each dialect alone once, to count its connections per miner.
    #[arg(long)]
    per_dialect: bool,
    /// A name for this run in the output.
    #[arg(long, default_value = "pivot")]
    label: String,
    /// `cargo bench` passes `--bench` to harness-less benches.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Line {
    dialect: String,
    addr: String,
}

fn read_fleet(files: &[PathBuf]) -> Result<Vec<Line>> {
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = l.split_whitespace();
            let (Some(dialect), Some(addr), None) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("{}: `{l}` is not `<dialect> <address>`", f.display());
            };
            out.push(Line {
                dialect: dialect.to_owned(),
                addr: addr.to_owned(),
            });
        }
    }
    Ok(out)
}

/// The agent configuration the daemon would be given for these miners.
fn config_text(lines: &[Line], state_dir: &Path, args: &Args) -> String {
    let mut t = format!(
        "host_id = \"bench\"\nstate_dir = \"{}\"\n[controller]\nurl = \"http://127.0.0.1:1\"\n\
         [poll]\nconcurrency = {}\ntimeout_ms = {}\n[metrics]\nlisten = \"\"\n",
        state_dir.display(),
        args.concurrency,
        args.timeout_ms
    );
    for l in lines {
        let dialect = if args.detect { "auto" } else { &l.dialect };
        let _ = write!(
            t,
            "[[miners]]\naddr = \"{}\"\ndialect = \"{dialect}\"\n",
            l.addr
        );
    }
    t
}

/// `Tcp: ActiveOpens` of this network namespace.
fn active_opens() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("/proc/net/snmp has no Tcp lines");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ActiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .context("/proc/net/snmp: no Tcp ActiveOpens")
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds(clk_tck: f64) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/self/stat: no `)`")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .context("/proc/self/stat: short line")
    };
    Ok((tick(11)? + tick(12)?) / clk_tck)
}

/// Peak resident set, MiB (VmHWM).
fn peak_rss_mib() -> Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("/proc/self/status: no VmHWM")?;
    Ok(kb / 1024.0)
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Thousands of sockets at once need more descriptors than the default soft limit.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("miner_sweep: could not raise the open-file limit: {e}");
        }
    }
}

struct Measured {
    wall_s: f64,
    cpu_s: f64,
    connections: u64,
    reachable: usize,
    errors: BTreeMap<String, usize>,
}

async fn timed_sweep(slots: &Arc<Vec<MinerSlot>>, args: &Args, tck: f64) -> Result<Measured> {
    let deadline = Duration::from_millis(args.timeout_ms) * 4;
    let (opens, cpu, start) = (active_opens()?, cpu_seconds(tck)?, Instant::now());
    let readings = sweep(slots, args.concurrency, deadline, Duration::ZERO).await;
    let wall_s = start.elapsed().as_secs_f64();
    let (cpu_s, connections) = (cpu_seconds(tck)? - cpu, active_opens()? - opens);
    let mut errors = BTreeMap::new();
    let mut reachable = 0;
    for (_, r, _) in &readings {
        match r.error_kind {
            None => reachable += 1,
            Some(kind) => *errors.entry(kind.to_owned()).or_insert(0) += 1,
        }
    }
    Ok(Measured {
        wall_s,
        cpu_s,
        connections,
        reachable,
        errors,
    })
}

/// Puts the hung miners (the tail of `slots` once sorted) evenly among the healthy ones.
fn spread(slots: Vec<MinerSlot>, hung: &HashSet<String>) -> Vec<MinerSlot> {
    let (bad, good): (Vec<_>, Vec<_>) =
        slots.into_iter().partition(|s| hung.contains(&s.device_id));
    if bad.is_empty() {
        return good;
    }
    let every = (good.len() + bad.len()) / bad.len();
    let mut out = Vec::with_capacity(good.len() + bad.len());
    let (mut good, mut bad) = (good.into_iter(), bad.into_iter());
    loop {
        let mut any = false;
        for _ in 1..every {
            if let Some(s) = good.next() {
                out.push(s);
                any = true;
            }
        }
        if let Some(s) = bad.next() {
            out.push(s);
            any = true;
        }
        if !any {
            break;
        }
    }
    out.extend(good);
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    let tck = clk_tck();
    let mut lines = read_fleet(&args.fleet)?;
    let hung_lines = read_fleet(&args.hung)?;
    let count = args.count.unwrap_or(lines.len() + hung_lines.len());
    if hung_lines.len() > count || lines.len() < count - hung_lines.len() {
        bail!(
            "{count} miners asked for: {} healthy and {} hung given",
            lines.len(),
            hung_lines.len()
        );
    }
    lines.truncate(count - hung_lines.len());
    let hung_ids = hung_lines
        .iter()
        .map(|l| l.addr.parse::<MinerAddr>().map(|a| miner_device_id(&a)))
        .collect::<Result<HashSet<String>, _>>()?;
    lines.extend(hung_lines);

    let state = tempfile::tempdir().context("creating a state directory")?;
    let config_path = state.path().join("agent.toml");
    std::fs::write(&config_path, config_text(&lines, state.path(), &args))?;
    let config = Config::load(&config_path, &ProcessEnv).context("loading the generated config")?;
    let targets = config.miner_targets(&config_path)?;

    let (opens, cpu, start) = (active_opens()?, cpu_seconds(tck)?, Instant::now());
    let (slots, missing) = discover_miners(&config, state.path(), targets).await;
    let discovery = json!({
        "wall_s": start.elapsed().as_secs_f64(),
        "cpu_s": cpu_seconds(tck)? - cpu,
        "connections": active_opens()? - opens,
        "found": slots.len(),
        "missing": missing.len(),
    });
    eprintln!("{}: discovery {discovery}", args.label);
    let slots = match args.order.as_str() {
        "sorted" => slots,
        "spread" => spread(slots, &hung_ids),
        other => bail!("--order {other}: expected sorted or spread"),
    };
    let by_dialect: BTreeMap<String, Vec<MinerSlot>> =
        slots.iter().fold(BTreeMap::new(), |mut m, s| {
            m.entry(s.identity.dialect.to_string())
                .or_insert_with(Vec::new)
                .push(s.clone());
            m
        });
    let slots = Arc::new(slots);

    let mut sweeps = Vec::new();
    for i in 0..args.sweeps {
        let m = timed_sweep(&slots, &args, tck).await?;
        eprintln!(
            "{}: sweep {i}: {:.3} s, {:.3} CPU s, {} connections, {} read, errors {:?}",
            args.label, m.wall_s, m.cpu_s, m.connections, m.reachable, m.errors
        );
        sweeps.push(json!({
            "wall_s": m.wall_s, "cpu_s": m.cpu_s, "connections": m.connections,
            "conns_per_miner": m.connections as f64 / slots.len().max(1) as f64,
            "read": m.reachable, "errors": m.errors,
        }));
    }
    let mut per_dialect = BTreeMap::new();
    if args.per_dialect {
        for (dialect, group) in by_dialect {
            let n = group.len();
            let group = Arc::new(group);
            // Twice: the first may open HTTP connections that the second finds pooled.
            let first = timed_sweep(&group, &args, tck).await?;
            let second = timed_sweep(&group, &args, tck).await?;
            per_dialect.insert(
                dialect,
                json!({
                    "miners": n,
                    "conns_per_miner": first.connections as f64 / n.max(1) as f64,
                    "conns_per_miner_pooled": second.connections as f64 / n.max(1) as f64,
                    "read": second.reachable,
                }),
            );
        }
    }
    let result = json!({
        "label": args.label,
        "miners": slots.len(),
        "hung": hung_ids.len(),
        "order": args.order,
        "concurrency": args.concurrency,
        "timeout_ms": args.timeout_ms,
        "discovery": discovery,
        "sweeps": sweeps,
        "per_dialect": per_dialect,
        "cpu_total_s": cpu_seconds(tck)?,
        "peak_rss_mib": peak_rss_mib()?,
    });
    println!("RESULT {result}");
    Ok(())
}
