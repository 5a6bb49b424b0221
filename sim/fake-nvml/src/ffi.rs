//! The exported C symbols, with nvml.h's names, signatures and struct layouts.
//!
//! Each function checks its pointers, catches any panic (a panic must never unwind into C), and
//! answers from `runtime`. Struct layouts follow nvml.h (CUDA 12); nvml-wrapper-sys and pynvml
//! declare the same ones.

#![allow(non_snake_case)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong, c_void};
use std::panic::AssertUnwindSafe;

use crate::codes::{self, NvmlReturn};
use crate::runtime::{self, Runtime, to_mw};
use crate::state::{Gpu, PCI_DEVICE_ID, PCI_SUBSYSTEM_ID};

/// `nvmlDevice_t`: an opaque pointer. Ours encode the GPU index and are never dereferenced.
pub type Device = *mut c_void;

/// Handles start here so that no handle is NULL or near it.
const HANDLE_BASE: usize = 0xfa4e_0000;

#[repr(C)]
pub struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

#[repr(C)]
pub struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlMemory_v2`: the struct size with the version number in the top byte.
const MEMORY_V2_VERSION: c_uint = (size_of::<MemoryV2>() as c_uint) | (2 << 24);

#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

/// `nvmlProcessInfo_t` (= `nvmlProcessInfo_v2_t`), what the `_v2` and `_v3` process calls fill.
#[repr(C)]
pub struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// NVML's "not available" marker for instance ids outside MIG mode.
const VALUE_NOT_AVAILABLE_UINT: c_uint = 0xffff_ffff;

const TEMPERATURE_GPU: c_uint = 0;
const CLOCK_GRAPHICS: c_uint = 0;
const CLOCK_SM: c_uint = 1;
const CLOCK_MEM: c_uint = 2;
const CLOCK_VIDEO: c_uint = 3;

/// Runs an exported function's body: its error code, or `UNKNOWN` if it panicked.
fn guard(body: impl FnOnce() -> Result<(), NvmlReturn>) -> NvmlReturn {
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => codes::SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => codes::ERROR_UNKNOWN,
    }
}

/// Writes `value` through an out-pointer.
///
/// # Safety
/// `ptr` is NULL or valid for a write of a `T` (properly aligned), as nvml.h requires of callers.
unsafe fn put<T>(ptr: *mut T, value: T) -> Result<(), NvmlReturn> {
    if ptr.is_null() {
        return Err(codes::ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, and valid for writes of `T` by this function's contract.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Copies `text` and its terminating NUL into a caller's buffer of `len` bytes.
///
/// # Safety
/// `buf` is NULL or valid for writes of `len` bytes.
unsafe fn put_str(buf: *mut c_char, len: c_uint, text: &str) -> Result<(), NvmlReturn> {
    if buf.is_null() {
        return Err(codes::ERROR_INVALID_ARGUMENT);
    }
    let bytes = text.as_bytes();
    if bytes.len() >= len as usize {
        return Err(codes::ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: `buf` is valid for `len` bytes (contract) and we write `bytes.len() + 1 <= len`;
    // a Rust `&str` cannot overlap a buffer the caller handed us for writing.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        buf.add(bytes.len()).write(0);
    }
    Ok(())
}

/// Reads a caller's C string.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid during the call.
unsafe fn read_str<'a>(ptr: *const c_char) -> Result<&'a str, NvmlReturn> {
    if ptr.is_null() {
        return Err(codes::ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL and NUL-terminated by this function's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|_| codes::ERROR_INVALID_ARGUMENT)
}

/// A fixed C char array holding `text`, truncated so the final NUL always fits.
fn c_array<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (slot, byte) in out.iter_mut().zip(text.bytes().take(N.saturating_sub(1))) {
        *slot = byte as c_char;
    }
    out
}

fn handle(index: u32) -> Device {
    std::ptr::without_provenance_mut(HANDLE_BASE + index as usize)
}

fn index_of(device: Device) -> Result<u32, NvmlReturn> {
    device
        .addr()
        .checked_sub(HANDLE_BASE)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or(codes::ERROR_INVALID_ARGUMENT)
}

/// Runs `f` with the runtime and the GPU behind `device`.
fn on_device(
    device: Device,
    f: impl FnOnce(&mut Runtime, Gpu) -> Result<(), NvmlReturn>,
) -> NvmlReturn {
    guard(|| {
        let index = index_of(device)?;
        runtime::with(|rt| {
            let gpu = rt.gpu(index)?;
            f(rt, gpu)
        })
    })
}

// ---- library ------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    guard(|| match runtime::init(crate::state_path()) {
        codes::SUCCESS => Ok(()),
        code => Err(code),
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit() -> NvmlReturn {
    nvmlInit_v2()
}

/// Flags (`NVML_INIT_FLAG_NO_GPUS`, `…_NO_ATTACH`) change nothing for simulated GPUs.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> NvmlReturn {
    nvmlInit_v2()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    guard(|| match runtime::shutdown() {
        codes::SUCCESS => Ok(()),
        code => Err(code),
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    codes::message(result).as_ptr()
}

/// # Safety
/// `version` is NULL or valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    guard(|| {
        let text = runtime::with(|rt| Ok(rt.state.driver_version.clone()))?;
        // SAFETY: the caller passes a buffer of `length` bytes (nvml.h contract).
        unsafe { put_str(version, length, &text) }
    })
}

/// # Safety
/// `version` is NULL or valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    guard(|| {
        let text = runtime::with(|rt| Ok(rt.state.nvml_version.clone()))?;
        // SAFETY: the caller passes a buffer of `length` bytes (nvml.h contract).
        unsafe { put_str(version, length, &text) }
    })
}

/// # Safety
/// `cuda_driver_version` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(
    cuda_driver_version: *mut c_int,
) -> NvmlReturn {
    guard(|| {
        let version = runtime::with(|rt| Ok(rt.state.cuda_driver_version))?;
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(cuda_driver_version, version) }
    })
}

/// # Safety
/// As `nvmlSystemGetCudaDriverVersion`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(
    cuda_driver_version: *mut c_int,
) -> NvmlReturn {
    // SAFETY: same contract, forwarded.
    unsafe { nvmlSystemGetCudaDriverVersion(cuda_driver_version) }
}

// ---- discovery ----------------------------------------------------------------------------

/// # Safety
/// `device_count` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) -> NvmlReturn {
    guard(|| {
        let count = runtime::with(|rt| Ok(rt.state.count))?;
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(device_count, count) }
    })
}

/// # Safety
/// As `nvmlDeviceGetCount_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(device_count: *mut c_uint) -> NvmlReturn {
    // SAFETY: same contract, forwarded.
    unsafe { nvmlDeviceGetCount_v2(device_count) }
}

