//! The FleetService answers as JSON: one rendering for `pivotctl --json` and the web dashboard,
//! so the two always show the same numbers under the same names.

use pivot_proto::v1;
use serde_json::json;

pub fn ts(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(|t| pivot_proto::model::timestamp_from_proto(t, "t").ok())
        .map_or(serde_json::Value::Null, |t| json!(t.to_rfc3339()))
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
        "created_at": ts(d.created_at.as_ref()),
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
        "held": s.held.iter().map(|h| json!({
            "device_id": h.device_id,
            "reason": h.reason,
            "until": ts(h.until.as_ref()),
        })).collect::<Vec<_>>(),
        "held_total": s.held_total,
        "waiting": s.waiting,
    })
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
    let mut j = json!({ "state": null, "power_w": null, "hashrate_ths": null,
        "power_cap_w": null, "reachable": null, "problem": "" });
    match &d.reading {
        Some(v1::device::Reading::MinerReading(r)) => {
            let state = pivot_proto::model::MinerState::from_proto(r.state);
            j["state"] = json!(state.as_str());
            j["power_w"] = json!(r.power_w);
            j["hashrate_ths"] = json!(r.hashrate_ths);
            j["power_cap_w"] = json!(r.power_target_w);
            j["reachable"] = json!(r.reachable);
            j["problem"] = json!(if r.reachable {
                r.miner_errors.join("; ")
            } else {
                r.poll_error.clone()
            });
        }
        Some(v1::device::Reading::GpuReading(r)) => {
            j["power_w"] = json!(r.power_w);
            j["power_cap_w"] = json!(r.power_cap_w.or(r.enforced_power_limit_w));
            j["problem"] = json!(r.read_error);
        }
        Some(v1::device::Reading::HostReading(r)) => {
            j["power_w"] = json!(r.power_w);
            let w = v1::WorkloadState::try_from(r.workload_state)
                .map_or("?", |w| w.as_str_name())
                .trim_start_matches("WORKLOAD_STATE_")
                .to_lowercase();
            j["state"] = json!(w);
        }
        None => {}
    }
    // A miner whose move the agent confirmed after its last reading is where the confirming
    // read-back saw it — as the site status and the planner count it — until the next poll's
    // reading catches up (seconds, or a sweep's length on an agent with thousands of miners).
    let mut state_from = if j["state"].is_null() { "" } else { "reading" };
    if let Some((state, power_w)) = confirmed_miner_state(d) {
        j["state"] = json!(state.as_str());
        if let Some(p) = power_w {
            j["power_w"] = json!(p);
        }
        state_from = "confirmation";
    }
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
        "state": j["state"],
        "state_from": state_from,
        "power_w": j["power_w"],
        "hashrate_ths": j["hashrate_ths"],
        "power_cap_w": j["power_cap_w"],
        "reachable": j["reachable"],
        "problem": j["problem"],
        "efficiency_j_per_th": d.efficiency_j_per_th,
        "setting_before_trim_w": d.setting_before_trim_w,
        "last_seen": ts(d.last_seen.as_ref()),
        "intent": d.intent.as_ref().map(|i| json!({
            "generation": i.generation,
            "plan_id": i.plan_id,
            "phase": i.phase,
            "lease_expires_at": ts(i.lease_expires_at.as_ref()),
            "reason": i.reason,
            "target": pin_words(i.target.as_ref().map(intent_pin).as_ref()),
        })),
        "intent_status": d.intent_status.as_ref().map(|s| json!({
            "generation": s.generation,
            "phase": v1::IntentPhase::try_from(s.phase).map(|p| p.as_str_name()).unwrap_or("?"),
            "detail": s.detail,
            "retrying": s.retrying,
        })),
    })
}

/// For a miner whose current intent the agent confirmed after the device's last reading: the
/// state that intent made of it, and the power its confirming read-back measured.
fn confirmed_miner_state(d: &v1::Device) -> Option<(pivot_proto::model::MinerState, Option<f64>)> {
    let (Some(v1::device::Reading::MinerReading(_)), Some(i), Some(st)) =
        (&d.reading, &d.intent, &d.intent_status)
    else {
        return None;
    };
    let Some(v1::intent::Target::Miner(m)) = &i.target else {
        return None;
    };
    let confirmed = st.phase == v1::IntentPhase::Confirmed as i32 && st.generation == i.generation;
    let at = |t: Option<&prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    let newer = match (at(st.at.as_ref()), at(d.last_seen.as_ref())) {
        (Some(c), Some(r)) => c > r,
        _ => false,
    };
    if !(confirmed && newer) {
        return None;
    }
    let target = pivot_proto::model::MinerTarget::from_proto(m, "intent.target").ok()?;
    Some((target.confirmed_state(), st.observed_power_w))
}

/// An intent's target as the pin that would hold a device there (same words as an override).
fn intent_pin(t: &v1::intent::Target) -> v1::r#override::Pin {
    use v1::intent::Target;
    use v1::r#override::Pin;
    match t {
        Target::Miner(m) => Pin::Miner(*m),
        Target::Gpu(g) => Pin::Gpu(*g),
        Target::Workload(w) => Pin::Workload(*w),
    }
}

pub fn audit_json(r: &v1::AuditRecord) -> serde_json::Value {
    json!({ "id": r.id, "at": ts(r.at.as_ref()), "kind": r.kind, "subject": r.subject,
            "actor": r.actor, "reason": r.reason,
            "detail": serde_json::from_str::<serde_json::Value>(&r.detail_json).unwrap_or_default() })
}

