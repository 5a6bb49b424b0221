//! Braiins OS ≥ 25.07 through its public REST API (`/api/v1` on the web port): login for a token,
//! reads from `miner/details` (status 2 mining, 3 paused), `miner/stats` and
//! `performance/tuner-state`, control with `actions/pause` / `actions/resume` and
//! `performance/power-target`, limits from `configuration/constraints`. Facts checked against
//! asic-rs (braiins v25_07 backend) and Braiins' public API documentation.

use std::time::Duration;

use async_trait::async_trait;
use pivot_proto::model::{MinerDialect, MinerState};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::common::HASHING_THS;
use crate::miner::cgminer::parse::number;
use crate::miner::http::{Held, HttpReply, HttpRequest, Session};
use crate::miner::verify::read_back;
use crate::miner::{
    BoardReading, Capabilities, DriverContext, FanReading, Identity, MinerAddr, MinerDriver,
    MinerError, Reading,
};

const DIALECT: MinerDialect = MinerDialect::Braiins;

pub struct Braiins {
    addr: MinerAddr,
    ctx: DriverContext,
    token: Mutex<Option<(String, Instant)>>,
    /// The connection a control call keeps for its command and the read that proves it.
    web: Held,
}

fn at<'a>(v: &'a Value, pointers: &[&str]) -> Option<&'a Value> {
    pointers
        .iter()
        .find_map(|p| v.pointer(p).filter(|x| !x.is_null()))
}

fn num_at(v: &Value, pointers: &[&str]) -> Option<f64> {
    pointers.iter().find_map(|p| v.pointer(p).and_then(number))
}

fn str_at(v: &Value, pointers: &[&str]) -> Option<String> {
    at(v, pointers)
        .and_then(|x| x.as_str())
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

impl Braiins {
    pub fn new(addr: MinerAddr, ctx: DriverContext) -> Self {
        Self {
            addr,
            ctx,
            token: Mutex::new(None),
            web: Held::default(),
        }
    }

    async fn login(&self) -> Result<String, MinerError> {
        let c = &self.ctx.credentials;
        let body = json!({ "username": c.username, "password": c.password.expose() });
        let req = HttpRequest::new(Method::POST, self.addr.web_port(), "/api/v1/auth/login")
            .json_body(&body);
        let reply = self.web.send(&self.ctx.http, &self.addr, req).await?;
        if matches!(reply.status, 400 | 401 | 403) {
            return Err(MinerError::AuthRejected {
                addr: self.addr.to_string(),
                what: "POST /api/v1/auth/login".into(),
                detail: format!("login as `{}` refused (HTTP {})", c.username, reply.status),
            });
        }
        let reply = crate::miner::http::check_status(&self.addr, "POST /api/v1/auth/login", reply)?;
        let v = reply.json(&self.addr, "POST /api/v1/auth/login")?;
        let token = str_at(&v, &["/token"]).ok_or_else(|| MinerError::Malformed {
            addr: self.addr.to_string(),
            command: "POST /api/v1/auth/login".into(),
            problem: "no token in the reply".into(),
            snippet: crate::miner::error::snippet(&reply.body),
        })?;
        // Renew a minute early; default to 10 minutes when the firmware does not say.
        let ttl = num_at(&v, &["/timeout_s"]).unwrap_or(600.0).max(60.0) - 30.0;
        *self.token.lock().await =
            Some((token.clone(), Instant::now() + Duration::from_secs_f64(ttl)));
        Ok(token)
    }

    async fn token(&self) -> Result<String, MinerError> {
        if let Some((t, until)) = self.token.lock().await.clone()
            && Instant::now() < until
        {
            return Ok(t);
        }
        self.login().await
    }

    /// An authenticated call; a 401 triggers one fresh login and a retry.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<HttpReply, MinerError> {
        let what = format!("{method} {path}");
        let mut fresh = false;
        loop {
            // A login that fails has sent nothing the call was for.
            let token = if fresh {
                self.login().await
            } else {
                self.token().await
            }
            .map_err(MinerError::before_command)?;
            let mut req = HttpRequest::new(method.clone(), self.addr.web_port(), path)
                .header("authorization", token);
            if let Some(b) = &body {
                req = req.json_body(b);
            }
            let reply = self.web.send(&self.ctx.http, &self.addr, req).await?;
            if reply.status == 401 && !fresh {
                fresh = true;
                continue;
            }
            return crate::miner::http::check_status(&self.addr, &what, reply);
        }
    }

    async fn get(&self, path: &str) -> Result<Value, MinerError> {
        self.call(Method::GET, path, None)
            .await?
            .json(&self.addr, path)
    }

    /// A poll's GET on the poll's connection; a token the miner no longer takes gets one fresh
    /// login, and the request goes again through the client (rare: tokens live an hour).
    async fn read_get(
        &self,
        session: &mut Session,
        token: &str,
        path: &str,
    ) -> Result<Value, MinerError> {
        let reply = session.get(path, &[("authorization", token)]).await?;
        if reply.status == 401 {
            *self.token.lock().await = None;
            return self.get(path).await;
        }
        crate::miner::http::check_status(&self.addr, &format!("GET {path}"), reply)?
            .json(&self.addr, path)
    }

    async fn constraints(&self) -> Option<(u32, u32)> {
        let v = self.get("/api/v1/configuration/constraints").await.ok()?;
        let min = num_at(
            &v,
            &[
                "/tuner_constraints/power_target/min/watt",
                "/power_target/min/watt",
                "/power_target/min",
            ],
        )?;
        let max = num_at(
            &v,
            &[
                "/tuner_constraints/power_target/max/watt",
                "/power_target/max/watt",
                "/power_target/max",
            ],
        )?;
        Some((min.max(0.0) as u32, max.max(0.0) as u32))
    }
}

