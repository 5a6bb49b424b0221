//! The economics status and `GetEconomics` show: the market's figures, each miner class's value
//! (its breakeven energy price) and margin, the value of AI capacity with work, and each input's
//! health — from the market snapshot and the planner's view of the fleet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pivot_proto::model;
use pivot_proto::v1;

use super::exec_map::cap_reason;
use crate::market::{GpuWant, Health, InputSnapshot, MarketSnapshot};
use crate::outlook::Outlook;
use crate::planner::{AiContract, Plan, PlanInput, PlanMode};

fn input<V>(
    s: &InputSnapshot<V>,
    name: &str,
    value: impl Fn(&V) -> Option<f64>,
) -> v1::MarketInput {
    let (health, problem) = match &s.health {
        Health::Pending => ("missing", String::new()),
        Health::Fresh if s.value.is_some() => ("fresh", String::new()),
        Health::Fresh | Health::Stale => ("stale", s.blocker().unwrap_or_default()),
        Health::Failed(e) => ("failed", e.to_string()),
    };
    let r = s.value.as_ref().or(s.last_good.as_ref());
    v1::MarketInput {
        name: name.to_owned(),
        source: s.origin.to_string(),
        value: r.and_then(|r| value(&r.value)),
        at: r.map(|r| model::timestamp_to_proto(r.at)),
        health: health.to_owned(),
        problem,
    }
}

/// The market half of the economics (no fleet figures): for rounds that do not plan.
pub fn market_only(
    snapshot: &MarketSnapshot,
    problems: &[String],
    previous: Option<&v1::Economics>,
    now: DateTime<Utc>,
) -> v1::Economics {
    let e = snapshot.economics();
    let mut out = previous.cloned().unwrap_or_default();
    out.hashprice_usd_per_ph_day = e.hashprice_usd_per_ph_day.unwrap_or_default();
    out.btc_price_usd = e.btc_usd.unwrap_or_default();
    out.network_hashrate_ehs = e.network_hashrate_ehs.unwrap_or_default();
    out.energy_price_usd_per_mwh = e.energy_price_usd_per_mwh.unwrap_or_default();
    out.ai_spot_usd_per_gpu_hour = e.ai_usd_per_gpu_hour.unwrap_or_default();
    out.ai_gpu_demand = match e.ai_gpu_demand {
        Some(GpuWant::Gpus(n)) => Some(n),
        _ => None,
    };
    out.inputs = vec![
        input(&snapshot.hashprice, "hashprice", |h| Some(h.usd_per_ph_day)),
        input(&snapshot.energy, "energy", |e| Some(e.usd_per_mwh)),
        input(&snapshot.ai_value, "ai_value", |a| Some(a.usd_per_gpu_hour)),
        input(&snapshot.ai_demand, "ai_demand", |d| match d.wanted {
            GpuWant::All => None,
            GpuWant::Gpus(n) => Some(f64::from(n)),
        }),
    ];
    out.usable = problems.is_empty();
    out.problems = problems.to_vec();
    out.as_of = Some(model::timestamp_to_proto(now));
    out
}

/// Value per MWh of a miner at `j_per_th` (its breakeven energy price).
fn mining_value(hashprice: f64, j_per_th: f64) -> f64 {
    if j_per_th > 0.0 {
        hashprice * 1000.0 / (24.0 * j_per_th)
    } else {
        0.0
    }
}

