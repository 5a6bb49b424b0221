//! GPUs through NVML: discovery, telemetry and power caps.
//!
//! [`GpuManager`] is the seam: [`NvmlGpus`] drives the real library through nvml-wrapper (or, in
//! tests and dev mode, pivot's fake `libnvidia-ml`, through the same code path), and
//! [`SimGpus`] is an in-memory fleet for tests of the logic above it. [`PowerCapper`] holds that
//! logic: check a cap against the GPU's constraints, apply it, read it back, confirm it on the
//! measured draw, and persist it so that it can be re-applied after a reboot or driver reload.

pub mod cap;
pub mod cli;
mod error;
mod nvml;
mod sim;
mod store;

use serde::Serialize;

pub use cap::{CapReport, ConfirmPolicy, PowerCapper, Reapplied, ReapplyOutcome};
pub use error::{GpuError, gpu_label};
pub use nvml::NvmlGpus;
pub use sim::{SimGpu, SimGpus};
pub use store::{CapStore, PersistedCap};

/// Which GPU it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuIdentity {
    pub index: u32,
    /// Stable across reboots, unlike the index: caps are persisted by UUID.
    pub uuid: String,
    pub name: String,
    /// `00000000:17:00.0`.
    pub pci_bus_id: String,
}

/// A GPU's power limits, in watts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PowerLimits {
    /// The management limit: the cap pivot sets.
    pub limit_w: f64,
    /// What the GPU holds itself to: the lowest of all limits (a BMC may set one too).
    pub enforced_w: f64,
    pub min_w: f64,
    pub max_w: f64,
    pub default_w: f64,
}

/// A process with a compute context on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// `None` where the driver does not account it (Windows WDDM).
    pub used_memory_bytes: Option<u64>,
}

/// One reading of a GPU. `None` marks what this GPU does not support, never a zero.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuTelemetry {
    /// NVML's power reading: about a one-second average.
    pub power_w: f64,
    /// Since the driver was loaded (Volta and newer).
    pub energy_j: Option<f64>,
    pub temperature_c: Option<u32>,
    pub utilization_gpu_pct: Option<u32>,
    pub utilization_memory_pct: Option<u32>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    pub throttle_reasons: ThrottleReasons,
    pub limits: PowerLimits,
    pub processes: Vec<GpuProcess>,
}

/// Why the clocks are held down: NVML's `nvmlClocksEventReason*` bitmask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(into = "Vec<&'static str>")]
pub struct ThrottleReasons(pub u64);

const REASON_NAMES: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

impl ThrottleReasons {
    /// The names of the reasons set; bits NVML may add later are left out.
    pub fn names(self) -> Vec<&'static str> {
        REASON_NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|&(_, name)| name)
            .collect()
    }

    /// Whether the power cap is what holds the clocks down.
    pub fn power_capped(self) -> bool {
        self.0 & 0x4 != 0
    }
}

impl From<ThrottleReasons> for Vec<&'static str> {
    fn from(reasons: ThrottleReasons) -> Self {
        reasons.names()
    }
}

/// The seam between pivot and the GPUs of one host. Calls are short and blocking (NVML's are).
pub trait GpuManager: Send + Sync {
    /// The driver version, e.g. `550.54.15`.
    fn driver_version(&self) -> Result<String, GpuError>;
    fn count(&self) -> Result<u32, GpuError>;
    fn identity(&self, index: u32) -> Result<GpuIdentity, GpuError>;
    /// The index of the GPU with this UUID; [`GpuError::NoSuchGpu`] when there is none.
    fn index_of_uuid(&self, uuid: &str) -> Result<u32, GpuError>;
    fn telemetry(&self, index: u32) -> Result<GpuTelemetry, GpuError>;
    fn power_limits(&self, index: u32) -> Result<PowerLimits, GpuError>;
    /// The measured draw alone: what a cap is confirmed on.
    fn power_draw_w(&self, index: u32) -> Result<f64, GpuError>;
    /// Sets the management limit. Unchecked: [`PowerCapper`] validates first.
    fn set_power_limit_mw(&self, index: u32, milliwatts: u32) -> Result<(), GpuError>;
}

