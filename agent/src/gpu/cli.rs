//! `pivot-agent gpu …`: read GPUs and set their power caps by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use super::{
    CapStore, ConfirmPolicy, GpuManager, GpuProcess, GpuSelector, GpuStatus, NvmlGpus, PowerCapper,
    read_all,
};

#[derive(Debug, clap::Args)]
pub struct GpuArgs {
    /// The NVML library to load instead of the system's libnvidia-ml.so.1 (e.g. pivot's fake one).
    #[arg(long, global = true, env = "PIVOT_NVML_LIB", value_name = "PATH")]
    nvml_lib: Option<PathBuf>,
    #[command(subcommand)]
    command: GpuCommand,
}

#[derive(Debug, clap::Subcommand)]
enum GpuCommand {
    /// List the GPUs: identity, power, caps, temperature, utilization, memory.
    List {
        /// One JSON array, one object per GPU.
        #[arg(long)]
        json: bool,
    },
    /// Set a power cap: checked against the GPU's limits, applied, read back, confirmed on the draw.
    Cap {
        /// A GPU index, a UUID (GPU-…), or `all`.
        target: GpuSelector,
        /// The cap in watts.
        watts: f64,
        /// Record the cap in this state directory, so the agent re-applies it when it starts.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// How long the measured draw may take to fall under the cap.
        #[arg(long, default_value_t = 3000, value_name = "MS")]
        confirm_ms: u64,
        #[arg(long)]
        json: bool,
    },
    /// Re-apply the caps recorded in a state directory (after a reboot or driver reload).
    Reapply {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
}

/// One GPU as `gpu list --json` prints it.
#[derive(Debug, Serialize)]
struct ListEntry {
    index: u32,
    uuid: String,
    name: String,
    pci_bus_id: String,
    power_w: f64,
    energy_j: Option<f64>,
    power_cap_w: f64,
    power_cap_enforced_w: f64,
    power_cap_min_w: f64,
    power_cap_max_w: f64,
    power_cap_default_w: f64,
    temperature_c: Option<u32>,
    utilization_pct: Option<u32>,
    memory_utilization_pct: Option<u32>,
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    sm_clock_mhz: Option<u32>,
    memory_clock_mhz: Option<u32>,
    throttle_reasons: Vec<&'static str>,
    processes: Vec<GpuProcess>,
}

impl From<GpuStatus> for ListEntry {
    fn from(
        GpuStatus {
            identity,
            telemetry: t,
        }: GpuStatus,
    ) -> Self {
        Self {
            index: identity.index,
            uuid: identity.uuid,
            name: identity.name,
            pci_bus_id: identity.pci_bus_id,
            power_w: t.power_w,
            energy_j: t.energy_j,
            power_cap_w: t.limits.limit_w,
            power_cap_enforced_w: t.limits.enforced_w,
            power_cap_min_w: t.limits.min_w,
            power_cap_max_w: t.limits.max_w,
            power_cap_default_w: t.limits.default_w,
            temperature_c: t.temperature_c,
            utilization_pct: t.utilization_gpu_pct,
            memory_utilization_pct: t.utilization_memory_pct,
            memory_used_bytes: t.memory_used_bytes,
            memory_total_bytes: t.memory_total_bytes,
            sm_clock_mhz: t.sm_clock_mhz,
            memory_clock_mhz: t.memory_clock_mhz,
            throttle_reasons: t.throttle_reasons.names(),
            processes: t.processes,
        }
    }
}

/// A GPU that could not be read, in `gpu list --json`.
#[derive(Debug, Serialize)]
struct ListError {
    index: u32,
    error: String,
}

pub async fn run(args: GpuArgs) -> anyhow::Result<ExitCode> {
    let gpus = NvmlGpus::open(args.nvml_lib.as_deref())?;
    match args.command {
        GpuCommand::List { json } => list(&gpus, json),
        GpuCommand::Cap {
            target,
            watts,
            state_dir,
            confirm_ms,
            json,
        } => {
            let policy = ConfirmPolicy {
                window: Duration::from_millis(confirm_ms),
                ..Default::default()
            };
            let mut capper = PowerCapper::new(&gpus, policy);
            if let Some(dir) = state_dir {
                capper = capper.with_store(CapStore::in_dir(&dir));
            }
            let indices = target.resolve(&gpus)?;
            let results = capper.set_many(&indices, watts).await?;
            let mut failed = false;
            let mut reports = Vec::new();
            for result in results {
                match result {
                    Ok(report) => {
                        if !json {
                            println!(
                                "GPU {} ({}): cap {} W (was {} W); enforced {} W after {} ms; \
                                 draw {:.1} W under the cap after {} ms{}",
                                report.index,
                                report.uuid,
                                report.requested_w,
                                report.previous_limit_w,
                                report.enforced_w,
                                report.enforced_after_ms,
                                report.draw_w,
                                report.draw_confirmed_after_ms,
                                if report.persisted {
                                    "; recorded for re-apply"
                                } else {
                                    ""
                                },
                            );
                        }
                        reports.push(report);
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("pivot-agent: {e}");
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        GpuCommand::Reapply { state_dir } => {
            let capper = PowerCapper::new(&gpus, ConfirmPolicy::default())
                .with_store(CapStore::in_dir(&state_dir));
            let done = capper.reapply().await?;
            if done.is_empty() {
                println!("no caps recorded in {}", state_dir.display());
            }
            let mut failed = false;
            for reapplied in &done {
                failed |= matches!(reapplied.outcome, super::ReapplyOutcome::Failed(_));
                println!("{reapplied}");
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn list(gpus: &dyn GpuManager, json: bool) -> anyhow::Result<ExitCode> {
    let statuses = read_all(gpus)?;
    let failed = statuses.iter().any(|(_, s)| s.is_err());
    if json {
        let entries: Vec<serde_json::Value> = statuses
            .into_iter()
            .map(|(index, status)| match status {
                Ok(status) => serde_json::to_value(ListEntry::from(status)),
                Err(e) => serde_json::to_value(ListError {
                    index,
                    error: e.to_string(),
                }),
            })
            .collect::<Result<_, _>>()?;
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        println!(
            "{:<4} {:<42} {:<24} {:>9} {:>18} {:>6} {:>5} {:>17}",
            "GPU", "UUID", "NAME", "POWER", "CAP (MIN-MAX)", "TEMP", "UTIL", "MEMORY"
        );
        for (index, status) in statuses {
            match status {
                Ok(s) => {
                    let t = &s.telemetry;
                    println!(
                        "{:<4} {:<42} {:<24} {:>7.1} W {:>18} {:>6} {:>5} {:>17}",
                        index,
                        s.identity.uuid,
                        s.identity.name,
                        t.power_w,
                        format!(
                            "{} W ({}-{})",
                            t.limits.enforced_w, t.limits.min_w, t.limits.max_w
                        ),
                        t.temperature_c.map_or("-".into(), |c| format!("{c}°C")),
                        t.utilization_gpu_pct
                            .map_or("-".into(), |u| format!("{u}%")),
                        format!(
                            "{:.1}/{:.1} GiB",
                            t.memory_used_bytes as f64 / GIB,
                            t.memory_total_bytes as f64 / GIB
                        ),
                    );
                }
                Err(e) => println!("{index:<4} error: {e}"),
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
