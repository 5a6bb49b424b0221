//! Model-based test of the reconciler: random interleavings of everything that can happen to an
//! agent, run against the real [`Reconciler`] on a paused tokio clock, with the safety
//! invariants checked after every step.
//!
//! What happens (the [`Op`]s): intents from the controller (new generations, re-sends, stale
//! ones, a generation reused for another target, one no controller could send), lease renewals
//! that name what they renew (or not), the controller's clock moving away from the agent's and
//! back, a controller that (re)connects; polls whose readings arrive at once, late, out of order
//! or never; driver calls that succeed, fail permanently, fail transiently or hang past their
//! deadline, each device's independently (so calls complete out of order); a disk that fails and
//! recovers; agent restarts from the state directory; and the world changing under the agent (an
//! operator putting a miner to sleep, a reboot waking it, a BMC capping a GPU, an AI job landing
//! on the host's node, an operator draining or resuming that node).
//!
//! What must hold, after every step ([`World::violations`] collects each breach):
//! 1. never more than one driver call in flight per device;
//! 2. no raising call dispatched without a valid lease and a trusted clock, and no raising step
//!    (checked on the simulated hardware) without the guard's yes, which itself needs both;
//! 3. the observation decisions rest on is never older than the newest read-back;
//! 4. everything applied was on disk first (the fallback excepted when the disk failed: it is
//!    derived from the expired lease on disk);
//! 5. the fallback never raises;
//! 6. a reused generation never repeats an effect: a re-send or a stale read does not re-apply a
//!    confirmed target, a failed-for-good target is not tried again, a generation reused for
//!    another target is never applied.
//!
//! `PIVOT_MODEL_CASES` sets the number of cases (default 48, about 40 steps each); the long run
//! in docs/ARCHITECTURE.md uses it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pivot_proto::model::{Intent, IntentPhase, MinerState, MinerTarget, Target, WorkloadState};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::testing::{MemStore, TestClock};
use super::*;
use crate::config::Fallback;
use crate::gpu::GpuError;
use crate::miner::MinerError;
use crate::workload::{ManagerKind, WorkloadError};

const DEVICES: [&str; 4] = ["m1", "m2", "g1", "h1"];
const STEPS_W: [u32; 6] = [1750, 2100, 2450, 2800, 3150, 3500];
const SKEW_BOUND_S: i64 = 5;
const DEADLINE: Duration = Duration::from_secs(100);

fn limits(dev: &str) -> Limits {
    match dev {
        // LuxOS-like: profiles as steps.
        "m1" => Limits::Miner {
            can_sleep: true,
            power_target: true,
            power_target_min_w: Some(STEPS_W[0]),
            power_target_max_w: Some(STEPS_W[5]),
            power_target_steps_w: STEPS_W.to_vec(),
            nameplate_power_w: Some(3500.0),
            nameplate_hashrate_ths: Some(200.0),
        },
        // Stock Antminer-like: sleep and wake only.
        "m2" => super::testing::miner_limits(3000.0, 100.0),
        // The host's node in its workload manager.
        "h1" => Limits::Workload,
        _ => Limits::Gpu {
            min_cap_w: 100,
            max_cap_w: 700,
        },
    }
}

fn pacing(dev: &str) -> Duration {
    match dev {
        "m1" => Duration::from_secs(15),
        "m2" => Duration::from_secs(120),
        "h1" => Duration::from_secs(10),
        _ => Duration::from_secs(5),
    }
}

/// The targets a controller may send a device (some refused by its limits).
fn targets(dev: &str) -> Vec<Target> {
    let run = |w| Target::Miner(MinerTarget::Run { power_target_w: w });
    match dev {
        "m1" => vec![
            Target::Miner(MinerTarget::Sleep),
            run(None),
            run(Some(2000)),
            run(Some(3000)),
            run(Some(9000)),
            run(Some(1000)),
        ],
        "m2" => vec![
            Target::Miner(MinerTarget::Sleep),
            run(None),
            run(Some(2000)),
        ],
        "h1" => vec![
            Target::Workload {
                state: WorkloadState::Released,
            },
            Target::Workload {
                state: WorkloadState::Drained,
            },
            Target::Gpu { power_cap_w: 300 },
        ],
        _ => vec![
            Target::Gpu { power_cap_w: 150 },
            Target::Gpu { power_cap_w: 300 },
            Target::Gpu { power_cap_w: 600 },
            Target::Gpu { power_cap_w: 50 },
            Target::Miner(MinerTarget::Sleep),
        ],
    }
}

/// The simulated hardware of one device.
#[derive(Debug, Clone, Copy)]
enum Phys {
    Miner {
        awake: bool,
        /// Put to sleep by someone else and on its way there: the firmware says "ramping".
        going_to_sleep: bool,
        target_w: u32,
        nameplate_w: u32,
    },
    Gpu {
        cap_w: u32,
        bmc_w: Option<u32>,
    },
    /// A node in its workload manager: open to AI jobs or closed, jobs on it, and whether an
    /// operator closed it (pivot must not reopen that).
    Node {
        open: bool,
        jobs: u32,
        closed_by_other: bool,
    },
}

