//! The simulated GPUs: the JSON state file, and the physics derived from it (draw, clocks, reasons).
//!
//! Everything here is safe, pure Rust; the C ABI lives in `ffi`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole state file. Every field has a default, so `{}` is a valid file (one H100).
///
/// Fleet-wide fields describe every GPU; `gpus` overrides them per index and holds the power
/// limits set through NVML, which persist here (a real driver keeps them until reboot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeState {
    pub driver_version: String,
    pub nvml_version: String,
    pub cuda_driver_version: i32,
    pub count: u32,
    pub model: String,
    pub power_demand_w: f64,
    pub power_limit_min_w: f64,
    pub power_limit_max_w: f64,
    pub power_limit_default_w: f64,
    pub memory_total_bytes: u64,
    pub memory_reserved_bytes: u64,
    pub memory_used_bytes: u64,
    pub temperature_c: u32,
    pub utilization_gpu_pct: u32,
    pub utilization_memory_pct: u32,
    pub sm_clock_mhz: u32,
    pub memory_clock_mhz: u32,
    /// After a limit change, the reported draw keeps its old value this long (real readings are
    /// ~1 s averages). 0: the draw follows the cap at once.
    pub power_lag_ms: u64,
    pub faults: Faults,
    /// Per-GPU overrides, keyed by index as a string (`"0"`, `"1"`, …).
    pub gpus: BTreeMap<String, GpuOverride>,
}

impl Default for FakeState {
    fn default() -> Self {
        Self {
            driver_version: "550.54.15".into(),
            nvml_version: "12.550.54.15".into(),
            cuda_driver_version: 12040,
            count: 1,
            model: "NVIDIA H100 80GB HBM3".into(),
            power_demand_w: 650.0,
            power_limit_min_w: 200.0,
            power_limit_max_w: 700.0,
            power_limit_default_w: 700.0,
            memory_total_bytes: 85_520_809_984,
            memory_reserved_bytes: 567_279_616,
            memory_used_bytes: 0,
            temperature_c: 45,
            utilization_gpu_pct: 0,
            utilization_memory_pct: 0,
            sm_clock_mhz: 1980,
            memory_clock_mhz: 2619,
            power_lag_ms: 0,
            faults: Faults::default(),
            gpus: BTreeMap::new(),
        }
    }
}

/// Failure knobs, each mirroring what a real host returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// `nvmlInit` returns NVML_ERROR_DRIVER_NOT_LOADED (kernel module not loaded).
    pub driver_not_loaded: bool,
    /// `nvmlInit` returns NVML_ERROR_NO_PERMISSION (no access to /dev/nvidia*).
    pub init_no_permission: bool,
    /// Setting a power limit returns NVML_ERROR_NO_PERMISSION, as for a non-root caller.
    pub not_root: bool,
    /// GPUs (by index) that fell off the bus: every call on them returns NVML_ERROR_GPU_IS_LOST.
    pub lost_gpus: Vec<u32>,
}

/// Per-GPU values that differ from the fleet-wide ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_demand_w: Option<f64>,
    /// The limit set through `nvmlDeviceSetPowerManagementLimit`; absent means the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_limit_w: Option<f64>,
    /// A limit set outside NVML's management limit (a BMC, a chassis): the GPU enforces the lower.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_limit_w: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization_gpu_pct: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<FakeProcess>,
}

/// A compute process running on a GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeProcess {
    pub pid: u32,
    pub used_memory_bytes: u64,
}

/// One GPU as NVML would describe it, resolved from the fleet-wide values and its override.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub pci_bus: u32,
    pub demand_w: f64,
    pub limit_w: f64,
    pub external_limit_w: Option<f64>,
    pub temperature_c: u32,
    pub utilization_gpu_pct: u32,
    pub memory_used_bytes: u64,
    pub processes: Vec<FakeProcess>,
}

/// NVML's clock event reasons (nvml.h `nvmlClocksEventReason*`).
pub const REASON_GPU_IDLE: u64 = 0x1;
pub const REASON_SW_POWER_CAP: u64 = 0x4;

