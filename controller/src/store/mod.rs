//! The controller's durable state: audit log, overrides, policy, demand-response events, the
//! desired state of every device (intents with their generations and last statuses), plans and
//! their progress, and market and site history.
//!
//! [`Store`] is the seam; [`sqlite::SqliteStore`] is the embedded default. Calls are blocking
//! (SQLite is local and fast); async callers go through `tokio::task::spawn_blocking`.

pub mod sqlite;

use chrono::{DateTime, Utc};
use pivot_proto::model::{Intent, IntentPhase, Target};
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: u64,
    pub at: DateTime<Utc>,
    /// "decision", "intent", "status", "override", "policy", "agent", "demand_response".
    pub kind: String,
    pub subject: String,
    pub actor: String,
    pub reason: String,
    pub detail: serde_json::Value,
}

/// An audit record before the store gave it an id.
#[derive(Debug, Clone)]
pub struct NewAudit {
    pub kind: &'static str,
    pub subject: String,
    pub actor: String,
    pub reason: String,
    pub detail: serde_json::Value,
}

/// An operator's pin of a device or host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub target: String,
    pub pin: Target,
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

/// The policy document in force.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    pub name: String,
    pub document_toml: String,
    pub revision: u64,
    pub updated_at: DateTime<Utc>,
    pub actor: String,
}

/// A demand-response event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandResponse {
    pub event_id: String,
    pub target_power_w: f64,
    pub deadline: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub actor: String,
    pub created_at: DateTime<Utc>,
    /// When it was cancelled, if it was.
    #[serde(default)]
    pub cancelled_at: Option<DateTime<Utc>>,
}

impl DemandResponse {
    /// Whether the event constrains the site at `now` (from its creation until it ends, unless
    /// cancelled): the site sheds towards the target from the moment the event is known.
    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.cancelled_at.is_none() && now < self.ends_at
    }

    /// "shedding" (before the deadline), "holding" (deadline to end), "ended", "cancelled".
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.cancelled_at.is_some() {
            "cancelled"
        } else if now >= self.ends_at {
            "ended"
        } else if now < self.deadline {
            "shedding"
        } else {
            "holding"
        }
    }
}

/// The last status an agent reported for the generation the controller holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub phase: IntentPhase,
    pub detail: String,
    /// With `Failed`: whether the agent retries this generation.
    pub retrying: bool,
    pub observed_power_w: Option<f64>,
    pub at: DateTime<Utc>,
}

/// The controller's desired state for one device: the intent it issued (generation, lease,
/// target, plan) and where the agent says it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceIntent {
    pub host_id: String,
    pub intent: Intent,
    pub issued_at: DateTime<Utc>,
    /// What the device was committed at before this intent, W: the "before" of a transition,
    /// counted until the intent is confirmed (DESIGN.md invariant 1).
    pub before_w: Option<f64>,
    pub status: Option<StatusRecord>,
    /// Miners: the owner's setting from before Pivot first trimmed it, W, carried from intent to
    /// intent (a restore sends it; the planner counts full power at it).
    pub setting_before_w: Option<f64>,
}

/// Where a plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Phases are being sent and confirmed.
    Executing,
    /// Every phase done.
    Completed,
    /// A newer plan took over before it finished.
    Superseded,
    /// Stopped in a safe state (a phase that releases power failed); see the audit log.
    Stopped,
}

impl PlanState {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::Executing => "executing",
            PlanState::Completed => "completed",
            PlanState::Superseded => "superseded",
            PlanState::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "executing" => PlanState::Executing,
            "completed" => PlanState::Completed,
            "superseded" => PlanState::Superseded,
            "stopped" => PlanState::Stopped,
            _ => return None,
        })
    }
}

/// A plan as stored: its id, progress, and the plan itself as JSON (the planner's serialised
/// plan; the store does not look inside).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    pub plan_id: String,
    pub created_at: DateTime<Utc>,
    pub state: PlanState,
    /// The phase being executed (or the last one, once done).
    pub current_phase: u32,
    pub updated_at: DateTime<Utc>,
    pub document: serde_json::Value,
}

/// What a plan's summary needs, kept beside its document so the site status does not parse a
/// plan of 10,000 moves (megabytes of JSON) to say which plan runs.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanHeader {
    pub plan_id: String,
    pub created_at: DateTime<Utc>,
    pub state: PlanState,
    pub current_phase: u32,
    /// How many phases its execution has (`exec.phases` in the document).
    pub phases: u32,
    /// Why it was made (`reason` in the document).
    pub reason: String,
}

