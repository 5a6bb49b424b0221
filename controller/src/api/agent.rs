//! AgentService: one bidirectional session per agent.
//!
//! Every message is validated here and converted into registry types; a message that does
//! not validate ends the session with `InvalidArgument` naming the field, and changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use futures::{FutureExt, Stream, StreamExt};
use pivot_proto::model::{self, FieldError, IntentPhase, MinerDialect, MinerState};
use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;
use pivot_proto::v1::controller_message::Msg as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::Controller;
use crate::fleet::{
    AgentEntry, GpuInfo, GpuObservation, GpuSlot, HostPower, MinerInfo, MinerObservation,
    MinerSlot, Telemetry,
};
use crate::store::NewAudit;

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::ControllerMessage, Status>> + Send>>;

/// The AgentService implementation.
#[derive(Debug, Clone)]
pub struct AgentApi {
    ctl: Arc<Controller>,
}

impl AgentApi {
    pub fn new(ctl: Arc<Controller>) -> Self {
        Self { ctl }
    }
}

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for AgentApi {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let who = self
            .ctl
            .auth
            .authorize(&request, crate::auth::Right::AgentSession)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session closed before hello"))?;
        let hello = match first.msg {
            Some(Up::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "msg: the first message of a session must be hello",
                ));
            }
        };
        let (entry, held) = validate_hello(&hello).map_err(|e| e.within("hello"))?;
        let host_id = entry.host_id.clone();
        if !who.may_be_host(&host_id) {
            warn!(host = %host_id, identity = %who.name, %peer, "Refused a session for a host the identity is not bound to");
            self.ctl
                .audit(NewAudit {
                    kind: "agent",
                    subject: format!("host/{host_id}"),
                    actor: who.name.clone(),
                    reason: format!("refused: {} may not speak for host `{host_id}`", who.name),
                    detail: serde_json::json!({ "peer": peer }),
                })
                .await;
            return Err(Status::permission_denied(format!(
                "hello.host_id: {} is bound to host `{}`, not `{host_id}`",
                who.name,
                who.host.as_deref().unwrap_or("-")
            )));
        }
        if let Err(e) = self.ctl.admit(&entry) {
            self.ctl
                .audit(NewAudit {
                    kind: "agent",
                    subject: format!("host/{host_id}"),
                    actor: who.name.clone(),
                    reason: format!("refused: {}", e.message()),
                    detail: serde_json::json!({ "peer": peer }),
                })
                .await;
            return Err(e);
        }
        let devices: Vec<String> = entry
            .miners
            .keys()
            .chain(entry.gpus.keys())
            .cloned()
            .chain(std::iter::once(format!("host/{host_id}")))
            .collect();

        let (tx, rx) = mpsc::channel(DOWNLINK_QUEUE);
        let welcome = v1::ControllerMessage {
            msg: Some(Down::Welcome(v1::Welcome {
                controller_id: self.ctl.config.site.id.clone(),
                telemetry_interval: Some(model::duration_to_proto(self.ctl.telemetry_interval())),
                controller_time: Some(model::timestamp_to_proto(Utc::now())),
                stale_after: self
                    .ctl
                    .stale_after()
                    .to_std()
                    .ok()
                    .map(model::duration_to_proto),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;

        // What the agent holds against what the controller wants, before the session is live:
        // the intents it missed go down right after the welcome.
        let ledger = Arc::clone(&self.ctl.ledger);
        let (h, d) = (host_id.clone(), devices.clone());
        let outcome = self
            .ctl
            .blocking(move |_| ledger.on_hello(&h, &held, &d, Utc::now()))
            .await?;
        let connected = self.ctl.registry.connect(entry, tx.clone());
        let session_id = connected.session_id;
        if let Some(old) = connected.superseded {
            info!(host = %host_id, old_session = old.id, "A new session supersedes the host's previous one");
            old.close(Status::aborted(format!(
                "superseded by a new session for host `{host_id}` from {peer}"
            )));
        }
        info!(host = %host_id, %peer, session = session_id, devices = devices.len() - 1, "Agent connected");
        self.ctl
            .audit(NewAudit {
                kind: "agent",
                subject: format!("host/{host_id}"),
                actor: who.name.clone(),
                reason: "agent connected".into(),
                detail: serde_json::json!({
                    "peer": peer,
                    "session": session_id,
                    "agent_version": hello.agent_version,
                    "devices": devices.len() - 1,
                    "adopted": outcome.adopted.iter().map(|i| (&i.device_id, i.generation)).collect::<Vec<_>>(),
                    "resent": outcome.resend.len(),
                    "conflicts": outcome.conflicts,
                }),
            })
            .await;
        if !outcome.resend.is_empty() {
            let batch = crate::executor::intent_batch(
                outcome
                    .resend
                    .iter()
                    .map(|i| self.ctl.lease_for(i, Utc::now())),
            );
            if let Err(e) = self.ctl.registry.send(&host_id, batch) {
                warn!(host = %host_id, error = %e, "Could not re-send held intents; the next lease round retries");
            }
        }
        // No round yet: until its first readings the host's devices are unseen and would count
        // at their maximum, and a round now would curtail other loads for power that is not
        // drawn. The first telemetry of the session starts the round (serve_session).

        let ctl = Arc::clone(&self.ctl);
        let actor = who.name;
        tokio::spawn(async move {
            let result = serve_session(&ctl, &host_id, &actor, session_id, &mut inbound).await;
            let was_live = ctl.registry.disconnect(&host_id, session_id);
            let reason = match &result {
                Ok(()) => "agent disconnected".to_owned(),
                Err(status) => {
                    warn!(host = %host_id, session = session_id, error = %status.message(), "Agent session ended with an error");
                    format!("agent session ended: {}", status.message())
                }
            };
            if let Err(status) = result {
                // The agent learns why its session ended; it may already be gone.
                let _ = tx.send(Err(status)).await;
            }
            if was_live {
                ctl.replan.notify_one();
            }
            ctl.audit(NewAudit {
                kind: "agent",
                subject: format!("host/{host_id}"),
                actor,
                reason: if was_live {
                    reason
                } else {
                    format!("superseded session {session_id} ended: {reason}")
                },
                detail: serde_json::json!({ "session": session_id }),
            })
            .await;
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as SessionStream
        ))
    }
}

/// When each device was last complained about in the audit log.
#[derive(Debug, Default)]
struct Complaints(std::collections::HashMap<String, chrono::DateTime<Utc>>);

impl Complaints {
    /// Whether to complain about `device` now (at most once a quarter hour).
    fn fresh(&mut self, device: &str, now: chrono::DateTime<Utc>) -> bool {
        match self.0.get(device) {
            Some(t) if now - *t < chrono::Duration::minutes(15) => false,
            _ => {
                self.0.insert(device.to_owned(), now);
                true
            }
        }
    }
}

/// Messages queued for one agent before the controller counts it as not reading its session.
const DOWNLINK_QUEUE: usize = 64;

async fn serve_session(
    ctl: &Arc<Controller>,
    host_id: &str,
    actor: &str,
    session_id: u64,
    inbound: &mut Streaming<v1::AgentMessage>,
) -> Result<(), Status> {
    let mut complaints = Complaints::default();
    // A joining host's first readings start a round at once (not the hello: before them its
    // devices are unseen).
    let mut first_readings = true;
    // What the stream gave while a burst of statuses was gathered that is not a status (another
    // message, an error, its end): handled next, as if read then.
    let mut pending = None;
    loop {
        let next = match pending.take() {
            Some(next) => next,
            None => inbound.next().await,
        };
        let Some(msg) = next else { return Ok(()) };
        let msg = msg?;
        if !ctl.registry.is_live(host_id, session_id) {
            return Err(Status::aborted(format!(
                "session {session_id} was superseded by a newer session for host `{host_id}`"
            )));
        }
        match msg.msg {
            None => return Err(Status::invalid_argument("msg: required but missing")),
            Some(Up::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "msg: hello is only allowed as the first message",
                ));
            }
            Some(Up::Telemetry(t)) => {
                let t = validate_telemetry(&t).map_err(|e| e.within("telemetry"))?;
                let now = Utc::now();
                let seen = ctl
                    .registry
                    .observe(
                        host_id,
                        session_id,
                        t,
                        now,
                        &ctl.config.agents.assumptions(),
                    )
                    .unwrap_or_default();
                if std::mem::take(&mut first_readings) {
                    ctl.replan.notify_one();
                }
                if !seen.unknown.is_empty() {
                    warn!(host = %host_id, devices = ?seen.unknown, "Telemetry for devices not in the agent's inventory; ignored");
                }
                for (device, why, refused) in seen
                    .refused
                    .into_iter()
                    .map(|(d, w)| (d, w, true))
                    .chain(seen.flagged.into_iter().map(|(d, w)| (d, w, false)))
                {
                    // One record per device per quarter hour: a stuck sensor must not flood the
                    // audit log.
                    if !complaints.fresh(&device, now) {
                        continue;
                    }
                    warn!(host = %host_id, device = %device, reason = %why, refused, "Implausible reading");
                    ctl.audit(NewAudit {
                        kind: "telemetry",
                        subject: device,
                        actor: actor.to_owned(),
                        reason: if refused {
                            format!("reading refused, device counts as unseen: {why}")
                        } else {
                            format!("flagged: {why}")
                        },
                        detail: serde_json::Value::Null,
                    })
                    .await;
                }
            }
            Some(Up::IntentStatus(first)) => {
                // The statuses the agent has already sent behind this one are taken with it:
                // one store transaction for the burst (a 10,000-move phase is 20,000 statuses).
                let mut bytes = status_bytes(&first);
                let mut burst = vec![first];
                while burst.len() < STATUS_BURST && bytes < STATUS_BURST_BYTES {
                    match inbound.next().now_or_never() {
                        None => break,
                        Some(Some(Ok(v1::AgentMessage {
                            msg: Some(Up::IntentStatus(s)),
                        }))) => {
                            bytes += status_bytes(&s);
                            burst.push(s);
                        }
                        Some(other) => {
                            pending = Some(other);
                            break;
                        }
                    }
                }
                take_statuses(ctl, host_id, actor, burst).await?;
            }
        }
    }
}

