//! Bitaxe AxeOS (≥ 2.14): HTTP REST, no auth. `GET /api/system/info` (`hashRate` GH/s, `power`
//! W, `temp`, `miningPaused`, `ASICModel`), `POST /api/system/pause` and `/resume`; the web root
//! says AxeOS. A pause is lost on restart.
//!
//! Like ESP-Miner (main/http_server/http_server.c), `/api/system/info` names the chip
//! (`ASICModel`) and the PCB revision (`boardVersion`, "601" on a Gamma) but not the device;
//! the family name (`deviceModel`, "Gamma") is only in `GET /api/system/asic`.

use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Method, StatusCode};
use serde_json::json;

use super::http::{HttpRequest, HttpResponse, json as json_reply, text};
use super::readings::Reading;
use super::state::Core;

/// The family name AxeOS reports as `deviceModel` ("Gamma" for a "Bitaxe Gamma").
fn device_model(core: &Core) -> &'static str {
    let name = core.spec.model.name;
    name.strip_prefix("Bitaxe ").unwrap_or(name)
}

pub(crate) fn web(core: Arc<Core>, req: HttpRequest) -> BoxFuture<'static, HttpResponse> {
    Box::pin(async move {
        match (&req.method, req.path.as_str()) {
            (&Method::GET, "/") => {
                let mut r = text(
                    StatusCode::OK,
                    "<!doctype html><html><head><title>AxeOS</title></head><body>AxeOS</body></html>",
                );
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/html"),
                );
                r
            }
            (&Method::GET, "/api/system/info") => {
                let r = Reading::of(&core);
                let s = &r.snap;
                json_reply(
                    StatusCode::OK,
                    &json!({
                        "power": (s.power_w * 100.0).round() / 100.0, "voltage": 5100.0, "current": s.power_w / 5.1 * 1000.0,
                        "temp": r.chip_temp(0), "vrTemp": r.board_temp(0), "maxPower": 40, "nominalVoltage": 5,
                        "hashRate": (r.total_ghs() * 100.0).round() / 100.0, "expectedHashrate": r.ideal_ghs(),
                        "bestDiff": "1.2M", "bestSessionDiff": "200k", "freeHeap": 8_000_000,
                        "coreVoltage": 1150, "coreVoltageActual": 1140, "frequency": 525, "ssid": "pivot",
                        "macAddr": r.mac(), "hostname": "bitaxe", "wifiStatus": "Connected!",
                        "sharesAccepted": r.accepted, "sharesRejected": 0, "uptimeSeconds": r.uptime_s,
                        "asicCount": 1, "smallCoreCount": 2040, "ASICModel": "BM1370",
                        "stratumURL": "stratum.pivot.invalid", "stratumPort": 3333,
                        "stratumUser": format!("pivot.sim{}", r.serial), "version": "v2.14.0", "axeOSVersion": "v2.14.0",
                        "idfVersion": "v5.4", "boardVersion": "601", "runningPartition": "ota_0",
                        "fanspeed": 60, "autofanspeed": 1, "fanrpm": r.fan_rpm(0),
                        "miningPaused": s.sleep_requested,
                    }),
                )
            }
            (&Method::GET, "/api/system/asic") => json_reply(
                StatusCode::OK,
                &json!({
                    "ASICModel": "BM1370", "deviceModel": device_model(&core), "swarmColor": "purple",
                    "asicCount": 1, "defaultFrequency": 525, "frequencyOptions": [400, 490, 525, 550, 600, 625],
                    "defaultVoltage": 1150, "voltageOptions": [1000, 1060, 1100, 1150, 1200, 1250],
                }),
            ),
            (&Method::POST, "/api/system/pause") => {
                core.set_awake(false);
                text(StatusCode::OK, "")
            }
            (&Method::POST, "/api/system/resume") => {
                core.set_awake(true);
                text(StatusCode::OK, "")
            }
            (&Method::POST, "/api/system/restart") => {
                core.reboot();
                text(StatusCode::OK, "System will restart shortly.")
            }
            _ => text(StatusCode::NOT_FOUND, "Not Found"),
        }
    })
}
