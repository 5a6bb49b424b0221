//! Whatsminer API v2 (btminer) on 4028: plaintext reads, AES-encrypted token-signed writes.
//!
//! Facts: `get_token` → `Msg {time, salt, newsalt}`; key = md5crypt(password, salt) hash part;
//! sign = md5crypt(key + time, newsalt) hash part; a write is `{"enc":1,"data":base64(AES-256-ECB(
//! SHA-256(key), zero-padded JSON with "token": sign))}` and its answer `{"enc": base64(...)}`.
//! Token errors: 135 (check token err), 136 (token over max times). `devdetails` names the driver
//! `bitmicro` and the model (`M50S_VH50`); `summary` reports `Power`. `power_off` stops hashing
//! until `power_on` or a reboot; `set_power_pct` is temporary.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::auth_clock;
use super::cgminer::{Request, status, unix_now};
use super::crypto::{Aes256, md5crypt_hash};
use super::faults::Fault;
use super::readings::Reading;
use super::state::Core;

/// Tokens live 30 minutes; at most 32 at a time.
const TOKEN_TTL_S: u64 = 1800;
const MAX_TOKENS: usize = 32;
pub(crate) const FW_VERSION: &str = "20240105.22.REL";

/// The firmware build a miner reports on 4028: v3-era firmware (see `whatsminer_v3`) answers the
/// same reads with its own, later build.
fn fw_version(core: &Core) -> &'static str {
    if core.spec.dialect == super::Dialect::WhatsminerV3 {
        super::whatsminer_v3::FW_VERSION
    } else {
        FW_VERSION
    }
}

/// The model code Whatsminer firmware reports (`M50S_VH50`).
pub(crate) fn model_code(core: &Core) -> String {
    let short = core.spec.model.short_name();
    let variant = if short.starts_with("M6") {
        "VK30"
    } else {
        "VH50"
    };
    format!("{short}_{variant}")
}

/// A Whatsminer "object" reply: STATUS as a string, Msg an object or string.
fn msg(letter: &str, code: u32, msg: Value) -> Value {
    json!({"STATUS": letter, "When": unix_now(), "Code": code, "Msg": msg, "Description": ""})
}

fn salt(core: &Core) -> String {
    const CHARS: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut x = core.spec.serial.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995;
    (0..8)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            char::from(CHARS[(x >> 16) as usize % 64])
        })
        .collect()
}

fn password(core: &Core) -> String {
    let (_, p) = core.spec.login();
    // With wrong-credentials the miner holds another password than the client expects.
    if core.has_fault(&Fault::WrongCredentials) {
        format!("{p}-changed")
    } else {
        p
    }
}

/// The AES key material, md5crypt(password, salt), kept while the password is the same.
fn key(core: &Core) -> String {
    let password = password(core);
    if let Some((p, k)) = &core.lock().wm_key
        && *p == password
    {
        return k.clone();
    }
    let k = md5crypt_hash(password.as_bytes(), &salt(core));
    core.lock().wm_key = Some((password, k.clone()));
    k
}

pub(crate) fn api(core: &Core, req: &Request) -> Value {
    if req.raw.get("enc").is_some() {
        return encrypted(core, req);
    }
    let desc = core.description();
    let r = Reading::of(core);
    let s = &r.snap;
    let limit = s.power_target_w.unwrap_or(core.spec.model.nameplate_w);
    let mhs = |x: f64| (x * 100.0).round() / 100.0;
    match req.command.as_str() {
        "summary" => json!({
            "STATUS": status("S", 11, "Summary", &desc),
            "SUMMARY": [{
                "Elapsed": r.uptime_s, "MHS av": mhs(r.total_mhs()), "MHS 5s": mhs(r.total_mhs()),
                "MHS 1m": mhs(r.total_mhs()), "MHS 5m": mhs(r.total_mhs()), "MHS 15m": mhs(r.total_mhs()),
                "HS RT": mhs(r.total_mhs()), "Accepted": r.accepted, "Rejected": 0, "Total MH": r.total_mhs() * r.uptime_s as f64,
                "Temperature": r.board_temp(0), "freq_avg": 600, "Fan Speed In": r.fan_rpm(0), "Fan Speed Out": r.fan_rpm(1),
                "Voltage": 1260, "Power": r.watts(), "Power_RT": r.watts(), "Device Hardware%": 0.0,
                "Device Rejected%": 0.0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Last getwork": 0,
                "Uptime": r.uptime_s, "Security Mode": 0, "Hash Stable": true, "Hash Stable Cost Seconds": 900,
                "Hash Deviation%": 0.1, "Target Freq": 600, "Target MHS": r.ideal_ghs() * 1000.0,
                "Env Temp": 25.0, "Power Mode": "Normal", "Factory GHS": (r.ideal_ghs()).round(),
                "Power Limit": limit, "Chip Temp Min": r.chip_temp(0) - 5.0, "Chip Temp Max": r.chip_temp(0) + 5.0,
                "Chip Temp Avg": r.chip_temp(0), "Debug": "-0.0_100.0_389", "Btminer Fast Boot": "disable",
            }],
        }),
        "devs" | "edevs" => json!({
            "STATUS": status("S", 9, &format!("{} ASC(s)", r.boards), &desc),
            "DEVS": (0..r.boards).map(|b| {
                let m = mhs(r.board_ghs() * 1000.0);
                json!({"ASC": b, "Name": "SM", "ID": b, "Slot": b, "Enabled": "Y", "Status": "Alive",
                       "Temperature": r.board_temp(b), "Chip Frequency": 600, "MHS av": m, "MHS 5s": m,
                       "MHS 1m": m, "MHS 5m": m, "MHS 15m": m, "Accepted": r.accepted / r.boards as u64,
                       "Rejected": 0, "Hardware Errors": 0, "Device Elapsed": r.uptime_s,
                       "Effective Chips": r.chips_per_board, "PCB SN": r.serial_number(&format!("HEM{b}")),
                       "Chip Temp Min": r.chip_temp(b) - 5.0, "Chip Temp Max": r.chip_temp(b) + 5.0,
                       "Chip Temp Avg": r.chip_temp(b), "chip_vol_diff": 6})
            }).collect::<Vec<_>>(),
        }),
        "devdetails" => json!({
            "STATUS": status("S", 69, "Device Details", &desc),
            "DEVDETAILS": (0..r.boards).map(|b| json!({"DEVDETAILS": b, "Name": "SM", "ID": b,
                "Driver": "bitmicro", "Kernel": "", "Model": model_code(core)})).collect::<Vec<_>>(),
        }),
        "pools" => super::antminer::api(core, req),
        "get_psu" => msg(
            "S",
            131,
            json!({"name": "P221B", "hw_version": "V01.00", "sw_version": "V01.00.V01.03",
            "model": "P221B", "iin": (s.power_w / 2.3).round() / 100.0, "vin": 23000, "fan_speed": 6000,
            "serial_no": r.serial_number("PSU")}),
        ),
        "status" => msg(
            "S",
            131,
            json!({"mineroff": if s.sleep_requested { "true" } else { "false" },
            "mineroff_reason": "", "mineroff_time": "", "FirmwareVersion": format!("'{}'", fw_version(core)),
            "power_mode": "", "hash_percent": ""}),
        ),
        "get_version" => msg(
            "S",
            131,
            json!({"api_ver": "2.0.5", "fw_ver": fw_version(core),
            "platform": "H6OS", "chip": "K5"}),
        ),
        "get_miner_info" => msg(
            "S",
            131,
            json!({"ip": "", "proto": "dhcp", "netmask": "255.255.255.0",
            "dns": "", "mac": r.mac(), "ledstat": "auto", "gateway": "", "hostname": "WhatsMiner",
            "minersn": r.serial_number("HTM")}),
        ),
        "get_error_code" => msg("S", 131, json!({"error_code": []})),
        "get_token" => get_token(core),
        _ => msg("E", 14, json!("invalid cmd")),
    }
}

