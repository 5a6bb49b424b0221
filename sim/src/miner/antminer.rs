//! Stock Antminer firmware (bmminer): cgminer API on 4028, Digest-protected CGI on 80.
//!
//! Facts: `version` carries `"Type":"Antminer <model>"` (how pyasic and asic-rs recognise it);
//! `stats` has a first object naming the miner and a second with the per-chain fields; the web UI
//! answers 401 with `Digest realm="antMiner Configuration"`; `set_miner_conf.cgi` takes the whole
//! config, restarts cgminer and answers `{"stats":"success","code":"M000","msg":"OK!"}` tens of
//! seconds later. `bitmain-work-mode` 1 is sleep. Stock firmware reports no power draw.

use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Method, StatusCode};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::cgminer::{Request, invalid_command, status, unix_now};
use super::faults::Fault;
use super::http::{HttpRequest, HttpResponse, json as json_reply, text};
use super::readings::Reading;
use super::state::Core;

const REALM: &str = "antMiner Configuration";
const COMPILE_TIME: &str = "Fri Sep 15 14:39:20 CST 2023";

pub(crate) fn api(core: &Core, req: &Request) -> Value {
    let r = Reading::of(core);
    let desc = core.description();
    let model = core.spec.model.name;
    match req.command.as_str() {
        "version" => json!({
            "STATUS": status("S", 22, "BMMiner versions", &desc),
            "VERSION": [{"BMMiner": "1.0.0", "API": "3.1", "Miner": "49.0.1.3",
                         "CompileTime": COMPILE_TIME, "Type": model}],
        }),
        "summary" => json!({
            "STATUS": status("S", 11, "Summary", &desc),
            "SUMMARY": [{
                "Elapsed": r.uptime_s, "GHS 5s": round2(r.total_ghs()), "GHS av": round2(r.total_ghs()),
                "Found Blocks": 0, "Getworks": r.uptime_s / 30, "Accepted": r.accepted, "Rejected": r.accepted / 500,
                "Hardware Errors": 0, "Utility": 0.0, "Discarded": 0, "Stale": 0, "Get Failures": 0,
                "Local Work": r.accepted * 64, "Remote Failures": 0, "Network Blocks": r.uptime_s / 600,
                "Total MH": r.total_mhs() * r.uptime_s as f64, "Work Utility": 0.0,
                "Difficulty Accepted": r.accepted as f64 * 65536.0, "Difficulty Rejected": 0.0,
                "Difficulty Stale": 0.0, "Best Share": 1_000_000, "Device Hardware%": 0.0,
                "Device Rejected%": 0.0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0,
                "Last getwork": unix_now(),
            }],
        }),
        "stats" => {
            let mut s = json!({
                "STATS": 0, "ID": "BC50", "Elapsed": r.uptime_s, "Calls": 0, "Wait": 0.0, "Max": 0.0,
                "Min": 99999999.0, "GHS 5s": round2(r.total_ghs()), "GHS av": round2(r.total_ghs()),
                "miner_count": r.boards, "frequency": "525", "fan_num": r.fans, "temp_num": r.boards,
                "total_rateideal": round2(r.ideal_ghs()), "rate_unit": "GH",
                "total_freqavg": 525.0, "total_acn": r.chips_per_board as usize * r.boards,
                "total_rate": round2(r.total_ghs()), "miner_version": "49.0.1.3",
                "miner_id": format!("{:016x}", u64::from(r.serial) * 0x9e37_79b9),
            });
            if let Value::Object(m) = &mut s {
                for f in 1..=r.fans {
                    m.insert(format!("fan{f}"), json!(r.fan_rpm(f)));
                }
                for b in 0..r.boards {
                    let i = b + 1;
                    let chip = r.chip_temp(b) as i64;
                    let pcb = r.board_temp(b) as i64;
                    m.insert(format!("chain_acn{i}"), json!(r.chips_per_board));
                    m.insert(
                        format!("chain_rate{i}"),
                        json!(format!("{:.2}", r.board_ghs())),
                    );
                    m.insert(
                        format!("chain_rateideal{i}"),
                        json!(round2(r.ideal_ghs() / r.boards as f64)),
                    );
                    m.insert(
                        format!("chain_acs{i}"),
                        json!("o".repeat(r.chips_per_board as usize)),
                    );
                    m.insert(format!("chain_hw{i}"), json!(0));
                    m.insert(format!("temp{i}"), json!(pcb));
                    m.insert(format!("temp2_{i}"), json!(chip));
                    m.insert(
                        format!("temp_pcb{i}"),
                        json!(format!("{}-{}-{}-{}", pcb - 2, pcb, pcb + 1, pcb - 1)),
                    );
                    m.insert(
                        format!("temp_chip{i}"),
                        json!(format!("{}-{}-{}-{}", chip - 2, chip, chip + 1, chip - 1)),
                    );
                    m.insert(format!("freq{i}"), json!(525));
                }
            }
            json!({
                "STATUS": status("S", 70, "BMMiner stats", &desc),
                "STATS": [
                    {"BMMiner": "1.0.0", "Miner": "49.0.1.3", "CompileTime": COMPILE_TIME, "Type": model},
                    s,
                ],
            })
        }
        "pools" => json!({
            "STATUS": status("S", 7, &format!("{} Pool(s)", 1), &desc),
            "POOLS": [pool(&r)],
        }),
        "devs" => json!({
            "STATUS": status("S", 9, &format!("{} ASC(s)", r.boards), &desc),
            "DEVS": (0..r.boards).map(|b| json!({
                "ASC": b, "Name": "BTM_SOC", "ID": b, "Enabled": "Y", "Status": "Alive",
                "Temperature": r.board_temp(b), "MHS 5s": round2(r.board_ghs() * 1000.0),
                "MHS av": round2(r.board_ghs() * 1000.0), "Accepted": r.accepted / r.boards as u64,
                "Rejected": 0, "Hardware Errors": 0, "Device Elapsed": r.uptime_s,
            })).collect::<Vec<_>>(),
        }),
        _ => invalid_command(core),
    }
}

