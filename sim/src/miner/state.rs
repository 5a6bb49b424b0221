//! The emulated hardware: one miner's mining ⇄ sleeping state machine with power ramps.
//!
//! Nothing ticks: power and hashrate are a function of the time the current ramp started, settled
//! lazily whenever someone looks. That keeps an idle miner at zero CPU.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Dialect, Fault, MinerSpec, Model};

/// What the miner is doing right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Hashing at its target.
    Mining,
    /// Asleep: hashboards off, only the control board draws power.
    Sleeping,
    /// Power rising towards a higher target (waking up, or a raised power target).
    RampingUp,
    /// Power falling towards sleep or a lower target.
    RampingDown,
    /// Restarting: not answering on any port.
    Rebooting,
}

/// A point-in-time view of the emulated hardware.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Firmware dialect.
    pub dialect: Dialect,
    /// Model.
    pub model: Model,
    /// Current state.
    pub state: RunState,
    /// Whether the miner has been told to sleep (the state may still be ramping down).
    pub sleep_requested: bool,
    /// Power at the wall, watts.
    pub power_w: f64,
    /// Hashrate, TH/s.
    pub hashrate_ths: f64,
    /// Power target in watts, where one was set (None: stock / nameplate).
    pub power_target_w: Option<u32>,
    /// Antminer `bitmain-work-mode` the miner runs when awake: 0 normal, 2 high, 3 low.
    pub work_mode: u8,
    /// Seconds since the last (re)boot.
    pub uptime_s: u64,
    /// Reboots since start.
    pub reboots: u32,
}

/// A linear ramp of power and hashrate between two settings.
#[derive(Clone, Copy, Debug)]
struct Ramp {
    from_w: f64,
    from_ths: f64,
    to_w: f64,
    to_ths: f64,
    start: Instant,
    dur: Duration,
}

impl Ramp {
    fn flat(w: f64, ths: f64, now: Instant) -> Ramp {
        Ramp {
            from_w: w,
            from_ths: ths,
            to_w: w,
            to_ths: ths,
            start: now,
            dur: Duration::ZERO,
        }
    }

    fn fraction(&self, now: Instant) -> f64 {
        if self.dur.is_zero() {
            return 1.0;
        }
        let done = now.saturating_duration_since(self.start).as_secs_f64();
        (done / self.dur.as_secs_f64()).clamp(0.0, 1.0)
    }

    fn at(&self, now: Instant) -> (f64, f64) {
        let f = self.fraction(now);
        (
            self.from_w + (self.to_w - self.from_w) * f,
            self.from_ths + (self.to_ths - self.from_ths) * f,
        )
    }

    fn done(&self, now: Instant) -> bool {
        self.fraction(now) >= 1.0
    }
}

/// A LuxOS session: one at a time per miner.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub id: String,
    pub last_used: Instant,
}

/// The mutable part of a miner, behind one mutex.
#[derive(Debug)]
pub(crate) struct Inner {
    pub awake: bool,
    pub power_target_w: Option<u32>,
    pub work_mode: u8,
    ramp: Ramp,
    pub faults: Vec<Fault>,
    pub booted: Instant,
    rebooting_until: Option<Instant>,
    pub reboots: u32,
    /// LuxOS session, Braiins or Whatsminer v2 tokens.
    pub session: Option<Session>,
    pub tokens: Vec<(String, Instant)>,
    /// Whatsminer v2: (password, md5crypt key) computed last. The key is a thousand MD5 rounds
    /// and the firmware derives it once; the emulator does too, not on every command.
    pub wm_key: Option<(String, String)>,
    /// LuxOS: the active profile name and whether ATM is enabled.
    pub profile: String,
    pub atm_enabled: bool,
    /// A counter for request ids, salts and session ids.
    pub counter: u32,
}

/// One miner: its fixed spec and its mutable state.
#[derive(Debug)]
pub(crate) struct Core {
    pub spec: MinerSpec,
    inner: Mutex<Inner>,
    shutdown: watch::Sender<bool>,
}

/// A cheap, cloneable handle on one emulated miner: read what the hardware does, inject faults,
/// reboot it, stop it.
#[derive(Clone, Debug)]
pub struct MinerHandle {
    core: Arc<Core>,
}

