//! Whatsminer API v2 on 4028: plaintext reads (`summary`, `pools`, `edevs`, `status`), encrypted
//! writes. A write takes a token from `get_token` (time, salt, newsalt), derives the key with
//! md5crypt, signs, and sends `{"enc":1,"data":base64(AES-256-ECB(json))}`; token errors 135
//! (check failed) and 136 (expired / too many) get one fresh token and a retry.
//! Sleep is `power_off` (answer first: `respbefore`), wake `power_on` — the miner keeps its power
//! mode across both. The power target is `adjust_power_limit` (the firmware restarts to apply it).
//! Facts: PROTOCOLS.md, pyasic rpc/btminer.py and backends/btminer.py.

use async_trait::async_trait;
use pivot_proto::model::{MinerDialect, MinerState};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::common::{self, HASHING_THS};
use super::wm_crypto::V2Token;
use crate::miner::cgminer::parse::{self, string_at};
use crate::miner::cgminer::typed::Multi;
use crate::miner::cgminer::{CgClient, Status, multi_request};
use crate::miner::verify::read_back;
use crate::miner::{
    Capabilities, DriverContext, Identity, MinerAddr, MinerDriver, MinerError, Reading,
};

const DIALECT: MinerDialect = MinerDialect::WhatsminerV2;

pub struct WhatsminerV2 {
    addr: MinerAddr,
    cg: CgClient,
    read_request: Box<[u8]>,
    ctx: DriverContext,
    token: Mutex<Option<Held>>,
    /// [`TOKEN_LIFE`] (shorter in tests).
    token_life: Duration,
    /// When a poll last failed to get a token: it asks again only a token's life later.
    token_failed: std::sync::Mutex<Option<Instant>>,
}

/// The token the agent writes with.
struct Held {
    token: V2Token,
    /// The `salt` it was derived with: a next token with the same salt reuses its key.
    salt: String,
    fetched: Instant,
}

/// How long the agent writes with a token: btminer forgets one 30 minutes after giving it
/// (PROTOCOLS.md; the public Python client renews at 30 minutes too). A command an hour after
/// the last one fetches a new token first instead of being refused with the old one (135).
const TOKEN_LIFE: Duration = Duration::from_secs(29 * 60);
/// A poll fetches a new token once the one held is this old (or there is none), so a write
/// always finds one that lives on: a curtail sends its command at once, without the token
/// exchange and its two md5crypt derivations (a tenth of the CPU of a curtail of 10,000 miners
/// hours after the last, agents and emulator together; docs/BENCHMARKS.md).
const TOKEN_READY: Duration = Duration::from_secs(24 * 60);

/// The poll: one connection for these.
const READ: [&str; 5] = ["summary", "pools", "edevs", "status", "devdetails"];

/// The model code btminer reports in `devdetails` (`DEVDETAILS[0].Model`, e.g. `M50S_VH50`;
/// pyasic `get_miner_model_whatsminer`, asic-rs `get_model_whatsminer_v2`). Its `summary`
/// carries no model.
fn model_of(devdetails: Option<&Value>) -> Option<String> {
    common::section(devdetails, "DEVDETAILS")
        .iter()
        .find_map(|d| string_at(d, &["Model"]))
}

impl WhatsminerV2 {
    /// A reading from the poll's replies.
    fn reading(&self, m: &Multi<'_>) -> Reading {
        let mut r = Reading::empty(&self.addr, DIALECT);
        common::apply_summary(&mut r, m.get("summary"));
        r.boards = common::boards_from_devs(m.get("edevs"));
        r.fans = common::fans_from(None, m.get("summary"));
        r.pool = common::active_pool(m.get("pools"));
        r.model = m
            .get("devdetails")
            .and_then(|d| d.devdetails.iter().find_map(|d| d.model.owned()));
        common::fill_hashrate_from_boards(&mut r);
        let off = m
            .get("status")
            .and_then(|s| s.msg.mineroff.as_str())
            .map(|s| s.eq_ignore_ascii_case("true"));
        r.state = match (off, r.hashrate_ths) {
            (Some(true), Some(h)) if h > HASHING_THS => MinerState::Ramping,
            (Some(true), _) => MinerState::Sleeping,
            (_, Some(h)) if h > HASHING_THS => MinerState::Mining,
            (Some(false), _) => MinerState::Ramping,
            (None, _) => MinerState::Unknown,
        };
        r
    }

    pub fn new(addr: MinerAddr, ctx: DriverContext) -> Self {
        let cg = CgClient::new(addr.clone(), addr.api_port(DIALECT), ctx.options.timeouts);
        Self {
            addr,
            cg,
            read_request: multi_request(&READ),
            ctx,
            token: Mutex::new(None),
            token_life: TOKEN_LIFE,
            token_failed: std::sync::Mutex::new(None),
        }
    }

