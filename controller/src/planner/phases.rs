//! Decisions into ordered phases, break-before-make: miners curtailed and hosts drained, then
//! GPU caps lowered; only then, in ramp-limited steps, GPU caps raised and miners woken, and
//! hosts released to jobs once their caps are up. Each phase carries its committed power.

use chrono::{DateTime, Duration, Utc};
use pivot_proto::model::{MinerTarget, Target, WorkloadState};

use super::decide::{Decision, descending_key, radix_sort};
use super::input::{HostState, PlanInput};
use super::loads::{Level, Load, Unit};
use super::output::{Move, Phase, PhaseKind};

/// A watt figure as the wire's u32: rounded, clamped to 0..=u32::MAX (NaN → 0).
pub(crate) fn watts_u32(w: f64) -> u32 {
    if w.is_nan() || w <= 0.0 {
        0
    } else if w >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range after the checks above.
        w.round() as u32
    }
}

fn miner_target(l: &Load, level: Level) -> Target {
    Target::Miner(match level {
        Level::Off => MinerTarget::Sleep,
        Level::Full => MinerTarget::Run {
            power_target_w: (matches!(l.level_now, Level::Trim(_)) || l.setting_off_full)
                .then(|| watts_u32(l.full_w)),
        },
        Level::Trim(w) => MinerTarget::Run {
            power_target_w: Some(watts_u32(w)),
        },
    })
}

fn workload(level: Level) -> Target {
    Target::Workload {
        state: if level.is_on() {
            WorkloadState::Released
        } else {
            WorkloadState::Drained
        },
    }
}

struct Builder<'a> {
    input: &'a PlanInput,
    phases: Vec<Phase>,
    committed_w: f64,
}

impl Builder<'_> {
    /// Appends a phase whose devices change committed power by `delta_w` (their after minus
    /// before); while in flight, each counts at the higher of the two.
    fn push(
        &mut self,
        kind: PhaseKind,
        not_before: Option<DateTime<Utc>>,
        moves: Vec<Move>,
        delta_w: f64,
    ) {
        let during = self.committed_w + delta_w.max(0.0);
        // Without moves there is no phase, but the figure the fit planned with still holds.
        self.committed_w += delta_w;
        if moves.is_empty() {
            return;
        }
        self.phases.push(Phase {
            index: u32::try_from(self.phases.len()).unwrap_or(u32::MAX),
            kind,
            not_before,
            moves,
            committed_w: during,
            committed_after_w: self.committed_w,
        });
    }

    fn miner_move(&self, i: usize, l: &Load, d: &Decision) -> Move {
        let m = &self.input.miners[i];
        Move {
            device_id: m.device_id.clone(),
            host_id: m.host_id.clone(),
            from: m
                .intent
                .filter(|i| !i.given_up())
                .map(|i| Target::Miner(i.target))
                .or(match m.state {
                    pivot_proto::model::MinerState::Mining => {
                        Some(Target::Miner(MinerTarget::Run {
                            power_target_w: None,
                        }))
                    }
                    pivot_proto::model::MinerState::Sleeping => {
                        Some(Target::Miner(MinerTarget::Sleep))
                    }
                    _ => None,
                }),
            to: miner_target(l, d.level),
            power_before_w: l.now_w,
            power_after_w: l.level_power(d.level),
            reason: d.reason,
            // A first trim keeps the owner's setting; the ledger carries it from then on.
            setting_before_w: l
                .keep_setting_w
                .filter(|_| matches!(d.level, Level::Trim(_))),
        }
    }

    /// GPU cap moves of a host going to `level`, and its workload move.
    fn host_moves(&self, i: usize, l: &Load, d: &Decision) -> (Vec<Move>, Option<Move>) {
        let h = &self.input.gpu_hosts[i];
        let serve = d.level.is_on();
        let caps = h
            .gpus
            .iter()
            .filter_map(|g| {
                let to = if serve {
                    g.full_service_cap_w
                        .clamp(g.min_cap_w, g.max_cap_w.max(g.min_cap_w))
                } else {
                    g.min_cap_w
                };
                let now = g.cap_w.unwrap_or(g.max_cap_w);
                (g.cap_w.is_none() || (now - to).abs() >= 1.0).then(|| Move {
                    device_id: g.device_id.clone(),
                    host_id: h.host_id.clone(),
                    from: g.cap_w.map(|w| Target::Gpu {
                        power_cap_w: watts_u32(w),
                    }),
                    to: Target::Gpu {
                        power_cap_w: watts_u32(to),
                    },
                    power_before_w: now,
                    power_after_w: to,
                    reason: d.reason,
                    setting_before_w: None,
                })
            })
            .collect();
        let hand_off = h.workload_device_id.as_ref().map(|id| Move {
            device_id: id.clone(),
            host_id: h.host_id.clone(),
            from: Some(workload(l.level_now)),
            to: workload(d.level),
            power_before_w: 0.0,
            power_after_w: 0.0,
            reason: d.reason,
            setting_before_w: None,
        });
        (caps, hand_off)
    }
}