#[async_trait]
impl MinerDriver for Braiins {
    fn dialect(&self) -> MinerDialect {
        DIALECT
    }

    fn addr(&self) -> &MinerAddr {
        &self.addr
    }

    async fn identify(&self) -> Result<Identity, MinerError> {
        let d = self.get("/api/v1/miner/details").await?;
        let range = self.constraints().await;
        Ok(Identity {
            dialect: DIALECT,
            model: str_at(
                &d,
                &["/miner_identity/name", "/miner_identity/model", "/model"],
            ),
            firmware: str_at(&d, &["/bos_version/current", "/bos_version"]),
            serial: str_at(&d, &["/serial_number"]),
            mac: str_at(&d, &["/mac_address", "/mac"]),
            capabilities: Capabilities {
                can_sleep: true,
                power_target: true,
                power_target_min_w: range.map(|r| r.0),
                power_target_max_w: range.map(|r| r.1),
                power_target_steps_w: Vec::new(),
            },
        })
    }

    async fn read(&self) -> Result<Reading, MinerError> {
        // One connection for the poll's five reads (closed after it, see `http::Session`; kept
        // while a control call holds it: this read is then its read-back).
        let token = self.token().await?;
        let mut session = self
            .web
            .session(&self.ctx.http, &self.addr, self.addr.web_port())
            .await?;
        let details = self
            .read_get(&mut session, &token, "/api/v1/miner/details")
            .await?;
        let mut r = Reading::empty(&self.addr, DIALECT);
        r.model = str_at(
            &details,
            &["/miner_identity/name", "/miner_identity/model", "/model"],
        );
        r.uptime_s = num_at(&details, &["/system_uptime_s", "/bosminer_uptime_s"])
            .map(|u| u.max(0.0) as u64);
        let status = num_at(&details, &["/status"]).map(|s| s as i64);
        match self
            .read_get(&mut session, &token, "/api/v1/miner/stats")
            .await
        {
            Ok(stats) => {
                r.hashrate_ths = num_at(
                    &stats,
                    &["/miner_stats/real_hashrate/last_5s/gigahash_per_second"],
                )
                .map(|g| g / 1000.0);
                r.power_w = num_at(&stats, &["/power_stats/approximated_consumption/watt"]);
            }
            Err(e) => {
                r.error = Some(e.to_string());
                r.error_kind = Some(e.kind());
            }
        }
        if let Ok(t) = self
            .read_get(&mut session, &token, "/api/v1/performance/tuner-state")
            .await
        {
            r.power_target_w = num_at(
                &t,
                &[
                    "/mode_state/powertargetmodestate/current_target/watt",
                    "/power_target_mode_state/current_target/watt",
                    "/power_target/watt",
                ],
            )
            .map(|w| w.max(0.0) as u32);
        }
        if let Ok(h) = self
            .read_get(&mut session, &token, "/api/v1/miner/hw/hashboards")
            .await
            && let Some(Value::Array(boards)) = at(&h, &["/hashboards"])
        {
            r.boards = boards
                .iter()
                .enumerate()
                .map(|(i, b)| BoardReading {
                    index: num_at(b, &["/id"]).map_or(i as u32, |x| x.max(0.0) as u32),
                    hashrate_ths: num_at(b, &["/stats/real_hashrate/last_5s/gigahash_per_second"])
                        .map(|g| g / 1000.0),
                    temperature_c: num_at(
                        b,
                        &[
                            "/highest_chip_temp/temperature/degree_c",
                            "/board_temp/degree_c",
                        ],
                    ),
                })
                .collect();
        }
        if let Ok(c) = self
            .read_get(&mut session, &token, "/api/v1/cooling/state")
            .await
            && let Some(Value::Array(fans)) = at(&c, &["/fans"])
        {
            r.fans = fans
                .iter()
                .enumerate()
                .map(|(i, f)| FanReading {
                    index: num_at(f, &["/position"]).map_or(i as u32, |x| x.max(0.0) as u32),
                    rpm: num_at(f, &["/rpm"]),
                })
                .collect();
        }
        self.web.put_back(session);
        // miner/details status (bos-plus-api miner.proto): 1 not started, 2 normal, 3 paused,
        // 4 suspended. Hashrate rising or falling while "normal" is a ramp; hashing while
        // "paused" is one too — the hashboards winding down, or a poll whose `details` came just
        // before a resume and its stats just after — not a sleep (as LuxOS and the Whatsminers
        // read it): a miner taken as asleep while it draws its full power misleads the planner
        // and makes the reconciler see drift from a wake it has just confirmed.
        r.state = match status {
            Some(3) => match r.hashrate_ths {
                Some(h) if h > HASHING_THS => MinerState::Ramping,
                _ => MinerState::Sleeping,
            },
            Some(2) => match r.hashrate_ths {
                Some(h) if h > HASHING_THS => MinerState::Mining,
                _ => MinerState::Ramping,
            },
            _ => MinerState::Unknown,
        };
        Ok(r)
    }

