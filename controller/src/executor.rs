//! Execution: a plan's phases sent to the agents in order, each confirmed before the next.
//!
//! The decision is the pure [`next_step`]: given the plan, which phase it is in, and where each
//! move of that phase stands (from the intents' statuses), it says what to do — issue the
//! phase's intents, wait, advance, finish, or stop. [`run`] executes those steps: it writes
//! intents to the store before sending them, sends them down the agents' sessions, records the
//! plan's progress, and renews the leases of the intents the controller stands behind.
//!
//! Break-before-make is the planner's order of phases; the executor keeps it by starting phase
//! N+1 only when every move of phase N is confirmed. A move that fails for good (rejected, failed
//! without retry, or not confirmed within the phase's timeout) stops the plan where it is — power
//! not yet granted stays not granted — and the failed devices are remembered so the next plan
//! works around them (the next device in merit order is curtailed in their place).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_proto::model::{self, Intent, IntentPhase, Target};
use pivot_proto::v1;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Controller;
use crate::intents::{ChangedSince, Ledger, NewIntent};
use crate::store::{DeviceIntent, NewAudit, PlanState, StoredPlan};

/// One device's move in a phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecMove {
    pub host_id: String,
    /// Site-wide device id (`host/<host_id>` for a host's workload).
    pub device_id: String,
    pub target: Target,
    pub reason: String,
    /// What the device is committed at before the move, W.
    pub before_w: Option<f64>,
    /// A miner's first trim: the owner's setting to keep for its restore, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting_before_w: Option<f64>,
}

/// A group of moves sent together and confirmed together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecPhase {
    /// What the phase does, in words ("sleep 120 miners", "raise GPU caps on gpu-07").
    pub label: String,
    pub moves: Vec<ExecMove>,
    /// How long the phase may take before its unconfirmed moves count as failed.
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Not to be issued before then (the site's ramp limit staggers grants).
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// It releases power (curtail, lower caps): its duration is a measure of how long shedding
    /// takes here ([`crate::shed_time`]).
    #[serde(default)]
    pub sheds: bool,
}

/// A plan as the executor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecPlan {
    pub plan_id: String,
    pub phases: Vec<ExecPhase>,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Where one move of the current phase stands.
#[derive(Debug, Clone, PartialEq)]
pub enum MoveState {
    /// No intent for it has been issued by this plan and phase yet.
    NotIssued,
    /// Issued; the agent has not confirmed it (pending, applied, or failed and retrying).
    Waiting {
        issued_at: DateTime<Utc>,
    },
    Confirmed,
    /// Rejected, or failed and not retrying: final for this generation.
    Failed {
        detail: String,
    },
}

/// The progress of the plan in execution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub phase: usize,
}

/// What the executor does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Issue these moves (indexes into the phase) — the ones not issued yet.
    Issue { phase: usize, moves: Vec<usize> },
    /// Nothing to do until a status arrives or the phase times out.
    Wait { until: DateTime<Utc> },
    /// The phase is confirmed; go on with the next.
    Advance { to: usize },
    /// Every phase is confirmed.
    Complete,
    /// A move failed for good: stop here, in a safe state, and re-plan around the failures.
    Stop {
        phase: usize,
        failed: Vec<(String, String)>,
    },
}

/// The pure decision: what to do with `plan` at `progress`, given the state of each move of the
/// current phase (`states[i]` for `phase.moves[i]`).
pub fn next_step(
    plan: &ExecPlan,
    progress: Progress,
    states: &[MoveState],
    now: DateTime<Utc>,
) -> Step {
    let Some(phase) = plan.phases.get(progress.phase) else {
        return Step::Complete;
    };
    let to_issue: Vec<usize> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == MoveState::NotIssued)
        .map(|(i, _)| i)
        .collect();
    if !to_issue.is_empty() {
        if let Some(t) = phase.not_before.filter(|t| now < *t) {
            return Step::Wait { until: t };
        }
        return Step::Issue {
            phase: progress.phase,
            moves: to_issue,
        };
    }
    let timeout = chrono::Duration::from_std(phase.timeout).unwrap_or(chrono::Duration::MAX);
    // The phase's clock starts with its earliest issued intent (after a restart too).
    let started = states
        .iter()
        .filter_map(|s| match s {
            MoveState::Waiting { issued_at } => Some(*issued_at),
            _ => None,
        })
        .min();
    let deadline = started.and_then(|t| t.checked_add_signed(timeout));
    let mut failed = Vec::new();
    let mut waiting = false;
    for (m, s) in phase.moves.iter().zip(states) {
        match s {
            MoveState::Confirmed => {}
            MoveState::Failed { detail } => failed.push((m.device_id.clone(), detail.clone())),
            MoveState::Waiting { .. } => {
                if deadline.is_some_and(|d| now >= d) {
                    failed.push((
                        m.device_id.clone(),
                        format!("not confirmed within {} s", phase.timeout.as_secs()),
                    ));
                } else {
                    waiting = true;
                }
            }
            MoveState::NotIssued => {}
        }
    }
    // Wait for the rest of the phase before stopping: a phase's moves are independent, and
    // their outcomes all inform the next plan. A timed-out phase stops at once.
    if !failed.is_empty() && !waiting {
        return Step::Stop {
            phase: progress.phase,
            failed,
        };
    }
    if waiting {
        return Step::Wait {
            until: deadline.unwrap_or(now),
        };
    }
    if progress.phase + 1 >= plan.phases.len() {
        Step::Complete
    } else {
        Step::Advance {
            to: progress.phase + 1,
        }
    }
}