impl Phys {
    fn power_w(&self) -> f64 {
        match *self {
            Phys::Miner {
                going_to_sleep: true,
                ..
            } => 1500.0,
            Phys::Miner {
                awake: true,
                target_w,
                ..
            } => f64::from(target_w),
            Phys::Miner { .. } => 20.0,
            Phys::Gpu { cap_w, bmc_w } => f64::from(cap_w.min(bmc_w.unwrap_or(u32::MAX)).min(650)),
            // An open node is power granted to AI jobs; a closed one draws what its remaining
            // jobs finish with, then its base.
            Phys::Node { open: true, .. } => 5000.0,
            Phys::Node { jobs, .. } => 300.0 + f64::from(jobs.min(4)) * 1000.0,
        }
    }

    fn mining(&self) -> bool {
        matches!(
            self,
            Phys::Miner {
                awake: true,
                going_to_sleep: false,
                ..
            }
        )
    }

    fn observed(&self) -> Observed {
        match *self {
            Phys::Miner {
                awake,
                going_to_sleep,
                target_w,
                nameplate_w,
            } => {
                let (state, ths) = if going_to_sleep {
                    (MinerState::Ramping, 40.0)
                } else if awake {
                    (
                        MinerState::Mining,
                        200.0 * f64::from(target_w) / f64::from(nameplate_w),
                    )
                } else {
                    (MinerState::Sleeping, 0.0)
                };
                Observed::Miner {
                    reachable: true,
                    state,
                    power_w: Some(self.power_w()),
                    hashrate_ths: Some(ths),
                    power_target_w: (nameplate_w == 3500).then_some(target_w),
                }
            }
            Phys::Gpu { cap_w, bmc_w } => Observed::Gpu {
                limit_w: Some(f64::from(cap_w)),
                enforced_cap_w: Some(f64::from(cap_w.min(bmc_w.unwrap_or(u32::MAX)))),
                power_w: Some(self.power_w()),
            },
            Phys::Node { open, jobs, .. } => Observed::Workload {
                schedulable: Some(open),
                drained: Some(!open && jobs == 0),
                ai_jobs_running: Some(jobs),
            },
        }
    }
}

/// Whether `target` could raise power from `seen`, judged independently of the agent's rules:
/// only a miner seen hashing (mining) at or above the target, or a GPU seen at or above the cap,
/// is not raised by it.
fn would_raise(target: &Target, seen: Option<&Observed>) -> bool {
    match (target, seen) {
        (Target::Miner(MinerTarget::Sleep), _) => false,
        (
            Target::Miner(MinerTarget::Run { power_target_w }),
            Some(Observed::Miner {
                reachable: true,
                state: MinerState::Mining,
                power_target_w: now,
                ..
            }),
        ) => match power_target_w {
            None => false,
            Some(w) => {
                let landing = STEPS_W.iter().rev().find(|s| **s <= *w).copied();
                landing.is_none_or(|l| now.is_none_or(|n| l > n))
            }
        },
        (
            Target::Gpu { power_cap_w },
            Some(Observed::Gpu {
                limit_w: Some(l), ..
            }),
        ) => f64::from(*power_cap_w) > *l,
        // Closing a node never raises; opening one does, unless it was seen open.
        (
            Target::Workload {
                state: WorkloadState::Drained,
            },
            _,
        ) => false,
        (
            Target::Workload {
                state: WorkloadState::Released,
            },
            Some(Observed::Workload {
                schedulable: Some(true),
                ..
            }),
        ) => false,
        _ => true,
    }
}

/// How a driver call the model lets finish ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Succeed,
    FailPermanently,
    FailTransiently,
    /// Unreachable before the command was sent: retried sooner than the pacing.
    FailUnsent,
}

/// Everything the fake hardware and the oracle share.
struct World {
    phys: HashMap<String, Phys>,
    pending: HashMap<String, oneshot::Sender<Outcome>>,
    running: HashMap<String, usize>,
    violations: Vec<String>,
    store: Arc<MemStore>,
    clock: TestClock,
    fallback: Fallback,
    /// The longest lease the controller granted each (device, generation).
    granted: HashMap<(String, u64), DateTime<Utc>>,
    /// Whether the agent has seen the controller's clock within the bound since it started.
    trusted: bool,
    /// A target the agent confirmed, untouched since: (generation, target).
    confirmed: HashMap<String, (u64, Target)>,
    /// Targets failed for good: (device, generation, target).
    given_up: Vec<(String, u64, Target)>,
    readback_at: HashMap<String, Instant>,
    /// The last dispatch decided per device: (generation, target, is a fallback).
    dispatched: HashMap<String, (u64, Target, bool)>,
    stats: Arc<Stats>,
}

/// What the runs exercised, so a model that stopped reaching the interesting paths fails.
#[derive(Debug, Default)]
struct Stats {
    calls: AtomicUsize,
    raises_allowed: AtomicUsize,
    raises_refused: AtomicUsize,
    fallback_calls: AtomicUsize,
    failed_for_good: AtomicUsize,
    /// Releases of the host's node the guard allowed.
    node_releases: AtomicUsize,
}

