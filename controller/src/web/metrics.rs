//! The controller's `/metrics` (OpenMetrics text, prometheus-client with typed label sets).
//!
//! Gauges are set at scrape time from what status shows ([`Controller::site_status`], the
//! registry's agents), so a scrape never reads a number the API would not give. Counters
//! (decisions, intent statuses, plan outcomes) count the controller's audit events as they are
//! written, from the same broadcast WatchEvents serves. Names carry the `pivot_` prefix and
//! their unit: watts, seconds; prices in the market's own units (USD per MWh, USD per PH/s per
//! day), as every pivot API names them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use pivot_proto::{model, v1};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::broadcast;

use super::Web;
use crate::Controller;
use crate::store::AuditRecord;

type FloatGauge = Gauge<f64, AtomicU64>;
/// A gauge with no sample while its value is unknown (never a made-up 0).
type MaybeGauge = Family<Unlabelled, FloatGauge>;

/// The label set of a series without labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Unlabelled;

impl EncodeLabelSet for Unlabelled {
    fn encode(&self, _: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> std::fmt::Result {
        Ok(())
    }
}

/// Sets `g` to `v`, or leaves it without a sample when `v` is unknown.
fn set_maybe(g: &MaybeGauge, v: Option<f64>) {
    g.clear();
    if let Some(v) = v.filter(|v| v.is_finite()) {
        g.get_or_create(&Unlabelled).set(v);
    }
}

/// Label values from a closed set, written as their lowercase names.
macro_rules! label_value {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl EncodeLabelValue for $name {
            fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                e.write_str(match self { $($name::$variant => $text),+ })
            }
        }
    };
}

