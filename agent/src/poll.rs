//! Polling: every miner read each interval, `concurrency` at a time, each bounded by its own
//! deadline so one slow, hung or dead miner never delays the rest. The latest reading and the
//! health of every device live in [`Observations`], which telemetry and `/metrics` read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

use crate::inventory::{MinerSlot, observed_miner};
use crate::miner::{MinerError, Reading};
use crate::reconcile::Reconciler;

/// Per-device health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub last_seen: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

/// One miner's latest poll.
#[derive(Debug, Clone)]
pub struct MinerStatus {
    pub reading: Reading,
    pub at: DateTime<Utc>,
    pub health: Health,
}

/// Statistics of the last sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SweepStats {
    pub miners: usize,
    pub reachable: usize,
    pub duration: Duration,
    pub completed_at: Option<DateTime<Utc>>,
    pub sweeps_total: u64,
}

/// The latest of everything polled.
#[derive(Debug, Default)]
pub struct Observations {
    pub miners: RwLock<BTreeMap<String, MinerStatus>>,
    pub sweep: RwLock<SweepStats>,
}

impl Observations {
    /// Runs `f` on the latest miner statuses without copying them.
    pub fn with_miners<T>(&self, f: impl FnOnce(&BTreeMap<String, MinerStatus>) -> T) -> T {
        f(&self
            .miners
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn sweep(&self) -> SweepStats {
        *self
            .sweep
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads one miner, never taking longer than `deadline`.
pub async fn read_one(slot: &MinerSlot, deadline: Duration) -> Reading {
    // The address is only needed when the read fails: no copy of it per read.
    let addr = slot.driver.addr();
    match tokio::time::timeout(deadline, slot.driver.read()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Reading::failed(addr, slot.identity.dialect, &e),
        Err(_) => Reading::failed(
            addr,
            slot.identity.dialect,
            &MinerError::Timeout {
                addr: addr.to_string(),
                during: "poll".into(),
                after: deadline,
            },
        ),
    }
}

/// Reads every miner once, `concurrency` at a time; results in the order they complete.
pub async fn sweep(
    slots: &Arc<Vec<MinerSlot>>,
    concurrency: usize,
    deadline: Duration,
) -> Vec<(String, Reading)> {
    futures::stream::iter(0..slots.len())
        .map(|i| {
            let slots = Arc::clone(slots);
            async move {
                let slot = &slots[i];
                (slot.device_id.clone(), read_one(slot, deadline).await)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// Records a sweep's readings and hands them to the reconciler.
pub fn record(
    obs: &Observations,
    reconciler: Option<&Arc<Reconciler>>,
    readings: Vec<(String, Reading)>,
    took: Duration,
) {
    let now = Utc::now();
    let mut reachable = 0;
    let mut for_reconciler = Vec::with_capacity(readings.len());
    {
        let mut miners = obs
            .miners
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, reading) in readings {
            let ok = reading.reachable && reading.error.is_none();
            let entry = miners.entry(id.clone()).or_insert_with(|| MinerStatus {
                reading: reading.clone(),
                at: now,
                health: Health::default(),
            });
            if ok {
                reachable += 1;
                entry.health.last_seen = Some(now);
                entry.health.consecutive_failures = 0;
            } else {
                entry.health.consecutive_failures += 1;
                entry.health.last_error = reading.error.clone();
            }
            for_reconciler.push((id, observed_miner(&reading)));
            entry.reading = reading;
            entry.at = now;
        }
    }
    let total = for_reconciler.len();
    {
        let mut s = obs
            .sweep
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.miners = total;
        s.reachable = reachable;
        s.duration = took;
        s.completed_at = Some(now);
        s.sweeps_total += 1;
    }
    debug!(
        miners = total,
        reachable,
        took_ms = took.as_millis() as u64,
        "Sweep done"
    );
    if let Some(r) = reconciler {
        r.observe_all(for_reconciler);
    }
}

/// Polls the miners of `set` every `interval` until the task is dropped.
pub async fn run(
    set: Arc<crate::inventory::MinerSet>,
    obs: Arc<Observations>,
    reconciler: Arc<Reconciler>,
    interval: Duration,
    concurrency: usize,
    deadline: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let start = Instant::now();
        let slots = set.slots();
        let readings = sweep(&slots, concurrency, deadline).await;
        record(&obs, Some(&reconciler), readings, start.elapsed());
    }
}
