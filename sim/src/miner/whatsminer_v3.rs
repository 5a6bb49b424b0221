//! Whatsminer API v3 on 4433: a 4-byte little-endian length, then JSON, both ways.
//!
//! Facts: `{"cmd":"get.device.info"}` answers `{"code":0,"when":..,"msg":{..., "salt":..},"desc":..}`
//! with `msg.miner.type` (`M60S_VK30`); writes carry `ts`, `account` and `token` = the first 8
//! characters of base64(SHA-256(cmd + password + salt + ts)); default account super/super.
//! `set.miner.service` stop/start, `set.miner.power_limit` watts, `get.miner.status` summary /
//! pools / edevs. The connection stays open for several requests.
//!
//! Port 4028 on v3 firmware. Reports differ: MicroBT's API 3.0.0 demo and a hass-miner report
//! (Schnitzel/hass-miner#405, firmware 20241011) say the API moved from 4028 to 4433; pyasic's
//! maintainer (UpstreamData/pyasic#363, firmware 20250422) says firmware after 2024.11 "broke"
//! the v2 API he used for control; pyasic reports on firmware 20250120 and 20250321
//! (pyasic#314, #396) show `fw_ver` read from 4028's `get_version`; and asic-rs 0.8.6, whose v3
//! capture is firmware 20251209, identifies a Whatsminer by 4028 `devdetails` and chooses API v3
//! when 4028 `get_version` reports a build from 2024-11-01 on. So v3 firmware keeps answering
//! the old plaintext reads on 4028, and writes go to 4433: [`legacy_api`] serves those reads
//! (the v2 emulator's, reporting this firmware's build) and refuses the v2 token writes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::cgminer::{Request, hang, unix_now};
use super::faults::Fault;
use super::readings::Reading;
use super::state::Core;

const MAX_FRAME: u32 = 64 * 1024;
const IDLE: Duration = Duration::from_secs(30);
pub(crate) const FW_VERSION: &str = "20250214.16.1.Rel";

pub(crate) fn serve(listener: TcpListener, core: Arc<Core>) {
    tokio::spawn(async move {
        let mut stop = core.shutdown_signal();
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                changed = stop.changed() => if changed.is_err() { break },
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => { tokio::spawn(connection(stream, Arc::clone(&core))); }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
            }
        }
    });
}