impl World {
    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    /// Invariants 2, 4 and 6 where a dispatch is decided (the reconciler calls this under its
    /// lock, before the call starts).
    fn dispatch(
        &mut self,
        dev: &str,
        generation: u64,
        target: Target,
        raising: bool,
        seen: Option<&Observed>,
    ) {
        // The model's own judgement of "raising", on what the agent had seen.
        let raising = raising || would_raise(&target, seen);
        let now = self.clock.now();
        let record = self.store.saved.lock().unwrap().get(dev).cloned();
        let Some(record) = record else {
            self.violation(format!("{dev}: {target:?} dispatched with nothing on disk"));
            return;
        };
        let fallback = target != record.intent.target;
        // 4: what is applied was on disk first.
        let on_disk = record.intent.generation == generation
            && (record.target() == target
                || (fallback
                    && fallback_target(self.fallback, &limits(dev)) == Some(target)
                    && !record.intent.lease_valid_at(now)));
        if !on_disk {
            self.violation(format!(
                "{dev} gen {generation}: {target:?} dispatched, disk holds {record:?}"
            ));
        }
        // 2: a raising call only under a valid lease and a trusted clock, never a fallback.
        let lease_ok = self
            .granted
            .get(&(dev.to_owned(), generation))
            .is_some_and(|l| *l > now);
        let trusted = self.trusted;
        if raising && (fallback || !lease_ok || !trusted) {
            self.violation(format!(
                "{dev} gen {generation}: raising {target:?} dispatched (fallback {fallback}, \
                 lease ok {lease_ok}, trusted {trusted})"
            ));
        }
        // 6: no effect repeated for a generation.
        if self.confirmed.get(dev) == Some(&(generation, target)) {
            self.violation(format!(
                "{dev} gen {generation}: {target:?} re-applied though confirmed and untouched"
            ));
        }
        if self
            .given_up
            .contains(&(dev.to_owned(), generation, target))
        {
            self.violation(format!(
                "{dev} gen {generation}: {target:?} tried again after failing for good"
            ));
        }
        self.confirmed.remove(dev);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if fallback {
            self.stats.fallback_calls.fetch_add(1, Ordering::Relaxed);
        }
        self.dispatched
            .insert(dev.to_owned(), (generation, target, fallback));
    }

    /// Invariant 2 at a raising step: the guard said yes; so must the oracle.
    fn approved_raise(&mut self, dev: &str, generation: u64, fallback: bool, step: &str) {
        let now = self.clock.now();
        let lease_ok = self
            .granted
            .get(&(dev.to_owned(), generation))
            .is_some_and(|l| *l > now);
        if fallback || !lease_ok || !self.trusted {
            self.violation(format!(
                "{dev} gen {generation}: guard allowed `{step}` (fallback {fallback}, lease ok \
                 {lease_ok}, clock trusted {})",
                self.trusted
            ));
        }
    }
}

/// Counts a call in flight until its future is dropped (finished, abandoned or aborted).
struct InFlightGuard {
    world: Arc<Mutex<World>>,
    dev: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.running.get_mut(&self.dev) {
            *n -= 1;
        }
    }
}

struct ModelActuator {
    dev: String,
    world: Arc<Mutex<World>>,
}

