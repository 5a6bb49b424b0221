//! Each phase of an executed plan in the audit log with its timing: when its intents were
//! issued, when each move was confirmed (the agent's word) and when the executor saw the whole
//! phase confirmed, so a move from mining to AI (or back) can be read step by step in
//! `pivotctl history` and measured (docs/BENCHMARKS.md).

use chrono::{DateTime, Utc};
use pivot_proto::model::IntentPhase;
use serde::Serialize;

use crate::Controller;
use crate::executor::ExecPlan;
use crate::planview::target_words;
use crate::store::{DeviceIntent, NewAudit};

/// One move of a phase: when it was issued and when its agent confirmed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoveTiming {
    pub device_id: String,
    pub target: String,
    pub issued_at: Option<DateTime<Utc>>,
    /// The agent's time of its CONFIRMED status.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// Its last status, in words, when it is not confirmed.
    pub outcome: String,
}

/// A phase, from its first intent issued to the moment the executor saw it settle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTiming {
    pub plan_id: String,
    pub phase: usize,
    pub phases: usize,
    pub label: String,
    pub issued_at: Option<DateTime<Utc>>,
    /// The last confirmation among its moves (agents' clocks).
    pub last_confirmed_at: Option<DateTime<Utc>>,
    /// When the executor saw the phase settle (the controller's clock).
    pub settled_at: DateTime<Utc>,
    /// `settled_at − issued_at`: the phase on the controller's clock alone.
    pub seconds: Option<f64>,
    pub moves: Vec<MoveTiming>,
}

/// The timing of `phase` of `plan` from the intents the ledger holds (`intent(device_id)`),
/// counting only the intents this plan issued for that phase. Pure.
pub fn phase_timing(
    plan: &ExecPlan,
    phase: usize,
    intent: impl Fn(&str) -> Option<DeviceIntent>,
    now: DateTime<Utc>,
) -> Option<PhaseTiming> {
    let p = plan.phases.get(phase)?;
    let moves: Vec<MoveTiming> = p
        .moves
        .iter()
        .map(|m| {
            let di = intent(&m.device_id).filter(|d| {
                d.intent.plan_id == plan.plan_id
                    && usize::try_from(d.intent.phase).is_ok_and(|n| n == phase)
                    && d.intent.target == m.target
            });
            let status = di.as_ref().and_then(|d| d.status.as_ref());
            MoveTiming {
                device_id: m.device_id.clone(),
                target: target_words(&m.target),
                issued_at: di.as_ref().map(|d| d.issued_at),
                confirmed_at: status
                    .filter(|s| s.phase == IntentPhase::Confirmed)
                    .map(|s| s.at),
                outcome: match (&di, status) {
                    (None, _) => "not issued".into(),
                    (Some(_), None) => "no status yet".into(),
                    (Some(_), Some(s)) => {
                        let phase = format!("{:?}", s.phase).to_lowercase();
                        format!("{phase}: {}", s.detail)
                    }
                },
            }
        })
        .collect();
    let issued_at = moves.iter().filter_map(|m| m.issued_at).min();
    let last_confirmed_at = moves.iter().filter_map(|m| m.confirmed_at).max();
    Some(PhaseTiming {
        plan_id: plan.plan_id.clone(),
        phase,
        phases: plan.phases.len(),
        label: p.label.clone(),
        issued_at,
        last_confirmed_at,
        settled_at: now,
        seconds: issued_at.map(|t| (now - t).as_seconds_f64()),
        moves,
    })
}

impl PhaseTiming {
    /// The audit line: `phase 2/4 (release hosts to AI jobs: 1 devices) confirmed 0.84 s after it was issued`.
    pub fn words(&self, outcome: &str) -> String {
        let after = self
            .seconds
            .map_or_else(String::new, |s| format!(" {s:.2} s after it was issued"));
        format!(
            "phase {}/{} ({}) {outcome}{after}",
            self.phase + 1,
            self.phases,
            self.label
        )
    }
}

impl Controller {
    /// Writes `phase` of `plan` to the audit log with its timing; `outcome` is `confirmed` or
    /// `stopped`. Called by the executor as each phase settles.
    pub async fn audit_phase(&self, plan: &ExecPlan, phase: usize, outcome: &str) {
        let Some(t) = phase_timing(plan, phase, |id| self.ledger.get(id), Utc::now()) else {
            return;
        };
        if outcome == "confirmed"
            && plan.phases.get(phase).is_some_and(|p| p.sheds)
            && let Some(s) = t.seconds
        {
            self.record_shed_s(s);
        }
        self.audit(NewAudit {
            kind: "plan",
            subject: format!("plan/{}", plan.plan_id),
            actor: "controller".into(),
            reason: t.words(outcome),
            detail: serde_json::json!({
                "phase_outcome": outcome,
                "timing": t,
            }),
        })
        .await;
    }
}

