//! What can go wrong with a GPU, each error naming the GPU and what the operator can do.

use std::path::PathBuf;

use nvml_wrapper::error::NvmlError;

/// A GPU or NVML failure. Messages are written for the operator reading the agent's log.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "the NVML library {library} could not be loaded ({detail}): install the NVIDIA driver \
         (it ships libnvidia-ml.so.1) or point --nvml-lib at the library"
    )]
    LibraryNotFound { library: String, detail: String },

    #[error(
        "the NVIDIA kernel driver is not loaded ({context}): load it (`modprobe nvidia`, then \
         check `nvidia-smi`); pivot leaves the GPUs alone until then"
    )]
    DriverNotLoaded { context: String },

    #[error(
        "NVML ({library}) refused access to the GPUs: run pivot-agent as root, or give its user \
         read/write access to /dev/nvidia*"
    )]
    InitNoPermission { library: String },

    #[error(
        "no permission to {action} on {gpu}: NVML needs root for this; run pivot-agent as root"
    )]
    NoPermission { gpu: String, action: &'static str },

    #[error(
        "{gpu} is lost (fell off the bus or stopped answering) while trying to {action}: check \
         `nvidia-smi` and the kernel log for Xid errors; it needs a GPU reset or a reboot"
    )]
    GpuLost { gpu: String, action: &'static str },

    #[error(
        "power cap {requested_w} W is out of range for {gpu}, which accepts {min_w}–{max_w} W; \
         nothing was changed"
    )]
    CapOutOfRange {
        gpu: String,
        requested_w: f64,
        min_w: f64,
        max_w: f64,
    },

    #[error("no GPU {selector}: `pivot-agent gpu list` shows the GPUs NVML sees")]
    NoSuchGpu { selector: String },

    #[error(
        "{gpu}: power cap set to {requested_w} W but NVML reads back a limit of {limit_w} W \
         (enforced {enforced_w} W): the driver did not take the new cap; check `nvidia-smi -q -d POWER`"
    )]
    CapNotTaken {
        gpu: String,
        requested_w: f64,
        limit_w: f64,
        enforced_w: f64,
    },

    #[error(
        "{gpu}: the draw is still {draw_w:.1} W, above the {cap_w} W cap, {window_ms} ms after \
         setting it; the cap stays applied. A workload may be bursting past it, or the power \
         sensor is failing: check `nvidia-smi -q -d POWER`"
    )]
    DrawAboveCap {
        gpu: String,
        draw_w: f64,
        cap_w: f64,
        window_ms: u128,
    },

    #[error("{gpu}: NVML could not {action}: {source}")]
    Nvml {
        gpu: String,
        action: &'static str,
        #[source]
        source: NvmlError,
    },

    #[error("GPU cap state {path}: {detail}")]
    CapStore { path: PathBuf, detail: String },
}

/// How GPUs are named in messages.
pub fn gpu_label(index: u32) -> String {
    format!("GPU {index}")
}

impl GpuError {
    /// Translates an NVML error from a call on one GPU (or on NVML itself, `index` = None).
    pub fn from_nvml(index: Option<u32>, action: &'static str, source: NvmlError) -> Self {
        let gpu = index.map_or_else(|| "NVML".to_string(), gpu_label);
        match source {
            NvmlError::NoPermission => GpuError::NoPermission { gpu, action },
            NvmlError::GpuLost => GpuError::GpuLost { gpu, action },
            NvmlError::DriverNotLoaded => GpuError::DriverNotLoaded {
                context: format!("{gpu}, while trying to {action}"),
            },
            source => GpuError::Nvml {
                gpu,
                action,
                source,
            },
        }
    }

    /// Translates a failed `nvmlInit`.
    pub fn from_init(library: &str, source: NvmlError) -> Self {
        let library = library.to_string();
        match source {
            NvmlError::LibloadingError(e) => GpuError::LibraryNotFound {
                library,
                detail: e.to_string(),
            },
            NvmlError::FailedToLoadSymbol(detail) => GpuError::LibraryNotFound {
                detail: format!("it is not an NVML library: {detail}"),
                library,
            },
            NvmlError::DriverNotLoaded => GpuError::DriverNotLoaded {
                context: format!("NVML library {library}"),
            },
            NvmlError::NoPermission => GpuError::InitNoPermission { library },
            source => GpuError::Nvml {
                gpu: format!("NVML ({library})"),
                action: "initialise",
                source,
            },
        }
    }

    /// Whether the GPU itself is gone (as opposed to a refused or invalid request).
    pub fn is_gpu_lost(&self) -> bool {
        matches!(self, GpuError::GpuLost { .. })
    }
}