/// The state of `m` (move of `plan_id`, phase `phase`) from the device's desired state.
pub fn move_state(
    m: &ExecMove,
    plan_id: &str,
    phase: usize,
    current: Option<&DeviceIntent>,
) -> MoveState {
    let Some(di) = current else {
        return MoveState::NotIssued;
    };
    // The plan in execution is the newest, so an intent of another plan (or another phase or
    // target) was issued before this move: the move is still to be issued.
    let ours = di.intent.plan_id == plan_id
        && usize::try_from(di.intent.phase).is_ok_and(|p| p == phase)
        && di.intent.target == m.target;
    if !ours {
        return MoveState::NotIssued;
    }
    match &di.status {
        Some(s) if s.phase == IntentPhase::Confirmed => MoveState::Confirmed,
        Some(s) if s.phase == IntentPhase::Rejected => MoveState::Failed {
            detail: format!("rejected: {}", s.detail),
        },
        Some(s) if s.phase == IntentPhase::Failed && !s.retrying => MoveState::Failed {
            detail: format!("failed: {}", s.detail),
        },
        _ => MoveState::Waiting {
            issued_at: di.issued_at,
        },
    }
}

/// The wire form of a site device id for its own agent: a host's workload is `host` there.
pub fn wire_device_id<'a>(host_id: &str, device_id: &'a str) -> &'a str {
    match device_id.strip_prefix("host/") {
        Some(h) if h == host_id => "host",
        _ => device_id,
    }
}

/// The site form of a device id an agent used.
pub fn site_device_id(host_id: &str, device_id: &str) -> String {
    if device_id == "host" {
        format!("host/{host_id}")
    } else {
        device_id.to_owned()
    }
}

/// An `IntentBatch` message carrying `intents` (already in their wire form).
pub fn intent_batch(intents: impl IntoIterator<Item = v1::Intent>) -> v1::ControllerMessage {
    v1::ControllerMessage {
        msg: Some(v1::controller_message::Msg::Intents(v1::IntentBatch {
            intents: intents.into_iter().collect(),
            controller_time: Some(model::timestamp_to_proto(Utc::now())),
        })),
    }
}

/// The wire form of an intent for its host's agent.
pub fn to_wire(host_id: &str, intent: &Intent) -> v1::Intent {
    let mut w = intent.to_proto();
    w.device_id = wire_device_id(host_id, &intent.device_id).to_owned();
    w
}

/// Devices whose last move failed, and when: the next plans count them as they are and do not
/// choose them until the memory fades. A device that keeps failing is left alone longer each
/// time (the memory doubles with each failure in a row, up to a ceiling), so a target its
/// firmware refuses for good is tried again now and then, not every round.
#[derive(Debug, Default, Clone)]
pub struct Failures {
    by_device: BTreeMap<String, Failure>,
}

#[derive(Debug, Clone)]
struct Failure {
    at: DateTime<Utc>,
    reason: String,
    /// The generation of the intent that failed, where one was issued.
    generation: Option<u64>,
    /// Failures in a row without a confirmed move in between.
    streak: u32,
}

impl Failures {
    /// A move of `device_id` failed. The same generation reported twice (the executor's phase
    /// stopping on it, and the agent's status) is one failure.
    pub fn record(
        &mut self,
        device_id: String,
        generation: Option<u64>,
        at: DateTime<Utc>,
        reason: String,
    ) {
        match self.by_device.get_mut(&device_id) {
            Some(f) if generation.is_some() && f.generation == generation => f.reason = reason,
            Some(f) => {
                f.streak = f.streak.saturating_add(1);
                f.at = at;
                f.reason = reason;
                f.generation = generation;
            }
            None => {
                self.by_device.insert(
                    device_id,
                    Failure {
                        at,
                        reason,
                        generation,
                        streak: 1,
                    },
                );
            }
        }
    }