    async fn sleep(&self) -> Result<Reading, MinerError> {
        let _held = self.web.hold();
        let reply = self
            .call(Method::PUT, "/api/v1/actions/pause", None)
            .await?;
        let answered = format!(
            "HTTP {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        read_back(self, &self.ctx.options, "pause", &answered, |r| {
            r.state == MinerState::Sleeping
        })
        .await
    }

    async fn wake(&self) -> Result<Reading, MinerError> {
        let _held = self.web.hold();
        // Resume keeps the tuner's target: the mode before the pause comes back by itself.
        let reply = self
            .call(Method::PUT, "/api/v1/actions/resume", None)
            .await?;
        let answered = format!(
            "HTTP {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        read_back(self, &self.ctx.options, "resume", &answered, |r| {
            matches!(r.state, MinerState::Mining | MinerState::Ramping)
        })
        .await
    }

    /// The power target is tuner configuration, kept while paused and used on resume.
    fn target_while_asleep(&self) -> bool {
        true
    }

    async fn set_power_target(&self, watts: u32) -> Result<Reading, MinerError> {
        let _held = self.web.hold();
        if let Some((min, max)) = self.constraints().await
            && (watts < min || watts > max)
        {
            return Err(MinerError::OutOfRange {
                addr: self.addr.to_string(),
                requested: watts,
                min,
                max,
            });
        }
        let reply = self
            .call(
                Method::PUT,
                "/api/v1/performance/power-target",
                Some(json!({ "watt": watts })),
            )
            .await?;
        let answered = format!(
            "HTTP {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        read_back(
            self,
            &self.ctx.options,
            &format!("power-target {watts} W"),
            &answered,
            |r| r.power_target_w == Some(watts),
        )
        .await
    }
}