fn get_token(core: &Core) -> Value {
    let now = auth_clock::instant();
    let time = format!("{:04}", unix_now() % 10_000);
    let newsalt: String = {
        let n = core.next_counter();
        format!("{:08x}", n.wrapping_mul(2_246_822_519))
            .chars()
            .take(8)
            .collect()
    };
    let key = key(core);
    let sign = md5crypt_hash(format!("{key}{time}").as_bytes(), &newsalt);
    let mut inner = core.lock();
    inner
        .tokens
        .retain(|(_, t)| now.saturating_duration_since(*t).as_secs() < TOKEN_TTL_S);
    if inner.tokens.len() >= MAX_TOKENS {
        return msg("E", 136, json!("token over max times"));
    }
    inner.tokens.push((sign, now));
    msg(
        "S",
        134,
        json!({"time": time, "salt": salt(core), "newsalt": newsalt}),
    )
}

fn encrypted(core: &Core, req: &Request) -> Value {
    let key = key(core);
    let aes_key: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let aes = Aes256::new(&aes_key);
    let data = req.raw.get("data").and_then(Value::as_str).unwrap_or("");
    let plain = B64.decode(data.trim()).ok().map(|d| aes.decrypt_ecb(&d));
    let Some(cmd) = plain.and_then(|p| serde_json::from_slice::<Value>(&p).ok()) else {
        return msg("E", 135, json!("check token err"));
    };
    if let Some(code) = core.faults().iter().find_map(|f| match f {
        Fault::WhatsminerToken(c) => Some(*c),
        _ => None,
    }) {
        let text = if code == 136 {
            "token over max times"
        } else {
            "check token err"
        };
        return msg("E", code, json!(text));
    }
    let token = cmd.get("token").and_then(Value::as_str).unwrap_or("");
    let now = auth_clock::instant();
    let valid =
        core.lock().tokens.iter().any(|(t, at)| {
            t == token && now.saturating_duration_since(*at).as_secs() < TOKEN_TTL_S
        });
    if !valid {
        return msg("E", 135, json!("check token err"));
    }
    let name = cmd
        .get("cmd")
        .or_else(|| cmd.get("command"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let field = |k: &str| {
        cmd.get(k).and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_u64().map(|n| n.to_string()))
        })
    };
    let reply = match name {
        "power_off" => {
            core.set_awake(false);
            msg("S", 131, json!("ok"))
        }
        "power_on" => {
            core.set_awake(true);
            msg("S", 131, json!("ok"))
        }
        "set_power_pct" | "set_power_pct_v2" => {
            match field("percent").and_then(|p| p.parse::<u32>().ok()) {
                Some(p) if (0..=100).contains(&p) => {
                    core.set_power_target(Some(core.spec.model.nameplate_w * p / 100));
                    msg("S", 131, json!("ok"))
                }
                _ => msg("E", 14, json!("invalid percent")),
            }
        }
        "adjust_power_limit" => match field("power_limit").and_then(|p| p.parse::<u32>().ok()) {
            Some(w) if w > 0 => {
                core.set_power_target(Some(w.min(core.spec.model.nameplate_w)));
                core.reboot();
                msg("S", 131, json!("ok"))
            }
            _ => msg("E", 14, json!("invalid power_limit")),
        },
        "reboot" => {
            core.reboot();
            msg("S", 131, json!("ok"))
        }
        _ => msg("E", 14, json!("invalid cmd")),
    };
    let enc = aes.encrypt_ecb(reply.to_string().as_bytes());
    json!({"enc": B64.encode(enc)})
}
