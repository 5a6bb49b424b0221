//! Desired state → driver actions → read-back → report.
//!
//! The reconciler holds one intent per device (persisted in the state directory), applies it
//! through the device's [`Actuator`], checks the physical effect on later readings, and reports
//! each generation as pending → applied → confirmed, or failed/rejected with the reason. It
//! re-applies an intent when a device drifts from it (a miner that rebooted out of sleep), paced
//! per device so slow firmware is not hammered. The safety rules live in the pure functions at
//! the top of this file:
//!
//! - an intent that would raise power is applied only while its lease is valid;
//! - when a lease expires the configured fallback applies, and a fallback only holds or lowers;
//! - lowering (sleep, a lower cap) is always allowed, lease or not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pivot_proto::model::{self, Intent, IntentPhase, MinerState, MinerTarget, Target};
use pivot_proto::v1;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::Fallback;
use crate::state::StateDir;

/// What the agent last saw of a device, in the terms intents are checked against.
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
        /// The limit the GPU enforces.
        enforced_cap_w: Option<f64>,
        power_w: Option<f64>,
    },
}

/// What a device accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Limits {
    Miner {
        can_sleep: bool,
        power_target: bool,
        power_target_min_w: Option<u32>,
        power_target_max_w: Option<u32>,
        nameplate_power_w: Option<f64>,
    },
    Gpu {
        min_cap_w: u32,
        max_cap_w: u32,
    },
}

/// Drives one device to a target and reads it back.
#[async_trait]
pub trait Actuator: Send + Sync {
    /// Applies `target`; returns what the device shows afterwards (its own read-back).
    async fn apply(&self, target: &Target) -> Result<Observed, String>;
}

/// Why an intent is refused before anything is touched.
pub fn check(intent: &Intent, limits: &Limits) -> Result<(), String> {
    match (&intent.target, limits) {
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
            Limits::Miner {
                power_target,
                power_target_min_w,
                power_target_max_w,
                ..
            },
        ) => {
            if !power_target {
                return Err("this miner's firmware takes no power target in watts".into());
            }
            if power_target_min_w.is_some_and(|lo| *w < lo)
                || power_target_max_w.is_some_and(|hi| *w > hi)
            {
                return Err(format!(
                    "power target {w} W is outside the miner's range {}-{} W",
                    power_target_min_w.map_or("?".into(), |v| v.to_string()),
                    power_target_max_w.map_or("?".into(), |v| v.to_string())
                ));
            }
            Ok(())
        }
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
        (Target::Workload { .. }, _) => {
            Err("no workload manager is configured on this host".into())
        }
        (Target::Miner(_), Limits::Gpu { .. }) => {
            Err("device is a GPU; a miner target does not apply".into())
        }
        (Target::Gpu { .. }, Limits::Miner { .. }) => {
            Err("device is a miner; a GPU target does not apply".into())
        }
    }
}

/// Whether moving to `target` could raise the device's power from what was `observed`.
/// Unknown counts as raising: the agent must prove a change is safe, not assume it.
pub fn raises_power(target: &Target, observed: Option<&Observed>) -> bool {
    match (target, observed) {
        (Target::Miner(MinerTarget::Sleep), _) => false,
        // Waking a miner that is not hashing raises power; a target on a hashing one raises it
        // when it is above the current target (or the current one is unknown).
        (
            Target::Miner(MinerTarget::Run { power_target_w }),
            Some(Observed::Miner {
                reachable: true,
                state: MinerState::Mining | MinerState::Ramping,
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
                enforced_cap_w: Some(cur),
                ..
            }),
        ) => f64::from(*power_cap_w) > *cur + 0.5,
        (Target::Workload { state }, _) => *state == model::WorkloadState::Released,
        _ => true,
    }
}

/// Whether the device shows the target's physical effect. `power_before` is what the device
/// drew when the agent last acted on it, when measured: a sleep is confirmed only once the draw
/// fell well below it (or below nameplate).
pub fn satisfied(
    target: &Target,
    observed: &Observed,
    limits: &Limits,
    power_before: Option<f64>,
) -> bool {
    match (target, observed) {
        (
            Target::Miner(t),
            Observed::Miner {
                reachable: true,
                state,
                power_w,
                hashrate_ths,
                power_target_w,
            },
        ) => {
            match t {
                MinerTarget::Sleep => {
                    let nameplate = match limits {
                        Limits::Miner {
                            nameplate_power_w, ..
                        } => *nameplate_power_w,
                        Limits::Gpu { .. } => None,
                    };
                    // Power actually fell: asleep, not hashing, and (where measured) drawing at
                    // most a sixth of nameplate or of what it drew before (control board and
                    // fans). A firmware that says "sleeping" while still drawing is not asleep.
                    let reference = nameplate.or(power_before.filter(|p| *p > 0.0));
                    *state == MinerState::Sleeping
                        && hashrate_ths.is_none_or(|h| h < 0.5)
                        && match (power_w, reference) {
                            (Some(p), Some(r)) => *p <= r / 6.0,
                            _ => true,
                        }
                }
                MinerTarget::Run {
                    power_target_w: want,
                } => {
                    *state == MinerState::Mining
                        && hashrate_ths.is_some_and(|h| h > 0.0)
                        && match want {
                            None => true,
                            Some(w) => {
                                *power_target_w == Some(*w)
                                    && power_w.is_none_or(|p| p <= f64::from(*w) * 1.05 + 50.0)
                            }
                        }
                }
            }
        }
        (
            Target::Gpu { power_cap_w },
            Observed::Gpu {
                enforced_cap_w: Some(cap),
                power_w,
            },
        ) => {
            let want = f64::from(*power_cap_w);
            (*cap - want).abs() < 1.0 && power_w.is_none_or(|p| p <= want * 1.05)
        }
        _ => false,
    }
}