/// # Safety
/// `device` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut Device,
) -> NvmlReturn {
    guard(|| {
        runtime::with(|rt| rt.gpu(index).map(|_| ()))?;
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(device, handle(index)) }
    })
}

/// # Safety
/// As `nvmlDeviceGetHandleByIndex_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut Device,
) -> NvmlReturn {
    // SAFETY: same contract, forwarded.
    unsafe { nvmlDeviceGetHandleByIndex_v2(index, device) }
}

/// # Safety
/// `uuid` is NULL or a NUL-terminated string; `device` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut Device,
) -> NvmlReturn {
    guard(|| {
        // SAFETY: C string per nvml.h.
        let uuid = unsafe { read_str(uuid) }?;
        let index = runtime::with(|rt| {
            let index = rt.state.index_of_uuid(uuid).ok_or(codes::ERROR_NOT_FOUND)?;
            rt.gpu(index).map(|_| index)
        })?;
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(device, handle(index)) }
    })
}

/// # Safety
/// `pci_bus_id` is NULL or a NUL-terminated string; `device` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    pci_bus_id: *const c_char,
    device: *mut Device,
) -> NvmlReturn {
    guard(|| {
        // SAFETY: C string per nvml.h.
        let wanted = unsafe { read_str(pci_bus_id) }?.to_ascii_uppercase();
        let index = runtime::with(|rt| {
            let index = (0..rt.state.count)
                .find(|&i| {
                    rt.state.gpu(i).is_some_and(|g| {
                        g.pci_bus_id() == wanted || g.pci_bus_id_legacy() == wanted
                    })
                })
                .ok_or(codes::ERROR_NOT_FOUND)?;
            rt.gpu(index).map(|_| index)
        })?;
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(device, handle(index)) }
    })
}

