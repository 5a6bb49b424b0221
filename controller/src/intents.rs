//! The desired state of every device: the intent the controller issued (generation, lease,
//! target, plan and phase) and the last status its agent reported, kept in memory and in the
//! store, written to the store before anything is sent.
//!
//! Generations only go up, per device, across restarts: a new intent takes the highest of what
//! the store holds and what the agent said it holds, plus one. On a hello the controller adopts
//! what an agent holds that it does not know (a newer generation from before a store was lost)
//! and re-sends what the agent missed. It renews the lease only of intents it *endorses*: ones
//! issued or re-confirmed by a plan of this controller's life. After a restart nothing is
//! endorsed until the first plan has looked at the site, so a restarted controller never
//! re-authorises a stale raising intent by renewing it blindly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use pivot_proto::model::{Intent, IntentPhase, Target};
use pivot_proto::v1;

use crate::store::{DeviceIntent, StatusRecord, Store, StoreError};

#[derive(Debug, Clone)]
struct Entry {
    di: DeviceIntent,
    endorsed: bool,
}

/// One intent to issue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIntent {
    pub host_id: String,
    pub device_id: String,
    pub target: Target,
    pub reason: String,
    pub plan_id: String,
    pub phase: u32,
    /// What the device is committed at now (the "before" of the transition), W.
    pub before_w: Option<f64>,
    /// A miner's setting to keep for its restore; `None` keeps what its last intent kept.
    pub setting_before_w: Option<f64>,
}

/// What a hello asks of the controller.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HelloOutcome {
    /// Intents to send to the agent (it missed them, or holds an older generation).
    pub resend: Vec<Intent>,
    /// Intents the agent held that the controller did not know, now recorded as its own
    /// (not endorsed: their leases are not renewed until a plan wants them).
    pub adopted: Vec<Intent>,
    /// Devices where the agent held the controller's generation with another target; the
    /// controller's target was re-issued at a new generation.
    pub conflicts: Vec<String>,
}

/// A status that moved an intent the controller holds.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub device_id: String,
    pub generation: u64,
    pub plan_id: String,
    pub phase: u32,
    pub status: StatusRecord,
}

/// Why a status was not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatusRefused {
    #[error("status for device `{device_id}`, which belongs to host `{owner}`, not `{host_id}`")]
    WrongHost {
        device_id: String,
        host_id: String,
        owner: String,
    },
    #[error("status for device `{device_id}`: {problem}")]
    Invalid { device_id: String, problem: String },
}

/// The controller's desired state, per device.
pub struct Ledger {
    store: Arc<dyn Store>,
    entries: Mutex<BTreeMap<String, Entry>>,
    changed: Mutex<Changed>,
}

/// How many changed device ids the ledger keeps for the executor before it says "everything".
const CHANGED_CAP: usize = 16_384;

/// The devices whose desired state changed since the executor last asked
/// ([`Ledger::take_changed`]).
#[derive(Debug, Default)]
struct Changed {
    ids: Vec<String>,
    /// More changed than [`CHANGED_CAP`]: the reader must look at everything.
    overflowed: bool,
}

impl Changed {
    fn note(&mut self, device_id: &str) {
        if self.overflowed {
            return;
        }
        if self.ids.len() >= CHANGED_CAP {
            self.ids = Vec::new();
            self.overflowed = true;
        } else {
            self.ids.push(device_id.to_owned());
        }
    }
}

