//! The safety rules, as pure functions: whether an intent is acceptable for a device
//! ([`check`]), whether moving to a target could raise power ([`raises_power`]), whether a
//! device shows a target's physical effect ([`satisfied`]), and what the fallback does when a
//! lease ends ([`fallback_target`]). Nothing here does I/O or reads a clock.

use pivot_proto::model::{MinerState, MinerTarget, Target, WorkloadState};

use super::held::Before;
use super::seam::{Limits, Observed};
use crate::config::Fallback;

/// Below this a miner is not hashing (TH/s): a sleep is confirmed under it.
pub const NOT_HASHING_THS: f64 = 0.5;

/// Where a miner's power target could land, as the firmware accepts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetCaps<'a> {
    pub power_target: bool,
    pub min_w: Option<u32>,
    pub max_w: Option<u32>,
    /// Ascending steps (LuxOS profiles); empty for any watt value.
    pub steps_w: &'a [u32],
    pub nameplate_power_w: Option<f64>,
}

/// Why a power target is refused before anything is touched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TargetRefused {
    #[error("this miner's firmware takes no power target in watts")]
    NoPowerTarget,
    #[error("power target {requested_w} W is outside the miner's range {range}")]
    OutOfRange { requested_w: u32, range: String },
    #[error(
        "power target {requested_w} W is below the lowest the firmware can express ({lowest_w} W)"
    )]
    BelowSteps { requested_w: u32, lowest_w: u32 },
    #[error(
        "power target {requested_w} W cannot be checked: the firmware reports no range and \
         {nameplate}; set nameplate_power_w on the miner's entry in the agent's configuration"
    )]
    Unbounded { requested_w: u32, nameplate: String },
}

/// The one rule for power targets, used by the daemon and `pivot-agent miner power-target`
/// alike: a target outside the range the firmware reports is refused; where it reports none, a
/// target is taken only up to the miner's nameplate; where it has steps, the request lands on
/// the highest step at or below it. Returns the watts the hardware will actually hold.
pub fn power_target_landing(requested_w: u32, caps: &TargetCaps<'_>) -> Result<u32, TargetRefused> {
    if !caps.power_target {
        return Err(TargetRefused::NoPowerTarget);
    }
    let upper = caps.max_w.map(f64::from).or(caps.nameplate_power_w);
    let out_of_range = || TargetRefused::OutOfRange {
        requested_w,
        range: format!(
            "{}-{} W",
            caps.min_w.map_or("?".into(), |v| v.to_string()),
            caps.max_w.map_or_else(
                || upper.map_or("?".into(), |v| format!("{v} (nameplate)")),
                |v| v.to_string()
            )
        ),
    };
    if caps.min_w.is_some_and(|lo| requested_w < lo) {
        return Err(out_of_range());
    }
    if let Some(lowest) = caps.steps_w.first() {
        // Steps are the range: a request above the top step lands on the top one.
        return caps
            .steps_w
            .iter()
            .rev()
            .find(|s| **s <= requested_w)
            .copied()
            .ok_or(TargetRefused::BelowSteps {
                requested_w,
                lowest_w: *lowest,
            });
    }
    match upper {
        Some(hi) if f64::from(requested_w) <= hi => Ok(requested_w),
        Some(_) => Err(out_of_range()),
        None => Err(TargetRefused::Unbounded {
            requested_w,
            nameplate: "its nameplate is unknown".into(),
        }),
    }
}

