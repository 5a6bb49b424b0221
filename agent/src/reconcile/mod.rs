//! Desired state → driver actions → read-back → report.
//!
//! The reconciler holds one intent per device, drives the device to it through its
//! [`Actuator`], checks the physical effect on later readings, and reports each generation as
//! pending → applied → confirmed, or failed (retrying or final) / rejected with the reason. The
//! decision is the pure [`next_step`] over the pure rules in [`rules`]; this file is the loop
//! that executes it and does the I/O. What it guarantees, each checked by the model-based test
//! in `model.rs`:
//!
//! - at most one driver call in flight per device; a newer intent waits for it (a raising call
//!   is abandoned for it);
//! - an intent is on disk before anything acts on it; one that cannot be saved is not applied;
//! - a step that could raise power runs only under a valid lease and a trusted clock, checked
//!   when the step runs, not only at dispatch; the fallback and lowering never need one;
//! - observations carry the instant they were taken; an older one never replaces a newer one,
//!   so no decision rests on a reading older than the newest read-back;
//! - a re-sent generation repeats no effect; a permanent driver error fails its generation once.

mod held;
mod reports;
pub mod rules;
mod seam;
mod step;
mod store;

#[cfg(test)]
mod model;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_proto::model::{Intent, IntentPhase, Target};
use pivot_proto::v1;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub use held::{Before, GivenUp, Held, HeldRecord};
pub use reports::Reports;
pub use rules::{
    TargetCaps, TargetRefused, check, fallback_target, power_target_landing, raises_power,
    satisfied,
};
pub use seam::{
    Actuator, ApplyError, ClockCheck, ClockTrust, Device, Limits, Observation, Observed,
    RaiseGuard, RaiseRefused, WallClock,
};
pub use step::{DeviceView, HoldReason, Now, Step, next_step};
pub use store::{DiskStore, INTENTS_FILE, IntentStore, MAX_GENERATION};

use crate::config::Fallback;
use crate::state::StateError;
use held::{status, status_of_wire};

/// Reconciler settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub confirm_timeout: Duration,
    pub fallback: Fallback,
    /// Largest difference between this host's clock and the controller's at which leases are
    /// still trusted to raise power.
    pub max_clock_skew: Duration,
}

/// A lease renewal as the controller sent it: it extends only the intents it names, at exactly
/// the generation held.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewal {
    pub until: DateTime<Utc>,
    /// (device id, generation).
    pub intents: Vec<(String, u64)>,
    pub controller_time: Option<DateTime<Utc>>,
}

/// A driver call that has not finished.
struct InFlight {
    attempt: u64,
    generation: u64,
    target: Target,
    raising: bool,
    /// Abandons the call (dropping its future) when a newer intent supersedes it.
    cancel: Option<oneshot::Sender<()>>,
    abort: tokio::task::AbortHandle,
}

/// The last driver call on a device: what it was for, and when it ended (or started, while it
/// runs). Pacing counts from it for another try of the same target.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    at: Instant,
    generation: u64,
    target: Target,
    /// How many tries of this generation and target in a row failed in a way that may be
    /// tried again sooner than the pacing ([`ApplyError::retry_soon`]): nothing was sent to the
    /// device (a login or a read before the command timed out, the connection was refused),
    /// or, on a device whose commands can be repeated, the reply did not come.
    soon: u32,
}

/// The first wait before trying again a call that sent nothing (or, on a repeatable device, got
/// no reply); it doubles with each such failure in a row, up to the device's pacing. A curtail
/// whose login timed out under load is retried in seconds, not after an Antminer's two minutes;
/// an unreachable miner is not hammered (it waits for a reading that says it answers again).
const SOON_RETRY: Duration = Duration::from_secs(2);

impl Attempt {
    /// Whether this was a try of `generation` at `target` (pacing is between tries of one).
    fn is_for(&self, generation: u64, target: Target) -> bool {
        self.generation == generation && self.target == target
    }

    /// The failures in a row so far that may be retried soon, of tries of `generation` at
    /// `target`.
    fn soon_before(last: Option<Attempt>, generation: u64, target: Target) -> u32 {
        last.filter(|a| a.is_for(generation, target))
            .map_or(0, |a| a.soon)
    }

