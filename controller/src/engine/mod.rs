//! The control loop: gather what the controller knows, ask the planner, execute the plan.
//!
//! One round: read the market snapshot, the policy, the demand-response events and overrides in
//! force, and the fleet (registry and intents) → [`planner::plan`] (pure) → record what it saw
//! (outlook, history) → if the plan moves anything, store and execute it (the executor confirms
//! each phase before the next) and write its decisions to the audit log in plain words.
//!
//! Rounds run on a timer (`[engine] replan_s`), at once when something happens (an agent joins or
//! leaves, an override, a demand-response event, a plan finishes or stops, an intent of a
//! superseded plan settles) and when the market moves past the policy's band. While a plan is
//! executing, a timer round only refreshes what status shows; an event replaces the plan.

mod economics;
mod exec_map;
pub mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tracing::{info, warn};

use crate::Controller;
use crate::market::{GpuWant, MarketView as MarketFeed, PlannerInputs};
use crate::outlook::Outlook;
use crate::planner::{self, PlanInput, PlannerMemory};
use crate::policy::{self, PolicyDocument};
use crate::shed_time;
use crate::store::{MarketSample, NewAudit, SiteSample};

pub use exec_map::{exec_plan, plan_document};

/// `[engine]` in the controller's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Plan at least this often, seconds.
    pub replan_s: u64,
    /// How long a phase that curtails miners may take to be confirmed (the slowest firmware in
    /// the phase: stock Antminer restarts cgminer, up to a minute or more), seconds.
    pub curtail_timeout_s: u64,
    /// How long lowering or raising GPU caps may take, seconds.
    pub gpu_timeout_s: u64,
    /// How long waking miners may take, seconds.
    pub grant_timeout_s: u64,
    /// How long releasing or draining a host in its workload manager may take, seconds.
    pub workload_timeout_s: u64,
    /// A reading older than this is not believed (the device counts unseen); default three
    /// telemetry intervals.
    pub stale_after_s: Option<u64>,
    /// A device whose move failed holds where it is for this long, seconds; twice as long after
    /// each further failure in a row (no confirmed move in between)...
    pub failure_memory_s: u64,
    /// ...up to this, seconds (a target the firmware refuses for good is tried again this
    /// often).
    pub failure_memory_max_s: u64,
    /// Site and market history: a sample at most this often, seconds, kept this many days.
    pub sample_s: u64,
    pub history_days: u32,
    /// GPU cap of a host serving AI; default each GPU's default cap.
    pub gpu_full_service_cap_w: Option<u32>,
    /// Host base draw per GPU where an agent declares none, W.
    pub unknown_host_base_w_per_gpu: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            replan_s: 60,
            curtail_timeout_s: 180,
            gpu_timeout_s: 60,
            grant_timeout_s: 180,
            workload_timeout_s: 600,
            stale_after_s: None,
            failure_memory_s: 600,
            failure_memory_max_s: 21_600,
            sample_s: 10,
            history_days: 30,
            gpu_full_service_cap_w: None,
            unknown_host_base_w_per_gpu: 575.0,
        }
    }
}

impl EngineConfig {
    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("engine.{k}");
        for (k, v, lo, hi) in [
            ("replan_s", self.replan_s, 1, 86_400),
            ("curtail_timeout_s", self.curtail_timeout_s, 5, 86_400),
            ("gpu_timeout_s", self.gpu_timeout_s, 5, 86_400),
            ("grant_timeout_s", self.grant_timeout_s, 5, 86_400),
            ("workload_timeout_s", self.workload_timeout_s, 5, 86_400),
            ("failure_memory_s", self.failure_memory_s, 0, 86_400 * 7),
            (
                "failure_memory_max_s",
                self.failure_memory_max_s,
                0,
                86_400 * 7,
            ),
            ("sample_s", self.sample_s, 1, 86_400),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err((key(k), format!("must be between {lo} and {hi}, got {v}")));
            }
        }
        if self.failure_memory_max_s < self.failure_memory_s {
            return Err((
                key("failure_memory_max_s"),
                format!(
                    "must be at least failure_memory_s ({}), got {}",
                    self.failure_memory_s, self.failure_memory_max_s
                ),
            ));
        }
        if let Some(v) = self.stale_after_s
            && !(1..=86_400).contains(&v)
        {
            return Err((
                key("stale_after_s"),
                format!("must be between 1 and 86400, got {v}"),
            ));
        }
        if !(1..=3650).contains(&self.history_days) {
            return Err((key("history_days"), "must be between 1 and 3650".into()));
        }
        if !(self.unknown_host_base_w_per_gpu.is_finite()
            && self.unknown_host_base_w_per_gpu >= 0.0)
        {
            return Err((
                key("unknown_host_base_w_per_gpu"),
                "must be a number of watts >= 0".into(),
            ));
        }
        Ok(())
    }
}

