//! Stock Antminer firmware (bmminer/cgminer): reads on the 4028 API (one `summary+stats+pools`
//! connection, falling back to separate requests), control through the Digest-authenticated web
//! CGI (`get_miner_conf.cgi`, then `set_miner_conf.cgi` with the full config and `miner-mode` /
//! `bitmain-work-mode`: 1 sleep, 0 normal, 2 high, 3 low).
//!
//! The CGI restarts cgminer before it answers (tens of seconds) and some builds answer `M000`
//! and change nothing, so every change is confirmed by reading back, paced by the poll interval.
//! Sleep overwrites the work mode, so the mode before sleep is remembered for wake.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use pivot_proto::model::{MinerDialect, MinerState};
use reqwest::Method;
use serde_json::{Value, json};

use super::common::{self, HASHING_THS, leading_number_text};
use crate::miner::cgminer::parse::string_at;
use crate::miner::cgminer::typed::Multi;
use crate::miner::cgminer::{CgClient, multi_request};
use crate::miner::error::snippet;
use crate::miner::http::digest::{Challenge, cnonce};
use crate::miner::http::{Held, HttpReply, HttpRequest};
use crate::miner::verify::read_back;
use crate::miner::{
    Capabilities, DriverContext, Identity, MinerAddr, MinerDriver, MinerError, Reading,
};

const SLEEP_MODE: &str = "1";
/// The work modes a stock Antminer mines in (`bitmain-work-mode`): 0 normal, 2 high, 3 low.
pub const WAKE_MODES: [u8; 3] = [0, 2, 3];
/// The poll: one `summary+stats+pools` connection.
const READ: [&str; 3] = ["summary", "stats", "pools"];
const DIALECT: MinerDialect = MinerDialect::Antminer;

pub struct Antminer {
    addr: MinerAddr,
    cg: CgClient,
    read_request: Box<[u8]>,
    ctx: DriverContext,
    nc: AtomicU32,
    /// The Digest challenge the web server gave last, answered at once by the next CGI call.
    challenge: Mutex<Option<Challenge>>,
    /// The web connection a control call keeps for its config read, write and read-back.
    web: Held,
    /// An explicit work mode to wake into when none was remembered (operator's choice).
    pub wake_mode: Option<u8>,
}

impl Antminer {
    pub fn new(addr: MinerAddr, ctx: DriverContext) -> Self {
        let cg = CgClient::new(addr.clone(), addr.api_port(DIALECT), ctx.options.timeouts);
        Self {
            addr,
            cg,
            read_request: multi_request(&READ),
            ctx,
            nc: AtomicU32::new(1),
            challenge: Mutex::new(None),
            web: Held::default(),
            wake_mode: None,
        }
    }

    /// A reading from the poll's replies (state still to be settled).
    fn reading(&self, m: &Multi<'_>) -> Reading {
        let mut r = Reading::empty(&self.addr, DIALECT);
        common::apply_summary(&mut r, m.get("summary"));
        let (boards, fans) = common::boards_and_fans_from_stats(m.get("stats"));
        r.boards = boards;
        r.fans = fans;
        r.pool = common::active_pool(m.get("pools"));
        for entry in m.get("stats").map_or(&[][..], |s| &s.stats[..]) {
            if r.model.is_none() {
                r.model = entry.model.owned();
            }
            // Power appears only in newer builds' stats (`chain_power`, `Power`): never estimated.
            if r.power_w.is_none() {
                r.power_w = entry
                    .power
                    .iter()
                    .find_map(|p| p.as_str().and_then(leading_number_text));
            }
            if r.uptime_s.is_none() {
                r.uptime_s = entry.elapsed.get().map(|e| e.max(0.0) as u64);
            }
        }
        common::fill_hashrate_from_boards(&mut r);
        r
    }

    fn challenge(&self) -> std::sync::MutexGuard<'_, Option<Challenge>> {
        self.challenge
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(&self) -> String {
        format!("antminer/{}", self.addr)
    }

