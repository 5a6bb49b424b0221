//! The decision: given the intent held for a device, what the device shows, and the time, what
//! to do next. [`next_step`] is pure; the reconciler's loop executes the [`Step`] it returns.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_proto::model::{IntentPhase, Target};
use tokio::time::Instant;

use super::held::Held;
use super::rules::{fallback_target, raises_power, satisfied};
use super::seam::{ClockCheck, Limits, Observation};
use crate::config::Fallback;

/// The device as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    pub limits: &'a Limits,
    pub pacing: Duration,
    /// A driver call on this device has not finished yet.
    pub in_flight: bool,
    /// When the last driver call for this same generation and target ended (or started, while
    /// it runs); `None` when the last call was for something else.
    pub last_attempt: Option<Instant>,
}

/// The time, and the settings the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    /// The agent's wall clock, which leases are compared with.
    pub wall: DateTime<Utc>,
    pub clock: ClockCheck,
    pub fallback: Fallback,
    pub confirm_timeout: Duration,
}

/// Why a raising target waits.
#[derive(Debug, Clone, PartialEq)]
pub enum HoldReason {
    LeaseExpired(DateTime<Utc>),
    ClockUntrusted(String),
    /// A fallback's target would raise power from what is known (nothing is known yet).
    FallbackWouldRaise,
}

impl HoldReason {
    pub fn detail(&self) -> String {
        match self {
            HoldReason::LeaseExpired(at) => {
                format!("lease expired at {at}; holding: power is not raised without a valid lease")
            }
            HoldReason::ClockUntrusted(why) => format!("holding: not raising power: {why}"),
            HoldReason::FallbackWouldRaise => {
                "holding: the fallback would raise power from what is known of the device".into()
            }
        }
    }
}

/// What to do next for one device.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing now: a call is in flight, the device is paced or unreachable, the intent is
    /// final, or it waits for its effect.
    Wait,
    /// The lease ended: the fallback takes over (recorded on disk, then acted on).
    Fallback(Target),
    /// The effect shows.
    Confirm { already_there: bool },
    /// Applied, but the effect did not show within the confirmation timeout.
    NotConfirmed,
    /// The target would raise power and may not now.
    Hold(HoldReason),
    /// Drive the device to `target`.
    Dispatch { target: Target, raising: bool },
}