impl MinerHandle {
    pub(crate) fn new(spec: MinerSpec) -> MinerHandle {
        let now = Instant::now();
        let (shutdown, _) = watch::channel(false);
        let awake = !spec.start_sleeping;
        let mut inner = Inner {
            awake,
            power_target_w: None,
            work_mode: 0,
            ramp: Ramp::flat(0.0, 0.0, now),
            faults: spec.faults.clone(),
            booted: now,
            rebooting_until: None,
            reboots: 0,
            session: None,
            tokens: Vec::new(),
            wm_key: None,
            profile: "default".to_owned(),
            atm_enabled: true,
            counter: spec.serial.wrapping_mul(7919),
        };
        let (w, ths) = Core::setpoint(&spec, &inner);
        inner.ramp = Ramp::flat(w, ths, now);
        MinerHandle {
            core: Arc::new(Core {
                spec,
                inner: Mutex::new(inner),
                shutdown,
            }),
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.core.spec.dialect
    }

    /// The model.
    pub fn model(&self) -> Model {
        self.core.spec.model
    }

    /// What the hardware is doing now.
    pub fn snapshot(&self) -> Snapshot {
        self.core.snapshot()
    }

    /// Replace the active faults (an empty list heals the miner).
    pub fn set_faults(&self, faults: Vec<Fault>) {
        self.core.lock().faults = faults;
    }

    /// The active faults.
    pub fn faults(&self) -> Vec<Fault> {
        self.core.lock().faults.clone()
    }

    /// Put the hardware to sleep, as the dialect's sleep command would.
    pub fn sleep(&self) {
        self.core.set_awake(false);
    }

    /// Wake the hardware, as the dialect's wake command would.
    pub fn wake(&self) {
        self.core.set_awake(true);
    }

    /// Set or clear (None: nameplate) the power target.
    pub fn set_power_target(&self, watts: Option<u32>) {
        self.core.set_power_target(watts);
    }

    /// LuxOS: select a profile by name (`"450MHz"`, the stock `"default"`), as an owner's
    /// `profileset` would. False if the miner has no such profile.
    pub fn set_profile(&self, name: &str) -> bool {
        super::luxos_status::select_profile(&self.core, name).is_some()
    }

    /// LuxOS: the active profile's name.
    pub fn profile(&self) -> String {
        self.core.lock().profile.clone()
    }

    /// Restart the miner: it stops answering for [`super::Timing::reboot`], loses a sleep that does
    /// not persist on its dialect, then ramps back up.
    pub fn reboot(&self) {
        self.core.reboot();
    }

    /// Stop every listener and open connection of this miner.
    pub fn shutdown(&self) {
        self.core.shutdown.send_replace(true);
    }
}

impl Core {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A receiver that turns true when the miner is shut down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The power and hashrate the miner heads to in its current setting.
    fn setpoint(spec: &MinerSpec, inner: &Inner) -> (f64, f64) {
        let model = &spec.model;
        let standby = standby_w(model);
        if !inner.awake {
            return (standby, 0.0);
        }
        let nameplate = f64::from(model.nameplate_w);
        let target = match inner.power_target_w {
            Some(w) => f64::from(w),
            None => match inner.work_mode {
                2 => nameplate * 1.1,
                3 => nameplate * 0.75,
                _ => nameplate,
            },
        };
        // Hashrate scales with power; a little better than linear below nameplate (lower voltage).
        let ratio = target / nameplate;
        let ths = model.nameplate_ths * ratio.powf(0.9);
        (target, ths)
    }

    /// Settle lazy transitions (end of a reboot, LuxOS session expiry by the credentials' clock,
    /// [`super::auth_clock`]). Call with the lock held.
    pub fn settle(&self, inner: &mut Inner, now: Instant) {
        if let Some(until) = inner.rebooting_until
            && now >= until
        {
            inner.rebooting_until = None;
            inner.booted = until;
            let (w, ths) = Core::setpoint(&self.spec, inner);
            let standby = standby_w(&self.spec.model);
            inner.ramp = Ramp {
                from_w: standby,
                from_ths: 0.0,
                to_w: w,
                to_ths: ths,
                start: until,
                dur: if inner.awake {
                    self.spec.timing.ramp_up
                } else {
                    Duration::ZERO
                },
            };
        }
        if let Some(s) = &inner.session
            && super::auth_clock::instant().saturating_duration_since(s.last_used)
                >= self.spec.timing.session_idle
        {
            inner.session = None;
        }
    }

    /// Start a ramp from wherever the miner is now to its current setpoint.
    fn retarget(&self, inner: &mut Inner, now: Instant) {
        self.settle(inner, now);
        if inner.rebooting_until.is_some() {
            return; // settle() ramps to the new setpoint when the reboot ends
        }
        let (from_w, from_ths) = inner.ramp.at(now);
        let (to_w, to_ths) = Core::setpoint(&self.spec, inner);
        let dur = if to_w > from_w + 0.5 {
            self.spec.timing.ramp_up
        } else if to_w < from_w - 0.5 {
            self.spec.timing.ramp_down
        } else {
            Duration::ZERO
        };
        inner.ramp = Ramp {
            from_w,
            from_ths,
            to_w,
            to_ths,
            start: now,
            dur,
        };
    }

    pub fn set_awake(&self, awake: bool) {
        let mut inner = self.lock();
        if inner.awake != awake {
            inner.awake = awake;
            self.retarget(&mut inner, Instant::now());
        }
    }

    pub fn set_power_target(&self, watts: Option<u32>) {
        let mut inner = self.lock();
        inner.power_target_w = watts;
        self.retarget(&mut inner, Instant::now());
    }

    pub fn set_work_mode(&self, mode: u8) {
        let mut inner = self.lock();
        inner.work_mode = mode;
        self.retarget(&mut inner, Instant::now());
    }