/// What changed in the ledger since the last [`Ledger::take_changed`].
#[derive(Debug, Clone, PartialEq)]
pub enum ChangedSince {
    /// These devices' desired state changed (an intent issued, adopted or re-issued; a status
    /// taken), in the order it happened; a device may appear more than once.
    Devices(Vec<String>),
    /// Too many to list: look at everything.
    All,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Loads the desired state from the store. Nothing is endorsed until a plan says so.
    pub fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let entries = store
            .list_intents()?
            .into_iter()
            .map(|di| {
                (
                    di.intent.device_id.clone(),
                    Entry {
                        di,
                        endorsed: false,
                    },
                )
            })
            .collect();
        Ok(Self {
            store,
            entries: Mutex::new(entries),
            changed: Mutex::new(Changed::default()),
        })
    }

    /// The devices whose desired state changed since the last call (the executor's, which
    /// looks again only at the moves they are). Taken before the states are read, a change made
    /// after it is in the next call's answer.
    pub fn take_changed(&self) -> ChangedSince {
        let taken = std::mem::take(&mut *self.note_lock());
        if taken.overflowed {
            ChangedSince::All
        } else {
            ChangedSince::Devices(taken.ids)
        }
    }

    /// The change log; locked only while `entries` is held or on its own, in that order. A
    /// device is noted once its entry holds the change, never before.
    fn note_lock(&self) -> std::sync::MutexGuard<'_, Changed> {
        self.changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The desired state of one device.
    pub fn get(&self, device_id: &str) -> Option<DeviceIntent> {
        self.lock().get(device_id).map(|e| e.di.clone())
    }

    /// `f(desired state)` for one device, under the lock and without a copy (the site status
    /// asks this of every miner: a copy each cost about 5 of its 41–45 ms at 10,000).
    pub fn inspect<T>(&self, device_id: &str, f: impl FnOnce(Option<&DeviceIntent>) -> T) -> T {
        f(self.lock().get(device_id).map(|e| &e.di))
    }

    /// `f(i, desired state)` for the `i`-th of `ids`, under one lock and without copies.
    pub fn with_each<'a, T>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        mut f: impl FnMut(usize, Option<&DeviceIntent>) -> T,
    ) -> Vec<T> {
        let entries = self.lock();
        ids.enumerate()
            .map(|(i, id)| f(i, entries.get(id).map(|e| &e.di)))
            .collect()
    }

    /// Every device's desired state.
    pub fn all(&self) -> Vec<DeviceIntent> {
        self.lock().values().map(|e| e.di.clone()).collect()
    }

    /// Runs `f` over the desired state without copying it.
    pub fn with_all<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &DeviceIntent>) -> T) -> T {
        let entries = self.lock();
        let mut it = entries.values().map(|e| &e.di);
        f(&mut it)
    }

    /// Whether the controller stands behind the device's current intent (renews its lease).
    pub fn endorsed(&self, device_id: &str) -> bool {
        self.lock().get(device_id).is_some_and(|e| e.endorsed)
    }

    /// Stands behind (or stops standing behind) the device's current intent.
    pub fn endorse(&self, device_id: &str, endorsed: bool) {
        if let Some(e) = self.lock().get_mut(device_id) {
            e.endorsed = endorsed;
        }
    }

    /// Every host's endorsed intents, for the lease renewal: one pass over the ledger (a pass
    /// per host was hosts × devices).
    pub fn endorsed_by_host(&self) -> BTreeMap<String, Vec<v1::IntentRef>> {
        let mut by_host: BTreeMap<String, Vec<v1::IntentRef>> = BTreeMap::new();
        for e in self.lock().values().filter(|e| e.endorsed) {
            let refs = match by_host.get_mut(e.di.host_id.as_str()) {
                Some(refs) => refs,
                None => by_host.entry(e.di.host_id.clone()).or_default(),
            };
            refs.push(v1::IntentRef {
                device_id: e.di.intent.device_id.clone(),
                generation: e.di.intent.generation,
            });
        }
        by_host
    }

    /// Issues intents: each at a generation above any the device has had, written to the store
    /// in one transaction before anything is returned to be sent. All or none.
    pub fn issue(
        &self,
        new: Vec<NewIntent>,
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DeviceIntent>, StoreError> {
        let mut entries = self.lock();
        let mut batch = Vec::with_capacity(new.len());
        for n in new {
            let prior = entries.get(&n.device_id).map(|e| &e.di);
            let current = prior.map_or(0, |d| d.intent.generation);
            let setting_before_w = n
                .setting_before_w
                .or_else(|| prior.and_then(|d| d.setting_before_w));
            let generation = current.checked_add(1).ok_or_else(|| StoreError::Corrupt {
                what: format!("intent {}", n.device_id),
                problem: "generation at its maximum".into(),
            })?;
            batch.push(DeviceIntent {
                host_id: n.host_id,
                intent: Intent {
                    device_id: n.device_id,
                    generation,
                    lease_expires_at,
                    target: n.target,
                    reason: n.reason,
                    phase: n.phase,
                    plan_id: n.plan_id,
                },
                issued_at: now,
                before_w: n.before_w,
                status: None,
                setting_before_w,
            });
        }
        self.store.put_intents(&batch)?;
        let mut changed = self.note_lock();
        for di in &batch {
            changed.note(&di.intent.device_id);
            entries.insert(
                di.intent.device_id.clone(),
                Entry {
                    di: di.clone(),
                    endorsed: true,
                },
            );
        }
        Ok(batch)
    }

    /// Reconciles what an agent holds (`held`, validated) with the desired state of its
    /// devices (`devices`: every device id the agent declared).
    pub fn on_hello(
        &self,
        host_id: &str,
        held: &[Intent],
        devices: &[String],
        now: DateTime<Utc>,
    ) -> Result<HelloOutcome, StoreError> {
        let mut out = HelloOutcome::default();
        let mut entries = self.lock();
        let mut adopt = Vec::new();
        let mut reissue = Vec::new();
        let held_by_device: BTreeMap<&str, &Intent> =
            held.iter().map(|i| (i.device_id.as_str(), i)).collect();
        for (device, h) in &held_by_device {
            match entries.get(*device) {
                Some(e) if e.di.intent.generation > h.generation => {
                    out.resend.push(e.di.intent.clone());
                }
                Some(e) if e.di.intent.generation == h.generation => {
                    if e.di.intent.target != h.target {
                        reissue.push(e.di.clone());
                    }
                }
                _ => adopt.push(DeviceIntent {
                    host_id: host_id.to_owned(),
                    intent: (*h).clone(),
                    issued_at: now,
                    before_w: None,
                    status: None,
                    setting_before_w: entries.get(*device).and_then(|e| e.di.setting_before_w),
                }),
            }
        }
        for device in devices {
            if held_by_device.contains_key(device.as_str()) {
                continue;
            }
            if let Some(e) = entries.get(device) {
                out.resend.push(e.di.intent.clone());
            }
        }
        if !adopt.is_empty() {
            self.store.put_intents(&adopt)?;
            let mut changed = self.note_lock();
            for di in adopt {
                changed.note(&di.intent.device_id);
                out.adopted.push(di.intent.clone());
                entries.insert(
                    di.intent.device_id.clone(),
                    Entry {
                        di,
                        endorsed: false,
                    },
                );
            }
        }
        if !reissue.is_empty() {
            let mut batch = Vec::new();
            for mut di in reissue {
                out.conflicts.push(di.intent.device_id.clone());
                di.intent.generation = di.intent.generation.saturating_add(1);
                di.issued_at = now;
                di.status = None;
                batch.push(di);
            }
            self.store.put_intents(&batch)?;
            let mut changed = self.note_lock();
            for di in batch {
                changed.note(&di.intent.device_id);
                out.resend.push(di.intent.clone());
                let endorsed = entries
                    .get(&di.intent.device_id)
                    .is_some_and(|e| e.endorsed);
                entries.insert(di.intent.device_id.clone(), Entry { di, endorsed });
            }
        }
        Ok(out)
    }

    /// Takes a burst of one agent's status reports, in the order sent, and stores every change
    /// in one store transaction: at 10,000 moves a phase brings 20,000 statuses, and one
    /// transaction each kept the controller busy for seconds after the agents were done. One
    /// result per status: a status for another generation than the one held is not an error
    /// (it is history: `Ok(None)`); a status for another host's device is.
    pub fn on_statuses(
        &self,
        host_id: &str,
        statuses: &[v1::IntentStatus],
        now: DateTime<Utc>,
    ) -> Vec<Result<Option<StatusChange>, StatusRefused>> {
        let out: Vec<_> = {
            let mut entries = self.lock();
            statuses
                .iter()
                .map(|s| take_status(&mut entries, host_id, s, now))
                .collect()
        };
        let changes: Vec<(&str, u64, &StatusRecord)> = out
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(Option::as_ref))
            .map(|c| (c.device_id.as_str(), c.generation, &c.status))
            .collect();
        // Noted once the entries hold them: a reader that takes the log before this reads them
        // again at its next look.
        {
            let mut changed = self.note_lock();
            for (device_id, _, _) in &changes {
                changed.note(device_id);
            }
        }
        if !changes.is_empty()
            && let Err(err) = self.store.set_intent_statuses(&changes)
        {
            // The statuses are in memory and the agent re-reports them after a reconnect; a
            // lost status costs a re-confirmation, not an effect.
            tracing::warn!(statuses = changes.len(), error = %err, "Could not store intent statuses");
        }
        out
    }
}

