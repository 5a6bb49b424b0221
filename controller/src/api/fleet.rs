//! FleetService: the API pivotctl, dashboards and automation use.

use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use futures::{Stream, StreamExt};
use pivot_proto::model::{self, FieldError, MinerTarget, Target, WorkloadState};
use pivot_proto::v1;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::Controller;
use crate::auth::Right;
use crate::policy;
use crate::store::{DemandResponse, NewAudit, Override, StoreError};

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

/// The FleetService implementation.
#[derive(Debug, Clone)]
pub struct FleetApi {
    ctl: Arc<Controller>,
}

impl FleetApi {
    pub fn new(ctl: Arc<Controller>) -> Self {
        Self { ctl }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RevisionConflict { .. } => Status::aborted(e.to_string()),
            StoreError::Exists { .. } => Status::already_exists(e.to_string()),
            other => Status::internal(other.to_string()),
        }
    }
}

fn override_to_proto(o: &Override) -> v1::Override {
    let pin = match o.pin {
        Target::Miner(m) => v1::r#override::Pin::Miner(m.to_proto()),
        Target::Gpu { power_cap_w } => v1::r#override::Pin::Gpu(v1::GpuTarget { power_cap_w }),
        Target::Workload { state } => v1::r#override::Pin::Workload(v1::WorkloadTarget {
            state: state.to_proto() as i32,
        }),
    };
    v1::Override {
        target: o.target.clone(),
        pin: Some(pin),
        expires_at: o.expires_at.map(model::timestamp_to_proto),
        reason: o.reason.clone(),
        actor: o.actor.clone(),
        created_at: Some(model::timestamp_to_proto(o.created_at)),
    }
}

fn override_from_proto(o: &v1::Override, actor: &str) -> Result<Override, FieldError> {
    let target = model::non_empty(&o.target, "override.target")?;
    let pin = match &o.pin {
        None => return Err(FieldError::new("override.pin", "required but missing")),
        Some(v1::r#override::Pin::Miner(m)) => {
            Target::Miner(MinerTarget::from_proto(m, "override.miner")?)
        }
        Some(v1::r#override::Pin::Gpu(g)) if g.power_cap_w == 0 => {
            return Err(FieldError::new(
                "override.gpu.power_cap_w",
                "must be positive",
            ));
        }
        Some(v1::r#override::Pin::Gpu(g)) => Target::Gpu {
            power_cap_w: g.power_cap_w,
        },
        Some(v1::r#override::Pin::Workload(w)) => Target::Workload {
            state: WorkloadState::from_proto(w.state, "override.workload.state")?,
        },
    };
    let expires_at = o
        .expires_at
        .as_ref()
        .map(|t| model::timestamp_from_proto(t, "override.expires_at"))
        .transpose()?;
    let now = Utc::now();
    if expires_at.is_some_and(|t| t <= now) {
        return Err(FieldError::new("override.expires_at", "is in the past"));
    }
    if expires_at.is_some_and(|t| t > now + chrono::Duration::days(3660)) {
        return Err(FieldError::new(
            "override.expires_at",
            "is more than ten years ahead; leave it out for an override until cleared",
        ));
    }
    if o.reason.len() > 1024 {
        return Err(FieldError::new("override.reason", "longer than 1024 bytes"));
    }
    Ok(Override {
        target,
        pin,
        expires_at,
        reason: o.reason.clone(),
        actor: actor.to_owned(),
        created_at: Utc::now(),
    })
}

/// The largest policy document accepted, bytes: a real one is a few kilobytes; anything near
/// the message limit would be stored and then fail to be sent back.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

fn check_policy_size(doc: &str) -> Result<(), Vec<String>> {
    if doc.len() > MAX_POLICY_BYTES {
        Err(vec![format!(
            "the document is {} bytes; at most {MAX_POLICY_BYTES} are accepted",
            doc.len()
        )])
    } else {
        Ok(())
    }
}

/// The longest a demand-response event may last or be announced ahead.
const DR_HORIZON: chrono::Duration = chrono::Duration::days(366);