/// The most statuses taken in one store transaction.
const STATUS_BURST: usize = 1024;
/// The most text a burst holds (a status is a few hundred bytes; a hostile agent's may be as
/// large as a message may be, and a burst must not hold a thousand of those).
const STATUS_BURST_BYTES: usize = 1 << 20;

/// The text a status carries, for [`STATUS_BURST_BYTES`].
fn status_bytes(s: &v1::IntentStatus) -> usize {
    s.device_id.len() + s.detail.len() + s.plan_id.len()
}

/// Checks a burst of one agent's statuses, records them in the ledger and the audit log (one
/// transaction each) and wakes the executor. A status that does not validate ends the session
/// (`InvalidArgument` naming the field) after the ones before it are taken; one the ledger
/// refuses (another host's device) is audited and skipped.
async fn take_statuses(
    ctl: &Arc<Controller>,
    host_id: &str,
    actor: &str,
    burst: Vec<v1::IntentStatus>,
) -> Result<(), Status> {
    let mut valid = Vec::with_capacity(burst.len());
    let mut invalid = None;
    for mut s in burst {
        let checked = IntentPhase::from_proto(s.phase, "intent_status.phase")
            .and_then(|_| model::non_empty(&s.device_id, "intent_status.device_id"));
        if let Err(e) = checked {
            invalid = Some(e);
            break;
        }
        s.device_id = crate::executor::site_device_id(host_id, &s.device_id);
        valid.push(s);
    }
    let ledger = Arc::clone(&ctl.ledger);
    let h = host_id.to_owned();
    let (valid, results) = ctl
        .blocking(move |_| {
            let results = ledger.on_statuses(&h, &valid, Utc::now());
            Ok((valid, results))
        })
        .await?;
    let mut records = Vec::new();
    let mut outcomes = Vec::new();
    let (mut changed, mut settled_elsewhere) = (false, false);
    let executing = ctl.execution().map(|e| e.plan.plan_id.clone());
    for (s, result) in valid.into_iter().zip(results) {
        match result {
            Err(refused) => {
                warn!(host = %host_id, error = %refused, "Refused an intent status");
                records.push(NewAudit {
                    kind: "status",
                    subject: s.device_id,
                    actor: actor.to_owned(),
                    reason: format!("refused: {refused}"),
                    detail: serde_json::Value::Null,
                });
            }
            Ok(None) => {}
            Ok(Some(c)) => {
                changed = true;
                // An intent of a plan no longer executing settled: the plan that replaced it
                // may now have room to grant.
                let settled = c.status.phase == IntentPhase::Confirmed
                    || (c.status.phase.is_final() && !c.status.retrying);
                settled_elsewhere |= settled && executing.as_deref() != Some(c.plan_id.as_str());
                if settled {
                    outcomes.push((c.device_id, c.generation, c.status.clone()));
                }
                records.push(NewAudit {
                    kind: "status",
                    subject: s.device_id,
                    actor: actor.to_owned(),
                    detail: serde_json::json!({
                        "generation": s.generation,
                        "phase": format!("{:?}", c.status.phase).to_lowercase(),
                        "retrying": s.retrying,
                        "plan_id": s.plan_id,
                        "plan_phase": s.plan_phase,
                        "observed_power_w": s.observed_power_w,
                    }),
                    reason: s.detail,
                });
            }
        }
    }
    ctl.note_outcomes(outcomes.iter().map(|(d, g, s)| (d.as_str(), *g, s)));
    if changed {
        ctl.progress.notify_one();
    }
    if settled_elsewhere {
        ctl.replan.notify_one();
    }
    ctl.audit_all(records).await;
    match invalid {
        Some(e) => Err(Status::from(e)),
        None => Ok(()),
    }
}