pub(crate) fn pool(r: &Reading) -> Value {
    json!({
        "POOL": 0, "URL": "stratum+tcp://stratum.pivot.invalid:3333", "Status": "Alive", "Priority": 0,
        "Quota": 1, "Long Poll": "N", "Getworks": r.uptime_s / 30, "Accepted": r.accepted,
        "Rejected": r.accepted / 500, "Discarded": 0, "Stale": 0, "Get Failures": 0,
        "Remote Failures": 0, "User": format!("pivot.sim{}", r.serial), "Last Share Time": unix_now(),
        "Diff": "65.5K", "Diff1 Shares": 0, "Proxy Type": "", "Proxy": "",
        "Difficulty Accepted": r.accepted as f64 * 65536.0, "Difficulty Rejected": 0.0,
        "Difficulty Stale": 0.0, "Last Share Difficulty": 65536.0, "Has Stratum": true,
        "Stratum Active": true, "Stratum URL": "stratum.pivot.invalid", "Best Share": 1_000_000,
        "Pool Rejected%": 0.0, "Pool Stale%": 0.0,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn web(core: Arc<Core>, req: HttpRequest) -> BoxFuture<'static, HttpResponse> {
    Box::pin(async move {
        let (user, pass) = core.spec.login();
        if core.has_fault(&Fault::WrongCredentials) {
            return unauthorized(false);
        }
        match digest_ok(&req, &user, &pass, core.spec.timing.digest_nonce_ttl) {
            DigestCheck::Ok => {}
            DigestCheck::Stale => return unauthorized(true),
            DigestCheck::Refused => return unauthorized(false),
        }
        let r = Reading::of(&core);
        match (req.method.clone(), req.path.as_str()) {
            (_, "/") | (_, "/index.html") => {
                let mut resp = text(
                    StatusCode::OK,
                    "<html><head><title>Antminer</title></head><body>antMiner Configuration</body></html>",
                );
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/html"),
                );
                resp
            }
            (Method::GET, "/cgi-bin/get_miner_conf.cgi") => {
                json_reply(StatusCode::OK, &miner_conf(&core))
            }
            (Method::POST, "/cgi-bin/set_miner_conf.cgi") => set_conf(&core, &req).await,
            (Method::GET, "/cgi-bin/get_system_info.cgi") => json_reply(
                StatusCode::OK,
                &json!({
                    "minertype": core.spec.model.name, "nettype": "DHCP", "netdevice": "eth0",
                    "macaddr": r.mac(), "hostname": "Antminer", "ipaddress": "", "netmask": "255.255.255.0",
                    "gateway": "", "dnsservers": "", "system_mode": "GNU/Linux",
                    "system_kernel_version": "Linux 4.9.113 #1 SMP PREEMPT",
                    "system_filesystem_version": COMPILE_TIME, "firmware_type": "Release",
                    "serinum": r.serial_number("JYZZB3"),
                }),
            ),
            // Model and control-board type: asic-rs 0.8.6 (`firmwares/antminer` firmware.rs and
            // v2023_07 `get_miner_type_info`) reads `miner_type` and `subtype` here before it
            // falls back to `get_system_info.cgi`; `fw_version` as in the replies Tether's
            // MiningOS mocks. `CVCtrl` is a CVITEK control board, a name asic-rs recognises.
            (Method::GET, "/cgi-bin/miner_type.cgi") => json_reply(
                StatusCode::OK,
                &json!({"miner_type": core.spec.model.name, "subtype": "CVCtrl",
                        "fw_version": "20230915"}),
            ),
            (Method::GET, "/cgi-bin/get_blink_status.cgi") => {
                json_reply(StatusCode::OK, &json!({"blink": false}))
            }
            (Method::GET, "/cgi-bin/summary.cgi") => json_reply(
                StatusCode::OK,
                &json!({
                    "STATUS": {"STATUS": "S", "when": unix_now(), "Msg": "summary", "api_version": "1.0.0"},
                    "INFO": {"miner_version": "49.0.1.3", "CompileTime": COMPILE_TIME, "type": core.spec.model.name},
                    "SUMMARY": [{"elapsed": r.uptime_s, "rate_5s": round2(r.total_ghs()), "rate_30m": round2(r.total_ghs()),
                        "rate_avg": round2(r.total_ghs()), "rate_ideal": round2(r.ideal_ghs()), "rate_unit": "GH/s",
                        "hw_all": 0, "bestshare": 1_000_000,
                        "status": [{"type": "rate", "status": "s", "code": 0, "msg": ""},
                                   {"type": "network", "status": "s", "code": 0, "msg": ""},
                                   {"type": "fans", "status": "s", "code": 0, "msg": ""},
                                   {"type": "temp", "status": "s", "code": 0, "msg": ""}]}],
                }),
            ),
            (Method::GET, "/cgi-bin/stats.cgi") => json_reply(
                StatusCode::OK,
                &json!({
                    "STATUS": {"STATUS": "S", "when": unix_now(), "Msg": "stats", "api_version": "1.0.0"},
                    "INFO": {"miner_version": "49.0.1.3", "CompileTime": COMPILE_TIME, "type": core.spec.model.name},
                    "STATS": [{"elapsed": r.uptime_s, "rate_5s": round2(r.total_ghs()), "rate_30m": round2(r.total_ghs()),
                        "rate_avg": round2(r.total_ghs()), "rate_ideal": round2(r.ideal_ghs()), "rate_unit": "GH/s",
                        "chain_num": r.boards, "fan_num": r.fans,
                        "fan": (1..=r.fans).map(|f| r.fan_rpm(f)).collect::<Vec<_>>(), "hwp_total": 0.0,
                        "miner-mode": work_mode(&core), "freq-level": 100,
                        "chain": (0..r.boards).map(|b| json!({
                            "index": b, "freq_avg": 525, "rate_ideal": round2(r.ideal_ghs() / r.boards as f64),
                            "rate_real": round2(r.board_ghs()), "asic_num": r.chips_per_board,
                            "temp_pic": vec![r.chip_temp(b); 4], "temp_pcb": vec![r.board_temp(b); 4],
                            "temp_chip": vec![r.chip_temp(b); 4], "hw": 0, "eeprom_loaded": true,
                            "sn": r.serial_number(&format!("HB{b}")), "hwp": 0.0,
                        })).collect::<Vec<_>>()}],
                }),
            ),
            _ => text(StatusCode::NOT_FOUND, "Not Found"),
        }
    })
}

/// The `bitmain-work-mode` as the firmware stores it: 1 asleep, else the awake mode.
fn work_mode(core: &Core) -> u8 {
    let s = core.snapshot();
    if s.sleep_requested { 1 } else { s.work_mode }
}

fn miner_conf(core: &Core) -> Value {
    let mode = work_mode(core);
    json!({
        "pools": [
            {"url": "stratum+tcp://stratum.pivot.invalid:3333", "user": format!("pivot.sim{}", core.spec.serial), "pass": "x"},
            {"url": "", "user": "", "pass": ""},
            {"url": "", "user": "", "pass": ""},
        ],
        "api-listen": true, "api-network": true, "api-groups": "A:stats:pools:devs:summary:version",
        "api-allow": "A:0/0,W:*", "bitmain-fan-ctrl": false, "bitmain-fan-pwm": "100",
        "bitmain-use-vil": true, "bitmain-freq": "525", "bitmain-voltage": "1360",
        "bitmain-ccdelay": "0", "bitmain-pwth": "0", "bitmain-work-mode": mode.to_string(),
        "bitmain-freq-level": "100", "miner-mode": mode,
    })
}

/// Read `miner-mode` / `bitmain-work-mode` from a JSON or form body (string or number).
fn requested_mode(body: &[u8]) -> Option<u8> {
    let from_value = |v: &Value| match v {
        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v
            .get("bitmain-work-mode")
            .and_then(from_value)
            .or_else(|| v.get("miner-mode").and_then(from_value));
    }
    let text = String::from_utf8_lossy(body);
    let mut found = None;
    for pair in text.split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && (k == "bitmain-work-mode" || (k == "miner-mode" && found.is_none()))
        {
            found = v.trim().parse().ok();
        }
    }
    found
}

