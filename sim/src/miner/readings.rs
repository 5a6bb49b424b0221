//! Derived numbers every dialect reports in its own words: per-board split, temperatures, fans,
//! share counters. Deterministic functions of the snapshot, so replies are stable in tests.

use super::state::{Core, Snapshot};

/// What one look at the miner shows, in units the dialects convert from.
#[derive(Clone, Debug)]
pub(crate) struct Reading {
    pub snap: Snapshot,
    /// Fraction of nameplate power the hashboards draw now (0 asleep).
    pub load: f64,
    pub boards: usize,
    pub chips_per_board: u32,
    pub fans: usize,
    pub uptime_s: u64,
    pub accepted: u64,
    pub serial: u32,
}

impl Reading {
    pub fn of(core: &Core) -> Reading {
        let snap = core.snapshot();
        let model = snap.model;
        let load = if snap.hashrate_ths > 0.0 {
            (snap.power_w / f64::from(model.nameplate_w.max(1))).clamp(0.0, 1.5)
        } else {
            0.0
        };
        // About one accepted share per 2^32 × difficulty hashes; a pool difficulty that gives
        // a few shares a minute at nameplate.
        let accepted = (snap.hashrate_ths * snap.uptime_s as f64 / 40.0) as u64;
        Reading {
            uptime_s: snap.uptime_s,
            boards: usize::from(model.boards.max(1)),
            snap,
            load,
            chips_per_board: u32::from(model.chips_per_board),
            fans: usize::from(model.fans),
            accepted,
            serial: core.spec.serial,
        }
    }

    pub fn total_ghs(&self) -> f64 {
        self.snap.hashrate_ths * 1000.0
    }

    pub fn total_mhs(&self) -> f64 {
        self.snap.hashrate_ths * 1e6
    }

    pub fn board_ghs(&self) -> f64 {
        self.total_ghs() / self.boards as f64
    }

    /// Nameplate hashrate in GH/s (what the firmware calls "ideal").
    pub fn ideal_ghs(&self) -> f64 {
        self.snap.model.nameplate_ths * 1000.0
    }

    pub fn chip_temp(&self, board: usize) -> f64 {
        (35.0 + 35.0 * self.load + board as f64).round()
    }

    pub fn board_temp(&self, board: usize) -> f64 {
        (30.0 + 28.0 * self.load + board as f64).round()
    }

    pub fn fan_rpm(&self, fan: usize) -> u32 {
        (1500.0 + 3600.0 * self.load) as u32 + fan as u32 * 30
    }

    pub fn mac(&self) -> String {
        let s = self.serial.to_be_bytes();
        format!("02:50:49:{:02X}:{:02X}:{:02X}", s[1], s[2], s[3])
    }

    pub fn serial_number(&self, prefix: &str) -> String {
        format!("{prefix}{:08}", self.serial)
    }

    /// The measured power at the wall, whole watts.
    pub fn watts(&self) -> u64 {
        self.snap.power_w.round() as u64
    }
}
