//! The dashboard's actions: curtail and resume, pin and clear an override, start and cancel a
//! demand-response event — each one FleetService call, so the role check, the validation against
//! the fleet and the audit record are the gRPC API's own.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use chrono::Utc;
use pivot_proto::model;
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_server::FleetService;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::caller::Caller;
use super::{Web, WebError};
use crate::views;

type Answer = Result<Json<Value>, WebError>;

/// What the audit log records as the client's own note on who acted.
const CLIENT: &str = "web dashboard";

/// The body as `T`, or a 400 naming the field serde could not read.
fn body<T: DeserializeOwned>(b: Result<Json<T>, JsonRejection>) -> Result<T, WebError> {
    b.map(|Json(t)| t)
        .map_err(|e| WebError::bad_request(format!("request body: {}", e.body_text())))
}

/// A pin as people ask for one — the page sends `"sleep"`, `"run"`, `"drain"`, `"release"`,
/// `{"power_target_w": 3000}` or `{"gpu_cap_w": 300}`; pivotctl's flags make the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinBody {
    Sleep,
    Run,
    PowerTargetW(u32),
    GpuCapW(u32),
    Drain,
    Release,
}

impl PinBody {
    pub fn to_proto(self) -> v1::r#override::Pin {
        use v1::r#override::Pin;
        let miner = |mode: v1::MinerMode, power_target_w| {
            Pin::Miner(v1::MinerTarget {
                mode: mode as i32,
                power_target_w,
            })
        };
        let workload = |state: v1::WorkloadState| {
            Pin::Workload(v1::WorkloadTarget {
                state: state as i32,
            })
        };
        match self {
            PinBody::Sleep => miner(v1::MinerMode::Sleep, None),
            PinBody::Run => miner(v1::MinerMode::Run, None),
            PinBody::PowerTargetW(w) => miner(v1::MinerMode::Run, Some(w)),
            PinBody::GpuCapW(w) => Pin::Gpu(v1::GpuTarget { power_cap_w: w }),
            PinBody::Drain => workload(v1::WorkloadState::Drained),
            PinBody::Release => workload(v1::WorkloadState::Released),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOverride {
    /// A device id, `host/<host_id>`, or `miners` (every miner: curtail / resume).
    target: String,
    pin: PinBody,
    /// Until then; until cleared when absent.
    #[serde(default)]
    expires_in_s: Option<u64>,
    #[serde(default)]
    reason: String,
}

/// `now + seconds` as a timestamp, or a 400 naming `field`.
fn in_future(seconds: u64, field: &str) -> Result<prost_types::Timestamp, WebError> {
    let t = i64::try_from(seconds)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| Utc::now().checked_add_signed(d))
        .ok_or_else(|| WebError::bad_request(format!("{field}: {seconds} s is too far ahead")))?;
    Ok(model::timestamp_to_proto(t))
}

/// `POST /api/overrides`: SetOverride.
pub async fn set_override(
    State(web): State<Web>,
    caller: Caller,
    headers: HeaderMap,
    b: Result<Json<SetOverride>, JsonRejection>,
) -> Answer {
    caller.check_csrf(&headers)?;
    let b = body(b)?;
    let expires_at = b
        .expires_in_s
        .map(|s| in_future(s, "expires_in_s"))
        .transpose()?;
    let reason = if b.reason.trim().is_empty() {
        format!("set from the dashboard by {}", caller.who.name)
    } else {
        b.reason
    };
    let o = web
        .fleet
        .set_override(caller.request(v1::SetOverrideRequest {
            r#override: Some(v1::Override {
                target: b.target,
                pin: Some(b.pin.to_proto()),
                expires_at,
                reason,
                actor: CLIENT.into(),
                created_at: None,
            }),
        }))
        .await?;
    Ok(Json(views::override_json(o.get_ref())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearOverride {
    target: String,
}

/// `POST /api/overrides/clear`: ClearOverride (resume is clearing `miners`).
pub async fn clear_override(
    State(web): State<Web>,
    caller: Caller,
    headers: HeaderMap,
    b: Result<Json<ClearOverride>, JsonRejection>,
) -> Answer {
    caller.check_csrf(&headers)?;
    let b = body(b)?;
    let r = web
        .fleet
        .clear_override(caller.request(v1::ClearOverrideRequest {
            target: b.target.clone(),
            actor: CLIENT.into(),
        }))
        .await?;
    Ok(Json(serde_json::json!({
        "target": b.target,
        "cleared": r.get_ref().cleared,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartDr {
    target_power_w: f64,
    /// The target must be reached this long from now.
    within_s: u64,
    /// And held this long after the deadline.
    duration_s: u64,
    #[serde(default)]
    event_id: String,
}

/// `POST /api/dr`: DemandResponse.
pub async fn start_dr(
    State(web): State<Web>,
    caller: Caller,
    headers: HeaderMap,
    b: Result<Json<StartDr>, JsonRejection>,
) -> Answer {
    caller.check_csrf(&headers)?;
    let b = body(b)?;
    let e = web
        .fleet
        .demand_response(caller.request(v1::DemandResponseRequest {
            target_power_w: b.target_power_w,
            deadline: Some(in_future(b.within_s, "within_s")?),
            duration: Some(model::duration_to_proto(std::time::Duration::from_secs(
                b.duration_s,
            ))),
            event_id: b.event_id,
            actor: CLIENT.into(),
        }))
        .await?;
    Ok(Json(views::dr_json(e.get_ref())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelDr {
    event_id: String,
}

/// `POST /api/dr/cancel`: CancelDemandResponse.
pub async fn cancel_dr(
    State(web): State<Web>,
    caller: Caller,
    headers: HeaderMap,
    b: Result<Json<CancelDr>, JsonRejection>,
) -> Answer {
    caller.check_csrf(&headers)?;
    let b = body(b)?;
    let e = web
        .fleet
        .cancel_demand_response(caller.request(v1::CancelDemandResponseRequest {
            event_id: b.event_id,
            actor: CLIENT.into(),
        }))
        .await?;
    Ok(Json(views::dr_json(e.get_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_read_as_the_page_writes_them() {
        let p: PinBody = serde_json::from_str("\"sleep\"").unwrap();
        assert_eq!(p, PinBody::Sleep);
        let p: PinBody = serde_json::from_str("{\"power_target_w\": 3000}").unwrap();
        assert_eq!(p.to_proto(), {
            v1::r#override::Pin::Miner(v1::MinerTarget {
                mode: v1::MinerMode::Run as i32,
                power_target_w: Some(3000),
            })
        });
        assert!(serde_json::from_str::<PinBody>("\"explode\"").is_err());
        assert!(serde_json::from_str::<PinBody>("{\"gpu_cap_w\": -5}").is_err());
    }

    #[test]
    fn a_far_future_is_refused_not_wrapped() {
        let e = in_future(u64::MAX, "within_s").unwrap_err();
        assert!(e.message.contains("within_s"), "{}", e.message);
        assert!(in_future(60, "within_s").is_ok());
    }
}