label_value!(LoadClass { Mining => "mining", Ai => "ai" });
label_value!(MinerCount { Mining => "mining", Sleeping => "sleeping", Unreachable => "unreachable" });
label_value!(DecisionAction {
    Sleep => "sleep", Trim => "trim", Wake => "wake", Drain => "drain", Release => "release",
    Warning => "warning", Other => "other",
});
label_value!(IntentOutcome {
    Pending => "pending", Applied => "applied", Confirmed => "confirmed", Failed => "failed",
    Rejected => "rejected", Refused => "refused", Other => "other",
});
label_value!(PlanOutcome { Completed => "completed", MoveFailed => "move_failed", Other => "other" });
label_value!(PlanStateLabel {
    Executing => "executing", Completed => "completed", Superseded => "superseded",
    Stopped => "stopped", Other => "other",
});

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: LoadClass,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MinerCountLabels {
    pub state: MinerCount,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub action: DecisionAction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntentLabels {
    pub phase: IntentOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    pub outcome: PlanOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanStateLabels {
    pub state: PlanStateLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InputLabels {
    pub input: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub site: String,
    pub version: String,
}

/// Text from an agent or a config made safe as a label value: the text format has no escape
/// for control characters other than a newline.
fn label(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// Every series the controller exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// One scrape at a time: gauges are cleared and set from one status.
    scrape: tokio::sync::Mutex<()>,
    info: Family<InfoLabels, Gauge>,
    site_cap: FloatGauge,
    site_reserve: FloatGauge,
    cap_in_force: FloatGauge,
    committed: FloatGauge,
    measured: FloatGauge,
    load_power: Family<ClassLabels, FloatGauge>,
    load_margin: Family<ClassLabels, FloatGauge>,
    hashprice: MaybeGauge,
    energy_price: MaybeGauge,
    ai_value: MaybeGauge,
    ai_price: MaybeGauge,
    mining_value: MaybeGauge,
    margin: MaybeGauge,
    breakeven: Family<ModelLabels, FloatGauge>,
    class_miners: Family<ModelLabels, Gauge>,
    market_usable: MaybeGauge,
    input_fresh: Family<InputLabels, Gauge>,
    input_age: Family<InputLabels, FloatGauge>,
    plan_phase: Gauge,
    plan_phases: Gauge,
    plan_state: Family<PlanStateLabels, Gauge>,
    agents_connected: Gauge,
    agent_connected: Family<HostLabels, Gauge>,
    agent_last_seen: Family<HostLabels, FloatGauge>,
    miners: Family<MinerCountLabels, Gauge>,
    gpus: Gauge,
    dr_active: Gauge,
    dr_target: MaybeGauge,
    dr_achieved: MaybeGauge,
    dr_deadline: MaybeGauge,
    decisions: Family<DecisionLabels, Counter>,
    intents: Family<IntentLabels, Counter>,
    plans: Family<PlanLabels, Counter>,
    events_missed: Counter,
}

fn watts() -> Unit {
    Unit::Other("watts".into())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            registry: Registry::default(),
            scrape: tokio::sync::Mutex::new(()),
            info: Family::default(),
            site_cap: FloatGauge::default(),
            site_reserve: FloatGauge::default(),
            cap_in_force: FloatGauge::default(),
            committed: FloatGauge::default(),
            measured: FloatGauge::default(),
            load_power: Family::default(),
            load_margin: Family::default(),
            hashprice: Family::default(),
            energy_price: Family::default(),
            ai_value: Family::default(),
            ai_price: Family::default(),
            mining_value: Family::default(),
            margin: Family::default(),
            breakeven: Family::default(),
            class_miners: Family::default(),
            market_usable: Family::default(),
            input_fresh: Family::default(),
            input_age: Family::default(),
            plan_phase: Gauge::default(),
            plan_phases: Gauge::default(),
            plan_state: Family::default(),
            agents_connected: Gauge::default(),
            agent_connected: Family::default(),
            agent_last_seen: Family::default(),
            miners: Family::default(),
            gpus: Gauge::default(),
            dr_active: Gauge::default(),
            dr_target: Family::default(),
            dr_achieved: Family::default(),
            dr_deadline: Family::default(),
            decisions: Family::default(),
            intents: Family::default(),
            plans: Family::default(),
            events_missed: Counter::default(),
        };
        r.register(
            "pivot_controller_info",
            "The controller's site and version (always 1)",
            m.info.clone(),
        );
        r.register_with_unit(
            "pivot_site_cap",
            "Contracted grid connection cap",
            watts(),
            m.site_cap.clone(),
        );
        r.register_with_unit(
            "pivot_site_reserve",
            "Power kept free below the site cap",
            watts(),
            m.site_reserve.clone(),
        );
        r.register_with_unit(
            "pivot_site_cap_in_force",
            "The cap the planner works under now (site cap minus reserve, or lower for a demand-response event or a schedule window)",
            watts(),
            m.cap_in_force.clone(),
        );
        r.register_with_unit(
            "pivot_site_committed_power",
            "Power the controller has committed: every device at the most it may draw, a device in transition at the higher of before and after, an unseen one at its maximum",
            watts(),
            m.committed.clone(),
        );
        r.register_with_unit(
            "pivot_site_measured_power",
            "Power the devices report drawing",
            watts(),
            m.measured.clone(),
        );
        r.register_with_unit(
            "pivot_load_power",
            "Committed power by load class",
            watts(),
            m.load_power.clone(),
        );
        r.register(
            "pivot_load_margin_usd_per_mwh",
            "Value minus energy price per MWh by load class (mining at the fleet's average efficiency, AI at its value with work)",
            m.load_margin.clone(),
        );
        r.register(
            "pivot_hashprice_usd_per_ph_day",
            "Hashprice, USD per PH/s per day",
            m.hashprice.clone(),
        );
        r.register(
            "pivot_energy_price_usd_per_mwh",
            "Real-time energy price, USD per MWh (may be negative)",
            m.energy_price.clone(),
        );
        r.register(
            "pivot_ai_value_usd_per_mwh",
            "Value of interruptible GPU capacity with work, USD per MWh",
            m.ai_value.clone(),
        );
        r.register(
            "pivot_ai_price_usd_per_gpu_hour",
            "Spot price of a GPU-hour, USD",
            m.ai_price.clone(),
        );
        r.register(
            "pivot_mining_value_usd_per_mwh",
            "Mining value per MWh at the fleet's average efficiency, USD",
            m.mining_value.clone(),
        );
        r.register(
            "pivot_margin_usd_per_hour",
            "The site's margin at the latest plan: value of the loads running minus their energy cost, USD per hour",
            m.margin.clone(),
        );
        r.register(
            "pivot_miner_class_breakeven_usd_per_mwh",
            "Breakeven energy price of a miner model (its gross value per MWh at today's hashprice)",
            m.breakeven.clone(),
        );
        r.register(
            "pivot_miner_class_miners",
            "Miners of a model",
            m.class_miners.clone(),
        );
        r.register(
            "pivot_market_usable",
            "1 when the market inputs are good enough for economic decisions, 0 when the safe policy is in force",
            m.market_usable.clone(),
        );
        r.register(
            "pivot_market_input_fresh",
            "1 when a market input's latest reading is fresh, 0 when stale, failed or missing",
            m.input_fresh.clone(),
        );
        r.register_with_unit(
            "pivot_market_input_age",
            "Age of a market input's latest reading",
            Unit::Seconds,
            m.input_age.clone(),
        );
        r.register(
            "pivot_plan_phase",
            "Index of the phase the latest plan is in (0-based)",
            m.plan_phase.clone(),
        );
        r.register(
            "pivot_plan_phases",
            "Phases of the latest plan",
            m.plan_phases.clone(),
        );
        r.register(
            "pivot_plan_state",
            "1 for the state the latest plan is in",
            m.plan_state.clone(),
        );
        r.register(
            "pivot_agents_connected",
            "Agents with a live session",
            m.agents_connected.clone(),
        );
        r.register(
            "pivot_agent_connected",
            "1 while a known host's agent has a live session, 0 once it is lost (its devices count at their maximum)",
            m.agent_connected.clone(),
        );
        r.register_with_unit(
            "pivot_agent_last_seen_timestamp",
            "When a host's agent was last heard, Unix time",
            Unit::Seconds,
            m.agent_last_seen.clone(),
        );
        r.register("pivot_miners", "Miners by state", m.miners.clone());
        r.register("pivot_gpus", "GPUs the agents declared", m.gpus.clone());
        r.register(
            "pivot_demand_response_active",
            "1 while a demand-response event is in force",
            m.dr_active.clone(),
        );
        r.register_with_unit(
            "pivot_demand_response_target",
            "Target draw of the demand-response event in force",
            watts(),
            m.dr_target.clone(),
        );
        r.register_with_unit(
            "pivot_demand_response_achieved",
            "Committed draw while a demand-response event is in force",
            watts(),
            m.dr_achieved.clone(),
        );
        r.register_with_unit(
            "pivot_demand_response_deadline_timestamp",
            "When the event in force must have reached its target, Unix time",
            Unit::Seconds,
            m.dr_deadline.clone(),
        );
        r.register(
            "pivot_decisions",
            "Planner decisions written to the audit log, by action",
            m.decisions.clone(),
        );
        r.register(
            "pivot_intent_statuses",
            "Intent statuses reported by agents, by phase (refused: a status the controller did not accept)",
            m.intents.clone(),
        );
        r.register(
            "pivot_plans_finished",
            "Plans that finished, by outcome",
            m.plans.clone(),
        );
        r.register(
            "pivot_metrics_events_missed",
            "Audit events the metrics counters missed because they fell behind",
            m.events_missed.clone(),
        );
        // Every counter of the closed sets starts at 0, so the first event is an increase
        // Prometheus sees (a series born at 1 hides it from rate() and increase()).
        for action in [
            DecisionAction::Sleep,
            DecisionAction::Trim,
            DecisionAction::Wake,
            DecisionAction::Drain,
            DecisionAction::Release,
            DecisionAction::Warning,
        ] {
            m.decisions
                .get_or_create(&DecisionLabels { action })
                .inc_by(0);
        }
        for phase in [
            IntentOutcome::Pending,
            IntentOutcome::Applied,
            IntentOutcome::Confirmed,
            IntentOutcome::Failed,
            IntentOutcome::Rejected,
            IntentOutcome::Refused,
        ] {
            m.intents.get_or_create(&IntentLabels { phase }).inc_by(0);
        }
        for outcome in [PlanOutcome::Completed, PlanOutcome::MoveFailed] {
            m.plans.get_or_create(&PlanLabels { outcome }).inc_by(0);
        }
        Self { registry: r, ..m }
    }

    /// Counts one audit event.
    pub fn observe(&self, record: &AuditRecord) {
        let detail = &record.detail;
        let text = |k: &str| detail.get(k).and_then(serde_json::Value::as_str);
        match record.kind.as_str() {
            "decision" => {
                let action = if record.reason.starts_with("warning:") {
                    DecisionAction::Warning
                } else {
                    match text("action") {
                        Some("sleep") => DecisionAction::Sleep,
                        Some("trim") => DecisionAction::Trim,
                        Some("wake") => DecisionAction::Wake,
                        Some("drain") => DecisionAction::Drain,
                        Some("release") => DecisionAction::Release,
                        _ => DecisionAction::Other,
                    }
                };
                self.decisions
                    .get_or_create(&DecisionLabels { action })
                    .inc();
            }
            "status" => {
                let phase = match text("phase") {
                    Some("pending") => IntentOutcome::Pending,
                    Some("applied") => IntentOutcome::Applied,
                    Some("confirmed") => IntentOutcome::Confirmed,
                    Some("failed") => IntentOutcome::Failed,
                    Some("rejected") => IntentOutcome::Rejected,
                    None if record.reason.starts_with("refused") => IntentOutcome::Refused,
                    _ => IntentOutcome::Other,
                };
                self.intents.get_or_create(&IntentLabels { phase }).inc();
            }
            "plan" => {
                let outcome = match (text("state"), detail.get("plan_id")) {
                    (Some("completed"), _) => PlanOutcome::Completed,
                    (None, Some(_)) => PlanOutcome::MoveFailed,
                    _ => PlanOutcome::Other,
                };
                self.plans.get_or_create(&PlanLabels { outcome }).inc();
            }
            _ => {}
        }
    }

    /// Sets every gauge from the site as status shows it now.
    fn set(&self, ctl: &Controller, s: &v1::SiteStatus) {
        let now = Utc::now();
        self.info.clear();
        self.info
            .get_or_create(&InfoLabels {
                site: label(&s.site_id),
                version: label(&s.controller_version),
            })
            .set(1);
        self.site_cap.set(s.site_cap_w);
        self.site_reserve.set(s.reserve_w);
        self.cap_in_force.set(s.cap_in_force_w);
        self.committed.set(s.committed_power_w);
        self.measured.set(s.measured_power_w);
        for (class, w) in [
            (LoadClass::Mining, s.mining_power_w),
            (LoadClass::Ai, s.ai_power_w),
        ] {
            self.load_power.get_or_create(&ClassLabels { class }).set(w);
        }
        self.load_margin.clear();
        self.breakeven.clear();
        self.class_miners.clear();
        self.input_fresh.clear();
        self.input_age.clear();
        let eco = s.economics.as_ref();
        set_maybe(&self.hashprice, eco.map(|e| e.hashprice_usd_per_ph_day));
        set_maybe(&self.energy_price, eco.map(|e| e.energy_price_usd_per_mwh));
        set_maybe(&self.ai_value, eco.map(|e| e.ai_value_usd_per_mwh));
        set_maybe(&self.ai_price, eco.map(|e| e.ai_spot_usd_per_gpu_hour));
        set_maybe(&self.mining_value, eco.map(|e| e.mining_value_usd_per_mwh));
        set_maybe(
            &self.market_usable,
            eco.map(|e| f64::from(u8::from(e.usable))),
        );
        if let Some(e) = eco {
            for (class, v) in [
                (LoadClass::Mining, e.mining_value_usd_per_mwh),
                (LoadClass::Ai, e.ai_value_usd_per_mwh),
            ] {
                self.load_margin
                    .get_or_create(&ClassLabels { class })
                    .set(v - e.energy_price_usd_per_mwh);
            }
            for c in &e.miner_classes {
                let l = ModelLabels {
                    model: label(&c.model),
                };
                self.breakeven.get_or_create(&l).set(c.value_usd_per_mwh);
                self.class_miners.get_or_create(&l).set(i64::from(c.count));
            }
            for i in &e.inputs {
                let l = InputLabels {
                    input: label(&i.name),
                };
                self.input_fresh
                    .get_or_create(&l)
                    .set(i64::from(i.health == "fresh"));
                if let Some(at) =
                    i.at.as_ref()
                        .and_then(|t| model::timestamp_from_proto(t, "at").ok())
                {
                    let age = (now - at).num_milliseconds() as f64 / 1000.0;
                    self.input_age.get_or_create(&l).set(age.max(0.0));
                }
            }
        }
        set_maybe(&self.margin, s.margin_usd_per_h);
        self.plan_state.clear();
        match &s.plan {
            Some(p) => {
                self.plan_phase.set(i64::from(p.current_phase));
                self.plan_phases.set(i64::from(p.phases));
                let state = match p.state.as_str() {
                    "executing" => PlanStateLabel::Executing,
                    "completed" => PlanStateLabel::Completed,
                    "superseded" => PlanStateLabel::Superseded,
                    "stopped" => PlanStateLabel::Stopped,
                    _ => PlanStateLabel::Other,
                };
                self.plan_state
                    .get_or_create(&PlanStateLabels { state })
                    .set(1);
            }
            None => {
                self.plan_phase.set(0);
                self.plan_phases.set(0);
            }
        }
        self.agents_connected.set(i64::from(s.agents_connected));
        self.agent_connected.clear();
        self.agent_last_seen.clear();
        ctl.registry.with_agents(|agents| {
            for a in agents.values() {
                let l = HostLabels {
                    host: label(&a.host_id),
                };
                self.agent_connected
                    .get_or_create(&l)
                    .set(i64::from(a.connected));
                self.agent_last_seen
                    .get_or_create(&l)
                    .set(a.last_seen.timestamp_millis() as f64 / 1000.0);
            }
        });
        for (state, n) in [
            (MinerCount::Mining, s.miners_mining),
            (MinerCount::Sleeping, s.miners_sleeping),
            (MinerCount::Unreachable, s.miners_unreachable),
        ] {
            self.miners
                .get_or_create(&MinerCountLabels { state })
                .set(i64::from(n));
        }
        self.gpus.set(i64::from(s.gpus_total));
        let dr = s.demand_response.as_ref();
        self.dr_active.set(i64::from(dr.is_some()));
        set_maybe(&self.dr_target, dr.map(|d| d.target_power_w));
        set_maybe(&self.dr_achieved, dr.and_then(|d| d.achieved_power_w));
        set_maybe(
            &self.dr_deadline,
            dr.and_then(|d| d.deadline.as_ref())
                .and_then(|t| model::timestamp_from_proto(t, "deadline").ok())
                .map(|t| t.timestamp_millis() as f64 / 1000.0),
        );
    }

    /// The exposition of the site now.
    pub async fn render(&self, ctl: &Controller) -> Result<String, tonic::Status> {
        let status = ctl.site_status().await?;
        let _one = self.scrape.lock().await;
        self.set(ctl, &status);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| tonic::Status::internal(format!("encoding metrics: {e}")))?;
        Ok(out)
    }
}

/// Counts the controller's audit events into `metrics` until the controller goes away.
pub fn count_events(metrics: Arc<Metrics>, mut events: broadcast::Receiver<Arc<AuditRecord>>) {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(r) => metrics.observe(&r),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics.events_missed.inc_by(n);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// `GET /metrics`. Open like the agent's: bind the web listener where only Prometheus and the
/// site's people reach it.
pub async fn handler(State(web): State<Web>) -> Response {
    match web.metrics.render(&web.ctl).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.message().to_owned()).into_response(),
    }
}