    /// Devices still held: failed within `memory` × 2^(failures in a row − 1), at most `max`
    /// (and never less than `memory`), of `now`; with the reason and when the hold ends.
    pub fn recent(
        &self,
        now: DateTime<Utc>,
        memory: chrono::Duration,
        max: chrono::Duration,
    ) -> BTreeMap<&str, (&str, DateTime<Utc>)> {
        self.by_device
            .iter()
            .filter_map(|(d, f)| {
                let hold = backoff(memory, max, f.streak);
                let until =
                    f.at.checked_add_signed(hold)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                (now < until).then_some((d.as_str(), (f.reason.as_str(), until)))
            })
            .collect()
    }

    /// A move of the device was confirmed: the failures in a row end.
    pub fn forget(&mut self, device_id: &str) {
        self.by_device.remove(device_id);
    }
}

/// How long a device that failed `streak` times in a row is held.
fn backoff(memory: chrono::Duration, max: chrono::Duration, streak: u32) -> chrono::Duration {
    let doublings = streak.saturating_sub(1).min(30);
    memory
        .checked_mul(1_i32 << doublings)
        .unwrap_or(chrono::Duration::MAX)
        .min(max.max(memory))
}

/// What the executor last read of the phase in execution: each move's state, and which move
/// each device is. A large phase's statuses arrive in bursts for seconds, and reading all of
/// its moves after each burst cost the controller a third of a CPU-second a 10,000-move phase.
#[derive(Debug)]
pub struct PhaseView {
    plan: Arc<ExecPlan>,
    phase: usize,
    index: std::collections::HashMap<String, usize>,
    states: Vec<MoveState>,
    /// When every move was last read.
    read_at: std::time::Instant,
}

impl PhaseView {
    /// How long the view is kept without reading every move again (so nothing the change log
    /// might miss outlives it).
    const REREAD: Duration = Duration::from_secs(1);

    /// Brings `view` up to date with `ledger` for the phase in execution: only the moves whose
    /// devices changed since the last read when the view is of this phase, was read whole
    /// within [`PhaseView::REREAD`] and `whole` is not asked, else every move. Whether every
    /// move was read.
    pub fn refresh(
        view: &mut Option<PhaseView>,
        ledger: &Ledger,
        exec: &Execution,
        whole: bool,
    ) -> bool {
        let phase_index = exec.progress.phase;
        // Taken before reading: what changes after it is in the next pass's list.
        let changed = ledger.take_changed();
        let Some(p) = exec.plan.phases.get(phase_index) else {
            *view = None;
            return true;
        };
        let state_of = |i: usize, di: Option<&DeviceIntent>| {
            move_state(&p.moves[i], &exec.plan.plan_id, phase_index, di)
        };
        if let (false, Some(v), ChangedSince::Devices(ids)) = (whole, view.as_mut(), &changed)
            && Arc::ptr_eq(&v.plan, &exec.plan)
            && v.phase == phase_index
            && v.read_at.elapsed() < PhaseView::REREAD
        {
            let moved: Vec<usize> = ids.iter().filter_map(|d| v.index.get(d).copied()).collect();
            let fresh = ledger.with_each(
                moved.iter().map(|&i| p.moves[i].device_id.as_str()),
                |k, di| state_of(moved[k], di),
            );
            for (i, s) in moved.into_iter().zip(fresh) {
                v.states[i] = s;
            }
            return false;
        }
        // One look at the ledger for the whole phase, nothing copied.
        let states = ledger.with_each(p.moves.iter().map(|m| m.device_id.as_str()), state_of);
        match view.as_mut() {
            Some(v) if Arc::ptr_eq(&v.plan, &exec.plan) && v.phase == phase_index => {
                v.states = states;
                v.read_at = std::time::Instant::now();
            }
            _ => {
                *view = Some(PhaseView {
                    plan: Arc::clone(&exec.plan),
                    phase: phase_index,
                    index: p
                        .moves
                        .iter()
                        .enumerate()
                        .map(|(i, m)| (m.device_id.clone(), i))
                        .collect(),
                    states,
                    read_at: std::time::Instant::now(),
                });
            }
        }
        true
    }
}

fn view_states(view: &Option<PhaseView>) -> &[MoveState] {
    view.as_ref().map_or(&[], |v| v.states.as_slice())
}