fn finite_field(v: Option<f64>, field: String) -> Result<Option<f64>, FieldError> {
    model::finite(v, &field)
}

/// The highest generation a hello may say its agent holds.
pub const MAX_HELD_GENERATION: u64 = (i64::MAX / 2) as u64;

/// Checks a hello and turns it into a registry entry and the intents the agent holds.
pub fn validate_hello(h: &v1::Hello) -> Result<(AgentEntry, Vec<model::Intent>), FieldError> {
    let host_id = model::non_empty(&h.host_id, "host_id")?;
    crate::api::fleet::check_id(&host_id, "host_id")?;
    let mut seen = HashSet::new();
    let mut miners = BTreeMap::new();
    for (i, m) in h.miners.iter().enumerate() {
        let f = format!("miners[{i}]");
        let device_id = model::non_empty(&m.device_id, &format!("{f}.device_id"))?;
        crate::api::fleet::check_id(&device_id, &format!("{f}.device_id"))?;
        if !seen.insert(device_id.clone()) {
            return Err(FieldError::new(
                format!("{f}.device_id"),
                format!("duplicate device id `{device_id}`"),
            ));
        }
        // Unspecified: a configured miner the agent has not identified (it never answered).
        let dialect = if m.dialect == v1::MinerDialect::Unspecified as i32 {
            None
        } else {
            Some(MinerDialect::from_proto(
                m.dialect,
                &format!("{f}.dialect"),
            )?)
        };
        let nameplate = m.nameplate_power_w.map(f64::from);
        finite_field(
            m.nameplate_hashrate_ths,
            format!("{f}.nameplate_hashrate_ths"),
        )?;
        let caps = m.capabilities.clone().unwrap_or_default();
        if let (Some(lo), Some(hi)) = (caps.power_target_min_w, caps.power_target_max_w)
            && lo > hi
        {
            return Err(FieldError::new(
                format!("{f}.capabilities"),
                format!("power_target_min_w {lo} is above power_target_max_w {hi}"),
            ));
        }
        miners.insert(
            device_id.clone(),
            MinerSlot {
                info: MinerInfo {
                    device_id,
                    dialect,
                    nameplate_power_w: nameplate,
                    power_target_max_w: caps.power_target_max_w.map(f64::from),
                    inventory: m.clone(),
                },
                obs: None,
                last_mining_j_per_th: None,
                last_sleeping_w: None,
            },
        );
    }
    let mut gpus = BTreeMap::new();
    for (i, g) in h.gpus.iter().enumerate() {
        let f = format!("gpus[{i}]");
        let device_id = model::non_empty(&g.device_id, &format!("{f}.device_id"))?;
        crate::api::fleet::check_id(&device_id, &format!("{f}.device_id"))?;
        if !seen.insert(device_id.clone()) {
            return Err(FieldError::new(
                format!("{f}.device_id"),
                format!("duplicate device id `{device_id}`"),
            ));
        }
        if g.power_cap_min_w > g.power_cap_max_w {
            return Err(FieldError::new(
                format!("{f}.power_cap_min_w"),
                format!(
                    "{} is above power_cap_max_w {}",
                    g.power_cap_min_w, g.power_cap_max_w
                ),
            ));
        }
        gpus.insert(
            device_id.clone(),
            GpuSlot {
                info: GpuInfo {
                    device_id,
                    power_cap_max_w: f64::from(g.power_cap_max_w),
                    inventory: g.clone(),
                },
                obs: None,
            },
        );
    }
    let host_device = format!("host/{host_id}");
    let mut held = Vec::with_capacity(h.held_intents.len());
    let mut held_devices = HashSet::new();
    for (i, intent) in h.held_intents.iter().enumerate() {
        let f = format!("held_intents[{i}]");
        let intent = model::Intent::from_proto(intent, &f)?;
        // Issue 11: a generation no controller could have issued (it counts up from 1) would
        // be adopted as the device's desired state and leave the ledger no room above it: one
        // such device in a phase makes the whole phase's batch fail to issue, curtailments
        // included. The store keeps generations as i64; half of that is far beyond any real one.
        if intent.generation > MAX_HELD_GENERATION {
            return Err(FieldError::new(
                format!("{f}.generation"),
                format!(
                    "{} is beyond any generation a controller issues (at most {MAX_HELD_GENERATION})",
                    intent.generation
                ),
            ));
        }
        // The agent names its host's workload "host"; the site knows it as "host/<host_id>".
        let intent = if intent.device_id == "host" {
            model::Intent {
                device_id: host_device.clone(),
                ..intent
            }
        } else {
            intent
        };
        if intent.device_id != host_device && !seen.contains(&intent.device_id) {
            return Err(FieldError::new(
                format!("{f}.device_id"),
                format!("`{}` is not in this hello's inventory", intent.device_id),
            ));
        }
        if !held_devices.insert(intent.device_id.clone()) {
            return Err(FieldError::new(
                format!("{f}.device_id"),
                format!("a second intent for `{}`", intent.device_id),
            ));
        }
        held.push(intent);
    }
    let host = h.host.clone().unwrap_or_default();
    let host_power = HostPower {
        base_w: host.base_power_w.map(f64::from),
        max_w: host.max_power_w.map(f64::from),
    };
    if let (Some(base), Some(max)) = (host_power.base_w, host_power.max_w)
        && base > max
    {
        return Err(FieldError::new(
            "host.base_power_w",
            format!("{base} W is above host.max_power_w {max} W"),
        ));
    }
    let now = Utc::now();
    Ok((
        AgentEntry {
            host_id,
            agent_version: h.agent_version.clone(),
            connected: true,
            session: None,
            connected_at: now,
            last_seen: now,
            host,
            host_power,
            host_reading: None,
            miners,
            gpus,
        },
        held,
    ))
}

