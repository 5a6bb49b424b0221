//! LuxOS: everything on the 4028 API. Reads in one `summary+stats+pools+power+config`
//! connection (`profiles` and `version` only when they may have changed); writes need a session
//! id. LuxOS ends a session after 60 s without a command, so the agent keeps its own only while
//! it was used in the last [`SESSION_IDLE`]; else it logs on (`logon`), and when another client
//! holds the only session (Code 402) it asks for that one (`session`) and writes with it. An
//! "invalid session" answer gets one fresh logon and a retry. Sleep and wake
//! are `curtail <sid>,sleep|wakeup`; the power target is a profile (`profileset`), with ATM
//! switched off around the change so it does not move the profile back.
//! Facts: PROTOCOLS.md, pyasic rpc/luxminer.py and backends/luxminer.py, luxos-tooling.

use async_trait::async_trait;
use pivot_proto::model::{MinerDialect, MinerState};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::common::{self, HASHING_THS, leading_number_text};
use crate::miner::cgminer::parse::{number_at, string_at};
use crate::miner::cgminer::typed::Multi;
use crate::miner::cgminer::{CgClient, Status, multi_request};
use crate::miner::verify::read_back;
use crate::miner::{
    Capabilities, DriverContext, Identity, MinerAddr, MinerDriver, MinerError, Reading,
};

const DIALECT: MinerDialect = MinerDialect::Luxos;
/// The poll: one connection for what changes between polls.
const READ: [&str; 5] = ["summary", "stats", "pools", "power", "config"];
/// What rarely changes, read when the active profile changed, the model is not known yet, or
/// every [`REFRESH_POLLS`] polls: `version` for the model (LuxOS reports it only as
/// `VERSION[0].Type`: luxos-tooling README, pyasic `get_miner_model_luxos`) and `profiles` for
/// the active profile's watts. The two are two thirds of a poll's bytes (25 profiles of ten
/// fields each on current firmware) and change only when an operator changes them.
const READ_RARE: [&str; 2] = ["profiles", "version"];
const REFRESH_POLLS: u32 = 60;
/// How long after its last use the agent still writes with the session it holds: LuxOS drops a
/// session idle for 60 s (PROTOCOLS.md), less a margin for the clocks and the command's way there.
/// One older than this is taken as gone — a curtail an hour after the last command logs on at
/// once instead of first sending the command with a dead id to have it refused.
const SESSION_IDLE: Duration = Duration::from_secs(50);

/// What [`READ_RARE`] told, kept between polls.
#[derive(Debug, Default)]
struct RareCache {
    model: Option<String>,
    profile: Option<String>,
    profile_watts: Option<u32>,
    polls: u32,
}

/// The model from `version` (`"Type":"Antminer S19 (xyz)"` → `Antminer S19`, as pyasic trims
/// it), else from `config.Model` (older builds' guess; none seen in the wild).
fn model_of(version: Option<&Value>, conf: &Value) -> Option<String> {
    common::section(version, "VERSION")
        .first()
        .and_then(|v| string_at(v, &["Type", "Model"]))
        .map(|t| trim_model(&t))
        .filter(|t| !t.is_empty())
        .or_else(|| string_at(conf, &["Model"]))
}

/// `"Antminer S19 (xyz)"` → `"Antminer S19"`.
fn trim_model(t: &str) -> String {
    t.split(" (").next().unwrap_or(t).trim().to_owned()
}

pub struct Luxos {
    addr: MinerAddr,
    cg: CgClient,
    read_request: Box<[u8]>,
    rare_request: Box<[u8]>,
    rare: std::sync::Mutex<RareCache>,
    ctx: DriverContext,
    /// The session id the agent writes with, and when a command last used it.
    session: Mutex<Option<(String, Instant)>>,
    /// [`SESSION_IDLE`] (shorter in tests).
    session_idle: Duration,
}

/// A LuxOS profile: name and the watts it runs at.
#[derive(Debug, Clone, PartialEq)]
struct Profile {
    name: String,
    watts: Option<f64>,
}

fn profiles(reply: Option<&Value>) -> Vec<Profile> {
    common::section(reply, "PROFILES")
        .iter()
        .filter_map(|p| {
            Some(Profile {
                name: string_at(p, &["Profile Name", "Name", "Profile"])?,
                watts: number_at(p, &["Watts", "Power"]),
            })
        })
        .collect()
}

impl Luxos {
    pub fn new(addr: MinerAddr, ctx: DriverContext) -> Self {
        let cg = CgClient::new(addr.clone(), addr.api_port(DIALECT), ctx.options.timeouts);
        Self {
            addr,
            cg,
            read_request: multi_request(&READ),
            rare_request: multi_request(&READ_RARE),
            rare: std::sync::Mutex::new(RareCache::default()),
            ctx,
            session: Mutex::new(None),
            session_idle: SESSION_IDLE,
        }
    }

