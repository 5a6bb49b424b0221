//! `pivot-agent run`: inventory, polling, the workload manager, reconcile, the controller link and
//! local HTTP, wired.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use pivot_proto::v1;
use tracing::{info, warn};

use crate::config::Config;
use crate::gpu::{GpuManager, NvmlGpus};
use crate::host::HostSampler;
use crate::inventory;
use crate::inventory::gpus::{self, GpuObservations, GpuSlot};
use crate::link::{self, LinkState};
use crate::metrics::{self, Exposition};
use crate::poll::{self, Observations};
use crate::reconcile::{DiskStore, Reconciler, Settings};
use crate::state::{StateDir, StateLock};
use crate::workload::WorkloadActuator;
use crate::workload::device::{HOST_DEVICE_ID, NodeReadings, device, read_once, run_poll};

/// What the link reports, assembled from the agent's parts.
struct AgentSource {
    host_id: String,
    host_config: crate::config::HostConfig,
    miners: Arc<inventory::MinerSet>,
    obs: Arc<Observations>,
    gpu_slots: Arc<Vec<GpuSlot>>,
    gpu_obs: Arc<GpuObservations>,
    reconciler: Arc<Reconciler>,
    host: Mutex<Option<HostSampler>>,
    workload: Option<HostWorkload>,
}

/// The host's workload manager, when `[workload]` configures one.
struct HostWorkload {
    actuator: Arc<WorkloadActuator>,
    readings: Arc<NodeReadings>,
}

impl AgentSource {
    fn host_reading(&self) -> Option<v1::HostReading> {
        let sample = self
            .host
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .map(HostSampler::sample);
        // The node's last read (refreshed on the GPU poll interval), never a read made here:
        // a telemetry snapshot must not wait on the workload manager.
        let node = self.workload.as_ref().and_then(|w| w.readings.latest());
        if sample.is_none() && node.is_none() {
            return None;
        }
        let h = sample.as_ref();
        let [l1, l5, l15] = h
            .and_then(|h| h.load_average)
            .map_or([None; 3], |l| l.map(Some));
        Some(v1::HostReading {
            cpu_usage_pct: h
                .and_then(|h| h.cpu_usage_pct)
                .map(f64::from)
                .filter(|v| v.is_finite()),
            memory_used_bytes: h.map(|h| h.memory_used_bytes),
            memory_total_bytes: h.map(|h| h.memory_total_bytes),
            load_1m: l1,
            load_5m: l5,
            load_15m: l15,
            uptime: h
                .and_then(|h| h.uptime_s)
                .map(|s| pivot_proto::model::duration_to_proto(Duration::from_secs(s))),
            temperature_c: h
                .and_then(|h| h.max_temperature_c)
                .map(f64::from)
                .filter(|v| v.is_finite()),
            workload_state: node
                .as_ref()
                .map_or(v1::WorkloadState::Unspecified, |n| n.state)
                as i32,
            observed_at: Some(pivot_proto::model::timestamp_to_proto(Utc::now())),
            power_w: None,
            workload: node.map(|n| n.reading),
        })
    }
}

impl link::Source for AgentSource {
    fn hello(&self) -> v1::Hello {
        let host = {
            let mut guard = self
                .host
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.as_mut().map(HostSampler::sample)
        };
        v1::Hello {
            host_id: self.host_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            host: Some(v1::HostInventory {
                hostname: host
                    .as_ref()
                    .and_then(|h| h.hostname.clone())
                    .unwrap_or_default(),
                cpu_count: host
                    .as_ref()
                    .map_or(0, |h| u32::try_from(h.cpu_count).unwrap_or(u32::MAX)),
                memory_total_bytes: host.as_ref().map_or(0, |h| h.memory_total_bytes),
                workload_managers: self
                    .workload
                    .iter()
                    .map(|w| w.actuator.kind().to_proto() as i32)
                    .collect(),
                workload_node_name: self
                    .workload
                    .as_ref()
                    .map(|w| w.actuator.node().to_owned())
                    .unwrap_or_default(),
                base_power_w: self.host_config.base_power_w,
                max_power_w: self.host_config.max_power_w,
            }),
            miners: self
                .miners
                .slots()
                .iter()
                .map(inventory::miner_inventory)
                .chain(
                    self.miners
                        .missing()
                        .iter()
                        .map(inventory::missing_inventory),
                )
                .collect(),
            gpus: self.gpu_slots.iter().map(gpus::inventory).collect(),
            held_intents: self
                .reconciler
                .held_intents()
                .iter()
                .map(pivot_proto::model::Intent::to_proto)
                .collect(),
        }
    }

