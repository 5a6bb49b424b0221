//! How pivotctl prints what the controller says: one JSON object per answer with `--json`,
//! aligned words for people otherwise. Free text from the controller (reasons, ids) goes through
//! [`clean`] first, so that a reason cannot forge a line or move the cursor.

use pivot_proto::v1;
use serde_json::json;

/// Text from the controller made safe to print: control characters (newlines, NUL, escape
/// sequences) are shown escaped instead of acted on.
pub fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() || reorders_text(c) {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Unicode line and paragraph separators and bidirectional controls: not control characters,
/// but a terminal may break a line on them or show the text after them reordered (issue 11:
/// a reason must not make one audit line read as another).
fn reorders_text(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

pub fn ts(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(|t| pivot_proto::model::timestamp_from_proto(t, "t").ok())
        .map_or(serde_json::Value::Null, |t| json!(t.to_rfc3339()))
}

pub fn ts_text(t: Option<&prost_types::Timestamp>) -> String {
    ts(t).as_str().unwrap_or("-").to_owned()
}

pub fn mw(w: f64) -> String {
    format!("{:.3} MW", w / 1e6)
}

fn usd(v: f64) -> String {
    format!("{v:.2}")
}

pub fn economics_json(e: &v1::Economics) -> serde_json::Value {
    json!({
        "hashprice_usd_per_ph_day": e.hashprice_usd_per_ph_day,
        "btc_price_usd": e.btc_price_usd,
        "network_hashrate_ehs": e.network_hashrate_ehs,
        "energy_price_usd_per_mwh": e.energy_price_usd_per_mwh,
        "ai_spot_usd_per_gpu_hour": e.ai_spot_usd_per_gpu_hour,
        "ai_value_usd_per_mwh": e.ai_value_usd_per_mwh,
        "ai_gpu_demand": e.ai_gpu_demand,
        "mining_value_usd_per_mwh": e.mining_value_usd_per_mwh,
        "fleet_efficiency_j_per_th": e.fleet_efficiency_j_per_th,
        "miner_classes": e.miner_classes.iter().map(|c| json!({
            "model": c.model,
            "count": c.count,
            "efficiency_j_per_th": c.efficiency_j_per_th,
            "value_usd_per_mwh": c.value_usd_per_mwh,
            "margin_usd_per_mwh": c.margin_usd_per_mwh,
        })).collect::<Vec<_>>(),
        "inputs": e.inputs.iter().map(|i| json!({
            "name": i.name,
            "source": i.source,
            "value": i.value,
            "at": ts(i.at.as_ref()),
            "health": i.health,
            "problem": i.problem,
        })).collect::<Vec<_>>(),
        "usable": e.usable,
        "problems": e.problems,
        "as_of": ts(e.as_of.as_ref()),
    })
}

pub fn plan_summary_json(p: &v1::PlanSummary) -> serde_json::Value {
    json!({
        "plan_id": p.plan_id,
        "created_at": ts(p.created_at.as_ref()),
        "state": p.state,
        "phase": p.current_phase,
        "phases": p.phases,
        "reason": p.reason,
    })
}

pub fn dr_json(d: &v1::DemandResponseEvent) -> serde_json::Value {
    json!({
        "event_id": d.event_id,
        "target_power_w": d.target_power_w,
        "deadline": ts(d.deadline.as_ref()),
        "ends_at": ts(d.ends_at.as_ref()),
        "state": d.state,
        "achieved_power_w": d.achieved_power_w,
        "achievable_power_w": d.achievable_power_w,
        "cancelled_at": ts(d.cancelled_at.as_ref()),
        "note": d.note,
        "actor": d.actor,
    })
}

pub fn status_json(s: &v1::SiteStatus) -> serde_json::Value {
    let e = s.economics.clone().unwrap_or_default();
    json!({
        "site_id": s.site_id,
        "site_cap_w": s.site_cap_w,
        "reserve_w": s.reserve_w,
        "cap_in_force_w": s.cap_in_force_w,
        "cap_reason": s.cap_reason,
        "committed_power_w": s.committed_power_w,
        "measured_power_w": s.measured_power_w,
        "mining_power_w": s.mining_power_w,
        "ai_power_w": s.ai_power_w,
        "margin_usd_per_h": s.margin_usd_per_h,
        "hashprice_usd_per_ph_day": s.economics.as_ref().map(|e| e.hashprice_usd_per_ph_day),
        "energy_price_usd_per_mwh": s.economics.as_ref().map(|e| e.energy_price_usd_per_mwh),
        "ai_value_usd_per_mwh": s.economics.as_ref().map(|e| e.ai_value_usd_per_mwh),
        "mining_value_usd_per_mwh": s.economics.as_ref().map(|e| e.mining_value_usd_per_mwh),
        "economics": s.economics.as_ref().map(|_| economics_json(&e)),
        "agents": s.agents_connected,
        "agents_connected": s.agents_connected,
        "miners": {
            "total": s.miners_total,
            "mining": s.miners_mining,
            "sleeping": s.miners_sleeping,
            "unreachable": s.miners_unreachable,
        },
        "miners_total": s.miners_total,
        "miners_mining": s.miners_mining,
        "miners_sleeping": s.miners_sleeping,
        "miners_unreachable": s.miners_unreachable,
        "gpus": s.gpus_total,
        "gpus_total": s.gpus_total,
        "gpu_hosts": { "total": s.gpu_hosts_total, "serving": s.gpu_hosts_serving },
        "policy": s.policy,
        "mode": s.mode,
        "plan": s.plan.as_ref().map(plan_summary_json),
        "demand_response": s.demand_response.as_ref().map(dr_json),
        "as_of": ts(s.as_of.as_ref()),
        "controller_version": s.controller_version,
    })
}

pub fn print_status(s: &v1::SiteStatus) {
    println!(
        "site        {} (controller {})",
        clean(&s.site_id),
        clean(&s.controller_version)
    );
    println!(
        "cap         {} (reserve {}); in force {} — {}",
        mw(s.site_cap_w),
        mw(s.reserve_w),
        mw(s.cap_in_force_w),
        clean(&s.cap_reason)
    );
    println!(
        "committed   {}  (mining {}, AI {})",
        mw(s.committed_power_w),
        mw(s.mining_power_w),
        mw(s.ai_power_w)
    );
    println!("measured    {}", mw(s.measured_power_w));
    if let Some(m) = s.margin_usd_per_h {
        println!("margin      {} USD/h", usd(m));
    }
    if let Some(e) = &s.economics {
        println!(
            "economics   hashprice {:.2} USD/PH/day, energy {:.2} USD/MWh, mining {:.0} USD/MWh, AI {:.0} USD/MWh",
            e.hashprice_usd_per_ph_day,
            e.energy_price_usd_per_mwh,
            e.mining_value_usd_per_mwh,
            e.ai_value_usd_per_mwh
        );
    }
    println!("agents      {} connected", s.agents_connected);
    println!(
        "miners      {} total: {} mining, {} sleeping, {} unreachable",
        s.miners_total, s.miners_mining, s.miners_sleeping, s.miners_unreachable
    );
    println!(
        "gpus        {} on {} hosts ({} serving AI)",
        s.gpus_total, s.gpu_hosts_total, s.gpu_hosts_serving
    );
    println!("policy      {} — {}", clean(&s.policy), clean(&s.mode));
    if let Some(p) = &s.plan {
        println!(
            "plan        {} {} (phase {} of {}): {}",
            clean(&p.plan_id),
            clean(&p.state),
            (p.current_phase + 1).min(p.phases),
            p.phases,
            clean(&p.reason)
        );
    }
    if let Some(d) = &s.demand_response {
        println!(
            "demand resp {} {} -> {} by {}{}",
            clean(&d.event_id),
            clean(&d.state),
            mw(d.target_power_w),
            ts_text(d.deadline.as_ref()),
            if d.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", clean(&d.note))
            }
        );
    }
}

pub fn print_economics(e: &v1::Economics) {
    println!(
        "hashprice   {:.2} USD/PH/day (BTC {:.0} USD, network {:.0} EH/s)",
        e.hashprice_usd_per_ph_day, e.btc_price_usd, e.network_hashrate_ehs
    );
    println!("energy      {:.2} USD/MWh", e.energy_price_usd_per_mwh);
    println!(
        "AI          {:.2} USD/GPU-hour = {:.0} USD/MWh; demand {}",
        e.ai_spot_usd_per_gpu_hour,
        e.ai_value_usd_per_mwh,
        e.ai_gpu_demand
            .map_or_else(|| "all GPUs".to_owned(), |d| format!("{d} GPUs"))
    );
    println!(
        "mining      {:.0} USD/MWh at the fleet's {:.1} J/TH",
        e.mining_value_usd_per_mwh, e.fleet_efficiency_j_per_th
    );
    if !e.miner_classes.is_empty() {
        println!(
            "\n{:<28} {:>6} {:>8} {:>16} {:>16}",
            "MINER CLASS", "COUNT", "J/TH", "BREAKEVEN $/MWh", "MARGIN $/MWh"
        );
        for c in &e.miner_classes {
            println!(
                "{:<28} {:>6} {:>8.1} {:>16.1} {:>16.1}",
                clean(&c.model),
                c.count,
                c.efficiency_j_per_th,
                c.value_usd_per_mwh,
                c.margin_usd_per_mwh
            );
        }
    }
    if !e.inputs.is_empty() {
        println!(
            "\n{:<10} {:<8} {:>12} {:<26} SOURCE",
            "INPUT", "HEALTH", "VALUE", "AT"
        );
        for i in &e.inputs {
            println!(
                "{:<10} {:<8} {:>12} {:<26} {}{}",
                clean(&i.name),
                clean(&i.health),
                i.value
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
                ts_text(i.at.as_ref()),
                clean(&i.source),
                if i.problem.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", clean(&i.problem))
                }
            );
        }
    }
    if !e.usable {
        println!(
            "\nthe planner cannot use these inputs: {}",
            clean(&e.problems.join("; "))
        );
    }
}

