//! pivot-controller: the site's brain — fleet registry, policies, store and the gRPC API.

pub mod api;
pub mod auth;
pub mod backtest;
pub mod config;
pub mod demand;
pub mod engine;
pub mod executor;
pub mod fleet;
pub mod intents;
pub mod market;
pub mod outlook;
pub mod overrides;
pub mod phase_timing;
pub mod planner;
pub mod planview;
pub mod policy;
pub mod shed_time;
pub mod store;
pub mod toml_lines;
pub mod trace;
pub mod views;
pub mod web;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_proto::model;
use pivot_proto::model::IntentPhase;
use pivot_proto::v1;
use tokio::sync::{Notify, broadcast};
use tonic::Status;
use tracing::error;

use crate::config::Config;
use crate::executor::{Execution, Failures};
use crate::fleet::Registry;
use crate::intents::Ledger;
use crate::outlook::Outlook;
use crate::store::{AuditRecord, NewAudit, StatusRecord, Store, StoreError};

/// The controller's shared state.
/// Store calls in flight at once (see `Controller::store_slots`).
const STORE_SLOTS: usize = 8;

pub struct Controller {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    /// The desired state of every device.
    pub ledger: Arc<Ledger>,
    /// Who callers are and what they may do.
    pub auth: auth::Authenticator,
    /// Woken when something should make the controller plan again (an agent joined or left, an
    /// override, a DR event, a plan finished).
    pub replan: Notify,
    /// Woken when an intent's status moved (the executor looks again).
    pub progress: Notify,
    execution: Mutex<Option<Execution>>,
    /// Store calls running at once. The store serialises its writes anyway; without a bound a
    /// burst of statuses (10,000 on a large site) starts up to tokio's 512 blocking threads.
    /// (It did not lower the controller's peak RSS in the sessions bench: that is not explained
    /// yet, docs/BENCHMARKS.md.)
    store_slots: tokio::sync::Semaphore,
    failures: Mutex<Failures>,
    outlook: Mutex<Outlook>,
    /// How long recent shed phases took to confirm (the shed lead grows to fit them).
    shed_times: Mutex<shed_time::ShedTimes>,
    /// Audit records as they are written, for watchers (made into protobuf only by the watch
    /// stream that sends them on) and the metrics (which read the record's detail as it is).
    events: broadcast::Sender<Arc<AuditRecord>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("site", &self.config.site.id)
            .finish_non_exhaustive()
    }
}

/// Events kept for watchers that have not read them yet. A watcher further behind misses the
/// oldest. A 10,000-move phase publishes 20,000 status records in bursts of up to 1,024 (one per
/// store transaction), faster than a watcher sends them on: the buffer holds a whole burst with
/// room for a watcher that is already behind (about 5 MB when full).
const EVENTS_BUFFER: usize = 16_384;

/// Held devices the site status names (it counts them all).
const HELD_SHOWN: usize = 100;

