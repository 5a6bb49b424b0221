//! LuxOS' read-only replies on 4028, shaped like the real firmware's.
//!
//! Shapes (keys, nesting, STATUS codes and messages) are those of the replies asic-rs 0.8.6
//! ships as captures of a LuxOS 2025.4.8 S19k Pro (`asic-rs-firmwares-luxminer`
//! `src/test/json/v1/*.json`: version, summary, stats, devs, pools, power, temps, fans, config,
//! profiles, voltageget_N, healthchipget_N, events), of luxos-tooling's test messages
//! (`tests/data/messages/groups.json`, `atm.json`), and of Luxor's API pages
//! (docs.luxor.tech/firmware/api: `tempctrlset`'s TEMPCTRL, `temps`' METADATA). The numbers are
//! the emulated miner's own.

use serde_json::{Value, json};

use super::RunState;
use super::cgminer::{status, unix_now};
use super::readings::Reading;
use super::state::Core;

/// The LUXminer build this emulator reports (the capture's).
pub(crate) const LUXMINER: &str = "2025.4.8.220305-57b389c7";
const MINER: &str = "2025.4.8.220305";
const COMPILE_TIME: &str = "Tue Apr  8 22:05:35 UTC 2025";

/// The frequency the stock `default` profile runs at, MHz.
const DEFAULT_FREQ_MHZ: u32 = 525;
/// Profiles are 25 MHz apart, from 16 steps below `default` to 8 above (the capture's range:
/// 190MHz … 790MHz around a 590 MHz default, 25 profiles).
const STEP_MHZ: u32 = 25;
const STEPS_BELOW: u32 = 16;
const STEPS_ABOVE: u32 = 8;

/// One LuxOS profile: frequency-named (`"290MHz"`), the stock one named `default`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Profile {
    pub name: String,
    pub step: i32,
    pub freq_mhz: u32,
    pub watts: u32,
    pub ths: f64,
    pub voltage: f64,
}

/// The profiles a model offers. Hashrate is proportional to frequency (the capture: 190 MHz
/// gives 39.2 TH/s on a 121.8 TH/s nameplate at 590 MHz); power grows a little faster than
/// frequency below stock and faster still above it, where the voltage rises.
pub(crate) fn profiles(core: &Core) -> Vec<Profile> {
    let model = core.spec.model;
    let np = f64::from(model.nameplate_w);
    (0..=STEPS_BELOW + STEPS_ABOVE)
        .map(|i| {
            let step = i32::try_from(i).unwrap_or(0) - i32::try_from(STEPS_BELOW).unwrap_or(0);
            let freq_mhz = DEFAULT_FREQ_MHZ + i * STEP_MHZ - STEPS_BELOW * STEP_MHZ;
            let ratio = f64::from(freq_mhz) / f64::from(DEFAULT_FREQ_MHZ);
            let power_ratio = if ratio <= 1.0 {
                ratio.powf(1.1)
            } else {
                ratio.powf(1.45)
            };
            let voltage = if ratio <= 1.0 {
                11.88 + 1.2 * ratio
            } else {
                13.08 + 4.0 * (ratio - 1.0)
            };
            Profile {
                name: if step == 0 {
                    "default".to_owned()
                } else {
                    format!("{freq_mhz}MHz")
                },
                step,
                freq_mhz,
                watts: (np * power_ratio).round() as u32,
                ths: (model.nameplate_ths * ratio * 10.0).round() / 10.0,
                voltage: (voltage * 100.0).round() / 100.0,
            }
        })
        .collect()
}

/// The profile a name selects, if the miner has it.
pub(crate) fn profile_named(core: &Core, name: &str) -> Option<Profile> {
    profiles(core).into_iter().find(|p| p.name == name)
}

/// Makes the profile `name` the active one, as `profileset` does: the miner draws its watts (the
/// stock one clears the power target). `None` if the miner has no such profile.
pub(crate) fn select_profile(core: &Core, name: &str) -> Option<Profile> {
    let p = profile_named(core, name)?;
    core.lock().profile = p.name.clone();
    core.set_power_target(if p.step == 0 { None } else { Some(p.watts) });
    Some(p)
}

