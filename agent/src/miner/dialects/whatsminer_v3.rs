//! Whatsminer API v3 on 4433: a 4-byte little-endian length, then JSON, both ways.
//! Reads: `get.device.info` (`miner.working`, `miner.type`) and `get.miner.status` with
//! `summary` / `pools` / `edevs`, sent one after another on one connection when the miner keeps
//! it open. Writes (`set.*`) carry `ts`, `account` and `token` = first 8 characters of
//! base64(SHA-256(cmd + password + salt + ts)), the salt coming from `get.device.info salt`.
//! Sleep and wake are `set.miner.service stop|start` (the power limit is kept), the power target
//! `set.miner.power_limit`. Facts: PROTOCOLS.md, pyasic rpc/btminer.py (BTMinerV3RPCAPI), the
//! Whatsminer v3 API documentation as quoted in the matroskin crate.

use async_trait::async_trait;
use pivot_proto::model::{MinerDialect, MinerState};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::common::HASHING_THS;
use super::wm_crypto::v3_token;
use crate::miner::cgminer::parse::{self, number_at, string_at};
use crate::miner::error::snippet;
use crate::miner::transport::{Framing, MAX_REPLY, exchange};
use crate::miner::verify::read_back;
use crate::miner::{
    BoardReading, Capabilities, DriverContext, FanReading, Identity, MinerAddr, MinerDriver,
    MinerError, Reading,
};

const DIALECT: MinerDialect = MinerDialect::WhatsminerV3;

pub struct WhatsminerV3 {
    addr: MinerAddr,
    ctx: DriverContext,
    salt: Mutex<Option<String>>,
}

fn frame(v: &Value) -> Vec<u8> {
    let body = v.to_string().into_bytes();
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend(body);
    out
}

impl WhatsminerV3 {
    pub fn new(addr: MinerAddr, ctx: DriverContext) -> Self {
        Self {
            addr,
            ctx,
            salt: Mutex::new(None),
        }
    }

    fn port(&self) -> u16 {
        self.addr.api_port(DIALECT)
    }

    fn decode(&self, cmd: &str, bytes: &[u8]) -> Result<Value, MinerError> {
        parse::parse_reply(bytes).map_err(|e| MinerError::Malformed {
            addr: self.addr.to_string(),
            command: cmd.to_owned(),
            problem: e.to_string(),
            snippet: snippet(bytes),
        })
    }

    /// Judges `code` (0 is success).
    fn check(&self, cmd: &str, v: Value) -> Result<Value, MinerError> {
        let code = v.get("code").and_then(parse::number).map(|c| c as i64);
        match code {
            Some(0) => Ok(v),
            Some(c) => {
                let message = string_at(&v, &["msg", "desc"]).unwrap_or_default();
                if matches!(c, -4 | 135 | 136)
                    || message.to_ascii_lowercase().contains("token")
                    || message.to_ascii_lowercase().contains("permission")
                {
                    Err(MinerError::AuthRejected {
                        addr: self.addr.to_string(),
                        what: format!("`{cmd}`"),
                        detail: format!("code {c}: {message}"),
                    })
                } else {
                    Err(MinerError::Status {
                        addr: self.addr.to_string(),
                        command: cmd.to_owned(),
                        letter: "E".into(),
                        code: c,
                        message,
                    })
                }
            }
            None => Err(MinerError::Malformed {
                addr: self.addr.to_string(),
                command: cmd.to_owned(),
                problem: "no `code` in the reply".into(),
                snippet: snippet(v.to_string().as_bytes()),
            }),
        }
    }

    /// One request on its own connection.
    async fn one(&self, req: &Value) -> Result<Value, MinerError> {
        let cmd = req
            .get("cmd")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let bytes = exchange(
            &self.addr,
            self.port(),
            &frame(req),
            Framing::LengthPrefixed,
            self.ctx.options.timeouts,
            &cmd,
        )
        .await?;
        let v = self.decode(&cmd, &bytes)?;
        self.check(&cmd, v)
    }

