//! asic-rs-sweep: the asic-rs crate's cost to read a fleet, for scripts/bench-miner-sweep's
//! table beside pivot, pyasic and the floor client.
//!
//!     asic-rs-sweep --fleet FILE --count N [--sweeps S] [--concurrency C] [--label L]
//!
//! FILE holds `pivot-sim miners` lines (`DIALECT HOST:PORT[,http=PORT]`); the first N are read.
//! Identify: `MinerFactory::get_miner` for every address, C at a time. Then S data sweeps:
//! `get_data()` on every identified miner, C at a time. Prints one line, `RESULT {json}`, with
//! the identify time, each sweep's time, the process's CPU seconds per sweep (/proc/self/stat),
//! the TCP connections each sweep opened (ActiveOpens of /proc/net/snmp: the whole network
//! namespace's, so run it in a private one as scripts/bench-miner-sweep does), its peak RSS and
//! how many miners each sweep read a hashrate from. asic-rs as its users call it: nothing tuned.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use asic_rs::MinerFactory;
use asic_rs::core::traits::miner::Miner;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the command name; 100 Hz.
    (ticks(11) + ticks(12)) / 100.0
}

fn active_opens() -> f64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (Some(names), Some(values)) = (tcp.first(), tcp.get(1)) else {
        return 0.0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ActiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(fleet), Some(count)) = (arg(&args, "--fleet"), arg(&args, "--count")) else {
        eprintln!("usage: asic-rs-sweep --fleet FILE --count N [--sweeps S] [--concurrency C]");
        return std::process::ExitCode::from(2);
    };
    let count: usize = count.parse().unwrap_or(0);
    let sweeps: usize = arg(&args, "--sweeps").and_then(|s| s.parse().ok()).unwrap_or(3);
    let concurrency: usize = arg(&args, "--concurrency").and_then(|s| s.parse().ok()).unwrap_or(1024);
    let text = match std::fs::read_to_string(&fleet) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("asic-rs-sweep: {fleet}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let ips: Vec<IpAddr> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.split(':').next()?.parse().ok())
        .take(count)
        .collect();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));

    let t0 = Instant::now();
    let c0 = cpu_s();
    let mut found = JoinSet::new();
    for ip in ips.iter().copied() {
        let gate = Arc::clone(&gate);
        found.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            MinerFactory::new().get_miner(ip).await.ok().flatten()
        });
    }
    let mut miners: Vec<Arc<Box<dyn Miner>>> = Vec::new();
    while let Some(r) = found.join_next().await {
        if let Ok(Some(m)) = r {
            miners.push(Arc::new(m));
        }
    }
    let identify_s = t0.elapsed().as_secs_f64();
    let identify_cpu_s = cpu_s() - c0;

    let mut results = Vec::new();
    for _ in 0..sweeps {
        let t = Instant::now();
        let c = cpu_s();
        let opens = active_opens();
        let mut set = JoinSet::new();
        for m in &miners {
            let (m, gate) = (Arc::clone(m), Arc::clone(&gate));
            set.spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                let info = m.get_device_info();
                let model = format!("{:?} {:?}", info.firmware, info.model);
                Some((m.get_data().await.hashrate.is_some(), model))
            });
        }
        let mut read = 0usize;
        let mut missed: std::collections::BTreeMap<String, usize> = Default::default();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Some((true, _))) => read += 1,
                Ok(Some((false, model))) => *missed.entry(model).or_default() += 1,
                _ => *missed.entry("task failed".into()).or_default() += 1,
            }
        }
        let connections = active_opens() - opens;
        results.push(json!({
            "wall_s": t.elapsed().as_secs_f64(),
            "cpu_s": cpu_s() - c,
            "connections": connections,
            "conns_per_miner": connections / miners.len().max(1) as f64,
            "read": read,
            "no_hashrate_by_model": missed,
            "open_fds_after": std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
        }));
    }
    println!(
        "RESULT {}",
        json!({
            "label": arg(&args, "--label").unwrap_or_else(|| format!("asic-rs {}", ips.len())),
            "miners": ips.len(),
            "identified": miners.len(),
            "identify": {"wall_s": identify_s, "cpu_s": identify_cpu_s},
            "sweeps": results,
            "peak_rss_mib": peak_rss_mib(),
            "concurrency": concurrency,
            "asic_rs": "0.8.6",
        })
    );
    std::process::ExitCode::SUCCESS
}