/// Checks a demand-response request at the edge: a target in watts, a deadline in the future
/// within the horizon, a positive duration within it, and an id from the documented set.
pub fn validate_demand_response(
    req: &v1::DemandResponseRequest,
    now: chrono::DateTime<Utc>,
    actor: &str,
) -> Result<DemandResponse, FieldError> {
    if !(req.target_power_w.is_finite() && req.target_power_w >= 0.0) {
        return Err(FieldError::new(
            "target_power_w",
            format!(
                "must be a finite number of watts >= 0, got {}",
                req.target_power_w
            ),
        ));
    }
    let deadline = req
        .deadline
        .as_ref()
        .ok_or_else(|| FieldError::new("deadline", "required but missing"))?;
    let deadline = model::timestamp_from_proto(deadline, "deadline")?;
    // A second of slack for the caller's clock and the trip here.
    if deadline < now - chrono::Duration::seconds(1) {
        return Err(FieldError::new(
            "deadline",
            format!("{} is in the past", deadline.to_rfc3339()),
        ));
    }
    if deadline > now + DR_HORIZON {
        return Err(FieldError::new("deadline", "is more than a year ahead"));
    }
    let duration = req
        .duration
        .as_ref()
        .ok_or_else(|| FieldError::new("duration", "required but missing"))?;
    let duration = model::duration_from_proto(duration, "duration")?;
    if duration.is_zero() {
        return Err(FieldError::new("duration", "must be positive"));
    }
    let duration = chrono::Duration::from_std(duration)
        .ok()
        .filter(|d| *d <= DR_HORIZON)
        .ok_or_else(|| FieldError::new("duration", "must be at most a year"))?;
    let event_id = if req.event_id.is_empty() {
        format!("dr-{}", now.format("%Y%m%dT%H%M%S%.3fZ"))
    } else {
        check_id(&req.event_id, "event_id")?
    };
    Ok(DemandResponse {
        event_id,
        target_power_w: req.target_power_w,
        deadline,
        ends_at: deadline + duration,
        actor: actor.to_owned(),
        created_at: now,
        cancelled_at: None,
    })
}

/// Identifiers (host, device and event ids) are 1–128 characters of
/// `A–Z a–z 0–9 . _ : / @ - [ ] , =` (brackets for IPv6 addresses; `,http=` as in an agent's
/// miner address): they are printed in terminals and logs, so nothing that can forge a line or
/// an escape.
pub fn check_id(id: &str, field: &str) -> Result<String, FieldError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '.' | '_' | ':' | '/' | '@' | '-' | '[' | ']' | ',' | '=')
        });
    if ok {
        Ok(id.to_owned())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{:?} is not an id: use 1-128 characters of A-Z a-z 0-9 . _ : / @ - [ ] , =",
                id.chars().take(40).collect::<String>()
            ),
        ))
    }
}

fn device_kind_filter(kind: i32) -> Result<v1::DeviceKind, Status> {
    v1::DeviceKind::try_from(kind)
        .map_err(|_| FieldError::new("kind", format!("unknown device kind {kind}")).into())
}

#[tonic::async_trait]
impl v1::fleet_service_server::FleetService for FleetApi {
    type WatchEventsStream = EventStream;