impl Controller {
    /// `plan` is being superseded in `phase`: a shed phase issued and not yet confirmed has taken
    /// at least as long as it has run, and that counts as a measure of shedding here (a site
    /// whose plans keep being replaced before their curtailment confirms would otherwise never
    /// learn how slow it is).
    pub(crate) fn note_superseded_shed(&self, plan: &ExecPlan, phase: usize, now: DateTime<Utc>) {
        if !plan.phases.get(phase).is_some_and(|p| p.sheds) {
            return;
        }
        if let Some(s) =
            phase_timing(plan, phase, |id| self.ledger.get(id), now).and_then(|t| t.seconds)
        {
            self.record_shed_s(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pivot_proto::model::{Intent, MinerTarget, Target, WorkloadState};

    use super::*;
    use crate::executor::{ExecMove, ExecPhase};
    use crate::store::StatusRecord;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn plan() -> ExecPlan {
        let m = |device: &str, target| ExecMove {
            host_id: "rack-1".into(),
            device_id: device.into(),
            target,
            reason: String::new(),
            before_w: None,
            setting_before_w: None,
        };
        ExecPlan {
            plan_id: "p1".into(),
            phases: vec![
                ExecPhase {
                    label: "curtail: 2 devices".into(),
                    moves: vec![
                        m("m1", Target::Miner(MinerTarget::Sleep)),
                        m("m2", Target::Miner(MinerTarget::Sleep)),
                    ],
                    timeout: Duration::from_secs(60),
                    not_before: None,
                    sheds: true,
                },
                ExecPhase {
                    label: "release hosts to AI jobs: 1 devices".into(),
                    moves: vec![m(
                        "host/rack-1",
                        Target::Workload {
                            state: WorkloadState::Released,
                        },
                    )],
                    timeout: Duration::from_secs(60),
                    not_before: None,
                    sheds: false,
                },
            ],
        }
    }

    fn di(
        device: &str,
        phase: u32,
        plan: &str,
        issued: i64,
        confirmed: Option<i64>,
    ) -> DeviceIntent {
        DeviceIntent {
            host_id: "rack-1".into(),
            intent: Intent {
                device_id: device.into(),
                generation: 1,
                lease_expires_at: t(100_000),
                target: Target::Miner(MinerTarget::Sleep),
                reason: String::new(),
                phase,
                plan_id: plan.into(),
            },
            issued_at: t(issued),
            before_w: None,
            setting_before_w: None,
            status: confirmed.map(|c| StatusRecord {
                phase: IntentPhase::Confirmed,
                detail: "physical effect verified".into(),
                retrying: false,
                observed_power_w: None,
                at: t(c),
            }),
        }
    }

    #[test]
    fn a_phase_runs_from_its_first_issue_to_when_it_settled() {
        let p = plan();
        let ledger = |id: &str| match id {
            "m1" => Some(di("m1", 0, "p1", 10, Some(900))),
            "m2" => Some(di("m2", 0, "p1", 12, Some(1_400))),
            _ => None,
        };
        let timing = phase_timing(&p, 0, ledger, t(1_510)).unwrap();
        assert_eq!(timing.issued_at, Some(t(10)));
        assert_eq!(timing.last_confirmed_at, Some(t(1_400)));
        assert_eq!(timing.seconds, Some(1.5));
        assert_eq!(
            timing.words("confirmed"),
            "phase 1/2 (curtail: 2 devices) confirmed 1.50 s after it was issued"
        );
        assert!(phase_timing(&p, 7, ledger, t(0)).is_none());
    }

    #[test]
    fn intents_of_another_plan_or_phase_do_not_count() {
        let p = plan();
        let ledger = |id: &str| match id {
            "m1" => Some(di("m1", 0, "p0", 10, Some(900))),
            "m2" => Some(di("m2", 1, "p1", 12, None)),
            _ => None,
        };
        let timing = phase_timing(&p, 0, ledger, t(2_000)).unwrap();
        assert_eq!(timing.issued_at, None);
        assert_eq!(timing.seconds, None);
        assert!(timing.moves.iter().all(|m| m.outcome == "not issued"));
        assert_eq!(
            timing.words("stopped"),
            "phase 1/2 (curtail: 2 devices) stopped"
        );
    }
}