    /// One CGI call with Digest auth. The challenge the miner gave last is answered at once
    /// (its nonce reused with the next nonce count, as RFC 7616 allows and HTTPX's DigestAuth,
    /// which pyasic uses, does); a 401 — the first call, a nonce the server no longer takes
    /// (`stale=true`), other credentials — brings a fresh challenge, answered once. A call is
    /// one request, not two, once a challenge is known.
    async fn cgi(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        slow: bool,
    ) -> Result<HttpReply, MinerError> {
        let port = self.addr.web_port();
        let timeout = if slow {
            self.ctx.options.slow_request
        } else {
            self.ctx.options.timeouts.request
        };
        let creds = &self.ctx.credentials;
        let build = |challenge: Option<&Challenge>| {
            let mut r = HttpRequest::new(method.clone(), port, path).timeout(timeout);
            if let Some(b) = body {
                r = r.json_body(b);
            }
            if let Some(c) = challenge {
                let nc = self.nc.fetch_add(1, Ordering::Relaxed);
                r = r.header(
                    "authorization",
                    c.authorization(
                        &creds.username,
                        creds.password.expose(),
                        method.as_str(),
                        path,
                        nc,
                        &cnonce(),
                    ),
                );
            }
            r
        };
        let what = format!("{method} {path}");
        let known = self.challenge().clone();
        let first = self
            .web
            .send(&self.ctx.http, &self.addr, build(known.as_ref()))
            .await?;
        if first.status != 401 {
            return crate::miner::http::check_status(&self.addr, &what, first);
        }
        let header = first.www_authenticate.clone().unwrap_or_default();
        let challenge = Challenge::parse(&header).map_err(|e| MinerError::AuthRejected {
            addr: self.addr.to_string(),
            what: what.clone(),
            detail: format!("unusable challenge ({e}): {header:?}"),
        })?;
        *self.challenge() = Some(challenge.clone());
        let second = self
            .web
            .send(&self.ctx.http, &self.addr, build(Some(&challenge)))
            .await?;
        if second.status == 401 {
            *self.challenge() = None;
            return Err(MinerError::AuthRejected {
                addr: self.addr.to_string(),
                what,
                detail: format!("Digest login as `{}` refused (HTTP 401)", creds.username),
            });
        }
        crate::miner::http::check_status(&self.addr, &what, second)
    }

    async fn get_conf(&self) -> Result<Value, MinerError> {
        let reply = self
            .cgi(Method::GET, "/cgi-bin/get_miner_conf.cgi", None, false)
            .await?;
        let v = reply.json(&self.addr, "GET /cgi-bin/get_miner_conf.cgi")?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(MinerError::Malformed {
                addr: self.addr.to_string(),
                command: "GET /cgi-bin/get_miner_conf.cgi".into(),
                problem: "config is not a JSON object".into(),
                snippet: snippet(&reply.body),
            })
        }
    }

    /// Posts the full config with both mode keys set to `mode`; returns what the CGI answered.
    async fn set_mode(&self, mut conf: Value, mode: &str) -> Result<String, MinerError> {
        let as_number = mode.parse::<u8>().unwrap_or(0);
        if let Some(obj) = conf.as_object_mut() {
            // Keep each key's type as the firmware gave it (string on most builds).
            let work = match obj.get("bitmain-work-mode") {
                Some(Value::Number(_)) => json!(as_number),
                _ => json!(mode),
            };
            obj.insert("bitmain-work-mode".into(), work);
            obj.insert("miner-mode".into(), json!(as_number));
        }
        let reply = self
            .cgi(
                Method::POST,
                "/cgi-bin/set_miner_conf.cgi",
                Some(&conf),
                true,
            )
            .await?;
        let text = String::from_utf8_lossy(&reply.body).trim().to_owned();
        if let Ok(v) = reply.json(&self.addr, "POST /cgi-bin/set_miner_conf.cgi") {
            let stats = string_at(&v, &["stats"]).unwrap_or_default();
            if !stats.is_empty() && !stats.eq_ignore_ascii_case("success") {
                return Err(MinerError::Status {
                    addr: self.addr.to_string(),
                    command: "set_miner_conf.cgi".into(),
                    letter: stats,
                    code: -1,
                    message: text,
                });
            }
        }
        Ok(text)
    }

    fn work_mode_of(conf: &Value) -> Option<String> {
        string_at(conf, &["bitmain-work-mode", "miner-mode"])
    }
}