#[async_trait]
impl Actuator for ModelActuator {
    async fn apply(&self, target: &Target, guard: &RaiseGuard) -> Result<Observed, ApplyError> {
        let dev = self.dev.clone();
        let (reply, _in_flight, generation, fallback) = {
            let mut w = self.world.lock().unwrap();
            let n = {
                let n = w.running.entry(dev.clone()).or_default();
                *n += 1;
                *n
            };
            if n > 1 {
                w.violation(format!("{dev}: {n} driver calls in flight at once"));
            }
            let Some((generation, _, fallback)) = w.dispatched.get(&dev).copied() else {
                w.violation(format!("{dev}: {target:?} applied without a dispatch"));
                return Err(ApplyError::Superseded);
            };
            let (tx, rx) = oneshot::channel();
            w.pending.insert(dev.clone(), tx);
            let in_flight = InFlightGuard {
                world: Arc::clone(&self.world),
                dev: dev.clone(),
            };
            (rx, in_flight, generation, fallback)
        };
        let outcome = reply.await.map_err(|_| ApplyError::Superseded)?;
        let mut w = self.world.lock().unwrap();
        let addr = || format!("model/{dev}");
        match outcome {
            Outcome::FailPermanently => {
                return Err(if dev == "g1" {
                    GpuError::NoPermission {
                        gpu: addr(),
                        action: "set the power limit",
                    }
                    .into()
                } else if dev == "h1" {
                    WorkloadError::UnknownNode {
                        manager: ManagerKind::Slurm,
                        node: addr(),
                        detail: "sinfo --json lists no such node".into(),
                    }
                    .into()
                } else {
                    MinerError::Unsupported {
                        addr: addr(),
                        dialect: pivot_proto::model::MinerDialect::Luxos,
                        what: "this".into(),
                    }
                    .into()
                });
            }
            Outcome::FailUnsent if dev != "h1" => {
                return Err(MinerError::ConnectTimeout {
                    addr: addr(),
                    port: 4028,
                    after: Duration::from_secs(3),
                }
                .into());
            }
            Outcome::FailTransiently | Outcome::FailUnsent => {
                return Err(if dev == "h1" {
                    WorkloadError::NotConfirmed {
                        manager: ManagerKind::Slurm,
                        node: addr(),
                        wanted: "schedulable",
                        waited_s: 60.0,
                        state: "DOWN".into(),
                    }
                    .into()
                } else {
                    MinerError::Timeout {
                        addr: addr(),
                        during: "control".into(),
                        after: Duration::from_secs(3),
                    }
                    .into()
                });
            }
            Outcome::Succeed => {}
        }
        let Some(mut p) = w.phys.get(&dev).copied() else {
            return Err(ApplyError::Superseded);
        };
        let before_w = p.power_w();
        let mut approved = false;
        // The steps the real actuators take, each raising one asking the guard first.
        let mut ask = |w: &mut World, step: &str| -> Result<(), ApplyError> {
            if let Err(e) = guard.check(step) {
                w.stats.raises_refused.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
            w.stats.raises_allowed.fetch_add(1, Ordering::Relaxed);
            if dev == "h1" {
                w.stats.node_releases.fetch_add(1, Ordering::Relaxed);
            }
            approved = true;
            w.approved_raise(&dev, generation, fallback, step);
            Ok(())
        };
        match (*target, &mut p) {
            (
                Target::Miner(MinerTarget::Sleep),
                Phys::Miner {
                    awake,
                    going_to_sleep,
                    ..
                },
            ) => {
                *awake = false;
                *going_to_sleep = false;
            }
            (Target::Miner(MinerTarget::Run { power_target_w }), phys @ Phys::Miner { .. }) => {
                let mining = phys.mining();
                let Phys::Miner {
                    awake,
                    going_to_sleep,
                    target_w,
                    ..
                } = phys
                else {
                    unreachable!()
                };
                if let Some(want) = power_target_w {
                    let landing = STEPS_W.iter().rev().find(|s| **s <= want).copied();
                    let Some(landing) = landing else {
                        return Err(MinerError::OutOfRange {
                            addr: addr(),
                            requested: want,
                            min: STEPS_W[0],
                            max: STEPS_W[5],
                        }
                        .into());
                    };
                    if mining && landing > *target_w {
                        ask(&mut w, "raise the power target")?;
                    }
                    // Where the firmware keeps it while asleep, the target goes first.
                    *target_w = landing;
                }
                if !mining {
                    ask(&mut w, "wake the miner")?;
                    *awake = true;
                    *going_to_sleep = false;
                }
            }
            (Target::Gpu { power_cap_w }, Phys::Gpu { cap_w, .. }) => {
                if power_cap_w > *cap_w {
                    ask(&mut w, "raise the GPU's power cap")?;
                }
                *cap_w = power_cap_w;
            }
            (
                Target::Workload {
                    state: WorkloadState::Released,
                },
                Phys::Node {
                    open,
                    closed_by_other,
                    ..
                },
            ) => {
                if *closed_by_other {
                    return Err(WorkloadError::ClosedByOther {
                        manager: ManagerKind::Slurm,
                        node: addr(),
                        by: "DRAIN: maintenance".into(),
                    }
                    .into());
                }
                if !*open {
                    ask(&mut w, "release the node to AI jobs")?;
                    *open = true;
                }
            }
            (
                Target::Workload {
                    state: WorkloadState::Drained,
                },
                Phys::Node { open, jobs, .. },
            ) => {
                // Closed, and after the grace the jobs left are requeued.
                *open = false;
                *jobs = 0;
            }
            (other, _) => {
                return Err(ApplyError::WrongTarget {
                    device: "model",
                    target: other,
                });
            }
        }
        let after_w = p.power_w();
        if after_w > before_w + 1.0 && (!approved || fallback) {
            w.violation(format!(
                "{dev} gen {generation}: {target:?} raised {before_w} → {after_w} W without leave \
                 (fallback {fallback})"
            ));
        }
        w.phys.insert(dev.clone(), p);
        w.readback_at.insert(dev, Instant::now());
        Ok(p.observed())
    }
}

/// Which generation an intent carries.
#[derive(Debug, Clone, Copy)]
enum Gen {
    Next,
    Resend,
    Stale,
    /// The generation held, for another target.
    Reuse,
    /// One no controller could send.
    Huge,
}

/// Which intents a renewal names.
#[derive(Debug, Clone, Copy)]
enum Refs {
    Held,
    WrongGeneration,
    Nothing,
    Everything,
}

#[derive(Debug, Clone)]
enum Op {
    Send {
        dev: usize,
        generation: Gen,
        target: usize,
        lease_s: i64,
    },
    Renew {
        refs: Refs,
        until_s: i64,
    },
    /// The controller's clock, relative to the agent's, for the messages that follow.
    Skew(i64),
    /// A (re)connected controller's welcome.
    Welcome,
    Poll {
        dev: usize,
        now: bool,
    },
    Deliver(usize),
    Lose(usize),
    Complete {
        dev: usize,
        outcome: Outcome,
    },
    Advance(u64),
    Disk {
        fails: bool,
    },
    Restart,
    External {
        dev: usize,
        kind: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0..DEVICES.len();
    prop_oneof![
        6 => (dev.clone(), prop_oneof![
                4 => Just(Gen::Next), 2 => Just(Gen::Resend), 1 => Just(Gen::Stale),
                1 => Just(Gen::Reuse), 1 => Just(Gen::Huge)],
              0..6usize, prop_oneof![3 => 10..120i64, 2 => 1..10i64, 1 => -30..1i64])
            .prop_map(|(dev, generation, target, lease_s)| Op::Send { dev, generation, target, lease_s }),
        2 => (prop_oneof![Just(Refs::Held), Just(Refs::WrongGeneration), Just(Refs::Nothing), Just(Refs::Everything)], -10..200i64)
            .prop_map(|(refs, until_s)| Op::Renew { refs, until_s }),
        1 => prop_oneof![Just(0i64), Just(2), Just(30), Just(-30)].prop_map(Op::Skew),
        1 => Just(Op::Welcome),
        5 => (dev.clone(), any::<bool>()).prop_map(|(dev, now)| Op::Poll { dev, now }),
        2 => (0..8usize).prop_map(Op::Deliver),
        1 => (0..8usize).prop_map(Op::Lose),
        6 => (dev.clone(), prop_oneof![
                6 => Just(Outcome::Succeed), 1 => Just(Outcome::FailPermanently),
                2 => Just(Outcome::FailTransiently), 1 => Just(Outcome::FailUnsent)])
            .prop_map(|(dev, outcome)| Op::Complete { dev, outcome }),
        4 => prop_oneof![1..5u64, 5..40u64, Just(DEADLINE.as_secs() + 1)].prop_map(Op::Advance),
        1 => any::<bool>().prop_map(|fails| Op::Disk { fails }),
        1 => Just(Op::Restart),
        2 => (dev, 0..3u8).prop_map(|(dev, kind)| Op::External { dev, kind }),
    ]
}

/// The controller's side of the model and the agent under test.
struct Harness {
    world: Arc<Mutex<World>>,
    store: Arc<MemStore>,
    clock: TestClock,
    fallback: Fallback,
    r: Arc<Reconciler>,
    skew_s: i64,
    /// The highest generation sent per device, and the target first sent with each.
    sent: HashMap<String, u64>,
    first_target: HashMap<(String, u64), Target>,
    queued: Vec<(String, Observation)>,
    seen_attempts: Vec<u64>,
    /// Each device's (generation, target, phase) at the last check: a confirmation counts when
    /// it is new.
    last_phase: HashMap<String, (u64, Target, IntentPhase)>,
}

impl Harness {
    fn new(fallback: Fallback, stats: Arc<Stats>) -> Self {
        let clock = TestClock::new();
        let store = Arc::new(MemStore::default());
        let phys = HashMap::from([
            (
                "m1".to_owned(),
                Phys::Miner {
                    awake: false,
                    going_to_sleep: false,
                    target_w: 2100,
                    nameplate_w: 3500,
                },
            ),
            (
                "m2".to_owned(),
                Phys::Miner {
                    awake: true,
                    going_to_sleep: false,
                    target_w: 3000,
                    nameplate_w: 3000,
                },
            ),
            (
                "g1".to_owned(),
                Phys::Gpu {
                    cap_w: 150,
                    bmc_w: None,
                },
            ),
            (
                "h1".to_owned(),
                Phys::Node {
                    open: false,
                    jobs: 0,
                    closed_by_other: false,
                },
            ),
        ]);
        let world = Arc::new(Mutex::new(World {
            phys,
            pending: HashMap::new(),
            running: HashMap::new(),
            violations: Vec::new(),
            store: Arc::clone(&store),
            clock: clock.clone(),
            fallback,
            granted: HashMap::new(),
            trusted: false,
            confirmed: HashMap::new(),
            given_up: Vec::new(),
            readback_at: HashMap::new(),
            dispatched: HashMap::new(),
            stats,
        }));
        let r = Self::start(&world, &store, &clock, fallback);
        Self {
            world,
            store,
            clock,
            fallback,
            r,
            skew_s: 0,
            sent: HashMap::new(),
            first_target: HashMap::new(),
            queued: Vec::new(),
            seen_attempts: Vec::new(),
            last_phase: HashMap::new(),
        }
    }