async fn set_conf(core: &Arc<Core>, req: &HttpRequest) -> HttpResponse {
    let mode = requested_mode(&req.body);
    // The CGI rewrites the config and restarts cgminer before it answers.
    tokio::time::sleep(core.spec.timing.cgi_reply).await;
    let Some(mode) = mode.filter(|m| matches!(m, 0..=3)) else {
        return json_reply(
            StatusCode::OK,
            &json!({"stats": "error", "code": "E000", "msg": "invalid config"}),
        );
    };
    if !core.has_fault(&Fault::AntminerNoop) {
        if mode == 1 {
            core.set_awake(false);
        } else {
            core.set_work_mode(mode);
            core.set_awake(true);
        }
    }
    json_reply(
        StatusCode::OK,
        &json!({"stats": "success", "code": "M000", "msg": "OK!"}),
    )
}

/// A 401 with a fresh challenge; `stale`: the request's nonce is too old, its credentials were
/// right (RFC 7616 §3.3: the client may retry with the new nonce without asking the user).
fn unauthorized(stale: bool) -> HttpResponse {
    let mut resp = text(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    let stale = if stale { ", stale=true" } else { "" };
    let header = format!(
        "Digest realm=\"{REALM}\", nonce=\"{}\", qop=\"auth\"{stale}",
        nonce_at(super::auth_clock::unix())
    );
    if let Ok(v) = http::HeaderValue::from_str(&header) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// A nonce that carries its issue time (unix seconds, the first 16 hex digits), as lighttpd's
/// do, so the server can tell its age; the rest is a hash of it.
fn nonce_at(secs: u64) -> String {
    format!(
        "{secs:016x}{:016x}",
        secs.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

/// The issue time of a nonce this server gave, if it is one.
fn nonce_issued(nonce: &str) -> Option<u64> {
    let secs = u64::from_str_radix(nonce.get(..16)?, 16).ok()?;
    (nonce_at(secs) == nonce).then_some(secs)
}

/// What a Digest `Authorization` header is worth.
enum DigestCheck {
    Ok,
    /// Right credentials on a nonce older than the server takes.
    Stale,
    Refused,
}

/// Check an `Authorization: Digest ...` header (RFC 2617, MD5, with or without qop=auth) on a
/// nonce this server issued at most `ttl` ago.
fn digest_ok(req: &HttpRequest, user: &str, pass: &str, ttl: std::time::Duration) -> DigestCheck {
    let Some(header) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return DigestCheck::Refused;
    };
    let Some(params) = header.strip_prefix("Digest ") else {
        return DigestCheck::Refused;
    };
    let field = |name: &str| -> Option<String> {
        params.split(',').find_map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
        })
    };
    let (Some(username), Some(realm), Some(nonce), Some(uri), Some(response)) = (
        field("username"),
        field("realm"),
        field("nonce"),
        field("uri"),
        field("response"),
    ) else {
        return DigestCheck::Refused;
    };
    if username != user || realm != REALM {
        return DigestCheck::Refused;
    }
    let Some(issued) = nonce_issued(&nonce) else {
        return DigestCheck::Refused;
    };
    let md5hex = |s: String| hex::encode(Md5::digest(s.as_bytes()));
    let ha1 = md5hex(format!("{user}:{REALM}:{pass}"));
    let ha2 = md5hex(format!("{}:{uri}", req.method.as_str()));
    let expected = match (field("qop"), field("nc"), field("cnonce")) {
        (Some(qop), Some(nc), Some(cnonce)) => {
            md5hex(format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))
        }
        _ => md5hex(format!("{ha1}:{nonce}:{ha2}")),
    };
    if !expected.eq_ignore_ascii_case(&response) {
        DigestCheck::Refused
    } else if super::auth_clock::unix().saturating_sub(issued) > ttl.as_secs() {
        DigestCheck::Stale
    } else {
        DigestCheck::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_mode_from_json_and_form_bodies() {
        assert_eq!(
            requested_mode(br#"{"miner-mode":1,"bitmain-work-mode":"1"}"#),
            Some(1)
        );
        assert_eq!(requested_mode(br#"{"miner-mode":"0"}"#), Some(0));
        assert_eq!(requested_mode(b"miner-mode=3&bitmain-work-mode=3"), Some(3));
        assert_eq!(requested_mode(b"garbage"), None);
    }
}
