//! The SITE.toml that models the simulated site for `pivot-controller backtest`, written from the
//! controller's own view of the fleet (the planner's units, so every figure is the one the
//! planner counts: a miner at the top of its power-target range, a sleeping one at the
//! controller's assumption), and the static start both the backtest and the site begin from.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pivot_controller::backtest::Site;
use pivot_controller::fleet::Assumptions;
use pivot_controller::planner::{AiContract, GpuHostUnit, MinerUnit};

/// How long the model says a move takes, in trace seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transitions {
    pub miner_s: u32,
    pub host_s: u32,
}

/// Why the fleet cannot be written as a SITE.toml.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("GPU host {host}: contract is firm; the simulated site has interruptible hosts only")]
    FirmHost { host: String },
    #[error("GPU host {host}: no GPUs")]
    NoGpus { host: String },
    #[error("the SITE.toml written for the simulated site does not parse: {0}")]
    Invalid(String),
}

/// One miner as the planner values it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct MinerFigures {
    full_w: f64,
    sleep_w: f64,
    j_per_th: f64,
    target_min_w: Option<f64>,
}

fn positive(v: Option<f64>) -> Option<f64> {
    v.filter(|w| w.is_finite() && *w > 0.0)
}

/// The planner's rule (`planner::loads`): full power is the larger of the nameplate and the top
/// of the power-target range; asleep it counts at its own figure or the assumption.
fn figures(m: &MinerUnit, a: &Assumptions, unknown_j_per_th: f64) -> MinerFigures {
    let range = m.power_target.filter(|r| {
        r.min_w.is_finite() && r.max_w.is_finite() && r.min_w > 0.0 && r.min_w <= r.max_w
    });
    let full_w = [positive(m.nameplate_power_w), range.map(|r| r.max_w)]
        .into_iter()
        .flatten()
        .reduce(f64::max)
        .unwrap_or(a.unknown_miner_max_w);
    let sleep_w = pivot_controller::planner::sleeping_w(m.sleep_power_w, full_w, a);
    let j_per_th = positive(m.efficiency_j_per_th)
        .or_else(|| Some(positive(m.nameplate_power_w)? / positive(m.nameplate_hashrate_ths)?))
        .unwrap_or(unknown_j_per_th);
    MinerFigures {
        full_w,
        sleep_w,
        j_per_th,
        target_min_w: range.map(|r| r.min_w.min(full_w)),
    }
}

/// A miner group's key: the model and its figures rounded as SITE.toml writes them.
type GroupKey = (String, i64, i64, i64, Option<i64>);

/// The modelled site and, per miner group, the device ids in it (for the static start).
#[derive(Debug, Clone)]
pub struct SiteModel {
    pub site: Site,
    pub toml: String,
    pub miner_groups: Vec<Vec<String>>,
}