/// Why a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Timer,
    Event,
    Market,
}

/// What the loop carries from one round to the next.
#[derive(Debug, Default)]
struct Carry {
    memory: PlannerMemory,
    /// The market the last executed plan was made on (for the band check).
    planned_on: Option<PlannerInputs>,
    planned_usable: Option<bool>,
    last_sample: Option<DateTime<Utc>>,
    last_prune: Option<DateTime<Utc>>,
    /// The shed lead the last round planned with, when it was longer than the policy's.
    learned_lead_s: Option<u64>,
}

/// Whether the market moved enough since `then` to plan again: past the policy's hysteresis
/// band on energy or mining value, any change in AI demand, or usability changed.
fn market_moved(then: Option<&PlannerInputs>, now: Option<&PlannerInputs>, band: f64) -> bool {
    match (then, now) {
        (None, None) => false,
        (Some(_), None) | (None, Some(_)) => true,
        (Some(a), Some(b)) => {
            // Mining value per MWh at 20 J/TH moves by this much with the hashprice.
            let mining = |h: f64| h * 1000.0 / (24.0 * 20.0);
            (a.energy_usd_per_mwh - b.energy_usd_per_mwh).abs() > band / 2.0
                || (mining(a.hashprice_usd_per_ph_day) - mining(b.hashprice_usd_per_ph_day)).abs()
                    > band / 2.0
                || (a.ai_usd_per_gpu_hour - b.ai_usd_per_gpu_hour).abs() > 0.05
                || a.ai_gpu_demand != b.ai_gpu_demand
        }
    }
}

/// Runs the control loop until the task is dropped.
pub async fn run(ctl: Arc<Controller>, market: MarketFeed) {
    let replan = Duration::from_secs(ctl.config.engine.replan_s);
    let mut timer = tokio::time::interval(replan);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = market.subscribe();
    let mut carry = Carry::default();
    loop {
        let trigger = tokio::select! {
            _ = timer.tick() => Trigger::Timer,
            () = ctl.replan.notified() => {
                // Let a burst of events (a host's statuses, a flurry of overrides) settle into one round.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Trigger::Event
            }
            changed = ticks.changed() => {
                if changed.is_err() {
                    // The market task ended; plan on the timer with what it last said.
                    ticks = market.subscribe();
                }
                Trigger::Market
            }
        };
        round(&ctl, &market, &mut carry, trigger).await;
    }
}

async fn running_policy(ctl: &Controller) -> Option<PolicyDocument> {
    let stored = ctl.blocking(|s| s.get_policy()).await;
    let text = match stored {
        Ok(Some(p)) => p.document_toml,
        Ok(None) => policy::DEFAULT_POLICY.to_owned(),
        Err(e) => {
            warn!(error = %e.message(), "Cannot read the policy; planning with the default");
            policy::DEFAULT_POLICY.to_owned()
        }
    };
    match policy::validate(&text) {
        Ok(p) => Some(p),
        Err(errors) => {
            // Only valid documents are stored, and the default is tested to be one.
            warn!(
                ?errors,
                "The policy in force does not validate; not planning"
            );
            None
        }
    }
}

