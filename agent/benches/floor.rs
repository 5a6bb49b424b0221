//! The yardstick for the agent's cost per miner read (issue 12): the least a client can do to
//! read a cgminer-style miner — connect, send `summary+pools+stats`, read to the NUL, parse the
//! JSON with serde_json into a `Value` — over the same emulated fleet the daemon reads, with the
//! daemon's concurrency. `scripts/bench-hotpath` runs it and the daemon in one script and
//! reports the daemon's CPU per read as a ratio to this one's. Prints one `RESULT {json}` line:
//! reads, failures, CPU seconds of this process over the timed sweeps (from /proc/self/stat),
//! CPU µs per read, peak RSS.

use std::time::Instant;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One read: what every cgminer client does, and nothing more.
async fn read(addr: &str) -> Result<serde_json::Value> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(br#"{"command":"summary+pools+stats"}"#).await?;
    let mut buf = Vec::with_capacity(8192);
    s.read_to_end(&mut buf).await?;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(serde_json::from_slice(&buf[..end])?)
}

fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<f64> = after.split(' ').filter_map(|x| x.parse().ok()).collect();
    // utime and stime are fields 14 and 15 of stat: 12th and 13th after the command name.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `--one-thread`: a current-thread runtime, as the agent runs; by default tokio's
    // multi-threaded one, the floor the issue was measured against.
    let runtime = if args.iter().any(|a| a == "--one-thread") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Runtime::new()?
    };
    runtime.block_on(sweeps(&args))
}

async fn sweeps(args: &[String]) -> Result<()> {
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let fleet = std::fs::read_to_string(arg("--fleet").context("--fleet FILE")?)?;
    let count: usize = arg("--count").map_or(Ok(usize::MAX), |c| c.parse())?;
    let sweeps: usize = arg("--sweeps").map_or(Ok(3), |c| c.parse())?;
    let concurrency: usize = arg("--concurrency").map_or(Ok(1024), |c| c.parse())?;
    // `pivot-sim miners` lines: `<dialect> HOST:PORT[,http=PORT]`; the cgminer port is PORT.
    let addrs: Vec<String> = fleet
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|a| a.split(',').next().unwrap_or(a).to_owned())
        .take(count)
        .collect();
    let (t0, c0) = (Instant::now(), cpu_s());
    let mut failures = 0;
    for _ in 0..sweeps {
        let results: Vec<_> = futures::stream::iter(&addrs)
            .map(|a| read(a))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        failures += results.iter().filter(|r| r.is_err()).count();
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
    let reads = addrs.len() * sweeps;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap_or("")
        .trim();
    println!(
        "RESULT {}",
        serde_json::json!({"client": "floor", "one_thread": args.iter().any(|a| a == "--one-thread"), "reads": reads, "failures": failures, "wall_s": wall,
            "cpu_s": cpu, "cpu_us_per_read": cpu * 1e6 / reads.max(1) as f64, "peak_rss": hwm_kib})
    );
    Ok(())
}
