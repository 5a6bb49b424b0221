//! Braiins OS 25.07's read-only REST replies (`GET /api/v1/…`) and the data its GraphQL
//! endpoint answers from.
//!
//! REST shapes follow the 25.07 replies asic-rs 0.8.6 ships as captures
//! (`asic-rs-firmwares-braiins` `src/test/json/v25_07/*.json`: miner/details, miner/stats,
//! miner/hw/hashboards, performance/tuner-state, configuration/miner, cooling/state, pools,
//! network, version, actions/locate, miner/errors) and the public OpenAPI document of the same
//! release (asic-rs `meta/braiins/25.07/openapi.json`). GraphQL: the fields asic-rs 0.8.6
//! queries on every Braiins OS it supports, 25.07 and 26.04 included (`bosminer.info.modelName`
//! and `bos.info.version.full` to identify, `events.appeals` for messages, `bos.timezone`),
//! whose answers are shaped as in its 24.09–25.05 GraphQL captures (`gql_*.json`).

use serde_json::{Value, json};

use super::RunState;
use super::readings::Reading;
use super::state::Core;

/// The build this emulator reports (`bos_version.current`; 25.07 as in the capture's format).
pub(crate) const BOS_VERSION: &str = "2025-08-06-0-3881c51d-25.07-plus";

/// The target the tuner works to: the set one, else nameplate.
pub(crate) fn target_w(core: &Core) -> u32 {
    core.snapshot()
        .power_target_w
        .unwrap_or(core.spec.model.nameplate_w)
}

fn ghs(x: f64) -> Value {
    json!({ "gigahash_per_second": x })
}

/// Every averaging window `real_hashrate` has, all at the current rate (the emulator does not
/// keep history).
fn windows(x: f64) -> Value {
    let mut m = serde_json::Map::new();
    for w in [
        "last_5s",
        "last_15s",
        "last_30s",
        "last_1m",
        "last_5m",
        "last_15m",
        "last_30m",
        "last_1h",
        "last_24h",
        "since_restart",
    ] {
        m.insert(w.to_owned(), ghs(x));
    }
    Value::Object(m)
}

fn stats_block(real_ghs: f64, nominal_ghs: f64) -> Value {
    json!({
        "best_share": 1_000_000, "error_hashrate": {"megahash_per_second": 0.0},
        "found_blocks": 0, "nominal_hashrate": ghs(nominal_ghs), "real_hashrate": windows(real_ghs),
    })
}