    fn session_of(reply: &Value) -> Option<String> {
        common::section(Some(reply), "SESSION")
            .first()
            .and_then(|s| string_at(s, &["SessionID", "SessionId"]))
    }

    /// The session to write with: the one held, when used within [`SESSION_IDLE`] (and not
    /// `fresh`); else a new `logon`; else, when another client holds the only session (Code 402),
    /// that one, as `session` names it.
    async fn session(&self, fresh: bool) -> Result<String, MinerError> {
        let mut guard = self.session.lock().await;
        if !fresh
            && let Some((s, used)) = guard.as_ref()
            && used.elapsed() < self.session_idle
        {
            return Ok(s.clone());
        }
        *guard = None;
        let s = match self.cg.command("logon", None).await {
            Ok(v) => Self::session_of(&v).ok_or_else(|| MinerError::Malformed {
                addr: self.addr.to_string(),
                command: "logon".into(),
                problem: "no SessionID in the reply".into(),
                snippet: crate::miner::error::snippet(v.to_string().as_bytes()),
            })?,
            Err(MinerError::Status {
                code: 402, message, ..
            }) => {
                let held = self.cg.command("session", None).await?;
                Self::session_of(&held).ok_or_else(|| MinerError::AuthRejected {
                    addr: self.addr.to_string(),
                    what: "`logon`".into(),
                    detail: format!(
                        "Code 402, another session is active: {message}; `session` names none"
                    ),
                })?
            }
            Err(other) => return Err(other),
        };
        *guard = Some((s.clone(), Instant::now()));
        Ok(s)
    }

    /// A privileged command `<command> <sid>[,<args>]`, re-logging once when the session is
    /// refused (expired or replaced).
    async fn privileged(&self, command: &str, args: &str) -> Result<Value, MinerError> {
        let mut fresh = false;
        loop {
            let sid = self
                .session(fresh)
                .await
                .map_err(MinerError::before_command)?;
            let param = if args.is_empty() {
                sid
            } else {
                format!("{sid},{args}")
            };
            let answer = self.cg.command(command, Some(&param)).await;
            match answer {
                Err(
                    MinerError::Status { ref message, .. }
                    | MinerError::AuthRejected {
                        detail: ref message,
                        ..
                    },
                ) if !fresh && message.to_ascii_lowercase().contains("session") => {
                    *self.session.lock().await = None;
                    fresh = true;
                }
                // The miner took the id: the session's idle time starts again now.
                Ok(_) => {
                    if let Some((_, used)) = self.session.lock().await.as_mut() {
                        *used = Instant::now();
                    }
                    return answer;
                }
                other => return other,
            }
        }
    }

    fn answered(v: &Value) -> String {
        Status::of(v).map_or_else(
            || "no STATUS".to_owned(),
            |s| format!("{} code {}: {}", s.letter, s.code, s.msg),
        )
    }

    /// A reading from the poll's replies, and the active profile's name (model and power target
    /// come from [`RareCache`]).
    fn reading(&self, m: &Multi<'_>) -> (Reading, Option<String>) {
        let mut r = Reading::empty(&self.addr, DIALECT);
        common::apply_summary(&mut r, m.get("summary"));
        let (boards, fans) = common::boards_and_fans_from_stats(m.get("stats"));
        r.boards = boards;
        r.fans = fans;
        r.pool = common::active_pool(m.get("pools"));
        r.power_w = m
            .get("power")
            .and_then(|p| p.power.first())
            .and_then(|p| p.watts.as_str())
            .and_then(leading_number_text);
        let conf = m.get("config").and_then(|c| c.config.first());
        if let Some(model) = conf.and_then(|c| c.model.owned()) {
            r.model = Some(model); // older builds' guess; `version` overrides it
        }
        common::fill_hashrate_from_boards(&mut r);
        // Curtailment shows in `config` (`IsSleeping`/`Curtailed`/`CurtailMode`); hashing speaks for itself.
        let sleeping = conf.and_then(|c| {
            c.sleeping.0.or_else(|| {
                c.curtail_mode
                    .as_str()
                    .map(|m| m.eq_ignore_ascii_case("sleep"))
            })
        });
        r.state = match (sleeping, r.hashrate_ths) {
            (Some(true), Some(h)) if h > HASHING_THS => MinerState::Ramping,
            (Some(true), _) => MinerState::Sleeping,
            (_, Some(h)) if h > HASHING_THS => MinerState::Mining,
            (Some(false), _) => MinerState::Ramping,
            (None, _) => MinerState::Unknown,
        };
        (r, conf.and_then(|c| c.profile.owned()))
    }