/// Writes the fleet the controller sees as a SITE.toml.
pub fn site_model(
    miners: &[MinerUnit],
    hosts: &[GpuHostUnit],
    assumptions: &Assumptions,
    unknown_j_per_th: f64,
    cap_w: f64,
    reserve_w: f64,
    transitions: Transitions,
) -> Result<SiteModel, ModelError> {
    let mut groups: BTreeMap<GroupKey, (MinerFigures, Vec<String>)> = BTreeMap::new();
    for m in miners {
        let f = figures(m, assumptions, unknown_j_per_th);
        // Whole watts and hundredths of a J/TH: a reading's rounding does not split a model.
        let key = (
            m.model.clone(),
            f.full_w.round() as i64,
            (f.j_per_th * 100.0).round() as i64,
            f.sleep_w.round() as i64,
            f.target_min_w.map(|w| w.round() as i64),
        );
        groups
            .entry(key)
            .or_insert_with(|| (f, Vec::new()))
            .1
            .push(m.device_id.clone());
    }
    let mut toml = format!(
        "# The simulated site as pivot-controller's planner sees it (written by pivot-site).\n\
         cap_w = {cap_w}\nreserve_w = {reserve_w}\n"
    );
    let mut miner_groups = Vec::new();
    for ((model, ..), (f, ids)) in &groups {
        let power_w = f.full_w.round();
        // SITE.toml wants a sleeping draw below the running one (the planner's is, for any
        // miner that draws at all: `planner::sleeping_w`).
        let sleep_w = if f.sleep_w.round() < power_w {
            f.sleep_w.round()
        } else {
            (power_w * 0.99).floor()
        };
        let _ = write!(
            toml,
            "\n[[miners]]\ncount = {}\nmodel = {:?}\npower_w = {power_w}\nhashrate_ths = {:.3}\n\
             sleep_w = {sleep_w}\ntransition_s = {}\n",
            ids.len(),
            model,
            power_w / ((f.j_per_th * 100.0).round() / 100.0),
            transitions.miner_s,
        );
        if let Some(min) = f.target_min_w {
            let _ = writeln!(toml, "power_target_min_w = {}", min.round());
        }
        miner_groups.push(ids.clone());
    }
    let mut host_groups: BTreeMap<(u32, i64, i64, i64), u32> = BTreeMap::new();
    for h in hosts {
        if h.contract != AiContract::Interruptible {
            return Err(ModelError::FirmHost {
                host: h.host_id.clone(),
            });
        }
        let Some(g) = h.gpus.first() else {
            return Err(ModelError::NoGpus {
                host: h.host_id.clone(),
            });
        };
        let key = (
            u32::try_from(h.gpus.len()).unwrap_or(u32::MAX),
            g.full_service_cap_w.round() as i64,
            g.min_cap_w.round() as i64,
            h.base_power_w.round() as i64,
        );
        *host_groups.entry(key).or_default() += 1;
    }
    for ((gpus, full, min, base), count) in &host_groups {
        let _ = write!(
            toml,
            "\n[[gpu_hosts]]\ncount = {count}\ngpus = {gpus}\ngpu_power_w = {full}\ngpu_min_w = {min}\n\
             host_base_w = {base}\ncontract = \"interruptible\"\ntransition_s = {}\n",
            transitions.host_s
        );
    }
    let site = Site::parse(&toml, "site.toml").map_err(|e| ModelError::Invalid(e.to_string()))?;
    Ok(SiteModel {
        site,
        toml,
        miner_groups,
    })
}

/// How many miners of each group mine at the start, as the backtest starts a site (and as its
/// static baseline runs one): every GPU host serving, miners most efficient first within
/// `limit_w`, each added only if it fits.
pub fn static_start(site: &Site, limit_w: f64) -> Vec<u32> {
    let mut used: f64 = site
        .gpu_hosts
        .iter()
        .map(|h| f64::from(h.count) * h.serving_w())
        .sum::<f64>()
        + site
            .miners
            .iter()
            .map(|m| f64::from(m.count) * m.sleep_w)
            .sum::<f64>();
    let mut order: Vec<usize> = (0..site.miners.len()).collect();
    let jth = |g: usize| site.miners[g].power_w / site.miners[g].hashrate_ths;
    order.sort_by(|&a, &b| jth(a).total_cmp(&jth(b)).then(a.cmp(&b)));
    let mut mining = vec![0u32; site.miners.len()];
    for g in order {
        let m = &site.miners[g];
        let extra = m.power_w - m.sleep_w;
        for _ in 0..m.count {
            if used + extra <= limit_w {
                used += extra;
                mining[g] += 1;
            }
        }
    }
    mining
}

#[cfg(test)]
mod tests {
    use super::*;
    use pivot_controller::planner::{GpuUnit, HostState, PowerTargetRange};
    use pivot_proto::model::MinerState;

    fn miner(
        id: &str,
        model: &str,
        nameplate: f64,
        ths: f64,
        range: Option<(f64, f64)>,
    ) -> MinerUnit {
        MinerUnit {
            device_id: id.into(),
            host_id: "rack-1".into(),
            model: model.into(),
            group: model.into(),
            nameplate_power_w: Some(nameplate),
            nameplate_hashrate_ths: Some(ths),
            efficiency_j_per_th: Some(nameplate / ths),
            sleep_power_w: None,
            state: MinerState::Mining,
            measured_power_w: Some(nameplate),
            seen: true,
            reachable_by_agent: true,
            power_target: range.map(|(min_w, max_w)| PowerTargetRange {
                min_w,
                max_w,
                step_w: None,
            }),
            power_target_set_w: None,
            setting_before_trim_w: None,
            intent: None,
            last_change_at: None,
            protected: false,
            pin: None,
        }
    }