    /// The pause before the next try of the same target, for a device paced at `pacing`.
    fn pacing(&self, pacing: Duration) -> Duration {
        match self.soon {
            0 => pacing,
            n => pacing.min(SOON_RETRY.saturating_mul(1 << (n - 1).min(16))),
        }
    }
}

/// One device and everything the reconciler knows of it.
struct Slot {
    device: Device,
    held: Option<Held>,
    observation: Option<Observation>,
    in_flight: Option<InFlight>,
    last_attempt: Option<Attempt>,
}

impl Slot {
    fn new(device: Device, held: Option<Held>) -> Self {
        Self {
            device,
            held,
            observation: None,
            in_flight: None,
            last_attempt: None,
        }
    }

    fn power_w(&self) -> Option<f64> {
        self.observation.as_ref().and_then(|o| o.observed.power_w())
    }
}

struct Inner {
    slots: BTreeMap<String, Slot>,
    /// Saved records of devices not (yet) in the inventory: a curtailed miner that is offline
    /// when the agent starts gets its intent back when it is found.
    orphans: BTreeMap<String, HeldRecord>,
    next_attempt: u64,
}

impl Inner {
    fn records(&self) -> Vec<&HeldRecord> {
        self.slots
            .values()
            .filter_map(|s| s.held.as_ref().map(|h| &h.record))
            .chain(self.orphans.values())
            .collect()
    }
}

/// Holds intents and drives devices to them.
pub struct Reconciler {
    clock: WallClock,
    trust: Arc<ClockTrust>,
    inner: Mutex<Inner>,
    store: Arc<dyn IntentStore>,
    settings: Settings,
    pub reports: Reports,
    /// Told of every dispatch as it is decided (the model-based test checks the disk there).
    #[cfg(test)]
    on_dispatch: Mutex<Option<DispatchHook>>,
}

/// (device, generation, target, raising, what the device showed) of a dispatch, as it is decided.
#[cfg(test)]
type DispatchHook = Box<dyn Fn(&str, u64, Target, bool, Option<&Observed>) + Send>;

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A dispatch decided under the lock, started once the state is on disk.
struct Planned {
    id: String,
    target: Target,
    raising: bool,
}