    /// Fills model and power target from [`RareCache`], reading [`READ_RARE`] first when it is
    /// stale. A failed rare read leaves the last known values: the poll itself succeeded.
    async fn fill_rare(&self, r: &mut Reading, profile: Option<String>) {
        let stale = {
            let mut c = self
                .rare
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            c.polls = c.polls.wrapping_add(1);
            c.model.is_none() || c.profile != profile || c.polls.is_multiple_of(REFRESH_POLLS)
        };
        if stale {
            let read = self
                .cg
                .read_multi(&READ_RARE, &self.rare_request, |m| {
                    let model = m
                        .get("version")
                        .and_then(|v| v.version.first())
                        .and_then(|v| v.model.as_str())
                        .map(trim_model);
                    let watts = profile.as_deref().and_then(|name| {
                        m.get("profiles")?
                            .profiles
                            .iter()
                            .find(|p| p.name.as_str() == Some(name))?
                            .watts
                            .get()
                            .map(|w| w as u32)
                    });
                    (model, watts)
                })
                .await;
            if let Ok((model, watts)) = read {
                let mut c = self
                    .rare
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if model.is_some() {
                    c.model = model;
                }
                c.profile_watts = watts;
                c.profile = profile;
            }
        }
        let c = self
            .rare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.model.is_some() {
            r.model.clone_from(&c.model);
        }
        r.power_target_w = c.profile_watts;
    }

    async fn atm_enabled(&self) -> Option<bool> {
        if let Ok(c) = self.cg.command("config", None).await
            && let Some(on) = common::section(Some(&c), "CONFIG")
                .first()
                .and_then(|c| c.get("IsAtmEnabled"))
                .and_then(Value::as_bool)
        {
            return Some(on);
        }
        let v = self.cg.command("atm", None).await.ok()?;
        common::section(Some(&v), "ATM")
            .first()?
            .get("Enabled")?
            .as_bool()
    }
}

#[async_trait]
impl MinerDriver for Luxos {
    fn dialect(&self) -> MinerDialect {
        DIALECT
    }

    fn addr(&self) -> &MinerAddr {
        &self.addr
    }

    async fn identify(&self) -> Result<Identity, MinerError> {
        let r = self.cg.multi(&["version", "config", "profiles"]).await?;
        let ver = common::section(r.get("version"), "VERSION")
            .first()
            .cloned()
            .unwrap_or(Value::Null);
        let conf = common::section(r.get("config"), "CONFIG")
            .first()
            .cloned()
            .unwrap_or(Value::Null);
        // The profiles are the steps a target can land on (LuxOS has no free watt value).
        let mut steps: Vec<u32> = profiles(r.get("profiles"))
            .iter()
            .filter_map(|p| p.watts.and_then(common::watts_u32))
            .collect();
        steps.sort_unstable();
        steps.dedup();
        Ok(Identity {
            dialect: DIALECT,
            model: model_of(r.get("version"), &conf),
            firmware: string_at(&ver, &["LUXminer", "Miner"]),
            serial: string_at(&conf, &["SerialNumber"]),
            mac: string_at(&conf, &["MACAddr"]),
            capabilities: Capabilities {
                can_sleep: true,
                power_target: !steps.is_empty(),
                power_target_min_w: steps.first().copied(),
                power_target_max_w: steps.last().copied(),
                power_target_steps_w: steps,
            },
        })
    }

    async fn read(&self) -> Result<Reading, MinerError> {
        let (mut r, profile) = self
            .cg
            .read_multi(&READ, &self.read_request, |m| self.reading(m))
            .await?;
        self.fill_rare(&mut r, profile).await;
        Ok(r)
    }

    async fn sleep(&self) -> Result<Reading, MinerError> {
        let v = self.privileged("curtail", "sleep").await?;
        read_back(
            self,
            &self.ctx.options,
            "curtail sleep",
            &Self::answered(&v),
            |r| r.state == MinerState::Sleeping,
        )
        .await
    }

    async fn wake(&self) -> Result<Reading, MinerError> {
        // Wakeup keeps the active profile: the miner returns to the mode it slept in.
        let v = self.privileged("curtail", "wakeup").await?;
        read_back(
            self,
            &self.ctx.options,
            "curtail wakeup",
            &Self::answered(&v),
            |r| matches!(r.state, MinerState::Mining | MinerState::Ramping),
        )
        .await
    }