/// The economics with the fleet's figures.
pub fn economics(
    input: &PlanInput,
    snapshot: &MarketSnapshot,
    problems: &[String],
    now: DateTime<Utc>,
) -> v1::Economics {
    let mut out = market_only(snapshot, problems, None, now);
    let hashprice = out.hashprice_usd_per_ph_day;
    let energy = out.energy_price_usd_per_mwh;
    let unknown = input.policy.economic.unknown_miner_j_per_th;
    let mut classes: BTreeMap<&str, (u32, f64)> = BTreeMap::new();
    let (mut power, mut hashrate) = (0.0, 0.0);
    for m in &input.miners {
        let e = m
            .efficiency_j_per_th
            .filter(|e| *e > 0.0)
            .or_else(|| Some(m.nameplate_power_w? / m.nameplate_hashrate_ths.filter(|h| *h > 0.0)?))
            .unwrap_or(unknown);
        let c = classes.entry(m.model.as_str()).or_default();
        c.0 += 1;
        c.1 += e;
        if let (Some(p), Some(h)) = (m.nameplate_power_w, m.nameplate_hashrate_ths)
            && h > 0.0
        {
            power += p;
            hashrate += h;
        }
    }
    out.miner_classes = classes
        .into_iter()
        .map(|(model, (n, sum))| {
            let e = sum / f64::from(n.max(1));
            let value = mining_value(hashprice, e);
            v1::MinerClassEconomics {
                model: model.to_owned(),
                count: n,
                efficiency_j_per_th: e,
                value_usd_per_mwh: value,
                margin_usd_per_mwh: value - energy,
            }
        })
        .collect();
    out.fleet_efficiency_j_per_th = if hashrate > 0.0 {
        power / hashrate
    } else {
        let n: u32 = out.miner_classes.iter().map(|c| c.count).sum();
        out.miner_classes
            .iter()
            .map(|c| c.efficiency_j_per_th * f64::from(c.count))
            .sum::<f64>()
            / f64::from(n.max(1))
    };
    out.mining_value_usd_per_mwh = mining_value(hashprice, out.fleet_efficiency_j_per_th);
    // AI capacity with work: price per GPU-hour × GPUs ÷ the host's draw at full service.
    let (mut usd_per_h, mut mw) = (0.0, 0.0);
    for h in &input.gpu_hosts {
        if h.contract != AiContract::Interruptible {
            continue;
        }
        usd_per_h += out.ai_spot_usd_per_gpu_hour * h.gpus.len() as f64;
        mw += (h.base_power_w + h.gpus.iter().map(|g| g.full_service_cap_w).sum::<f64>()) / 1e6;
    }
    out.ai_value_usd_per_mwh = if mw > 0.0 { usd_per_h / mw } else { 0.0 };
    out
}

fn mode_words(plan: &Plan, problems: &[String]) -> String {
    match plan.mode {
        PlanMode::Economic => "economic".into(),
        PlanMode::EconomicDisabled => "economic moves disabled by the policy".into(),
        PlanMode::SafeHold => format!(
            "safe: holding, no load added (market unusable: {})",
            problems.join("; ")
        ),
        PlanMode::SafeCurtailMining => format!(
            "safe: mining curtailed (market unusable: {})",
            problems.join("; ")
        ),
    }
}

/// What status shows after a planning round.
pub fn outlook(
    input: &PlanInput,
    plan: &Plan,
    snapshot: &MarketSnapshot,
    problems: &[String],
    now: DateTime<Utc>,
) -> Outlook {
    let s = &plan.summary;
    Outlook {
        at: Some(now),
        cap_in_force_w: Some(plan.limit.limit_w),
        cap_reason: cap_reason(&plan.limit),
        mode: mode_words(plan, problems),
        economics: Some(economics(input, snapshot, problems, now)),
        mining_w: s.mining_w,
        ai_w: s.ai_w,
        committed_w: s.start_committed_w,
        margin_usd_per_h: input.market.map(|_| s.margin_usd_per_h),
        min_reachable_w: Some(s.lowest_achievable_w),
        gpu_hosts_total: u32::try_from(input.gpu_hosts.len()).unwrap_or(u32::MAX),
        gpu_hosts_serving: s.hosts_serving,
        reason: plan
            .explanations
            .first()
            .map(|e| e.text.clone())
            .or_else(|| plan.waiting.first().map(|w| w.text.clone()))
            .unwrap_or_else(|| "no change".to_owned()),
        waiting: plan.waiting.iter().map(|w| w.text.clone()).collect(),
    }
}