impl Reconciler {
    /// A reconciler for `devices`, holding what `store` saved. Saved intents are checked as
    /// intents from the wire are: one that fails is refused by name (logged, and reported
    /// REJECTED to the controller) and dropped from the store.
    pub fn new(
        devices: BTreeMap<String, Device>,
        store: Arc<dyn IntentStore>,
        settings: Settings,
        clock: WallClock,
    ) -> Result<Arc<Self>, StateError> {
        let saved = store.load()?;
        let reports = Reports::default();
        let mut slots: BTreeMap<String, Slot> = devices
            .into_iter()
            .map(|(id, d)| (id, Slot::new(d, None)))
            .collect();
        let mut orphans = BTreeMap::new();
        let mut dropped = false;
        for (id, record) in saved {
            let verdict = store::validate_record(&record).and_then(|()| match slots.get(&id) {
                Some(slot) => check(&record.target(), &slot.device.limits),
                None => Ok(()),
            });
            if let Err(problem) = verdict {
                error!(device = %id, generation = record.intent.generation, %problem, file = INTENTS_FILE, "Saved intent refused on load; it is not held");
                reports.push(refused_on_load(&id, &record.intent, &problem));
                dropped = true;
                continue;
            }
            match slots.get_mut(&id) {
                Some(slot) => {
                    slot.held = Some(Held::new(record, "restored from the state directory"));
                }
                None => {
                    warn!(device = %id, "Held intent for a device not in the inventory; kept until it is found");
                    orphans.insert(id, record);
                }
            }
        }
        let this = Self {
            clock,
            trust: Arc::new(ClockTrust::default()),
            inner: Mutex::new(Inner {
                slots,
                orphans,
                next_attempt: 0,
            }),
            store,
            settings,
            reports,
            #[cfg(test)]
            on_dispatch: Mutex::new(None),
        };
        if dropped {
            let inner = this.lock();
            this.store.save(&inner.records())?;
        }
        Ok(Arc::new(this))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> Now {
        Now {
            instant: Instant::now(),
            wall: (self.clock)(),
            clock: self.trust.get(),
            fallback: self.settings.fallback,
            confirm_timeout: self.settings.confirm_timeout,
        }
    }

    /// Adds a device found after start; it takes back an intent saved for it, if that intent
    /// is acceptable for it.
    pub fn add_device(self: &Arc<Self>, id: String, device: Device) {
        let mut inner = self.lock();
        let mut refused = false;
        let held = match inner.orphans.remove(&id) {
            Some(record) => match check(&record.target(), &device.limits) {
                Ok(()) => {
                    info!(device = %id, generation = record.intent.generation, "Found device takes back its saved intent");
                    Some(Held::new(record, "restored from the state directory"))
                }
                Err(problem) => {
                    error!(device = %id, %problem, file = INTENTS_FILE, "Saved intent refused for the device found; it is not held");
                    self.reports
                        .push(refused_on_load(&id, &record.intent, &problem));
                    refused = true;
                    None
                }
            },
            None => None,
        };
        match inner.slots.get_mut(&id) {
            Some(slot) => slot.device = device,
            None => {
                inner.slots.insert(id.clone(), Slot::new(device, held));
            }
        }
        if refused && let Err(e) = self.store.save(&inner.records()) {
            warn!(error = %e, "Could not drop the refused intent from the state directory");
        }
        drop(inner);
        self.advance(Some(vec![id]));
    }

    /// The intents held, for the hello of a new session.
    pub fn held_intents(&self) -> Vec<Intent> {
        self.lock()
            .slots
            .values()
            .filter_map(|s| s.held.as_ref().map(|h| h.record.intent.clone()))
            .collect()
    }

    /// Where every held intent stands (re-sent when a session starts).
    pub fn statuses(&self) -> Vec<v1::IntentStatus> {
        self.lock()
            .slots
            .iter()
            .filter_map(|(id, s)| s.held.as_ref().map(|h| h.status(id, s.power_w())))
            .collect()
    }

    /// How far this host's clock is from the controller's, as last measured.
    pub fn clock_check(&self) -> ClockCheck {
        self.trust.get()
    }

    /// Measures this host's clock against `controller_time` (the controller's clock when it
    /// sent a message). Beyond the configured bound nothing is raised until a later message
    /// brings it back within it.
    pub fn note_controller_time(self: &Arc<Self>, controller_time: DateTime<Utc>) {
        let skew_s = (controller_time - (self.clock)()).as_seconds_f64();
        let check = ClockCheck::measure(skew_s, self.settings.max_clock_skew.as_secs_f64());
        let before = self.trust.set(check);
        let trusted = |c: &ClockCheck| matches!(c, ClockCheck::Within { .. });
        match (trusted(&before), trusted(&check)) {
            (false, true) => {
                info!(
                    skew_s,
                    "Clock within bound of the controller's; leases can be checked"
                );
                self.advance(None);
            }
            (true, false) | (false, false) if before != check => {
                if let Some(why) = check.distrust() {
                    warn!(skew_s, "{why}");
                }
            }
            _ => {}
        }
    }

    /// Takes intents from the controller. Each is accepted, saved, and applied in the
    /// background, or rejected with its reason; a re-sent generation is answered with where it
    /// stands. Nothing accepted is acted on before it is on disk: if saving fails, the batch's
    /// new intents fail (not retrying) and the ones held before stay in force.
    pub fn receive(
        self: &Arc<Self>,
        intents: &[v1::Intent],
        controller_time: Option<DateTime<Utc>>,
    ) {
        if let Some(t) = controller_time {
            self.note_controller_time(t);
        }
        let now_wall = (self.clock)();
        let mut inner = self.lock();
        let mut accepted: BTreeMap<String, Held> = BTreeMap::new();
        let mut extended: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for (i, m) in intents.iter().enumerate() {
            let intent = match Intent::from_proto(m, &format!("intents[{i}]")) {
                Ok(intent) => intent,
                Err(e) => {
                    warn!(device = %m.device_id, error = %e, "Rejected malformed intent");
                    self.reports
                        .push(status_of_wire(m, IntentPhase::Rejected, e.to_string()));
                    continue;
                }
            };
            let id = intent.device_id.clone();
            let reject = |reason: String| {
                warn!(device = %id, generation = intent.generation, %reason, "Rejected intent; nothing changed");
                status(&id, &intent, IntentPhase::Rejected, reason, false, None)
            };
            if let Err(reason) = store::check_generation(intent.generation) {
                self.reports.push(reject(reason));
                continue;
            }
            let Some(slot) = inner.slots.get(&id) else {
                self.reports
                    .push(reject(format!("no device `{id}` on this host")));
                continue;
            };
            if let Err(reason) = check(&intent.target, &slot.device.limits) {
                self.reports.push(reject(reason));
                continue;
            }
            let current = accepted.get(&id).or(slot.held.as_ref());
            if let Some(h) = current {
                let held_gen = h.generation();
                if intent.generation < held_gen {
                    self.reports.push(reject(format!(
                        "stale generation {} (holding {held_gen})",
                        intent.generation
                    )));
                    continue;
                }
                if intent.generation == held_gen {
                    if intent.target != h.record.intent.target {
                        self.reports.push(reject(format!(
                            "generation {} was already used for another target",
                            intent.generation
                        )));
                    } else {
                        // A re-send: harmless, answered with where it stands. A longer lease on
                        // it is taken (once saved).
                        if intent.lease_expires_at > h.record.intent.lease_expires_at {
                            extended.insert(id.clone(), intent.lease_expires_at);
                        }
                        self.reports.push(h.status(&id, slot.power_w()));
                    }
                    continue;
                }
            }
            let observed = slot.observation.as_ref().map(|o| &o.observed);
            if !intent.lease_valid_at(now_wall) && raises_power(&intent.target, observed) {
                self.reports.push(reject(format!(
                    "lease expired at {} and the intent would raise power",
                    intent.lease_expires_at
                )));
                continue;
            }
            extended.remove(&id);
            accepted.insert(id, Held::new(HeldRecord::new(intent), "accepted"));
        }
        if accepted.is_empty() && extended.is_empty() {
            return;
        }
        // The records as they will be once this batch is taken; saved before anything uses them.
        let mut records: Vec<HeldRecord> = inner.records().into_iter().cloned().collect();
        for r in &mut records {
            let id = &r.intent.device_id;
            if let Some(h) = accepted.get(id) {
                *r = h.record.clone();
            } else if let Some(until) = extended.get(id) {
                extend(r, *until, now_wall);
            }
        }
        // A set, not a scan of the records per intent: a 1,250-miner curtail was 1.5 million
        // id comparisons on an agent.
        let held: BTreeSet<&str> = records
            .iter()
            .map(|r| r.intent.device_id.as_str())
            .collect();
        let new: Vec<HeldRecord> = accepted
            .iter()
            .filter(|(id, _)| !held.contains(id.as_str()))
            .map(|(_, h)| h.record.clone())
            .collect();
        records.extend(new);
        if let Err(e) = self.store.save(&records.iter().collect::<Vec<_>>()) {
            error!(error = %e, "Could not save intents; the new ones are not applied");
            for (id, mut h) in accepted {
                let detail = format!(
                    "not applied: it could not be saved in the state directory ({e}); the intent \
                     held before stays in force"
                );
                self.reports
                    .push(h.transition(&id, IntentPhase::Failed, detail, false, None));
            }
            return;
        }
        let mut touched = Vec::new();
        for (id, until) in extended {
            if let Some(h) = inner.slots.get_mut(&id).and_then(|s| s.held.as_mut()) {
                extend_held(h, until, now_wall);
                touched.push(id);
            }
        }
        for (id, mut h) in accepted {
            let Some(slot) = inner.slots.get_mut(&id) else {
                continue;
            };
            info!(device = %id, generation = h.generation(), target = ?h.target(), reason = %h.record.intent.reason, "Intent accepted");
            self.reports.push(h.status(&id, slot.power_w()));
            if let Some(f) = slot.in_flight.as_mut()
                && f.raising
                && f.target != h.target()
                && let Some(cancel) = f.cancel.take()
            {
                info!(device = %id, "Abandoning a raising driver call for the newer intent");
                let _ = cancel.send(());
            }
            h.phase = IntentPhase::Pending;
            slot.held = Some(h);
            touched.push(id);
        }
        drop(inner);
        self.advance(Some(touched));
    }

    /// Extends the leases a renewal names, at exactly the generation held (never shortening);
    /// an intent it names whose fallback had taken over is back in force. Nothing else changes.
    pub fn renew(self: &Arc<Self>, renewal: &Renewal) {
        if let Some(t) = renewal.controller_time {
            self.note_controller_time(t);
        }
        let now_wall = (self.clock)();
        let mut inner = self.lock();
        let mut named = Vec::new();
        for (id, generation) in &renewal.intents {
            match inner.slots.get(id).and_then(|s| s.held.as_ref()) {
                Some(h)
                    if h.generation() == *generation
                        && renewal.until > h.record.intent.lease_expires_at =>
                {
                    named.push(id.clone());
                }
                Some(h) if h.generation() != *generation => {
                    debug!(device = %id, generation, holding = h.generation(), "Renewal names a generation not held; ignored");
                }
                _ => {}
            }
        }
        if named.is_empty() {
            return;
        }
        let mut records: Vec<HeldRecord> = inner.records().into_iter().cloned().collect();
        let renewed: BTreeSet<&str> = named.iter().map(String::as_str).collect();
        for r in &mut records {
            if renewed.contains(r.intent.device_id.as_str()) {
                extend(r, renewal.until, now_wall);
            }
        }
        if let Err(e) = self.store.save(&records.iter().collect::<Vec<_>>()) {
            error!(error = %e, "Could not save a lease renewal; it is not taken");
            return;
        }
        for id in &named {
            if let Some(h) = inner.slots.get_mut(id).and_then(|s| s.held.as_mut()) {
                extend_held(h, renewal.until, now_wall);
            }
        }
        drop(inner);
        self.advance(Some(named));
    }

    /// Records what a device shows and acts on it. An observation older than the one held is
    /// dropped.
    pub fn observe(self: &Arc<Self>, device_id: &str, observation: Observation) {
        self.observe_all([(device_id.to_owned(), observation)]);
    }

    /// Records many observations, then acts once.
    pub fn observe_all(
        self: &Arc<Self>,
        observations: impl IntoIterator<Item = (String, Observation)>,
    ) {
        let mut inner = self.lock();
        let mut touched = Vec::new();
        for (id, o) in observations {
            let Some(slot) = inner.slots.get_mut(&id) else {
                continue;
            };
            if slot
                .observation
                .as_ref()
                .is_some_and(|held| o.taken_at <= held.taken_at)
            {
                debug!(device = %id, "Dropped an observation older than the one held");
                continue;
            }
            slot.observation = Some(o);
            if slot.held.is_some() {
                touched.push(id);
            }
        }
        drop(inner);
        self.advance(Some(touched));
    }

    /// Compares every held intent with its device and starts what is needed: confirmations,
    /// re-applies after drift, retries, the fallback after a lease ended. Cheap when nothing is
    /// to be done; the daemon calls it every second besides after each poll.
    pub fn reconcile(self: &Arc<Self>) {
        self.advance(None);
    }

    /// Abandons every driver call in flight (the process is going away).
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        for slot in inner.slots.values_mut() {
            if let Some(f) = slot.in_flight.take() {
                f.abort.abort();
            }
        }
    }