    async fn set_power_target(&self, watts: u32) -> Result<Reading, MinerError> {
        let list = profiles(self.cg.command("profiles", None).await.ok().as_ref());
        // The highest profile at or under the target (a cap must not be exceeded).
        let chosen = list
            .iter()
            .filter(|p| p.watts.is_some_and(|w| w <= f64::from(watts)))
            .max_by(|a, b| a.watts.unwrap_or(0.0).total_cmp(&b.watts.unwrap_or(0.0)))
            .cloned();
        let Some(profile) = chosen else {
            let ws: Vec<f64> = list.iter().filter_map(|p| p.watts).collect();
            return Err(MinerError::OutOfRange {
                addr: self.addr.to_string(),
                requested: watts,
                min: ws.iter().copied().reduce(f64::min).unwrap_or(0.0) as u32,
                max: ws.iter().copied().reduce(f64::max).unwrap_or(0.0) as u32,
            });
        };
        let expected = profile.watts.map(|w| w as u32);
        let atm = self.atm_enabled().await == Some(true);
        if atm {
            self.privileged("atmset", "enabled=false").await?;
        }
        let result = self.privileged("profileset", &profile.name).await;
        if atm && let Err(e) = self.privileged("atmset", "enabled=true").await {
            tracing::warn!(miner = %self.addr, error = %e, "could not re-enable ATM after profileset");
        }
        let v = result?;
        read_back(
            self,
            &self.ctx.options,
            &format!("profileset {}", profile.name),
            &Self::answered(&v),
            |r| r.power_target_w == expected,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_wire::{Seen, only, options, recording_proxy};
    use super::*;
    use crate::miner::Credentials;
    use pivot_sim::miner::{Bind, Dialect, MinerSpec, SimMiner, Timing, spawn};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A LuxOS miner whose sessions lapse after `idle`, and a driver that believes its own
    /// session gone after `agent_idle`, talking through a recording proxy.
    async fn luxos(idle: Duration, agent_idle: Duration) -> (SimMiner, Luxos, Seen) {
        let timing = Timing {
            session_idle: idle,
            ..Timing::fast()
        };
        let m = spawn(
            MinerSpec::new(Dialect::Luxos).timing(timing),
            Bind::localhost(),
        )
        .await
        .unwrap();
        let (port, seen) = recording_proxy(m.api_addr()).await;
        let ctx = DriverContext::new(options(), Credentials::default_for(DIALECT));
        let mut drv = Luxos::new(MinerAddr::new("127.0.0.1").with_port(port), ctx);
        drv.session_idle = agent_idle;
        // Past the emulated boot, so the miner mines before it is told anything.
        tokio::time::sleep(Duration::from_millis(400)).await;
        (m, drv, seen)
    }

    const SESSION_TRAFFIC: [&str; 3] = ["logon", "session", "curtail"];

    /// A command after the session lapsed (an hour after the last, in the field) logs on at once:
    /// no command with the dead id to be refused first, no asking for a session there is none of.
    #[tokio::test]
    async fn a_session_idle_past_the_firmware_limit_is_not_tried_again() {
        let (m, drv, seen) = luxos(Duration::from_millis(300), Duration::from_millis(250)).await;
        drv.sleep().await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let woke = drv.wake().await.unwrap();
        assert!(
            matches!(woke.state, MinerState::Mining | MinerState::Ramping),
            "{woke:?}"
        );
        assert!(!m.handle().snapshot().sleep_requested);
        assert_eq!(
            only(&seen, &SESSION_TRAFFIC),
            ["logon", "curtail", "logon", "curtail"]
        );
    }

    /// Within the idle limit the session held is used as it is; when another client holds the
    /// only session (Code 402 to a logon), the driver writes with that one.
    #[tokio::test]
    async fn a_held_session_is_reused_and_another_clients_is_taken_over() {
        let (m, drv, seen) = luxos(Duration::from_secs(60), Duration::from_secs(50)).await;
        // Another client (say `pivot-agent miner` in another process) logged on first.
        let mut other = tokio::net::TcpStream::connect(m.api_addr()).await.unwrap();
        other.write_all(br#"{"command":"logon"}"#).await.unwrap();
        let mut reply = Vec::new();
        other.read_to_end(&mut reply).await.unwrap();
        drv.sleep().await.unwrap();
        assert!(m.handle().snapshot().sleep_requested);
        drv.wake().await.unwrap();
        assert!(!m.handle().snapshot().sleep_requested);
        assert_eq!(
            only(&seen, &SESSION_TRAFFIC),
            ["logon", "session", "curtail", "curtail"]
        );
    }

    #[test]
    fn model_from_version_type_then_config() {
        // luxos-tooling README: `version` → `{"LUXminer": "2024.9.17...", "Type": "Antminer S19"}`.
        let v = json!({"STATUS": [{"STATUS": "S"}], "VERSION": [{"Type": "Antminer S19 (88)"}]});
        assert_eq!(
            model_of(Some(&v), &Value::Null).as_deref(),
            Some("Antminer S19")
        );
        let conf = json!({"Model": "Antminer S21"});
        assert_eq!(model_of(None, &conf).as_deref(), Some("Antminer S21"));
        assert_eq!(model_of(None, &Value::Null), None);
    }
}
