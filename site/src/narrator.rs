//! What the site prints while it runs: every decision the controller writes to its audit log,
//! as it arrives on `WatchEvents`, with the trace time it was taken at; and once an hour of
//! trace time, a line on where the site stands (from `GetSiteStatus`).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use pivot_proto::v1;
use pivot_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::Channel;

use crate::clock::SiteClock;
use crate::scheduler::QueueSummary;
use crate::workload::QueueView;

/// Formats trace times in the site's time zone.
#[derive(Debug, Clone)]
pub struct TraceTimes {
    pub clock: SiteClock,
    pub zone: Tz,
}

impl TraceTimes {
    /// "Tue 14:05": the weekday tells the two days of a 48-hour trace apart.
    pub fn label(&self, trace: DateTime<Utc>) -> String {
        trace
            .with_timezone(&self.zone)
            .format("%a %H:%M")
            .to_string()
    }

    /// The label of the trace time at wall time `wall`.
    pub fn at_wall(&self, wall: DateTime<Utc>) -> String {
        self.label(self.clock.trace_time(wall))
    }
}

/// The line for an audit record, if it is a decision: the planner's own sentence (what moved,
/// why, the margin it gains or saves per hour), control characters replaced.
pub fn decision_line(times: &TraceTimes, record: &v1::AuditRecord) -> Option<String> {
    if record.kind != "decision" {
        return None;
    }
    let at = record
        .at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))?;
    let reason: String = record
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(format!("{}  {reason}", times.at_wall(at)))
}

/// "833 kW", "1.2 MW".
pub fn power(w: f64) -> String {
    pivot_controller::planner::explain::watts(w)
}

/// The hourly line: prices, the AI demand the controller read, where the power goes, the cap,
/// the margin, and the SIMULATED workload manager's queue.
pub fn status_line(
    times: &TraceTimes,
    at_wall: DateTime<Utc>,
    s: &v1::SiteStatus,
    queue: Option<QueueSummary>,
) -> String {
    let e = s.economics.clone().unwrap_or_default();
    let demand = e
        .ai_gpu_demand
        .map_or_else(|| "all GPUs".to_owned(), |d| format!("{d} GPUs"));
    let margin = s
        .margin_usd_per_h
        .map_or_else(|| "no market".to_owned(), |m| format!("{m:.0} USD/h"));
    let queue = queue.map_or_else(String::new, |q| format!(" │ SIMULATED {q}"));
    format!(
        "{} ── energy {:.0} USD/MWh, hashprice {:.1} USD/PH/day, AI {:.2} USD/GPU-h for {demand} │ \
         mining {} ({} of {} miners), AI {} ({} of {} GPU hosts) │ cap {} ({}) │ margin {margin}{queue}",
        times.at_wall(at_wall),
        e.energy_price_usd_per_mwh,
        e.hashprice_usd_per_ph_day,
        e.ai_spot_usd_per_gpu_hour,
        power(s.mining_power_w),
        s.miners_mining,
        s.miners_total,
        power(s.ai_power_w),
        s.gpu_hosts_serving,
        s.gpu_hosts_total,
        power(s.cap_in_force_w),
        s.cap_reason,
    )
}

/// Prints every decision as it is audited, until the stream ends.
pub async fn decisions(mut client: FleetServiceClient<Channel>, times: TraceTimes) {
    let stream = client.watch_events(v1::WatchEventsRequest {}).await;
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(e) => {
            eprintln!(
                "pivot-site: cannot follow the controller's events: {}",
                e.message()
            );
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(v1::Event {
                event: Some(v1::event::Event::Audit(r)),
                ..
            })) => {
                if let Some(line) = decision_line(&times, &r) {
                    println!("{line}");
                }
            }
            Ok(Some(v1::Event {
                event: Some(v1::event::Event::Missed(m)),
                ..
            })) => {
                eprintln!(
                    "pivot-site: {} events not narrated (the narrator fell behind); `pivotctl audit` lists them",
                    m.count
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                eprintln!(
                    "pivot-site: the controller's event stream ended: {}",
                    e.message()
                );
                return;
            }
        }
    }
}