    fn start(
        world: &Arc<Mutex<World>>,
        store: &Arc<MemStore>,
        clock: &TestClock,
        fallback: Fallback,
    ) -> Arc<Reconciler> {
        let devices = DEVICES
            .iter()
            .map(|d| {
                (
                    (*d).to_owned(),
                    Device {
                        limits: limits(d),
                        actuator: Arc::new(ModelActuator {
                            dev: (*d).to_owned(),
                            world: Arc::clone(world),
                        }),
                        pacing: pacing(d),
                        deadline: DEADLINE,
                        // m1 stands for a Braiins-like miner: its lost replies retried soon.
                        repeatable: *d == "m1",
                    },
                )
            })
            .collect();
        let settings = Settings {
            confirm_timeout: Duration::from_secs(60),
            fallback,
            max_clock_skew: Duration::from_secs(SKEW_BOUND_S as u64),
        };
        let r = Reconciler::new(devices, Arc::clone(store) as _, settings, clock.wall())
            .unwrap_or_else(|e| panic!("restart from the store: {e}"));
        let w = Arc::clone(world);
        r.on_dispatch(Box::new(move |dev, generation, target, raising, seen| {
            w.lock()
                .unwrap()
                .dispatch(dev, generation, target, raising, seen);
        }));
        r
    }