/// One status against the ledger's entries (held locked by the caller): the change it makes, if
/// any. Stores nothing.
fn take_status(
    entries: &mut BTreeMap<String, Entry>,
    host_id: &str,
    s: &v1::IntentStatus,
    now: DateTime<Utc>,
) -> Result<Option<StatusChange>, StatusRefused> {
    let phase = IntentPhase::from_proto(s.phase, "phase").map_err(|e| StatusRefused::Invalid {
        device_id: s.device_id.clone(),
        problem: e.to_string(),
    })?;
    let observed_power_w = s.observed_power_w.filter(|p| p.is_finite());
    let Some(e) = entries.get_mut(&s.device_id) else {
        return Ok(None);
    };
    if e.di.host_id != host_id {
        return Err(StatusRefused::WrongHost {
            device_id: s.device_id.clone(),
            host_id: host_id.to_owned(),
            owner: e.di.host_id.clone(),
        });
    }
    if e.di.intent.generation != s.generation {
        return Ok(None);
    }
    let at =
        s.at.as_ref()
            .and_then(|t| pivot_proto::model::timestamp_from_proto(t, "at").ok())
            .unwrap_or(now);
    let status = StatusRecord {
        phase,
        detail: s.detail.clone(),
        retrying: s.retrying,
        observed_power_w,
        at,
    };
    if e.di.status.as_ref() == Some(&status) {
        return Ok(None);
    }
    e.di.status = Some(status.clone());
    Ok(Some(StatusChange {
        device_id: s.device_id.clone(),
        generation: s.generation,
        plan_id: e.di.intent.plan_id.clone(),
        phase: e.di.intent.phase,
        status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use pivot_proto::model::MinerTarget;

    const SLEEP: Target = Target::Miner(MinerTarget::Sleep);
    const RUN: Target = Target::Miner(MinerTarget::Run {
        power_target_w: None,
    });

    fn ledger() -> (tempfile::TempDir, Arc<dyn Store>, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
        let l = Ledger::load(Arc::clone(&store)).unwrap();
        (dir, store, l)
    }

    fn new(device: &str, target: Target) -> NewIntent {
        NewIntent {
            host_id: "h1".into(),
            device_id: device.into(),
            target,
            reason: "test".into(),
            plan_id: "p1".into(),
            phase: 0,
            before_w: Some(3000.0),
            setting_before_w: None,
        }
    }

    fn held(device: &str, generation: u64, target: Target) -> Intent {
        Intent {
            device_id: device.into(),
            generation,
            lease_expires_at: Utc::now(),
            target,
            reason: String::new(),
            phase: 0,
            plan_id: String::new(),
        }
    }

    fn status(device: &str, generation: u64, phase: IntentPhase) -> v1::IntentStatus {
        v1::IntentStatus {
            device_id: device.into(),
            generation,
            phase: phase.to_proto() as i32,
            ..Default::default()
        }
    }

    #[test]
    fn generations_continue_from_the_highest_seen_and_survive_a_restart() {
        let (_d, store, l) = ledger();
        let now = Utc::now();
        // The agent holds generation 7 from a controller whose store was lost.
        let out = l
            .on_hello("h1", &[held("m1", 7, SLEEP)], &["m1".into()], now)
            .unwrap();
        assert_eq!(out.adopted.len(), 1);
        assert!(!l.endorsed("m1"), "an adopted intent is not endorsed");
        let issued = l.issue(vec![new("m1", RUN)], now, now).unwrap();
        assert_eq!(issued[0].intent.generation, 8);
        assert!(l.endorsed("m1"));
        assert_eq!(l.endorsed_by_host()["h1"][0].generation, 8);
        let l = Ledger::load(store).unwrap();
        assert_eq!(l.get("m1").unwrap().intent.generation, 8);
        assert!(!l.endorsed("m1"), "nothing is endorsed after a restart");
        assert_eq!(
            l.issue(vec![new("m1", SLEEP)], now, now).unwrap()[0]
                .intent
                .generation,
            9
        );
    }

    /// The owner's setting a first trim keeps rides on every later intent of the miner (a sleep,
    /// a wake, a hello's adoption) and survives a restart, so a restore finds it.
    #[test]
    fn a_kept_setting_is_carried_from_intent_to_intent_and_survives_a_restart() {
        let (_d, store, l) = ledger();
        let now = Utc::now();
        let trim = Target::Miner(MinerTarget::Run {
            power_target_w: Some(2000),
        });
        let mut first = new("m1", trim);
        first.setting_before_w = Some(4200.0);
        l.issue(vec![first, new("m2", SLEEP)], now, now).unwrap();
        let issued = l.issue(vec![new("m1", SLEEP)], now, now).unwrap();
        assert_eq!(issued[0].setting_before_w, Some(4200.0));
        assert_eq!(l.get("m2").unwrap().setting_before_w, None);
        // An agent holding a generation the controller never issued: adopted, kept setting and all.
        l.on_hello("h1", &[held("m1", 40, RUN)], &["m1".into()], now)
            .unwrap();
        assert_eq!(l.get("m1").unwrap().intent.generation, 40);
        assert_eq!(l.get("m1").unwrap().setting_before_w, Some(4200.0));
        let l = Ledger::load(store).unwrap();
        assert_eq!(l.get("m1").unwrap().setting_before_w, Some(4200.0));
        let issued = l.issue(vec![new("m1", RUN)], now, now).unwrap();
        assert_eq!(issued[0].setting_before_w, Some(4200.0));
    }

    /// The lease renewal's one pass: each host gets its own endorsed intents and no other's; an
    /// adopted (not endorsed) intent is not renewed.
    #[test]
    fn endorsed_intents_are_grouped_by_their_host() {
        let (_d, _s, l) = ledger();
        let now = Utc::now();
        let mut on_h2 = new("m2", SLEEP);
        on_h2.host_id = "h2".into();
        l.issue(vec![new("m1", SLEEP), on_h2, new("m3", RUN)], now, now)
            .unwrap();
        l.on_hello("h1", &[held("m4", 3, SLEEP)], &["m4".into()], now)
            .unwrap();
        let by_host = l.endorsed_by_host();
        let ids = |h: &str| {
            by_host[h]
                .iter()
                .map(|r| (r.device_id.as_str(), r.generation))
                .collect::<Vec<_>>()
        };
        assert_eq!(by_host.len(), 2);
        assert_eq!(ids("h1"), [("m1", 1), ("m3", 1)]);
        assert_eq!(ids("h2"), [("m2", 1)]);
    }

    /// The executor reads again only the devices the change log names, so every change to a
    /// device's desired state must be in it: an issue, a status, a hello's adoption and
    /// re-issue; a status that changes nothing is not; past the cap it says "everything".
    #[test]
    fn the_change_log_names_every_device_whose_desired_state_changed() {
        let (_d, _s, l) = ledger();
        let now = Utc::now();
        let _ = l.take_changed();
        l.issue(vec![new("m1", SLEEP), new("m2", SLEEP)], now, now)
            .unwrap();
        assert_eq!(
            l.take_changed(),
            ChangedSince::Devices(vec!["m1".into(), "m2".into()])
        );
        assert_eq!(l.take_changed(), ChangedSince::Devices(vec![]));
        let confirmed = status("m2", 1, IntentPhase::Confirmed);
        l.on_statuses(
            "h1",
            &[confirmed.clone(), status("m9", 1, IntentPhase::Confirmed)],
            now,
        );
        assert_eq!(l.take_changed(), ChangedSince::Devices(vec!["m2".into()]));
        l.on_statuses("h1", &[confirmed], now);
        assert_eq!(
            l.take_changed(),
            ChangedSince::Devices(vec![]),
            "the same status again changes nothing"
        );
        l.on_hello(
            "h1",
            &[held("m1", 1, RUN), held("m3", 4, SLEEP)],
            &["m1".into(), "m3".into()],
            now,
        )
        .unwrap();
        assert_eq!(
            l.take_changed(),
            ChangedSince::Devices(vec!["m3".into(), "m1".into()])
        );
        let many: Vec<NewIntent> = (0..=CHANGED_CAP)
            .map(|i| new(&format!("x{i}"), SLEEP))
            .collect();
        l.issue(many, now, now).unwrap();
        assert_eq!(l.take_changed(), ChangedSince::All);
        assert_eq!(l.take_changed(), ChangedSince::Devices(vec![]));
    }

    #[test]
    fn a_hello_gets_what_the_agent_missed_and_conflicts_are_reissued() {
        let (_d, _s, l) = ledger();
        let now = Utc::now();
        l.issue(
            vec![new("m1", SLEEP), new("m2", SLEEP), new("m3", SLEEP)],
            now,
            now,
        )
        .unwrap();
        let out = l
            .on_hello(
                "h1",
                // m1 is current; m2 holds the same generation with another target; m3 is
                // missing (the agent lost its state directory).
                &[held("m1", 1, SLEEP), held("m2", 1, RUN)],
                &["m1".into(), "m2".into(), "m3".into()],
                now,
            )
            .unwrap();
        assert_eq!(out.conflicts, ["m2"]);
        let mut resent: Vec<_> = out
            .resend
            .iter()
            .map(|i| (i.device_id.as_str(), i.generation, i.target))
            .collect();
        resent.sort_by_key(|r| r.0);
        assert_eq!(resent, [("m2", 2, SLEEP), ("m3", 1, SLEEP)]);
        assert!(out.adopted.is_empty());
    }

    /// One status on its own.
    fn on_status(
        l: &Ledger,
        host_id: &str,
        s: &v1::IntentStatus,
        now: DateTime<Utc>,
    ) -> Result<Option<StatusChange>, StatusRefused> {
        l.on_statuses(host_id, std::slice::from_ref(s), now)
            .pop()
            .unwrap()
    }

    #[test]
    fn statuses_are_taken_only_for_the_held_generation_from_its_own_host() {
        let (_d, store, l) = ledger();
        let now = Utc::now();
        l.issue(vec![new("m1", SLEEP)], now, now).unwrap();
        assert_eq!(
            on_status(&l, "h1", &status("m1", 5, IntentPhase::Confirmed), now),
            Ok(None)
        );
        let c = on_status(&l, "h1", &status("m1", 1, IntentPhase::Confirmed), now)
            .unwrap()
            .unwrap();
        assert_eq!(c.status.phase, IntentPhase::Confirmed);
        assert_eq!(c.plan_id, "p1");
        // The same status again changes nothing.
        assert_eq!(
            on_status(&l, "h1", &status("m1", 1, IntentPhase::Confirmed), now),
            Ok(None)
        );
        assert!(matches!(
            on_status(&l, "h2", &status("m1", 1, IntentPhase::Failed), now),
            Err(StatusRefused::WrongHost { .. })
        ));
        assert_eq!(
            store.list_intents().unwrap()[0]
                .status
                .as_ref()
                .unwrap()
                .phase,
            IntentPhase::Confirmed
        );
        let mut bad = status("m1", 1, IntentPhase::Confirmed);
        bad.phase = 99;
        assert!(matches!(
            on_status(&l, "h1", &bad, now),
            Err(StatusRefused::Invalid { .. })
        ));
    }

    #[test]
    fn a_failed_store_write_issues_nothing() {
        let (_d, store, l) = ledger();
        let now = Utc::now();
        // Generation 1 for m1 is already in the store behind the ledger's back.
        store
            .put_intents(&[DeviceIntent {
                host_id: "h1".into(),
                intent: held("m1", 1, SLEEP),
                issued_at: now,
                before_w: None,
                setting_before_w: None,
                status: None,
            }])
            .unwrap();
        assert!(
            l.issue(vec![new("m2", SLEEP), new("m1", RUN)], now, now)
                .is_err()
        );
        assert!(l.get("m2").is_none());
        assert!(l.get("m1").is_none());
    }
}