impl Controller {
    /// A controller over `store`, with the desired state the store holds.
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let (events, _) = broadcast::channel(EVENTS_BUFFER);
        let ledger = Arc::new(Ledger::load(Arc::clone(&store))?);
        // Hosts with stored intents count, unseen, before they reconnect (fleet::Registry::restore).
        let registry = Registry::default();
        registry.restore(&ledger.all());
        let auth = auth::Authenticator::new(config.auth.clone(), Arc::clone(&store));
        let ctl = Self {
            config,
            store,
            registry,
            ledger,
            auth,
            replan: Notify::new(),
            progress: Notify::new(),
            execution: Mutex::new(None),
            store_slots: tokio::sync::Semaphore::new(STORE_SLOTS),
            failures: Mutex::new(Failures::default()),
            outlook: Mutex::new(Outlook::default()),
            shed_times: Mutex::new(shed_time::ShedTimes::default()),
            events,
        };
        // A move that failed for good before a restart is held from when it failed, not tried
        // again at once.
        let held = ctl.ledger.all();
        ctl.note_outcomes(held.iter().filter_map(|d| {
            let s = d.status.as_ref()?;
            Some((d.intent.device_id.as_str(), d.intent.generation, s))
        }));
        Ok(Arc::new(ctl))
    }

    pub fn telemetry_interval(&self) -> Duration {
        Duration::from_secs(self.config.agents.telemetry_interval_s)
    }

    /// Subscribes to live events (audit records as they are written).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditRecord>> {
        self.events.subscribe()
    }

    /// The longest recent shed phase, seconds from its first intent to confirmed (or to being
    /// superseded, unconfirmed).
    pub fn longest_recent_shed_s(&self) -> Option<f64> {
        self.shed_times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .longest()
    }

    pub(crate) fn record_shed_s(&self, seconds: f64) {
        self.shed_times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(seconds);
    }

    /// What the latest planning round saw.
    pub fn outlook(&self) -> Outlook {
        self.outlook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records what a planning round saw.
    pub fn set_outlook(&self, o: Outlook) {
        *self
            .outlook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = o;
    }

    /// Whether a host may join with the inventory of its hello.
    pub fn admit(&self, entry: &fleet::AgentEntry) -> Result<(), Status> {
        let limits = fleet::HostLimits {
            max_devices: self.config.agents.max_devices_per_host,
            // A site may well host more than it can run at once (that is what curtailment is
            // for), but not wildly more on one host.
            max_power_w: self
                .config
                .agents
                .max_host_power_w
                .unwrap_or(2.0 * self.config.site.cap_w),
        };
        self.registry
            .admit(entry, &limits, &self.config.agents.assumptions())
    }

    /// The site cap minus its reserve, W.
    pub fn usable_cap_w(&self) -> f64 {
        self.config.site.cap_w - self.config.site.reserve_w
    }

    /// Devices whose last move failed recently and that the planner leaves alone for now, with
    /// the reason and when that ends (`[engine] failure_memory_s`, doubling with each failure
    /// in a row up to `failure_memory_max_s`).
    pub fn recent_failures(&self) -> Vec<(String, String, DateTime<Utc>)> {
        let secs = |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX));
        let e = &self.config.engine;
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recent(
                Utc::now(),
                secs(e.failure_memory_s),
                secs(e.failure_memory_max_s),
            )
            .into_iter()
            .map(|(d, (r, until))| (d.to_owned(), r.to_owned(), until))
            .collect()
    }

    /// Agents' statuses that end a move: a failure for good is remembered (the planner holds
    /// the device for a while, whichever plan issued the intent), a confirmation ends the
    /// device's failures in a row.
    pub(crate) fn note_outcomes<'a>(
        &self,
        outcomes: impl IntoIterator<Item = (&'a str, u64, &'a StatusRecord)>,
    ) {
        // The agent's clock says when; one ahead of the controller's cannot hold a device longer.
        let now = Utc::now();
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (device, generation, s) in outcomes {
            match s.phase {
                IntentPhase::Confirmed => f.forget(device),
                IntentPhase::Rejected => f.record(
                    device.to_owned(),
                    Some(generation),
                    s.at.min(now),
                    format!("rejected: {}", s.detail),
                ),
                IntentPhase::Failed if !s.retrying => f.record(
                    device.to_owned(),
                    Some(generation),
                    s.at.min(now),
                    format!("failed: {}", s.detail),
                ),
                _ => {}
            }
        }
    }

    /// Runs a store call off the async runtime.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        let _slot = self
            .store_slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the controller is shutting down"))?;
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(Status::from)
    }

    /// Writes an audit record and publishes it to watchers. A store failure is logged, not
    /// propagated: the action it records has already happened.
    pub async fn audit(&self, entry: NewAudit) -> Option<Arc<AuditRecord>> {
        self.audit_all(vec![entry]).await.pop()
    }

    /// Writes audit records in order, in one store transaction, and publishes each to watchers
    /// (a burst of agent statuses is one write, not one each). A store failure is logged, not
    /// propagated, as for [`Controller::audit`].
    pub async fn audit_all(&self, entries: Vec<NewAudit>) -> Vec<Arc<AuditRecord>> {
        let Some(subject) = entries.first().map(|e| e.subject.clone()) else {
            return Vec::new();
        };
        let n = entries.len();
        match self.blocking(move |s| s.append_audits(entries)).await {
            Ok(records) => records
                .into_iter()
                .map(|record| {
                    let record = Arc::new(record);
                    // No watcher is fine.
                    let _ = self.events.send(Arc::clone(&record));
                    record
                })
                .collect(),
            Err(e) => {
                error!(subject = %subject, records = n, error = %e, "Could not write audit records");
                Vec::new()
            }
        }
    }

    /// The site at a glance.
    pub async fn site_status(&self) -> Result<v1::SiteStatus, Status> {
        let now = Utc::now();
        let events = self
            .blocking(move |s| s.demand_responses_in_force(now))
            .await?;
        let policy = self.blocking(|s| s.get_policy()).await?;
        let plan = self.blocking(|s| s.latest_plan_header()).await?;
        let f = self.registry.summary_with(
            &self.config.agents.assumptions(),
            self.config.engine.unknown_host_base_w_per_gpu,
            |host, device| {
                self.ledger.inspect(device, |d| {
                    d.filter(|d| d.host_id == host)
                        .and_then(fleet::Confirmation::of)
                })
            },
        );
        let o = self.outlook();
        let mut held = self.recent_failures();
        held.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
        // Overlapping events: the lowest target is the one in force.
        let dr = events
            .iter()
            .min_by(|a, b| a.target_power_w.total_cmp(&b.target_power_w))
            .map(|e| self.dr_to_proto(e, now, &o));
        Ok(v1::SiteStatus {
            site_id: self.config.site.id.clone(),
            site_cap_w: self.config.site.cap_w,
            reserve_w: self.config.site.reserve_w,
            committed_power_w: if o.at.is_some() {
                o.committed_w.max(f.committed_power_w)
            } else {
                f.committed_power_w
            },
            measured_power_w: f.measured_power_w,
            agents_connected: f.agents_connected,
            miners_total: f.miners_total,
            miners_mining: f.miners_mining,
            miners_sleeping: f.miners_sleeping,
            miners_unreachable: f.miners_unreachable,
            gpus_total: f.gpus_total,
            policy: policy.map_or_else(|| "economic".to_owned(), |p| p.name),
            demand_response: dr,
            as_of: Some(model::timestamp_to_proto(now)),
            controller_version: env!("CARGO_PKG_VERSION").to_owned(),
            mining_power_w: o.mining_w,
            ai_power_w: o.ai_w,
            cap_in_force_w: o.cap_in_force_w.unwrap_or_else(|| self.usable_cap_w()),
            cap_reason: if o.cap_reason.is_empty() {
                "site cap minus reserve".into()
            } else {
                o.cap_reason.clone()
            },
            economics: o.economics.clone(),
            plan: plan.map(|p| plan_summary(&p)),
            mode: if o.mode.is_empty() {
                "starting: no plan yet".into()
            } else {
                o.mode.clone()
            },
            margin_usd_per_h: o.margin_usd_per_h,
            gpu_hosts_total: o.gpu_hosts_total,
            gpu_hosts_serving: o.gpu_hosts_serving,
            waiting: o.waiting.clone(),
            held_total: u32::try_from(held.len()).unwrap_or(u32::MAX),
            held: held
                .into_iter()
                .take(HELD_SHOWN)
                .map(|(device_id, reason, until)| v1::HeldDevice {
                    device_id,
                    reason,
                    until: Some(model::timestamp_to_proto(until)),
                })
                .collect(),
        })
    }

    /// A demand-response event as the API shows it: its state, and while it is in force the
    /// draw achieved and the lowest the site can reach.
    pub fn dr_to_proto(
        &self,
        e: &store::DemandResponse,
        now: chrono::DateTime<Utc>,
        o: &Outlook,
    ) -> v1::DemandResponseEvent {
        let in_force = e.in_force(now);
        let achievable = o.min_reachable_w.filter(|_| in_force);
        let note = match achievable {
            Some(a) if a > e.target_power_w => format!(
                "target {:.0} W cannot be reached: the controllable load goes down to {a:.0} W",
                e.target_power_w
            ),
            _ => String::new(),
        };
        v1::DemandResponseEvent {
            event_id: e.event_id.clone(),
            target_power_w: e.target_power_w,
            deadline: Some(model::timestamp_to_proto(e.deadline)),
            ends_at: Some(model::timestamp_to_proto(e.ends_at)),
            actor: e.actor.clone(),
            created_at: Some(model::timestamp_to_proto(e.created_at)),
            state: e.state(now).to_owned(),
            achieved_power_w: in_force.then_some(o.committed_w).filter(|_| o.at.is_some()),
            achievable_power_w: achievable,
            cancelled_at: e.cancelled_at.map(model::timestamp_to_proto),
            note,
        }
    }
}

/// A stored plan at a glance.
pub fn plan_summary(p: &store::PlanHeader) -> v1::PlanSummary {
    v1::PlanSummary {
        plan_id: p.plan_id.clone(),
        created_at: Some(model::timestamp_to_proto(p.created_at)),
        state: p.state.as_str().to_owned(),
        current_phase: p.current_phase,
        phases: p.phases,
        reason: p.reason.clone(),
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