/// # Safety
/// `index` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: Device, index: *mut c_uint) -> NvmlReturn {
    on_device(device, |_, gpu| {
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(index, gpu.index) }
    })
}

/// # Safety
/// `name` is NULL or valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: Device,
    name: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    on_device(device, |_, gpu| {
        // SAFETY: buffer of `length` bytes per nvml.h.
        unsafe { put_str(name, length, &gpu.name) }
    })
}

/// # Safety
/// `uuid` is NULL or valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: Device,
    uuid: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    on_device(device, |_, gpu| {
        // SAFETY: buffer of `length` bytes per nvml.h.
        unsafe { put_str(uuid, length, &gpu.uuid) }
    })
}

/// # Safety
/// `pci` is NULL or valid for a write of `nvmlPciInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(device: Device, pci: *mut PciInfo) -> NvmlReturn {
    on_device(device, |_, gpu| {
        let info = PciInfo {
            bus_id_legacy: c_array(&gpu.pci_bus_id_legacy()),
            domain: 0,
            bus: gpu.pci_bus,
            device: 0,
            pci_device_id: PCI_DEVICE_ID,
            pci_sub_system_id: PCI_SUBSYSTEM_ID,
            bus_id: c_array(&gpu.pci_bus_id()),
        };
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(pci, info) }
    })
}

/// # Safety
/// As `nvmlDeviceGetPciInfo_v3` (same struct).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(device: Device, pci: *mut PciInfo) -> NvmlReturn {
    // SAFETY: same contract, forwarded.
    unsafe { nvmlDeviceGetPciInfo_v3(device, pci) }
}

// ---- telemetry ----------------------------------------------------------------------------

/// # Safety
/// `power` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: Device, power: *mut c_uint) -> NvmlReturn {
    on_device(device, |rt, gpu| {
        let milliwatts = to_mw(rt.draw_w(gpu.index));
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(power, milliwatts) }
    })
}

/// # Safety
/// `energy` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: Device,
    energy: *mut c_ulonglong,
) -> NvmlReturn {
    on_device(device, |rt, gpu| {
        let millijoules = rt.energy_mj(gpu.index);
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(energy, millijoules) }
    })
}

/// # Safety
/// `temp` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: Device,
    sensor: c_uint,
    temp: *mut c_uint,
) -> NvmlReturn {
    on_device(device, |_, gpu| {
        if sensor != TEMPERATURE_GPU {
            return Err(codes::ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(temp, gpu.temperature_c) }
    })
}

/// # Safety
/// `utilization` is NULL or valid for a write of `nvmlUtilization_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: Device,
    utilization: *mut Utilization,
) -> NvmlReturn {
    on_device(device, |rt, gpu| {
        let rates = Utilization {
            gpu: gpu.utilization_gpu_pct.min(100),
            memory: rt.state.utilization_memory_pct.min(100),
        };
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(utilization, rates) }
    })
}

/// # Safety
/// `memory` is NULL or valid for a write of `nvmlMemory_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: Device,
    memory: *mut Memory,
) -> NvmlReturn {
    on_device(device, |rt, gpu| {
        let total = rt.state.memory_total_bytes;
        let used = gpu.memory_used_bytes.min(total);
        let info = Memory {
            total,
            free: total - used,
            used,
        };
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(memory, info) }
    })
}