/// Checks a telemetry snapshot and turns it into observations.
pub fn validate_telemetry(t: &v1::TelemetrySnapshot) -> Result<Telemetry, FieldError> {
    let now = Utc::now();
    let at = |ts: &Option<prost_types::Timestamp>, field: String| match ts {
        Some(ts) => model::timestamp_from_proto(ts, &field),
        None => Ok(now),
    };
    let mut miners = Vec::with_capacity(t.miners.len());
    for (i, m) in t.miners.iter().enumerate() {
        let f = format!("miners[{i}]");
        model::non_empty(&m.device_id, &format!("{f}.device_id"))?;
        for (j, b) in m.boards.iter().enumerate() {
            finite_field(b.temperature_c, format!("{f}.boards[{j}].temperature_c"))?;
            finite_field(b.hashrate_ths, format!("{f}.boards[{j}].hashrate_ths"))?;
        }
        miners.push(MinerObservation {
            reachable: m.reachable,
            state: if m.reachable {
                MinerState::from_proto(m.state)
            } else {
                MinerState::Unknown
            },
            power_w: finite_field(m.power_w, format!("{f}.power_w"))?,
            hashrate_ths: finite_field(m.hashrate_ths, format!("{f}.hashrate_ths"))?,
            power_target_w: finite_field(m.power_target_w, format!("{f}.power_target_w"))?,
            observed_at: at(&m.observed_at, format!("{f}.observed_at"))?,
            restored: false,
            reading: m.clone(),
        });
    }
    let mut gpus = Vec::with_capacity(t.gpus.len());
    for (i, g) in t.gpus.iter().enumerate() {
        let f = format!("gpus[{i}]");
        model::non_empty(&g.device_id, &format!("{f}.device_id"))?;
        for (v, name) in [
            (g.energy_j, "energy_j"),
            (g.temperature_c, "temperature_c"),
            (g.utilization_pct, "utilization_pct"),
            (g.power_cap_w, "power_cap_w"),
        ] {
            finite_field(v, format!("{f}.{name}"))?;
        }
        gpus.push(GpuObservation {
            power_w: finite_field(g.power_w, format!("{f}.power_w"))?,
            enforced_power_limit_w: finite_field(
                g.enforced_power_limit_w,
                format!("{f}.enforced_power_limit_w"),
            )?,
            observed_at: at(&g.observed_at, format!("{f}.observed_at"))?,
            restored: false,
            reading: g.clone(),
        });
    }
    if let Some(h) = &t.host {
        for (v, name) in [
            (h.cpu_usage_pct, "cpu_usage_pct"),
            (h.load_1m, "load_1m"),
            (h.load_5m, "load_5m"),
            (h.load_15m, "load_15m"),
            (h.temperature_c, "temperature_c"),
        ] {
            finite_field(v, format!("host.{name}"))?;
        }
    }
    Ok(Telemetry {
        miners,
        gpus,
        host: t.host.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_needs_host_id_and_known_dialects() {
        let e = validate_hello(&v1::Hello::default()).unwrap_err();
        assert_eq!(e.field, "host_id");
        let h = v1::Hello {
            host_id: "h".into(),
            miners: vec![v1::MinerInventory {
                device_id: "m".into(),
                dialect: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = validate_hello(&h).unwrap_err();
        assert_eq!(e.field, "miners[0].dialect");
    }

    #[test]
    fn duplicate_devices_are_rejected() {
        let m = v1::MinerInventory {
            device_id: "m".into(),
            dialect: v1::MinerDialect::Luxos as i32,
            ..Default::default()
        };
        let h = v1::Hello {
            host_id: "h".into(),
            miners: vec![m.clone(), m],
            ..Default::default()
        };
        assert_eq!(validate_hello(&h).unwrap_err().field, "miners[1].device_id");
    }

    #[test]
    fn a_held_generation_no_controller_issued_is_refused() {
        let intent = |generation| v1::Intent {
            device_id: "m".into(),
            generation,
            lease_expires_at: Some(model::timestamp_to_proto(Utc::now())),
            target: Some(v1::intent::Target::Miner(v1::MinerTarget {
                mode: v1::MinerMode::Sleep as i32,
                power_target_w: None,
            })),
            ..Default::default()
        };
        let hello = |generation| v1::Hello {
            host_id: "h".into(),
            miners: vec![v1::MinerInventory {
                device_id: "m".into(),
                dialect: v1::MinerDialect::Luxos as i32,
                ..Default::default()
            }],
            held_intents: vec![intent(generation)],
            ..Default::default()
        };
        assert!(validate_hello(&hello(MAX_HELD_GENERATION)).is_ok());
        for g in [MAX_HELD_GENERATION + 1, i64::MAX as u64, u64::MAX] {
            let e = validate_hello(&hello(g)).unwrap_err();
            assert_eq!(e.field, "held_intents[0].generation", "{g}");
        }
    }

    #[test]
    fn nan_power_is_rejected_with_its_path() {
        let t = v1::TelemetrySnapshot {
            miners: vec![v1::MinerReading {
                device_id: "m".into(),
                reachable: true,
                power_w: Some(f64::NAN),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            validate_telemetry(&t).unwrap_err().field,
            "miners[0].power_w"
        );
    }

    #[test]
    fn unreachable_miner_is_never_mining() {
        let t = v1::TelemetrySnapshot {
            miners: vec![v1::MinerReading {
                device_id: "m".into(),
                reachable: false,
                state: v1::MinerState::Mining as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            validate_telemetry(&t).unwrap().miners[0].state,
            MinerState::Unknown
        );
    }
}