/// The plan in execution and where it is.
#[derive(Debug, Clone)]
pub struct Execution {
    /// Shared: every status an agent sends asks which plan is in flight, and a plan can hold
    /// tens of thousands of moves.
    pub plan: Arc<ExecPlan>,
    pub progress: Progress,
}

impl Controller {
    /// The intent as it should be sent now: with a fresh lease if the controller stands behind
    /// it, else with the lease it has.
    pub fn lease_for(&self, intent: &Intent, now: DateTime<Utc>) -> v1::Intent {
        let host = self.ledger.get(&intent.device_id).map(|d| d.host_id);
        let mut i = intent.clone();
        if self.ledger.endorsed(&intent.device_id) {
            i.lease_expires_at = now + self.lease();
        }
        match host {
            Some(h) => to_wire(&h, &i),
            None => i.to_proto(),
        }
    }

    /// How long a lease runs.
    pub fn lease(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.config.agents.lease_s).unwrap_or(i64::MAX))
    }

    /// Starts executing `plan` (stored first), superseding any plan in execution.
    pub async fn execute(self: &Arc<Self>, plan: ExecPlan, document: serde_json::Value) {
        let now = Utc::now();
        let current = self.execution();
        if let Some(e) = &current {
            self.note_superseded_shed(&e.plan, e.progress.phase, now);
        }
        let previous = current.map(|e| e.plan.plan_id.clone());
        let stored = StoredPlan {
            plan_id: plan.plan_id.clone(),
            created_at: now,
            state: PlanState::Executing,
            current_phase: 0,
            updated_at: now,
            document: {
                let mut d = match document {
                    serde_json::Value::Object(m) => m,
                    other => serde_json::Map::from_iter([("plan".to_owned(), other)]),
                };
                d.insert(
                    "exec".to_owned(),
                    serde_json::to_value(&plan).unwrap_or_default(),
                );
                serde_json::Value::Object(d)
            },
        };
        let prev = previous.clone();
        let stored_ok = self
            .blocking(move |s| {
                if let Some(p) = prev {
                    s.update_plan(&p, PlanState::Superseded, 0, now)?;
                }
                s.put_plan(&stored)
            })
            .await;
        if let Err(e) = stored_ok {
            warn!(plan = %plan.plan_id, error = %e, "Could not store the plan; not executing it");
            return;
        }
        *self.execution_slot() = Some(Execution {
            plan: Arc::new(plan),
            progress: Progress { phase: 0 },
        });
        self.progress.notify_one();
    }

    /// The plan in execution, if any.
    pub fn execution(&self) -> Option<Execution> {
        self.execution_slot().clone()
    }

    fn execution_slot(&self) -> std::sync::MutexGuard<'_, Option<Execution>> {
        self.execution
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Picks up the plan that was executing when the controller stopped.
    pub async fn resume_from_store(self: &Arc<Self>) {
        let found = self.blocking(|s| s.plan_in_flight()).await;
        let Ok(Some(stored)) = found else {
            if let Err(e) = found {
                warn!(error = %e, "Could not read the plan in flight");
            }
            return;
        };
        let plan: Option<ExecPlan> = stored
            .document
            .get("exec")
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        match plan {
            Some(plan) => {
                info!(plan = %plan.plan_id, phase = stored.current_phase, "Resuming the plan in flight");
                *self.execution_slot() = Some(Execution {
                    plan: Arc::new(plan),
                    progress: Progress {
                        phase: usize::try_from(stored.current_phase).unwrap_or(usize::MAX),
                    },
                });
                self.progress.notify_one();
            }
            None => {
                warn!(plan = %stored.plan_id, "The plan in flight cannot be read; not resuming it")
            }
        }
    }

    /// One pass of the executor: decides and acts until it has to wait; returns when to look
    /// again at the latest. `view` is what the last pass read of the phase (the caller keeps
    /// it between passes): a pass that ends in a wait reads again only the moves whose desired
    /// state changed since; one that acts (issues, advances, finishes, stops) has read every
    /// move first.
    pub async fn execute_pass(
        self: &Arc<Self>,
        view: &mut Option<PhaseView>,
    ) -> Option<DateTime<Utc>> {
        loop {
            let Some(exec) = self.execution() else {
                *view = None;
                return None;
            };
            let now = Utc::now();
            let phase_index = exec.progress.phase;
            let mut whole = PhaseView::refresh(view, &self.ledger, &exec, false);
            let mut step = next_step(&exec.plan, exec.progress, view_states(view), now);
            if !whole && !matches!(step, Step::Wait { .. }) {
                whole = PhaseView::refresh(view, &self.ledger, &exec, true);
                step = next_step(&exec.plan, exec.progress, view_states(view), now);
            }
            debug_assert!(whole || matches!(step, Step::Wait { .. }));
            match step {
                Step::Wait { until } => return Some(until),
                Step::Issue { phase, moves } => {
                    if !self.issue(&exec.plan, phase, &moves, now).await {
                        return Some(now + chrono::Duration::seconds(5));
                    }
                }
                Step::Advance { to } => {
                    self.audit_phase(&exec.plan, phase_index, "confirmed").await;
                    self.set_progress(&exec.plan.plan_id, to, PlanState::Executing)
                        .await;
                }
                Step::Complete => {
                    self.audit_phase(&exec.plan, phase_index, "confirmed").await;
                    let last = exec.plan.phases.len().saturating_sub(1);
                    self.finish(&exec.plan.plan_id, last, PlanState::Completed, &[])
                        .await;
                    *view = None;
                    return None;
                }
                Step::Stop { phase, failed } => {
                    self.audit_phase(&exec.plan, phase, "stopped").await;
                    self.finish(&exec.plan.plan_id, phase, PlanState::Stopped, &failed)
                        .await;
                    *view = None;
                    return None;
                }
            }
        }
    }

    async fn set_progress(&self, plan_id: &str, phase: usize, state: PlanState) {
        {
            let mut slot = self.execution_slot();
            if let Some(e) = slot.as_mut().filter(|e| e.plan.plan_id == plan_id) {
                e.progress.phase = phase;
            }
        }
        let (p, n) = (plan_id.to_owned(), u32::try_from(phase).unwrap_or(u32::MAX));
        if let Err(e) = self
            .blocking(move |s| s.update_plan(&p, state, n, Utc::now()))
            .await
        {
            warn!(plan = %plan_id, error = %e, "Could not record the plan's progress");
        }
    }

    async fn finish(
        self: &Arc<Self>,
        plan_id: &str,
        phase: usize,
        state: PlanState,
        failed: &[(String, String)],
    ) {
        self.set_progress(plan_id, phase, state).await;
        {
            let mut slot = self.execution_slot();
            if slot.as_ref().is_some_and(|e| e.plan.plan_id == plan_id) {
                *slot = None;
            }
        }
        let now = Utc::now();
        if failed.is_empty() {
            info!(plan = %plan_id, "Plan confirmed");
            self.audit(NewAudit {
                kind: "plan",
                subject: format!("plan/{plan_id}"),
                actor: "controller".into(),
                reason: "every phase confirmed".into(),
                detail: serde_json::json!({ "state": state.as_str() }),
            })
            .await;
        } else {
            warn!(plan = %plan_id, phase, failures = failed.len(), "Plan stopped: a move failed; re-planning around it");
            let generations: Vec<Option<u64>> = failed
                .iter()
                .map(|(d, _)| {
                    self.ledger
                        .inspect(d, |di| di.map(|di| di.intent.generation))
                })
                .collect();
            {
                let mut f = self
                    .failures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for ((d, r), generation) in failed.iter().zip(generations) {
                    f.record(d.clone(), generation, now, r.clone());
                }
            }
            for (device, reason) in failed {
                self.audit(NewAudit {
                    kind: "plan",
                    subject: device.clone(),
                    actor: "controller".into(),
                    reason: format!(
                        "move failed, plan {plan_id} stopped at phase {phase}: {reason}"
                    ),
                    detail: serde_json::json!({ "plan_id": plan_id, "phase": phase }),
                })
                .await;
            }
        }
        self.replan.notify_one();
    }

    /// Writes the moves' intents to the store, then sends them. Whether they were stored.
    async fn issue(
        self: &Arc<Self>,
        plan: &ExecPlan,
        phase: usize,
        moves: &[usize],
        now: DateTime<Utc>,
    ) -> bool {
        let Some(p) = plan.phases.get(phase) else {
            return false;
        };
        let new: Vec<NewIntent> = moves
            .iter()
            .filter_map(|i| p.moves.get(*i))
            .map(|m| NewIntent {
                host_id: m.host_id.clone(),
                device_id: m.device_id.clone(),
                target: m.target,
                reason: m.reason.clone(),
                plan_id: plan.plan_id.clone(),
                phase: u32::try_from(phase).unwrap_or(u32::MAX),
                before_w: m.before_w,
                setting_before_w: m.setting_before_w,
            })
            .collect();
        let ledger = Arc::clone(&self.ledger);
        let lease = now + self.lease();
        let issued = match self.blocking(move |_| ledger.issue(new, lease, now)).await {
            Ok(i) => i,
            Err(e) => {
                warn!(plan = %plan.plan_id, phase, error = %e.message(), "Could not store the phase's intents; nothing sent");
                return false;
            }
        };
        info!(plan = %plan.plan_id, phase, label = %p.label, intents = issued.len(), "Phase issued");
        self.send_intents(&issued);
        true
    }

    /// Sends stored intents to their agents, one batch per host. An agent that is not connected
    /// gets them in the hello of its next session.
    pub fn send_intents(&self, intents: &[DeviceIntent]) {
        let mut by_host: BTreeMap<&str, Vec<v1::Intent>> = BTreeMap::new();
        for di in intents {
            by_host
                .entry(di.host_id.as_str())
                .or_default()
                .push(to_wire(&di.host_id, &di.intent));
        }
        for (host, batch) in by_host {
            if let Err(e) = self.registry.send(host, intent_batch(batch)) {
                warn!(host, error = %e, "Intents stored but not sent; the agent gets them when it is back");
            }
        }
    }

    /// Renews the leases of the intents the controller stands behind, on every connected agent.
    pub fn renew_leases(&self, now: DateTime<Utc>) {
        let until = model::timestamp_to_proto(now + self.lease());
        let mut endorsed = self.ledger.endorsed_by_host();
        for host in self.registry.connected_hosts() {
            let intents = endorsed
                .remove(&host)
                .unwrap_or_default()
                .into_iter()
                .map(|mut r| {
                    r.device_id = wire_device_id(&host, &r.device_id).to_owned();
                    r
                })
                .collect::<Vec<_>>();
            if intents.is_empty() {
                continue;
            }
            let msg = v1::ControllerMessage {
                msg: Some(v1::controller_message::Msg::Lease(v1::LeaseRenewal {
                    lease_expires_at: Some(until),
                    intents,
                    controller_time: Some(model::timestamp_to_proto(now)),
                })),
            };
            if let Err(e) = self.registry.send(&host, msg) {
                warn!(host = %host, error = %e, "Could not renew leases");
            }
        }
    }
}

