//! What the planner returns: ordered phases of per-device moves with the committed power of each
//! phase, the reasons in figures and in plain words, summary figures, and the memory the next
//! plan needs. All of it serialisable, for the store and pivotctl.

use chrono::{DateTime, Utc};
use pivot_proto::model::Target;
use serde::{Deserialize, Serialize};

/// A plan: apply `phases` in order, each only once the one before is confirmed (or timed out),
/// and none before its `not_before`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Derived from `now` and the moves: the same input gives the same id.
    pub plan_id: String,
    pub at: DateTime<Utc>,
    pub mode: PlanMode,
    pub limit: Limit,
    pub phases: Vec<Phase>,
    pub summary: Summary,
    /// The reasons grouped by model and action, each with a sentence for the audit log.
    pub explanations: Vec<Explanation>,
    /// Things the operator must hear about (a cap that cannot be met, pins held back).
    pub warnings: Vec<Warning>,
    /// Pass back as [`super::PlanInput::memory`] next time.
    pub memory: PlannerMemory,
    /// The earliest time at which the same inputs could give another answer by the passage of
    /// time alone (a dwell or the drain delay running out, a ramp step falling due, a schedule
    /// window or a demand-response lead or event starting or ending). Until then a new plan is
    /// needed only when an input changes; `None`: time alone never changes it.
    #[serde(default)]
    pub revisit_at: Option<DateTime<Utc>>,
    /// Moves today's prices ask for that a dwell holds back, grouped by model and action.
    #[serde(default)]
    pub waiting: Vec<Waiting>,
}

/// Units of one model a dwell holds back from one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    /// Miner model, or "GPU host".
    pub model: String,
    pub action: Action,
    pub devices: u32,
    /// Power the move would change, W.
    pub power_w: f64,
    /// When the first of them may move.
    pub until: DateTime<Utc>,
    pub text: String,
}

impl Plan {
    /// Every move of every phase, in order.
    pub fn moves(&self) -> impl Iterator<Item = (&Phase, &Move)> {
        self.phases
            .iter()
            .flat_map(|p| p.moves.iter().map(move |m| (p, m)))
    }
}

/// How the plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanMode {
    /// Merit order on the market.
    Economic,
    /// The policy turned economic moves off: everything holds except what caps, schedules and
    /// pins require.
    EconomicDisabled,
    /// No usable market: hold, only lowering moves.
    SafeHold,
    /// No usable market: every miner sleeps.
    SafeCurtailMining,
}

/// The cap the plan keeps under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// The cap in force (site, DR event or schedule window), W.
    pub cap_w: f64,
    pub reserve_w: f64,
    /// `cap_w - reserve_w`: no phase that grants power commits more.
    pub limit_w: f64,
    pub source: CapSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CapSource {
    Site,
    DemandResponse { event_id: String },
    Schedule { window: String },
}

/// What a phase does; the order of a plan is always releases, then grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// Miners sleep or lower their power target; hosts leaving AI are drained of jobs.
    Curtail,
    /// GPU caps of drained hosts go to their minimum.
    LowerGpuCaps,
    /// GPU caps rise, miners wake or raise their targets (one ramp step).
    Grant,
    /// Hosts whose caps rose are released to jobs.
    ReleaseHosts,
}

impl PhaseKind {
    pub fn releases_power(self) -> bool {
        matches!(self, PhaseKind::Curtail | PhaseKind::LowerGpuCaps)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub index: u32,
    pub kind: PhaseKind,
    /// Not to start before this (ramp staggering); `None` = as soon as the previous phase is done.
    pub not_before: Option<DateTime<Utc>>,
    pub moves: Vec<Move>,
    /// Committed power while this phase is in flight: its devices at the higher of before and
    /// after, earlier phases' at after, later phases' at before (DESIGN.md invariant 1).
    pub committed_w: f64,
    /// Committed power once this phase is confirmed.
    pub committed_after_w: f64,
}

/// One device's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Move {
    pub device_id: String,
    /// The agent that carries the intent.
    pub host_id: String,
    /// The target it has now (its intent, or its observed state); `None` = unknown.
    pub from: Option<Target>,
    pub to: Target,
    /// The device's committed power before and after (a GPU: its cap; a workload hand-off: 0).
    pub power_before_w: f64,
    pub power_after_w: f64,
    pub reason: Reason,
    /// Miners, a first trim: the owner's setting before it, W, kept in the ledger so that full
    /// power goes back to it (`None`: nothing new to keep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting_before_w: Option<f64>,
}