/// The phases, and when the first grant step is due (for the next plan's ramp).
pub(super) fn build(
    input: &PlanInput,
    loads: &[Load],
    decisions: &[Decision],
) -> (Vec<Phase>, Option<DateTime<Utc>>) {
    let mut b = Builder {
        input,
        phases: Vec::new(),
        committed_w: loads.iter().map(|l| l.now_w).sum(),
    };
    // Sized once: growing vectors of moves would copy them over and over.
    let moved = loads
        .iter()
        .zip(decisions)
        .filter(|(l, d)| !d.level.same_as(l.level_now))
        .count();
    let mut curtail = Vec::with_capacity(moved);
    let mut curtail_delta = 0.0;
    let mut lower_caps = Vec::new();
    let mut lower_delta = 0.0;
    let mut grants: Vec<usize> = Vec::with_capacity(moved);
    for (i, (l, d)) in loads.iter().zip(decisions).enumerate() {
        if d.level.same_as(l.level_now) {
            // A drained host whose caps were left up (a plan superseded between the drain and
            // the caps, or caps unknown) has them lowered now.
            if let Unit::Host(h) = l.unit
                && !d.level.is_on()
                && input.gpu_hosts[h].state == HostState::Drained
            {
                let (caps, _) = b.host_moves(h, l, d);
                if !caps.is_empty() {
                    lower_delta += l.off_w - l.now_w;
                    lower_caps.extend(caps);
                }
            }
            continue;
        }
        let after = l.level_power(d.level);
        if after < l.now_w || (after <= l.now_w && !d.level.is_on()) {
            match l.unit {
                Unit::Miner(m) => {
                    curtail.push(b.miner_move(m, l, d));
                    curtail_delta += after - l.now_w;
                }
                Unit::Host(h) => {
                    let (caps, hand_off) = b.host_moves(h, l, d);
                    // Caps already at their minimum: the draw falls with the drain itself.
                    if caps.is_empty() {
                        curtail_delta += after - l.now_w;
                    } else {
                        lower_delta += after - l.now_w;
                    }
                    curtail.extend(hand_off);
                    lower_caps.extend(caps);
                }
            }
        } else {
            grants.push(i);
        }
    }
    b.push(PhaseKind::Curtail, None, curtail, curtail_delta);
    b.push(PhaseKind::LowerGpuCaps, None, lower_caps, lower_delta);

    // Hosts first (AI is the grant the curtailment made room for), then miners, most valuable first.
    let mut keyed: Vec<(u64, usize)> = grants
        .iter()
        .map(|&i| (descending_key(loads[i].value_usd_per_mwh), i))
        .collect();
    radix_sort(&mut keyed);
    let (mut grants, miners): (Vec<usize>, Vec<usize>) = keyed
        .into_iter()
        .map(|(_, i)| i)
        .partition(|&i| !loads[i].is_miner());
    grants.extend(miners);
    let ramp_w = input.policy.economic.ramp_limit_w_per_min;
    // At most a week (the policy's check): no overflow.
    let step_every =
        Duration::seconds(i64::try_from(input.policy.economic.ramp_step_s).unwrap_or(604_800));
    // 0 = no limit: every grant in one step, and no step to wait after the last plan's.
    let first_at = if ramp_w > 0.0 {
        input
            .memory
            .last_grant_at
            .and_then(|t| t.checked_add_signed(step_every))
            .map_or(input.now, |t| t.max(input.now))
    } else {
        input.now
    };
    let mut step = 0i32;
    let mut at = 0usize;
    while at < grants.len() {
        let mut moves = Vec::new();
        let mut releases = Vec::new();
        let mut delta = 0.0;
        let mut release_delta = 0.0;
        while let Some(&i) = grants.get(at) {
            let (l, d) = (&loads[i], &decisions[i]);
            let inc = l.level_power(d.level) - l.now_w;
            if ramp_w > 0.0 && !moves.is_empty() && delta + inc > ramp_w {
                break;
            }
            delta += inc;
            at += 1;
            match l.unit {
                Unit::Miner(m) => moves.push(b.miner_move(m, l, d)),
                Unit::Host(h) => {
                    let (caps, hand_off) = b.host_moves(h, l, d);
                    // Caps already up: whatever the host adds comes with its release.
                    if caps.is_empty() {
                        delta -= inc;
                        release_delta += inc;
                    }
                    moves.extend(caps);
                    releases.extend(hand_off);
                }
            }
        }
        let due = first_at + step_every * step;
        let not_before = (due > input.now).then_some(due);
        b.push(PhaseKind::Grant, not_before, moves, delta);
        b.push(PhaseKind::ReleaseHosts, None, releases, release_delta);
        step += 1;
    }
    // Only a step due now starts the ramp's next minute: a plan made while a step is still
    // waiting for its minute must not push it back (replanned every tick, it never came).
    let granted = (!grants.is_empty() && first_at <= input.now).then_some(first_at);
    (b.phases, granted)
}