/// The target the fallback puts a device in when its lease expires, if it changes anything.
pub fn fallback_target(fallback: Fallback, limits: &Limits) -> Option<Target> {
    match (fallback, limits) {
        (Fallback::Hold, _) => None,
        (
            Fallback::Curtail,
            Limits::Miner {
                can_sleep: true, ..
            },
        ) => Some(Target::Miner(MinerTarget::Sleep)),
        (Fallback::Curtail, Limits::Miner { .. }) => None,
        (Fallback::Curtail, Limits::Gpu { min_cap_w, .. }) => Some(Target::Gpu {
            power_cap_w: *min_cap_w,
        }),
    }
}

/// One device the reconciler can drive.
#[derive(Clone)]
pub struct Device {
    pub limits: Limits,
    pub actuator: Arc<dyn Actuator>,
    /// Least time between two control attempts (an Antminer CGI change takes a minute).
    pub pacing: Duration,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("limits", &self.limits)
            .field("pacing", &self.pacing)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct Held {
    intent: Intent,
    phase: IntentPhase,
    detail: String,
    /// When the last apply finished, for the confirmation deadline.
    applied_at: Option<Instant>,
    last_attempt: Option<Instant>,
    in_flight: bool,
    /// Set once the lease expired and the fallback took over.
    fallback: Option<Target>,
    /// The draw measured when the agent last acted on the device.
    power_before: Option<f64>,
}

impl Held {
    /// Moves to `phase` with `detail`; returns the status to report.
    fn transition(
        &mut self,
        id: &str,
        phase: IntentPhase,
        detail: String,
        power: Option<f64>,
    ) -> v1::IntentStatus {
        self.phase = phase;
        self.detail = detail;
        status(
            id,
            self.intent.generation,
            phase,
            self.detail.clone(),
            power,
        )
    }