    pub fn reboot(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        self.settle(&mut inner, now);
        if !self.spec.dialect.sleep_persists() {
            inner.awake = true;
        }
        inner.session = None;
        inner.tokens.clear();
        inner.reboots = inner.reboots.saturating_add(1);
        inner.rebooting_until = Some(now + self.spec.timing.reboot);
        inner.ramp = Ramp::flat(0.0, 0.0, now);
    }

    /// Whether the miner is restarting (it answers nothing then).
    pub fn is_rebooting(&self) -> bool {
        let mut inner = self.lock();
        self.settle(&mut inner, Instant::now());
        inner.rebooting_until.is_some()
    }

    /// The active faults (cloned: the list is short).
    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.clone()
    }

    pub fn has_fault(&self, fault: &Fault) -> bool {
        self.lock().faults.contains(fault)
    }

    /// The `Description` of cgminer-style `STATUS` objects.
    pub fn description(&self) -> String {
        match self.spec.dialect {
            Dialect::Antminer => "cgminer 1.0.0".to_owned(),
            Dialect::Braiins => "BOSminer bosminer-plus-tuner 1.0.0".to_owned(),
            Dialect::Luxos => format!("LUXminer {}", super::luxos_status::LUXMINER),
            Dialect::WhatsminerV2 | Dialect::WhatsminerV3 => "btminer".to_owned(),
            Dialect::Bitaxe => "AxeOS".to_owned(),
        }
    }

    /// A fresh number for ids and salts.
    pub fn next_counter(&self) -> u32 {
        let mut inner = self.lock();
        inner.counter = inner.counter.wrapping_add(1);
        inner.counter
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let mut inner = self.lock();
        self.settle(&mut inner, now);
        self.snapshot_locked(&inner, now)
    }

    pub fn snapshot_locked(&self, inner: &Inner, now: Instant) -> Snapshot {
        let (power_w, hashrate_ths) = inner.ramp.at(now);
        let state = if inner.rebooting_until.is_some() {
            RunState::Rebooting
        } else if !inner.ramp.done(now) {
            if inner.ramp.to_w >= inner.ramp.from_w {
                RunState::RampingUp
            } else {
                RunState::RampingDown
            }
        } else if inner.awake {
            RunState::Mining
        } else {
            RunState::Sleeping
        };
        Snapshot {
            dialect: self.spec.dialect,
            model: self.spec.model,
            state,
            sleep_requested: !inner.awake,
            power_w,
            hashrate_ths,
            power_target_w: inner.power_target_w,
            work_mode: inner.work_mode,
            uptime_s: now.saturating_duration_since(inner.booted).as_secs(),
            reboots: inner.reboots,
        }
    }
}

/// What the control board and fans draw while the hashboards are off.
pub(crate) fn standby_w(model: &Model) -> f64 {
    (f64::from(model.nameplate_w) * 0.005).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::miner::Timing;

    #[tokio::test(start_paused = true)]
    async fn sleep_ramps_down_and_wake_ramps_up() {
        let h = MinerHandle::new(MinerSpec::new(Dialect::Braiins).timing(Timing::realistic()));
        let s = h.snapshot();
        assert_eq!(s.state, RunState::Mining);
        assert!((s.power_w - 3500.0).abs() < 1e-6);
        h.sleep();
        tokio::time::advance(Duration::from_secs(4)).await;
        let s = h.snapshot();
        assert_eq!(s.state, RunState::RampingDown);
        assert!(s.power_w < 3500.0 && s.power_w > 100.0);
        tokio::time::advance(Duration::from_secs(5)).await;
        let s = h.snapshot();
        assert_eq!(s.state, RunState::Sleeping);
        assert_eq!(s.hashrate_ths, 0.0);
        h.wake();
        tokio::time::advance(Duration::from_secs(46)).await;
        assert_eq!(h.snapshot().state, RunState::Mining);
    }

    #[tokio::test(start_paused = true)]
    async fn reboot_loses_a_braiins_pause_but_not_a_luxos_curtail() {
        for (dialect, asleep_after) in [(Dialect::Braiins, false), (Dialect::Luxos, true)] {
            let h = MinerHandle::new(MinerSpec::new(dialect).timing(Timing::fast()));
            h.sleep();
            h.reboot();
            assert_eq!(h.snapshot().state, RunState::Rebooting);
            tokio::time::advance(Duration::from_secs(2)).await;
            let s = h.snapshot();
            assert_eq!(s.sleep_requested, asleep_after, "{dialect}");
            assert_eq!(s.reboots, 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn power_target_scales_hashrate() {
        let h = MinerHandle::new(MinerSpec::new(Dialect::Luxos).timing(Timing::fast()));
        h.set_power_target(Some(2500));
        tokio::time::advance(Duration::from_secs(1)).await;
        let s = h.snapshot();
        assert!((s.power_w - 2500.0).abs() < 1e-6);
        assert!(s.hashrate_ths < 200.0 && s.hashrate_ths > 140.0);
    }
}