/// Why an intent is refused before anything is touched.
pub fn check(target: &Target, limits: &Limits) -> Result<(), String> {
    match (target, limits) {
        (
            Target::Miner(MinerTarget::Sleep),
            Limits::Miner {
                can_sleep: false, ..
            },
        ) => Err("this miner's firmware cannot sleep".into()),
        (
            Target::Miner(MinerTarget::Run {
                power_target_w: Some(w),
            }),
            Limits::Miner { .. },
        ) => power_target_landing(*w, &target_caps(limits))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        (Target::Miner(_), Limits::Miner { .. }) => Ok(()),
        (
            Target::Gpu { power_cap_w },
            Limits::Gpu {
                min_cap_w,
                max_cap_w,
            },
        ) => {
            if power_cap_w < min_cap_w || power_cap_w > max_cap_w {
                Err(format!(
                    "power cap {power_cap_w} W is outside the allowed range {min_cap_w}-{max_cap_w} W"
                ))
            } else {
                Ok(())
            }
        }
        (Target::Workload { .. }, Limits::Workload) => Ok(()),
        (Target::Workload { .. }, _) => {
            Err("no workload manager is configured on this host".into())
        }
        (Target::Miner(_), _) => Err("device is not a miner; a miner target does not apply".into()),
        (Target::Gpu { .. }, _) => Err("device is not a GPU; a GPU target does not apply".into()),
    }
}

/// A miner's target capabilities from its limits (all-false for other devices).
pub fn target_caps(limits: &Limits) -> TargetCaps<'_> {
    match limits {
        Limits::Miner {
            power_target,
            power_target_min_w,
            power_target_max_w,
            power_target_steps_w,
            nameplate_power_w,
            ..
        } => TargetCaps {
            power_target: *power_target,
            min_w: *power_target_min_w,
            max_w: *power_target_max_w,
            steps_w: power_target_steps_w,
            nameplate_power_w: *nameplate_power_w,
        },
        Limits::Gpu { .. } | Limits::Workload => TargetCaps {
            power_target: false,
            min_w: None,
            max_w: None,
            steps_w: &[],
            nameplate_power_w: None,
        },
    }
}

/// Whether moving to `target` could raise the device's power from what was `observed`.
/// Unknown counts as raising: the agent must prove a change is safe, not assume it. A miner
/// that is ramping may be on its way to sleep (LuxOS, Whatsminer and Bitaxe report a miner
/// going to sleep as ramping), so it counts as not hashing.
pub fn raises_power(target: &Target, observed: Option<&Observed>) -> bool {
    match (target, observed) {
        (Target::Miner(MinerTarget::Sleep), _) => false,
        (
            Target::Miner(MinerTarget::Run { power_target_w }),
            Some(Observed::Miner {
                reachable: true,
                state: MinerState::Mining,
                power_target_w: current,
                ..
            }),
        ) => match (power_target_w, current) {
            (None, _) => false,
            (Some(new), Some(cur)) => new > cur,
            (Some(_), None) => true,
        },
        (
            Target::Gpu { power_cap_w },
            Some(Observed::Gpu {
                limit_w,
                enforced_cap_w,
                ..
            }),
        ) => match limit_w.or(*enforced_cap_w) {
            Some(cur) => f64::from(*power_cap_w) > cur + 0.5,
            None => true,
        },
        (Target::Workload { state }, _) => *state == WorkloadState::Released,
        _ => true,
    }
}

