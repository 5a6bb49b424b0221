//! A stored plan as the API shows it: its phases, each move with where its intent stands, and
//! the decisions in plain words.

use pivot_proto::model::{IntentPhase, MinerTarget, Target, WorkloadState};
use pivot_proto::v1;

use crate::executor::ExecPlan;
use crate::intents::Ledger;
use crate::store::{PlanState, StoredPlan};

/// A target in words, as pivotctl and the dashboard print it.
pub fn target_words(t: &Target) -> String {
    match t {
        Target::Miner(MinerTarget::Sleep) => "asleep".into(),
        Target::Miner(MinerTarget::Run {
            power_target_w: None,
        }) => "mining".into(),
        Target::Miner(MinerTarget::Run {
            power_target_w: Some(w),
        }) => format!("mining at {w} W"),
        Target::Gpu { power_cap_w } => format!("cap {power_cap_w} W"),
        Target::Workload {
            state: WorkloadState::Released,
        } => "released to AI jobs".into(),
        Target::Workload {
            state: WorkloadState::Drained,
        } => "drained".into(),
    }
}

fn phase_word(p: IntentPhase) -> &'static str {
    match p {
        IntentPhase::Pending => "pending",
        IntentPhase::Applied => "applied",
        IntentPhase::Confirmed => "confirmed",
        IntentPhase::Failed => "failed",
        IntentPhase::Rejected => "rejected",
    }
}

fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The view of `p`, with each move's status from the ledger.
pub fn plan_view(p: &StoredPlan, ledger: &Ledger) -> v1::PlanView {
    let exec: Option<ExecPlan> = p
        .document
        .get("exec")
        .and_then(|e| serde_json::from_value(e.clone()).ok());
    let committed: Vec<f64> = p
        .document
        .get("phase_committed_w")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    let current = usize::try_from(p.current_phase).unwrap_or(usize::MAX);
    let phases = exec
        .map(|e| {
            e.phases
                .iter()
                .enumerate()
                .map(|(i, ph)| {
                    let state = match (p.state, i.cmp(&current)) {
                        (_, std::cmp::Ordering::Less) | (PlanState::Completed, _) => "done",
                        (PlanState::Executing, std::cmp::Ordering::Equal) => "executing",
                        (PlanState::Stopped, std::cmp::Ordering::Equal) => "stopped",
                        _ => "waiting",
                    };
                    v1::PlanPhase {
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        label: ph.label.clone(),
                        state: state.into(),
                        committed_w: committed.get(i).copied().unwrap_or_default(),
                        moves: ph
                            .moves
                            .iter()
                            .map(|m| {
                                let di = ledger.get(&m.device_id).filter(|d| {
                                    d.intent.plan_id == e.plan_id
                                        && usize::try_from(d.intent.phase).is_ok_and(|x| x == i)
                                });
                                let issued = di.is_some();
                                let (status, detail) = match di.and_then(|d| d.status) {
                                    Some(s) => (phase_word(s.phase).to_owned(), s.detail),
                                    None if issued => ("sent".into(), String::new()),
                                    None => (
                                        "waiting".into(),
                                        ph.not_before
                                            .filter(|_| i == current)
                                            .map(|t| format!("not before {}", t.to_rfc3339()))
                                            .unwrap_or_default(),
                                    ),
                                };
                                v1::PlanMove {
                                    device_id: m.device_id.clone(),
                                    host_id: m.host_id.clone(),
                                    from: p
                                        .document
                                        .get("from")
                                        .and_then(|f| f.get(&m.device_id))
                                        .and_then(serde_json::Value::as_str)
                                        .unwrap_or_default()
                                        .to_owned(),
                                    to: target_words(&m.target),
                                    reason: m.reason.clone(),
                                    status,
                                    detail,
                                }
                            })
                            .collect(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    v1::PlanView {
        summary: Some(crate::plan_summary(&p.header())),
        phases,
        decisions: strings(p.document.get("decisions")),
        cap_w: p
            .document
            .get("cap_w")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_default(),
        cap_reason: p
            .document
            .get("cap_reason")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        exists: true,
    }
}