async fn round(ctl: &Arc<Controller>, market: &MarketFeed, carry: &mut Carry, trigger: Trigger) {
    let now = Utc::now();
    let snapshot = market.snapshot(now);
    let inputs = snapshot.planner_inputs();
    let Some(mut policy) = running_policy(ctl).await else {
        return;
    };
    learn_shed_lead(ctl, &mut policy, carry).await;
    if trigger == Trigger::Market {
        let band = policy.economic.hysteresis_usd_per_mwh;
        let usable = inputs.is_ok();
        let moved = market_moved(carry.planned_on.as_ref(), inputs.as_ref().ok(), band)
            || carry.planned_usable != Some(usable);
        if !moved {
            refresh_outlook_only(ctl, &snapshot, carry, now).await;
            return;
        }
    }
    let dr = ctl
        .blocking(move |s| s.demand_responses_in_force(now))
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e.message(), "Cannot read demand-response events");
            Vec::new()
        });
    let pins = ctl
        .blocking(move |s| s.list_overrides(now))
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e.message(), "Cannot read overrides");
            Vec::new()
        });
    let failed: BTreeSet<String> = ctl
        .recent_failures()
        .into_iter()
        .map(|(d, _, _)| d)
        .collect();
    let intents: BTreeMap<String, crate::store::DeviceIntent> = ctl
        .ledger
        .all()
        .into_iter()
        .map(|d| (d.intent.device_id.clone(), d))
        .collect();
    let firm = snapshot.firm_contracts.clone();
    let settings = units::UnitSettings {
        now,
        stale_after: ctl.stale_after(),
        full_service_cap_w: ctl.config.engine.gpu_full_service_cap_w,
        unknown_base_w_per_gpu: ctl.config.engine.unknown_host_base_w_per_gpu,
        firm: &firm,
    };
    let fleet = ctl
        .registry
        .with_agents(|agents| units::units(agents, &intents, &pins, &failed, &settings));
    let market_view = inputs.as_ref().ok().map(|i| planner::MarketView {
        hashprice_usd_per_ph_day: i.hashprice_usd_per_ph_day,
        energy_usd_per_mwh: i.energy_usd_per_mwh,
        ai_usd_per_gpu_hour: Some(i.ai_usd_per_gpu_hour),
        ai_gpu_demand: match i.ai_gpu_demand {
            GpuWant::All => None,
            GpuWant::Gpus(n) => Some(n),
        },
    });
    let input = PlanInput {
        now,
        site: planner::SiteLimits {
            cap_w: ctl.config.site.cap_w,
            reserve_w: ctl.config.site.reserve_w,
        },
        demand_response: dr
            .iter()
            .map(|e| planner::DemandResponse {
                event_id: e.event_id.clone(),
                target_power_w: e.target_power_w,
                deadline: e.deadline,
                ends_at: e.ends_at,
            })
            .collect(),
        market: market_view,
        policy,
        assumptions: ctl.config.agents.assumptions(),
        miners: fleet.miners,
        gpu_hosts: fleet.gpu_hosts,
        memory: carry.memory.clone(),
    };
    let plan = planner::plan(&input);
    // Demand history is the planner's to keep whatever happens to this plan; the ramp's clock
    // only moves with a plan that is executed.
    carry.memory.ai_hosts_needed = plan.memory.ai_hosts_needed.clone();
    let problems = inputs.as_ref().err().cloned().unwrap_or_default();
    let outlook = economics::outlook(&input, &plan, &snapshot, &problems, now);
    ctl.set_outlook(outlook.clone());
    sample(ctl, carry, &outlook, &snapshot, &problems, now).await;

    let executing = ctl.execution();
    let moves = plan.summary.moves > 0;
    // Nothing the plan moves needs a lease renewal stopped; everything it leaves where it is,
    // it stands behind: their leases are renewed from now on.
    let moved: BTreeSet<&str> = plan.moves().map(|(_, m)| m.device_id.as_str()).collect();
    for id in intents.keys() {
        if !moved.contains(id.as_str()) {
            ctl.ledger.endorse(id, true);
        }
    }
    if !moves {
        carry.planned_on = inputs.as_ref().ok().cloned();
        carry.planned_usable = Some(inputs.is_ok());
        return;
    }
    if executing.is_some() && trigger == Trigger::Timer {
        return;
    }
    if let Some(e) = &executing
        && e.plan.plan_id == plan.plan_id
    {
        return;
    }
    carry.memory.last_grant_at = plan.memory.last_grant_at;
    carry.planned_on = inputs.as_ref().ok().cloned();
    carry.planned_usable = Some(inputs.is_ok());
    let exec = exec_plan(&plan, &ctl.config.engine);
    let document = plan_document(&plan, &input);
    info!(
        plan = %plan.plan_id,
        phases = plan.phases.len(),
        moves = plan.summary.moves,
        limit_w = plan.limit.limit_w,
        ?trigger,
        "New plan"
    );
    for e in &plan.explanations {
        ctl.audit(NewAudit {
            kind: "decision",
            subject: format!("plan/{}", plan.plan_id),
            actor: "controller".into(),
            reason: e.text.clone(),
            detail: serde_json::json!({
                "plan_id": plan.plan_id,
                "model": e.model,
                "action": e.action,
                "reason": e.reason,
                "devices": e.devices,
                "power_w": e.power_w,
                "gain_usd_per_h": e.gain_usd_per_h,
                "mode": plan.mode,
                "limit_w": plan.limit.limit_w,
            }),
        })
        .await;
    }
    for w in &plan.warnings {
        ctl.audit(NewAudit {
            kind: "decision",
            subject: format!("plan/{}", plan.plan_id),
            actor: "controller".into(),
            reason: format!("warning: {w}"),
            detail: serde_json::to_value(w).unwrap_or_default(),
        })
        .await;
    }
    ctl.execute(exec, document).await;
}