async fn connection(mut stream: TcpStream, core: Arc<Core>) {
    loop {
        if core.is_rebooting() || core.has_fault(&Fault::CloseWithoutReply) || core.is_shut_down() {
            return;
        }
        let mut len = [0u8; 4];
        match tokio::time::timeout(IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = u32::from_le_bytes(len);
        if n == 0 || n > MAX_FRAME {
            return;
        }
        let mut buf = vec![0u8; n as usize];
        match tokio::time::timeout(IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        if core.has_fault(&Fault::Hang) {
            hang(&core).await;
            return;
        }
        let reply = match serde_json::from_slice::<Value>(&buf) {
            Ok(req) => answer(&core, &req),
            Err(_) => json!({"code": -1, "when": unix_now(), "msg": "invalid json", "desc": ""}),
        };
        let body = reply.to_string().into_bytes();
        let mut out = u32::try_from(body.len())
            .unwrap_or(0)
            .to_le_bytes()
            .to_vec();
        out.extend_from_slice(&body);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The plaintext cgminer-style API v3 firmware still answers on 4028: reads only.
pub(crate) fn legacy_api(core: &Core, req: &Request) -> Value {
    if req.raw.get("enc").is_some() || req.command == "get_token" {
        // The v2 write path (token, AES) is gone; answered as an unknown command.
        return json!({"STATUS": "E", "When": unix_now(), "Code": 14, "Msg": "invalid cmd",
                      "Description": ""});
    }
    super::whatsminer_v2::api(core, req)
}

fn salt(core: &Core) -> String {
    format!("{:08x}", core.spec.serial.wrapping_mul(0x9e37_79b9))
}

fn reply(cmd: &str, code: i64, msg: Value) -> Value {
    json!({"code": code, "when": unix_now(), "msg": msg, "desc": cmd})
}

fn token_for(cmd: &str, password: &str, salt: &str, ts: &str) -> String {
    let digest = Sha256::digest(format!("{cmd}{password}{salt}{ts}").as_bytes());
    B64.encode(digest).chars().take(8).collect()
}

fn answer(core: &Core, req: &Value) -> Value {
    let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
    let param = req.get("param").cloned().unwrap_or(Value::Null);
    let r = Reading::of(core);
    let s = &r.snap;
    let model_code = super::whatsminer_v2::model_code(core);
    let limit = s.power_target_w.unwrap_or(core.spec.model.nameplate_w);
    match cmd {
        "get.device.info" => reply(
            cmd,
            0,
            json!({
                "network": {"ip": "", "proto": "dhcp", "netmask": "255.255.255.0", "dns": "", "mac": r.mac(),
                            "gateway": "", "hostname": "WhatsMiner"},
                "miner": {"working": if s.sleep_requested { "false" } else { "true" }, "type": model_code,
                          "hash-board": "H6", "cointype": "BTC", "miner-sn": r.serial_number("HTM"),
                          "power-limit-set": limit.to_string(), "board-num": r.boards},
                "system": {"api": "3.0.1", "platform": "H616", "fwversion": FW_VERSION,
                           "control-board-version": "H616", "ledstatus": "auto"},
                "power": {"type": "P521B", "model": "P521B", "hwversion": "V01.00", "swversion": "V01.00.V01.03",
                          "iin": (s.power_w / 2.3).round() / 100.0, "vin": 230.0, "fanspeed": 6000,
                          "sn": r.serial_number("PSU")},
                "salt": salt(core),
            }),
        ),
        "get.miner.status" => match param.as_str().unwrap_or("summary") {
            "summary" => reply(
                cmd,
                0,
                json!({"summary": {
                    "elapsed": r.uptime_s, "bootup-time": r.uptime_s, "freq-avg": 600, "target-freq": 600,
                    "factory-hash": core.spec.model.nameplate_ths, "hash-average": s.hashrate_ths,
                    "hash-realtime": s.hashrate_ths, "power-limit": limit, "power-realtime": r.watts(),
                    "power-5min": r.watts(), "environment-temperature": 25.0,
                    "chip-temp-min": r.chip_temp(0) - 5.0, "chip-temp-avg": r.chip_temp(0), "chip-temp-max": r.chip_temp(0) + 5.0,
                    "fan-speed-in": r.fan_rpm(0), "fan-speed-out": r.fan_rpm(1),
                    "board-temperature": (0..r.boards).map(|b| r.board_temp(b)).collect::<Vec<_>>(),
                }}),
            ),
            "pools" => reply(
                cmd,
                0,
                json!({"pools": [{"id": 1, "url": "stratum+tcp://stratum.pivot.invalid:3333",
                "status": "alive", "account": format!("pivot.sim{}", r.serial), "accepted": r.accepted,
                "rejected": 0, "stratum-active": true}]}),
            ),
            "edevs" => reply(
                cmd,
                0,
                json!({"edevs": (0..r.boards).map(|b| json!({"id": b, "slot": b,
                "hash-average": s.hashrate_ths / r.boards as f64, "factory-hash": core.spec.model.nameplate_ths / r.boards as f64,
                "chip-temp-min": r.chip_temp(b) - 5.0, "chip-temp-avg": r.chip_temp(b), "chip-temp-max": r.chip_temp(b) + 5.0,
                "effective-chips": r.chips_per_board, "freq": 600})).collect::<Vec<_>>()}),
            ),
            other => reply(cmd, -1, json!(format!("invalid param {other}"))),
        },
        "set.miner.service" | "set.miner.power_limit" | "set.system.reboot" => {
            write(core, cmd, req, &param)
        }
        _ => reply(cmd, -1, json!("invalid command")),
    }
}

fn write(core: &Core, cmd: &str, req: &Value, param: &Value) -> Value {
    if let Some(code) = core.faults().iter().find_map(|f| match f {
        Fault::WhatsminerToken(c) => Some(*c),
        _ => None,
    }) {
        return reply(
            cmd,
            -i64::from(code),
            json!(if code == 136 {
                "token expired"
            } else {
                "invalid token"
            }),
        );
    }
    let (user, mut pass) = core.spec.login();
    if core.has_fault(&Fault::WrongCredentials) {
        pass.push_str("-changed");
    }
    let ts = req
        .get("ts")
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .unwrap_or_default();
    let account = req.get("account").and_then(Value::as_str).unwrap_or("");
    let token = req.get("token").and_then(Value::as_str).unwrap_or("");
    if account != user || token != token_for(cmd, &pass, &salt(core), &ts) {
        return reply(cmd, -2, json!("invalid token"));
    }
    match (cmd, param) {
        ("set.miner.service", Value::String(p)) if p == "stop" => core.set_awake(false),
        ("set.miner.service", Value::String(p)) if p == "start" => core.set_awake(true),
        ("set.miner.service", Value::String(p)) if p == "restart" => core.reboot(),
        ("set.system.reboot", _) => core.reboot(),
        ("set.miner.power_limit", p) => {
            let w = p
                .as_u64()
                .or_else(|| p.as_str().and_then(|s| s.parse().ok()));
            let (min_w, max_w) = core.spec.model.power_target_range_w();
            match w.and_then(|w| u32::try_from(w).ok()) {
                Some(w) if (min_w..=max_w).contains(&w) => core.set_power_target(Some(w)),
                _ => {
                    return reply(
                        cmd,
                        -1,
                        json!(format!("power limit must be {min_w}..={max_w} W")),
                    );
                }
            }
        }
        _ => return reply(cmd, -1, json!("invalid param")),
    }
    reply(cmd, 0, json!("ok"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_is_eight_base64_chars() {
        let t = super::token_for("set.miner.service", "super", "abc", "1700000000");
        assert_eq!(t.len(), 8);
    }
}