#[async_trait]
impl MinerDriver for Antminer {
    fn dialect(&self) -> MinerDialect {
        DIALECT
    }

    fn addr(&self) -> &MinerAddr {
        &self.addr
    }

    async fn identify(&self) -> Result<Identity, MinerError> {
        let v = self.cg.command("version", None).await?;
        let ver = common::section(Some(&v), "VERSION")
            .first()
            .cloned()
            .unwrap_or(Value::Null);
        let model = string_at(&ver, &["Type", "Model"]);
        let firmware = string_at(&ver, &["CompileTime", "BMMiner", "CGMiner", "Miner"]);
        Ok(Identity {
            dialect: DIALECT,
            model,
            firmware,
            serial: None,
            mac: None,
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
        let mut r = self
            .cg
            .read_multi(&READ, &self.read_request, |m| self.reading(m))
            .await?;
        r.state = match r.hashrate_ths {
            Some(h) if h > HASHING_THS => MinerState::Mining,
            // Not hashing: only the web config tells sleep from trouble (one extra request, for
            // idle miners only, so a healthy poll stays one connection).
            Some(_) | None => match self.get_conf().await {
                Ok(conf) if Self::work_mode_of(&conf).as_deref() == Some(SLEEP_MODE) => {
                    MinerState::Sleeping
                }
                Ok(_) if r.uptime_s.is_some_and(|u| u < 300) => MinerState::Ramping,
                Ok(_) => MinerState::Faulted,
                Err(e) => {
                    r.error = Some(e.to_string());
                    r.error_kind = Some(e.kind());
                    MinerState::Unknown
                }
            },
        };
        Ok(r)
    }

    async fn sleep(&self) -> Result<Reading, MinerError> {
        let _held = self.web.hold();
        let conf = self.get_conf().await.map_err(MinerError::before_command)?;
        if let Some(mode) = Self::work_mode_of(&conf)
            && mode != SLEEP_MODE
            && let Err(e) = self.ctx.modes.remember(&self.key(), &mode).await
        {
            // Sleeping lowers power and must not fail for a disk; the wake will need the mode
            // passed explicitly.
            tracing::warn!(miner = %self.addr, error = %e, mode, "Could not remember the work mode before sleep");
        }
        let answered = self.set_mode(conf, SLEEP_MODE).await?;
        read_back(
            self,
            &self.ctx.options,
            "sleep (set_miner_conf miner-mode=1)",
            &answered,
            |r| r.state == MinerState::Sleeping,
        )
        .await
    }

    async fn wake(&self) -> Result<Reading, MinerError> {
        let _held = self.web.hold();
        let conf = self.get_conf().await.map_err(MinerError::before_command)?;
        let current = Self::work_mode_of(&conf);
        let remembered = self
            .ctx
            .modes
            .recall(&self.key())
            .await
            .map_err(|e| e.for_miner(&self.addr.to_string()))?;
        let mode = match (remembered, self.wake_mode, current) {
            (Some(m), _, _) => m,
            (None, Some(m), _) => m.to_string(),
            // Awake already in a real mode: re-assert it rather than guess.
            (None, None, Some(m)) if m != SLEEP_MODE => m,
            _ => {
                return Err(MinerError::WakeModeUnknown {
                    addr: self.addr.to_string(),
                });
            }
        };
        let answered = self.set_mode(conf, &mode).await?;
        let r = read_back(
            self,
            &self.ctx.options,
            &format!("wake (set_miner_conf bitmain-work-mode={mode})"),
            &answered,
            |r| matches!(r.state, MinerState::Mining | MinerState::Ramping),
        )
        .await?;
        if let Err(e) = self.ctx.modes.forget(&self.key()).await {
            tracing::warn!(miner = %self.addr, error = %e, "Could not forget the work mode after wake");
        }
        Ok(r)
    }

    async fn set_power_target(&self, _watts: u32) -> Result<Reading, MinerError> {
        Err(MinerError::Unsupported {
            addr: self.addr.to_string(),
            dialect: DIALECT,
            what: "a power target in watts (stock firmware has work modes only)".into(),
        })
    }
}