    /// Runs [`next_step`] for `only` the given devices (all when `None`), saves what changed,
    /// then starts the driver calls decided.
    fn advance(self: &Arc<Self>, only: Option<Vec<String>>) {
        let now = self.now();
        let mut inner = self.lock();
        let ids: Vec<String> = match only {
            Some(ids) => ids,
            None => inner.slots.keys().cloned().collect(),
        };
        let mut planned = Vec::new();
        let mut dirty = false;
        for id in ids {
            let Some(slot) = inner.slots.get_mut(&id) else {
                continue;
            };
            if let Some((target, raising)) = self.decide(&id, slot, &now, &mut dirty) {
                planned.push(Planned {
                    id,
                    target,
                    raising,
                });
            }
        }
        let saved = if dirty {
            self.store.save(&inner.records())
        } else {
            Ok(())
        };
        if let Err(e) = &saved {
            error!(error = %e, "Could not save held intents; lowering goes ahead, raising waits until they are saved");
        }
        let mut applying = Vec::with_capacity(planned.len());
        for p in planned {
            let attempt = inner.next_attempt;
            inner.next_attempt += 1;
            let Some(slot) = inner.slots.get_mut(&p.id) else {
                continue;
            };
            if let (Err(e), true) = (&saved, p.raising) {
                slot.last_attempt = slot.held.as_ref().map(|h| Attempt {
                    at: now.instant,
                    generation: h.generation(),
                    target: p.target,
                    soon: 0,
                });
                let power = slot.power_w();
                if let Some(h) = slot.held.as_mut() {
                    let detail = format!(
                        "not raising power: the state directory could not be written ({e})"
                    );
                    self.reports.push(h.transition(
                        &p.id,
                        IntentPhase::Failed,
                        detail,
                        true,
                        power,
                    ));
                }
                continue;
            }
            self.dispatch(&p.id, slot, p.target, p.raising, attempt, now.instant);
            applying.push((p.id, p.target));
        }
        log_applying(&applying);
    }