    fn inventory_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.miners.subscribe()
    }

    fn telemetry(&self) -> v1::TelemetrySnapshot {
        // Built under the read lock rather than from a copy of the map: at 10,000 miners a
        // copy is tens of megabytes every telemetry interval.
        let miners = self.obs.with_miners(|all| {
            all.iter()
                .map(|(id, m)| inventory::miner_reading(id, &m.reading, m.at))
                .collect()
        });
        v1::TelemetrySnapshot {
            taken_at: Some(pivot_proto::model::timestamp_to_proto(Utc::now())),
            miners,
            gpus: self
                .gpu_obs
                .snapshot()
                .iter()
                .map(|(id, o)| gpus::reading(id, o))
                .collect(),
            host: self.host_reading(),
        }
    }
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    config: Config,
    config_path: &Path,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let state = StateDir::open(&config.state_dir)?;
    // Held until the process ends: a second agent on this state would drive the same devices.
    let _lock = StateLock::acquire(&state)?;
    let targets = config.miner_targets(config_path)?;
    let configured = targets.len();
    let (slots, missing) = inventory::discover_miners(&config, state.path(), targets).await;
    for m in &missing {
        warn!(miner = %m.target.addr, error = %m.error, "Configured miner not found; looked for again every poll.rediscover_s");
    }
    let options = inventory::driver_options(&config);
    let pacing = config.poll.pacing_s.map(Duration::from_secs_f64);
    let mut devices: BTreeMap<_, _> = slots
        .iter()
        .map(|s| {
            (
                s.device_id.clone(),
                inventory::miner_device(s, &options, pacing),
            )
        })
        .collect();
    let (gpu_manager, gpu_slots, lost_gpus) = if config.gpus.enabled {
        let library = config.gpus.nvml_lib.clone();
        let manager: Arc<dyn GpuManager> = Arc::new(
            NvmlGpus::open(library.as_deref()).context("gpus.enabled is true but NVML cannot be used (set gpus.enabled = false on hosts without GPUs)")?,
        );
        gpus::reapply_persisted(manager.as_ref(), state.path())
            .await
            .context("re-applying the GPU caps the agent recorded")?;
        let (found, lost) =
            gpus::discover(manager.as_ref(), &config.gpus).context("discovering GPUs")?;
        for g in &found {
            devices.insert(
                g.device_id.clone(),
                gpus::device(g, &manager, &config.gpus, state.path()),
            );
        }
        (
            Some(manager),
            found,
            lost.into_iter().map(|l| l.index).collect(),
        )
    } else {
        (None, Vec::new(), Vec::new())
    };
    let workload = match &config.workload {
        Some(w) => {
            let actuator = Arc::new(
                crate::workload::connect(&config.host_id, w)
                    .await
                    .context("setting up the workload manager ([workload])")?,
            );
            devices.insert(HOST_DEVICE_ID.to_owned(), device(&actuator));
            info!(manager = %actuator.kind(), node = %actuator.node(), "Workload manager ready");
            Some(HostWorkload {
                actuator,
                readings: Arc::new(NodeReadings::default()),
            })
        }
        None => None,
    };
    info!(
        configured,
        miners = slots.len(),
        gpus = gpu_slots.len(),
        workload = workload.is_some(),
        "Inventory ready"
    );
    let reconciler = Reconciler::new(
        devices,
        Arc::new(DiskStore::new(&state)),
        Settings {
            confirm_timeout: Duration::from_secs_f64(config.poll.confirm_s),
            fallback: config.fallback,
            max_clock_skew: Duration::from_secs_f64(config.controller.max_clock_skew_s),
        },
        Arc::new(Utc::now),
    )
    .context("loading held intents")?;
    let miners = Arc::new(inventory::MinerSet::new(slots, missing));
    let gpu_slots = Arc::new(gpu_slots);
    let obs = Arc::new(Observations::default());
    let gpu_obs = Arc::new(GpuObservations::default());
    let link_state = Arc::new(LinkState {
        polls: config.polls(),
        ..LinkState::default()
    });
    let host = match HostSampler::new() {
        Ok(h) => Some(h),
        Err(e) => {
            warn!(error = %e, "Host metrics unavailable");
            None
        }
    };
    // The node is read before the first hello, so the first telemetry already shows it.
    if let Some(w) = &workload {
        let first = read_once(&w.actuator, &w.readings).await;
        reconciler.observe(HOST_DEVICE_ID, first);
    }
    let workload_poll = workload
        .as_ref()
        .map(|w| (Arc::clone(&w.actuator), Arc::clone(&w.readings)));
    let source = Arc::new(AgentSource {
        host_id: config.host_id.clone(),
        host_config: config.host.clone(),
        miners: Arc::clone(&miners),
        obs: Arc::clone(&obs),
        gpu_slots: Arc::clone(&gpu_slots),
        gpu_obs: Arc::clone(&gpu_obs),
        reconciler: Arc::clone(&reconciler),
        host: Mutex::new(host),
        workload,
    });

    let mut tasks = tokio::task::JoinSet::new();
    // A request deadline per miner: connect and reply each get the timeout; a dialect may need
    // a few requests per read (login, then reads), so the whole read gets four.
    let deadline = config.poll.timeout() * 4;
    tasks.spawn(inventory::rediscover(
        config.clone(),
        state.path().to_owned(),
        Arc::clone(&miners),
        Arc::clone(&reconciler),
        Duration::from_secs_f64(config.poll.rediscover_s),
    ));
    tasks.spawn(poll::run(
        Arc::clone(&miners),
        Arc::clone(&obs),
        Arc::clone(&reconciler),
        config.poll.miner_interval(),
        config.poll.concurrency,
        deadline,
    ));
    if let Some(manager) = gpu_manager {
        tasks.spawn(gpus::run_poll(
            manager,
            Arc::clone(&gpu_slots),
            Arc::clone(&gpu_obs),
            Arc::clone(&reconciler),
            config.poll.gpu_interval(),
        ));
    }
    if let Some((actuator, readings)) = workload_poll {
        tasks.spawn(run_poll(
            actuator,
            readings,
            Arc::clone(&reconciler),
            config.poll.gpu_interval(),
        ));
    }
    {
        // Lease expiries and confirmation deadlines are checked between polls too.
        let reconciler = Arc::clone(&reconciler);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                reconciler.reconcile();
            }
        });
    }
    tasks.spawn(link::run(
        config.controller.clone(),
        source,
        Arc::clone(&reconciler),
        Arc::clone(&link_state),
    ));
    if !config.metrics.listen.is_empty() {
        let addr = config.metrics.listen.parse().context("metrics.listen")?;
        let (host_id, g, gs) = (
            config.host_id.clone(),
            Arc::clone(&gpu_obs),
            Arc::clone(&gpu_slots),
        );
        let gpu_series: metrics::ExtraSeries =
            Arc::new(move |w| gpus::render(w, &host_id, &gs, &lost_gpus, &g));
        let set = Arc::clone(&miners);
        let undetected: metrics::Undetected = Arc::new(move || {
            set.missing()
                .iter()
                .map(|m| inventory::miner_device_id(&m.target.addr))
                .collect()
        });
        let exposition = Exposition {
            host_id: config.host_id.clone(),
            obs: Arc::clone(&obs),
            link: Arc::clone(&link_state),
            undetected,
            extra: vec![gpu_series],
        };
        let (local, server) = metrics::serve(addr, exposition)
            .await
            .with_context(|| format!("binding metrics listener on {addr}"))?;
        // The line tests and scripts wait for.
        println!("pivot-agent metrics on {local}");
        tasks.spawn(async move {
            if let Err(e) = server.await {
                warn!(error = %e, "Metrics server stopped");
            }
        });
    }
    shutdown.await;
    info!("Shutting down; held intents stay on disk and are re-applied at the next start");
    tasks.shutdown().await;
    reconciler.shutdown();
    Ok(())
}