/// Lengthens the policy's shed lead to what shedding measurably takes on this site
/// ([`crate::shed_time`]), and says so in the log and the audit when that changes.
async fn learn_shed_lead(ctl: &Arc<Controller>, policy: &mut PolicyDocument, carry: &mut Carry) {
    let longest = ctl.longest_recent_shed_s();
    let policy_lead_s = policy.economic.shed_lead_s;
    let lead_s = shed_time::effective_lead_s(policy_lead_s, longest);
    let learned = (lead_s > policy_lead_s).then_some(lead_s);
    if learned != carry.learned_lead_s {
        let reason = match learned {
            Some(l) => format!(
                "shed lead {l} s instead of the policy's {policy_lead_s} s: shedding took up to {:.1} s to confirm on this site lately",
                longest.unwrap_or_default()
            ),
            None => format!("shed lead back to the policy's {policy_lead_s} s"),
        };
        info!(lead_s, policy_lead_s, longest_shed_s = ?longest, "{reason}");
        ctl.audit(NewAudit {
            kind: "decision",
            subject: "policy/shed_lead".into(),
            actor: "controller".into(),
            reason,
            detail: serde_json::json!({
                "shed_lead_s": lead_s,
                "policy_shed_lead_s": policy_lead_s,
                "longest_recent_shed_s": longest,
            }),
        })
        .await;
        carry.learned_lead_s = learned;
    }
    policy.economic.shed_lead_s = lead_s;
}

/// A market round that moved nothing past the band: economics and history only.
async fn refresh_outlook_only(
    ctl: &Arc<Controller>,
    snapshot: &crate::market::MarketSnapshot,
    carry: &mut Carry,
    now: DateTime<Utc>,
) {
    let mut o = ctl.outlook();
    let problems = snapshot.planner_inputs().err().unwrap_or_default();
    o.economics = Some(economics::market_only(
        snapshot,
        &problems,
        o.economics.as_ref(),
        now,
    ));
    ctl.set_outlook(o.clone());
    sample(ctl, carry, &o, snapshot, &problems, now).await;
}

