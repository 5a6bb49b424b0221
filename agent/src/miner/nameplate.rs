//! Nameplate power and hashrate: the operator's figures for a miner when the configuration has
//! them, else the maker's published figures for the model the miner names itself as.
//!
//! The table holds one bin per model (the one the maker lists first); a miner of another bin, or
//! a model not here, should get `nameplate_power_w` / `nameplate_hashrate_ths` on its entry in
//! the agent's configuration. The controller counts an unseen miner at its nameplate, and the
//! agent confirms a sleep and bounds a power target on it, so a wrong figure matters: the
//! operator's always wins.

use serde::Serialize;

/// Where a nameplate comes from (`MinerInventory.nameplate_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NameplateSource {
    /// The miner's entry in the agent's configuration.
    Config,
    /// [`MODELS`], by the model the miner reports.
    ModelTable,
}

impl NameplateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameplateSource::Config => "config",
            NameplateSource::ModelTable => "model-table",
        }
    }
}

/// A miner's nameplate (stock setting) draw and hashrate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Nameplate {
    pub power_w: u32,
    pub hashrate_ths: Option<f64>,
    pub source: NameplateSource,
}

/// (normalised model name, watts at the wall, TH/s). Figures are the makers' published
/// specifications, as their product pages and the public miner tools (pyasic's and asic-rs'
/// model lists name the models; hashrate and power are from the spec sheets) state them.
pub const MODELS: &[(&str, u32, f64)] = &[
    // Bitmain spec sheets (shop.bitmain.com product pages, "Power on wall" at 25 °C):
    ("s19", 3250, 95.0),       // Antminer S19 95T: 34.2 J/TH
    ("s19 pro", 3250, 110.0),  // Antminer S19 Pro 110T: 29.5 J/TH
    ("s19j pro", 3068, 104.0), // Antminer S19j Pro 104T: 29.5 J/TH (pivot-sim's default Antminer)
    ("s19k pro", 2760, 120.0), // Antminer S19k Pro 120T: 23 J/TH
    ("s19 xp", 3010, 140.0),   // Antminer S19 XP 140T: 21.5 J/TH
    ("s21", 3500, 200.0),      // Antminer S21 200T: 17.5 J/TH (pivot-sim's Braiins/LuxOS model)
    ("s21 pro", 3510, 234.0),  // Antminer S21 Pro 234T: 15 J/TH
    ("t21", 3610, 190.0),      // Antminer T21 190T: 19 J/TH
    // MicroBT spec sheets (microbt.com product pages, the first bin listed):
    ("m30s", 3344, 88.0),   // Whatsminer M30S 88T: 38 J/TH
    ("m30s+", 3400, 100.0), // Whatsminer M30S+ 100T: 34 J/TH
    ("m50s", 3276, 126.0),  // Whatsminer M50S 126T: 26 J/TH (pivot-sim's Whatsminer v2)
    ("m60s", 3441, 186.0),  // Whatsminer M60S 186T: 18.5 J/TH (pivot-sim's Whatsminer v3)
    // The Bitaxe project's published figure for the Gamma (BM1370): 1.2 TH/s at about 17 W.
    ("bitaxe gamma", 17, 1.2),
];

/// The model name as the table keys it: lower case, single spaces, without the make
/// ("Antminer S19j Pro", "Bitmain S19j Pro" → "s19j pro") and without the chip/board suffix
/// Whatsminer firmware appends ("M50S_VH50" → "m50s").
pub fn normalise(model: &str) -> String {
    let lower = model.to_ascii_lowercase();
    let base = lower.split('_').next().unwrap_or_default();
    let words: Vec<&str> = base.split_whitespace().collect();
    let skip = words
        .iter()
        .take_while(|w| matches!(**w, "antminer" | "bitmain" | "whatsminer" | "microbt"))
        .count();
    words[skip..].join(" ")
}

/// The table's figures for `model`, if it names one the table knows.
pub fn from_model(model: &str) -> Option<(u32, f64)> {
    let key = normalise(model);
    MODELS
        .iter()
        .find(|(name, _, _)| *name == key)
        .map(|&(_, w, ths)| (w, ths))
}

/// The nameplate of a miner: the configuration's when it gives the power (its hashrate, if any,
/// with it), else the table's for `model`.
pub fn resolve(
    configured_power_w: Option<u32>,
    configured_hashrate_ths: Option<f64>,
    model: Option<&str>,
) -> Option<Nameplate> {
    if let Some(power_w) = configured_power_w {
        return Some(Nameplate {
            power_w,
            hashrate_ths: configured_hashrate_ths,
            source: NameplateSource::Config,
        });
    }
    let (power_w, ths) = from_model(model?)?;
    Some(Nameplate {
        power_w,
        hashrate_ths: configured_hashrate_ths.or(Some(ths)),
        source: NameplateSource::ModelTable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_found_however_the_firmware_spells_them() {
        assert_eq!(from_model("Antminer S19j Pro"), Some((3068, 104.0)));
        assert_eq!(from_model("Bitmain S21"), Some((3500, 200.0)));
        assert_eq!(from_model("antminer  s21"), Some((3500, 200.0)));
        assert_eq!(from_model("M50S_VH50"), Some((3276, 126.0)));
        assert_eq!(from_model("WhatsMiner M60S"), Some((3441, 186.0)));
        assert_eq!(from_model("Bitaxe Gamma"), Some((17, 1.2)));
        // Near names are other models, not guesses.
        assert_eq!(from_model("Antminer S19j"), None);
        assert_eq!(from_model("M50S+"), None);
        assert_eq!(from_model(""), None);
    }

    #[test]
    fn the_configuration_wins_over_the_table() {
        let n = resolve(Some(3250), None, Some("Antminer S21")).unwrap();
        assert_eq!(
            (n.power_w, n.hashrate_ths, n.source),
            (3250, None, NameplateSource::Config)
        );
        let n = resolve(None, None, Some("Antminer S21")).unwrap();
        assert_eq!(n.source, NameplateSource::ModelTable);
        assert_eq!(n.hashrate_ths, Some(200.0));
        assert_eq!(resolve(None, None, Some("Avalon 1246")), None);
        assert_eq!(resolve(None, Some(90.0), None), None);
    }

    #[test]
    fn every_table_entry_is_a_plausible_miner() {
        for (name, w, ths) in MODELS {
            assert_eq!(normalise(name), *name, "keys are normalised");
            let j_per_th = f64::from(*w) / ths;
            assert!((10.0..60.0).contains(&j_per_th), "{name}: {j_per_th} J/TH");
        }
    }
}