/// Whether the device shows the target's physical effect (see `IntentPhase` in intents.proto).
/// `before` is what the device showed when the agent last acted on it.
pub fn satisfied(
    target: &Target,
    observed: &Observed,
    limits: &Limits,
    before: Option<&Before>,
) -> bool {
    match (target, observed, limits) {
        (
            Target::Miner(t),
            Observed::Miner {
                reachable: true,
                state,
                power_w,
                hashrate_ths,
                power_target_w,
            },
            Limits::Miner {
                nameplate_power_w,
                nameplate_hashrate_ths,
                ..
            },
        ) => match t {
            MinerTarget::Sleep => {
                // Power actually fell: asleep, not hashing, and (where measured) drawing at most
                // a sixth of nameplate or of what it drew before (control board and fans). A
                // firmware that says "sleeping" while still drawing is not asleep.
                let reference =
                    nameplate_power_w.or(before.and_then(|b| b.power_w).filter(|p| *p > 0.0));
                *state == MinerState::Sleeping
                    && hashrate_ths.is_none_or(|h| h < NOT_HASHING_THS)
                    && match (power_w, reference) {
                        (Some(p), Some(r)) => *p <= r / 6.0,
                        _ => true,
                    }
            }
            MinerTarget::Run {
                power_target_w: want,
            } => {
                // Power actually rose, as a sleep must show it fell: mining, hashing at least a
                // sixth of nameplate (0.5 TH/s when unknown) and, where measured, drawing at
                // least a sixth of nameplate (twice the draw before it acted when unknown).
                // A "mining" reply right after a wake, still at standby draw, is not enough.
                let min_ths = nameplate_hashrate_ths.map_or(NOT_HASHING_THS, |n| n / 6.0);
                let min_w = nameplate_power_w
                    .map(|n| n / 6.0)
                    .or(before.and_then(|b| b.power_w).map(|p| p * 2.0));
                let moved = hashrate_ths.is_some_and(|h| h >= min_ths)
                    && match (power_w, min_w) {
                        (Some(p), Some(m)) => *p >= m,
                        _ => true,
                    };
                *state == MinerState::Mining
                    && moved
                    && match want {
                        None => true,
                        Some(w) => match power_target_landing(*w, &target_caps(limits)) {
                            Ok(landing) => {
                                *power_target_w == Some(landing)
                                    && power_w.is_none_or(|p| p <= f64::from(landing) * 1.05 + 50.0)
                            }
                            Err(_) => false,
                        },
                    }
            }
        },
        (
            Target::Gpu { power_cap_w },
            Observed::Gpu {
                limit_w,
                enforced_cap_w: Some(enforced),
                power_w,
            },
            _,
        ) => {
            // Our limit is in place; the enforced one may be lower (a BMC's limit), never
            // higher; the draw is at or under what is enforced.
            let want = f64::from(*power_cap_w);
            limit_w.is_none_or(|l| (l - want).abs() < 1.0)
                && *enforced <= want + 0.5
                && power_w.is_none_or(|p| p <= enforced * 1.05 + 5.0)
        }
        (
            Target::Workload { state },
            Observed::Workload {
                schedulable,
                drained,
                ..
            },
            _,
        ) => match state {
            // The manager's word, as the actuator confirms it (`NodeStatus::released`/`drained`):
            // one definition, so a confirmed apply is never later read as not confirmed.
            WorkloadState::Released => *schedulable == Some(true),
            WorkloadState::Drained => *drained == Some(true),
        },
        _ => false,
    }
}

