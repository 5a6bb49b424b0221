//! Operator overrides: what a pin may name, and what it means for each device.
//!
//! A pin names one device (`miner/…`, `gpu/…`), a host (`host/<host_id>`: its miners, its GPUs or
//! its workload, by the pin's kind), or `miners` (every miner of the site — `pivotctl curtail`).
//! A pin is checked against the fleet when it is set: a device or host nobody declared, a pin of
//! the wrong kind, or a value outside the device's range is refused, never stored.

use std::collections::HashMap;

use pivot_proto::model::{FieldError, MinerTarget, Target};

use crate::fleet::Registry;
use crate::store::Override;

/// The override target meaning every miner of the site.
pub const ALL_MINERS: &str = "miners";

/// Refuses an override the fleet cannot carry out, naming why.
pub fn check_against_fleet(o: &Override, registry: &Registry) -> Result<(), FieldError> {
    let err = |problem: String| FieldError::new("override.target", problem);
    let target = o.target.as_str();
    if target == ALL_MINERS {
        return match o.pin {
            Target::Miner(
                MinerTarget::Sleep
                | MinerTarget::Run {
                    power_target_w: None,
                },
            ) => Ok(()),
            _ => Err(err(format!(
                "`{ALL_MINERS}` takes only a miner pin (sleep or run)"
            ))),
        };
    }
    registry.with_agents(|agents| {
        if let Some(host) = target.strip_prefix("host/") {
            let Some(a) = agents.get(host) else {
                return Err(err(format!("no host `{host}` is known to this controller")));
            };
            return match o.pin {
                Target::Workload { .. } => Ok(()),
                Target::Miner(MinerTarget::Run {
                    power_target_w: Some(_),
                }) => Err(err(
                    "a power target is per miner: pin each miner, not the host".into(),
                )),
                Target::Miner(_) if a.miners.is_empty() => {
                    Err(err(format!("host `{host}` has no miners")))
                }
                Target::Miner(_) => Ok(()),
                Target::Gpu { power_cap_w } => {
                    if a.gpus.is_empty() {
                        return Err(err(format!("host `{host}` has no GPUs")));
                    }
                    for g in a.gpus.values() {
                        gpu_in_range(power_cap_w, &g.info.inventory, &g.info.device_id)?;
                    }
                    Ok(())
                }
            };
        }
        for a in agents.values() {
            if let Some(m) = a.miners.get(target) {
                return match o.pin {
                    Target::Miner(MinerTarget::Run {
                        power_target_w: Some(w),
                    }) => {
                        let caps = m.info.inventory.capabilities.clone().unwrap_or_default();
                        if !caps.power_target {
                            return Err(FieldError::new(
                                "override.miner.power_target_w",
                                format!("miner `{target}` takes no power target"),
                            ));
                        }
                        let lo = caps.power_target_min_w.unwrap_or(0);
                        let hi = caps
                            .power_target_max_w
                            .or(m.info.inventory.nameplate_power_w)
                            .unwrap_or(0);
                        if w < lo || w > hi {
                            return Err(FieldError::new(
                                "override.miner.power_target_w",
                                format!("{w} W is outside miner `{target}`'s range {lo}-{hi} W"),
                            ));
                        }
                        Ok(())
                    }
                    Target::Miner(MinerTarget::Sleep) if !m
                        .info
                        .inventory
                        .capabilities
                        .as_ref()
                        .is_some_and(|c| c.can_sleep) =>
                    {
                        Err(err(format!("miner `{target}`'s firmware cannot sleep")))
                    }
                    Target::Miner(_) => Ok(()),
                    _ => Err(err(format!("`{target}` is a miner: pin it to sleep or run"))),
                };
            }
            if let Some(g) = a.gpus.get(target) {
                return match o.pin {
                    Target::Gpu { power_cap_w } => {
                        gpu_in_range(power_cap_w, &g.info.inventory, target)
                    }
                    _ => Err(err(format!("`{target}` is a GPU: pin it to a power cap"))),
                };
            }
        }
        Err(err(format!(
            "no device or host `{target}` is known to this controller (ids: `miner/…`, `gpu/…`, `host/<host_id>`, `{ALL_MINERS}`)"
        )))
    })
}

fn gpu_in_range(
    cap_w: u32,
    inv: &pivot_proto::v1::GpuInventory,
    id: &str,
) -> Result<(), FieldError> {
    if cap_w < inv.power_cap_min_w || cap_w > inv.power_cap_max_w {
        return Err(FieldError::new(
            "override.gpu.power_cap_w",
            format!(
                "{cap_w} W is outside GPU `{id}`'s range {}-{} W",
                inv.power_cap_min_w, inv.power_cap_max_w
            ),
        ));
    }
    Ok(())
}