    /// Executes the steps of one device until one of them leaves it waiting or dispatches.
    fn decide(
        &self,
        id: &str,
        slot: &mut Slot,
        now: &Now,
        dirty: &mut bool,
    ) -> Option<(Target, bool)> {
        let power = slot.power_w();
        let Slot {
            device,
            held,
            observation,
            in_flight,
            last_attempt,
        } = slot;
        let held = held.as_mut()?;
        // A fallback makes one more pass; nothing else takes more than one.
        for _ in 0..2 {
            // Pacing is between tries of one target: a new generation, or the fallback, goes as
            // soon as the device is free.
            let same_target = last_attempt.filter(|a| a.is_for(held.generation(), held.target()));
            let view = DeviceView {
                limits: &device.limits,
                pacing: same_target.map_or(device.pacing, |a| a.pacing(device.pacing)),
                in_flight: in_flight.is_some(),
                last_attempt: same_target.map(|a| a.at),
            };
            match next_step(held, observation.as_ref(), &view, now) {
                Step::Wait => return None,
                Step::Fallback(t) => {
                    warn!(device = %id, lease = %held.record.intent.lease_expires_at, fallback = ?t, "Lease expired: applying the fallback");
                    held.record.fallback = Some(t);
                    held.applied_at = None;
                    let detail = format!(
                        "lease expired at {}: fallback {:?} in force ({t:?})",
                        held.record.intent.lease_expires_at, now.fallback
                    );
                    self.reports.push(held.transition(
                        id,
                        IntentPhase::Pending,
                        detail,
                        false,
                        power,
                    ));
                    *dirty = true;
                    if let Some(f) = in_flight.as_mut()
                        && f.raising
                        && let Some(cancel) = f.cancel.take()
                    {
                        let _ = cancel.send(());
                    }
                }
                Step::Confirm { already_there } => {
                    let detail = if already_there {
                        "device already in the intended state"
                    } else {
                        "physical effect verified"
                    };
                    self.reports.push(held.transition(
                        id,
                        IntentPhase::Confirmed,
                        detail.into(),
                        false,
                        power,
                    ));
                    return None;
                }
                Step::NotConfirmed => {
                    let detail = format!(
                        "applied but not confirmed within {:?}: the device shows {:?}",
                        now.confirm_timeout,
                        observation.as_ref().map(|o| &o.observed)
                    );
                    warn!(device = %id, %detail, "Intent not confirmed; will retry");
                    self.reports.push(held.transition(
                        id,
                        IntentPhase::Failed,
                        detail,
                        true,
                        power,
                    ));
                    return None;
                }
                Step::Hold(reason) => {
                    let detail = reason.detail();
                    if held.phase != IntentPhase::Pending || held.detail != detail {
                        info!(device = %id, %detail, "Not raising power");
                        self.reports.push(held.transition(
                            id,
                            IntentPhase::Pending,
                            detail,
                            false,
                            power,
                        ));
                    }
                    return None;
                }
                Step::Dispatch { target, raising } => {
                    let before = Before::of(observation.as_ref().map(|o| &o.observed))
                        .or(held.record.before);
                    if before != held.record.before {
                        held.record.before = before;
                        *dirty = true;
                    }
                    return Some((target, raising));
                }
            }
        }
        None
    }