/// Prints a status line at every whole hour of trace time until `end` (trace time).
pub async fn hourly(
    mut client: FleetServiceClient<Channel>,
    times: TraceTimes,
    end: DateTime<Utc>,
    queue: Option<QueueView>,
) {
    let mut hour = next_hour(times.clock.trace_start());
    while hour < end {
        let due = times.clock.wall_time(hour);
        if let Ok(wait) = (due - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
        }
        match client.get_site_status(v1::GetSiteStatusRequest {}).await {
            Ok(s) => println!(
                "{}",
                status_line(
                    &times,
                    due,
                    &s.into_inner(),
                    queue.as_ref().map(QueueView::summary)
                )
            ),
            Err(e) => eprintln!("pivot-site: site status: {}", e.message()),
        }
        hour += chrono::Duration::hours(1);
    }
}

fn next_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp();
    let next = (secs.div_euclid(3600) + 1) * 3600;
    DateTime::from_timestamp(next, 0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn times() -> TraceTimes {
        TraceTimes {
            clock: SiteClock::new(
                at("2030-01-01T00:00:00Z"),
                at("2026-07-14T05:00:00Z"),
                288.0,
            )
            .unwrap(),
            zone: chrono_tz::America::Chicago,
        }
    }

    #[test]
    fn a_decision_is_printed_at_its_trace_time_in_the_sites_zone() {
        let record = v1::AuditRecord {
            id: 7,
            // 5 wall minutes in: 24 h of trace, midnight in Chicago the next day.
            at: Some(prost_types::Timestamp {
                seconds: at("2030-01-01T00:05:00Z").timestamp(),
                nanos: 0,
            }),
            kind: "decision".into(),
            subject: "plan/x".into(),
            actor: "controller".into(),
            reason: "energy 212 USD/MWh > S19j Pro breakeven 64: sleeping 60 miners (184 kW), saves 31 USD/h\n".into(),
            detail_json: "{}".into(),
        };
        assert_eq!(
            decision_line(&times(), &record).unwrap(),
            "Wed 00:00  energy 212 USD/MWh > S19j Pro breakeven 64: sleeping 60 miners (184 kW), saves 31 USD/h "
        );
        let status = v1::AuditRecord {
            kind: "status".into(),
            ..record
        };
        assert_eq!(decision_line(&times(), &status), None);
    }

    #[test]
    fn the_hourly_line_says_the_demand_read_and_the_simulated_queue() {
        let status = v1::SiteStatus {
            economics: Some(v1::Economics {
                ai_gpu_demand: Some(56),
                ..v1::Economics::default()
            }),
            ..v1::SiteStatus::default()
        };
        let queue = QueueSummary {
            running_jobs: 5,
            running_gpus: 40,
            pending_jobs: 2,
            pending_gpus: 16,
        };
        let line = status_line(&times(), at("2030-01-01T00:05:00Z"), &status, Some(queue));
        assert!(line.starts_with("Wed 00:00 ── "), "{line}");
        assert!(line.contains("for 56 GPUs"), "{line}");
        assert!(
            line.ends_with(" │ SIMULATED jobs: 5 running (40 GPUs), 2 pending (16 GPUs)"),
            "{line}"
        );
        let without = status_line(&times(), at("2030-01-01T00:05:00Z"), &status, None);
        assert!(!without.contains("SIMULATED"), "{without}");
    }

    #[test]
    fn hours_start_at_the_next_whole_hour() {
        assert_eq!(
            next_hour(at("2026-07-14T05:00:00Z")),
            at("2026-07-14T06:00:00Z")
        );
        assert_eq!(
            next_hour(at("2026-07-14T05:59:59Z")),
            at("2026-07-14T06:00:00Z")
        );
    }
}
