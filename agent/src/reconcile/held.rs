//! The state the reconciler keeps per device: the intent it holds (with the fallback that
//! replaced it and the reading it acts against, both persisted) and where that intent stands
//! (phase, detail, retrying: the status the controller sees).

use chrono::Utc;
use pivot_proto::model::{self, Intent, IntentPhase, Target};
use pivot_proto::v1;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::seam::Observed;

/// What the device showed when the agent last acted on it: the reference a confirmation is
/// measured against (a sleep must fall well below it, a wake rise well above it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Before {
    pub power_w: Option<f64>,
    pub hashrate_ths: Option<f64>,
    /// Whether it was hashing (a miner reading "mining").
    pub hashing: bool,
}

impl Before {
    /// The reference from what was last observed; `None` when nothing was.
    pub fn of(observed: Option<&Observed>) -> Option<Before> {
        match observed? {
            Observed::Miner {
                state,
                power_w,
                hashrate_ths,
                ..
            } => Some(Before {
                power_w: power_w.filter(|p| p.is_finite()),
                hashrate_ths: hashrate_ths.filter(|h| h.is_finite()),
                hashing: *state == pivot_proto::model::MinerState::Mining,
            }),
            Observed::Gpu { power_w, .. } => Some(Before {
                power_w: power_w.filter(|p| p.is_finite()),
                hashrate_ths: None,
                hashing: false,
            }),
            Observed::Workload { .. } => None,
        }
    }
}

/// One device's intent as it is kept on disk: everything the agent acts on, so that what it
/// applies was on disk first and a restart resumes from the same place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldRecord {
    pub intent: Intent,
    /// The fallback that replaced the intent when its lease ended (it only lowers).
    #[serde(default)]
    pub fallback: Option<Target>,
    #[serde(default)]
    pub before: Option<Before>,
    /// The targets of this generation that failed for good (a permanent driver error: the
    /// intent's, the fallback's): none is tried again, whatever happens to the lease or the
    /// agent, until a new generation comes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given_up: Vec<GivenUp>,
}

/// A target given up on, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GivenUp {
    pub target: Target,
    pub why: String,
}

impl HeldRecord {
    pub fn new(intent: Intent) -> Self {
        Self {
            intent,
            fallback: None,
            before: None,
            given_up: Vec::new(),
        }
    }

    /// Why the target in force was given up on, if it was.
    pub fn given_up_on_target(&self) -> Option<&str> {
        let target = self.target();
        self.given_up
            .iter()
            .find(|g| g.target == target)
            .map(|g| g.why.as_str())
    }

    /// Records that `target` failed for good.
    pub fn give_up(&mut self, target: Target, why: String) {
        if !self.given_up.iter().any(|g| g.target == target) {
            self.given_up.push(GivenUp { target, why });
        }
    }

    /// The target in force: the fallback's once the lease ended, else the intent's.
    pub fn target(&self) -> Target {
        self.fallback.unwrap_or(self.intent.target)
    }
}

/// An intent the reconciler holds for a device, and where it is.
#[derive(Debug, Clone)]
pub struct Held {
    pub record: HeldRecord,
    pub phase: IntentPhase,
    pub detail: String,
    /// With `Failed`: whether the same generation will be tried again.
    pub retrying: bool,
    /// When the last apply finished, for the confirmation deadline.
    pub applied_at: Option<Instant>,
}

impl Held {
    /// A held record; one whose target in force was given up on stays failed (not retrying).
    pub fn new(record: HeldRecord, detail: impl Into<String>) -> Self {
        let (phase, detail) = match record.given_up_on_target() {
            Some(why) => (IntentPhase::Failed, why.to_owned()),
            None => (IntentPhase::Pending, detail.into()),
        };
        Self {
            record,
            phase,
            detail,
            retrying: false,
            applied_at: None,
        }
    }

    pub fn target(&self) -> Target {
        self.record.target()
    }

    pub fn generation(&self) -> u64 {
        self.record.intent.generation
    }

    /// Moves to `phase` with `detail`; returns the status to report.
    pub fn transition(
        &mut self,
        id: &str,
        phase: IntentPhase,
        detail: String,
        retrying: bool,
        power_w: Option<f64>,
    ) -> v1::IntentStatus {
        self.phase = phase;
        self.detail = detail;
        self.retrying = retrying && phase == IntentPhase::Failed;
        self.status(id, power_w)
    }

    /// The current status.
    pub fn status(&self, id: &str, power_w: Option<f64>) -> v1::IntentStatus {
        status(
            id,
            &self.record.intent,
            self.phase,
            self.detail.clone(),
            self.retrying,
            power_w,
        )
    }
}

/// A status for `intent` (its plan id and phase echoed).
pub fn status(
    device_id: &str,
    intent: &Intent,
    phase: IntentPhase,
    detail: String,
    retrying: bool,
    power_w: Option<f64>,
) -> v1::IntentStatus {
    v1::IntentStatus {
        device_id: device_id.to_owned(),
        generation: intent.generation,
        phase: phase.to_proto() as i32,
        detail,
        observed_power_w: power_w.filter(|p| p.is_finite()),
        at: Some(model::timestamp_to_proto(Utc::now())),
        plan_id: intent.plan_id.clone(),
        plan_phase: intent.phase,
        retrying: retrying && phase == IntentPhase::Failed,
    }
}

/// A status for a wire intent that never became a domain one (malformed): what it said.
pub fn status_of_wire(m: &v1::Intent, phase: IntentPhase, detail: String) -> v1::IntentStatus {
    v1::IntentStatus {
        device_id: m.device_id.clone(),
        generation: m.generation,
        phase: phase.to_proto() as i32,
        detail,
        observed_power_w: None,
        at: Some(model::timestamp_to_proto(Utc::now())),
        plan_id: m.plan_id.clone(),
        plan_phase: m.phase,
        retrying: false,
    }
}