/// # Safety
/// `memory` is NULL or valid for reads and writes of `nvmlMemory_v2_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: Device,
    memory: *mut MemoryV2,
) -> NvmlReturn {
    on_device(device, |rt, gpu| {
        if memory.is_null() {
            return Err(codes::ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL, valid for reads per nvml.h (the caller sets `version` first).
        let version = unsafe { (*memory).version };
        if version != MEMORY_V2_VERSION {
            return Err(codes::ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let total = rt.state.memory_total_bytes;
        let reserved = rt.state.memory_reserved_bytes.min(total);
        let used = gpu.memory_used_bytes.min(total - reserved);
        let info = MemoryV2 {
            version,
            total,
            reserved,
            free: total - reserved - used,
            used,
        };
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(memory, info) }
    })
}

/// # Safety
/// `clock` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: Device,
    clock_type: c_uint,
    clock: *mut c_uint,
) -> NvmlReturn {
    on_device(device, |rt, gpu| {
        let mhz = match clock_type {
            CLOCK_GRAPHICS | CLOCK_SM => gpu.sm_clock_mhz(rt.state.sm_clock_mhz),
            CLOCK_MEM => rt.state.memory_clock_mhz,
            CLOCK_VIDEO => gpu.sm_clock_mhz(rt.state.sm_clock_mhz) * 17 / 20,
            _ => return Err(codes::ERROR_INVALID_ARGUMENT),
        };
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(clock, mhz) }
    })
}

/// # Safety
/// `reasons` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    device: Device,
    reasons: *mut c_ulonglong,
) -> NvmlReturn {
    on_device(device, |_, gpu| {
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(reasons, gpu.clock_event_reasons()) }
    })
}

/// # Safety
/// As `nvmlDeviceGetCurrentClocksEventReasons` (its older name).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: Device,
    reasons: *mut c_ulonglong,
) -> NvmlReturn {
    // SAFETY: same contract, forwarded.
    unsafe { nvmlDeviceGetCurrentClocksEventReasons(device, reasons) }
}

/// Count-then-fill, as nvml.h documents: with too small an array (or none), the count needed and
/// `INSUFFICIENT_SIZE`; with no processes, a count of 0 and `SUCCESS`.
///
/// # Safety
/// `info_count` is NULL or valid for reads and writes; `infos` is NULL or valid for writes of
/// `*info_count` entries.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: Device,
    info_count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    on_device(device, |_, gpu| {
        if info_count.is_null() {
            return Err(codes::ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL, valid for reads per this function's contract.
        let capacity = unsafe { *info_count } as usize;
        let needed = gpu.processes.len();
        let needed_c = c_uint::try_from(needed).map_err(|_| codes::ERROR_UNKNOWN)?;
        if needed == 0 {
            // SAFETY: as above, valid for writes.
            return unsafe { put(info_count, 0) };
        }
        if infos.is_null() || capacity < needed {
            // SAFETY: as above, valid for writes.
            unsafe { put(info_count, needed_c) }?;
            return Err(codes::ERROR_INSUFFICIENT_SIZE);
        }
        for (i, process) in gpu.processes.iter().enumerate() {
            let entry = ProcessInfo {
                pid: process.pid,
                used_gpu_memory: process.used_memory_bytes,
                gpu_instance_id: VALUE_NOT_AVAILABLE_UINT,
                compute_instance_id: VALUE_NOT_AVAILABLE_UINT,
            };
            // SAFETY: `i < needed <= capacity`, and `infos` holds `capacity` entries (contract).
            unsafe { put(infos.add(i), entry) }?;
        }
        // SAFETY: as above, valid for writes.
        unsafe { put(info_count, needed_c) }
    })
}

/// # Safety
/// As `nvmlDeviceGetComputeRunningProcesses_v3` (same struct).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: Device,
    info_count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    // SAFETY: same contract, forwarded.
    unsafe { nvmlDeviceGetComputeRunningProcesses_v3(device, info_count, infos) }
}

// ---- power limits -------------------------------------------------------------------------

/// # Safety
/// `limit` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(
    device: Device,
    limit: *mut c_uint,
) -> NvmlReturn {
    on_device(device, |_, gpu| {
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(limit, to_mw(gpu.limit_w)) }
    })
}

/// # Safety
/// `default_limit` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementDefaultLimit(
    device: Device,
    default_limit: *mut c_uint,
) -> NvmlReturn {
    on_device(device, |rt, _| {
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(default_limit, to_mw(rt.state.power_limit_default_w)) }
    })
}

