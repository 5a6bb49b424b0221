//! Physical bounds on what an agent may claim a device does. A reading outside them is refused
//! (the device then counts as unseen, at its maximum) rather than believed: a broken sensor or a
//! hostile agent must not be able to make the site look empty, or full.

use super::{Assumptions, GpuInfo, GpuObservation, HostPower, MinerInfo, MinerObservation};
use pivot_proto::model::MinerState;
use pivot_proto::v1;

/// How far above its maximum a reading may be before it is not believed (meters and PSUs read
/// high; overclocked firmware runs above nameplate).
const MARGIN: f64 = 1.5;
/// A miner whose maximum nobody knows: the largest hydro units draw about 12 kW.
const MINER_CEILING_W: f64 = 25_000.0;
/// A miner whose nameplate hashrate nobody knows: the largest units hash about 1 PH/s.
const MINER_CEILING_THS: f64 = 2_000.0;
/// A host whose maximum nobody knows: a dense 8-GPU server draws about 12 kW.
const HOST_CEILING_W: f64 = 100_000.0;
const TEMPERATURE_C: std::ops::RangeInclusive<f64> = -40.0..=150.0;

fn within(v: Option<f64>, hi: f64, what: &str) -> Result<(), String> {
    match v {
        Some(x) if !(0.0..=hi).contains(&x) => Err(format!(
            "{what} {x} is outside the physical range 0-{hi:.0}"
        )),
        _ => Ok(()),
    }
}

fn temperature(v: Option<f64>, what: &str) -> Result<(), String> {
    match v {
        Some(t) if !TEMPERATURE_C.contains(&t) => {
            Err(format!("{what} {t} °C is outside -40-150 °C"))
        }
        _ => Ok(()),
    }
}

/// Checks a miner reading; `Ok(Some(note))` for a reading worth a flag.
pub fn miner(
    m: &MinerObservation,
    info: &MinerInfo,
    assume: &Assumptions,
) -> Result<Option<String>, String> {
    let max_w = match (info.nameplate_power_w, info.power_target_max_w) {
        (Some(a), Some(b)) => a.max(b) * MARGIN,
        (Some(a), None) | (None, Some(a)) => a * MARGIN,
        (None, None) => MINER_CEILING_W.max(assume.unknown_miner_max_w * MARGIN),
    };
    within(m.power_w, max_w, "power W")?;
    within(m.power_target_w, max_w, "power target W")?;
    // Firmware that takes a power target above the nameplate hashes above the nameplate too, in
    // proportion: the bound follows. (The planner sets such targets itself; refusing the
    // readings they give left a miner unseen for as long as it ran there — the chaos run.)
    let overclock = match (info.nameplate_power_w, info.power_target_max_w) {
        (Some(n), Some(t)) if n > 0.0 && t > n => t / n,
        _ => 1.0,
    };
    let max_ths = info
        .inventory
        .nameplate_hashrate_ths
        .filter(|h| *h > 0.0)
        .map_or(MINER_CEILING_THS, |h| h * MARGIN * overclock);
    within(m.hashrate_ths, max_ths, "hashrate TH/s")?;
    for b in &m.reading.boards {
        temperature(b.temperature_c, &format!("board {} temperature", b.index))?;
        within(
            b.hashrate_ths,
            max_ths,
            &format!("board {} hashrate TH/s", b.index),
        )?;
    }
    let flag = match (m.state, m.power_w, info.nameplate_power_w) {
        (MinerState::Sleeping, Some(p), Some(n)) if p >= n / 2.0 => Some(format!(
            "reports sleeping but draws {p:.0} W of its {n:.0} W nameplate"
        )),
        _ => None,
    };
    Ok(flag)
}

pub fn gpu(g: &GpuObservation, info: &GpuInfo) -> Result<(), String> {
    let max_w = info.power_cap_max_w.max(1.0) * MARGIN;
    within(g.power_w, max_w, "power W")?;
    within(g.enforced_power_limit_w, max_w, "enforced limit W")?;
    within(g.reading.power_cap_w, max_w, "power cap W")?;
    temperature(g.reading.temperature_c, "temperature")?;
    within(g.reading.utilization_pct, 100.0, "utilization %")?;
    within(g.reading.energy_j, f64::MAX, "energy J")?;
    Ok(())
}

pub fn host(h: &v1::HostReading, power: &HostPower) -> Result<(), String> {
    let max_w = power.max_w.map_or(HOST_CEILING_W, |m| m * MARGIN);
    within(h.power_w, max_w, "host power W")?;
    temperature(h.temperature_c, "host temperature")?;
    within(h.cpu_usage_pct, 100.0, "CPU usage %")?;
    Ok(())
}
