//! The daemon's GPUs: discovery into device slots, the cap actuator the reconciler drives, the
//! GPU poll, and their shapes on the wire and in `/metrics` (dcgm-exporter's names and labels).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pivot_proto::model::Target;
use pivot_proto::v1;
use tracing::{info, warn};

use crate::config::GpuConfig;
use crate::gpu::{
    CapStore, ConfirmPolicy, GpuError, GpuIdentity, GpuManager, GpuStatus, PowerCapper,
    PowerLimits, read_all,
};
use crate::metrics::MetricsWriter;
use crate::reconcile::{
    Actuator, ApplyError, Device, Limits, Observation, Observed, RaiseGuard, Reconciler,
};

/// One GPU this agent drives.
#[derive(Debug, Clone)]
pub struct GpuSlot {
    pub device_id: String,
    pub identity: GpuIdentity,
    pub limits: PowerLimits,
    /// The cap range intents may ask for: the GPU's constraints within the configured range.
    pub min_cap_w: u32,
    pub max_cap_w: u32,
}

/// The device id of a GPU: its UUID, stable across reboots (indices are not).
pub fn gpu_device_id(uuid: &str) -> String {
    format!("gpu/{uuid}")
}

/// A GPU that could not be read at start: left out, reported, the rest kept.
#[derive(Debug)]
pub struct LostGpu {
    pub index: u32,
    pub error: GpuError,
}

/// Finds the GPUs and the cap range each accepts. A GPU that cannot be read (fallen off the
/// bus) is left out and returned with why; only failing to count the GPUs at all is an error.
pub fn discover(
    gpus: &dyn GpuManager,
    config: &GpuConfig,
) -> Result<(Vec<GpuSlot>, Vec<LostGpu>), GpuError> {
    let mut out = Vec::new();
    let mut lost = Vec::new();
    for index in 0..gpus.count()? {
        let found = gpus
            .identity(index)
            .and_then(|identity| Ok((identity, gpus.power_limits(index)?)));
        let (identity, limits) = match found {
            Ok(found) => found,
            Err(error) => {
                warn!(gpu = index, error = %error, "GPU cannot be read; the agent runs without it");
                lost.push(LostGpu { index, error });
                continue;
            }
        };
        let min = watts_u32(limits.min_w.ceil()).max(config.min_cap_w.unwrap_or(0));
        let max = watts_u32(limits.max_w.floor()).min(config.max_cap_w.unwrap_or(u32::MAX));
        if min > max {
            warn!(gpu = index, uuid = %identity.uuid, min, max, "Configured cap range does not overlap the GPU's constraints; it takes no caps");
        }
        out.push(GpuSlot {
            device_id: gpu_device_id(&identity.uuid),
            identity,
            limits,
            min_cap_w: min,
            max_cap_w: max,
        });
    }
    Ok((out, lost))
}

