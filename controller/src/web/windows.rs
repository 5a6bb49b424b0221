//! `GET /api/windows`: the time spans the power chart shades — demand-response events (from
//! ListDemandResponses) and the policy's schedule windows (from GetPolicy, placed in time by the
//! policy's own [`ScheduleWindow::contains`](crate::policy::ScheduleWindow::contains)).

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Duration, DurationRound, Utc};
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_server::FleetService;
use serde::Deserialize;
use serde_json::{Value, json};

use super::caller::Caller;
use super::{Web, WebError};
use crate::policy::ScheduleWindow;
use crate::views;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsQuery {
    /// How far back, minutes (default 60).
    #[serde(default)]
    minutes: Option<u32>,
    /// How far ahead, minutes (default 60).
    #[serde(default)]
    ahead_minutes: Option<u32>,
}

/// The spans in `[from, to)` where `w` holds, to the minute.
pub fn spans(
    w: &ScheduleWindow,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let step = Duration::minutes(1);
    let mut t = from.duration_trunc(step).unwrap_or(from);
    let mut out: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut open: Option<DateTime<Utc>> = None;
    while t < to {
        match (w.contains(t), open) {
            (true, None) => open = Some(t),
            (false, Some(start)) => {
                out.push((start, t));
                open = None;
            }
            _ => {}
        }
        t += step;
    }
    if let Some(start) = open {
        out.push((start, to));
    }
    out
}

pub async fn handler(
    State(web): State<Web>,
    caller: Caller,
    Query(q): Query<WindowsQuery>,
) -> Result<Json<Value>, WebError> {
    let (back, ahead) = (q.minutes.unwrap_or(60), q.ahead_minutes.unwrap_or(60));
    if !(1..=30 * 24 * 60).contains(&back) || ahead > 24 * 60 {
        return Err(WebError::bad_request(
            "minutes must be 1-43200 and ahead_minutes 0-1440",
        ));
    }
    let now = Utc::now();
    let from = now - Duration::minutes(i64::from(back));
    let to = now + Duration::minutes(i64::from(ahead));
    let events = web
        .fleet
        .list_demand_responses(caller.request(v1::ListDemandResponsesRequest { limit: 100 }))
        .await?
        .into_inner()
        .events;
    let dr: Vec<Value> = events
        .iter()
        .map(views::dr_json)
        .filter(|e| {
            // Only events that touch the chart's span.
            let t = |k: &str| {
                e[k].as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Utc))
            };
            let end = t("cancelled_at").or_else(|| t("ends_at"));
            end.is_none_or(|end| end >= from) && t("deadline").is_none_or(|d| d <= to)
        })
        .collect();
    let policy = web
        .fleet
        .get_policy(caller.request(v1::GetPolicyRequest {}))
        .await?
        .into_inner();
    // The stored policy validated when it was set; one that no longer does shades nothing.
    let schedule: Vec<Value> = crate::policy::validate(&policy.document_toml)
        .map(|doc| {
            doc.schedule
                .iter()
                .flat_map(|w| {
                    spans(w, from, to).into_iter().map(|(a, b)| {
                        json!({
                            "name": w.name,
                            "from": a.to_rfc3339(),
                            "to": b.to_rfc3339(),
                            "cap_w": w.cap_w,
                            "curtail_mining": w.curtail_mining,
                            "curtail_groups": w.curtail_groups,
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({
        "from": from.to_rfc3339(),
        "to": to.to_rfc3339(),
        "demand_response": dr,
        "schedule": schedule,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daily_window_is_found_where_its_clock_puts_it() {
        let doc = crate::policy::validate(
            "name = \"p\"\n[[schedule]]\nname = \"peak\"\ntime_zone = \"-05:00\"\nstart = \"15:00\"\nend = \"17:30\"\ncap_w = 1000\n",
        )
        .unwrap();
        let from: DateTime<Utc> = "2026-07-01T12:00:00Z".parse().unwrap();
        let to: DateTime<Utc> = "2026-07-02T12:00:00Z".parse().unwrap();
        let s = spans(&doc.schedule[0], from, to);
        assert_eq!(
            s,
            vec![(
                "2026-07-01T20:00:00Z".parse().unwrap(),
                "2026-07-01T22:30:00Z".parse().unwrap()
            )]
        );
        // A span cut by the chart's end ends there.
        let s = spans(
            &doc.schedule[0],
            from,
            "2026-07-01T21:00:00Z".parse().unwrap(),
        );
        assert_eq!(
            s[0].1,
            "2026-07-01T21:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