    fn host(id: &str) -> GpuHostUnit {
        GpuHostUnit {
            host_id: id.into(),
            group: "GPU host".into(),
            gpus: (0..8)
                .map(|i| GpuUnit {
                    device_id: format!("{id}-{i}"),
                    min_cap_w: 200.0,
                    max_cap_w: 700.0,
                    full_service_cap_w: 700.0,
                    cap_w: Some(700.0),
                })
                .collect(),
            base_power_w: 4600.0,
            max_power_w: None,
            measured_power_w: None,
            gpus_allocated: None,
            workload_device_id: None,
            contract: AiContract::Interruptible,
            state: HostState::Serving,
            last_change_at: None,
            protected: false,
            pin: None,
        }
    }

    const A: Assumptions = Assumptions {
        unknown_miner_max_w: 3600.0,
        sleeping_miner_w: 20.0,
    };

    #[test]
    fn the_model_counts_what_the_planner_counts() {
        let miners = vec![
            miner("a", "Antminer S19j Pro", 3068.0, 104.0, None),
            miner("b", "Antminer S19j Pro", 3068.0, 104.0, None),
            miner("c", "Antminer S21", 3500.0, 200.0, Some((1750.0, 3850.0))),
            miner("d", "Bitaxe Gamma", 17.0, 1.2, None),
        ];
        let hosts = vec![host("g1"), host("g2")];
        let t = Transitions {
            miner_s: 60,
            host_s: 90,
        };
        let m = site_model(&miners, &hosts, &A, 38.0, 20_000.0, 400.0, t).unwrap();
        let s = &m.site;
        assert_eq!((s.cap_w, s.reserve_w), (20_000.0, 400.0));
        assert_eq!(s.miners.len(), 3);
        let s21 = s.miners.iter().find(|g| g.model == "Antminer S21").unwrap();
        // At the top of its range, earning as 17.5 J/TH on all of it.
        assert_eq!(s21.power_w, 3850.0);
        assert!((s21.hashrate_ths - 220.0).abs() < 1e-6);
        assert_eq!(s21.power_target_min_w, Some(1750.0));
        assert_eq!(s21.sleep_w, 20.0);
        let s19 = s
            .miners
            .iter()
            .find(|g| g.model == "Antminer S19j Pro")
            .unwrap();
        assert_eq!(
            (s19.count, s19.power_w, s19.transition_s),
            (2, 3068.0, Some(60))
        );
        let bitaxe = s.miners.iter().find(|g| g.model == "Bitaxe Gamma").unwrap();
        // The 20 W sleeping assumption is more than a quarter of a 17 W Bitaxe: a quarter.
        assert_eq!((bitaxe.power_w, bitaxe.sleep_w), (17.0, 4.0));
        assert_eq!(s.gpu_hosts.len(), 1);
        assert_eq!(s.gpu_hosts[0].count, 2);
        assert_eq!(s.gpu_hosts[0].serving_w(), 10_200.0);
        assert_eq!(m.miner_groups.iter().map(Vec::len).sum::<usize>(), 4);
    }

    #[test]
    fn the_static_start_fills_the_cap_most_efficient_first() {
        let miners = vec![
            miner("a", "Antminer S19j Pro", 3068.0, 104.0, None),
            miner("b", "Antminer S19j Pro", 3068.0, 104.0, None),
            miner("c", "Antminer S21", 3500.0, 200.0, None),
        ];
        let t = Transitions {
            miner_s: 120,
            host_s: 300,
        };
        let m = site_model(&miners, &[host("g1")], &A, 38.0, 20_000.0, 0.0, t).unwrap();
        // 10,200 (host) + 60 asleep; the S21 (+3,480) fits, one S19j Pro (+3,048), not two.
        let mining = static_start(&m.site, 17_000.0);
        let by_model: BTreeMap<&str, u32> = m
            .site
            .miners
            .iter()
            .zip(&mining)
            .map(|(g, n)| (g.model.as_str(), *n))
            .collect();
        assert_eq!(by_model["Antminer S21"], 1);
        assert_eq!(by_model["Antminer S19j Pro"], 1);
    }
}