    /// A new token; its key is derived again only when the salt is not the one `held` was
    /// derived with (md5crypt is a thousand MD5 rounds: half a token's cost).
    async fn fetch_token(&self, held: Option<&Held>) -> Result<Held, MinerError> {
        let v = self.cg.command("get_token", None).await?;
        let msg = v.get("Msg").cloned().unwrap_or(Value::Null);
        let field = |k: &str| string_at(&msg, &[k]);
        match (field("time"), field("salt"), field("newsalt")) {
            (Some(time), Some(salt), Some(newsalt)) => {
                let token = match held {
                    Some(h) if h.salt == salt => {
                        V2Token::with_key(h.token.key.clone(), &time, &newsalt)
                    }
                    _ => V2Token::derive(
                        self.ctx.credentials.password.expose(),
                        &time,
                        &salt,
                        &newsalt,
                    ),
                };
                Ok(Held {
                    token,
                    salt,
                    fetched: Instant::now(),
                })
            }
            _ => Err(MinerError::Malformed {
                addr: self.addr.to_string(),
                command: "get_token".into(),
                problem: "Msg lacks time, salt or newsalt".into(),
                snippet: crate::miner::error::snippet(v.to_string().as_bytes()),
            }),
        }
    }

    /// After a poll: a new token when the one held is older than [`TOKEN_READY`] or there is
    /// none. Never while a write holds the token (it fetches what it needs), never fails the
    /// poll, and after a refusal (the write API off, say) not again for a token's life.
    async fn keep_token_ready(&self) {
        let Ok(mut guard) = self.token.try_lock() else {
            return;
        };
        if guard
            .as_ref()
            .is_some_and(|h| h.fetched.elapsed() < TOKEN_READY.min(self.token_life))
        {
            return;
        }
        let failed = *self
            .token_failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed.is_some_and(|at| at.elapsed() < self.token_life) {
            return;
        }
        match self.fetch_token(guard.as_ref()).await {
            Ok(h) => *guard = Some(h),
            Err(e) => {
                tracing::debug!(miner = %self.addr, error = %e, "No write token ahead of a write; the write will ask for one");
                *self
                    .token_failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            }
        }
    }

    /// One encrypted write; returns the (decrypted) reply after judging its STATUS.
    async fn write(&self, command: &str, args: Value) -> Result<Value, MinerError> {
        let mut fresh = false;
        loop {
            let token = {
                let mut guard = self.token.lock().await;
                match &*guard {
                    Some(h) if !fresh && h.fetched.elapsed() < self.token_life => h.token.clone(),
                    held => {
                        let h = self
                            .fetch_token(held.as_ref())
                            .await
                            .map_err(MinerError::before_command)?;
                        let t = h.token.clone();
                        *guard = Some(h);
                        t
                    }
                }
            };
            let mut plain = json!({ "cmd": command });
            if let (Some(obj), Value::Object(extra)) = (plain.as_object_mut(), args.clone()) {
                obj.extend(extra);
                obj.insert("token".into(), json!(token.sign));
            }
            let payload =
                json!({ "enc": 1, "data": token.encrypt(&plain.to_string()) }).to_string();
            let raw = self.cg.raw(payload.as_bytes(), command).await?;
            let reply = match raw.get("enc").and_then(Value::as_str) {
                Some(b64) => token
                    .decrypt(b64)
                    .and_then(|bytes| parse::parse_reply(&bytes).ok())
                    .ok_or_else(|| MinerError::Malformed {
                        addr: self.addr.to_string(),
                        command: command.to_owned(),
                        problem: "encrypted reply does not decrypt with the session key".into(),
                        snippet: crate::miner::error::snippet(b64.as_bytes()),
                    })?,
                None => raw,
            };
            match Status::of(&reply) {
                Some(s) if matches!(s.code, 135 | 136) && !s.is_success() && !fresh => {
                    tracing::debug!(miner = %self.addr, code = s.code, "token refused; fetching a new one");
                    fresh = true;
                }
                Some(s) if matches!(s.code, 135 | 136) && !s.is_success() => {
                    return Err(MinerError::AuthRejected {
                        addr: self.addr.to_string(),
                        what: format!("`{command}` (encrypted write)"),
                        detail: format!(
                            "token error {} after a fresh token: {} (is the write API enabled and the password right?)",
                            s.code, s.msg
                        ),
                    });
                }
                _ => return self.cg.check(command, reply),
            }
        }
    }

    fn answered(v: &Value) -> String {
        Status::of(v).map_or_else(
            || "no STATUS".to_owned(),
            |s| format!("{} code {}: {}", s.letter, s.code, s.msg),
        )
    }
}

#[async_trait]
impl MinerDriver for WhatsminerV2 {
    fn dialect(&self) -> MinerDialect {
        DIALECT
    }

    fn addr(&self) -> &MinerAddr {
        &self.addr
    }

