//! An in-memory [`GpuManager`]: a fleet of simulated GPUs for tests of the logic above NVML.
//!
//! The fake NVML library (crate pivot-fake-nvml) is the higher-fidelity simulator — it runs the
//! real nvml-wrapper code path. This one needs no shared library and lets a test script what a
//! library cannot easily do: a draw that lags a cap by N readings, a call that fails once.

use std::sync::{Mutex, MutexGuard};

use super::{
    GpuError, GpuIdentity, GpuManager, GpuTelemetry, PowerLimits, ThrottleReasons, gpu_label,
    mw_to_watts,
};

/// One simulated GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct SimGpu {
    pub uuid: String,
    pub name: String,
    pub demand_w: f64,
    pub limit_mw: u32,
    pub min_mw: u32,
    pub max_mw: u32,
    pub default_mw: u32,
    /// Another limit holder (a BMC): the GPU enforces the lower of the two.
    pub external_limit_mw: Option<u32>,
    /// After a limit change, this many draw readings still show the draw from before.
    pub lagging_reads: u32,
    pub lost: bool,
    pub read_only: bool,
    /// The draw reported while a change is still lagging.
    lag: Option<(f64, u32)>,
}

impl SimGpu {
    /// An H100 SXM: 200–700 W, default 700 W, demanding `demand_w`.
    pub fn h100(index: u32, demand_w: f64) -> Self {
        Self {
            uuid: format!("GPU-51a00000-0000-4000-8000-{index:012x}"),
            name: "NVIDIA H100 80GB HBM3".into(),
            demand_w,
            limit_mw: 700_000,
            min_mw: 200_000,
            max_mw: 700_000,
            default_mw: 700_000,
            external_limit_mw: None,
            lagging_reads: 0,
            lost: false,
            read_only: false,
            lag: None,
        }
    }

    fn enforced_mw(&self) -> u32 {
        self.external_limit_mw
            .map_or(self.limit_mw, |e| e.min(self.limit_mw))
    }

    fn steady_draw_w(&self) -> f64 {
        self.demand_w.min(mw_to_watts(self.enforced_mw()))
    }
}

/// A host's simulated GPUs.
#[derive(Debug)]
pub struct SimGpus {
    gpus: Mutex<Vec<SimGpu>>,
}

impl SimGpus {
    pub fn new(gpus: Vec<SimGpu>) -> Self {
        Self {
            gpus: Mutex::new(gpus),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SimGpu>> {
        self.gpus
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes a GPU in place (a test's hand on the hardware); false when there is no such GPU.
    pub fn modify(&self, index: u32, f: impl FnOnce(&mut SimGpu)) -> bool {
        self.lock().get_mut(index as usize).map(f).is_some()
    }

    /// A copy of a GPU's state.
    pub fn get(&self, index: u32) -> Option<SimGpu> {
        self.lock().get(index as usize).cloned()
    }

    fn with<T>(
        &self,
        index: u32,
        action: &'static str,
        f: impl FnOnce(&mut SimGpu) -> Result<T, GpuError>,
    ) -> Result<T, GpuError> {
        let mut gpus = self.lock();
        let gpu = gpus
            .get_mut(index as usize)
            .ok_or_else(|| GpuError::NoSuchGpu {
                selector: format!("with index {index}"),
            })?;
        if gpu.lost {
            return Err(GpuError::GpuLost {
                gpu: gpu_label(index),
                action,
            });
        }
        f(gpu)
    }
}

impl GpuManager for SimGpus {
    fn driver_version(&self) -> Result<String, GpuError> {
        Ok("sim".into())
    }

    fn count(&self) -> Result<u32, GpuError> {
        Ok(u32::try_from(self.lock().len()).unwrap_or(u32::MAX))
    }

    fn identity(&self, index: u32) -> Result<GpuIdentity, GpuError> {
        self.with(index, "read the identity", |g| {
            Ok(GpuIdentity {
                index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x17 + index),
            })
        })
    }

    fn index_of_uuid(&self, uuid: &str) -> Result<u32, GpuError> {
        self.lock()
            .iter()
            .position(|g| g.uuid == uuid)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| GpuError::NoSuchGpu {
                selector: format!("with UUID {uuid}"),
            })
    }

    fn telemetry(&self, index: u32) -> Result<GpuTelemetry, GpuError> {
        let limits = self.power_limits(index)?;
        let power_w = self.power_draw_w(index)?;
        self.with(index, "read telemetry", |g| {
            let capped = g.demand_w > mw_to_watts(g.enforced_mw());
            Ok(GpuTelemetry {
                power_w,
                energy_j: None,
                temperature_c: Some(50),
                utilization_gpu_pct: Some(if g.demand_w > 100.0 { 100 } else { 0 }),
                utilization_memory_pct: Some(0),
                memory_used_bytes: 0,
                memory_total_bytes: 85_520_809_984,
                sm_clock_mhz: Some(1980),
                memory_clock_mhz: Some(2619),
                throttle_reasons: ThrottleReasons(if capped { 0x4 } else { 0 }),
                limits,
                processes: Vec::new(),
            })
        })
    }

    fn power_limits(&self, index: u32) -> Result<PowerLimits, GpuError> {
        self.with(index, "read the power limits", |g| {
            Ok(PowerLimits {
                limit_w: mw_to_watts(g.limit_mw),
                enforced_w: mw_to_watts(g.enforced_mw()),
                min_w: mw_to_watts(g.min_mw),
                max_w: mw_to_watts(g.max_mw),
                default_w: mw_to_watts(g.default_mw),
            })
        })
    }

    fn power_draw_w(&self, index: u32) -> Result<f64, GpuError> {
        self.with(index, "read the power draw", |g| match g.lag {
            Some((draw, left)) if left > 0 => {
                g.lag = Some((draw, left - 1));
                Ok(draw)
            }
            _ => {
                g.lag = None;
                Ok(g.steady_draw_w())
            }
        })
    }

    fn set_power_limit_mw(&self, index: u32, milliwatts: u32) -> Result<(), GpuError> {
        self.with(index, "set the power limit", |g| {
            if g.read_only {
                return Err(GpuError::NoPermission {
                    gpu: gpu_label(index),
                    action: "set the power limit",
                });
            }
            let before = g.steady_draw_w();
            g.limit_mw = milliwatts;
            if g.lagging_reads > 0 {
                g.lag = Some((before, g.lagging_reads));
            }
            Ok(())
        })
    }
}