    /// Several reads on one connection; when the miner closes after a reply, the rest go on
    /// connections of their own. Each entry is that request's result.
    async fn many(&self, reqs: &[Value]) -> Result<Vec<Result<Value, MinerError>>, MinerError> {
        let t = self.ctx.options.timeouts;
        let socket = self.addr.socket(self.port());
        let mut stream = match tokio::time::timeout(t.connect, TcpStream::connect(&socket)).await {
            Ok(Ok(s)) => Some(s),
            // Let `one` produce the typed error for the first request.
            _ => None,
        };
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            let cmd = req
                .get("cmd")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let mut got = None;
            if let Some(s) = stream.as_mut() {
                match tokio::time::timeout(t.request, round_trip(s, &frame(req))).await {
                    Ok(Ok(bytes)) if !bytes.is_empty() => {
                        got = Some(self.decode(&cmd, &bytes).and_then(|v| self.check(&cmd, v)))
                    }
                    Ok(_) => stream = None, // closed or reset: fall back to fresh connections
                    Err(_) => {
                        return Err(MinerError::Timeout {
                            addr: self.addr.to_string(),
                            during: format!("waiting for the reply to `{cmd}`"),
                            after: t.request,
                        });
                    }
                }
            }
            let result = match got {
                Some(r) => r,
                None => {
                    let r = self.one(req).await;
                    if let Err(e) = &r
                        && e.is_unreachable()
                    {
                        return Err(r.err().unwrap_or(MinerError::Other {
                            addr: self.addr.to_string(),
                            message: "unreachable".into(),
                        }));
                    }
                    r
                }
            };
            out.push(result);
        }
        Ok(out)
    }

    async fn salt(&self) -> Result<String, MinerError> {
        if let Some(s) = self.salt.lock().await.clone() {
            return Ok(s);
        }
        let v = self
            .one(&json!({ "cmd": "get.device.info", "param": "salt" }))
            .await?;
        let s = v
            .pointer("/msg/salt")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| MinerError::Malformed {
                addr: self.addr.to_string(),
                command: "get.device.info salt".into(),
                problem: "no msg.salt".into(),
                snippet: snippet(v.to_string().as_bytes()),
            })?;
        *self.salt.lock().await = Some(s.clone());
        Ok(s)
    }

    /// A `set.*` command with a token; one retry with a fresh salt when the token is refused.
    async fn write(&self, cmd: &str, param: Value) -> Result<Value, MinerError> {
        let mut fresh = false;
        loop {
            if fresh {
                *self.salt.lock().await = None;
            }
            let salt = self.salt().await.map_err(MinerError::before_command)?;
            let ts = chrono::Utc::now().timestamp();
            let c = &self.ctx.credentials;
            let token = v3_token(cmd, c.password.expose(), &salt, ts);
            let req = json!({ "cmd": cmd, "param": param, "ts": ts, "account": c.username, "token": token });
            match self.one(&req).await {
                Err(MinerError::AuthRejected { .. }) if !fresh => fresh = true,
                other => return other,
            }
        }
    }

    fn answered(v: &Value) -> String {
        format!(
            "code {}: {}",
            v.get("code").map(Value::to_string).unwrap_or_default(),
            string_at(v, &["msg"])
                .unwrap_or_else(|| v.get("msg").map(Value::to_string).unwrap_or_default())
        )
    }
}