    async fn identify(&self) -> Result<Identity, MinerError> {
        let r = self.cg.multi(&["devdetails", "summary"]).await?;
        let info = self.cg.command("get_version", None).await.ok();
        // Older btminer builds without a model in `devdetails` name it in `get_version`'s
        // `Msg.miner_type` (pyasic `get_miner_model_whatsminer` falls back the same way).
        let model = model_of(r.get("devdetails")).or_else(|| {
            info.as_ref()
                .and_then(|v| v.get("Msg"))
                .and_then(|m| string_at(m, &["miner_type"]))
        });
        // Serial and MAC: `get_miner_info` (`Msg.minersn`, `Msg.mac`; pyasic rpc/btminer.py).
        let miner_info = self
            .cg
            .command("get_miner_info", None)
            .await
            .ok()
            .and_then(|v| v.get("Msg").cloned())
            .unwrap_or(Value::Null);
        let msg = info
            .as_ref()
            .and_then(|v| v.get("Msg"))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(Identity {
            dialect: DIALECT,
            model,
            firmware: string_at(&msg, &["fw_ver", "api_ver"]),
            serial: string_at(&miner_info, &["minersn"]),
            mac: string_at(&miner_info, &["mac"]),
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
        let reading = self
            .cg
            .read_multi(&READ, &self.read_request, |m| self.reading(m))
            .await;
        if reading.is_ok() {
            self.keep_token_ready().await;
        }
        reading
    }

    async fn sleep(&self) -> Result<Reading, MinerError> {
        let v = self
            .write("power_off", json!({ "respbefore": "true" }))
            .await?;
        read_back(
            self,
            &self.ctx.options,
            "power_off",
            &Self::answered(&v),
            |r| r.state == MinerState::Sleeping,
        )
        .await
    }

    async fn wake(&self) -> Result<Reading, MinerError> {
        let v = self.write("power_on", json!({})).await?;
        read_back(
            self,
            &self.ctx.options,
            "power_on",
            &Self::answered(&v),
            |r| matches!(r.state, MinerState::Mining | MinerState::Ramping),
        )
        .await
    }

    async fn set_power_target(&self, watts: u32) -> Result<Reading, MinerError> {
        let v = self
            .write(
                "adjust_power_limit",
                json!({ "power_limit": watts.to_string() }),
            )
            .await?;
        read_back(
            self,
            &self.ctx.options,
            &format!("adjust_power_limit {watts} W"),
            &Self::answered(&v),
            |r| r.power_target_w == Some(watts),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_wire::{only, options, recording_proxy};
    use super::*;
    use crate::miner::Credentials;
    use pivot_sim::miner::{Bind, Dialect, MinerSpec, Timing, spawn};
    use std::time::Duration;

    /// A poll keeps a token ready: the write after it sends its command at once, and polls
    /// while the token is young ask for none.
    #[tokio::test]
    async fn a_poll_keeps_a_token_ready_for_the_next_write() {
        let m = spawn(
            MinerSpec::new(Dialect::WhatsminerV2).timing(Timing::fast()),
            Bind::localhost(),
        )
        .await
        .unwrap();
        let (port, seen) = recording_proxy(m.api_addr()).await;
        let ctx = DriverContext::new(options(), Credentials::default_for(DIALECT));
        let drv = WhatsminerV2::new(MinerAddr::new("127.0.0.1").with_port(port), ctx);
        tokio::time::sleep(Duration::from_millis(400)).await;
        drv.read().await.unwrap();
        drv.read().await.unwrap();
        let slept = drv.sleep().await.unwrap();
        assert_eq!(slept.state, MinerState::Sleeping);
        assert_eq!(only(&seen, &["get_token", "enc"]), ["get_token", "enc"]);
        assert!(m.handle().snapshot().sleep_requested);
    }

    /// A write after the token's life fetches a new token first, rather than sending the old one
    /// to be refused (135) and then fetching; within its life the token is used as it is.
    #[tokio::test]
    async fn a_token_past_its_life_is_renewed_before_the_write() {
        let m = spawn(MinerSpec::new(Dialect::WhatsminerV2), Bind::localhost())
            .await
            .unwrap();
        let (port, seen) = recording_proxy(m.api_addr()).await;
        let ctx = DriverContext::new(options(), Credentials::default_for(DIALECT));
        let mut drv = WhatsminerV2::new(MinerAddr::new("127.0.0.1").with_port(port), ctx);
        drv.token_life = Duration::from_millis(300);
        drv.write("power_off", json!({"respbefore": "true"}))
            .await
            .unwrap();
        drv.write("power_on", json!({})).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        drv.write("power_off", json!({"respbefore": "true"}))
            .await
            .unwrap();
        assert_eq!(
            only(&seen, &["get_token", "enc"]),
            ["get_token", "enc", "enc", "get_token", "enc"]
        );
    }
}