pub fn override_json(o: &v1::Override) -> serde_json::Value {
    json!({
        "target": o.target,
        "pin": pin_words(o.pin.as_ref()),
        "expires_at": ts(o.expires_at.as_ref()),
        "reason": o.reason,
        "actor": o.actor,
        "created_at": ts(o.created_at.as_ref()),
    })
}

pub fn history_json(h: &v1::History) -> serde_json::Value {
    json!({
        "site": h.site.iter().map(|s| json!({
            "at": ts(s.at.as_ref()),
            "cap_w": s.cap_w,
            "committed_w": s.committed_w,
            "measured_w": s.measured_w,
            "mining_w": s.mining_w,
            "ai_w": s.ai_w,
            "margin_usd_per_h": s.margin_usd_per_h,
        })).collect::<Vec<_>>(),
        "market": h.market.iter().map(|m| json!({
            "at": ts(m.at.as_ref()),
            "hashprice_usd_per_ph_day": m.hashprice_usd_per_ph_day,
            "energy_usd_per_mwh": m.energy_usd_per_mwh,
            "ai_usd_per_gpu_hour": m.ai_usd_per_gpu_hour,
            "ai_gpu_demand": m.ai_gpu_demand,
            "usable": m.usable,
            "problems": m.problems,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 10,000 miners `pivotctl devices` showed every woken miner asleep for more than a poll
    /// interval after its wake was confirmed, while the status counted them mining.
    #[test]
    fn a_miner_confirmed_after_its_last_reading_shows_where_the_confirmation_saw_it() {
        let at = |s: i64| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        let device = |status_at: i64, phase: v1::IntentPhase, generation: u64| v1::Device {
            kind: v1::DeviceKind::Miner as i32,
            reading: Some(v1::device::Reading::MinerReading(v1::MinerReading {
                reachable: true,
                state: pivot_proto::model::MinerState::Sleeping.to_proto() as i32,
                power_w: Some(12.0),
                ..Default::default()
            })),
            last_seen: at(100),
            intent: Some(v1::Intent {
                generation: 4,
                target: Some(v1::intent::Target::Miner(v1::MinerTarget {
                    mode: v1::MinerMode::Run as i32,
                    power_target_w: None,
                })),
                ..Default::default()
            }),
            intent_status: Some(v1::IntentStatus {
                generation,
                phase: phase as i32,
                observed_power_w: Some(900.0),
                at: at(status_at),
                ..Default::default()
            }),
            ..Default::default()
        };
        let j = device_json(&device(105, v1::IntentPhase::Confirmed, 4));
        assert_eq!(
            (&j["state"], &j["power_w"], &j["state_from"]),
            (&json!("mining"), &json!(900.0), &json!("confirmation"))
        );
        // A reading newer than the confirmation, a status not confirmed, or one of another
        // generation: the reading.
        for d in [
            device(95, v1::IntentPhase::Confirmed, 4),
            device(105, v1::IntentPhase::Applied, 4),
            device(105, v1::IntentPhase::Confirmed, 3),
        ] {
            let j = device_json(&d);
            assert_eq!(
                (&j["state"], &j["power_w"], &j["state_from"]),
                (&json!("sleeping"), &json!(12.0), &json!("reading"))
            );
        }
    }

    #[test]
    fn a_device_shows_what_the_table_flags_and_its_intent_in_words() {
        let miner = v1::Device {
            device_id: "miner/10.0.0.7:4028".into(),
            host_id: "rack-1".into(),
            kind: v1::DeviceKind::Miner as i32,
            inventory: Some(v1::device::Inventory::Miner(v1::MinerInventory {
                model: "Antminer S21".into(),
                ..Default::default()
            })),
            reading: Some(v1::device::Reading::MinerReading(v1::MinerReading {
                reachable: false,
                poll_error: "connection refused".into(),
                ..Default::default()
            })),
            intent: Some(v1::Intent {
                generation: 3,
                target: Some(v1::intent::Target::Miner(v1::MinerTarget {
                    mode: v1::MinerMode::Run as i32,
                    power_target_w: Some(3000),
                })),
                ..Default::default()
            }),
            efficiency_j_per_th: Some(17.5),
            setting_before_trim_w: Some(3300.0),
            ..Default::default()
        };
        let j = device_json(&miner);
        assert_eq!(j["kind"], "miner");
        assert_eq!(j["efficiency_j_per_th"], 17.5);
        assert_eq!(j["setting_before_trim_w"], 3300.0);
        assert_eq!(j["model"], "Antminer S21");
        assert_eq!(j["reachable"], false);
        assert_eq!(j["problem"], "connection refused");
        assert_eq!(j["intent"]["target"], "run at 3000 W");
        assert!(j["power_w"].is_null(), "an unread power is unknown, not 0");

        let gpu = v1::Device {
            kind: v1::DeviceKind::Gpu as i32,
            reading: Some(v1::device::Reading::GpuReading(v1::GpuReading {
                power_w: Some(612.0),
                enforced_power_limit_w: Some(650.0),
                ..Default::default()
            })),
            ..Default::default()
        };
        let j = device_json(&gpu);
        assert_eq!(j["power_w"], 612.0);
        // No limit pivot set: the one the GPU enforces.
        assert_eq!(j["power_cap_w"], 650.0);
        assert!(j["reachable"].is_null());
        assert!(j["efficiency_j_per_th"].is_null());
        assert!(j["setting_before_trim_w"].is_null());
    }
}
