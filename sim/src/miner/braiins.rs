//! Braiins OS ≥ 25.07: BOSminer's cgminer API on 4028 and the public REST API on 80.
//!
//! Facts: 4028 `version` mentions BOSminer; `devs` reports MHS per chain and `tunerstatus` the
//! approximate power (`ApproximateMinerPowerConsumption`) and `PowerLimit`; the web root says
//! "Braiins OS". REST: `POST /api/v1/auth/login {"username","password"}` returns a token sent back in
//! `Authorization`; `PUT /api/v1/actions/pause|resume`; `PUT /api/v1/performance/power-target
//! {"watt":N}` within `GET /api/v1/configuration/constraints`; reads `/miner/stats`,
//! `/miner/details`, `/performance/tuner-state`. A pause does not survive a reboot.

use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::antminer;
use super::cgminer::{Request, invalid_command, status};
use super::faults::Fault;
use super::http::{HttpRequest, HttpResponse, json as json_reply, text};
use super::readings::Reading;
use super::state::Core;

/// How long a REST token stays valid.
const TOKEN_TTL_S: u64 = 3600;

fn target_w(core: &Core) -> u32 {
    core.snapshot()
        .power_target_w
        .unwrap_or(core.spec.model.nameplate_w)
}

pub(crate) fn api(core: &Core, req: &Request) -> Value {
    let desc = core.description();
    let r = Reading::of(core);
    let mhs = |x: f64| (x * 1e6).round() / 1e6;
    match req.command.as_str() {
        "version" => json!({
            "STATUS": status("S", 22, "BOSminer versions", &desc),
            "VERSION": [{"BOSminer": "bosminer-plus-tuner 1.0.0", "API": "3.7"}],
        }),
        "summary" => json!({
            "STATUS": status("S", 11, "Summary", &desc),
            "SUMMARY": [{
                "Elapsed": r.uptime_s, "MHS av": mhs(r.total_mhs()), "MHS 5s": mhs(r.total_mhs()),
                "MHS 1m": mhs(r.total_mhs()), "MHS 5m": mhs(r.total_mhs()), "MHS 15m": mhs(r.total_mhs()),
                "Found Blocks": 0, "Getworks": r.uptime_s / 30, "Accepted": r.accepted, "Rejected": 0,
                "Hardware Errors": 0, "Utility": 0.0, "Discarded": 0, "Stale": 0, "Get Failures": 0,
                "Local Work": 0, "Remote Failures": 0, "Network Blocks": 0, "Total MH": r.total_mhs() * r.uptime_s as f64,
                "Work Utility": 0.0, "Difficulty Accepted": r.accepted as f64 * 65536.0, "Difficulty Rejected": 0.0,
                "Difficulty Stale": 0.0, "Best Share": 1_000_000, "Device Hardware%": 0.0,
                "Device Rejected%": 0.0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Last getwork": 0,
            }],
        }),
        "devs" => json!({
            "STATUS": status("S", 9, &format!("{} ASC(s)", r.boards), &desc),
            "DEVS": (0..r.boards).map(|b| {
                let m = mhs(r.board_ghs() * 1000.0);
                json!({"ASC": b, "Name": "BC5", "ID": b + 1, "Enabled": "Y", "Status": "Alive",
                       "Temperature": r.board_temp(b), "MHS av": m, "MHS 5s": m, "MHS 1m": m, "MHS 5m": m,
                       "MHS 15m": m, "Nominal MHS": r.ideal_ghs() * 1000.0 / r.boards as f64,
                       "Accepted": r.accepted / r.boards as u64, "Rejected": 0, "Hardware Errors": 0,
                       "Device Elapsed": r.uptime_s})
            }).collect::<Vec<_>>(),
        }),
        "devdetails" => json!({
            "STATUS": status("S", 69, "Device Details", &desc),
            "DEVDETAILS": (0..r.boards).map(|b| json!({"DEVDETAILS": b, "Name": "BC5", "ID": b + 1,
                "Driver": "bitmain", "Kernel": "", "Model": format!("Bitmain {}", core.spec.model.name),
                "Chips": r.chips_per_board, "Frequency": 525.0, "Voltage": 13.2})).collect::<Vec<_>>(),
        }),
        "temps" => json!({
            "STATUS": status("S", 201, &format!("{} Temp(s)", r.boards), &desc),
            "TEMPS": (0..r.boards).map(|b| json!({"TEMP": b, "ID": b + 1, "Board": r.board_temp(b),
                "Chip": r.chip_temp(b)})).collect::<Vec<_>>(),
        }),
        "fans" => json!({
            "STATUS": status("S", 202, "4 Fan(s)", &desc),
            "FANS": (0..4).map(|f| json!({"FAN": f, "ID": f, "RPM": r.fan_rpm(f), "Speed": 100}))
                .collect::<Vec<_>>(),
        }),
        "tunerstatus" => json!({
            "STATUS": status("S", 1, "Tuner Status", &desc),
            "TUNERSTATUS": [{
                "PowerLimit": target_w(core), "DynamicPowerScaling": "Disabled",
                "ApproximateChainPowerConsumption": r.watts().saturating_sub(r.watts() / 20),
                "ApproximateMinerPowerConsumption": r.watts(),
                "TunerChainStatus": (0..r.boards).map(|b| json!({"HashchainIndex": b, "Iteration": 0,
                    "LoadedProfile": true, "PowerLimit": target_w(core) / r.boards as u32,
                    "Status": "Stable"})).collect::<Vec<_>>(),
            }],
        }),
        "pools" => antminer::api(core, req),
        _ => invalid_command(core),
    }
}

