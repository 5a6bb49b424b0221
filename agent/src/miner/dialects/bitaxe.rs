//! Bitaxe AxeOS (≥ 2.14) over its REST API, no auth: `GET /api/system/info` (`hashRate` GH/s,
//! `power` W, `temp`, `fanrpm`, `uptimeSeconds`, `miningPaused`), `POST /api/system/pause` and
//! `/resume`. No power target. Facts: PROTOCOLS.md, asic-rs bitaxe v2_14_0 backend.

use async_trait::async_trait;
use pivot_proto::model::{MinerDialect, MinerState};
use reqwest::Method;
use serde_json::Value;

use super::common::HASHING_THS;
use crate::miner::cgminer::parse::{number_at, string_at};
use crate::miner::http::{Held, HttpRequest, check_status};
use crate::miner::verify::read_back;
use crate::miner::{
    BoardReading, Capabilities, DriverContext, FanReading, Identity, MinerAddr, MinerDriver,
    MinerError, Reading,
};

const DIALECT: MinerDialect = MinerDialect::Bitaxe;

/// The model from `/api/system/info` (or `/api/system/asic`). AxeOS's info carries `ASICModel`
/// (`BM1370`) and `boardVersion` (`601`, a PCB revision, not a model); only some builds and
/// forks add `deviceModel` (ESP-Miner's `/api/system/asic` has it: `Gamma`). The family
/// follows from the chip as pyasic's and asic-rs's Bitaxe models map it: BM1397 Max,
/// BM1366 Ultra, BM1368 Supra, BM1370 Gamma. Sources: bitaxeorg/ESP-Miner
/// main/http_server/http_server.c `GET_system_info`, pyasic `get_miner_model_bitaxe`.
fn model_of(v: &Value) -> Option<String> {
    if let Some(device) = string_at(v, &["deviceModel", "DeviceModel"]) {
        return Some(if device.to_ascii_lowercase().starts_with("bitaxe") {
            device
        } else {
            format!("Bitaxe {device}")
        });
    }
    let asic = string_at(v, &["ASICModel", "asicModel"])?;
    let family = match asic.to_ascii_uppercase().as_str() {
        "BM1397" => "Max",
        "BM1366" => "Ultra",
        "BM1368" => "Supra",
        "BM1370" => "Gamma",
        _ => return Some(format!("Bitaxe ({asic})")),
    };
    Some(format!("Bitaxe {family}"))
}

pub struct Bitaxe {
    addr: MinerAddr,
    ctx: DriverContext,
    /// The connection a control call keeps for its command and the read that proves it.
    web: Held,
}

impl Bitaxe {
    pub fn new(addr: MinerAddr, ctx: DriverContext) -> Self {
        Self {
            addr,
            ctx,
            web: Held::default(),
        }
    }

    fn port(&self) -> u16 {
        self.addr.api_port(DIALECT)
    }

    async fn info(&self) -> Result<Value, MinerError> {
        let path = "/api/system/info";
        let reply = self
            .ctx
            .http
            .send_ok(&self.addr, HttpRequest::new(Method::GET, self.port(), path))
            .await?;
        reply.json(&self.addr, path)
    }

