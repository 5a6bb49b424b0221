//! What the simulated site is made of: how many miners of which dialect and model (older
//! S19-class machines next to S21-class ones, all six dialects), how they are spread over the
//! rack agents, and the GPU hosts.

use pivot_sim::miner::{Dialect, MinerSpec, Model, Timing};

/// Antminer S19 XP 140 TH: 3,010 W (21.5 J/TH), the maker's spec sheet; pivot-sim has no
/// constant for it. Chips per board as pyasic and asic-rs list the model.
pub const ANTMINER_S19_XP: Model = Model {
    name: "Antminer S19 XP",
    nameplate_w: 3010,
    nameplate_ths: 140.0,
    boards: 3,
    chips_per_board: 110,
    fans: 4,
};

/// One kind of miner on the site and its share of the fleet (in parts of 100).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinerClass {
    pub dialect: Dialect,
    pub model: Model,
    pub share: u32,
}

/// The site's miners, least efficient first: a stock-firmware S19j Pro fleet bought in 2021,
/// S19 XPs on Braiins OS, S21s on LuxOS, Whatsminers of two generations, and a shelf of Bitaxes.
pub const CLASSES: [MinerClass; 6] = [
    MinerClass {
        dialect: Dialect::Antminer,
        model: Model::ANTMINER_S19J_PRO,
        share: 25,
    },
    MinerClass {
        dialect: Dialect::WhatsminerV2,
        model: Model::WHATSMINER_M50S,
        share: 16,
    },
    MinerClass {
        dialect: Dialect::Braiins,
        model: ANTMINER_S19_XP,
        share: 20,
    },
    MinerClass {
        dialect: Dialect::WhatsminerV3,
        model: Model::WHATSMINER_M60S,
        share: 17,
    },
    MinerClass {
        dialect: Dialect::Luxos,
        model: Model::ANTMINER_S21,
        share: 20,
    },
    MinerClass {
        dialect: Dialect::Bitaxe,
        model: Model::BITAXE_GAMMA,
        share: 2,
    },
];

/// GPUs per simulated GPU host (an 8×H100 server).
pub const GPUS_PER_HOST: u32 = 8;

/// What an 8×H100 server draws besides its GPUs (CPUs, memory, NICs, fans), W.
pub const HOST_BASE_W: u32 = 4600;

/// An H100's highest power cap (the fake NVML's default), W.
pub const GPU_MAX_W: u32 = 700;

/// An H100's lowest power cap (the fake NVML's default), W: a drained host's GPUs sit here.
pub const GPU_MIN_W: u32 = 200;

/// What a fake H100 running a job asks for, W: the caps decide what it draws (700 W at full
/// service, 200 W drained), as the backtest models a GPU host; an idle one draws
/// `workload::IDLE_GPU_W`.
pub const GPU_DEMAND_W: f64 = 700.0;

/// The default site: 240 miners on four rack agents, eight GPU hosts.
pub const DEFAULT_MINERS: usize = 240;
pub const DEFAULT_RACKS: usize = 4;
pub const DEFAULT_GPU_HOSTS: usize = 8;

/// The site's grid cap for a fleet: 94 % of what everything draws at once, a miner with a
/// power-target range at a tenth over its nameplate (what its owner may tune it to; the
/// controller counts it at its nameplate or its reported setting), so the cap binds and the
/// planner chooses; rounded to the kW. The reserve is 2 % of it.
pub fn site_cap_w(layout: &FleetLayout) -> (f64, f64) {
    let miners: f64 = layout
        .miners
        .iter()
        .map(|m| {
            let (_, max) = m.spec.model.power_target_range_w();
            if m.spec.dialect.has_power_target() {
                f64::from(max.max(m.spec.model.nameplate_w))
            } else {
                f64::from(m.spec.model.nameplate_w)
            }
        })
        .sum();
    let hosts = layout.gpu_hosts as f64 * f64::from(HOST_BASE_W + GPUS_PER_HOST * GPU_MAX_W);
    let cap = ((miners + hosts) * 0.94 / 1000.0).round().max(1.0) * 1000.0;
    let reserve = (cap * 0.02 / 1000.0).round() * 1000.0;
    (cap, reserve)
}