pub(crate) fn web(core: Arc<Core>, req: HttpRequest) -> BoxFuture<'static, HttpResponse> {
    Box::pin(async move { route(&core, &req) })
}

fn error(status: StatusCode, msg: &str) -> HttpResponse {
    json_reply(status, &json!({"code": status.as_u16(), "message": msg}))
}

fn route(core: &Core, req: &HttpRequest) -> HttpResponse {
    let path = req.path.trim_end_matches('/');
    if path.is_empty() || path == "/index.html" {
        let mut resp = text(
            StatusCode::OK,
            "<!doctype html><html><head><title>Braiins OS</title></head><body>Braiins OS</body></html>",
        );
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html"),
        );
        return resp;
    }
    if req.method == Method::POST && path == "/api/v1/auth/login" {
        return login(core, req);
    }
    if !path.starts_with("/api/v1/") {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    if !authorized(core, req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: missing or expired token",
        );
    }
    let r = Reading::of(core);
    let model = core.spec.model;
    let (min_w, max_w) = model.power_target_range_w();
    match (&req.method, path) {
        (&Method::GET, "/api/v1/miner/details") => json_reply(
            StatusCode::OK,
            &json!({
                "uid": format!("sim{:08}", r.serial), "serial_number": r.serial_number("BOS"),
                "hostname": "braiins-os", "mac_address": r.mac(), "system_uptime_s": r.uptime_s,
                "bosminer_uptime_s": r.uptime_s, "platform": 3, "bos_mode": 2,
                "bos_version": {"current": "2025-07-01-0-a1b2c3d4-25.07-plus", "major": "25", "bos_plus": true},
                "miner_identity": {"brand": 1, "model": model.name, "name": model.name},
                "sticker_hashrate": {"gigahash_per_second": model.nameplate_ths * 1000.0},
                "status": if r.snap.sleep_requested { 3 } else { 2 },
            }),
        ),
        (&Method::GET, "/api/v1/miner/stats") => json_reply(
            StatusCode::OK,
            &json!({
                "miner_stats": {
                    "real_hashrate": {"last_5s": {"gigahash_per_second": r.total_ghs()},
                                       "last_15m": {"gigahash_per_second": r.total_ghs()}},
                    "nominal_hashrate": {"gigahash_per_second": r.ideal_ghs()},
                },
                "power_stats": {"approximated_consumption": {"watt": r.watts()},
                                "efficiency": {"joule_per_terahash": if r.snap.hashrate_ths > 0.0 { r.snap.power_w / r.snap.hashrate_ths } else { 0.0 }}},
                "pool_stats": {"accepted_shares": r.accepted, "rejected_shares": 0},
            }),
        ),
        (&Method::GET, "/api/v1/performance/tuner-state") => json_reply(
            StatusCode::OK,
            &json!({
                "overall_tuner_state": if r.snap.state == super::RunState::Mining { "Stable" } else { "Tuning" },
                "power_target_mode_state": {"current_target": {"watt": target_w(core)}},
            }),
        ),
        (&Method::GET, "/api/v1/configuration/constraints") => json_reply(
            StatusCode::OK,
            &json!({
                "tuner_constraints": {"power_target": {"min": {"watt": min_w}, "max": {"watt": max_w},
                                                        "default": {"watt": model.nameplate_w}}},
            }),
        ),
        (&Method::PUT, "/api/v1/actions/pause") => {
            core.set_awake(false);
            json_reply(StatusCode::OK, &json!({"paused": true}))
        }
        (&Method::PUT, "/api/v1/actions/resume") => {
            core.set_awake(true);
            json_reply(StatusCode::OK, &json!({"resumed": true}))
        }
        (&Method::PUT, "/api/v1/actions/reboot") | (&Method::POST, "/api/v1/actions/reboot") => {
            core.reboot();
            json_reply(StatusCode::OK, &json!({}))
        }
        (&Method::PUT, "/api/v1/performance/power-target") => {
            let watt = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v.get("watt").and_then(Value::as_u64));
            match watt.and_then(|w| u32::try_from(w).ok()) {
                Some(w) if (min_w..=max_w).contains(&w) => {
                    core.set_power_target(Some(w));
                    json_reply(StatusCode::OK, &json!({"watt": w}))
                }
                Some(w) => error(
                    StatusCode::BAD_REQUEST,
                    &format!("power target {w} W outside {min_w}..={max_w} W"),
                ),
                None => error(StatusCode::BAD_REQUEST, "expected {\"watt\": N}"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

fn login(core: &Core, req: &HttpRequest) -> HttpResponse {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let (user, pass) = core.spec.login();
    let ok = body.get("username").and_then(Value::as_str) == Some(user.as_str())
        && body.get("password").and_then(Value::as_str) == Some(pass.as_str())
        && !core.has_fault(&Fault::WrongCredentials);
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "invalid username or password");
    }
    let token = format!(
        "{:016x}",
        u64::from(core.next_counter()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    let mut inner = core.lock();
    let now = Instant::now();
    inner
        .tokens
        .retain(|(_, t)| now.saturating_duration_since(*t).as_secs() < TOKEN_TTL_S);
    if inner.tokens.len() >= 32 {
        inner.tokens.remove(0);
    }
    inner.tokens.push((token.clone(), now));
    json_reply(
        StatusCode::OK,
        &json!({"token": token, "timeout_s": TOKEN_TTL_S}),
    )
}

fn authorized(core: &Core, req: &HttpRequest) -> bool {
    if core.has_fault(&Fault::WrongCredentials) {
        return false;
    }
    let Some(token) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    let now = Instant::now();
    core.lock()
        .tokens
        .iter()
        .any(|(t, at)| t == token && now.saturating_duration_since(*at).as_secs() < TOKEN_TTL_S)
}