/// Why a device moves, with the figures that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// Margin crossed the floor (outside the band): runs when `margin >= threshold`.
    Economic {
        value_usd_per_mwh: f64,
        energy_usd_per_mwh: f64,
        margin_usd_per_mwh: f64,
        threshold_usd_per_mwh: f64,
    },
    /// Shed or trimmed to fit the cap in force, behind loads of higher margin.
    Cap {
        limit_w: f64,
        margin_usd_per_mwh: f64,
    },
    /// A trimmed miner goes back to full power (the cap has room again).
    Restore { margin_usd_per_mwh: f64 },
    /// Released or drained to follow AI demand (`hosts_kept` = demand + buffer, held through the
    /// drain delay).
    AiDemand {
        demand_gpus: Option<u32>,
        hosts_kept: u32,
    },
    /// A schedule window curtails it.
    Schedule,
    /// An operator override pins it.
    Pin,
    /// Firm AI contract: always powered.
    Firm,
    /// No usable market and the policy says curtail mining.
    SafeMode,
}

impl Reason {
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Economic { .. } => "economic",
            Reason::Cap { .. } => "cap",
            Reason::Restore { .. } => "restore",
            Reason::AiDemand { .. } => "ai_demand",
            Reason::Schedule => "schedule",
            Reason::Pin => "pin",
            Reason::Firm => "firm",
            Reason::SafeMode => "safe_mode",
        }
    }
}

/// The plan's figures once every phase is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Committed power now, before the plan.
    pub start_committed_w: f64,
    /// The miners' share of `start_committed_w` (same rules: in transition at the higher of
    /// before and after, unseen at maximum).
    #[serde(default)]
    pub start_mining_w: f64,
    /// The GPU hosts' share of `start_committed_w` (base + caps, firm included).
    #[serde(default)]
    pub start_ai_w: f64,
    /// Committed power once done.
    pub committed_w: f64,
    pub mining_w: f64,
    /// GPU hosts (base + caps), serving or not.
    pub ai_w: f64,
    pub miners_running: u32,
    pub miners_sleeping: u32,
    pub hosts_serving: u32,
    pub hosts_drained: u32,
    /// Estimated margin once done: mining and AI revenue minus energy on the committed draw.
    pub margin_usd_per_h: f64,
    /// The lowest draw the site can reach: every controllable load curtailed, pinned, firm,
    /// protected and unseen devices as they are (for "DR target cannot be reached").
    pub lowest_achievable_w: f64,
    pub moves: u32,
    /// Loads that would be granted power but wait for releases already in flight (sent by an
    /// earlier plan, still counted at their higher end): plan again once those are confirmed.
    #[serde(default)]
    pub grants_waiting: u32,
}

/// A group of moves with one cause, and the sentence that says it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// Miner model, or "GPU host".
    pub model: String,
    pub action: Action,
    pub reason: String,
    pub devices: u32,
    pub power_w: f64,
    /// Margin gained per hour by the move (positive = better off), at today's prices.
    pub gain_usd_per_h: f64,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Sleep,
    Trim,
    Wake,
    Drain,
    Release,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Sleep => "sleeping",
            Action::Trim => "trimming",
            Action::Wake => "waking",
            Action::Drain => "draining",
            Action::Release => "releasing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Warning {
    /// Even with every controllable load curtailed the site stays above the limit.
    LimitUnreachable { limit_w: f64, achievable_w: f64 },
    /// Pinned or firm devices that would need power the cap does not have were held back.
    HeldBackOverCap { devices: u32, power_w: f64 },
    /// No usable market reading.
    MarketUnusable,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::LimitUnreachable {
                limit_w,
                achievable_w,
            } => write!(
                f,
                "cap minus reserve {} cannot be reached: achievable {} with every controllable load curtailed",
                super::explain::watts(*limit_w),
                super::explain::watts(*achievable_w)
            ),
            Warning::HeldBackOverCap { devices, power_w } => write!(
                f,
                "{devices} pinned or firm devices ({}) not powered: the cap has no room for them",
                super::explain::watts(*power_w)
            ),
            Warning::MarketUnusable => {
                f.write_str("no usable market reading: the market-failure policy is in force")
            }
        }
    }
}

/// What the planner carries from one plan to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlannerMemory {
    /// GPU hosts AI demand needed (demand + buffer), by time, over the drain delay.
    pub ai_hosts_needed: Vec<(DateTime<Utc>, u32)>,
    /// When the last plan's first grant step was due (the ramp counts from it).
    pub last_grant_at: Option<DateTime<Utc>>,
}