/// Decides the next step for `held` on a device that shows `observation`.
pub fn next_step(
    held: &Held,
    observation: Option<&Observation>,
    device: &DeviceView<'_>,
    now: &Now,
) -> Step {
    let record = &held.record;
    if record.fallback.is_none()
        && !record.intent.lease_valid_at(now.wall)
        && let Some(t) = fallback_target(now.fallback, device.limits)
        && t != record.intent.target
    {
        return Step::Fallback(t);
    }
    if device.in_flight {
        return Step::Wait;
    }
    let target = held.target();
    if record.given_up_on_target().is_some() {
        return Step::Wait; // Failed for good: final for this generation.
    }
    let observed = observation.map(|o| &o.observed);
    let ok = observed.is_some_and(|o| satisfied(&target, o, device.limits, record.before.as_ref()));
    match held.phase {
        IntentPhase::Applied if ok => {
            return Step::Confirm {
                already_there: false,
            };
        }
        IntentPhase::Applied => {
            let overdue = held
                .applied_at
                .is_none_or(|t| now.instant.saturating_duration_since(t) > now.confirm_timeout);
            return if overdue {
                Step::NotConfirmed
            } else {
                Step::Wait
            };
        }
        IntentPhase::Confirmed if ok => return Step::Wait,
        _ if ok => {
            return Step::Confirm {
                already_there: true,
            };
        }
        _ => {}
    }
    if observed.is_some_and(|o| o.unreachable()) {
        return Step::Wait; // Nothing to drive; tried again once it answers.
    }
    let raising = raises_power(&target, observed);
    if raising {
        if record.fallback.is_some() {
            return Step::Hold(HoldReason::FallbackWouldRaise);
        }
        if !record.intent.lease_valid_at(now.wall) {
            return Step::Hold(HoldReason::LeaseExpired(record.intent.lease_expires_at));
        }
        if let Some(why) = now.clock.distrust() {
            return Step::Hold(HoldReason::ClockUntrusted(why));
        }
    }
    // Pacing holds for every new try of the same target, a re-apply after drift included: a
    // reading that makes a device look drifted can be wrong, and a second Antminer CGI change
    // restarts cgminer again.
    if device
        .last_attempt
        .is_some_and(|t| now.instant.saturating_duration_since(t) < device.pacing)
    {
        return Step::Wait;
    }
    Step::Dispatch { target, raising }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::held::HeldRecord;
    use crate::reconcile::seam::Observed;
    use pivot_proto::model::{Intent, MinerState, MinerTarget};

    const RUN: Target = Target::Miner(MinerTarget::Run {
        power_target_w: None,
    });
    const SLEEP: Target = Target::Miner(MinerTarget::Sleep);

    fn limits() -> Limits {
        crate::reconcile::testing::miner_limits(3000.0, 100.0)
    }

    fn held(target: Target, lease_s: i64, wall: DateTime<Utc>) -> Held {
        Held::new(
            HeldRecord::new(Intent {
                device_id: "m".into(),
                generation: 1,
                lease_expires_at: wall + chrono::Duration::seconds(lease_s),
                target,
                reason: String::new(),
                phase: 0,
                plan_id: String::new(),
            }),
            "accepted",
        )
    }

    fn seen(at: Instant, state: MinerState) -> Observation {
        let mining = state == MinerState::Mining;
        Observation {
            taken_at: at,
            observed: Observed::Miner {
                reachable: true,
                state,
                power_w: Some(if mining { 3000.0 } else { 20.0 }),
                hashrate_ths: Some(if mining { 100.0 } else { 0.0 }),
                power_target_w: None,
            },
        }
    }

    fn now(instant: Instant, wall: DateTime<Utc>, fallback: Fallback) -> Now {
        Now {
            instant,
            wall,
            clock: ClockCheck::Within { skew_s: 0.0 },
            fallback,
            confirm_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_raise_waits_for_lease_and_clock_and_a_lowering_never_does() {
        let (t0, wall) = (Instant::now(), Utc::now());
        let l = limits();
        let dev = DeviceView {
            limits: &l,
            pacing: Duration::from_secs(10),
            in_flight: false,
            last_attempt: None,
        };
        let asleep = seen(t0, MinerState::Sleeping);
        let mut n = now(t0, wall, Fallback::Hold);
        assert!(matches!(
            next_step(&held(RUN, -1, wall), Some(&asleep), &dev, &n),
            Step::Hold(HoldReason::LeaseExpired(_))
        ));
        n.clock = ClockCheck::Beyond {
            skew_s: 30.0,
            bound_s: 5.0,
        };
        assert!(matches!(
            next_step(&held(RUN, 60, wall), Some(&asleep), &dev, &n),
            Step::Hold(HoldReason::ClockUntrusted(_))
        ));
        let mining = seen(t0, MinerState::Mining);
        assert_eq!(
            next_step(&held(SLEEP, -1, wall), Some(&mining), &dev, &n),
            Step::Dispatch {
                target: SLEEP,
                raising: false
            }
        );
    }

    #[test]
    fn drift_is_re_applied_only_after_pacing() {
        let (t0, wall) = (Instant::now(), Utc::now());
        let l = limits();
        let mut h = held(SLEEP, 300, wall);
        h.phase = IntentPhase::Confirmed;
        let mining = seen(t0, MinerState::Mining);
        let mut dev = DeviceView {
            limits: &l,
            pacing: Duration::from_secs(120),
            in_flight: false,
            last_attempt: Some(t0),
        };
        let n = now(t0 + Duration::from_secs(5), wall, Fallback::Hold);
        assert_eq!(next_step(&h, Some(&mining), &dev, &n), Step::Wait);
        dev.last_attempt = Some(t0 - Duration::from_secs(200));
        assert!(matches!(
            next_step(&h, Some(&mining), &dev, &n),
            Step::Dispatch { .. }
        ));
        dev.in_flight = true;
        assert_eq!(next_step(&h, Some(&mining), &dev, &n), Step::Wait);
    }

    #[test]
    fn an_expired_lease_brings_the_fallback_once_and_it_never_raises() {
        let (t0, wall) = (Instant::now(), Utc::now());
        let l = limits();
        let dev = DeviceView {
            limits: &l,
            pacing: Duration::from_secs(10),
            in_flight: true,
            last_attempt: None,
        };
        let h = held(RUN, -1, wall);
        let n = now(t0, wall, Fallback::Curtail);
        // Even with a call in flight: the fallback is recorded first, acted on when it ends.
        assert_eq!(next_step(&h, None, &dev, &n), Step::Fallback(SLEEP));
        let mut h = h;
        h.record.fallback = Some(SLEEP);
        assert_eq!(next_step(&h, None, &dev, &n), Step::Wait);
    }

    #[test]
    fn a_permanent_failure_is_final_and_a_transient_one_is_retried() {
        let (t0, wall) = (Instant::now(), Utc::now());
        let l = limits();
        let dev = DeviceView {
            limits: &l,
            pacing: Duration::from_secs(10),
            in_flight: false,
            last_attempt: Some(t0),
        };
        let mut h = held(SLEEP, 300, wall);
        h.phase = IntentPhase::Failed;
        h.record.give_up(SLEEP, "unsupported".into());
        let n = now(t0 + Duration::from_secs(60), wall, Fallback::Hold);
        let mining = seen(t0, MinerState::Mining);
        assert_eq!(next_step(&h, Some(&mining), &dev, &n), Step::Wait);
        h.record.given_up.clear();
        h.retrying = true;
        assert!(matches!(
            next_step(&h, Some(&mining), &dev, &n),
            Step::Dispatch { .. }
        ));
    }
}