    /// Starts one driver call, bounded by the device's deadline and abandoned if superseded.
    /// Logged at debug level; [`log_applying`] tells the batch at info.
    fn dispatch(
        self: &Arc<Self>,
        id: &str,
        slot: &mut Slot,
        target: Target,
        raising: bool,
        attempt: u64,
        now: Instant,
    ) {
        let Some(held) = slot.held.as_ref() else {
            return;
        };
        let generation = held.generation();
        let lease = held
            .record
            .fallback
            .is_none()
            .then_some(held.record.intent.lease_expires_at);
        let guard = RaiseGuard::new(lease, Arc::clone(&self.clock), Arc::clone(&self.trust));
        let why = why_words(&held.record);
        debug!(device = %id, generation, ?target, raising, "Applying");
        #[cfg(test)]
        if let Some(hook) = self
            .on_dispatch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            hook(
                id,
                generation,
                target,
                raising,
                slot.observation.as_ref().map(|o| &o.observed),
            );
        }
        let (cancel, cancelled) = oneshot::channel::<()>();
        let actuator = Arc::clone(&slot.device.actuator);
        let deadline = slot.device.deadline;
        let this = Arc::clone(self);
        let device_id = id.to_owned();
        let task = tokio::spawn(async move {
            let result = tokio::select! {
                // A call abandoned before it ran does not start at all.
                biased;
                _ = cancelled => Err(ApplyError::Superseded),
                r = tokio::time::timeout(deadline, actuator.apply_because(&target, &guard, &why)) => {
                    r.unwrap_or(Err(ApplyError::Timeout { after: deadline }))
                }
            };
            // The driver's future is dropped by now: no call is left running on the device.
            this.finish(&device_id, attempt, result);
        });
        slot.in_flight = Some(InFlight {
            attempt,
            generation,
            target,
            raising,
            cancel: Some(cancel),
            abort: task.abort_handle(),
        });
        slot.last_attempt = Some(Attempt {
            at: now,
            generation,
            target,
            soon: Attempt::soon_before(slot.last_attempt, generation, target),
        });
    }

    /// Takes a driver call's result: its read-back is the newest observation of the device;
    /// the generation it was for moves on unless a newer one replaced it meanwhile.
    fn finish(self: &Arc<Self>, id: &str, attempt: u64, result: Result<Observed, ApplyError>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(id) else {
            return;
        };
        let Some(f) = slot.in_flight.take_if(|f| f.attempt == attempt) else {
            return;
        };
        // Pacing counts from the end of a call: a slow one (an Antminer CGI restarting cgminer)
        // is not followed by another at once.
        let soon = match &result {
            Err(e) if e.retry_soon(slot.device.repeatable) => {
                Attempt::soon_before(slot.last_attempt, f.generation, f.target).saturating_add(1)
            }
            _ => 0,
        };
        slot.last_attempt = Some(Attempt {
            at: now,
            generation: f.generation,
            target: f.target,
            soon,
        });
        if let Ok(o) = &result {
            slot.observation = Some(Observation {
                taken_at: now,
                observed: o.clone(),
            });
        }
        let power = slot.power_w();
        let limits = slot.device.limits.clone();
        let mut give_up = false;
        match slot.held.as_mut() {
            Some(h) if h.generation() == f.generation && h.target() == f.target => match result {
                Ok(o) => {
                    h.applied_at = Some(now);
                    // A call whose own read-back shows the physical effect is reported once, as
                    // confirmed: an `Applied` status at the same instant would tell the
                    // controller nothing more, and at 10,000 moves it was 10,000 more statuses
                    // to send, store and audit.
                    let (phase, detail) =
                        if satisfied(&f.target, &o, &limits, h.record.before.as_ref()) {
                            (
                                IntentPhase::Confirmed,
                                "applied, read back, physical effect verified",
                            )
                        } else {
                            (IntentPhase::Applied, "applied and read back")
                        };
                    self.reports
                        .push(h.transition(id, phase, detail.into(), false, power));
                }
                Err(e) => {
                    let retrying = !e.is_permanent();
                    warn!(device = %id, generation = f.generation, error = %e, retrying, "Applying intent failed");
                    if !retrying {
                        h.record.give_up(f.target, e.to_string());
                        give_up = true;
                    }
                    self.reports.push(h.transition(
                        id,
                        IntentPhase::Failed,
                        e.to_string(),
                        retrying,
                        power,
                    ));
                }
            },
            _ => {
                debug!(device = %id, generation = f.generation, "Driver call finished for a superseded intent");
            }
        }
        // Kept on disk so a restart does not try it again.
        if give_up && let Err(e) = self.store.save(&inner.records()) {
            warn!(device = %id, error = %e, "Could not save that the intent failed for good; a restart would try it once more");
        }
        drop(inner);
        self.advance(Some(vec![id.to_owned()]));
    }

    /// Calls `hook` at every dispatch, as it is decided (tests only).
    #[cfg(test)]
    fn on_dispatch(&self, hook: DispatchHook) {
        *self
            .on_dispatch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hook);
    }

    /// What the reconciler holds, for tests' invariants.
    #[cfg(test)]
    fn snapshot(&self) -> BTreeMap<String, SlotSnapshot> {
        self.lock()
            .slots
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    SlotSnapshot {
                        held: s
                            .held
                            .as_ref()
                            .map(|h| (h.record.clone(), h.phase, h.retrying)),
                        observed_at: s.observation.as_ref().map(|o| o.taken_at),
                        in_flight: s
                            .in_flight
                            .as_ref()
                            .map(|f| (f.attempt, f.generation, f.target, f.raising)),
                    },
                )
            })
            .collect()
    }
}

