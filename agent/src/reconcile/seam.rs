//! The seam between the reconciler and the devices it drives: what a device shows
//! ([`Observed`], stamped with when it was taken), what it accepts ([`Limits`]), and how it is
//! driven ([`Actuator`], with typed errors and a [`RaiseGuard`] consulted before every step that
//! could raise its power).
//!
//! Miners, GPUs and the host's workload manager (Slurm, Kubernetes, exec hooks) plug in here: the
//! last as a `Limits::Workload` device whose actuator drains or releases the node and reads it
//! back, with its own variant of [`ApplyError`] saying which failures are permanent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pivot_proto::model::{MinerState, Target};
use tokio::time::Instant;

use crate::gpu::GpuError;
use crate::miner::MinerError;
use crate::workload::WorkloadError;

/// What the agent saw of a device, in the terms intents are checked against.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Miner {
        reachable: bool,
        state: MinerState,
        power_w: Option<f64>,
        hashrate_ths: Option<f64>,
        power_target_w: Option<u32>,
    },
    Gpu {
        /// The management limit: the cap pivot sets.
        limit_w: Option<f64>,
        /// The limit the GPU enforces: the lowest of all limits set on it (a BMC may hold it
        /// below the management limit).
        enforced_cap_w: Option<f64>,
        power_w: Option<f64>,
    },
    /// A host's node in its workload manager; every field `None` when the manager could not
    /// be read (the device counts as unreachable until it answers).
    Workload {
        /// Whether new AI jobs can land on the node.
        schedulable: Option<bool>,
        /// DRAINED as intents.proto defines it: closed to new jobs, no AI job left on it.
        drained: Option<bool>,
        /// AI jobs (or pods) still running on it.
        ai_jobs_running: Option<u32>,
    },
}

impl Observed {
    /// The measured draw, when there is one.
    pub fn power_w(&self) -> Option<f64> {
        match self {
            Observed::Miner { power_w, .. } | Observed::Gpu { power_w, .. } => *power_w,
            Observed::Workload { .. } => None,
        }
    }

    /// Whether the device could not be reached (nothing to drive until it answers).
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            Observed::Miner {
                reachable: false,
                ..
            } | Observed::Workload {
                schedulable: None,
                ..
            }
        )
    }
}

/// An observation and the instant it was taken: the start of the poll that read it, or the end
/// of the driver call whose read-back it is. An older observation never replaces a newer one.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub taken_at: Instant,
    pub observed: Observed,
}

/// What a device accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Limits {
    Miner {
        can_sleep: bool,
        power_target: bool,
        power_target_min_w: Option<u32>,
        power_target_max_w: Option<u32>,
        /// The targets the firmware can express, ascending (LuxOS profiles); empty: any watt
        /// value in the range.
        power_target_steps_w: Vec<u32>,
        nameplate_power_w: Option<f64>,
        nameplate_hashrate_ths: Option<f64>,
    },
    Gpu {
        min_cap_w: u32,
        max_cap_w: u32,
    },
    /// A host handed to AI jobs through a workload manager.
    Workload,
}

/// Why a driver call failed, typed to the edge where it is reported: the type decides whether
/// trying the same generation again could help.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Miner(#[from] MinerError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    RaiseRefused(#[from] RaiseRefused),
    #[error("the driver call did not finish within {after:?} and was abandoned")]
    Timeout { after: Duration },
    #[error("abandoned for a newer intent")]
    Superseded,
    #[error("a {device} cannot take {target:?}")]
    WrongTarget {
        device: &'static str,
        target: Target,
    },
}

impl ApplyError {
    /// Whether the same target can never succeed on this device: the firmware cannot do it, the
    /// value is out of what it accepts, pivot lacks the permission or the state it needs. Such a
    /// generation is failed once (FAILED, not retrying); anything else is retried after pacing.
    pub fn is_permanent(&self) -> bool {
        match self {
            ApplyError::Miner(e) => matches!(
                e.inner(),
                MinerError::Unsupported { .. }
                    | MinerError::OutOfRange { .. }
                    | MinerError::WakeModeUnknown { .. }
                    | MinerError::ModeMemory { .. }
                    // cgminer codes: 14 invalid command (the firmware has no such command),
                    // 45 access denied (its write API is disabled).
                    | MinerError::Status { code: 14 | 45, .. }
            ),
            ApplyError::Gpu(e) => matches!(
                e,
                GpuError::CapOutOfRange { .. }
                    | GpuError::NoPermission { .. }
                    | GpuError::InitNoPermission { .. }
                    | GpuError::CapStore { .. }
            ),
            // Wrong node name, no permission, a node someone else closed, a job that cannot be
            // requeued: the manager's own verdict.
            ApplyError::Workload(e) => !e.is_transient(),
            ApplyError::WrongTarget { .. } => true,
            ApplyError::RaiseRefused(_) | ApplyError::Timeout { .. } | ApplyError::Superseded => {
                false
            }
        }
    }

    /// Whether the call failed before anything that changes the device was sent (see
    /// [`MinerError::sent_nothing`]): trying again need not wait out the device's pacing, which
    /// is there for a command the firmware may still be carrying out.
    pub fn sent_nothing(&self) -> bool {
        matches!(self, ApplyError::Miner(e) if e.sent_nothing())
    }

    /// Whether a retry of this failure may come sooner than the pacing of a device that is
    /// `repeatable` or not. Any call that sent nothing may; on a device whose commands can be
    /// repeated harmlessly ([`Device::repeatable`]) so may one whose reply did not come (a
    /// timeout, a reset, no reply: [`MinerError::is_unreachable`], of which sending nothing is
    /// a case): if the firmware carried the first one out, the second changes nothing.
    pub fn retry_soon(&self, repeatable: bool) -> bool {
        match self {
            ApplyError::Miner(e) if repeatable => e.is_unreachable(),
            _ => self.sent_nothing(),
        }
    }
}