impl StoredPlan {
    /// The plan's header, from its document (the store keeps its phases and reason in columns
    /// of their own).
    pub fn header(&self) -> PlanHeader {
        let phases = self
            .document
            .get("exec")
            .and_then(|e| e.get("phases"))
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        PlanHeader {
            plan_id: self.plan_id.clone(),
            created_at: self.created_at,
            state: self.state,
            current_phase: self.current_phase,
            phases: u32::try_from(phases).unwrap_or(u32::MAX),
            reason: self
                .document
                .get("reason")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// One sample of the market inputs the planner saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketSample {
    pub at: DateTime<Utc>,
    pub hashprice_usd_per_ph_day: Option<f64>,
    pub energy_usd_per_mwh: Option<f64>,
    pub ai_usd_per_gpu_hour: Option<f64>,
    pub ai_gpu_demand: Option<u32>,
    /// Whether the planner could run on it; `problems` says why not.
    pub usable: bool,
    pub problems: Vec<String>,
}

/// One sample of the site's power and margin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSample {
    pub at: DateTime<Utc>,
    /// The cap in force (site cap minus reserve, or lower under DR / a schedule window), W.
    pub cap_w: f64,
    pub committed_w: f64,
    pub measured_w: f64,
    pub mining_w: f64,
    pub ai_w: f64,
    pub margin_usd_per_h: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("policy revision conflict: expected {expected}, store has {actual}")]
    RevisionConflict { expected: u64, actual: u64 },
    #[error("store record {what} is corrupt: {problem}")]
    Corrupt { what: String, problem: String },
    #[error("{what} already exists")]
    Exists { what: String },
    #[error(
        "intent for {device_id}: generation {generation} is not above the {stored} already issued"
    )]
    StaleGeneration {
        device_id: String,
        generation: u64,
        stored: u64,
    },
    #[error("store {path}: schema version {found} is newer than this controller's {supported}")]
    SchemaTooNew {
        path: String,
        found: i64,
        supported: i64,
    },
}

/// Durable controller state.
pub trait Store: Send + Sync + 'static {
    /// Appends `entries` in order, in one transaction (all or none).
    fn append_audits(&self, entries: Vec<NewAudit>) -> Result<Vec<AuditRecord>, StoreError>;
    /// Newest first; `before_id` 0 for the newest; `subject` and `kind` empty for all.
    fn list_audit(
        &self,
        limit: u32,
        before_id: u64,
        subject: &str,
        kind: &str,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    fn put_override(&self, o: &Override) -> Result<(), StoreError>;
    /// Whether an override existed.
    fn clear_override(&self, target: &str) -> Result<bool, StoreError>;
    /// Overrides not expired at `now`.
    fn list_overrides(&self, now: DateTime<Utc>) -> Result<Vec<Override>, StoreError>;
    fn get_policy(&self) -> Result<Option<StoredPolicy>, StoreError>;
    /// Replaces the policy; `expected_revision` `None` skips the optimistic-concurrency check
    /// (`Some(0)`: only if no policy was stored yet).
    fn set_policy(
        &self,
        name: &str,
        document_toml: &str,
        actor: &str,
        expected_revision: Option<u64>,
    ) -> Result<StoredPolicy, StoreError>;
    /// Stores a new event; an id that exists already is refused (`Exists`), never replaced.
    fn put_demand_response(&self, e: &DemandResponse) -> Result<(), StoreError>;
    /// Marks an event cancelled at `at`; whether it existed and was not cancelled before.
    fn cancel_demand_response(&self, event_id: &str, at: DateTime<Utc>)
    -> Result<bool, StoreError>;
    /// Events in force at `now` (not cancelled, not ended), oldest first.
    fn demand_responses_in_force(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<DemandResponse>, StoreError>;
    /// The most recent events (any state), newest first.
    fn list_demand_responses(&self, limit: u32) -> Result<Vec<DemandResponse>, StoreError>;

    /// Stores intents issued together, in one transaction: all or none. Each must carry a
    /// generation above the one stored for its device (`StaleGeneration` otherwise: generations
    /// never go down, even across restarts).
    fn put_intents(&self, intents: &[DeviceIntent]) -> Result<(), StoreError>;
    /// Records agents' statuses, each for `(device_id, generation)`, in one transaction; a
    /// status is ignored when the controller holds another generation for the device. How many
    /// were recorded.
    fn set_intent_statuses(
        &self,
        statuses: &[(&str, u64, &StatusRecord)],
    ) -> Result<usize, StoreError>;
    /// Every device's desired state.
    fn list_intents(&self) -> Result<Vec<DeviceIntent>, StoreError>;
    /// The highest generation ever issued for a device (0 when none).
    fn max_generation(&self, device_id: &str) -> Result<u64, StoreError>;

    fn put_plan(&self, plan: &StoredPlan) -> Result<(), StoreError>;
    fn update_plan(
        &self,
        plan_id: &str,
        state: PlanState,
        current_phase: u32,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The plan being executed, if any (the newest with state `Executing`).
    fn plan_in_flight(&self) -> Result<Option<StoredPlan>, StoreError>;
    /// The newest plans, newest first.
    fn list_plans(&self, limit: u32) -> Result<Vec<StoredPlan>, StoreError>;
    /// The newest plan's header, without reading its document.
    fn latest_plan_header(&self) -> Result<Option<PlanHeader>, StoreError>;

    fn append_market(&self, sample: &MarketSample) -> Result<(), StoreError>;
    fn append_site(&self, sample: &SiteSample) -> Result<(), StoreError>;
    /// Samples at or after `since`, oldest first, at most `limit`.
    fn market_history(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<MarketSample>, StoreError>;
    fn site_history(&self, since: DateTime<Utc>, limit: u32)
    -> Result<Vec<SiteSample>, StoreError>;
    /// Drops market and site samples older than `before`; how many.
    fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Stores a new API token (its hash only); an id or hash that exists is refused.
    fn put_token(&self, t: &crate::auth::TokenRecord) -> Result<(), StoreError>;
    fn token_by_hash(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<crate::auth::TokenRecord>, StoreError>;
    fn list_tokens(&self) -> Result<Vec<crate::auth::TokenRecord>, StoreError>;
    /// Whether a token with that id existed and was not revoked before.
    fn revoke_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;
}