    async fn post(&self, path: &str) -> Result<String, MinerError> {
        let request = HttpRequest::new(Method::POST, self.port(), path);
        let what = format!("POST {path}");
        let reply = self.web.send(&self.ctx.http, &self.addr, request).await?;
        let reply = check_status(&self.addr, &what, reply)?;
        Ok(format!(
            "HTTP {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        ))
    }
}

#[async_trait]
impl MinerDriver for Bitaxe {
    fn dialect(&self) -> MinerDialect {
        DIALECT
    }

    fn addr(&self) -> &MinerAddr {
        &self.addr
    }

    async fn identify(&self) -> Result<Identity, MinerError> {
        let v = self.info().await?;
        // `/api/system/asic` names the device family on current AxeOS; older builds lack it.
        let asic = self
            .ctx
            .http
            .send_ok(
                &self.addr,
                HttpRequest::new(Method::GET, self.port(), "/api/system/asic"),
            )
            .await
            .ok()
            .and_then(|reply| reply.json(&self.addr, "/api/system/asic").ok())
            .unwrap_or(Value::Null);
        Ok(Identity {
            dialect: DIALECT,
            model: string_at(&asic, &["deviceModel"])
                .and_then(|_| model_of(&asic))
                .or_else(|| model_of(&v)),
            firmware: string_at(&v, &["version", "axeOSVersion"]),
            serial: None,
            mac: string_at(&v, &["macAddr"]),
            capabilities: Capabilities {
                can_sleep: true,
                power_target: false,
                power_target_min_w: None,
                power_target_max_w: None,
                power_target_steps_w: Vec::new(),
            },
        })
    }

    async fn read(&self) -> Result<Reading, MinerError> {
        // A connection of its own, closed after the read (see `http::Session`), or the one a
        // control call holds: this read is then its read-back.
        let path = "/api/system/info";
        let mut session = self
            .web
            .session(&self.ctx.http, &self.addr, self.port())
            .await?;
        let reply = session.get(path, &[]).await?;
        self.web.put_back(session);
        let v = check_status(&self.addr, &format!("GET {path}"), reply)?.json(&self.addr, path)?;
        let mut r = Reading::empty(&self.addr, DIALECT);
        r.model = model_of(&v);
        r.hashrate_ths = number_at(&v, &["hashRate"]).map(|g| g / 1000.0);
        r.power_w = number_at(&v, &["power"]);
        r.uptime_s = number_at(&v, &["uptimeSeconds"]).map(|u| u.max(0.0) as u64);
        r.pool = string_at(&v, &["stratumURL"]);
        r.boards = vec![BoardReading {
            index: 0,
            hashrate_ths: r.hashrate_ths,
            temperature_c: number_at(&v, &["temp"]),
        }];
        if let Some(rpm) = number_at(&v, &["fanrpm"]) {
            r.fans = vec![FanReading {
                index: 0,
                rpm: Some(rpm),
            }];
        }
        let paused = match v.get("miningPaused") {
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => crate::miner::cgminer::parse::number(other).map(|n| n != 0.0),
            None => None,
        };
        r.state = match (paused, r.hashrate_ths) {
            (Some(true), Some(h)) if h > HASHING_THS => MinerState::Ramping,
            (Some(true), _) => MinerState::Sleeping,
            (_, Some(h)) if h > HASHING_THS => MinerState::Mining,
            (Some(false), _) => MinerState::Ramping,
            (None, _) => MinerState::Unknown,
        };
        Ok(r)
    }

    async fn sleep(&self) -> Result<Reading, MinerError> {
        let _held = self.web.hold();
        let answered = self.post("/api/system/pause").await?;
        read_back(self, &self.ctx.options, "pause", &answered, |r| {
            r.state == MinerState::Sleeping
        })
        .await
    }

    async fn wake(&self) -> Result<Reading, MinerError> {
        let _held = self.web.hold();
        let answered = self.post("/api/system/resume").await?;
        read_back(self, &self.ctx.options, "resume", &answered, |r| {
            matches!(r.state, MinerState::Mining | MinerState::Ramping)
        })
        .await
    }

    async fn set_power_target(&self, _watts: u32) -> Result<Reading, MinerError> {
        Err(MinerError::Unsupported {
            addr: self.addr.to_string(),
            dialect: DIALECT,
            what: "a power target".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn model_comes_from_the_device_or_the_chip_never_the_board_revision() {
        // AxeOS 2.x `/api/system/info`: chip and PCB revision only.
        let info = json!({"ASICModel": "BM1370", "boardVersion": "601"});
        assert_eq!(model_of(&info).as_deref(), Some("Bitaxe Gamma"));
        assert_eq!(
            model_of(&json!({"ASICModel": "BM1366", "boardVersion": "204"})).as_deref(),
            Some("Bitaxe Ultra")
        );
        assert_eq!(
            model_of(&json!({"ASICModel": "BM1999"})).as_deref(),
            Some("Bitaxe (BM1999)")
        );
        // `/api/system/asic` (and forks' info) name the device.
        assert_eq!(
            model_of(&json!({"deviceModel": "Supra", "ASICModel": "BM1368"})).as_deref(),
            Some("Bitaxe Supra")
        );
        assert_eq!(model_of(&json!({"boardVersion": "601"})), None);
    }
}
