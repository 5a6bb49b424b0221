//! [`GpuManager`] on NVIDIA's NVML, through nvml-wrapper.

use std::path::Path;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{
    GpuError, GpuIdentity, GpuManager, GpuProcess, GpuTelemetry, PowerLimits, ThrottleReasons,
    mw_to_watts,
};

/// The library nvml-wrapper loads when none is named.
const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// The GPUs of this host, through NVML. Holds the library loaded (and initialised) until dropped.
pub struct NvmlGpus {
    nvml: Nvml,
    library: String,
}

impl std::fmt::Debug for NvmlGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlGpus")
            .field("library", &self.library)
            .finish()
    }
}

impl NvmlGpus {
    /// Loads NVML (`library`, or the system's `libnvidia-ml.so.1`) and initialises it.
    ///
    /// # Errors
    /// [`GpuError::LibraryNotFound`], [`GpuError::DriverNotLoaded`],
    /// [`GpuError::InitNoPermission`], or another NVML failure.
    pub fn open(library: Option<&Path>) -> Result<Self, GpuError> {
        let mut builder = Nvml::builder();
        if let Some(path) = library {
            builder.lib_path(path.as_os_str());
        }
        let name = library.map_or_else(|| DEFAULT_LIBRARY.to_string(), |p| p.display().to_string());
        let nvml = builder.init().map_err(|e| GpuError::from_init(&name, e))?;
        Ok(Self {
            nvml,
            library: name,
        })
    }

    /// The library this was loaded from, as given.
    pub fn library(&self) -> &str {
        &self.library
    }

    fn device(&self, index: u32) -> Result<Device<'_>, GpuError> {
        self.nvml.device_by_index(index).map_err(|e| match e {
            NvmlError::InvalidArg | NvmlError::NotFound => GpuError::NoSuchGpu {
                selector: format!("with index {index}"),
            },
            e => GpuError::from_nvml(Some(index), "open the GPU", e),
        })
    }

    fn limits_of(index: u32, device: &Device<'_>) -> Result<PowerLimits, GpuError> {
        let err = |action| move |e| GpuError::from_nvml(Some(index), action, e);
        let constraints = device
            .power_management_limit_constraints()
            .map_err(err("read the power limit constraints"))?;
        Ok(PowerLimits {
            limit_w: mw_to_watts(
                device
                    .power_management_limit()
                    .map_err(err("read the power limit"))?,
            ),
            enforced_w: mw_to_watts(
                device
                    .enforced_power_limit()
                    .map_err(err("read the enforced power limit"))?,
            ),
            min_w: mw_to_watts(constraints.min_limit),
            max_w: mw_to_watts(constraints.max_limit),
            default_w: mw_to_watts(
                device
                    .power_management_limit_default()
                    .map_err(err("read the default power limit"))?,
            ),
        })
    }
}

/// A reading this GPU may not support: `None` then, instead of failing the whole reading.
fn optional<T>(result: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => Err(e),
    }
}

impl GpuManager for NvmlGpus {
    fn driver_version(&self) -> Result<String, GpuError> {
        self.nvml
            .sys_driver_version()
            .map_err(|e| GpuError::from_nvml(None, "read the driver version", e))
    }

    fn count(&self) -> Result<u32, GpuError> {
        self.nvml
            .device_count()
            .map_err(|e| GpuError::from_nvml(None, "count the GPUs", e))
    }

    fn identity(&self, index: u32) -> Result<GpuIdentity, GpuError> {
        let device = self.device(index)?;
        let err = |action| move |e| GpuError::from_nvml(Some(index), action, e);
        Ok(GpuIdentity {
            index,
            uuid: device.uuid().map_err(err("read the UUID"))?,
            name: device.name().map_err(err("read the name"))?,
            pci_bus_id: device.pci_info().map_err(err("read the PCI info"))?.bus_id,
        })
    }

    fn index_of_uuid(&self, uuid: &str) -> Result<u32, GpuError> {
        let not_found = || GpuError::NoSuchGpu {
            selector: format!("with UUID {uuid}"),
        };
        let device = self.nvml.device_by_uuid(uuid).map_err(|e| match e {
            NvmlError::NotFound | NvmlError::InvalidArg | NvmlError::NulError(_) => not_found(),
            e => GpuError::from_nvml(None, "find a GPU by UUID", e),
        })?;
        // NVML's index is the GPU's position in the enumeration, which is what every other call
        // here takes.
        device
            .index()
            .map_err(|e| GpuError::from_nvml(None, "read a GPU's index", e))
    }

    fn telemetry(&self, index: u32) -> Result<GpuTelemetry, GpuError> {
        let device = self.device(index)?;
        let err = |action| move |e| GpuError::from_nvml(Some(index), action, e);
        let memory = device.memory_info().map_err(err("read the memory use"))?;
        let utilization =
            optional(device.utilization_rates()).map_err(err("read the utilization"))?;
        let processes = optional(device.running_compute_processes())
            .map_err(err("list the compute processes"))?
            .unwrap_or_default()
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                },
            })
            .collect();
        Ok(GpuTelemetry {
            power_w: mw_to_watts(device.power_usage().map_err(err("read the power draw"))?),
            energy_j: optional(device.total_energy_consumption())
                .map_err(err("read the energy counter"))?
                .map(|mj| mj as f64 / 1000.0),
            temperature_c: optional(device.temperature(TemperatureSensor::Gpu))
                .map_err(err("read the temperature"))?,
            utilization_gpu_pct: utilization.as_ref().map(|u| u.gpu),
            utilization_memory_pct: utilization.as_ref().map(|u| u.memory),
            memory_used_bytes: memory.used,
            memory_total_bytes: memory.total,
            sm_clock_mhz: optional(device.clock_info(Clock::SM))
                .map_err(err("read the SM clock"))?,
            memory_clock_mhz: optional(device.clock_info(Clock::Memory))
                .map_err(err("read the memory clock"))?,
            throttle_reasons: ThrottleReasons(
                optional(device.current_throttle_reasons())
                    .map_err(err("read the clock event reasons"))?
                    .map_or(0, |r| r.bits()),
            ),
            limits: Self::limits_of(index, &device)?,
            processes,
        })
    }

    fn power_limits(&self, index: u32) -> Result<PowerLimits, GpuError> {
        let device = self.device(index)?;
        Self::limits_of(index, &device)
    }

    fn power_draw_w(&self, index: u32) -> Result<f64, GpuError> {
        let device = self.device(index)?;
        device
            .power_usage()
            .map(mw_to_watts)
            .map_err(|e| GpuError::from_nvml(Some(index), "read the power draw", e))
    }

    fn set_power_limit_mw(&self, index: u32, milliwatts: u32) -> Result<(), GpuError> {
        let mut device = self.device(index)?;
        device
            .set_power_management_limit(milliwatts)
            .map_err(|e| GpuError::from_nvml(Some(index), "set the power limit", e))
    }
}
