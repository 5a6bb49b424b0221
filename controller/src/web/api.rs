//! The dashboard's read endpoints: each one FleetService call, rendered by [`views`].

use axum::Json;
use axum::extract::{Query, State};
use chrono::Utc;
use pivot_proto::model;
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_server::FleetService;
use serde::Deserialize;
use serde_json::Value;

use super::caller::Caller;
use super::{Web, WebError};
use crate::views;

type Answer = Result<Json<Value>, WebError>;

/// `GET /api/status`: GetSiteStatus, as `pivotctl status --json` prints it.
pub async fn status(State(web): State<Web>, caller: Caller) -> Answer {
    let s = web
        .fleet
        .get_site_status(caller.request(v1::GetSiteStatusRequest {}))
        .await?;
    Ok(Json(views::status_json(s.get_ref())))
}

/// `GET /api/economics`: GetEconomics, as `pivotctl economics --json` prints it.
pub async fn economics(State(web): State<Web>, caller: Caller) -> Answer {
    let e = web
        .fleet
        .get_economics(caller.request(v1::GetEconomicsRequest {}))
        .await?;
    Ok(Json(views::economics_json(e.get_ref())))
}

/// `GET /api/plan`: GetPlan, as `pivotctl plan --json` prints it.
pub async fn plan(State(web): State<Web>, caller: Caller) -> Answer {
    let p = web
        .fleet
        .get_plan(caller.request(v1::GetPlanRequest {}))
        .await?;
    Ok(Json(views::plan_json(p.get_ref())))
}

/// `GET /api/devices`: ListDevices, as `pivotctl devices --json` prints it.
pub async fn devices(State(web): State<Web>, caller: Caller) -> Answer {
    let list = web
        .fleet
        .list_devices(caller.request(v1::ListDevicesRequest::default()))
        .await?;
    Ok(Json(Value::Array(
        list.get_ref()
            .devices
            .iter()
            .map(views::device_json)
            .collect(),
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// How far back, minutes (default 60, at most 30 days).
    #[serde(default)]
    minutes: Option<u32>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/history?minutes=60`: GetHistory (site and market samples).
pub async fn history(
    State(web): State<Web>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> Answer {
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=30 * 24 * 60).contains(&minutes) {
        return Err(WebError::bad_request(format!(
            "minutes: must be between 1 and 43200, got {minutes}"
        )));
    }
    let since = Utc::now() - chrono::Duration::minutes(i64::from(minutes));
    let h = web
        .fleet
        .get_history(caller.request(v1::GetHistoryRequest {
            since: Some(model::timestamp_to_proto(since)),
            limit: q.limit.unwrap_or(0),
        }))
        .await?;
    Ok(Json(views::history_json(h.get_ref())))
}

/// `GET /api/overrides`: ListOverrides.
pub async fn overrides(State(web): State<Web>, caller: Caller) -> Answer {
    let list = web
        .fleet
        .list_overrides(caller.request(v1::ListOverridesRequest {}))
        .await?;
    Ok(Json(Value::Array(
        list.get_ref()
            .overrides
            .iter()
            .map(views::override_json)
            .collect(),
    )))
}

/// `GET /api/dr`: ListDemandResponses (the latest 20).
pub async fn demand_responses(State(web): State<Web>, caller: Caller) -> Answer {
    let list = web
        .fleet
        .list_demand_responses(caller.request(v1::ListDemandResponsesRequest { limit: 20 }))
        .await?;
    Ok(Json(Value::Array(
        list.get_ref().events.iter().map(views::dr_json).collect(),
    )))
}

/// The audit kinds that tell what the controller decided and what came of it.
const DECISION_KINDS: [&str; 4] = ["decision", "plan", "demand_response", "override"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionsQuery {
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/decisions?limit=30`: the latest decisions, plan outcomes, DR events and overrides
/// from the audit log (ListAudit), newest first.
pub async fn decisions(
    State(web): State<Web>,
    caller: Caller,
    Query(q): Query<DecisionsQuery>,
) -> Answer {
    let limit = q.limit.unwrap_or(30).clamp(1, 200);
    let mut records = Vec::new();
    for kind in DECISION_KINDS {
        let list = web
            .fleet
            .list_audit(caller.request(v1::ListAuditRequest {
                limit,
                before_id: 0,
                subject: String::new(),
                kind: kind.into(),
            }))
            .await?;
        records.extend(list.into_inner().records);
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.id));
    records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Json(Value::Array(
        records.iter().map(views::audit_json).collect(),
    )))
}