/// # Safety
/// `limit` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    device: Device,
    limit: *mut c_uint,
) -> NvmlReturn {
    on_device(device, |_, gpu| {
        // SAFETY: out-pointer per nvml.h.
        unsafe { put(limit, to_mw(gpu.enforced_limit_w())) }
    })
}

/// # Safety
/// `min_limit` and `max_limit` are NULL or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    device: Device,
    min_limit: *mut c_uint,
    max_limit: *mut c_uint,
) -> NvmlReturn {
    on_device(device, |rt, _| {
        if min_limit.is_null() || max_limit.is_null() {
            return Err(codes::ERROR_INVALID_ARGUMENT);
        }
        let (min_mw, max_mw) = rt.limit_constraints_mw();
        // SAFETY: out-pointers per nvml.h, both checked non-NULL.
        unsafe {
            put(min_limit, min_mw)?;
            put(max_limit, max_mw)
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetPowerManagementLimit(device: Device, limit: c_uint) -> NvmlReturn {
    on_device(device, |rt, gpu| rt.set_limit_mw(gpu.index, limit))
}

#[cfg(test)]
mod tests {
    //! The C contract at its edges: small buffers, NULL pointers, wrong struct versions, calls
    //! before init. One runtime per process, so these tests take turns.

    use std::sync::Mutex;

    use super::*;

    static TURN: Mutex<()> = Mutex::new(());

    /// Runs `f` with the library initialised on `state`, then shuts it down.
    fn with_library(state: &str, f: impl FnOnce()) {
        let _turn = TURN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = std::env::temp_dir().join(format!("fake-nvml-ffi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        std::fs::write(&path, state).unwrap();
        assert_eq!(runtime::init(Ok(path)), codes::SUCCESS);
        f();
        assert_eq!(nvmlShutdown(), codes::SUCCESS);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn device(index: u32) -> Device {
        let mut device = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let result = unsafe { nvmlDeviceGetHandleByIndex_v2(index, &mut device) };
        assert_eq!(result, codes::SUCCESS);
        device
    }

    #[test]
    fn calls_before_init_are_uninitialized() {
        let _turn = TURN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut count = 0;
        // SAFETY: a valid out-pointer.
        let result = unsafe { nvmlDeviceGetCount_v2(&mut count) };
        assert_eq!(result, codes::ERROR_UNINITIALIZED);
        assert_eq!(nvmlShutdown(), codes::ERROR_UNINITIALIZED);
    }

    #[test]
    fn strings_need_room_for_their_nul() {
        with_library("{}", || {
            let mut buf = [0 as c_char; 96];
            let name = "NVIDIA H100 80GB HBM3";
            let exact = c_uint::try_from(name.len()).unwrap();
            // SAFETY: `buf` holds 96 bytes, more than either length passed.
            unsafe {
                let d = device(0);
                assert_eq!(
                    nvmlDeviceGetName(d, buf.as_mut_ptr(), exact),
                    codes::ERROR_INSUFFICIENT_SIZE
                );
                assert_eq!(
                    nvmlDeviceGetName(d, buf.as_mut_ptr(), exact + 1),
                    codes::SUCCESS
                );
                assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), name);
            }
        });
    }

    #[test]
    fn null_pointers_and_bad_handles_are_invalid_arguments() {
        with_library(r#"{"count": 2}"#, || {
            let mut value: c_uint = 0;
            // SAFETY: NULL is allowed by contract and must be refused, not written through.
            unsafe {
                assert_eq!(
                    nvmlDeviceGetCount_v2(std::ptr::null_mut()),
                    codes::ERROR_INVALID_ARGUMENT
                );
                assert_eq!(
                    nvmlDeviceGetPowerUsage(device(0), std::ptr::null_mut()),
                    codes::ERROR_INVALID_ARGUMENT
                );
                assert_eq!(
                    nvmlDeviceGetHandleByUUID(std::ptr::null(), std::ptr::null_mut()),
                    codes::ERROR_INVALID_ARGUMENT
                );
                assert_eq!(
                    nvmlDeviceGetPowerUsage(std::ptr::null_mut(), &mut value),
                    codes::ERROR_INVALID_ARGUMENT
                );
                assert_eq!(
                    nvmlDeviceGetPowerUsage(handle(2), &mut value),
                    codes::ERROR_INVALID_ARGUMENT
                );
                let mut d = std::ptr::null_mut();
                assert_eq!(
                    nvmlDeviceGetHandleByIndex_v2(2, &mut d),
                    codes::ERROR_INVALID_ARGUMENT
                );
            }
        });
    }

    #[test]
    fn memory_v2_checks_the_struct_version() {
        with_library("{}", || {
            let mut info = MemoryV2 {
                version: 1,
                total: 0,
                reserved: 0,
                free: 0,
                used: 0,
            };
            // SAFETY: `info` is a valid, writable nvmlMemory_v2_t.
            unsafe {
                assert_eq!(
                    nvmlDeviceGetMemoryInfo_v2(device(0), &mut info),
                    codes::ERROR_ARGUMENT_VERSION_MISMATCH
                );
                info.version = MEMORY_V2_VERSION;
                assert_eq!(
                    nvmlDeviceGetMemoryInfo_v2(device(0), &mut info),
                    codes::SUCCESS
                );
            }
            assert_eq!(info.version, 0x0200_0028, "pynvml's nvmlMemory_v2");
            assert_eq!(info.total, info.reserved + info.free + info.used);
        });
    }

    #[test]
    fn processes_are_counted_then_filled() {
        let state = r#"{"gpus": {"0": {"processes": [{"pid": 7, "used_memory_bytes": 10}, {"pid": 8, "used_memory_bytes": 20}]}}}"#;
        with_library(state, || {
            let d = device(0);
            let mut count: c_uint = 0;
            let mut infos: Vec<ProcessInfo> = (0..3)
                .map(|_| ProcessInfo {
                    pid: 0,
                    used_gpu_memory: 0,
                    gpu_instance_id: 0,
                    compute_instance_id: 0,
                })
                .collect();
            // SAFETY: `count` is writable, `infos` holds 3 entries and `count` never exceeds 3.
            unsafe {
                assert_eq!(
                    nvmlDeviceGetComputeRunningProcesses_v3(d, &mut count, std::ptr::null_mut()),
                    codes::ERROR_INSUFFICIENT_SIZE
                );
                assert_eq!(count, 2);
                count = 1;
                assert_eq!(
                    nvmlDeviceGetComputeRunningProcesses_v3(d, &mut count, infos.as_mut_ptr()),
                    codes::ERROR_INSUFFICIENT_SIZE
                );
                count = 3;
                assert_eq!(
                    nvmlDeviceGetComputeRunningProcesses_v3(d, &mut count, infos.as_mut_ptr()),
                    codes::SUCCESS
                );
            }
            assert_eq!(count, 2);
            let filled: Vec<(u32, u64)> = infos
                .iter()
                .take(2)
                .map(|p| (p.pid, p.used_gpu_memory))
                .collect();
            assert_eq!(filled, vec![(7, 10), (8, 20)]);
        });
    }

    #[test]
    fn a_limit_outside_the_constraints_is_refused_and_not_written() {
        with_library("{}", || {
            let d = device(0);
            assert_eq!(
                nvmlDeviceSetPowerManagementLimit(d, 199_999),
                codes::ERROR_INVALID_ARGUMENT
            );
            assert_eq!(
                nvmlDeviceSetPowerManagementLimit(d, 700_001),
                codes::ERROR_INVALID_ARGUMENT
            );
            let mut limit = 0;
            // SAFETY: a valid out-pointer.
            unsafe { nvmlDeviceGetEnforcedPowerLimit(d, &mut limit) };
            assert_eq!(limit, 700_000);
            assert_eq!(
                nvmlDeviceSetPowerManagementLimit(d, 200_000),
                codes::SUCCESS
            );
            // SAFETY: a valid out-pointer.
            unsafe { nvmlDeviceGetEnforcedPowerLimit(d, &mut limit) };
            assert_eq!(limit, 200_000);
        });
    }
}
