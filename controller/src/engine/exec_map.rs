//! A planner's plan as the executor and the store see it: phases of moves with their timeouts
//! and start times, and the document `pivotctl plan` and the dashboard show.

use std::time::Duration;

use serde_json::json;

use super::EngineConfig;
use crate::executor::{ExecMove, ExecPhase, ExecPlan};
use crate::planner::{Limit, Phase, PhaseKind, Plan, PlanInput, Reason};
use crate::planview::target_words;

fn timeout(kind: PhaseKind, phase: &Phase, c: &EngineConfig) -> Duration {
    let workload = phase
        .moves
        .iter()
        .any(|m| matches!(m.to, pivot_proto::model::Target::Workload { .. }));
    let s = match kind {
        _ if workload => c.workload_timeout_s,
        PhaseKind::Curtail => c.curtail_timeout_s,
        PhaseKind::LowerGpuCaps => c.gpu_timeout_s,
        PhaseKind::Grant => c.grant_timeout_s.max(c.gpu_timeout_s),
        PhaseKind::ReleaseHosts => c.workload_timeout_s,
    };
    Duration::from_secs(s)
}

fn label(p: &Phase) -> String {
    let what = match p.kind {
        PhaseKind::Curtail => "curtail",
        PhaseKind::LowerGpuCaps => "lower GPU caps",
        PhaseKind::Grant => "grant",
        PhaseKind::ReleaseHosts => "release hosts to AI jobs",
    };
    format!("{what}: {} devices", p.moves.len())
}

fn reason_words(r: &Reason) -> String {
    match r {
        Reason::Economic {
            value_usd_per_mwh,
            energy_usd_per_mwh,
            margin_usd_per_mwh,
            ..
        } => format!(
            "value {value_usd_per_mwh:.0} - energy {energy_usd_per_mwh:.0} = margin {margin_usd_per_mwh:.0} USD/MWh"
        ),
        Reason::Cap {
            limit_w,
            margin_usd_per_mwh,
        } => format!(
            "cap {:.0} kW, margin {margin_usd_per_mwh:.0} USD/MWh",
            limit_w / 1e3
        ),
        Reason::Restore { .. } => "room under the cap again".into(),
        Reason::AiDemand {
            demand_gpus,
            hosts_kept,
        } => format!(
            "AI demand {} GPUs, {hosts_kept} hosts kept",
            demand_gpus.map_or_else(|| "all".to_owned(), |d| d.to_string())
        ),
        Reason::Schedule => "schedule window".into(),
        Reason::Pin => "operator override".into(),
        Reason::Firm => "firm AI contract".into(),
        Reason::SafeMode => "no usable market: safe policy".into(),
    }
}

/// The executor's plan: the planner's phases in order, with a timeout each.
pub fn exec_plan(plan: &Plan, c: &EngineConfig) -> ExecPlan {
    ExecPlan {
        plan_id: plan.plan_id.clone(),
        phases: plan
            .phases
            .iter()
            .map(|p| ExecPhase {
                label: label(p),
                moves: p
                    .moves
                    .iter()
                    .map(|m| ExecMove {
                        host_id: m.host_id.clone(),
                        device_id: m.device_id.clone(),
                        target: m.to,
                        reason: reason_words(&m.reason),
                        before_w: Some(m.power_before_w),
                        setting_before_w: m.setting_before_w,
                    })
                    .collect(),
                timeout: timeout(p.kind, p, c),
                not_before: p.not_before,
                sheds: p.kind.releases_power(),
            })
            .collect(),
    }
}

/// Why the cap in force is what it is, in words.
pub fn cap_reason(l: &Limit) -> String {
    match &l.source {
        crate::planner::CapSource::Site => "site cap minus reserve".into(),
        crate::planner::CapSource::DemandResponse { event_id } => {
            format!("demand response {event_id}")
        }
        crate::planner::CapSource::Schedule { window } => format!("schedule window {window}"),
    }
}

/// The stored plan document: the planner's plan, the decisions in words, the cap and why, each
/// phase's committed power and each moved device's state before the move.
pub fn plan_document(plan: &Plan, input: &PlanInput) -> serde_json::Value {
    let from: serde_json::Map<String, serde_json::Value> = plan
        .moves()
        .map(|(_, m)| {
            (
                m.device_id.clone(),
                json!(
                    m.from
                        .as_ref()
                        .map_or_else(|| "unknown".to_owned(), target_words)
                ),
            )
        })
        .collect();
    let mut decisions: Vec<String> = plan.explanations.iter().map(|e| e.text.clone()).collect();
    decisions.extend(plan.warnings.iter().map(|w| format!("warning: {w}")));
    json!({
        "plan": plan,
        "decisions": decisions,
        "reason": decisions.first().cloned().unwrap_or_default(),
        "cap_w": plan.limit.cap_w,
        "limit_w": plan.limit.limit_w,
        "cap_reason": cap_reason(&plan.limit),
        "phase_committed_w": plan.phases.iter().map(|p| p.committed_w).collect::<Vec<_>>(),
        "from": from,
        "devices": input.miners.len() + input.gpu_hosts.iter().map(|h| h.gpus.len()).sum::<usize>(),
    })
}