    /// The target in force: the fallback's once the lease expired, else the intent's.
    fn target(&self) -> Target {
        self.fallback.unwrap_or(self.intent.target)
    }
}

/// Intent statuses waiting for the controller link.
#[derive(Debug, Default)]
pub struct Reports {
    queue: Mutex<Vec<v1::IntentStatus>>,
    notify: Notify,
}

/// At most this many reports wait for a link that is down; past that, a new status replaces the
/// queued one of the same device and generation (the controller needs the latest, not each step).
const MAX_QUEUED_REPORTS: usize = 100_000;

impl Reports {
    fn push(&self, s: v1::IntentStatus) {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() < MAX_QUEUED_REPORTS {
            q.push(s);
        } else if let Some(old) = q
            .iter_mut()
            .find(|o| o.device_id == s.device_id && o.generation == s.generation)
        {
            // The link has been down long: keep only the latest status of each generation.
            *old = s;
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Takes every queued report.
    pub fn drain(&self) -> Vec<v1::IntentStatus> {
        std::mem::take(
            &mut *self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Waits until a report is queued.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}

/// Reconciler settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub confirm_timeout: Duration,
    pub fallback: Fallback,
}

struct Inner {
    devices: BTreeMap<String, Device>,
    held: BTreeMap<String, Held>,
    observed: BTreeMap<String, Observed>,
    /// Saved intents of devices not (yet) in the inventory: a curtailed miner that is offline
    /// when the agent starts gets its intent back when it is found.
    orphans: BTreeMap<String, Intent>,
}

fn restored(intent: Intent) -> Held {
    Held {
        intent,
        phase: IntentPhase::Pending,
        detail: "restored from the state directory".into(),
        applied_at: None,
        last_attempt: None,
        in_flight: false,
        fallback: None,
        power_before: None,
    }
}

/// Wall-clock time, for leases (they are absolute times set by the controller).
pub type WallClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Holds intents and drives devices to them.
pub struct Reconciler {
    clock: WallClock,
    inner: Mutex<Inner>,
    state: StateDir,
    settings: Settings,
    pub reports: Reports,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler").finish_non_exhaustive()
    }
}

fn status(
    device_id: &str,
    generation: u64,
    phase: IntentPhase,
    detail: String,
    power: Option<f64>,
) -> v1::IntentStatus {
    v1::IntentStatus {
        device_id: device_id.to_owned(),
        generation,
        phase: phase.to_proto() as i32,
        detail,
        observed_power_w: power,
        at: Some(model::timestamp_to_proto(Utc::now())),
        ..Default::default()
    }
}

fn observed_power(o: Option<&Observed>) -> Option<f64> {
    match o {
        Some(Observed::Miner { power_w, .. } | Observed::Gpu { power_w, .. }) => *power_w,
        None => None,
    }
}

impl Reconciler {
    /// A reconciler for `devices`, holding the intents saved in `state` (for devices it still has).
    pub fn new(
        devices: BTreeMap<String, Device>,
        state: StateDir,
        settings: Settings,
    ) -> Result<Arc<Self>, crate::state::StateError> {
        Self::with_clock(devices, state, settings, Arc::new(Utc::now))
    }

    /// As [`Reconciler::new`], with the wall clock leases are checked against.
    pub fn with_clock(
        devices: BTreeMap<String, Device>,
        state: StateDir,
        settings: Settings,
        clock: WallClock,
    ) -> Result<Arc<Self>, crate::state::StateError> {
        let saved = state.load_intents()?;
        let mut held = BTreeMap::new();
        let mut orphans = BTreeMap::new();
        for (id, intent) in saved {
            if devices.contains_key(&id) {
                held.insert(id, restored(intent));
            } else {
                warn!(device = %id, "Held intent for a device not in the inventory; kept until it is found");
                orphans.insert(id, intent);
            }
        }
        Ok(Arc::new(Self {
            clock,
            inner: Mutex::new(Inner {
                devices,
                held,
                observed: BTreeMap::new(),
                orphans,
            }),
            state,
            settings,
            reports: Reports::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn persist(&self, inner: &Inner) {
        if let Err(e) = self.state.save_intents(
            inner
                .held
                .values()
                .map(|h| &h.intent)
                .chain(inner.orphans.values()),
        ) {
            warn!(error = %e, "Could not save held intents; they hold until the agent restarts");
        }
    }

    /// Adds a device found after start; it takes back an intent saved for it, if any.
    pub fn add_device(self: &Arc<Self>, id: String, device: Device) {
        let mut inner = self.lock();
        if let Some(intent) = inner.orphans.remove(&id) {
            info!(device = %id, generation = intent.generation, "Found device takes back its saved intent");
            inner.held.insert(id.clone(), restored(intent));
        }
        inner.devices.insert(id, device);
        drop(inner);
        self.reconcile();
    }

    /// The intents held, for the hello of a new session.
    pub fn held_intents(&self) -> Vec<Intent> {
        self.lock()
            .held
            .values()
            .map(|h| h.intent.clone())
            .collect()
    }

    /// Current status of every held intent (re-sent after a reconnect).
    pub fn statuses(&self) -> Vec<v1::IntentStatus> {
        let inner = self.lock();
        inner
            .held
            .iter()
            .map(|(id, h)| {
                status(
                    id,
                    h.intent.generation,
                    h.phase,
                    h.detail.clone(),
                    observed_power(inner.observed.get(id)),
                )
            })
            .collect()
    }

    /// Takes intents from the controller. Each is accepted (and applied in the background) or
    /// rejected with its reason; a re-sent generation is answered with its current status.
    pub fn receive(self: &Arc<Self>, intents: &[v1::Intent]) {
        let now = (self.clock)();
        let mut inner = self.lock();
        let mut changed = false;
        for (i, m) in intents.iter().enumerate() {
            let intent = match Intent::from_proto(m, &format!("intents[{i}]")) {
                Ok(intent) => intent,
                Err(e) => {
                    warn!(device = %m.device_id, error = %e, "Rejected malformed intent");
                    self.reports.push(status(
                        &m.device_id,
                        m.generation,
                        IntentPhase::Rejected,
                        e.to_string(),
                        None,
                    ));
                    continue;
                }
            };
            let id = intent.device_id.clone();
            let reject = |reason: String| {
                warn!(device = %id, generation = intent.generation, %reason, "Rejected intent; nothing changed");
                status(&id, intent.generation, IntentPhase::Rejected, reason, None)
            };
            let Some(device) = inner.devices.get(&id) else {
                self.reports
                    .push(reject(format!("no device `{id}` on this host")));
                continue;
            };
            if let Err(reason) = check(&intent, &device.limits) {
                self.reports.push(reject(reason));
                continue;
            }
            if let Some(h) = inner.held.get(&id) {
                if intent.generation < h.intent.generation {
                    self.reports.push(reject(format!(
                        "stale generation {} (holding {})",
                        intent.generation, h.intent.generation
                    )));
                    continue;
                }
                if intent.generation == h.intent.generation {
                    if intent.target != h.intent.target {
                        self.reports.push(reject(format!(
                            "generation {} was already used for another target",
                            intent.generation
                        )));
                    } else {
                        // A re-sent intent: harmless, answered with where it is. A newer lease
                        // on it is still taken.
                        let h = inner.held.get_mut(&id).map(|h| {
                            if intent.lease_expires_at > h.intent.lease_expires_at {
                                h.intent.lease_expires_at = intent.lease_expires_at;
                                changed = true;
                            }
                            status(&id, h.intent.generation, h.phase, h.detail.clone(), None)
                        });
                        if let Some(s) = h {
                            self.reports.push(s);
                        }
                    }
                    continue;
                }
            }
            if !intent.lease_valid_at(now) && raises_power(&intent.target, inner.observed.get(&id))
            {
                self.reports.push(reject(format!(
                    "lease expired at {} and the intent would raise power",
                    intent.lease_expires_at
                )));
                continue;
            }
            info!(device = %id, generation = intent.generation, target = ?intent.target, reason = %intent.reason, "Intent accepted");
            self.reports.push(status(
                &id,
                intent.generation,
                IntentPhase::Pending,
                "accepted".into(),
                None,
            ));
            inner.held.insert(
                id,
                Held {
                    intent,
                    phase: IntentPhase::Pending,
                    detail: "accepted".into(),
                    applied_at: None,
                    last_attempt: None,
                    in_flight: false,
                    fallback: None,
                    power_before: None,
                },
            );
            changed = true;
        }
        if changed {
            self.persist(&inner);
        }
        drop(inner);
        self.reconcile();
    }

    /// Extends the lease of every held intent to `until` (never shortens).
    pub fn renew_lease(self: &Arc<Self>, until: DateTime<Utc>) {
        let mut inner = self.lock();
        for h in inner.held.values_mut() {
            if until > h.intent.lease_expires_at {
                h.intent.lease_expires_at = until;
                // A renewed lease ends the fallback: the intent is in force again.
                h.fallback = None;
            }
        }
        self.persist(&inner);
        drop(inner);
        self.reconcile();
    }

    /// Records what a device shows now and acts on it.
    pub fn observe(self: &Arc<Self>, device_id: &str, observed: Observed) {
        self.lock().observed.insert(device_id.to_owned(), observed);
        self.reconcile();
    }

    /// Records many observations, then acts once.
    pub fn observe_all(
        self: &Arc<Self>,
        observations: impl IntoIterator<Item = (String, Observed)>,
    ) {
        let mut inner = self.lock();
        for (id, o) in observations {
            inner.observed.insert(id, o);
        }
        drop(inner);
        self.reconcile();
    }

    /// Compares every held intent with what its device shows and starts the actions needed:
    /// confirmations, re-applies after drift, retries after failure, the fallback after a lease
    /// expired. Cheap when nothing is to be done; call it after each poll and on a timer.
    pub fn reconcile(self: &Arc<Self>) {
        let now_wall = (self.clock)();
        let now = Instant::now();
        let mut to_apply = Vec::new();
        let mut inner = self.lock();
        let Inner {
            devices,
            held,
            observed,
            ..
        } = &mut *inner;
        for (id, h) in held.iter_mut() {
            let Some(device) = devices.get(id) else {
                continue;
            };
            let obs = observed.get(id);
            if h.fallback.is_none()
                && !h.intent.lease_valid_at(now_wall)
                && let Some(t) = fallback_target(self.settings.fallback, &device.limits)
            {
                warn!(device = %id, lease = %h.intent.lease_expires_at, fallback = ?t, "Lease expired: applying fallback");
                h.fallback = Some(t);
                h.phase = IntentPhase::Pending;
                h.detail = format!(
                    "lease expired at {}: fallback {:?}",
                    h.intent.lease_expires_at, self.settings.fallback
                );
                h.last_attempt = None;
            }
            if h.in_flight {
                continue;
            }
            let target = h.target();
            let ok = obs.is_some_and(|o| satisfied(&target, o, &device.limits, h.power_before));
            match h.phase {
                IntentPhase::Applied if ok => {
                    self.reports.push(h.transition(
                        id,
                        IntentPhase::Confirmed,
                        "physical effect verified".into(),
                        observed_power(obs),
                    ));
                    continue;
                }
                IntentPhase::Applied => {
                    if h.applied_at
                        .is_some_and(|t| now.duration_since(t) > self.settings.confirm_timeout)
                    {
                        let detail = format!(
                            "applied but not confirmed within {:?}: device shows {obs:?}",
                            self.settings.confirm_timeout
                        );
                        warn!(device = %id, %detail, "Intent not confirmed");
                        self.reports.push(h.transition(
                            id,
                            IntentPhase::Failed,
                            detail,
                            observed_power(obs),
                        ));
                    }
                    continue;
                }
                IntentPhase::Confirmed if ok => continue,
                IntentPhase::Rejected => continue,
                _ => {}
            }
            if ok {
                // Already there (restored after a restart, or the device got there itself).
                self.reports.push(h.transition(
                    id,
                    IntentPhase::Confirmed,
                    "device already in the intended state".into(),
                    observed_power(obs),
                ));
                continue;
            }
            // The device is not (or no longer) in its intended state: act, if allowed and paced.
            let lease_ok = h.intent.lease_valid_at(now_wall) && h.fallback.is_none();
            if raises_power(&target, obs) && !lease_ok {
                continue; // Hold: never raise power without a valid lease.
            }
            if obs.is_some_and(|o| {
                matches!(
                    o,
                    Observed::Miner {
                        reachable: false,
                        ..
                    }
                )
            }) {
                continue; // Nothing to drive; it is retried once it answers again.
            }
            if h.phase == IntentPhase::Confirmed {
                // It was there and drifted (a reboot lost a sleep): back within one poll. Pacing
                // is for attempts that have not yet taken, not for a device that changed since.
                info!(device = %id, generation = h.intent.generation, "Device drifted from its intent; re-applying");
            } else if h
                .last_attempt
                .is_some_and(|t| now.duration_since(t) < device.pacing)
            {
                continue;
            }
            h.in_flight = true;
            h.last_attempt = Some(now);
            h.power_before = observed_power(obs).or(h.power_before);
            to_apply.push((
                id.clone(),
                h.intent.generation,
                target,
                device.actuator.clone(),
            ));
        }
        drop(inner);
        for (id, generation, target, actuator) in to_apply {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let result = actuator.apply(&target).await;
                this.finish(&id, generation, target, result);
            });
        }
    }

    fn finish(
        self: &Arc<Self>,
        id: &str,
        generation: u64,
        target: Target,
        result: Result<Observed, String>,
    ) {
        let mut inner = self.lock();
        let Inner {
            devices,
            held,
            observed,
            ..
        } = &mut *inner;
        let Some(device) = devices.get(id) else {
            return;
        };
        let Some(h) = held.get_mut(id) else { return };
        h.in_flight = false;
        if h.intent.generation != generation || h.target() != target {
            // Superseded while in flight; the next pass acts on the new intent.
            drop(inner);
            self.reconcile();
            return;
        }
        match result {
            Ok(o) => {
                let power = observed_power(Some(&o));
                h.applied_at = Some(Instant::now());
                self.reports.push(h.transition(
                    id,
                    IntentPhase::Applied,
                    "applied and read back".into(),
                    power,
                ));
                if satisfied(&target, &o, &device.limits, h.power_before) {
                    self.reports.push(h.transition(
                        id,
                        IntentPhase::Confirmed,
                        "physical effect verified".into(),
                        power,
                    ));
                }
                observed.insert(id.to_owned(), o);
            }
            Err(e) => {
                warn!(device = %id, generation, error = %e, "Applying intent failed; will retry");
                self.reports
                    .push(h.transition(id, IntentPhase::Failed, e, None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A miner whose state is a variable: sleeping or mining at 3000 W.
    struct FakeMiner {
        asleep: Mutex<bool>,
        calls: AtomicUsize,
    }

    impl FakeMiner {
        fn observed(&self) -> Observed {
            let asleep = *self.asleep.lock().unwrap();
            Observed::Miner {
                reachable: true,
                state: if asleep {
                    MinerState::Sleeping
                } else {
                    MinerState::Mining
                },
                power_w: Some(if asleep { 20.0 } else { 3000.0 }),
                hashrate_ths: Some(if asleep { 0.0 } else { 100.0 }),
                power_target_w: None,
            }
        }
    }

    #[async_trait]
    impl Actuator for FakeMiner {
        async fn apply(&self, target: &Target) -> Result<Observed, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            *self.asleep.lock().unwrap() = matches!(target, Target::Miner(MinerTarget::Sleep));
            Ok(self.observed())
        }
    }

    fn limits() -> Limits {
        Limits::Miner {
            can_sleep: true,
            power_target: false,
            power_target_min_w: None,
            power_target_max_w: None,
            nameplate_power_w: Some(3000.0),
        }
    }

    /// Seconds added to the wall clock the reconciler sees.
    static SKEW_S: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

    fn skewed_clock() -> WallClock {
        Arc::new(|| Utc::now() + chrono::Duration::seconds(SKEW_S.load(Ordering::SeqCst)))
    }

    fn setup(fallback: Fallback) -> (tempfile::TempDir, Arc<FakeMiner>, Arc<Reconciler>) {
        setup_with_clock(fallback, Arc::new(Utc::now))
    }

    fn setup_with_clock(
        fallback: Fallback,
        clock: WallClock,
    ) -> (tempfile::TempDir, Arc<FakeMiner>, Arc<Reconciler>) {
        let dir = tempfile::tempdir().unwrap();
        let miner = Arc::new(FakeMiner {
            asleep: Mutex::new(false),
            calls: AtomicUsize::new(0),
        });
        let r = reconciler(
            &dir,
            limits(),
            miner.clone(),
            Duration::from_secs(10),
            fallback,
            clock,
        );
        (dir, miner, r)
    }

    /// A reconciler in `dir` for one miner "m1" driven by `actuator`.
    fn reconciler(
        dir: &tempfile::TempDir,
        limits: Limits,
        actuator: Arc<dyn Actuator>,
        pacing: Duration,
        fallback: Fallback,
        clock: WallClock,
    ) -> Arc<Reconciler> {
        let devices = BTreeMap::from([(
            "m1".to_owned(),
            Device {
                limits,
                actuator,
                pacing,
            },
        )]);
        let settings = Settings {
            confirm_timeout: Duration::from_secs(60),
            fallback,
        };
        Reconciler::with_clock(
            devices,
            StateDir::open(dir.path()).unwrap(),
            settings,
            clock,
        )
        .unwrap()
    }

    fn intent(generation: u64, target: Target, lease_s: i64) -> v1::Intent {
        Intent {
            device_id: "m1".into(),
            generation,
            lease_expires_at: Utc::now() + chrono::Duration::seconds(lease_s),
            target,
            reason: "test".into(),
            phase: 0,
            plan_id: String::new(),
        }
        .to_proto()
    }

    fn phases(r: &Reconciler) -> Vec<(u64, IntentPhase)> {
        r.reports
            .drain()
            .into_iter()
            .map(|s| (s.generation, IntentPhase::from_proto(s.phase, "p").unwrap()))
            .collect()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    const SLEEP: Target = Target::Miner(MinerTarget::Sleep);
    const RUN: Target = Target::Miner(MinerTarget::Run {
        power_target_w: None,
    });

    #[tokio::test(start_paused = true)]
    async fn sleep_is_applied_confirmed_and_resends_are_harmless() {
        let (_d, miner, r) = setup(Fallback::Hold);
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        assert_eq!(
            phases(&r),
            [
                (1, IntentPhase::Pending),
                (1, IntentPhase::Applied),
                (1, IntentPhase::Confirmed)
            ]
        );
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        assert_eq!(phases(&r), [(1, IntentPhase::Confirmed)]);
        assert_eq!(miner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebooted_miner_is_curtailed_again_at_the_next_poll() {
        let (_d, miner, r) = setup(Fallback::Hold);
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        *miner.asleep.lock().unwrap() = false; // reboot lost the sleep
        r.observe("m1", miner.observed());
        settle().await;
        assert_eq!(miner.calls.load(Ordering::SeqCst), 2);
        assert!(*miner.asleep.lock().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_is_confirmed_only_once_the_draw_falls() {
        /// Says "sleeping" at once, but the draw falls only later.
        struct SlowToFall;
        #[async_trait]
        impl Actuator for SlowToFall {
            async fn apply(&self, _: &Target) -> Result<Observed, String> {
                Ok(asleep_drawing(2900.0))
            }
        }
        fn asleep_drawing(w: f64) -> Observed {
            Observed::Miner {
                reachable: true,
                state: MinerState::Sleeping,
                power_w: Some(w),
                hashrate_ths: Some(0.0),
                power_target_w: None,
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let unknown_nameplate = Limits::Miner {
            can_sleep: true,
            power_target: false,
            power_target_min_w: None,
            power_target_max_w: None,
            nameplate_power_w: None,
        };
        let r = reconciler(
            &dir,
            unknown_nameplate,
            Arc::new(SlowToFall),
            Duration::from_secs(10),
            Fallback::Hold,
            Arc::new(Utc::now),
        );
        r.observe(
            "m1",
            Observed::Miner {
                reachable: true,
                state: MinerState::Mining,
                power_w: Some(3000.0),
                hashrate_ths: Some(100.0),
                power_target_w: None,
            },
        );
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        assert_eq!(
            phases(&r),
            [(1, IntentPhase::Pending), (1, IntentPhase::Applied)]
        );
        r.observe("m1", asleep_drawing(30.0));
        settle().await;
        assert_eq!(phases(&r), [(1, IntentPhase::Confirmed)]);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_are_retried_only_after_pacing() {
        struct Broken(AtomicUsize);
        #[async_trait]
        impl Actuator for Broken {
            async fn apply(&self, _: &Target) -> Result<Observed, String> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Err("CGI answered 500".into())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let broken = Arc::new(Broken(AtomicUsize::new(0)));
        let r = reconciler(
            &dir,
            limits(),
            broken.clone(),
            Duration::from_secs(120),
            Fallback::Hold,
            Arc::new(Utc::now),
        );
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        assert_eq!(phases(&r).last(), Some(&(1, IntentPhase::Failed)));
        r.reconcile();
        settle().await;
        assert_eq!(broken.0.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(121)).await;
        r.reconcile();
        settle().await;
        assert_eq!(broken.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_wake_without_a_valid_lease() {
        let (_d, miner, r) = setup(Fallback::Hold);
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        phases(&r);
        r.receive(&[intent(2, RUN, -5)]);
        settle().await;
        assert_eq!(phases(&r), [(2, IntentPhase::Rejected)]);
        assert!(*miner.asleep.lock().unwrap());
        // A lowering intent with an expired lease is still taken and applied.
        let (_d, miner, r) = setup(Fallback::Hold);
        r.receive(&[intent(3, SLEEP, -5)]);
        settle().await;
        assert_eq!(phases(&r)[0], (3, IntentPhase::Pending));
        assert!(*miner.asleep.lock().unwrap());
    }

    /// Both lease tests share the skewed clock, so they run in one test, one after the other.
    #[tokio::test(start_paused = true)]
    async fn after_the_lease_expires_hold_never_raises_and_curtail_sleeps() {
        SKEW_S.store(0, Ordering::SeqCst);
        let (_d, miner, r) = setup_with_clock(Fallback::Hold, skewed_clock());
        r.receive(&[intent(1, RUN, 30)]);
        settle().await;
        assert!(!*miner.asleep.lock().unwrap());
        *miner.asleep.lock().unwrap() = true; // something put it to sleep
        SKEW_S.store(60, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(60)).await;
        r.observe("m1", miner.observed());
        settle().await;
        assert!(
            *miner.asleep.lock().unwrap(),
            "hold must not wake a miner without a lease"
        );
        assert_eq!(miner.calls.load(Ordering::SeqCst), 1);
        // A renewed lease lets the intent raise power again.
        r.renew_lease(Utc::now() + chrono::Duration::seconds(600));
        settle().await;
        assert!(!*miner.asleep.lock().unwrap());

        SKEW_S.store(0, Ordering::SeqCst);
        let (_d, miner, r) = setup_with_clock(Fallback::Curtail, skewed_clock());
        r.receive(&[intent(1, RUN, 30)]);
        settle().await;
        assert!(!*miner.asleep.lock().unwrap());
        SKEW_S.store(60, Ordering::SeqCst);
        r.reconcile();
        settle().await;
        assert!(
            *miner.asleep.lock().unwrap(),
            "curtail fallback must sleep the miner"
        );
        SKEW_S.store(0, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_name_the_reason_and_change_nothing() {
        let (_d, miner, r) = setup(Fallback::Hold);
        let mut bad = intent(
            1,
            Target::Miner(MinerTarget::Run {
                power_target_w: Some(2000),
            }),
            60,
        );
        r.receive(std::slice::from_ref(&bad));
        bad.device_id = "nope".into();
        r.receive(&[bad, intent(1, Target::Gpu { power_cap_w: 300 }, 60)]);
        let mut malformed = intent(2, SLEEP, 60);
        malformed.target = None;
        r.receive(&[malformed]);
        settle().await;
        let reports = r.reports.drain();
        assert_eq!(reports.len(), 4);
        assert!(
            reports
                .iter()
                .all(|s| s.phase == IntentPhase::Rejected.to_proto() as i32)
        );
        assert!(
            reports[0].detail.contains("power target"),
            "{}",
            reports[0].detail
        );
        assert!(
            reports[1].detail.contains("no device `nope`"),
            "{}",
            reports[1].detail
        );
        assert!(
            reports[2].detail.contains("GPU target"),
            "{}",
            reports[2].detail
        );
        assert!(
            reports[3].detail.contains("intents[0].target"),
            "{}",
            reports[3].detail
        );
        assert_eq!(miner.calls.load(Ordering::SeqCst), 0);
        assert!(r.held_intents().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn held_intents_survive_a_restart() {
        let (dir, miner, r) = setup(Fallback::Hold);
        r.receive(&[intent(4, SLEEP, 300)]);
        settle().await;
        drop(r);
        let r = reconciler(
            &dir,
            limits(),
            miner.clone(),
            Duration::from_secs(10),
            Fallback::Hold,
            Arc::new(Utc::now),
        );
        assert_eq!(r.held_intents()[0].generation, 4);
        *miner.asleep.lock().unwrap() = false;
        r.observe("m1", miner.observed());
        settle().await;
        assert!(*miner.asleep.lock().unwrap());
    }

    #[test]
    fn unknown_state_counts_as_raising() {
        assert!(raises_power(&RUN, None));
        assert!(!raises_power(&SLEEP, None));
        assert!(raises_power(
            &Target::Gpu { power_cap_w: 400 },
            Some(&Observed::Gpu {
                enforced_cap_w: Some(300.0),
                power_w: None
            })
        ));
        assert!(!raises_power(
            &Target::Gpu { power_cap_w: 200 },
            Some(&Observed::Gpu {
                enforced_cap_w: Some(300.0),
                power_w: None
            })
        ));
    }

    // ---- Issue 8: tests written against the code at 4841e51, to see each hole fail. ----

    /// A wall clock that each test owns.
    fn test_clock() -> (Arc<std::sync::atomic::AtomicI64>, WallClock) {
        let skew = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let s = Arc::clone(&skew);
        (
            skew,
            Arc::new(move || Utc::now() + chrono::Duration::seconds(s.load(Ordering::SeqCst))),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn hole1_a_ramping_miner_is_not_woken_without_a_lease() {
        let (skew, clock) = test_clock();
        let (_d, miner, r) = setup_with_clock(Fallback::Hold, clock);
        r.receive(&[intent(1, RUN, 30)]);
        settle().await;
        skew.store(60, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(60)).await;
        // Someone puts it to sleep; on its way there the firmware says "ramping".
        r.observe(
            "m1",
            Observed::Miner {
                reachable: true,
                state: MinerState::Ramping,
                power_w: Some(1500.0),
                hashrate_ths: Some(40.0),
                power_target_w: None,
            },
        );
        settle().await;
        assert_eq!(miner.calls.load(Ordering::SeqCst), 1, "woken without a lease");
    }

    /// Applies after `gate` is notified; counts calls running at once.
    struct Gated {
        gate: Arc<Notify>,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }
    #[async_trait]
    impl Actuator for Gated {
        async fn apply(&self, target: &Target) -> Result<Observed, String> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            self.gate.notified().await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            let asleep = matches!(target, Target::Miner(MinerTarget::Sleep));
            Ok(Observed::Miner {
                reachable: true,
                state: if asleep { MinerState::Sleeping } else { MinerState::Mining },
                power_w: Some(if asleep { 20.0 } else { 3000.0 }),
                hashrate_ths: Some(if asleep { 0.0 } else { 100.0 }),
                power_target_w: None,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hole2_a_newer_intent_waits_for_the_call_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let gated = Arc::new(Gated {
            gate: Arc::new(Notify::new()),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        });
        let r = reconciler(&dir, limits(), gated.clone(), Duration::from_secs(10), Fallback::Hold, Arc::new(Utc::now));
        r.receive(&[intent(1, RUN, 300)]);
        settle().await;
        r.receive(&[intent(2, SLEEP, 300)]);
        settle().await;
        assert_eq!(gated.max_running.load(Ordering::SeqCst), 1, "two driver calls at once");
    }

    #[tokio::test(start_paused = true)]
    async fn hole3_a_reading_taken_before_the_apply_finished_does_not_reapply() {
        let (_d, miner, r) = setup(Fallback::Hold);
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        // A sweep read the miner mining before the sleep landed and reports it now.
        r.observe_all([(
            "m1".to_owned(),
            Observed::Miner {
                reachable: true,
                state: MinerState::Mining,
                power_w: Some(3000.0),
                hashrate_ths: Some(100.0),
                power_target_w: None,
            },
        )]);
        settle().await;
        assert_eq!(miner.calls.load(Ordering::SeqCst), 1, "re-applied on a stale reading, inside pacing");
    }

    #[test]
    fn hole6_a_gpu_held_below_its_cap_by_another_limit_is_satisfied() {
        let gpu = Limits::Gpu { min_cap_w: 100, max_cap_w: 700 };
        assert!(satisfied(
            &Target::Gpu { power_cap_w: 400 },
            &Observed::Gpu { enforced_cap_w: Some(350.0), power_w: Some(340.0) },
            &gpu,
            None
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn hole6_a_permanent_error_is_not_retried() {
        struct Unsupported(AtomicUsize);
        #[async_trait]
        impl Actuator for Unsupported {
            async fn apply(&self, _: &Target) -> Result<Observed, String> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Err("miner x: antminer firmware does not support a power target".into())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(Unsupported(AtomicUsize::new(0)));
        let r = reconciler(&dir, limits(), a.clone(), Duration::from_secs(10), Fallback::Hold, Arc::new(Utc::now));
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        tokio::time::advance(Duration::from_secs(30)).await;
        r.reconcile();
        settle().await;
        assert_eq!(a.0.load(Ordering::SeqCst), 1, "a permanent error was retried");
    }

    #[tokio::test(start_paused = true)]
    async fn hole7_an_intent_that_cannot_be_saved_is_not_applied() {
        let (d, miner, r) = setup(Fallback::Hold);
        std::fs::create_dir_all(d.path().join("intents.json").join("x")).unwrap();
        r.receive(&[intent(1, SLEEP, 300)]);
        settle().await;
        assert_eq!(miner.calls.load(Ordering::SeqCst), 0, "applied an intent that is not on disk");
    }

    #[tokio::test(start_paused = true)]
    async fn hole9_a_renewal_that_names_nothing_renews_nothing() {
        let (skew, clock) = test_clock();
        let (_d, miner, r) = setup_with_clock(Fallback::Hold, clock);
        r.receive(&[intent(1, RUN, 30)]);
        settle().await;
        *miner.asleep.lock().unwrap() = true;
        skew.store(60, Ordering::SeqCst);
        r.observe("m1", miner.observed());
        settle().await;
        // Another controller renews "everything" without naming what it renews.
        r.renew_lease(Utc::now() + chrono::Duration::seconds(600));
        settle().await;
        assert!(*miner.asleep.lock().unwrap(), "a blind renewal woke the miner");
    }
}