    async fn get_site_status(
        &self,
        request: Request<v1::GetSiteStatusRequest>,
    ) -> Result<Response<v1::SiteStatus>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        Ok(Response::new(self.ctl.site_status().await?))
    }

    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let req = request.into_inner();
        let kind = device_kind_filter(req.kind)?;
        let mut devices = Vec::new();
        for a in self.ctl.registry.agents() {
            if !req.host_id.is_empty() && req.host_id != a.host_id {
                continue;
            }
            let last_seen = Some(model::timestamp_to_proto(a.last_seen));
            if matches!(kind, v1::DeviceKind::Unspecified | v1::DeviceKind::Host) {
                devices.push(v1::Device {
                    device_id: format!("host/{}", a.host_id),
                    host_id: a.host_id.clone(),
                    kind: v1::DeviceKind::Host as i32,
                    inventory: Some(v1::device::Inventory::Host(a.host.clone())),
                    reading: a.host_reading.map(v1::device::Reading::HostReading),
                    last_seen,
                    ..Default::default()
                });
            }
            if matches!(kind, v1::DeviceKind::Unspecified | v1::DeviceKind::Miner) {
                for slot in a.miners.values() {
                    let (info, obs) = (&slot.info, &slot.obs);
                    devices.push(v1::Device {
                        device_id: info.device_id.clone(),
                        host_id: a.host_id.clone(),
                        kind: v1::DeviceKind::Miner as i32,
                        inventory: Some(v1::device::Inventory::Miner(info.inventory.clone())),
                        reading: obs
                            .as_ref()
                            .map(|o| v1::device::Reading::MinerReading(o.reading.clone())),
                        last_seen: obs
                            .as_ref()
                            .map(|o| model::timestamp_to_proto(o.observed_at)),
                        efficiency_j_per_th: slot.last_mining_j_per_th,
                        ..Default::default()
                    });
                }
            }
            if matches!(kind, v1::DeviceKind::Unspecified | v1::DeviceKind::Gpu) {
                for slot in a.gpus.values() {
                    let (info, obs) = (&slot.info, &slot.obs);
                    devices.push(v1::Device {
                        device_id: info.device_id.clone(),
                        host_id: a.host_id.clone(),
                        kind: v1::DeviceKind::Gpu as i32,
                        inventory: Some(v1::device::Inventory::Gpu(info.inventory.clone())),
                        reading: obs
                            .as_ref()
                            .map(|o| v1::device::Reading::GpuReading(o.reading.clone())),
                        last_seen: obs
                            .as_ref()
                            .map(|o| model::timestamp_to_proto(o.observed_at)),
                        ..Default::default()
                    });
                }
            }
        }
        for d in &mut devices {
            if let Some(di) = self.ctl.ledger.get(&d.device_id) {
                d.intent = Some(di.intent.to_proto());
                d.setting_before_trim_w = di.setting_before_w;
                d.intent_status = di.status.map(|s| v1::IntentStatus {
                    device_id: d.device_id.clone(),
                    generation: di.intent.generation,
                    phase: s.phase.to_proto() as i32,
                    detail: s.detail,
                    observed_power_w: s.observed_power_w,
                    at: Some(model::timestamp_to_proto(s.at)),
                    plan_id: di.intent.plan_id.clone(),
                    plan_phase: di.intent.phase,
                    retrying: s.retrying,
                });
            }
        }
        Ok(Response::new(v1::ListDevicesResponse { devices }))
    }

    async fn get_economics(
        &self,
        request: Request<v1::GetEconomicsRequest>,
    ) -> Result<Response<v1::Economics>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        self.ctl.outlook().economics.map(Response::new).ok_or_else(|| {
            Status::unavailable(
                "the controller has not planned yet (the first round runs within seconds of start)",
            )
        })
    }

    async fn set_override(
        &self,
        request: Request<v1::SetOverrideRequest>,
    ) -> Result<Response<v1::Override>, Status> {
        let who = self.ctl.auth.authorize(&request, Right::Operate)?;
        let req = request.into_inner();
        let o = req
            .r#override
            .as_ref()
            .ok_or_else(|| FieldError::new("override", "required but missing"))?;
        let note = req
            .r#override
            .as_ref()
            .map(|o| o.actor.clone())
            .unwrap_or_default();
        let o = override_from_proto(o, &who.name)?;
        crate::overrides::check_against_fleet(&o, &self.ctl.registry)?;
        let stored = o.clone();
        self.ctl.blocking(move |s| s.put_override(&stored)).await?;
        self.ctl
            .audit(NewAudit {
                kind: "override",
                subject: o.target.clone(),
                actor: o.actor.clone(),
                reason: o.reason.clone(),
                detail: serde_json::json!({
                    "pin": o.pin,
                    "expires_at": o.expires_at,
                    "client_actor": note,
                }),
            })
            .await;
        self.ctl.replan.notify_one();
        Ok(Response::new(override_to_proto(&o)))
    }

    async fn clear_override(
        &self,
        request: Request<v1::ClearOverrideRequest>,
    ) -> Result<Response<v1::ClearOverrideResponse>, Status> {
        let who = self.ctl.auth.authorize(&request, Right::Operate)?;
        let req = request.into_inner();
        let target = model::non_empty(&req.target, "target")?;
        let t = target.clone();
        let cleared = self.ctl.blocking(move |s| s.clear_override(&t)).await?;
        if cleared {
            self.ctl
                .audit(NewAudit {
                    kind: "override",
                    subject: target,
                    actor: who.name,
                    reason: "override cleared".into(),
                    detail: serde_json::json!({ "client_actor": req.actor }),
                })
                .await;
            self.ctl.replan.notify_one();
        }
        Ok(Response::new(v1::ClearOverrideResponse { cleared }))
    }

    async fn list_overrides(
        &self,
        request: Request<v1::ListOverridesRequest>,
    ) -> Result<Response<v1::ListOverridesResponse>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let list = self.ctl.blocking(|s| s.list_overrides(Utc::now())).await?;
        Ok(Response::new(v1::ListOverridesResponse {
            overrides: list.iter().map(override_to_proto).collect(),
        }))
    }

    async fn demand_response(
        &self,
        request: Request<v1::DemandResponseRequest>,
    ) -> Result<Response<v1::DemandResponseEvent>, Status> {
        let who = self.ctl.auth.authorize(&request, Right::Operate)?;
        let req = request.into_inner();
        let now = Utc::now();
        let event = validate_demand_response(&req, now, &who.name)?;
        let stored = event.clone();
        self.ctl
            .blocking(move |s| s.put_demand_response(&stored))
            .await?;
        let reply = self.ctl.dr_to_proto(&event, now, &self.ctl.outlook());
        self.ctl
            .audit(NewAudit {
                kind: "demand_response",
                subject: format!("site/{}", self.ctl.config.site.id),
                actor: event.actor.clone(),
                reason: format!(
                    "demand response {}: reach {:.0} W by {} and hold it until {}{}",
                    event.event_id,
                    event.target_power_w,
                    event.deadline.to_rfc3339(),
                    event.ends_at.to_rfc3339(),
                    if reply.note.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", reply.note)
                    }
                ),
                detail: serde_json::json!({
                    "event": event,
                    "achievable_power_w": reply.achievable_power_w,
                    "client_actor": req.actor,
                }),
            })
            .await;
        self.ctl.replan.notify_one();
        Ok(Response::new(reply))
    }

    async fn cancel_demand_response(
        &self,
        request: Request<v1::CancelDemandResponseRequest>,
    ) -> Result<Response<v1::DemandResponseEvent>, Status> {
        let who = self.ctl.auth.authorize(&request, Right::Operate)?;
        let req = request.into_inner();
        let id = model::non_empty(&req.event_id, "event_id")?;
        let now = Utc::now();
        let i = id.clone();
        let cancelled = self
            .ctl
            .blocking(move |s| s.cancel_demand_response(&i, now))
            .await?;
        let all = self.ctl.blocking(|s| s.list_demand_responses(1000)).await?;
        let Some(event) = all.into_iter().find(|e| e.event_id == id) else {
            return Err(Status::not_found(format!(
                "event_id: no demand-response event `{id}`"
            )));
        };
        if !cancelled {
            return Err(Status::failed_precondition(format!(
                "event_id: demand-response event `{id}` was already cancelled"
            )));
        }
        self.ctl
            .audit(NewAudit {
                kind: "demand_response",
                subject: format!("site/{}", self.ctl.config.site.id),
                actor: who.name,
                reason: format!("demand response {id} cancelled"),
                detail: serde_json::json!({ "client_actor": req.actor }),
            })
            .await;
        self.ctl.replan.notify_one();
        Ok(Response::new(self.ctl.dr_to_proto(
            &event,
            now,
            &self.ctl.outlook(),
        )))
    }

    async fn list_demand_responses(
        &self,
        request: Request<v1::ListDemandResponsesRequest>,
    ) -> Result<Response<v1::ListDemandResponsesResponse>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let limit = match request.into_inner().limit {
            0 => 20,
            n => n.min(1000),
        };
        let now = Utc::now();
        let o = self.ctl.outlook();
        let events = self
            .ctl
            .blocking(move |s| s.list_demand_responses(limit))
            .await?;
        Ok(Response::new(v1::ListDemandResponsesResponse {
            events: events
                .iter()
                .map(|e| self.ctl.dr_to_proto(e, now, &o))
                .collect(),
        }))
    }

    async fn get_plan(
        &self,
        request: Request<v1::GetPlanRequest>,
    ) -> Result<Response<v1::PlanView>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let plan = self.ctl.blocking(|s| s.list_plans(1)).await?.pop();
        Ok(Response::new(match plan {
            Some(p) => crate::planview::plan_view(&p, &self.ctl.ledger),
            None => v1::PlanView::default(),
        }))
    }

    async fn forget_host(
        &self,
        request: Request<v1::ForgetHostRequest>,
    ) -> Result<Response<v1::ForgetHostResponse>, Status> {
        let who = self.ctl.auth.authorize(&request, Right::Operate)?;
        let req = request.into_inner();
        let host = check_id(&req.host_id, "host_id")?;
        let devices = self
            .ctl
            .registry
            .with_agents(|a| a.get(&host).map_or(0, |e| e.miners.len() + e.gpus.len()));
        let forgotten = self.ctl.registry.forget(&host)?;
        if forgotten {
            self.ctl
                .audit(NewAudit {
                    kind: "agent",
                    subject: format!("host/{host}"),
                    actor: who.name,
                    reason: format!(
                        "host forgotten with its {devices} devices: {}",
                        if req.reason.is_empty() {
                            "no reason given"
                        } else {
                            &req.reason
                        }
                    ),
                    detail: serde_json::json!({ "devices": devices }),
                })
                .await;
            self.ctl.replan.notify_one();
        }
        Ok(Response::new(v1::ForgetHostResponse {
            forgotten,
            devices: u32::try_from(devices).unwrap_or(u32::MAX),
        }))
    }

    async fn get_history(
        &self,
        request: Request<v1::GetHistoryRequest>,
    ) -> Result<Response<v1::History>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let req = request.into_inner();
        let since = req
            .since
            .as_ref()
            .map(|t| model::timestamp_from_proto(t, "since"))
            .transpose()?
            .unwrap_or_else(|| Utc::now() - chrono::Duration::hours(1));
        let limit = match req.limit {
            0 => 1000,
            n => n.min(10_000),
        };
        let (site, market) = self
            .ctl
            .blocking(move |s| {
                Ok((
                    s.site_history(since, limit)?,
                    s.market_history(since, limit)?,
                ))
            })
            .await?;
        Ok(Response::new(v1::History {
            site: site
                .into_iter()
                .map(|x| v1::SiteSample {
                    at: Some(model::timestamp_to_proto(x.at)),
                    cap_w: x.cap_w,
                    committed_w: x.committed_w,
                    measured_w: x.measured_w,
                    mining_w: x.mining_w,
                    ai_w: x.ai_w,
                    margin_usd_per_h: x.margin_usd_per_h,
                })
                .collect(),
            market: market
                .into_iter()
                .map(|x| v1::MarketSample {
                    at: Some(model::timestamp_to_proto(x.at)),
                    hashprice_usd_per_ph_day: x.hashprice_usd_per_ph_day,
                    energy_usd_per_mwh: x.energy_usd_per_mwh,
                    ai_usd_per_gpu_hour: x.ai_usd_per_gpu_hour,
                    ai_gpu_demand: x.ai_gpu_demand,
                    usable: x.usable,
                    problems: x.problems,
                })
                .collect(),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let p = self.ctl.blocking(|s| s.get_policy()).await?;
        Ok(Response::new(match p {
            Some(p) => v1::Policy {
                name: p.name,
                document_toml: p.document_toml,
                revision: p.revision,
                updated_at: Some(model::timestamp_to_proto(p.updated_at)),
                actor: p.actor,
            },
            None => v1::Policy {
                name: "economic".into(),
                document_toml: policy::DEFAULT_POLICY.into(),
                revision: 0,
                updated_at: None,
                actor: "default".into(),
            },
        }))
    }

    async fn validate_policy(
        &self,
        request: Request<v1::ValidatePolicyRequest>,
    ) -> Result<Response<v1::ValidatePolicyResponse>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let doc = request.into_inner().document_toml;
        let errors = check_policy_size(&doc)
            .and_then(|()| policy::validate(&doc).map(|_| ()))
            .err()
            .unwrap_or_default();
        Ok(Response::new(v1::ValidatePolicyResponse {
            valid: errors.is_empty(),
            errors,
        }))
    }

    async fn set_policy(
        &self,
        request: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        let who = self.ctl.auth.authorize(&request, Right::Administer)?;
        let req = request.into_inner();
        let checked = check_policy_size(&req.document_toml)
            .and_then(|()| policy::validate(&req.document_toml));
        let doc = match checked {
            Ok(doc) => doc,
            Err(errors) => {
                // A refused change of the site's rules is audited too (issue 11: an oversized
                // or broken policy is refused *and* audited), with who tried; nothing is stored.
                let why = errors.join("; ");
                self.ctl
                    .audit(NewAudit {
                        kind: "policy",
                        subject: format!("site/{}", self.ctl.config.site.id),
                        actor: who.name.clone(),
                        reason: format!(
                            "policy refused: {}",
                            why.chars().take(512).collect::<String>()
                        ),
                        detail: serde_json::json!({
                            "bytes": req.document_toml.len(),
                            "client_actor": req.actor,
                        }),
                    })
                    .await;
                return Err(Status::invalid_argument(format!("document_toml: {why}")));
            }
        };
        let actor = who.name.clone();
        let (name, text, a, expected) = (
            doc.name.clone(),
            req.document_toml.clone(),
            actor.clone(),
            req.expected_revision,
        );
        let p = self
            .ctl
            .blocking(move |s| s.set_policy(&name, &text, &a, expected))
            .await?;
        self.ctl
            .audit(NewAudit {
                kind: "policy",
                subject: format!("site/{}", self.ctl.config.site.id),
                actor,
                reason: format!("policy `{}` set (revision {})", p.name, p.revision),
                detail: serde_json::json!({ "revision": p.revision, "client_actor": req.actor }),
            })
            .await;
        Ok(Response::new(v1::Policy {
            name: p.name,
            document_toml: p.document_toml,
            revision: p.revision,
            updated_at: Some(model::timestamp_to_proto(p.updated_at)),
            actor: p.actor,
        }))
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => n.min(1000),
        };
        let records = self
            .ctl
            .blocking(move |s| s.list_audit(limit, req.before_id, &req.subject, &req.kind))
            .await?;
        Ok(Response::new(v1::ListAuditResponse {
            records: records.iter().map(crate::audit_to_proto).collect(),
        }))
    }

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.ctl.auth.authorize(&request, Right::Read)?;
        let stream = BroadcastStream::new(self.ctl.subscribe()).map(|e| {
            Ok(match e {
                Ok(record) => v1::Event {
                    at: Some(model::timestamp_to_proto(record.at)),
                    event: Some(v1::event::Event::Audit(crate::audit_to_proto(&record))),
                },
                // A watcher that falls behind misses events rather than slowing the controller,
                // and is told how many, in their place.
                Err(BroadcastStreamRecvError::Lagged(count)) => {
                    warn!(missed = count, "A watcher fell behind the event stream");
                    v1::Event {
                        at: Some(model::timestamp_to_proto(Utc::now())),
                        event: Some(v1::event::Event::Missed(v1::EventsMissed { count })),
                    }
                }
            })
        });
        Ok(Response::new(Box::pin(stream) as EventStream))
    }
}
