//! Host metrics through sysinfo: CPU, memory, load, uptime, and temperatures where sensors exist.
//!
//! sysinfo is built without its default `gpu` feature (see the workspace Cargo.toml), so it does
//! not load NVML behind the GPU module's back. A temperature that is not measured is `None`
//! (unknown), never 0 °C: virtual machines and many containers expose no sensors at all.

use std::time::Instant;

use serde::Serialize;
use sysinfo::{Components, CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// One temperature sensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorReading {
    pub label: String,
    /// `None` when the sensor exists but gave no usable reading.
    pub temperature_c: Option<f32>,
}

/// One sample of the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostMetrics {
    pub hostname: Option<String>,
    pub cpu_count: usize,
    /// All CPUs together. `None` on the first sample: usage is a difference between two readings.
    pub cpu_usage_pct: Option<f32>,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    /// 1, 5 and 15 minute load averages; `None` where the platform has none.
    pub load_average: Option<[f64; 3]>,
    pub uptime_s: Option<u64>,
    /// Every sensor found; empty where there are none.
    pub sensors: Vec<SensorReading>,
    /// The hottest sensor; `None` (unknown) when no sensor gave a reading.
    pub max_temperature_c: Option<f32>,
}

/// Failures to start sampling.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read host metrics on this platform: {0}")]
    Unsupported(String),
}

/// Samples the host; keeps sysinfo's state between samples (CPU usage needs two readings).
pub struct HostSampler {
    system: System,
    components: Components,
    last_cpu_refresh: Option<Instant>,
}

impl std::fmt::Debug for HostSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSampler")
            .field("last_cpu_refresh", &self.last_cpu_refresh)
            .finish()
    }
}

impl HostSampler {
    /// # Errors
    /// When sysinfo does not support this platform.
    pub fn new() -> Result<Self, HostError> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )
        .map_err(|e| HostError::Unsupported(e.to_string()))?;
        // No sensors is normal (a VM): only the platform refusing outright is an error.
        let components = Components::new_with_refreshed_list()
            .map_err(|e| HostError::Unsupported(e.to_string()))?;
        Ok(Self {
            system,
            components,
            last_cpu_refresh: Some(Instant::now()),
        })
    }

    /// Reads the host now.
    pub fn sample(&mut self) -> HostMetrics {
        // sysinfo needs MINIMUM_CPU_UPDATE_INTERVAL between two CPU refreshes for a usage figure.
        let cpu_ready = self
            .last_cpu_refresh
            .is_some_and(|t| t.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        self.system.refresh_cpu_usage();
        self.last_cpu_refresh = Some(Instant::now());
        self.system.refresh_memory();
        self.components.refresh(true);

        let sensors: Vec<SensorReading> = self
            .components
            .iter()
            .map(|c| SensorReading {
                label: c.label().to_string(),
                temperature_c: usable_temperature(c.temperature()),
            })
            .collect();
        let max_temperature_c = sensors
            .iter()
            .filter_map(|s| s.temperature_c)
            .fold(None, |max: Option<f32>, t| {
                Some(max.map_or(t, |m| m.max(t)))
            });
        let load = System::load_average().ok();
        HostMetrics {
            hostname: System::host_name().ok(),
            cpu_count: self.system.cpus().len(),
            cpu_usage_pct: cpu_ready.then(|| self.system.global_cpu_usage()),
            memory_total_bytes: self.system.total_memory(),
            memory_used_bytes: self.system.used_memory(),
            memory_available_bytes: self.system.available_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
            load_average: load.map(|l| [l.one, l.five, l.fifteen]),
            uptime_s: System::uptime().ok(),
            sensors,
            max_temperature_c,
        }
    }
}

/// A sensor value worth reporting: finite and not exactly 0 °C, which Linux drivers report for
/// sensors they cannot read (a real component at exactly 0.0 °C is not plausible).
fn usable_temperature(reading: Option<f32>) -> Option<f32> {
    reading.filter(|t| t.is_finite() && *t != 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_sensors_are_unknown_not_zero() {
        assert_eq!(usable_temperature(None), None);
        assert_eq!(usable_temperature(Some(0.0)), None);
        assert_eq!(usable_temperature(Some(f32::NAN)), None);
        assert_eq!(usable_temperature(Some(f32::INFINITY)), None);
        assert_eq!(usable_temperature(Some(47.5)), Some(47.5));
    }

    #[test]
    fn a_sample_describes_this_host() {
        let mut sampler = HostSampler::new().unwrap();
        let first = sampler.sample();
        assert!(first.cpu_count > 0);
        assert!(first.memory_total_bytes > 0);
        assert!(first.memory_used_bytes <= first.memory_total_bytes);
        assert!(first.uptime_s.is_some_and(|u| u > 0));
        assert!(first.load_average.is_some(), "Linux has load averages");
        for sensor in &first.sensors {
            assert_ne!(sensor.temperature_c, Some(0.0), "{sensor:?}");
        }
        if first.sensors.iter().all(|s| s.temperature_c.is_none()) {
            assert_eq!(
                first.max_temperature_c, None,
                "no sensor: unknown, not 0 °C"
            );
        }
        let json = serde_json::to_value(&first).unwrap();
        assert!(json.get("max_temperature_c").is_some());
    }
}
