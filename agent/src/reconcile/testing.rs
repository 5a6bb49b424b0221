//! Test support for the reconciler: a wall clock each test owns, an in-memory store that can be
//! told to fail, and a small fake miner.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pivot_proto::model::{MinerState, MinerTarget, Target};

use super::{
    Actuator, ApplyError, HeldRecord, IntentStore, Limits, Observed, RaiseGuard, WallClock,
};
use crate::state::StateError;

/// A wall clock that one test owns and moves.
#[derive(Clone)]
pub struct TestClock {
    start: DateTime<Utc>,
    offset_ms: Arc<AtomicI64>,
}

impl TestClock {
    pub fn new() -> Self {
        Self {
            start: Utc::now(),
            offset_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.start + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    pub fn advance_s(&self, s: i64) {
        self.offset_ms.fetch_add(s * 1000, Ordering::SeqCst);
    }

    pub fn wall(&self) -> WallClock {
        let c = self.clone();
        Arc::new(move || c.now())
    }
}

/// Intents kept in memory; `fail` makes every save fail (a full disk).
#[derive(Default)]
pub struct MemStore {
    pub saved: Mutex<BTreeMap<String, HeldRecord>>,
    pub fail: AtomicBool,
    pub saves: AtomicUsize,
}

impl IntentStore for MemStore {
    fn load(&self) -> Result<BTreeMap<String, HeldRecord>, StateError> {
        Ok(self.saved.lock().unwrap().clone())
    }

    fn save(&self, records: &[&HeldRecord]) -> Result<(), StateError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StateError::Io {
                path: "mem/intents.json".into(),
                source: std::io::Error::other("no space left on device"),
            });
        }
        self.saves.fetch_add(1, Ordering::SeqCst);
        *self.saved.lock().unwrap() = records
            .iter()
            .map(|r| (r.intent.device_id.clone(), (*r).clone()))
            .collect();
        Ok(())
    }
}

/// A miner that sleeps and wakes but takes no power target.
pub fn miner_limits(nameplate_power_w: f64, nameplate_hashrate_ths: f64) -> Limits {
    Limits::Miner {
        can_sleep: true,
        power_target: false,
        power_target_min_w: None,
        power_target_max_w: None,
        power_target_steps_w: Vec::new(),
        nameplate_power_w: Some(nameplate_power_w),
        nameplate_hashrate_ths: Some(nameplate_hashrate_ths),
    }
}

/// A miner whose state is a variable: sleeping at 20 W or mining at 3000 W, 100 TH/s. A wake
/// asks the guard first, as real actuators do.
#[derive(Default)]
pub struct FakeMiner {
    pub asleep: Mutex<bool>,
    pub calls: AtomicUsize,
}

impl FakeMiner {
    pub fn observed(&self) -> Observed {
        miner_showing(*self.asleep.lock().unwrap())
    }
}

/// What a fake miner shows asleep or mining.
pub fn miner_showing(asleep: bool) -> Observed {
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

#[async_trait]
impl Actuator for FakeMiner {
    async fn apply(&self, target: &Target, guard: &RaiseGuard) -> Result<Observed, ApplyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let sleep = matches!(target, Target::Miner(MinerTarget::Sleep));
        if !sleep && *self.asleep.lock().unwrap() {
            guard.check("wake the miner")?;
        }
        *self.asleep.lock().unwrap() = sleep;
        Ok(self.observed())
    }
}