/// A raising step refused: the lease it needed is gone, or the agent cannot trust its clock.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("refused to {step}: {why}")]
pub struct RaiseRefused {
    pub step: String,
    pub why: String,
}

/// Wall-clock time, for leases (absolute times on the controller's clock).
pub type WallClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// How far the agent's clock is from the controller's, as last measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClockCheck {
    /// No controller time seen yet (a restarted agent without its controller): a lease cannot be
    /// checked, so nothing is raised.
    Unknown,
    /// `skew_s` = controller − agent, within the bound.
    Within { skew_s: f64 },
    /// Beyond the bound: nothing is raised until a later measurement is within it.
    Beyond { skew_s: f64, bound_s: f64 },
}

impl ClockCheck {
    pub fn measure(skew_s: f64, bound_s: f64) -> Self {
        if skew_s.is_finite() && skew_s.abs() <= bound_s {
            ClockCheck::Within { skew_s }
        } else {
            ClockCheck::Beyond { skew_s, bound_s }
        }
    }

    /// Why raising is refused, or `None` when the clock is trusted.
    pub fn distrust(&self) -> Option<String> {
        match self {
            ClockCheck::Within { .. } => None,
            ClockCheck::Unknown => Some(
                "the controller's clock has not been seen yet, so the lease cannot be checked"
                    .into(),
            ),
            ClockCheck::Beyond { skew_s, bound_s } => Some(format!(
                "this host's clock is {skew_s:+.1} s off the controller's (bound {bound_s} s), so \
                 the lease cannot be checked; fix the host's time (NTP)"
            )),
        }
    }
}

/// The clock check, shared by the reconciler and the guards of calls in flight.
#[derive(Debug)]
pub struct ClockTrust(Mutex<ClockCheck>);

impl Default for ClockTrust {
    fn default() -> Self {
        Self(Mutex::new(ClockCheck::Unknown))
    }
}

impl ClockTrust {
    pub fn get(&self) -> ClockCheck {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a measurement; returns the previous state.
    pub fn set(&self, check: ClockCheck) -> ClockCheck {
        std::mem::replace(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            check,
        )
    }
}

/// What a step that could raise a device's power must ask first. An actuator calls
/// [`RaiseGuard::check`] right before each such step (a wake, a higher target or cap) as its own
/// fresh read shows it, not only once at dispatch: a multi-step action can outlive its lease.
#[derive(Clone)]
pub struct RaiseGuard {
    /// The lease of the intent being applied; `None` for a fallback, which may only lower.
    lease: Option<DateTime<Utc>>,
    clock: WallClock,
    trust: Arc<ClockTrust>,
}

impl std::fmt::Debug for RaiseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaiseGuard")
            .field("lease", &self.lease)
            .field("trust", &self.trust.get())
            .finish()
    }
}

impl RaiseGuard {
    pub fn new(lease: Option<DateTime<Utc>>, clock: WallClock, trust: Arc<ClockTrust>) -> Self {
        Self {
            lease,
            clock,
            trust,
        }
    }

    /// A guard that refuses every raising step (for lowering-only work).
    pub fn lowering_only() -> Self {
        Self::new(None, Arc::new(Utc::now), Arc::new(ClockTrust::default()))
    }

    /// Allows `step` only under a valid lease and a trusted clock.
    pub fn check(&self, step: &str) -> Result<(), RaiseRefused> {
        let refuse = |why: String| {
            Err(RaiseRefused {
                step: step.to_owned(),
                why,
            })
        };
        let Some(lease) = self.lease else {
            return refuse("this is a fallback, which may only lower power".into());
        };
        if let Some(why) = self.trust.get().distrust() {
            return refuse(why);
        }
        let now = (self.clock)();
        if now >= lease {
            return refuse(format!("the lease expired at {lease}"));
        }
        Ok(())
    }
}

/// Drives one device to a target and reads it back.
#[async_trait]
pub trait Actuator: Send + Sync {
    /// Applies `target` and returns what the device shows afterwards (its own read-back).
    /// Before every step that could raise the device's power, judged on a fresh read rather
    /// than on what the reconciler last saw, it calls `guard.check` and stops if refused.
    async fn apply(&self, target: &Target, guard: &RaiseGuard) -> Result<Observed, ApplyError>;

    /// As [`Actuator::apply`], told why in words (the intent's plan and reason): a workload
    /// manager shows it where the site's operators look (Slurm's drain reason, the hook's
    /// `PIVOT_REASON`). Devices with nowhere to show it ignore it.
    async fn apply_because(
        &self,
        target: &Target,
        guard: &RaiseGuard,
        _why: &str,
    ) -> Result<Observed, ApplyError> {
        self.apply(target, guard).await
    }
}

/// One device the reconciler can drive.
#[derive(Clone)]
pub struct Device {
    pub limits: Limits,
    pub actuator: Arc<dyn Actuator>,
    /// Least time between two control attempts (an Antminer CGI change takes a minute).
    pub pacing: Duration,
    /// Longest a driver call may take before it is abandoned (counted a transient failure).
    pub deadline: Duration,
    /// Whether sending the same command again is harmless when the first was carried out and
    /// only its reply was lost (a Braiins OS or Bitaxe pause or resume: each sets a state).
    /// Such a device's unanswered calls are retried within seconds, backing off up to the
    /// pacing, like calls that sent nothing; a stock Antminer's CGI change restarts cgminer
    /// and is not repeatable.
    pub repeatable: bool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("limits", &self.limits)
            .field("pacing", &self.pacing)
            .field("deadline", &self.deadline)
            .field("repeatable", &self.repeatable)
            .finish()
    }
}