/// One line for the driver calls one pass started: how many, of which targets, and the devices
/// when there are few. A curtail of 10,000 miners was 10,000 lines, one a call, in the agents'
/// logs (each device's line is at debug level; a failure is still a warning of its own).
fn log_applying(applying: &[(String, Target)]) {
    if applying.is_empty() {
        return;
    }
    // A pass starts calls of a few distinct targets: counted by comparison, not a string each.
    let mut counts: Vec<(Target, usize)> = Vec::new();
    for (_, t) in applying {
        match counts.iter_mut().find(|(seen, _)| seen == t) {
            Some((_, n)) => *n += 1,
            None => counts.push((*t, 1)),
        }
    }
    let targets: Vec<String> = counts.iter().map(|(t, n)| format!("{n} × {t:?}")).collect();
    let targets = targets.join(", ");
    const NAMED: usize = 5;
    if applying.len() <= NAMED {
        let devices: Vec<&str> = applying.iter().map(|(id, _)| id.as_str()).collect();
        info!(
            calls = applying.len(),
            targets,
            devices = devices.join(", "),
            "Applying"
        );
    } else {
        info!(calls = applying.len(), targets, "Applying");
    }
}

/// One device as the reconciler holds it (tests only).
#[cfg(test)]
#[derive(Debug, Clone)]
struct SlotSnapshot {
    held: Option<(HeldRecord, IntentPhase, bool)>,
    observed_at: Option<Instant>,
    /// (attempt, generation, target, raising).
    in_flight: Option<(u64, u64, Target, bool)>,
}