    fn controller_time(&mut self) -> DateTime<Utc> {
        let mut w = self.world.lock().unwrap();
        w.trusted = self.skew_s.abs() <= SKEW_BOUND_S;
        self.clock.now() + chrono::Duration::seconds(self.skew_s)
    }

    async fn run(&mut self, op: &Op) {
        match *op {
            Op::Send {
                dev,
                generation,
                target,
                lease_s,
            } => self.send(DEVICES[dev], generation, target, lease_s),
            Op::Renew { refs, until_s } => {
                let held: Vec<(String, u64)> = self
                    .r
                    .held_intents()
                    .into_iter()
                    .map(|i| (i.device_id, i.generation))
                    .collect();
                let intents = match refs {
                    Refs::Held => held.into_iter().take(1).collect(),
                    Refs::Everything => held,
                    Refs::WrongGeneration => held.into_iter().map(|(d, g)| (d, g + 1)).collect(),
                    Refs::Nothing => Vec::new(),
                };
                // The controller's lease, on its clock; the agent compares it with its own.
                let until = self.clock.now() + chrono::Duration::seconds(until_s);
                {
                    let mut w = self.world.lock().unwrap();
                    for (d, g) in &intents {
                        let l = w.granted.entry((d.clone(), *g)).or_insert(until);
                        *l = (*l).max(until);
                    }
                }
                let controller_time = Some(self.controller_time());
                self.r.renew(&Renewal {
                    until,
                    intents,
                    controller_time,
                });
            }
            Op::Skew(s) => self.skew_s = s,
            Op::Welcome => {
                let t = self.controller_time();
                self.r.note_controller_time(t);
            }
            Op::Poll { dev, now } => {
                let dev = DEVICES[dev];
                let observed = self.world.lock().unwrap().phys[dev].observed();
                let o = Observation {
                    taken_at: Instant::now(),
                    observed,
                };
                if now {
                    self.observe(dev, o);
                } else {
                    self.queued.push((dev.to_owned(), o));
                }
            }
            Op::Deliver(i) => {
                if !self.queued.is_empty() {
                    let (dev, o) = self.queued.remove(i % self.queued.len());
                    self.observe(&dev, o);
                }
            }
            Op::Lose(i) => {
                if !self.queued.is_empty() {
                    let n = self.queued.len();
                    self.queued.remove(i % n);
                }
            }
            Op::Complete { dev, outcome } => {
                let tx = self.world.lock().unwrap().pending.remove(DEVICES[dev]);
                if let Some(tx) = tx {
                    let _ = tx.send(outcome);
                }
            }
            Op::Advance(s) => {
                // Time passes for the agent's wall clock and its timers alike; a device put to
                // sleep by someone finishes going there.
                self.clock.advance_s(i64::try_from(s).unwrap_or(i64::MAX));
                tokio::time::advance(Duration::from_secs(s)).await;
                {
                    let mut w = self.world.lock().unwrap();
                    for p in w.phys.values_mut() {
                        if let Phys::Miner {
                            awake,
                            going_to_sleep,
                            ..
                        } = p
                            && *going_to_sleep
                        {
                            *awake = false;
                            *going_to_sleep = false;
                        }
                    }
                }
                settle().await;
                self.r.reconcile();
            }
            Op::Disk { fails } => self.store.fail.store(fails, Ordering::SeqCst),
            Op::Restart => {
                self.r.shutdown();
                settle().await;
                {
                    let mut w = self.world.lock().unwrap();
                    w.pending.clear();
                    w.trusted = false;
                    w.confirmed.clear();
                    w.readback_at.clear();
                    // A failure for good survives a restart when it was saved (a disk that
                    // failed at that moment loses it: the agent tries once more, and says so).
                    let saved = self.store.saved.lock().unwrap().clone();
                    w.given_up.retain(|(d, g, t)| {
                        saved.get(d).is_some_and(|r| {
                            r.intent.generation == *g && r.given_up.iter().any(|u| u.target == *t)
                        })
                    });
                }
                self.last_phase.clear();
                self.r = Self::start(&self.world, &self.store, &self.clock, self.fallback);
            }
            Op::External { dev, kind } => {
                let dev = DEVICES[dev];
                let mut w = self.world.lock().unwrap();
                w.confirmed.remove(dev);
                if let Some(p) = w.phys.get_mut(dev) {
                    match (p, kind) {
                        (
                            Phys::Miner {
                                awake,
                                going_to_sleep,
                                ..
                            },
                            0,
                        ) => {
                            // An operator (or thermal protection) puts it to sleep.
                            *going_to_sleep = *awake;
                        }
                        (
                            Phys::Miner {
                                awake,
                                going_to_sleep,
                                ..
                            },
                            _,
                        ) => {
                            // A reboot loses a sleep.
                            *awake = true;
                            *going_to_sleep = false;
                        }
                        (Phys::Gpu { bmc_w, .. }, 0) => *bmc_w = Some(250),
                        (Phys::Gpu { bmc_w, .. }, 1) => *bmc_w = None,
                        (Phys::Gpu { cap_w, .. }, _) => *cap_w = 700,
                        // An AI job lands on an open node.
                        (Phys::Node { open, jobs, .. }, 0) => {
                            if *open {
                                *jobs = jobs.saturating_add(1);
                            }
                        }
                        // An operator drains the node for maintenance...
                        (
                            Phys::Node {
                                open,
                                closed_by_other,
                                ..
                            },
                            1,
                        ) => {
                            *open = false;
                            *closed_by_other = true;
                        }
                        // ...and resumes it.
                        (
                            Phys::Node {
                                open,
                                closed_by_other,
                                ..
                            },
                            _,
                        ) => {
                            *open = true;
                            *closed_by_other = false;
                        }
                    }
                }
            }
        }
        settle().await;
        self.check();
    }

