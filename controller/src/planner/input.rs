//! The planner's view of the site: plain owned values (ids as Strings, power in W as f64,
//! unknowns as `None`, times as chrono) that the caller maps from the registry, the market
//! sources, the store and the API. Nothing here knows about the wire or the registry.

use chrono::{DateTime, Utc};
use pivot_proto::model::{IntentPhase, MinerState, MinerTarget};
use serde::{Deserialize, Serialize};

use crate::fleet::Assumptions;
use crate::policy::PolicyDocument;

use super::output::PlannerMemory;

/// Everything one call of [`super::plan`] decides from.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The planner's "now": dwell, schedule windows, DR deadlines and ramp batches count from it.
    pub now: DateTime<Utc>,
    pub site: SiteLimits,
    /// Demand-response events not yet ended (the lowest target in force wins).
    pub demand_response: Vec<DemandResponse>,
    /// `None`: no usable market reading (stale, failing or implausible source): the policy's
    /// market-failure action runs and no load is added.
    pub market: Option<MarketView>,
    pub policy: PolicyDocument,
    /// What to assume where a miner tells nothing (the controller's `agents` config).
    pub assumptions: Assumptions,
    pub miners: Vec<MinerUnit>,
    pub gpu_hosts: Vec<GpuHostUnit>,
    /// What the previous plan left for this one ([`super::Plan::memory`]); default at first.
    pub memory: PlannerMemory,
}

/// The site's grid connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiteLimits {
    pub cap_w: f64,
    /// Kept free below every cap in force.
    pub reserve_w: f64,
}

/// Reach `target_power_w` by `deadline` and hold it until `ends_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandResponse {
    pub event_id: String,
    pub target_power_w: f64,
    pub deadline: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// The market as the planner sees it; every figure already checked by its source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MarketView {
    pub hashprice_usd_per_ph_day: f64,
    /// May be negative.
    pub energy_usd_per_mwh: f64,
    /// Interruptible GPU capacity; `None` = the policy's `ai_spot_price_usd_per_gpu_hour`.
    pub ai_usd_per_gpu_hour: Option<f64>,
    /// GPUs the AI side can use now; `None` = all GPUs want work.
    pub ai_gpu_demand: Option<u32>,
}

/// A miner's intent as the controller last sent it, and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldIntent<T> {
    pub target: T,
    pub phase: IntentPhase,
    /// With `Failed`: the agent tries this generation again.
    #[serde(default)]
    pub retrying: bool,
}

impl<T> HeldIntent<T> {
    /// Sent and not yet confirmed, or failed: the device may be at either end.
    pub fn unconfirmed(&self) -> bool {
        self.phase != IntentPhase::Confirmed
    }

    /// Rejected, or failed for good: the agent will not try it again, so the device is not
    /// heading to its target (it is where it reads; only a new intent moves it).
    pub fn given_up(&self) -> bool {
        self.phase == IntentPhase::Rejected || (self.phase == IntentPhase::Failed && !self.retrying)
    }
}

/// Every (phase, retrying) a [`HeldIntent`] can be in, for tests that draw one.
#[cfg(test)]
pub(crate) const HELD_PHASES: [(IntentPhase, bool); 6] = [
    (IntentPhase::Pending, false),
    (IntentPhase::Applied, false),
    (IntentPhase::Confirmed, false),
    (IntentPhase::Failed, true),
    (IntentPhase::Failed, false),
    (IntentPhase::Rejected, false),
];

/// A miner's power-target capability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerTargetRange {
    pub min_w: f64,
    pub max_w: f64,
    /// Targets are multiples of this above `min_w`; `None` = any watt.
    pub step_w: Option<f64>,
}

