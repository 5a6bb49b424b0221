//! The grid side of the simulated site: the trace's lower caps (a demand-response deployment,
//! a 4CP-style peak window) announced to the controller through FleetService's
//! `DemandResponse` a notice period ahead, as an operator or a utility signal would, with the
//! deadline and duration mapped onto the wall clock.

use chrono::{Duration, Utc};
use pivot_proto::model;
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::Channel;

use crate::narrator::{TraceTimes, power};
use crate::scenario::CapWindow;

/// The request for one window, announced at wall time `now`: reach the target by the window's
/// start (or at once, when that has passed) and hold it to the window's end.
pub fn request(
    w: &CapWindow,
    times: &TraceTimes,
    now: chrono::DateTime<Utc>,
) -> v1::DemandResponseRequest {
    let deadline = times.clock.wall_time(w.start).max(now);
    let ends = times
        .clock
        .wall_time(w.end)
        .max(deadline + Duration::milliseconds(1));
    let duration = (ends - deadline)
        .to_std()
        .unwrap_or(std::time::Duration::from_millis(1));
    v1::DemandResponseRequest {
        target_power_w: w.target_power_w,
        deadline: Some(model::timestamp_to_proto(deadline)),
        duration: Some(model::duration_to_proto(duration)),
        event_id: w.event_id(),
        actor: "pivot-site: the trace's grid signal".into(),
    }
}

/// Announces each window `notice` of trace time before it starts, printing what it announced.
pub async fn announce(
    mut client: FleetServiceClient<Channel>,
    windows: Vec<CapWindow>,
    times: TraceTimes,
    notice: Duration,
) {
    for w in windows {
        let due = times.clock.wall_time(w.start - notice);
        if let Ok(wait) = (due - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
        }
        let now = Utc::now();
        let req = request(&w, &times, now);
        let id = req.event_id.clone();
        match client.demand_response(req).await {
            Ok(_) => println!(
                "{}  grid: demand response {id}: the site must stay under {} from {} to {}",
                times.at_wall(now),
                power(w.target_power_w),
                times.label(w.start),
                times.label(w.end),
            ),
            Err(e) => eprintln!(
                "pivot-site: the controller refused demand response {id}: {}",
                e.message()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SiteClock;

    fn at(s: &str) -> chrono::DateTime<Utc> {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_window_maps_to_a_wall_clock_event() {
        let times = TraceTimes {
            clock: SiteClock::new(
                at("2030-01-01T00:00:00Z"),
                at("2026-07-14T05:00:00Z"),
                360.0,
            )
            .unwrap(),
            zone: chrono_tz::UTC,
        };
        let w = CapWindow {
            target_power_w: 380_000.0,
            start: at("2026-07-14T06:00:00Z"),
            end: at("2026-07-14T07:00:00Z"),
        };
        let r = request(&w, &times, at("2030-01-01T00:00:08Z"));
        // One trace hour is ten wall seconds.
        assert_eq!(
            r.deadline.unwrap().seconds,
            at("2030-01-01T00:00:10Z").timestamp()
        );
        assert_eq!(r.duration.unwrap().seconds, 10);
        assert_eq!(r.event_id, "trace-cap-20260714T0600Z");
        // Announced after its start: reach it at once, still hold it to the end.
        let late = request(&w, &times, at("2030-01-01T00:00:15Z"));
        assert_eq!(
            late.deadline.unwrap().seconds,
            at("2030-01-01T00:00:15Z").timestamp()
        );
        assert_eq!(late.duration.unwrap().seconds, 5);
    }
}