    /// Hands the agent a reading. One newer than what it holds that shows the device off its
    /// target is news the agent may act on (taken before a change it has not seen yet, it still
    /// says the device drifted since the reading the agent confirmed on): a re-apply after it
    /// repeats nothing.
    fn observe(&mut self, dev: &str, o: Observation) {
        if let Some(held) = self.r.snapshot().remove(dev) {
            let newer = held.observed_at.is_none_or(|at| o.taken_at > at);
            if let (true, Some((record, _, _))) = (newer, &held.held)
                && !satisfied(
                    &record.target(),
                    &o.observed,
                    &limits(dev),
                    record.before.as_ref(),
                )
            {
                self.world.lock().unwrap().confirmed.remove(dev);
            }
        }
        self.r.observe(dev, o);
    }

    fn send(&mut self, dev: &str, generation: Gen, target: usize, lease_s: i64) {
        let options = targets(dev);
        let mut target = options[target % options.len()];
        let held = self
            .r
            .held_intents()
            .into_iter()
            .find(|i| i.device_id == dev);
        let max = self.sent.get(dev).copied().unwrap_or(0);
        let generation = match generation {
            Gen::Next => max + 1,
            Gen::Resend | Gen::Reuse => match &held {
                Some(h) => {
                    let first = self
                        .first_target
                        .get(&(dev.to_owned(), h.generation))
                        .copied()
                        .unwrap_or(h.target);
                    target = match generation {
                        Gen::Resend => first,
                        _ => options
                            .iter()
                            .copied()
                            .find(|t| *t != first)
                            .unwrap_or(first),
                    };
                    h.generation
                }
                None => max + 1,
            },
            Gen::Stale => max.saturating_sub(1).max(1),
            Gen::Huge => u64::MAX,
        };
        let lease = self.clock.now() + chrono::Duration::seconds(lease_s);
        if generation != u64::MAX {
            // Sent, taken or not: the controller's next generation is above it.
            self.sent.insert(dev.to_owned(), max.max(generation));
            // The lease granted to this generation's target, before the agent can act on it.
            let key = (dev.to_owned(), generation);
            if self.first_target.get(&key).is_none_or(|f| *f == target) {
                let mut w = self.world.lock().unwrap();
                let l = w.granted.entry(key).or_insert(lease);
                *l = (*l).max(lease);
            }
        }
        let intent = Intent {
            device_id: dev.to_owned(),
            generation,
            lease_expires_at: lease,
            target,
            reason: "model".into(),
            phase: 0,
            plan_id: String::new(),
        };
        let controller_time = Some(self.controller_time());
        self.r.receive(&[intent.to_proto()], controller_time);
        // What the agent took is what the oracle counts: a generation's target is the one first
        // accepted, its lease the longest accepted.
        let taken = self
            .r
            .held_intents()
            .into_iter()
            .any(|i| i.device_id == dev && i.generation == generation && i.target == target);
        if taken {
            self.first_target
                .entry((dev.to_owned(), generation))
                .or_insert(target);
        }
    }