/// The target the fallback puts a device in when its lease expires, if it changes anything.
/// It only ever lowers: a miner to sleep, a GPU to its minimum cap.
pub fn fallback_target(fallback: Fallback, limits: &Limits) -> Option<Target> {
    match (fallback, limits) {
        (Fallback::Hold, _) => None,
        (
            Fallback::Curtail,
            Limits::Miner {
                can_sleep: true, ..
            },
        ) => Some(Target::Miner(MinerTarget::Sleep)),
        (Fallback::Curtail, Limits::Miner { .. } | Limits::Workload) => None,
        (Fallback::Curtail, Limits::Gpu { min_cap_w, .. }) => Some(Target::Gpu {
            power_cap_w: *min_cap_w,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: Target = Target::Miner(MinerTarget::Run {
        power_target_w: None,
    });
    const SLEEP: Target = Target::Miner(MinerTarget::Sleep);

    fn miner(state: MinerState, power_w: f64, hashrate_ths: f64, target: Option<u32>) -> Observed {
        Observed::Miner {
            reachable: true,
            state,
            power_w: Some(power_w),
            hashrate_ths: Some(hashrate_ths),
            power_target_w: target,
        }
    }

    fn s21(steps: Vec<u32>, range: Option<(u32, u32)>) -> Limits {
        Limits::Miner {
            can_sleep: true,
            power_target: true,
            power_target_min_w: range.map(|r| r.0),
            power_target_max_w: range.map(|r| r.1),
            power_target_steps_w: steps,
            nameplate_power_w: Some(3500.0),
            nameplate_hashrate_ths: Some(200.0),
        }
    }

    fn gpu(limit: f64, enforced: f64, draw: f64) -> Observed {
        Observed::Gpu {
            limit_w: Some(limit),
            enforced_cap_w: Some(enforced),
            power_w: Some(draw),
        }
    }

    #[test]
    fn unknown_state_counts_as_raising() {
        assert!(raises_power(&RUN, None));
        assert!(!raises_power(&SLEEP, None));
        assert!(raises_power(
            &Target::Gpu { power_cap_w: 400 },
            Some(&gpu(300.0, 300.0, 0.0))
        ));
        assert!(!raises_power(
            &Target::Gpu { power_cap_w: 200 },
            Some(&gpu(300.0, 300.0, 0.0))
        ));
    }

    #[test]
    fn hole1_a_ramping_miner_counts_as_not_hashing() {
        // LuxOS, Whatsminer and Bitaxe report a miner on its way to sleep as ramping: waking it
        // raises power.
        let ramping = miner(MinerState::Ramping, 1500.0, 40.0, None);
        assert!(raises_power(&RUN, Some(&ramping)));
        assert!(!raises_power(
            &RUN,
            Some(&miner(MinerState::Mining, 3000.0, 190.0, None))
        ));
    }

    #[test]
    fn hole6_a_gpu_held_below_its_cap_by_another_limit_is_satisfied() {
        let limits = Limits::Gpu {
            min_cap_w: 100,
            max_cap_w: 700,
        };
        let cap = Target::Gpu { power_cap_w: 400 };
        // A BMC holds it at 350 W: our 400 W limit is in place, the draw under what is enforced.
        assert!(satisfied(&cap, &gpu(400.0, 350.0, 340.0), &limits, None));
        // Our limit is not in place (someone set 700 W), even though 350 W is enforced.
        assert!(!satisfied(&cap, &gpu(700.0, 350.0, 340.0), &limits, None));
        // Enforced above what we asked: not our cap.
        assert!(!satisfied(&cap, &gpu(400.0, 450.0, 340.0), &limits, None));
        // Drawing above the enforced limit.
        assert!(!satisfied(&cap, &gpu(400.0, 350.0, 390.0), &limits, None));
    }

    #[test]
    fn hole6_a_target_lands_on_the_highest_step_at_or_below_it() {
        let luxos = s21(vec![1750, 2100, 2450, 2800, 3150, 3500], None);
        let want = Target::Miner(MinerTarget::Run {
            power_target_w: Some(3000),
        });
        // The firmware holds 2800 W (its profile at or under 3000 W): that is the target met.
        assert!(satisfied(
            &want,
            &miner(MinerState::Mining, 2790.0, 160.0, Some(2800)),
            &luxos,
            None
        ));
        assert!(!satisfied(
            &want,
            &miner(MinerState::Mining, 3140.0, 180.0, Some(3150)),
            &luxos,
            None
        ));
        assert_eq!(power_target_landing(3000, &target_caps(&luxos)), Ok(2800));
        assert_eq!(power_target_landing(9000, &target_caps(&luxos)), Ok(3500));
        assert!(matches!(
            power_target_landing(1000, &target_caps(&luxos)),
            Err(TargetRefused::BelowSteps { lowest_w: 1750, .. })
        ));
    }

    #[test]
    fn out_of_range_is_refused_and_an_unknown_range_is_bounded_by_nameplate() {
        let ranged = s21(vec![], Some((1750, 3850)));
        assert!(
            check(
                &Target::Miner(MinerTarget::Run {
                    power_target_w: Some(4000)
                }),
                &ranged
            )
            .is_err()
        );
        assert!(
            check(
                &Target::Miner(MinerTarget::Run {
                    power_target_w: Some(3000)
                }),
                &ranged
            )
            .is_ok()
        );
        let unranged = s21(vec![], None);
        let e = check(
            &Target::Miner(MinerTarget::Run {
                power_target_w: Some(4_000_000),
            }),
            &unranged,
        )
        .unwrap_err();
        assert!(e.contains("4000000") && e.contains("nameplate"), "{e}");
        assert!(
            check(
                &Target::Miner(MinerTarget::Run {
                    power_target_w: Some(3000)
                }),
                &unranged
            )
            .is_ok()
        );
        let mut unknown = s21(vec![], None);
        if let Limits::Miner {
            nameplate_power_w, ..
        } = &mut unknown
        {
            *nameplate_power_w = None;
        }
        let e = check(
            &Target::Miner(MinerTarget::Run {
                power_target_w: Some(3000),
            }),
            &unknown,
        )
        .unwrap_err();
        assert!(e.contains("nameplate_power_w"), "{e}");
    }

    #[test]
    fn a_wake_is_confirmed_only_once_power_and_hashrate_moved() {
        let limits = s21(vec![], None);
        let asleep = Before {
            power_w: Some(21.0),
            hashrate_ths: Some(0.0),
            hashing: false,
        };
        // 9 ms after the wake: the firmware says mining, at standby draw and a trickle of hashes.
        let just_woken = miner(MinerState::Mining, 21.0, 0.2, None);
        assert!(!satisfied(&RUN, &just_woken, &limits, Some(&asleep)));
        let ramped = miner(MinerState::Mining, 3400.0, 195.0, None);
        assert!(satisfied(&RUN, &ramped, &limits, Some(&asleep)));
        // Nameplate unknown: twice the draw before it acted, and 0.5 TH/s.
        let mut unknown = limits;
        if let Limits::Miner {
            nameplate_power_w,
            nameplate_hashrate_ths,
            ..
        } = &mut unknown
        {
            *nameplate_power_w = None;
            *nameplate_hashrate_ths = None;
        }
        assert!(!satisfied(
            &RUN,
            &miner(MinerState::Mining, 30.0, 0.6, None),
            &unknown,
            Some(&asleep)
        ));
        assert!(satisfied(
            &RUN,
            &miner(MinerState::Mining, 300.0, 0.6, None),
            &unknown,
            Some(&asleep)
        ));
    }

    #[test]
    fn fallback_only_lowers() {
        let gpu = Limits::Gpu {
            min_cap_w: 150,
            max_cap_w: 700,
        };
        assert_eq!(
            fallback_target(Fallback::Curtail, &gpu),
            Some(Target::Gpu { power_cap_w: 150 })
        );
        assert_eq!(
            fallback_target(Fallback::Curtail, &s21(vec![], None)),
            Some(SLEEP)
        );
        assert_eq!(fallback_target(Fallback::Hold, &gpu), None);
        assert!(!raises_power(&SLEEP, None));
    }

    #[test]
    fn workload_targets_are_refused_without_a_workload_manager() {
        let t = Target::Workload {
            state: WorkloadState::Released,
        };
        assert_eq!(
            check(&t, &s21(vec![], None)).unwrap_err(),
            "no workload manager is configured on this host"
        );
        assert!(check(&t, &Limits::Workload).is_ok());
    }

    #[test]
    fn a_workload_is_confirmed_on_the_managers_word_and_never_on_an_unread_node() {
        let node = |schedulable, drained, jobs| Observed::Workload {
            schedulable,
            drained,
            ai_jobs_running: jobs,
        };
        let released = Target::Workload {
            state: WorkloadState::Released,
        };
        let drained = Target::Workload {
            state: WorkloadState::Drained,
        };
        let l = Limits::Workload;
        assert!(satisfied(
            &released,
            &node(Some(true), Some(false), Some(3)),
            &l,
            None
        ));
        assert!(!satisfied(
            &released,
            &node(Some(false), Some(true), Some(0)),
            &l,
            None
        ));
        assert!(satisfied(
            &drained,
            &node(Some(false), Some(true), Some(0)),
            &l,
            None
        ));
        // Closed with a job still on it (inside the grace) is not drained.
        assert!(!satisfied(
            &drained,
            &node(Some(false), Some(false), Some(1)),
            &l,
            None
        ));
        let unread = node(None, None, None);
        assert!(unread.unreachable());
        assert!(!satisfied(&released, &unread, &l, None));
        assert!(!satisfied(&drained, &unread, &l, None));
        // Opening a node raises power; closing one never does.
        assert!(raises_power(&released, Some(&unread)));
        assert!(!raises_power(&drained, None));
        assert_eq!(fallback_target(Fallback::Curtail, &l), None);
    }
}
