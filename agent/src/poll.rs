//! Polling: every miner read each interval, `concurrency` at a time, each bounded by its own
//! deadline so one slow, hung or dead miner never delays the rest. The latest reading and the
//! health of every device live in [`Observations`], which telemetry and `/metrics` read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::inventory::{MinerSlot, observed_miner};
use crate::miner::{MinerError, Reading};
use crate::reconcile::{Observation, Reconciler};

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
    /// When the read that gave `reading` started (what the controller orders it by).
    pub at: DateTime<Utc>,
    pub health: Health,
    /// The model it last named: kept while it is unreachable, so its series keep their labels.
    pub model: Option<String>,
}

/// One miner's reading and the instant the read started (what the reading is stamped with: a
/// read that started before a driver call finished is older than that call's read-back).
pub type Read = (String, Reading, Instant);

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
        Ok(Ok(r)) => r.checked(),
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

/// Reads every miner once, `concurrency` at a time; results in the order they complete. A miner
/// that a control call read less than `fresh` ago is not read again: that reading (a whole
/// read, stamped when the call ended) is its poll. A miner a control call is on now is waited
/// for (`deadline` at most), and that call's reading taken the same way.
pub async fn sweep(
    slots: &Arc<Vec<MinerSlot>>,
    concurrency: usize,
    deadline: Duration,
    fresh: Duration,
) -> Vec<Read> {
    futures::stream::iter(0..slots.len())
        .map(|i| {
            let slots = Arc::clone(slots);
            async move {
                let slot = &slots[i];
                // A control call on the miner now ends with a reading of it: wait for that one
                // (the read's deadline at most) rather than read in the middle of the command.
                slot.control_read.calls_ended(deadline).await;
                if let Some((reading, at)) = slot.control_read.take_within(fresh) {
                    return (slot.device_id.clone(), reading, at);
                }
                let started = Instant::now();
                (
                    slot.device_id.clone(),
                    read_one(slot, deadline).await,
                    started,
                )
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// Records a sweep's readings and hands them to the reconciler. A miner that stops answering,
/// or answers again, is logged once, at the change.
pub fn record(
    obs: &Observations,
    reconciler: Option<&Arc<Reconciler>>,
    readings: Vec<Read>,
    took: Duration,
) {
    let now = Utc::now();
    let clock = Instant::now();
    let mut reachable = 0;
    let mut for_reconciler = Vec::with_capacity(readings.len());
    {
        let mut miners = obs
            .miners
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, reading, started) in readings {
            // Stamped when its read started, not when the sweep ended: under load a sweep takes
            // seconds, and a reading that left before a wake but is stamped after the wake's
            // read-back would pass for newer than that confirmation — the controller then counted
            // a woken miner as asleep (or ramping) until the next sweep.
            let at = chrono::Duration::from_std(clock.saturating_duration_since(started))
                .map_or(now, |age| now - age);
            let ok = reading.reachable && reading.error.is_none();
            let entry = miners.entry(id.clone()).or_insert_with(|| MinerStatus {
                reading: reading.clone(),
                at,
                health: Health::default(),
                model: None,
            });
            if ok {
                reachable += 1;
                if entry.health.consecutive_failures > 0 {
                    info!(miner = %reading.addr, device = %id, after_failures = entry.health.consecutive_failures, "Miner answers again");
                }
                entry.health.last_seen = Some(now);
                entry.health.consecutive_failures = 0;
            } else {
                if entry.health.consecutive_failures == 0 {
                    warn!(miner = %reading.addr, device = %id, error = reading.error.as_deref().unwrap_or("unreachable"), "Miner stopped answering; it counts as unseen until it does");
                }
                entry.health.consecutive_failures += 1;
                entry.health.last_error = reading.error.clone();
            }
            if reading.model.is_some() {
                entry.model.clone_from(&reading.model);
            }
            for_reconciler.push((
                id,
                Observation {
                    taken_at: started,
                    observed: observed_miner(&reading),
                },
            ));
            entry.reading = reading;
            entry.at = at;
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
        took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
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
        // Half an interval: a miner is read at least every interval and a half.
        let readings = sweep(&slots, concurrency, deadline, interval / 2).await;
        let from_calls = readings.iter().filter(|(_, _, at)| *at < start).count();
        debug!(
            from_calls,
            "Readings that control calls took stood in for polls"
        );
        record(&obs, Some(&reconciler), readings, start.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::miner::MinerAddr;
    use pivot_proto::model::{MinerDialect, MinerState};
    use std::io::Write;
    use std::sync::Mutex;

    /// Log lines written while `f` runs.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn mining(addr: &MinerAddr) -> Reading {
        let mut r = Reading::empty(addr, MinerDialect::Luxos);
        r.state = MinerState::Mining;
        r.hashrate_ths = Some(200.0);
        r.model = Some("Antminer S21".into());
        r
    }

    /// A sweep's reading is stamped when its read started: one that left 5 s before the sweep
    /// was recorded (before a wake confirmed meanwhile, say) is not passed off as newer.
    #[test]
    fn a_reading_is_stamped_when_its_read_started_not_when_the_sweep_ended() {
        let obs = Observations::default();
        let addr = MinerAddr::new("10.0.0.8");
        let before = Utc::now();
        let left = Instant::now().checked_sub(Duration::from_secs(5)).unwrap();
        let read = vec![("miner/10.0.0.8".to_owned(), mining(&addr), left)];
        record(&obs, None, read, Duration::from_secs(5));
        let after = Utc::now();
        obs.with_miners(|m| {
            let at = m["miner/10.0.0.8"].at;
            assert!(
                at >= before - chrono::Duration::seconds(5)
                    && at <= after - chrono::Duration::milliseconds(4_900),
                "stamped {at}; the read left 5 s before a moment between {before} and {after}"
            );
        });
    }

    #[test]
    fn a_miner_going_away_and_coming_back_is_logged_once_each_and_keeps_its_model() {
        let obs = Observations::default();
        let addr = MinerAddr::new("10.0.0.7");
        let gone = Reading::failed(
            &addr,
            MinerDialect::Luxos,
            &MinerError::Refused {
                addr: addr.to_string(),
                port: 4028,
            },
        );
        let t = Instant::now();
        let read = |r: &Reading| vec![("miner/10.0.0.7".to_owned(), r.clone(), t)];
        let logs = logs_of(|| {
            record(&obs, None, read(&mining(&addr)), Duration::ZERO);
            record(&obs, None, read(&gone), Duration::ZERO);
            record(&obs, None, read(&gone), Duration::ZERO);
            record(&obs, None, read(&mining(&addr)), Duration::ZERO);
        });
        assert_eq!(logs.matches("Miner stopped answering").count(), 1, "{logs}");
        assert!(logs.contains("connection refused"), "{logs}");
        assert_eq!(logs.matches("Miner answers again").count(), 1, "{logs}");
        obs.with_miners(|m| {
            let s = &m["miner/10.0.0.7"];
            assert_eq!(s.model.as_deref(), Some("Antminer S21"));
            assert_eq!(s.health.consecutive_failures, 0);
        });
        // While it is away its series keep their model label (no new series).
        record(&obs, None, read(&gone), Duration::ZERO);
        obs.with_miners(|m| {
            assert_eq!(m["miner/10.0.0.7"].model.as_deref(), Some("Antminer S21"));
        });
    }
}