    /// The invariants the reconciler's own state must show after every step.
    fn check(&mut self) {
        let snapshot = self.r.snapshot();
        let mut w = self.world.lock().unwrap();
        for (dev, s) in &snapshot {
            // 3: the observation held is never older than the newest read-back.
            if let (Some(rb), Some(at)) = (w.readback_at.get(dev), s.observed_at)
                && at < *rb
            {
                w.violation(format!(
                    "{dev}: holds an observation older than its read-back"
                ));
            }
            if w.readback_at.contains_key(dev) && s.observed_at.is_none() {
                w.violation(format!("{dev}: read back but holds no observation"));
            }
            // 6: a generation reused for another target is never applied.
            if let Some((attempt, generation, target, _)) = s.in_flight
                && !self.seen_attempts.contains(&attempt)
            {
                self.seen_attempts.push(attempt);
                let first = self.first_target.get(&(dev.clone(), generation));
                let fallback = fallback_target(self.fallback, &limits(dev));
                if first.is_some_and(|f| *f != target) && Some(target) != fallback {
                    w.violation(format!(
                        "{dev} gen {generation}: {target:?} dispatched, first sent as {first:?}"
                    ));
                }
            }
            // What was confirmed and what failed for good, for invariant 6 at the next call.
            if let Some((record, phase, retrying)) = &s.held {
                let key = (record.intent.generation, record.target());
                let now_phase = (key.0, key.1, *phase);
                let fresh = self.last_phase.insert(dev.clone(), now_phase) != Some(now_phase);
                // A confirmation counts as "nothing to do" only when the hardware really is in
                // the state (it may have changed since the reading the agent confirmed on).
                let really = w.phys.get(dev).is_some_and(|p| {
                    satisfied(&key.1, &p.observed(), &limits(dev), record.before.as_ref())
                });
                match phase {
                    IntentPhase::Confirmed if fresh && really && s.in_flight.is_none() => {
                        w.confirmed.insert(dev.clone(), key);
                    }
                    IntentPhase::Failed if !retrying => {
                        let entry = (dev.clone(), key.0, key.1);
                        if !w.given_up.contains(&entry) {
                            w.stats.failed_for_good.fetch_add(1, Ordering::Relaxed);
                            w.given_up.push(entry);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn settle() {
    for _ in 0..12 {
        tokio::task::yield_now().await;
    }
}

fn run_case(
    fallback: Fallback,
    ops: &[Op],
    steps: &AtomicUsize,
    stats: &Arc<Stats>,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    rt.block_on(async {
        let mut h = Harness::new(fallback, Arc::clone(stats));
        for (i, op) in ops.iter().enumerate() {
            h.run(op).await;
            steps.fetch_add(1, Ordering::Relaxed);
            let violations = std::mem::take(&mut h.world.lock().unwrap().violations);
            prop_assert!(
                violations.is_empty(),
                "after step {i} ({op:?}): {violations:#?}"
            );
        }
        h.r.shutdown();
        Ok(())
    })
}

#[test]
fn the_reconciler_keeps_its_invariants_under_any_interleaving() {
    let cases = std::env::var("PIVOT_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        max_shrink_iters: 4000,
        ..ProptestConfig::default()
    });
    let steps = AtomicUsize::new(0);
    let stats = Arc::new(Stats::default());
    let started = std::time::Instant::now();
    let result = runner.run(
        &(any::<bool>(), proptest::collection::vec(op(), 1..80)),
        |(curtail, ops)| {
            let fallback = if curtail {
                Fallback::Curtail
            } else {
                Fallback::Hold
            };
            run_case(fallback, &ops, &steps, &stats)
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "model: {cases} cases, {} steps, no invariant broken ({:.1} s); {stats:?}",
        steps.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    // The interesting paths were reached: raises allowed and refused, fallbacks, final failures.
    for (what, n) in [
        ("driver calls", &stats.calls),
        ("raising steps allowed", &stats.raises_allowed),
        ("raising steps refused", &stats.raises_refused),
        ("fallback calls", &stats.fallback_calls),
        ("targets failed for good", &stats.failed_for_good),
        ("node releases allowed", &stats.node_releases),
    ] {
        assert!(
            n.load(Ordering::Relaxed) > 0,
            "the model never reached: {what}"
        );
    }
}

/// The model catches a breach: a reconciler that raised without a lease would be reported.
#[test]
fn the_oracle_flags_a_raise_without_a_lease() {
    let clock = TestClock::new();
    let mut w = World {
        phys: HashMap::new(),
        pending: HashMap::new(),
        running: HashMap::new(),
        violations: Vec::new(),
        store: Arc::new(MemStore::default()),
        clock: clock.clone(),
        fallback: Fallback::Hold,
        granted: HashMap::from([(
            ("m1".to_owned(), 1),
            clock.now() - chrono::Duration::seconds(1),
        )]),
        trusted: true,
        confirmed: HashMap::new(),
        given_up: Vec::new(),
        readback_at: HashMap::new(),
        dispatched: HashMap::new(),
        stats: Arc::default(),
    };
    w.approved_raise("m1", 1, false, "wake the miner");
    w.approved_raise("m1", 1, true, "wake the miner");
    assert_eq!(w.violations.len(), 2, "{:?}", w.violations);
}