/// How many miners of each class a fleet of `total` has: shares by largest remainder, and at
/// least one of every class once the fleet has room for all six.
pub fn class_counts(total: usize) -> [usize; 6] {
    let shares: u64 = CLASSES.iter().map(|c| u64::from(c.share)).sum();
    let total64 = total as u64;
    let mut counts = [0usize; 6];
    let mut rest: Vec<(u64, usize)> = Vec::with_capacity(6);
    let mut given = 0usize;
    for (i, c) in CLASSES.iter().enumerate() {
        let exact = total64 * u64::from(c.share);
        counts[i] = usize::try_from(exact / shares).unwrap_or(0);
        given += counts[i];
        rest.push((exact % shares, i));
    }
    // Largest remainder first; ties to the earlier (less efficient) class.
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rest.iter().take(total.saturating_sub(given)) {
        counts[*i] += 1;
    }
    if total >= CLASSES.len() {
        for i in 0..counts.len() {
            if counts[i] == 0
                && let Some(big) = (0..counts.len()).max_by_key(|&j| counts[j])
            {
                counts[big] -= 1;
                counts[i] += 1;
            }
        }
    }
    counts
}

/// One emulated miner and the rack agent that drives it.
#[derive(Debug, Clone)]
pub struct PlannedMiner {
    pub spec: MinerSpec,
    pub rack: usize,
}

/// The whole fleet before anything starts.
#[derive(Debug, Clone)]
pub struct FleetLayout {
    pub miners: Vec<PlannedMiner>,
    pub racks: usize,
    pub gpu_hosts: usize,
}

impl FleetLayout {
    /// `miners` spread over `racks` agents (each rack a mix of classes, as containers are
    /// filled over the years), and `gpu_hosts` hosts of eight fake H100s each.
    pub fn new(miners: usize, racks: usize, gpu_hosts: usize, timing: Timing) -> Self {
        let racks = racks.max(1).min(miners.max(1));
        let mut planned = Vec::with_capacity(miners);
        for (class, count) in CLASSES.iter().zip(class_counts(miners)) {
            for _ in 0..count {
                let n = planned.len();
                planned.push(PlannedMiner {
                    spec: MinerSpec::new(class.dialect)
                        .model(class.model)
                        .timing(timing)
                        .serial(u32::try_from(n + 1).unwrap_or(u32::MAX)),
                    rack: n % racks,
                });
            }
        }
        Self {
            miners: planned,
            racks,
            gpu_hosts,
        }
    }

    pub fn rack_id(rack: usize) -> String {
        format!("rack-{}", rack + 1)
    }

    pub fn gpu_host_id(host: usize) -> String {
        format!("gpu-host-{}", host + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_is_there_and_the_counts_add_up() {
        for total in [0, 1, 5, 6, 7, 60, 240, 1000, 10_000] {
            let c = class_counts(total);
            assert_eq!(c.iter().sum::<usize>(), total, "{total}: {c:?}");
            if total >= 6 {
                assert!(c.iter().all(|n| *n >= 1), "{total}: {c:?}");
            }
        }
        assert_eq!(class_counts(240), [60, 38, 48, 41, 48, 5]);
    }

    #[test]
    fn racks_mix_classes_and_serials_are_distinct() {
        let f = FleetLayout::new(240, 4, 8, Timing::fast());
        assert_eq!(f.miners.len(), 240);
        for r in 0..4 {
            let dialects: std::collections::BTreeSet<_> = f
                .miners
                .iter()
                .filter(|m| m.rack == r)
                .map(|m| m.spec.dialect.name())
                .collect();
            assert_eq!(dialects.len(), 6, "rack {r}: {dialects:?}");
        }
        let serials: std::collections::BTreeSet<_> =
            f.miners.iter().map(|m| m.spec.serial).collect();
        assert_eq!(serials.len(), 240);
        assert_eq!(FleetLayout::new(3, 10, 0, Timing::fast()).racks, 3);
    }

    #[test]
    fn the_default_site_has_a_binding_cap() {
        let f = FleetLayout::new(
            DEFAULT_MINERS,
            DEFAULT_RACKS,
            DEFAULT_GPU_HOSTS,
            Timing::fast(),
        );
        assert_eq!(site_cap_w(&f), (847_000.0, 17_000.0));
    }
}
