//! AgentService: one bidirectional session per agent.
//!
//! Every message is validated here and converted into registry types; a message that does
//! not validate ends the session with `InvalidArgument` naming the field, and changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use futures::{Stream, StreamExt};
use pivot_proto::model::{self, FieldError, IntentPhase, MinerDialect, MinerState};
use pivot_proto::v1;
use pivot_proto::v1::agent_message::Msg as Up;
use pivot_proto::v1::controller_message::Msg as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::Controller;
use crate::fleet::{AgentEntry, GpuInfo, GpuObservation, MinerInfo, MinerObservation};
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
        let entry = validate_hello(&hello).map_err(|e| e.within("hello"))?;
        let host_id = entry.host_id.clone();
        let devices = entry.miners.len() + entry.gpus.len();
        self.ctl.registry.connect(entry);
        info!(host = %host_id, %peer, devices, "Agent connected");
        self.ctl
            .audit(NewAudit {
                kind: "agent",
                subject: format!("host/{host_id}"),
                actor: host_id.clone(),
                reason: "agent connected".into(),
                detail: serde_json::json!({ "peer": peer, "agent_version": hello.agent_version, "devices": devices }),
            })
            .await;

        let (tx, rx) = mpsc::channel(16);
        let welcome = v1::ControllerMessage {
            msg: Some(Down::Welcome(v1::Welcome {
                controller_id: self.ctl.config.site.id.clone(),
                telemetry_interval: Some(model::duration_to_proto(self.ctl.telemetry_interval())),
                controller_time: Some(model::timestamp_to_proto(Utc::now())),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;

        let ctl = Arc::clone(&self.ctl);
        tokio::spawn(async move {
            let result = serve_session(&ctl, &host_id, &mut inbound).await;
            ctl.registry.disconnect(&host_id);
            let reason = match &result {
                Ok(()) => "agent disconnected".to_owned(),
                Err(status) => {
                    warn!(host = %host_id, error = %status.message(), "Agent session ended with an error");
                    format!("agent session ended: {}", status.message())
                }
            };
            if let Err(status) = result {
                // The agent learns why its session ended; it may already be gone.
                let _ = tx.send(Err(status)).await;
            }
            ctl.audit(NewAudit {
                kind: "agent",
                subject: format!("host/{host_id}"),
                actor: host_id.clone(),
                reason,
                detail: serde_json::Value::Null,
            })
            .await;
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as SessionStream
        ))
    }
}

async fn serve_session(
    ctl: &Controller,
    host_id: &str,
    inbound: &mut Streaming<v1::AgentMessage>,
) -> Result<(), Status> {
    while let Some(msg) = inbound.next().await {
        let msg = msg?;
        match msg.msg {
            None => return Err(Status::invalid_argument("msg: required but missing")),
            Some(Up::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "msg: hello is only allowed as the first message",
                ));
            }
            Some(Up::Telemetry(t)) => {
                let (miners, gpus, host) =
                    validate_telemetry(&t).map_err(|e| e.within("telemetry"))?;
                let unknown = ctl
                    .registry
                    .observe(host_id, miners, gpus, host, Utc::now());
                if !unknown.is_empty() {
                    warn!(host = %host_id, devices = ?unknown, "Telemetry for devices not in the agent's inventory; ignored");
                }
            }
            Some(Up::IntentStatus(s)) => {
                let phase = IntentPhase::from_proto(s.phase, "intent_status.phase")?;
                model::non_empty(&s.device_id, "intent_status.device_id")?;
                ctl.audit(NewAudit {
                    kind: "status",
                    subject: s.device_id.clone(),
                    actor: host_id.to_owned(),
                    reason: s.detail.clone(),
                    detail: serde_json::json!({
                        "generation": s.generation,
                        "phase": format!("{phase:?}").to_lowercase(),
                        "observed_power_w": s.observed_power_w,
                    }),
                })
                .await;
            }
        }
    }
    Ok(())
}

fn finite_field(v: Option<f64>, field: String) -> Result<Option<f64>, FieldError> {
    model::finite(v, &field)
}

/// Checks a hello and turns it into a registry entry.
pub fn validate_hello(h: &v1::Hello) -> Result<AgentEntry, FieldError> {
    let host_id = model::non_empty(&h.host_id, "host_id")?;
    let mut seen = HashSet::new();
    let mut miners = BTreeMap::new();
    for (i, m) in h.miners.iter().enumerate() {
        let f = format!("miners[{i}]");
        let device_id = model::non_empty(&m.device_id, &format!("{f}.device_id"))?;
        if !seen.insert(device_id.clone()) {
            return Err(FieldError::new(
                format!("{f}.device_id"),
                format!("duplicate device id `{device_id}`"),
            ));
        }
        let dialect = MinerDialect::from_proto(m.dialect, &format!("{f}.dialect"))?;
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
            (
                MinerInfo {
                    device_id,
                    dialect,
                    nameplate_power_w: nameplate,
                    power_target_max_w: caps.power_target_max_w.map(f64::from),
                    inventory: m.clone(),
                },
                None,
            ),
        );
    }
    let mut gpus = BTreeMap::new();
    for (i, g) in h.gpus.iter().enumerate() {
        let f = format!("gpus[{i}]");
        let device_id = model::non_empty(&g.device_id, &format!("{f}.device_id"))?;
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
            (
                GpuInfo {
                    device_id,
                    power_cap_max_w: f64::from(g.power_cap_max_w),
                    inventory: g.clone(),
                },
                None,
            ),
        );
    }
    for (i, intent) in h.held_intents.iter().enumerate() {
        model::Intent::from_proto(intent, &format!("held_intents[{i}]"))?;
    }
    let now = Utc::now();
    Ok(AgentEntry {
        host_id,
        agent_version: h.agent_version.clone(),
        connected: true,
        connected_at: now,
        last_seen: now,
        host: h.host.clone().unwrap_or_default(),
        host_reading: None,
        miners,
        gpus,
    })
}

type Observations = (
    Vec<MinerObservation>,
    Vec<GpuObservation>,
    Option<v1::HostReading>,
);

/// Checks a telemetry snapshot and turns it into observations.
pub fn validate_telemetry(t: &v1::TelemetrySnapshot) -> Result<Observations, FieldError> {
    let now = Utc::now();
    let at = |ts: &Option<prost_types::Timestamp>, field: String| match ts {
        Some(ts) => model::timestamp_from_proto(ts, &field),
        None => Ok(now),
    };
    let mut miners = Vec::with_capacity(t.miners.len());
    for (i, m) in t.miners.iter().enumerate() {
        let f = format!("miners[{i}]");
        model::non_empty(&m.device_id, &format!("{f}.device_id"))?;
        finite_field(m.hashrate_ths, format!("{f}.hashrate_ths"))?;
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
            power_target_w: finite_field(m.power_target_w, format!("{f}.power_target_w"))?,
            observed_at: at(&m.observed_at, format!("{f}.observed_at"))?,
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
    Ok((miners, gpus, t.host.clone()))
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
            validate_telemetry(&t).unwrap().0[0].state,
            MinerState::Unknown
        );
    }
}
