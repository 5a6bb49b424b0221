//! The controller's durable state: audit log, overrides, policy, demand-response events.
//!
//! [`Store`] is the seam; [`sqlite::SqliteStore`] is the embedded default. Calls are blocking
//! (SQLite is local and fast); async callers go through `tokio::task::spawn_blocking`.

pub mod sqlite;

use chrono::{DateTime, Utc};
use pivot_proto::model::Target;
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
}

/// Durable controller state.
pub trait Store: Send + Sync + 'static {
    fn append_audit(&self, entry: NewAudit) -> Result<AuditRecord, StoreError>;
    /// Newest first; `before_id` 0 for the newest; `subject` empty for all.
    fn list_audit(
        &self,
        limit: u32,
        before_id: u64,
        subject: &str,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    fn put_override(&self, o: &Override) -> Result<(), StoreError>;
    /// Whether an override existed.
    fn clear_override(&self, target: &str) -> Result<bool, StoreError>;
    /// Overrides not expired at `now`.
    fn list_overrides(&self, now: DateTime<Utc>) -> Result<Vec<Override>, StoreError>;
    fn get_policy(&self) -> Result<Option<StoredPolicy>, StoreError>;
    /// Replaces the policy; `expected_revision` 0 skips the optimistic-concurrency check.
    fn set_policy(
        &self,
        name: &str,
        document_toml: &str,
        actor: &str,
        expected_revision: u64,
    ) -> Result<StoredPolicy, StoreError>;
    fn put_demand_response(&self, e: &DemandResponse) -> Result<(), StoreError>;
    /// The event in force at `now`, if any (the latest created one).
    fn active_demand_response(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DemandResponse>, StoreError>;
}