/// PCI ids of an H100 SXM5 (device 0x2330, vendor 0x10de), as NVML packs them.
pub const PCI_DEVICE_ID: u32 = 0x2330_10de;
pub const PCI_SUBSYSTEM_ID: u32 = 0x16c1_10de;

impl Gpu {
    /// The limit the GPU holds itself to: the lower of the management limit and any external one.
    pub fn enforced_limit_w(&self) -> f64 {
        match self.external_limit_w {
            Some(external) => self.limit_w.min(external),
            None => self.limit_w,
        }
    }

    /// The steady draw: what the work demands, held down by the enforced limit.
    pub fn steady_draw_w(&self) -> f64 {
        self.demand_w.min(self.enforced_limit_w()).max(0.0)
    }

    /// Whether the power limit is holding the GPU below what its work demands.
    pub fn is_power_capped(&self) -> bool {
        self.demand_w > self.enforced_limit_w()
    }

    /// The SM clock falls with the cap, roughly in proportion to the power it is denied.
    pub fn sm_clock_mhz(&self, nominal_mhz: u32) -> u32 {
        if self.is_power_capped() && self.demand_w > 0.0 {
            let ratio = self.steady_draw_w() / self.demand_w;
            (f64::from(nominal_mhz) * ratio).round() as u32
        } else {
            nominal_mhz
        }
    }

    pub fn clock_event_reasons(&self) -> u64 {
        let mut reasons = 0;
        if self.is_power_capped() {
            reasons |= REASON_SW_POWER_CAP;
        }
        if self.utilization_gpu_pct == 0 && self.processes.is_empty() {
            reasons |= REASON_GPU_IDLE;
        }
        reasons
    }

    /// `00000000:BB:00.0`, NVML's 32-byte `busId` form.
    pub fn pci_bus_id(&self) -> String {
        format!("00000000:{:02X}:00.0", self.pci_bus)
    }

    /// `0000:BB:00.0`, the legacy 16-byte `busIdLegacy` form.
    pub fn pci_bus_id_legacy(&self) -> String {
        format!("0000:{:02X}:00.0", self.pci_bus)
    }
}

impl FakeState {
    /// Parses a state file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("invalid fake NVML state: {e}"))
    }

    /// Reads the state file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read fake NVML state {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads the state file, applies `change` and writes it back, holding the file's write lock
    /// throughout ([`write_lock`]), so a change another process makes meanwhile (the simulated
    /// site setting the GPUs' load) is neither lost nor undone. Returns the state written.
    pub fn update(path: &Path, change: impl FnOnce(&mut FakeState)) -> Result<FakeState, String> {
        let _lock = write_lock(path)?;
        let mut state = Self::load(path)?;
        change(&mut state);
        state.save(path)?;
        Ok(state)
    }

    /// Writes the state file atomically (temporary file in the same folder, then rename), so a
    /// reader in another process never sees half a file.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let tmp = temp_sibling(path);
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write fake NVML state {}: {e}", path.display())
        })
    }

    fn override_of(&self, index: u32) -> Option<&GpuOverride> {
        self.gpus.get(&index.to_string())
    }

    pub fn is_lost(&self, index: u32) -> bool {
        self.faults.lost_gpus.contains(&index)
    }

    /// GPU `index` resolved, or `None` when there is no such GPU.
    pub fn gpu(&self, index: u32) -> Option<Gpu> {
        if index >= self.count {
            return None;
        }
        let o = self.override_of(index).cloned().unwrap_or_default();
        Some(Gpu {
            index,
            name: o.name.unwrap_or_else(|| self.model.clone()),
            uuid: o.uuid.unwrap_or_else(|| default_uuid(index)),
            pci_bus: 0x17 + index,
            demand_w: o.power_demand_w.unwrap_or(self.power_demand_w),
            limit_w: o.power_limit_w.unwrap_or(self.power_limit_default_w),
            external_limit_w: o.external_limit_w,
            temperature_c: o.temperature_c.unwrap_or(self.temperature_c),
            utilization_gpu_pct: o.utilization_gpu_pct.unwrap_or(self.utilization_gpu_pct),
            memory_used_bytes: o.memory_used_bytes.unwrap_or(self.memory_used_bytes),
            processes: o.processes,
        })
    }

    /// The index of the GPU with this UUID.
    pub fn index_of_uuid(&self, uuid: &str) -> Option<u32> {
        (0..self.count).find(|&i| self.gpu(i).is_some_and(|g| g.uuid == uuid))
    }

    /// Records a power limit set through NVML.
    pub fn set_limit_w(&mut self, index: u32, watts: f64) {
        self.gpus
            .entry(index.to_string())
            .or_default()
            .power_limit_w = Some(watts);
    }
}