/// Runs the executor and the lease renewals until the task is dropped.
pub async fn run(ctl: Arc<Controller>) {
    ctl.resume_from_store().await;
    let renew_every = Duration::from_secs((ctl.config.agents.lease_s / 4).max(1));
    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wake_at: Option<DateTime<Utc>> = None;
    let mut view: Option<PhaseView> = None;
    loop {
        let sleep_for = wake_at
            .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_secs(5));
        tokio::select! {
            () = ctl.progress.notified() => {
                // A phase's statuses come in bursts (thousands at once on a large site): let a
                // burst settle into one pass instead of one pass per status.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            () = tokio::time::sleep(sleep_for) => {}
            _ = renew.tick() => {
                ctl.renew_leases(Utc::now());
                continue;
            }
        }
        wake_at = ctl.execute_pass(&mut view).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pivot_proto::model::MinerTarget;

    const SLEEP: Target = Target::Miner(MinerTarget::Sleep);

    fn plan(phases: &[usize]) -> ExecPlan {
        ExecPlan {
            plan_id: "p".into(),
            phases: phases
                .iter()
                .enumerate()
                .map(|(i, n)| ExecPhase {
                    label: format!("phase {i}"),
                    moves: (0..*n)
                        .map(|j| ExecMove {
                            host_id: "h".into(),
                            device_id: format!("d{i}-{j}"),
                            target: SLEEP,
                            reason: String::new(),
                            before_w: None,
                            setting_before_w: None,
                        })
                        .collect(),
                    timeout: Duration::from_secs(60),
                    not_before: None,
                    sheds: false,
                })
                .collect(),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn waiting(s: i64) -> MoveState {
        MoveState::Waiting { issued_at: t(s) }
    }

    /// What a step of [`the_phase_view_read_in_part_is_what_a_full_read_gives`] does to the
    /// ledger.
    #[derive(Debug, Clone)]
    enum LedgerOp {
        /// This plan's phase issues these moves (indexes into phase 1).
        Issue(Vec<usize>),
        /// Another plan's intent for the device (the move is to be issued again).
        Other(usize),
        /// The agent reports on the device's current generation (a device outside the phase
        /// too: index ≥ the phase's moves).
        Status(usize, IntentPhase, bool),
        /// The executor advances to phase `n` (0 or 1) of the plan.
        Phase(usize),
    }

    fn ledger_op(moves: usize) -> impl proptest::strategy::Strategy<Value = LedgerOp> {
        use proptest::prelude::*;
        let phase = prop_oneof![
            Just(IntentPhase::Pending),
            Just(IntentPhase::Applied),
            Just(IntentPhase::Confirmed),
            Just(IntentPhase::Failed),
            Just(IntentPhase::Rejected),
        ];
        prop_oneof![
            3 => proptest::collection::vec(0..moves, 0..moves).prop_map(LedgerOp::Issue),
            1 => (0..moves).prop_map(LedgerOp::Other),
            6 => (0..moves + 2, phase, any::<bool>())
                .prop_map(|(d, p, r)| LedgerOp::Status(d, p, r)),
            1 => (0..2usize).prop_map(LedgerOp::Phase),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The executor acts on a full read, but waits on a view it reads in part (only the
        /// devices the ledger's change log names): after any sequence of issues, statuses and
        /// other plans' intents, that view is what reading every move gives.
        #[test]
        fn the_phase_view_read_in_part_is_what_a_full_read_gives(
            ops in proptest::collection::vec(ledger_op(6), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn crate::store::Store> =
                Arc::new(crate::store::SqliteStore::open(&dir.path().join("p.db")).unwrap());
            let ledger = Ledger::load(store).unwrap();
            let plan = Arc::new(plan(&[3, 6]));
            let device = |phase: usize, i: usize| format!("d{phase}-{i}");
            let mut exec = Execution { plan: Arc::clone(&plan), progress: Progress { phase: 1 } };
            let mut view = None;
            let now = t(0);
            PhaseView::refresh(&mut view, &ledger, &exec, true);
            for op in ops {
                match op {
                    LedgerOp::Issue(moves) => {
                        let p = exec.progress.phase;
                        let new = moves
                            .into_iter()
                            .filter(|&i| i < plan.phases[p].moves.len())
                            .collect::<std::collections::BTreeSet<_>>()
                            .into_iter()
                            .map(|i| NewIntent {
                                host_id: "h".into(),
                                device_id: device(p, i),
                                target: SLEEP,
                                reason: String::new(),
                                plan_id: "p".into(),
                                phase: u32::try_from(p).unwrap(),
                                before_w: None,
                                setting_before_w: None,
                            })
                            .collect::<Vec<_>>();
                        ledger.issue(new, now, now).unwrap();
                    }
                    LedgerOp::Other(i) => {
                        let new = NewIntent {
                            host_id: "h".into(),
                            device_id: device(exec.progress.phase, i),
                            target: SLEEP,
                            reason: String::new(),
                            plan_id: "q".into(),
                            phase: 0,
                            before_w: None,
                            setting_before_w: None,
                        };
                        ledger.issue(vec![new], now, now).unwrap();
                    }
                    LedgerOp::Status(i, phase, retrying) => {
                        let d = device(exec.progress.phase, i);
                        if let Some(di) = ledger.get(&d) {
                            let s = v1::IntentStatus {
                                device_id: d,
                                generation: di.intent.generation,
                                phase: phase.to_proto() as i32,
                                retrying,
                                ..Default::default()
                            };
                            ledger.on_statuses("h", &[s], now);
                        }
                    }
                    LedgerOp::Phase(p) => exec.progress.phase = p,
                }
                PhaseView::refresh(&mut view, &ledger, &exec, false);
                let p = &plan.phases[exec.progress.phase];
                let full = ledger.with_each(p.moves.iter().map(|m| m.device_id.as_str()), |i, di| {
                    move_state(&p.moves[i], "p", exec.progress.phase, di)
                });
                let v = view.as_ref().unwrap();
                proptest::prop_assert_eq!(v.phase, exec.progress.phase);
                proptest::prop_assert_eq!(&v.states, &full);
            }
        }
    }

    #[test]
    fn a_phase_is_issued_then_waited_on_then_advanced() {
        let p = plan(&[2, 1]);
        let at = Progress { phase: 0 };
        assert_eq!(
            next_step(&p, at, &[MoveState::NotIssued, MoveState::Confirmed], t(0)),
            Step::Issue {
                phase: 0,
                moves: vec![0]
            }
        );
        assert_eq!(
            next_step(&p, at, &[waiting(0), MoveState::Confirmed], t(10)),
            Step::Wait { until: t(60) }
        );
        assert_eq!(
            next_step(&p, at, &[MoveState::Confirmed, MoveState::Confirmed], t(10)),
            Step::Advance { to: 1 }
        );
        assert_eq!(
            next_step(&p, Progress { phase: 1 }, &[MoveState::Confirmed], t(10)),
            Step::Complete
        );
        assert_eq!(next_step(&plan(&[]), at, &[], t(0)), Step::Complete);
        assert_eq!(
            next_step(&plan(&[0, 1]), at, &[], t(0)),
            Step::Advance { to: 1 }
        );
    }

    #[test]
    fn a_failure_stops_the_plan_once_the_phase_has_settled() {
        let p = plan(&[2, 1]);
        let at = Progress { phase: 0 };
        let failed = MoveState::Failed {
            detail: "rejected: out of range".into(),
        };
        // The other move is still on its way: wait for it.
        assert!(matches!(
            next_step(&p, at, &[failed.clone(), waiting(0)], t(5)),
            Step::Wait { .. }
        ));
        assert_eq!(
            next_step(&p, at, &[failed.clone(), MoveState::Confirmed], t(5)),
            Step::Stop {
                phase: 0,
                failed: vec![("d0-0".into(), "rejected: out of range".into())]
            }
        );
        // Past the timeout every unconfirmed move has failed, and the next phase never starts.
        match next_step(&p, at, &[failed, waiting(0)], t(61)) {
            Step::Stop { phase: 0, failed } => {
                assert_eq!(failed.len(), 2);
                assert!(failed[1].1.contains("not confirmed within 60 s"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_phase_is_not_issued_before_its_time() {
        let mut p = plan(&[1]);
        p.phases[0].not_before = Some(t(90));
        let at = Progress { phase: 0 };
        assert_eq!(
            next_step(&p, at, &[MoveState::NotIssued], t(30)),
            Step::Wait { until: t(90) }
        );
        assert_eq!(
            next_step(&p, at, &[MoveState::NotIssued], t(90)),
            Step::Issue {
                phase: 0,
                moves: vec![0]
            }
        );
    }

    #[test]
    fn the_phase_clock_starts_at_the_earliest_issue() {
        let p = plan(&[2]);
        assert_eq!(
            next_step(
                &p,
                Progress { phase: 0 },
                &[waiting(30), waiting(10)],
                t(40)
            ),
            Step::Wait { until: t(70) }
        );
    }

    #[test]
    fn move_state_reads_the_ledger() {
        let m = ExecMove {
            host_id: "h".into(),
            device_id: "m1".into(),
            target: SLEEP,
            reason: String::new(),
            before_w: None,
            setting_before_w: None,
        };
        let mut di = DeviceIntent {
            host_id: "h".into(),
            intent: Intent {
                device_id: "m1".into(),
                generation: 3,
                lease_expires_at: t(100),
                target: SLEEP,
                reason: String::new(),
                phase: 0,
                plan_id: "p".into(),
            },
            issued_at: t(0),
            before_w: None,
            setting_before_w: None,
            status: None,
        };
        assert_eq!(move_state(&m, "p", 0, None), MoveState::NotIssued);
        assert_eq!(move_state(&m, "p", 0, Some(&di)), waiting(0));
        assert_eq!(move_state(&m, "p", 1, Some(&di)), MoveState::NotIssued);
        assert_eq!(move_state(&m, "q", 0, Some(&di)), MoveState::NotIssued);
        let status = |phase, retrying| {
            Some(crate::store::StatusRecord {
                phase,
                detail: "x".into(),
                retrying,
                observed_power_w: None,
                at: t(1),
            })
        };
        di.status = status(IntentPhase::Failed, true);
        assert_eq!(move_state(&m, "p", 0, Some(&di)), waiting(0));
        di.status = status(IntentPhase::Failed, false);
        assert!(matches!(
            move_state(&m, "p", 0, Some(&di)),
            MoveState::Failed { .. }
        ));
        di.status = status(IntentPhase::Rejected, false);
        assert!(matches!(
            move_state(&m, "p", 0, Some(&di)),
            MoveState::Failed { .. }
        ));
        di.status = status(IntentPhase::Confirmed, false);
        assert_eq!(move_state(&m, "p", 0, Some(&di)), MoveState::Confirmed);
    }

    #[test]
    fn host_workload_ids_map_to_the_agents_name_and_back() {
        assert_eq!(wire_device_id("gpu-7", "host/gpu-7"), "host");
        assert_eq!(wire_device_id("gpu-7", "host/gpu-8"), "host/gpu-8");
        assert_eq!(wire_device_id("gpu-7", "gpu/GPU-1"), "gpu/GPU-1");
        assert_eq!(site_device_id("gpu-7", "host"), "host/gpu-7");
        assert_eq!(site_device_id("gpu-7", "miner/a"), "miner/a");
    }
}
