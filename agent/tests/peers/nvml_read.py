"""Reads every GPU of an NVML library with NVIDIA's own Python bindings and prints it as JSON.

pivot's fake NVML library is checked against this: if NVIDIA's bindings (nvidia-ml-py), written
against nvml.h and not against nvml-wrapper, read the same values as pivot does, the fake follows
NVML's ABI and not only the calls nvml-wrapper happens to make.

Usage: nvml_read.py LIBRARY [--set-limit INDEX MILLIWATTS]
"""

import ctypes
import json
import sys
import time

import pynvml


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def nvml_error(call):
    """The NVML error a call raises, as its name (e.g. "NVMLError_InvalidArgument"), or None."""
    try:
        call()
    except pynvml.NVMLError as e:
        return type(e).__name__
    return None


def read_gpu(index):
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    uuid = text(pynvml.nvmlDeviceGetUUID(h))
    pci = pynvml.nvmlDeviceGetPciInfo(h)
    mem_v1 = pynvml.nvmlDeviceGetMemoryInfo(h)
    mem_v2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    util = pynvml.nvmlDeviceGetUtilizationRates(h)
    min_mw, max_mw = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h)
    energy_before = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    time.sleep(0.05)
    energy_after = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    by_uuid = pynvml.nvmlDeviceGetHandleByUUID(uuid)
    return {
        "index": pynvml.nvmlDeviceGetIndex(h),
        "index_by_uuid": pynvml.nvmlDeviceGetIndex(by_uuid),
        "name": text(pynvml.nvmlDeviceGetName(h)),
        "uuid": uuid,
        "pci_bus_id": text(pci.busId),
        "pci_bus_id_legacy": text(pci.busIdLegacy),
        "pci_device_id": pci.pciDeviceId,
        "power_mw": pynvml.nvmlDeviceGetPowerUsage(h),
        "energy_mj": [energy_before, energy_after],
        "temperature_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        "utilization_gpu_pct": util.gpu,
        "utilization_memory_pct": util.memory,
        "memory_v1": [mem_v1.total, mem_v1.free, mem_v1.used],
        "memory_v2": [mem_v2.total, mem_v2.reserved, mem_v2.free, mem_v2.used],
        "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        "memory_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
        "throttle_reasons": pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h),
        "event_reasons": pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
        "limit_mw": pynvml.nvmlDeviceGetPowerManagementLimit(h),
        "default_limit_mw": pynvml.nvmlDeviceGetPowerManagementDefaultLimit(h),
        "enforced_limit_mw": pynvml.nvmlDeviceGetEnforcedPowerLimit(h),
        "min_limit_mw": min_mw,
        "max_limit_mw": max_mw,
        "processes": [
            {"pid": p.pid, "used_memory_bytes": p.usedGpuMemory}
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        ],
        "set_below_min_error": nvml_error(
            lambda: pynvml.nvmlDeviceSetPowerManagementLimit(h, min_mw - 1000)
        ),
    }


def main():
    library = sys.argv[1]
    # pynvml.nvmlInit() loads libnvidia-ml.so.1 only while its module global nvmlLib is None;
    # setting it first makes the bindings use the library under test.
    pynvml.nvmlLib = ctypes.CDLL(library)
    pynvml.nvmlInit()
    if len(sys.argv) == 5 and sys.argv[2] == "--set-limit":
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(sys.argv[3]))
        pynvml.nvmlDeviceSetPowerManagementLimit(handle, int(sys.argv[4]))
    count = pynvml.nvmlDeviceGetCount()
    gpus, lost = [], []
    for index in range(count):
        try:
            gpus.append(read_gpu(index))
        except pynvml.NVMLError_GpuIsLost:
            lost.append(index)
    report = {
        "driver_version": text(pynvml.nvmlSystemGetDriverVersion()),
        "nvml_version": text(pynvml.nvmlSystemGetNVMLVersion()),
        "count": count,
        "gpus": gpus,
        "lost": lost,
        "missing_uuid_error": nvml_error(lambda: pynvml.nvmlDeviceGetHandleByUUID(b"GPU-nope")),
    }
    pynvml.nvmlShutdown()
    json.dump(report, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