/// Extends `r`'s lease to `until` (never shortening); a fallback ends once the lease is valid.
fn extend(r: &mut HeldRecord, until: DateTime<Utc>, now: DateTime<Utc>) {
    if until > r.intent.lease_expires_at {
        r.intent.lease_expires_at = until;
        if r.intent.lease_valid_at(now) {
            r.fallback = None;
        }
    }
}

/// As [`extend`], for a held intent: one whose fallback ends is pending again.
fn extend_held(h: &mut Held, until: DateTime<Utc>, now: DateTime<Utc>) {
    let had_fallback = h.record.fallback.is_some();
    extend(&mut h.record, until, now);
    if had_fallback && h.record.fallback.is_none() {
        h.applied_at = None;
        h.retrying = false;
        match h.record.given_up_on_target() {
            Some(why) => {
                h.phase = IntentPhase::Failed;
                h.detail = why.to_owned();
            }
            None => {
                h.phase = IntentPhase::Pending;
                h.detail = "lease renewed: the intent is in force again".into();
            }
        }
    }
}

/// Why the agent drives a device to the target in force, in words for a workload manager: the
/// controller's plan and reason, or the fallback that replaced them.
fn why_words(r: &HeldRecord) -> String {
    let i = &r.intent;
    if r.fallback.is_some() {
        return format!("lease expired at {}: fallback", i.lease_expires_at);
    }
    match (i.plan_id.is_empty(), i.reason.trim().is_empty()) {
        (true, _) => i.reason.clone(),
        (false, true) => format!("plan {}", i.plan_id),
        (false, false) => format!("plan {}: {}", i.plan_id, i.reason),
    }
}

/// The status of a saved intent refused when it was read back.
fn refused_on_load(id: &str, intent: &Intent, problem: &str) -> v1::IntentStatus {
    status(
        id,
        intent,
        IntentPhase::Rejected,
        format!("{INTENTS_FILE}: refused when read back ({problem}); not held"),
        false,
        None,
    )
}