/// NVML's watts as whole watts (negative or NaN as 0, huge as `u32::MAX`).
fn watts_u32(w: f64) -> u32 {
    if w.is_finite() && w > 0.0 {
        w.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// Re-applies the caps persisted in the state directory (NVML forgets them on reboot or driver
/// reload). Never raises a limit: that waits for the controller's lease.
///
/// # Errors
/// When the caps file cannot be read or holds what no cap could be: the agent does not start on
/// it (as with `intents.json`), rather than re-apply half of it.
pub async fn reapply_persisted(
    gpus: &dyn GpuManager,
    state_dir: &std::path::Path,
) -> Result<(), GpuError> {
    let capper =
        PowerCapper::new(gpus, ConfirmPolicy::default()).with_store(CapStore::in_dir(state_dir));
    for r in capper.reapply().await? {
        info!("{r}");
    }
    Ok(())
}

/// Sets a GPU's cap through [`PowerCapper`]: checked, applied, read back, confirmed on the draw,
/// persisted.
pub struct GpuActuator {
    pub gpus: Arc<dyn GpuManager>,
    pub uuid: String,
    pub policy: ConfirmPolicy,
    pub store: CapStore,
}

#[async_trait]
impl Actuator for GpuActuator {
    async fn apply(&self, target: &Target, guard: &RaiseGuard) -> Result<Observed, ApplyError> {
        let Target::Gpu { power_cap_w } = target else {
            return Err(ApplyError::WrongTarget {
                device: "GPU",
                target: *target,
            });
        };
        // Indices can change across a driver reload; the UUID cannot.
        let index = self.gpus.index_of_uuid(&self.uuid)?;
        let now = self.gpus.power_limits(index)?;
        if f64::from(*power_cap_w) > now.limit_w + 0.5 {
            guard.check("raise the GPU's power cap")?;
        }
        let capper =
            PowerCapper::new(self.gpus.as_ref(), self.policy).with_store(self.store.clone());
        let report = capper.set(index, f64::from(*power_cap_w)).await?;
        Ok(Observed::Gpu {
            limit_w: Some(report.limit_w),
            enforced_cap_w: Some(report.enforced_w),
            power_w: Some(report.draw_w),
        })
    }
}

/// The reconciler's view of a GPU.
pub fn device(
    slot: &GpuSlot,
    gpus: &Arc<dyn GpuManager>,
    config: &GpuConfig,
    state_dir: &std::path::Path,
) -> Device {
    Device {
        limits: Limits::Gpu {
            min_cap_w: slot.min_cap_w,
            max_cap_w: slot.max_cap_w,
        },
        actuator: Arc::new(GpuActuator {
            gpus: Arc::clone(gpus),
            uuid: slot.identity.uuid.clone(),
            policy: ConfirmPolicy {
                window: Duration::from_secs_f64(config.confirm_s),
                ..ConfirmPolicy::default()
            },
            store: CapStore::in_dir(state_dir),
        }),
        pacing: Duration::from_secs(5),
        // NVML calls are short; the confirmation window is most of it.
        deadline: Duration::from_secs_f64(config.confirm_s) + Duration::from_secs(30),
        // Its failures are local (NVML), not lost replies.
        repeatable: false,
    }
}

pub fn inventory(slot: &GpuSlot) -> v1::GpuInventory {
    v1::GpuInventory {
        device_id: slot.device_id.clone(),
        index: slot.identity.index,
        uuid: slot.identity.uuid.clone(),
        name: slot.identity.name.clone(),
        pci_bus_id: slot.identity.pci_bus_id.clone(),
        power_cap_min_w: slot.min_cap_w,
        power_cap_max_w: slot.max_cap_w,
        power_cap_default_w: watts_u32(slot.limits.default_w.round()),
    }
}

/// One GPU's latest poll.
#[derive(Debug, Clone)]
pub struct GpuObservation {
    pub status: Result<GpuStatus, String>,
    pub at: DateTime<Utc>,
}

/// The latest GPU readings, by device id.
#[derive(Debug, Default)]
pub struct GpuObservations(pub RwLock<BTreeMap<String, GpuObservation>>);

impl GpuObservations {
    pub fn snapshot(&self) -> BTreeMap<String, GpuObservation> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

pub fn reading(device_id: &str, o: &GpuObservation) -> v1::GpuReading {
    let at = Some(pivot_proto::model::timestamp_to_proto(o.at));
    match &o.status {
        Err(e) => v1::GpuReading {
            device_id: device_id.to_owned(),
            read_error: e.clone(),
            observed_at: at,
            ..Default::default()
        },
        Ok(s) => {
            let t = &s.telemetry;
            v1::GpuReading {
                device_id: device_id.to_owned(),
                power_w: finite(t.power_w),
                energy_j: t.energy_j.and_then(finite),
                temperature_c: t.temperature_c.map(f64::from),
                utilization_pct: t.utilization_gpu_pct.map(f64::from),
                memory_used_bytes: Some(t.memory_used_bytes),
                memory_total_bytes: Some(t.memory_total_bytes),
                sm_clock_mhz: t.sm_clock_mhz,
                memory_clock_mhz: t.memory_clock_mhz,
                throttle_reasons: t
                    .throttle_reasons
                    .names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                enforced_power_limit_w: finite(t.limits.enforced_w),
                power_cap_w: finite(t.limits.limit_w),
                compute_processes: u32::try_from(t.processes.len()).unwrap_or(u32::MAX),
                read_error: String::new(),
                observed_at: at,
            }
        }
    }
}

/// Polls every GPU each `interval`, records the readings and hands them to the reconciler.
pub async fn run_poll(
    gpus: Arc<dyn GpuManager>,
    slots: Arc<Vec<GpuSlot>>,
    obs: Arc<GpuObservations>,
    reconciler: Arc<Reconciler>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let taken_at = tokio::time::Instant::now();
        let g = Arc::clone(&gpus);
        // NVML calls block (briefly): keep them off the runtime's workers.
        let reads = match tokio::task::spawn_blocking(move || read_all(g.as_ref())).await {
            Ok(Ok(reads)) => reads,
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot read GPUs");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "GPU poll task failed");
                continue;
            }
        };
        let now = Utc::now();
        let mut observed = Vec::new();
        {
            let mut map = obs
                .0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (index, status) in reads {
                let Some(slot) = slots.iter().find(|s| match &status {
                    Ok(st) => st.identity.uuid == s.identity.uuid,
                    Err(_) => s.identity.index == index,
                }) else {
                    continue;
                };
                if let Ok(st) = &status {
                    observed.push((
                        slot.device_id.clone(),
                        Observation {
                            taken_at,
                            observed: Observed::Gpu {
                                limit_w: finite(st.telemetry.limits.limit_w),
                                enforced_cap_w: finite(st.telemetry.limits.enforced_w),
                                power_w: finite(st.telemetry.power_w),
                            },
                        },
                    ));
                }
                map.insert(
                    slot.device_id.clone(),
                    GpuObservation {
                        status: status.map_err(|e| e.to_string()),
                        at: now,
                    },
                );
            }
        }
        reconciler.observe_all(observed);
    }
}

/// GPU series under dcgm-exporter's names and labels, plus pivot's cap series, and
/// `pivot_gpu_up` for every GPU the agent knows of: one that stops answering (or was lost at
/// start, `lost`) shows 0 rather than vanishing.
pub fn render(
    w: &mut MetricsWriter,
    host: &str,
    slots: &[GpuSlot],
    lost: &[u32],
    obs: &GpuObservations,
) {
    let gpus = obs.snapshot();
    w.family(
        "pivot_gpu_up",
        "gauge",
        "Whether the GPU answered its last read (1) or not (0).",
    );
    for slot in slots {
        let up = gpus.get(&slot.device_id).is_some_and(|o| o.status.is_ok());
        let index = slot.identity.index.to_string();
        let labels = [
            ("gpu", index.as_str()),
            ("UUID", slot.identity.uuid.as_str()),
            ("pci_bus_id", slot.identity.pci_bus_id.as_str()),
            ("modelName", slot.identity.name.as_str()),
            ("Hostname", host),
        ];
        w.sample("pivot_gpu_up", &labels, if up { 1.0 } else { 0.0 });
    }
    for index in lost {
        let index = index.to_string();
        w.sample(
            "pivot_gpu_up",
            &[("gpu", index.as_str()), ("Hostname", host)],
            0.0,
        );
    }
    let rows: Vec<(String, &GpuStatus)> = gpus
        .values()
        .filter_map(|o| o.status.as_ref().ok())
        .map(|s| (s.identity.index.to_string(), s))
        .collect();
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&GpuStatus) -> Option<f64>,
    );
    let families: [Family; 6] = [
        (
            "DCGM_FI_DEV_POWER_USAGE",
            "gauge",
            "Power draw (in W).",
            |s| Some(s.telemetry.power_w),
        ),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "counter",
            "Total energy consumption since boot (in mJ).",
            |s| s.telemetry.energy_j.map(|j| j * 1000.0),
        ),
        (
            "DCGM_FI_DEV_GPU_TEMP",
            "gauge",
            "GPU temperature (in C).",
            |s| s.telemetry.temperature_c.map(f64::from),
        ),
        (
            "DCGM_FI_DEV_GPU_UTIL",
            "gauge",
            "GPU utilization (in %).",
            |s| s.telemetry.utilization_gpu_pct.map(f64::from),
        ),
        (
            "DCGM_FI_DEV_FB_USED",
            "gauge",
            "Framebuffer memory used (in MiB).",
            |s| Some(s.telemetry.memory_used_bytes as f64 / 1_048_576.0),
        ),
        (
            "pivot_gpu_power_limit_watts",
            "gauge",
            "Power limit the GPU enforces (lowest of all limits set on it).",
            |s| Some(s.telemetry.limits.enforced_w),
        ),
    ];
    for (name, kind, help, value) in families {
        w.family(name, kind, help);
        for (gpu, s) in &rows {
            if let Some(v) = value(s) {
                let labels = [
                    ("gpu", gpu.as_str()),
                    ("UUID", s.identity.uuid.as_str()),
                    ("pci_bus_id", s.identity.pci_bus_id.as_str()),
                    ("modelName", s.identity.name.as_str()),
                    ("Hostname", host),
                ];
                w.sample(name, &labels, v);
            }
        }
    }
}