/// The reply to `GET /api/v1/<path>`, `None` when there is no such read.
pub(crate) fn get(core: &Core, path: &str) -> Option<Value> {
    let r = Reading::of(core);
    let model = core.spec.model;
    let (min_w, max_w) = model.power_target_range_w();
    let mining = r.snap.state == RunState::Mining;
    Some(match path {
        "version" => json!({"major": 1, "minor": 0, "patch": 0}),
        "network" => json!({
            "default_gateway": "", "dns_servers": [], "hostname": "braiins-os",
            "mac_address": r.mac().to_ascii_lowercase(), "name": "eth0", "networks": [],
            "protocol": 1,
        }),
        // status (from the capture and Braiins' docs): 2 mining, 3 paused.
        "miner/details" => json!({
            "bos_mode": 4,
            "bos_version": {"bos_plus": true, "current": BOS_VERSION,
                            "major": "2022-09-13-0-11012d53-22.08-plus"},
            "bosminer_uptime_s": r.uptime_s, "control_board_soc_family": 3,
            "hostname": "braiins-os", "kernel_version": "4.9.113",
            "mac_address": r.mac().to_ascii_lowercase(),
            "miner_identity": {"brand": 1, "miner_model": model.name, "model": 0, "name": model.name},
            "platform": 4,
            "psu_info": {"fw_version": null, "max_voltage": {"volt": 15.2},
                         "min_voltage": {"volt": 11.96}, "model_name": "APW171215a",
                         "serial_number": r.serial_number("PSU"), "version": 117},
            "serial_number": r.serial_number("BOS"),
            "status": if r.snap.sleep_requested { 3 } else { 2 },
            "sticker_hashrate": ghs(r.ideal_ghs()),
            "system_uptime": r.uptime_s, "system_uptime_s": r.uptime_s,
            "uid": format!("sim{:013}", r.serial),
        }),
        "miner/stats" => json!({
            "miner_stats": stats_block(r.total_ghs(), r.ideal_ghs()),
            "pool_stats": pool_stats(&r),
            "power_stats": {
                "approximated_consumption": {"watt": r.watts()},
                "efficiency": {"joule_per_terahash": if r.snap.hashrate_ths > 0.0 {
                    r.snap.power_w / r.snap.hashrate_ths } else { 0.0 }},
            },
        }),
        "miner/hw/hashboards" => json!({"hashboards": (0..r.boards).map(|b| {
            let stats = stats_block(r.board_ghs(), r.ideal_ghs() / r.boards as f64);
            json!({
                "board_name": "BHB68601", "board_temp": {"degree_c": r.board_temp(b)},
                "chip_type": "BM1368", "chips_count": r.chips_per_board,
                "current_frequency": {"hertz": 490.0e6}, "current_voltage": {"volt": 13.2},
                "enabled": true,
                "highest_chip_temp": {"id": 1, "location": 1,
                                      "temperature": {"degree_c": r.chip_temp(b)}},
                "highest_outlet_temp": {"degree_c": r.board_temp(b)},
                "id": (b + 1).to_string(), "lowest_inlet_temp": {"degree_c": 30.0},
                "model": "BHB68601", "serial_number": r.serial_number(&format!("HB{b}")),
                "stats": stats,
            })
        }).collect::<Vec<_>>()}),
        // overall_tuner_state: 2 on the capture's tuned, hashing miner; 3 while it still tunes.
        "performance/tuner-state" => json!({
            "mode_state": {"powertargetmodestate": {
                "current_target": {"watt": target_w(core)},
                "profile": {
                    "created": {"nanos": 0, "seconds": 0},
                    "estimated_power_consumption": {"watt": r.watts()},
                    "measured_hashrate": ghs(r.total_ghs()),
                    "target": {"watt": target_w(core)},
                },
            }},
            "overall_tuner_state": if mining { 2 } else { 3 },
        }),
        "configuration/miner" => json!({
            "pool_groups": [],
            "tuner": {"enabled": true, "hashrate_target": null,
                      "power_target": {"watt": target_w(core)}, "tuner_mode": 1},
        }),
        "configuration/constraints" => json!({
            "tuner_constraints": {"power_target": {"min": {"watt": min_w}, "max": {"watt": max_w},
                                                    "default": {"watt": model.nameplate_w}}},
        }),
        "cooling/state" => {
            let hottest = (0..r.boards).map(|b| r.chip_temp(b)).fold(0.0, f64::max);
            json!({
                "fans": (0..r.fans).map(|f| json!({"position": f, "rpm": r.fan_rpm(f),
                    "target_speed_ratio": (0.3 + 0.7 * r.load).min(1.0)})).collect::<Vec<_>>(),
                "highest_temperature": {"id": null, "location": 1,
                                        "temperature": {"degree_c": hottest}},
            })
        }
        "pools" => json!([{
            "name": "default",
            "pools": [{
                "active": true, "alive": true, "enabled": true, "stats": pool_stats(&r),
                "uid": format!("pool{:012}", r.serial),
                "url": "stratum+tcp://stratum.pivot.invalid:3333",
                "user": format!("pivot.sim{}", r.serial),
            }],
            "strategy": {"quota": {"value": 1}},
        }]),
        "actions/locate" => json!(false),
        "miner/errors" => json!({"errors": []}),
        _ => return None,
    })
}

fn pool_stats(r: &Reading) -> Value {
    json!({
        "accepted_shares": r.accepted, "best_share": 1_000_000,
        "generated_work": r.accepted * 65536, "last_difficulty": 65536,
        "last_share_time": {"nanos": 0, "seconds": super::cgminer::unix_now()},
        "rejected_shares": 0, "stale_shares": 0,
    })
}

/// What the GraphQL endpoint answers from: the subset of the schema clients query.
pub(crate) fn graphql_data(core: &Core) -> Value {
    json!({
        "bosminer": {"info": {"modelName": core.spec.model.name}},
        "bos": {
            "info": {"version": {"full": BOS_VERSION}},
            "hostname": "braiins-os",
            "timezone": {"id": "Etc/UTC"},
            "timezoneList": [{"id": "Etc/UTC"}, {"id": "America/Chicago"}, {"id": "Europe/Prague"}],
        },
        // Appeals are the firmware's notices (a failed pool, a hot board); none on a healthy miner.
        "events": {"appeals": []},
    })
}
