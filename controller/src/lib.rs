//! pivot-controller: the site's brain — fleet registry, policies, store and the gRPC API.

pub mod api;
pub mod config;
pub mod demand;
pub mod fleet;
pub mod policy;
pub mod store;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pivot_proto::model;
use pivot_proto::v1;
use tokio::sync::broadcast;
use tonic::Status;
use tracing::error;

use crate::config::Config;
use crate::fleet::Registry;
use crate::store::{AuditRecord, NewAudit, Store, StoreError};

/// The controller's shared state.
pub struct Controller {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    events: broadcast::Sender<v1::Event>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("site", &self.config.site.id)
            .finish_non_exhaustive()
    }
}

impl Controller {
    pub fn new(config: Config, store: Arc<dyn Store>) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Self {
            config,
            store,
            registry: Registry::default(),
            events,
        })
    }

    pub fn telemetry_interval(&self) -> Duration {
        Duration::from_secs(self.config.agents.telemetry_interval_s)
    }

    /// Subscribes to live events (audit records as they are written).
    pub fn subscribe(&self) -> broadcast::Receiver<v1::Event> {
        self.events.subscribe()
    }

    /// Runs a store call off the async runtime.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(Status::from)
    }

    /// Writes an audit record and publishes it to watchers. A store failure is logged, not
    /// propagated: the action it records has already happened.
    pub async fn audit(&self, entry: NewAudit) -> Option<AuditRecord> {
        let subject = entry.subject.clone();
        match self.blocking(move |s| s.append_audit(entry)).await {
            Ok(record) => {
                // No watcher is fine.
                let _ = self.events.send(v1::Event {
                    at: Some(model::timestamp_to_proto(record.at)),
                    event: Some(v1::event::Event::Audit(audit_to_proto(&record))),
                });
                Some(record)
            }
            Err(e) => {
                error!(subject = %subject, error = %e, "Could not write audit record");
                None
            }
        }
    }

    /// The site at a glance.
    pub async fn site_status(&self) -> Result<v1::SiteStatus, Status> {
        let now = Utc::now();
        let dr = self
            .blocking(move |s| s.active_demand_response(now))
            .await?;
        let policy = self.blocking(|s| s.get_policy()).await?;
        let f = self.registry.summary(&self.config.agents.assumptions());
        Ok(v1::SiteStatus {
            site_id: self.config.site.id.clone(),
            site_cap_w: self.config.site.cap_w,
            reserve_w: self.config.site.reserve_w,
            committed_power_w: f.committed_power_w,
            measured_power_w: f.measured_power_w,
            agents_connected: f.agents_connected,
            miners_total: f.miners_total,
            miners_mining: f.miners_mining,
            miners_sleeping: f.miners_sleeping,
            miners_unreachable: f.miners_unreachable,
            gpus_total: f.gpus_total,
            policy: policy.map_or_else(|| "economic".to_owned(), |p| p.name),
            demand_response: dr.map(|e| v1::DemandResponseEvent {
                event_id: e.event_id,
                target_power_w: e.target_power_w,
                deadline: Some(model::timestamp_to_proto(e.deadline)),
                ends_at: Some(model::timestamp_to_proto(e.ends_at)),
                actor: e.actor,
                created_at: Some(model::timestamp_to_proto(e.created_at)),
            }),
            as_of: Some(model::timestamp_to_proto(now)),
            controller_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }
}

pub fn audit_to_proto(r: &AuditRecord) -> v1::AuditRecord {
    v1::AuditRecord {
        id: r.id,
        at: Some(model::timestamp_to_proto(r.at)),
        kind: r.kind.clone(),
        subject: r.subject.clone(),
        actor: r.actor.clone(),
        reason: r.reason.clone(),
        detail_json: r.detail.to_string(),
    }
}