/// Which GPUs a command addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelector {
    All,
    Index(u32),
    Uuid(String),
}

impl std::str::FromStr for GpuSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            Ok(GpuSelector::All)
        } else if let Ok(index) = s.parse::<u32>() {
            Ok(GpuSelector::Index(index))
        } else if s.starts_with("GPU-") || s.starts_with("MIG-") {
            Ok(GpuSelector::Uuid(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a GPU: give an index (0), a UUID (GPU-…) or `all`"
            ))
        }
    }
}

impl GpuSelector {
    /// The indices this selector names on `gpus`.
    pub fn resolve(&self, gpus: &dyn GpuManager) -> Result<Vec<u32>, GpuError> {
        match self {
            GpuSelector::All => Ok((0..gpus.count()?).collect()),
            GpuSelector::Index(index) => {
                if *index < gpus.count()? {
                    Ok(vec![*index])
                } else {
                    Err(GpuError::NoSuchGpu {
                        selector: format!("with index {index}"),
                    })
                }
            }
            GpuSelector::Uuid(uuid) => Ok(vec![gpus.index_of_uuid(uuid)?]),
        }
    }
}

/// A GPU's identity and reading, as `gpu list` and the telemetry stream show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuStatus {
    #[serde(flatten)]
    pub identity: GpuIdentity,
    #[serde(flatten)]
    pub telemetry: GpuTelemetry,
}

/// One GPU's index and its reading, or why it could not be read.
pub type GpuRead = (u32, Result<GpuStatus, GpuError>);

/// Reads every GPU; one lost GPU does not hide the others.
pub fn read_all(gpus: &dyn GpuManager) -> Result<Vec<GpuRead>, GpuError> {
    let count = gpus.count()?;
    Ok((0..count)
        .map(|index| {
            let status = gpus.identity(index).and_then(|identity| {
                Ok(GpuStatus {
                    identity,
                    telemetry: gpus.telemetry(index)?,
                })
            });
            (index, status)
        })
        .collect())
}

/// Watts to NVML's milliwatts; `None` for values no GPU could take (negative, NaN, huge).
pub fn watts_to_mw(watts: f64) -> Option<u32> {
    let mw = (watts * 1000.0).round();
    (mw.is_finite() && mw >= 0.0 && mw <= f64::from(u32::MAX)).then_some(mw as u32)
}

/// NVML's milliwatts to watts.
pub fn mw_to_watts(milliwatts: u32) -> f64 {
    f64::from(milliwatts) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse() {
        assert_eq!("all".parse::<GpuSelector>(), Ok(GpuSelector::All));
        assert_eq!("3".parse::<GpuSelector>(), Ok(GpuSelector::Index(3)));
        assert_eq!(
            "GPU-fa4e0000-0000-4000-8000-000000000000".parse::<GpuSelector>(),
            Ok(GpuSelector::Uuid(
                "GPU-fa4e0000-0000-4000-8000-000000000000".into()
            ))
        );
        assert!("gpu0".parse::<GpuSelector>().is_err());
        assert!("-1".parse::<GpuSelector>().is_err());
    }

    #[test]
    fn watts_convert_without_wrapping() {
        assert_eq!(watts_to_mw(250.5), Some(250_500));
        assert_eq!(watts_to_mw(-1.0), None);
        assert_eq!(watts_to_mw(f64::NAN), None);
        assert_eq!(watts_to_mw(1e12), None);
        assert_eq!(mw_to_watts(300_000), 300.0);
    }

    #[test]
    fn throttle_reasons_have_names() {
        let reasons = ThrottleReasons(0x5);
        assert_eq!(reasons.names(), vec!["gpu_idle", "sw_power_cap"]);
        assert!(reasons.power_capped());
        assert_eq!(
            serde_json::to_string(&reasons).unwrap(),
            r#"["gpu_idle","sw_power_cap"]"#
        );
    }
}