/// One miner.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerUnit {
    pub device_id: String,
    pub host_id: String,
    pub model: String,
    pub group: String,
    pub nameplate_power_w: Option<f64>,
    pub nameplate_hashrate_ths: Option<f64>,
    /// Last measured mining efficiency (survives sleep).
    pub efficiency_j_per_th: Option<f64>,
    /// Draw asleep; `None` = the assumption.
    pub sleep_power_w: Option<f64>,
    pub state: MinerState,
    pub measured_power_w: Option<f64>,
    /// Reachable with a fresh reading.
    pub seen: bool,
    /// Its agent's session is live and the agent's last poll reached it (fresh or not): a sleep
    /// sent to it would get there. A miner that is not seen but is reachable so may still be
    /// sent to sleep (a sleep only lowers power and needs no proof): when pinned asleep, when a
    /// window or safe mode curtails mining, or when the limit cannot be met with everything
    /// else off. It counts at its maximum until a reading shows it asleep. One its agent cannot
    /// reach is sent nothing: the sleep would only fail, and hold its phase until it timed out.
    pub reachable_by_agent: bool,
    pub power_target: Option<PowerTargetRange>,
    /// The power target the miner reports it is set to (its last fresh reading: a LuxOS
    /// profile's watts, Braiins OS's tuner target); `None` = not reported. With a range, full
    /// power is counted at the larger of this and the nameplate, and at the top of the range only
    /// when this is unknown.
    pub power_target_set_w: Option<f64>,
    /// What the miner was set to before Pivot first trimmed it (kept with its intents in the
    /// ledger, [`crate::store::DeviceIntent::setting_before_w`]): once Pivot has changed a
    /// miner's setting, the reading shows Pivot's trim, and this is the owner's setting that
    /// full power means and a restore sends. `None` = Pivot never trimmed it, or found no
    /// setting to keep.
    pub setting_before_trim_w: Option<f64>,
    /// `None` also for an intent the agent gave up on ([`HeldIntent::given_up`]) once the
    /// miner has been read since: that reading says where it is.
    pub intent: Option<HeldIntent<MinerTarget>>,
    /// When its intent last changed (dwell counts from here).
    pub last_change_at: Option<DateTime<Utc>>,
    pub protected: bool,
    /// Operator override: the miner is held at this target.
    pub pin: Option<MinerTarget>,
}

/// One GPU of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuUnit {
    pub device_id: String,
    pub min_cap_w: f64,
    pub max_cap_w: f64,
    /// Cap when the host serves AI (config); clamped to min..max.
    pub full_service_cap_w: f64,
    /// Enforced cap now; `None` = unknown (counts at `max_cap_w`).
    pub cap_w: Option<f64>,
}

/// Where a GPU host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Serving,
    Drained,
    /// On its way; `to_serving` says which way.
    Transition {
        to_serving: bool,
    },
    Unseen,
}

/// How the AI side pays for a host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AiContract {
    /// Spot / interruptible: worth the GPU-hour price for GPUs within demand.
    Interruptible,
    /// Take-or-pay: always powered.
    Firm { usd_per_mwh: f64 },
}

/// An override on a GPU host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostPin {
    Serve,
    Drain,
}

/// One GPU host: the unit that serves AI or not.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuHostUnit {
    pub host_id: String,
    pub group: String,
    pub gpus: Vec<GpuUnit>,
    /// CPUs, memory, NICs, fans: drawn whatever the GPUs do.
    pub base_power_w: f64,
    /// The host's maximum draw if configured (counts when unseen).
    pub max_power_w: Option<f64>,
    pub measured_power_w: Option<f64>,
    /// GPUs the host's workload manager has allocated to AI jobs, when it was read. Among hosts
    /// otherwise equal, those running jobs are kept and the idle ones drained first (a drain
    /// requeues whatever still runs when its grace ends).
    pub gpus_allocated: Option<u32>,
    /// The workload hand-off device (`host/<host_id>`), when a workload manager is configured.
    pub workload_device_id: Option<String>,
    pub contract: AiContract,
    pub state: HostState,
    pub last_change_at: Option<DateTime<Utc>>,
    pub protected: bool,
    pub pin: Option<HostPin>,
}