/// The overrides in force, indexed by target for the lookups of one plan: a device's pin is
/// found without scanning every override (a plan looks up every device: miners × overrides).
#[derive(Debug, Default)]
pub struct Pins<'a> {
    by_target: HashMap<&'a str, Vec<&'a Override>>,
}

impl<'a> Pins<'a> {
    pub fn new(overrides: &'a [Override]) -> Self {
        let mut by_target: HashMap<&'a str, Vec<&'a Override>> = HashMap::new();
        for o in overrides {
            by_target.entry(o.target.as_str()).or_default().push(o);
        }
        Self { by_target }
    }

    /// The overrides naming `target`, in the order they were given.
    pub fn on(&self, target: &str) -> impl Iterator<Item = &'a Override> + '_ {
        self.by_target
            .get(target)
            .into_iter()
            .flat_map(|v| v.iter().copied())
    }

    /// The pin in force for a device of `host_id`: the device's own pin first, then its
    /// host's, then the site-wide miners' pin. `kind_matches` says whether a pin applies to the
    /// device's kind.
    pub fn pin_for(
        &self,
        device_id: &str,
        host_id: &str,
        kind_matches: impl Fn(&Target) -> bool,
        is_miner: bool,
    ) -> Option<&'a Override> {
        let first = |target: &str| self.on(target).find(|o| kind_matches(&o.pin));
        first(device_id)
            .or_else(|| first(&format!("host/{host_id}")))
            .or_else(|| is_miner.then(|| first(ALL_MINERS)).flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn o(target: &str, pin: Target) -> Override {
        Override {
            target: target.into(),
            pin,
            expires_at: None,
            reason: String::new(),
            actor: "t".into(),
            created_at: Utc::now(),
        }
    }

    const SLEEP: Target = Target::Miner(MinerTarget::Sleep);

    #[test]
    fn the_most_specific_pin_wins() {
        let run = Target::Miner(MinerTarget::Run {
            power_target_w: None,
        });
        let list = vec![o(ALL_MINERS, SLEEP), o("host/h1", run), o("m2", SLEEP)];
        let is_miner = |t: &Target| matches!(t, Target::Miner(_));
        let pins = Pins::new(&list);
        assert_eq!(
            pins.pin_for("m2", "h1", is_miner, true).unwrap().target,
            "m2"
        );
        assert_eq!(
            pins.pin_for("m1", "h1", is_miner, true).unwrap().target,
            "host/h1"
        );
        assert_eq!(
            pins.pin_for("m9", "h9", is_miner, true).unwrap().target,
            ALL_MINERS
        );
        let is_gpu = |t: &Target| matches!(t, Target::Gpu { .. });
        assert!(pins.pin_for("gpu/x", "h1", is_gpu, false).is_none());
    }

    /// A host can carry a pin of each kind (its miners', its workload's): the index keeps them
    /// all, in the order given, and each lookup takes the first of its kind.
    #[test]
    fn a_target_with_pins_of_several_kinds_gives_each_kind_its_own() {
        let drained = Target::Workload {
            state: pivot_proto::model::WorkloadState::Drained,
        };
        let released = Target::Workload {
            state: pivot_proto::model::WorkloadState::Released,
        };
        let list = vec![
            o("host/h1", drained),
            o("host/h1", SLEEP),
            o("host/h1", released),
        ];
        let pins = Pins::new(&list);
        let is_miner = |t: &Target| matches!(t, Target::Miner(_));
        assert_eq!(pins.pin_for("m1", "h1", is_miner, true).unwrap().pin, SLEEP);
        let workload = |t: &Target| matches!(t, Target::Workload { .. });
        assert_eq!(
            pins.pin_for("host/h1", "h1", workload, false).unwrap().pin,
            drained
        );
        assert_eq!(pins.on("host/h1").count(), 3);
        assert_eq!(pins.on("host/h2").count(), 0);
    }

    #[test]
    fn unknown_targets_and_wrong_kinds_are_refused() {
        let r = Registry::default();
        let e = check_against_fleet(&o("miner/nope", SLEEP), &r).unwrap_err();
        assert!(e.problem.contains("no device or host `miner/nope`"), "{e}");
        let e = check_against_fleet(&o("host/nope", SLEEP), &r).unwrap_err();
        assert!(e.problem.contains("no host `nope`"), "{e}");
        assert!(check_against_fleet(&o(ALL_MINERS, SLEEP), &r).is_ok());
        let e =
            check_against_fleet(&o(ALL_MINERS, Target::Gpu { power_cap_w: 300 }), &r).unwrap_err();
        assert!(e.problem.contains("only a miner pin"), "{e}");
    }
}