async fn round_trip(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(payload).await?;
    let mut header = [0u8; 4];
    if s.read_exact(&mut header).await.is_err() {
        return Ok(Vec::new());
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_REPLY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "length prefix too large",
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

#[async_trait]
impl MinerDriver for WhatsminerV3 {
    fn dialect(&self) -> MinerDialect {
        DIALECT
    }

    fn addr(&self) -> &MinerAddr {
        &self.addr
    }

    async fn identify(&self) -> Result<Identity, MinerError> {
        let v = self.one(&json!({ "cmd": "get.device.info" })).await?;
        let msg = v.get("msg").cloned().unwrap_or(Value::Null);
        Ok(Identity {
            dialect: DIALECT,
            model: msg
                .pointer("/miner/type")
                .and_then(Value::as_str)
                .map(str::to_owned),
            firmware: msg
                .pointer("/system/fwversion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            serial: msg
                .pointer("/miner/miner-sn")
                .and_then(Value::as_str)
                .map(str::to_owned),
            mac: msg
                .pointer("/network/mac")
                .and_then(Value::as_str)
                .map(str::to_owned),
            capabilities: Capabilities {
                can_sleep: true,
                power_target: true,
                power_target_min_w: None,
                power_target_max_w: None,
                power_target_steps_w: Vec::new(),
            },
        })
    }

    async fn read(&self) -> Result<Reading, MinerError> {
        let results = self
            .many(&[
                json!({ "cmd": "get.device.info", "param": "miner" }),
                json!({ "cmd": "get.miner.status", "param": "summary" }),
                json!({ "cmd": "get.miner.status", "param": "pools" }),
                json!({ "cmd": "get.miner.status", "param": "edevs" }),
            ])
            .await?;
        let mut it = results.into_iter();
        let (info, summary, pools, edevs) = (it.next(), it.next(), it.next(), it.next());
        let mut r = Reading::empty(&self.addr, DIALECT);
        let info = match info {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(e),
            None => Value::Null,
        };
        let summary = match summary {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(e),
            None => Value::Null,
        };
        let miner = info.pointer("/msg/miner").cloned().unwrap_or(Value::Null);
        r.model = string_at(&miner, &["type"]);
        let s = summary
            .pointer("/msg/summary")
            .cloned()
            .unwrap_or(Value::Null);
        r.hashrate_ths = number_at(&s, &["hash-realtime", "hash-1min", "hash-average"]);
        r.power_w = number_at(&s, &["power-realtime"]);
        r.power_target_w = number_at(&s, &["power-limit"]).map(|w| w.max(0.0) as u32);
        r.uptime_s = number_at(&s, &["elapsed", "bootup-time"]).map(|u| u.max(0.0) as u64);
        for (i, k) in ["fan-speed-in", "fan-speed-out"].iter().enumerate() {
            if let Some(rpm) = number_at(&s, &[k]) {
                r.fans.push(FanReading {
                    index: i as u32,
                    rpm: Some(rpm),
                });
            }
        }
        if let Some(Ok(e)) = &edevs
            && let Some(Value::Array(devs)) = e.pointer("/msg/edevs")
        {
            r.boards = devs
                .iter()
                .enumerate()
                .map(|(i, d)| BoardReading {
                    index: number_at(d, &["id", "slot"]).map_or(i as u32, |x| x.max(0.0) as u32),
                    hashrate_ths: number_at(d, &["hash-average", "hash-realtime"]),
                    temperature_c: number_at(
                        d,
                        &["chip-temp-max", "chip-temp-avg", "board-temperature"],
                    ),
                })
                .collect();
        } else if let Some(Value::Array(temps)) = s.get("board-temperature") {
            r.boards = temps
                .iter()
                .enumerate()
                .map(|(i, t)| BoardReading {
                    index: i as u32,
                    hashrate_ths: None,
                    temperature_c: parse::number(t),
                })
                .collect();
        }
        if let Some(Ok(p)) = &pools
            && let Some(Value::Array(list)) = p.pointer("/msg/pools")
        {
            r.pool = list
                .iter()
                .find(|x| x.get("stratum-active").and_then(Value::as_bool) == Some(true))
                .or_else(|| list.first())
                .and_then(|x| string_at(x, &["url"]));
        }
        let working = string_at(&miner, &["working"]).map(|w| w.eq_ignore_ascii_case("true"));
        r.state = match (working, r.hashrate_ths) {
            (Some(false), Some(h)) if h > HASHING_THS => MinerState::Ramping,
            (Some(false), _) => MinerState::Sleeping,
            (_, Some(h)) if h > HASHING_THS => MinerState::Mining,
            (Some(true), _) => MinerState::Ramping,
            (None, _) => MinerState::Unknown,
        };
        Ok(r)
    }

    async fn sleep(&self) -> Result<Reading, MinerError> {
        let v = self.write("set.miner.service", json!("stop")).await?;
        read_back(
            self,
            &self.ctx.options,
            "set.miner.service stop",
            &Self::answered(&v),
            |r| r.state == MinerState::Sleeping,
        )
        .await
    }

    async fn wake(&self) -> Result<Reading, MinerError> {
        let v = self.write("set.miner.service", json!("start")).await?;
        read_back(
            self,
            &self.ctx.options,
            "set.miner.service start",
            &Self::answered(&v),
            |r| matches!(r.state, MinerState::Mining | MinerState::Ramping),
        )
        .await
    }

    /// `set.miner.power_limit` is a setting of the miner, not of the stopped service.
    fn target_while_asleep(&self) -> bool {
        true
    }

    async fn set_power_target(&self, watts: u32) -> Result<Reading, MinerError> {
        let v = self.write("set.miner.power_limit", json!(watts)).await?;
        read_back(
            self,
            &self.ctx.options,
            &format!("set.miner.power_limit {watts} W"),
            &Self::answered(&v),
            |r| r.power_target_w == Some(watts),
        )
        .await
    }
}
