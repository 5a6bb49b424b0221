//! How pivotctl prints what the controller says: one JSON object per answer with `--json`,
//! aligned words for people otherwise. Free text from the controller (reasons, ids) goes through
//! [`clean`] first, so that a reason cannot forge a line or move the cursor.

use pivot_proto::v1;

pub use pivot_controller::views::{
    device_json, dr_json, economics_json, pin_words, plan_json, status_json, ts,
};

/// Held devices `pivotctl status` names one per line (it counts them all).
const HELD_LINES: usize = 5;
/// Lines of what the dwell holds back (one per model and action) `pivotctl status` prints.
const WAITING_LINES: usize = 10;

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

pub fn ts_text(t: Option<&prost_types::Timestamp>) -> String {
    ts(t).as_str().unwrap_or("-").to_owned()
}

pub fn mw(w: f64) -> String {
    format!("{:.3} MW", w / 1e6)
}

fn usd(v: f64) -> String {
    format!("{v:.2}")
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
    for w in s.waiting.iter().take(WAITING_LINES) {
        println!("waiting     {}", clean(w));
    }
    print_more("            ", s.waiting.len(), WAITING_LINES);
    if s.held_total > 0 {
        println!(
            "held        {} device{} after a failed move, not moved until the hold ends:",
            s.held_total,
            if s.held_total == 1 { "" } else { "s" }
        );
        for h in s.held.iter().take(HELD_LINES) {
            println!(
                "              {} until {}: {}",
                clean(&h.device_id),
                ts_text(h.until.as_ref()),
                clean(&h.reason)
            );
        }
        print_more(
            "              ",
            s.held_total as usize,
            s.held.len().min(HELD_LINES),
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

/// The line after the first `shown` of `total` items: how many more `--json` has.
fn print_more(indent: &str, total: usize, shown: usize) {
    if total > shown {
        println!(
            "{indent}… and {} more (pivotctl status --json)",
            total - shown
        );
    }
}

pub fn print_economics(e: &v1::Economics) {
    // A fixed or traced hashprice comes without the price and hashrate behind it (sent as 0).
    let behind = if e.btc_price_usd > 0.0 && e.network_hashrate_ehs > 0.0 {
        format!(
            " (BTC {:.0} USD, network {:.0} EH/s)",
            e.btc_price_usd, e.network_hashrate_ehs
        )
    } else {
        String::new()
    };
    println!(
        "hashprice   {:.2} USD/PH/day{behind}",
        e.hashprice_usd_per_ph_day
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