/// A stable, well-formed UUID per index (`fa4e` reads "fake").
pub fn default_uuid(index: u32) -> String {
    format!("GPU-fa4e0000-0000-4000-8000-{index:012x}")
}

/// The lock every writer of the state file holds while it reads, changes and writes it back:
/// an exclusive `flock` on the sibling `<file>.lock` (the state file itself is replaced by
/// rename, so it cannot carry the lock). Released when dropped. Readers take no lock: a rename
/// is atomic.
pub fn write_lock(path: &Path) -> Result<std::fs::File, String> {
    let lock_path = sibling(path, ".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    Ok(file)
}

fn temp_sibling(path: &Path) -> PathBuf {
    sibling(path, &format!(".tmp.{}", std::process::id()))
}

/// `path` with `suffix` appended to its file name, in the same folder.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_one_h100() {
        let state = FakeState::parse("{}").unwrap();
        assert_eq!(state.count, 1);
        let gpu = state.gpu(0).unwrap();
        assert_eq!(gpu.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpu.pci_bus_id(), "00000000:17:00.0");
        assert!(state.gpu(1).is_none());
    }

    #[test]
    fn a_cap_below_demand_limits_the_draw_and_sets_the_reason() {
        let mut state = FakeState {
            power_demand_w: 600.0,
            ..FakeState::default()
        };
        state.set_limit_w(0, 300.0);
        let gpu = state.gpu(0).unwrap();
        assert_eq!(gpu.steady_draw_w(), 300.0);
        assert_ne!(gpu.clock_event_reasons() & REASON_SW_POWER_CAP, 0);
        assert_eq!(gpu.sm_clock_mhz(2000), 1000);
    }

    #[test]
    fn the_lower_of_management_and_external_limit_is_enforced() {
        let mut state = FakeState::default();
        state.gpus.insert(
            "0".into(),
            GpuOverride {
                external_limit_w: Some(400.0),
                ..Default::default()
            },
        );
        state.set_limit_w(0, 500.0);
        assert_eq!(state.gpu(0).unwrap().enforced_limit_w(), 400.0);
    }

    /// Two writers changing different GPUs of one file, each reading, changing and writing it
    /// back 200 times: under the write lock no change is lost (without it, one writer's
    /// write-back of a stale copy undoes the other's).
    #[test]
    fn writers_under_the_lock_lose_no_change() {
        let dir = std::env::temp_dir().join(format!("fake-nvml-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        FakeState {
            count: 2,
            ..FakeState::default()
        }
        .save(&path)
        .unwrap();
        let writers: Vec<_> = (0..2u32)
            .map(|index| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        FakeState::update(&path, |s| {
                            let now = s.gpu(index).map_or(0.0, |g| g.limit_w);
                            s.set_limit_w(index, now + 1.0);
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let state = FakeState::load(&path).unwrap();
        let default_limit = FakeState::default().gpu(0).unwrap().limit_w;
        for index in 0..2 {
            assert_eq!(state.gpu(index).unwrap().limit_w, default_limit + 200.0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(FakeState::parse(r#"{"cuont": 2}"#).is_err());
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("fake-nvml-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let mut state = FakeState {
            count: 3,
            ..FakeState::default()
        };
        state.set_limit_w(2, 250.5);
        state.save(&path).unwrap();
        assert_eq!(FakeState::load(&path).unwrap(), state);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