pub fn plan_json(p: &v1::PlanView) -> serde_json::Value {
    json!({
        "exists": p.exists,
        "summary": p.summary.as_ref().map(plan_summary_json),
        "cap_w": p.cap_w,
        "cap_reason": p.cap_reason,
        "decisions": p.decisions,
        "phases": p.phases.iter().map(|ph| json!({
            "index": ph.index,
            "label": ph.label,
            "state": ph.state,
            "committed_w": ph.committed_w,
            "moves": ph.moves.iter().map(|m| json!({
                "device_id": m.device_id,
                "host_id": m.host_id,
                "from": m.from,
                "to": m.to,
                "reason": m.reason,
                "status": m.status,
                "detail": m.detail,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn print_plan(p: &v1::PlanView) {
    let Some(s) = p.summary.as_ref().filter(|_| p.exists) else {
        println!("no plan yet");
        return;
    };
    println!(
        "plan {} ({}), made {} under {} ({})",
        clean(&s.plan_id),
        clean(&s.state),
        ts_text(s.created_at.as_ref()),
        mw(p.cap_w),
        clean(&p.cap_reason)
    );
    for d in &p.decisions {
        println!("  {}", clean(d));
    }
    for ph in &p.phases {
        println!(
            "\nphase {} [{}] {} — committed {}",
            ph.index,
            clean(&ph.state),
            clean(&ph.label),
            mw(ph.committed_w)
        );
        for m in ph.moves.iter().take(20) {
            println!(
                "  {:<40} {:<14} -> {:<20} {:<10} {}",
                clean(&m.device_id),
                clean(&m.from),
                clean(&m.to),
                clean(&m.status),
                clean(&m.detail)
            );
        }
        if ph.moves.len() > 20 {
            println!("  … and {} more (--json for all)", ph.moves.len() - 20);
        }
    }
}

/// A pin as people write it on pivotctl's command line.
pub fn pin_words(pin: Option<&v1::r#override::Pin>) -> String {
    use v1::r#override::Pin;
    match pin {
        Some(Pin::Miner(m)) => match (v1::MinerMode::try_from(m.mode), m.power_target_w) {
            (Ok(v1::MinerMode::Sleep), _) => "sleep".into(),
            (Ok(v1::MinerMode::Run), Some(w)) => format!("run at {w} W"),
            (Ok(v1::MinerMode::Run), None) => "run".into(),
            _ => "miner ?".into(),
        },
        Some(Pin::Gpu(g)) => format!("gpu cap {} W", g.power_cap_w),
        Some(Pin::Workload(w)) => match v1::WorkloadState::try_from(w.state) {
            Ok(v1::WorkloadState::Released) => "release".into(),
            Ok(v1::WorkloadState::Drained) => "drain".into(),
            _ => "workload ?".into(),
        },
        None => "-".into(),
    }
}

pub fn device_json(d: &v1::Device) -> serde_json::Value {
    let kind = match v1::DeviceKind::try_from(d.kind) {
        Ok(v1::DeviceKind::Miner) => "miner",
        Ok(v1::DeviceKind::Gpu) => "gpu",
        Ok(v1::DeviceKind::Host) => "host",
        _ => "unknown",
    };
    let (state, power_w) = match &d.reading {
        Some(v1::device::Reading::MinerReading(r)) => (
            Some(
                pivot_proto::model::MinerState::from_proto(r.state)
                    .as_str()
                    .to_owned(),
            ),
            r.power_w,
        ),
        Some(v1::device::Reading::GpuReading(r)) => (None, r.power_w),
        Some(v1::device::Reading::HostReading(r)) => (None, r.power_w),
        None => (None, None),
    };
    let model = match &d.inventory {
        Some(v1::device::Inventory::Miner(m)) => m.model.clone(),
        Some(v1::device::Inventory::Gpu(g)) => g.name.clone(),
        _ => String::new(),
    };
    json!({
        "device_id": d.device_id,
        "host_id": d.host_id,
        "kind": kind,
        "model": model,
        "state": state,
        "power_w": power_w,
        "last_seen": ts(d.last_seen.as_ref()),
        "intent": d.intent.as_ref().map(|i| json!({
            "generation": i.generation,
            "plan_id": i.plan_id,
            "phase": i.phase,
            "lease_expires_at": ts(i.lease_expires_at.as_ref()),
            "reason": i.reason,
        })),
        "intent_status": d.intent_status.as_ref().map(|s| json!({
            "generation": s.generation,
            "phase": v1::IntentPhase::try_from(s.phase).map(|p| p.as_str_name()).unwrap_or("?"),
            "detail": s.detail,
            "retrying": s.retrying,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines() {
        assert_eq!(
            clean("ok\n12:00 agent h1 disconnected"),
            "ok\\n12:00 agent h1 disconnected"
        );
        assert_eq!(clean("a\u{1b}[2Jb\0"), "a\\u{1b}[2Jb\\u{0}");
        assert_eq!(clean("S19j Pro — 29.5 J/TH"), "S19j Pro — 29.5 J/TH");
        // Not control characters, but a line break or a reordering in many terminals.
        assert_eq!(
            clean("fan\u{2028}ok \u{202e}tpircs"),
            "fan\\u{2028}ok \\u{202e}tpircs"
        );
    }
}