/// The frequency the miner runs at now: its active profile's.
fn active_freq_mhz(core: &Core) -> u32 {
    let name = core.lock().profile.clone();
    profile_named(core, &name).map_or(DEFAULT_FREQ_MHZ, |p| p.freq_mhz)
}

fn desc() -> String {
    format!("LUXminer {LUXMINER}")
}

fn ok(code: u32, msg: &str) -> Value {
    status("S", code, msg, &desc())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `"a-b-c-d"` as LuxOS and stock firmware report a board's four sensors.
fn four(a: f64, b: f64) -> String {
    format!("{a:.0}-{b:.0}-{b:.0}-{a:.0}")
}

/// The replies that only read; `None` for commands this module does not answer.
pub(crate) fn read(core: &Core, command: &str, parameter: Option<&str>) -> Option<Value> {
    let r = Reading::of(core);
    let model = core.spec.model;
    Some(match command {
        "version" => json!({
            "STATUS": ok(22, "LUXminer versions"),
            "VERSION": [{"API": "3.7", "CompileTime": COMPILE_TIME, "LUXminer": LUXMINER,
                         "Miner": MINER, "Type": model.name}],
        }),
        "summary" => summary(&r),
        "stats" => stats(core, &r),
        "devs" => devs(core, &r),
        "pools" => json!({"STATUS": ok(7, "1 Pool(s)"), "POOLS": [pool(&r)]}),
        "groups" => json!({
            "STATUS": ok(324, "List groups"),
            "GROUPS": [{"GROUP": 0, "Name": "default", "Quota": 1.0}],
        }),
        // The capture shows `PSU: false` while hashing at 1 kW; what it tracks is not documented,
        // so it follows the curtail state here.
        "power" => json!({
            "STATUS": ok(311, "Power usage"),
            "POWER": [{"PSU": !r.snap.sleep_requested, "Watts": r.watts()}],
        }),
        "temps" => temps(&r),
        "fans" => json!({
            "STATUS": ok(202, &format!("{} Fan(s)", r.fans)),
            "FANCTRL": [{"MinFans": r.fans.saturating_sub(1), "PowerOffSpeed": 20}],
            "FANS": (0..r.fans).map(|f| json!({"FAN": format!("FAN{}", f + 1), "ID": f,
                "RPM": r.fan_rpm(f), "Speed": fan_speed(&r)})).collect::<Vec<_>>(),
        }),
        // Luxor's defaults (docs.luxor.tech/firmware/features/tempsandfans: target 55, hot 65,
        // dangerous 70 °C); the keys are those `tempctrlset` answers with. The read's own
        // STATUS code is not in the sources seen; the set's (330) is used.
        "tempctrl" => json!({
            "STATUS": ok(330, "Temperature control"),
            "TEMPCTRL": [{"Target": 55, "Hot": 65, "Dangerous": 70, "ChipHot": 80,
                          "ChipDangerous": 85, "WaterInletDangerous": 0}],
        }),
        "config" => config(core, &r),
        "profiles" => json!({
            "STATUS": ok(323, "List profiles"),
            "PROFILES": profiles(core).into_iter().map(|p| json!({
                "CanRestore": true, "Frequency": p.freq_mhz, "HasOverrides": false,
                "Hashrate": p.ths, "IsDynamic": true, "IsTuned": false, "Profile Name": p.name,
                "Step": p.step.to_string(), "Voltage": p.voltage, "Watts": p.watts,
            })).collect::<Vec<_>>(),
        }),
        "atm" => {
            let all = profiles(core);
            let max = all.last().map(|p| p.name.clone()).unwrap_or_default();
            json!({
                "STATUS": ok(339, "ATM configuration values"),
                "ATM": [{"Enabled": core.lock().atm_enabled, "MaxProfile": max, "MinProfile": "",
                         "PostRampMinutes": 1, "StartupMinutes": 1, "TempWindow": 3.0}],
            })
        }
        "voltageget" => match board_of(&r, parameter) {
            Some(b) => json!({
                "STATUS": ok(307, "Get Voltage"),
                "VOLTAGE": [{"Board": b, "Voltage": board_voltage(core, &r)}],
            }),
            None => bad_board(core, parameter),
        },
        "healthchipget" => match board_of(&r, parameter) {
            Some(b) => health_chips(core, &r, b),
            None => bad_board(core, parameter),
        },
        // Events the firmware raised (board resets, protections); a healthy emulated miner has none.
        "events" => json!({"STATUS": ok(357, "Miner Events"), "EVENTS": []}),
        _ => return None,
    })
}

fn fan_speed(r: &Reading) -> u32 {
    (20.0 + 80.0 * r.load).round() as u32
}

fn summary(r: &Reading) -> Value {
    let ghs = round2(r.total_ghs());
    json!({
        "STATUS": ok(11, "Summary"),
        "SUMMARY": [{
            "Accepted": r.accepted, "Best Share": 32768, "Device Hardware%": 0.0,
            "Device Rejected%": 0.0, "Difficulty Accepted": r.accepted * 32768,
            "Difficulty Rejected": 0, "Difficulty Stale": 0, "Discarded": 0, "Elapsed": r.uptime_s,
            "Found Blocks": 0, "GHS 15m": ghs, "GHS 1m": ghs, "GHS 24h": ghs, "GHS 30m": ghs,
            "GHS 5m": ghs, "GHS 5s": ghs, "GHS av": ghs, "Get Failures": 0,
            "Getworks": r.uptime_s / 5, "Hardware Errors": 0, "Last getwork": unix_now(),
            "Local Work": 0, "Network Blocks": 0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0,
            "Rejected": 0, "Remote Failures": 0, "Stale": 0,
            "Total MH": r.total_mhs() * r.uptime_s as f64, "Utility": 0.0, "Work Utility": 0.0,
        }],
    })
}

/// `stats`: a first entry naming the build, a second with per-chain keys (1-based, a fourth
/// empty chain as on three-board models).
fn stats(core: &Core, r: &Reading) -> Value {
    let freq = active_freq_mhz(core);
    let mut s = serde_json::Map::new();
    let mut put = |k: String, v: Value| {
        s.insert(k, v);
    };
    for (k, v) in [
        ("Calls", json!(0)),
        ("Elapsed", json!(r.uptime_s)),
        ("GHS 5s", json!(round2(r.total_ghs()))),
        ("GHS av", json!(round2(r.total_ghs()))),
        ("ID", json!("BTM_SOC0")),
        ("Max", json!(0)),
        ("Min", json!(99_999_999)),
        ("Mode", json!(2)),
        ("STATS", json!(0)),
        ("Wait", json!(0)),
        ("fan_num", json!(r.fans)),
        ("frequency", json!(freq)),
        ("miner_count", json!(r.boards)),
        (
            "miner_id",
            json!(r.mac().replace(':', "").to_ascii_lowercase()),
        ),
        ("miner_version", json!(MINER)),
        ("no_matching_work", json!(0)),
        ("rate_30m", json!(round2(r.total_ghs()))),
        ("rate_unit", json!("GH")),
        ("temp_num", json!(r.boards)),
        ("total rate", json!(round2(r.board_ghs()))),
        ("total_acn", json!(r.chips_per_board as usize * r.boards)),
        ("total_freqavg", json!(f64::from(freq))),
        ("total_rateideal", json!(round2(r.ideal_ghs()))),
    ] {
        put(k.to_owned(), v);
    }
    let mut hottest: f64 = 0.0;
    for chain in 1..=r.boards + 1 {
        let real = chain <= r.boards;
        let b = chain - 1;
        let (chip, pcb) = if real {
            (r.chip_temp(b), r.board_temp(b))
        } else {
            (0.0, 0.0)
        };
        hottest = hottest.max(chip);
        let chips = if real { r.chips_per_board } else { 0 };
        let acs = if real {
            " oooo".repeat(r.chips_per_board as usize / 4)
        } else {
            String::new()
        };
        put(format!("chain_acn{chain}"), json!(chips));
        put(format!("chain_acs{chain}"), json!(acs));
        put(format!("chain_hw{chain}"), json!(0));
        put(
            format!("chain_rate{chain}"),
            json!(if real {
                format!("{:.2}", r.board_ghs())
            } else {
                "0".to_owned()
            }),
        );
        put(
            format!("freq{chain}"),
            json!(if real { f64::from(freq) } else { 0.0 }),
        );
        if real {
            put(format!("temp{chain}"), json!(chip));
            put(format!("temp2_{chain}"), json!(chip));
        }
        for key in ["temp_chip", "temp_pcb", "temp_pic"] {
            put(format!("{key}{chain}"), json!(four(chip, pcb)));
        }
    }
    for f in 1..=r.fans {
        put(format!("fan{f}"), json!(r.fan_rpm(f - 1)));
    }
    put("temp_max".to_owned(), json!(hottest));
    json!({
        "STATUS": ok(70, "LUXminer stats"),
        "STATS": [
            {"CompileTime": COMPILE_TIME, "Miner": MINER, "Type": core.spec.model.name},
            Value::Object(s),
        ],
    })
}

fn devs(core: &Core, r: &Reading) -> Value {
    let profile = core.lock().profile.clone();
    let mhs = r.board_ghs() * 1000.0;
    let nominal = r.ideal_ghs() * 1000.0 / r.boards as f64;
    json!({
        "STATUS": ok(9, &format!("{} ASC(s)", r.boards)),
        "DEVS": (0..r.boards).map(|b| json!({
            "ASC": b, "Accepted": r.accepted / r.boards as u64, "Board": "BHB56903",
            "Connector": format!("J{}", 7 + b), "ControllerIPVersionHex": "0x18351835",
            "ControllerIPVersionStr": "N/A", "Device Elapsed": r.uptime_s,
            "Device Hardware%": 0, "Device Rejected%": 0, "Diff1 Work": 0,
            "Difficulty Accepted": r.accepted / r.boards as u64 * 32768, "Difficulty Rejected": 0,
            "Enabled": "Y", "Hardware Error MHS 15m": 0, "Hardware Errors": 0, "ID": b,
            "IsRamping": matches!(r.snap.state, RunState::RampingUp | RunState::RampingDown),
            "IsUserShutdown": r.snap.sleep_requested, "Last Share Difficulty": 32768,
            "Last Share Pool": 0, "Last Share Time": unix_now(), "Last Valid Work": unix_now(),
            "MHS 15m": mhs, "MHS 1m": mhs, "MHS 30m": mhs, "MHS 5m": mhs, "MHS 5s": mhs,
            "MHS 60m": mhs, "MHS av": mhs, "Name": "", "Nominal MHS": nominal, "Profile": profile,
            "Rejected": 0, "SerialNumber": r.serial_number(&format!("JYZZYRSB{b}")),
            "Status": "Alive", "Temperature": r.board_temp(b),
            "Total MH": mhs * r.uptime_s as f64, "Utility": 0,
        })).collect::<Vec<_>>(),
    })
}

fn pool(r: &Reading) -> Value {
    json!({
        "Accepted": r.accepted, "AsicBoost": true, "Bad Work": 0, "Best Share": 32768,
        "Current Block Height": 0, "Current Block Version": 536_870_912, "Diff": "32K",
        "Diff1 Shares": r.accepted * 32768, "Difficulty Accepted": r.accepted * 32768,
        "Difficulty Rejected": 0, "Difficulty Stale": 0, "Discarded": 0, "GROUP": 0,
        "Get Failures": 0, "Getworks": r.uptime_s / 5, "Has GBT": false, "Has Stratum": true,
        "Has Vmask": true, "Last Share Difficulty": 32768, "Last Share Time": "00:00:01",
        "Long Pool": "N", "POOL": 0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Priority": 0,
        "Proxy": "", "Proxy Type": "", "Quota": 1.0, "Rejected": 0, "Remote Failures": 0,
        "Stale": 0, "Status": "Alive", "Stratum Active": true, "Stratum Difficulty": 32768,
        "Stratum URL": "stratum.pivot.invalid:3333",
        "URL": "stratum+tcp://stratum.pivot.invalid:3333",
        "User": format!("pivot.sim{}", r.serial), "Work Difficulty": 32768, "Works": 0,
    })
}

fn temps(r: &Reading) -> Value {
    let sensor = |label: &str, x: u8, y: u8| json!({"Label": label, "Position": [x, y]});
    json!({
        "STATUS": ok(201, &format!("{} Temp(s)", r.boards)),
        "METADATA": [{
            "BottomLeft": sensor("Board Exhaust (bottom)", 1, 0),
            "BottomRight": sensor("Board Intake (bottom)", 1, 1),
            "TopLeft": sensor("Board Exhaust (top)", 0, 0),
            "TopRight": sensor("Board Intake (top)", 0, 1),
        }],
        "TEMPS": (0..r.boards).map(|b| json!({
            "BottomLeft": r.chip_temp(b), "BottomRight": r.board_temp(b), "ID": b, "TEMP": b,
            "TopLeft": r.chip_temp(b), "TopRight": r.board_temp(b),
        })).collect::<Vec<_>>(),
    })
}

fn config(core: &Core, r: &Reading) -> Value {
    let (profile, atm) = {
        let inner = core.lock();
        (inner.profile.clone(), inner.atm_enabled)
    };
    let step = profile_named(core, &profile).map_or(0, |p| p.step);
    let asleep = r.snap.sleep_requested;
    let model = core.spec.model;
    json!({
        "STATUS": ok(33, "LUXminer config"),
        "CONFIG": [{
            "ASC Count": r.boards, "BcastAddr": "", "ControlBoardType": "cvitek", "Cooling": "Air",
            // "None" while hashing (the capture); a curtailed miner reports its mode.
            "CurtailMode": if asleep { "Sleep" } else { "None" },
            "DHCP": true, "DNS Servers": "", "Device Code": "", "FPGABuildIdHex": "0x18351835",
            "FPGABuildIdStr": "2018-35-18 35:00", "FeeStatus": "Ok", "Gateway": "",
            "GreenLed": "auto", "Hostname": "luxos", "Hotplug": "None", "IPAddr": "",
            "ImmersionMode": false, "IsAtmEnabled": atm, "IsPowerSupplyOn": !asleep,
            "IsSingleVoltage": true, "IsTuning": false, "Log Interval": 0, "LogFileLevel": "info",
            "MACAddr": r.mac().to_ascii_lowercase(), "Model": model.name,
            "NameplateTHS": model.nameplate_ths, "Netmask": "255.255.255.0", "OS": "LuxOS",
            "PGA Count": 0, "PSUHwVersion": "75", "PSULabel": "APW121215e", "Pool Count": 1,
            "Profile": profile, "ProfileStep": step.to_string(), "RedLed": "auto",
            "SerialNumber": r.serial_number("JYZZB0UB"), "Strategy": "Failover",
            "SystemStatus": "Normal", "UpdateOnStartup": "off", "UpdateOnTimeout": "off",
            "UpdateOnUser": "full", "UpdateSource": "", "UpdateTimeout": 60,
        }],
    })
}

/// The board a `voltageget`/`healthchipget` parameter names, if the miner has it.
fn board_of(r: &Reading, parameter: Option<&str>) -> Option<usize> {
    let b: usize = parameter?.trim().parse().ok()?;
    (b < r.boards).then_some(b)
}

/// A board the miner does not have: refused like any bad parameter (the error code real firmware
/// uses here is not in the sources seen; cgminer's "invalid" 14 is used).
fn bad_board(core: &Core, parameter: Option<&str>) -> Value {
    json!({"STATUS": status("E", 14, &format!("Invalid board {:?}", parameter.unwrap_or("")),
        &core.description())})
}

/// The hashboards' supply voltage: the active profile's, 0 with the PSU off.
fn board_voltage(core: &Core, r: &Reading) -> f64 {
    if r.snap.sleep_requested {
        return 0.0;
    }
    let name = core.lock().profile.clone();
    profile_named(core, &name).map_or(13.08, |p| p.voltage)
}

/// `healthchipget <board>`: one row per chip, in a grid of rows of 10 (the capture's layout).
fn health_chips(core: &Core, r: &Reading, board: usize) -> Value {
    let freq = active_freq_mhz(core);
    let chips = r.chips_per_board.max(1);
    let per_chip = r.board_ghs() / f64::from(chips);
    let when = u128::from(unix_now()) * 1000;
    json!({
        "STATUS": ok(314, "Health Chip Get"),
        "CHIPS": (0..chips).map(|c| json!({
            "Board": board, "Chip": c, "Column": c % 10, "Domain": c / 4, "Frequency": freq,
            "GHS 15m": round2(per_chip), "GHS 1m": round2(per_chip), "GHS 5m": round2(per_chip),
            "HashCount": 451, "HashExpected": 451, "HashMin": 91, "Healthy": "Y",
            "IsChecking": false, "Row": c / 10, "Score": 100.0, "When": when,
        })).collect::<Vec<_>>(),
    })
}
