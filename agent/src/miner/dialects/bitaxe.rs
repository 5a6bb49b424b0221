//! Bitaxe AxeOS (≥ 2.14) over its REST API, no auth: `GET /api/system/info` (`hashRate` GH/s,
//! `power` W, `temp`, `fanrpm`, `uptimeSeconds`, `miningPaused`), `POST /api/system/pause` and
//! `/resume`. No power target. Facts: PROTOCOLS.md, asic-rs bitaxe v2_14_0 backend.

use async_trait::async_trait;
use pivot_proto::model::{MinerDialect, MinerState};
use reqwest::Method;
use serde_json::Value;

use super::common::HASHING_THS;
use crate::miner::cgminer::parse::{number_at, string_at};
use crate::miner::http::HttpRequest;
use crate::miner::verify::read_back;
use crate::miner::{
    BoardReading, Capabilities, DriverContext, FanReading, Identity, MinerAddr, MinerDriver,
    MinerError, Reading,
};

const DIALECT: MinerDialect = MinerDialect::Bitaxe;

pub struct Bitaxe {
    addr: MinerAddr,
    ctx: DriverContext,
}

impl Bitaxe {
    pub fn new(addr: MinerAddr, ctx: DriverContext) -> Self {
        Self { addr, ctx }
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
        let reply = self
            .ctx
            .http
            .send_ok(
                &self.addr,
                HttpRequest::new(Method::POST, self.port(), path),
            )
            .await?;
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
        Ok(Identity {
            dialect: DIALECT,
            model: string_at(&v, &["deviceModel", "boardVersion", "ASICModel"]),
            firmware: string_at(&v, &["version", "axeOSVersion"]),
            serial: None,
            mac: string_at(&v, &["macAddr"]),
            capabilities: Capabilities {
                can_sleep: true,
                power_target: false,
                power_target_min_w: None,
                power_target_max_w: None,
            },
        })
    }

    async fn read(&self) -> Result<Reading, MinerError> {
        let v = self.info().await?;
        let mut r = Reading::empty(&self.addr, DIALECT);
        r.model = string_at(&v, &["deviceModel", "boardVersion", "ASICModel"]);
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
        let answered = self.post("/api/system/pause").await?;
        read_back(self, &self.ctx.options, "pause", &answered, |r| {
            r.state == MinerState::Sleeping
        })
        .await
    }

    async fn wake(&self) -> Result<Reading, MinerError> {
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