async fn sample(
    ctl: &Arc<Controller>,
    carry: &mut Carry,
    o: &Outlook,
    snapshot: &crate::market::MarketSnapshot,
    problems: &[String],
    now: DateTime<Utc>,
) {
    let every =
        chrono::Duration::seconds(i64::try_from(ctl.config.engine.sample_s).unwrap_or(i64::MAX));
    if carry.last_sample.is_some_and(|t| now - t < every) {
        return;
    }
    carry.last_sample = Some(now);
    let e = snapshot.economics();
    let market = MarketSample {
        at: now,
        hashprice_usd_per_ph_day: e.hashprice_usd_per_ph_day,
        energy_usd_per_mwh: e.energy_price_usd_per_mwh,
        ai_usd_per_gpu_hour: e.ai_usd_per_gpu_hour,
        ai_gpu_demand: match e.ai_gpu_demand {
            Some(GpuWant::Gpus(n)) => Some(n),
            _ => None,
        },
        usable: problems.is_empty(),
        problems: problems.to_vec(),
    };
    let measured = ctl
        .registry
        .summary(
            &ctl.config.agents.assumptions(),
            ctl.config.engine.unknown_host_base_w_per_gpu,
        )
        .measured_power_w;
    let site = SiteSample {
        at: now,
        cap_w: o.cap_in_force_w.unwrap_or_else(|| ctl.usable_cap_w()),
        committed_w: o.committed_w,
        measured_w: measured,
        mining_w: o.mining_w,
        ai_w: o.ai_w,
        margin_usd_per_h: o.margin_usd_per_h,
    };
    let prune = carry
        .last_prune
        .is_none_or(|t| now - t > chrono::Duration::hours(1));
    if prune {
        carry.last_prune = Some(now);
    }
    let keep = chrono::Duration::days(i64::from(ctl.config.engine.history_days));
    let result = ctl
        .blocking(move |s| {
            s.append_market(&market)?;
            s.append_site(&site)?;
            if prune {
                s.prune_history(now - keep)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        warn!(error = %e.message(), "Could not record history");
    }
}

impl Controller {
    /// How old a reading may be and still be believed.
    pub fn stale_after(&self) -> chrono::Duration {
        let s = self
            .config
            .engine
            .stale_after_s
            .unwrap_or(self.config.agents.telemetry_interval_s.saturating_mul(3));
        chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    fn inputs(energy: f64, hashprice: f64, demand: GpuWant) -> PlannerInputs {
        PlannerInputs {
            hashprice_usd_per_ph_day: hashprice,
            energy_usd_per_mwh: energy,
            ai_usd_per_gpu_hour: 2.0,
            ai_gpu_demand: demand,
            firm_contracts: StdArc::from(Vec::new()),
        }
    }

    #[test]
    fn the_market_moves_only_past_the_band() {
        let a = inputs(40.0, 45.0, GpuWant::All);
        assert!(!market_moved(
            Some(&a),
            Some(&inputs(44.0, 45.0, GpuWant::All)),
            10.0
        ));
        assert!(market_moved(
            Some(&a),
            Some(&inputs(46.0, 45.0, GpuWant::All)),
            10.0
        ));
        // 45 → 50 USD/PH/day is 10.4 USD/MWh of mining value at 20 J/TH.
        assert!(market_moved(
            Some(&a),
            Some(&inputs(40.0, 50.0, GpuWant::All)),
            10.0
        ));
        assert!(market_moved(
            Some(&a),
            Some(&inputs(40.0, 45.0, GpuWant::Gpus(8))),
            10.0
        ));
        assert!(market_moved(Some(&a), None, 10.0));
        assert!(!market_moved(None, None, 10.0));
    }

    /// A controller over a real SQLite file in `dir`.
    fn controller(dir: &std::path::Path) -> Arc<Controller> {
        let db = dir.join("pivot.db");
        let text = format!(
            "[site]\nid = \"lead\"\ncap_w = 1000000\nreserve_w = 0\n[store]\npath = \"{}\"\n",
            db.display()
        );
        let config = crate::config::Config::parse(
            &text,
            std::path::Path::new("c.toml"),
            &crate::config::NoEnv,
        )
        .unwrap();
        let store = crate::store::SqliteStore::open(&db).unwrap();
        Controller::new(config, Arc::new(store)).unwrap()
    }

    #[tokio::test]
    async fn a_slow_shed_lengthens_the_lead_the_planner_gets_and_the_audit_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = controller(dir.path());
        let mut carry = Carry::default();
        let policy = policy::validate(policy::DEFAULT_POLICY).unwrap();
        let policy_lead_s = policy.economic.shed_lead_s;

        // Nothing measured yet: the policy's lead, nothing audited.
        let mut p = policy.clone();
        learn_shed_lead(&ctl, &mut p, &mut carry).await;
        assert_eq!(p.economic.shed_lead_s, policy_lead_s);
        let said = |ctl: &Arc<Controller>| {
            ctl.store
                .list_audit(100, 0, "policy/shed_lead", "")
                .unwrap()
                .into_iter()
                .map(|r| r.reason)
                .collect::<Vec<_>>()
        };
        assert!(said(&ctl).is_empty());

        // A shed that took longer than half the lead: the lead becomes twice it.
        let slow_s = policy_lead_s as f64 * 0.75;
        ctl.record_shed_s(slow_s);
        let mut p = policy.clone();
        learn_shed_lead(&ctl, &mut p, &mut carry).await;
        assert_eq!(p.economic.shed_lead_s, (slow_s * 2.0).ceil() as u64);
        let reasons = said(&ctl);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("instead of the policy's"),
            "{reasons:?}"
        );

        // The same again: said once, not every round.
        let mut p = policy.clone();
        learn_shed_lead(&ctl, &mut p, &mut carry).await;
        assert_eq!(said(&ctl).len(), 1);

        // Eight fast sheds later the slow one is forgotten and the policy's lead is back.
        for _ in 0..8 {
            ctl.record_shed_s(1.0);
        }
        let mut p = policy.clone();
        learn_shed_lead(&ctl, &mut p, &mut carry).await;
        assert_eq!(p.economic.shed_lead_s, policy_lead_s);
        let reasons = said(&ctl);
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].contains("back to the policy's"), "{reasons:?}");
    }
}
