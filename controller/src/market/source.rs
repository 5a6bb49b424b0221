//! The seam every market input is read through, and the two sources every input has: a fixed
//! value and a trace replay.
//!
//! One trait, instantiated per input: `MarketSource<Hashprice>`, `MarketSource<EnergyPrice>`,
//! `MarketSource<AiValue>`, `MarketSource<AiDemand>`. Real sources (mempool, bitcoind, ERCOT,
//! feeds, and later Slurm and Kubernetes for AI demand) implement it for their input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::error::{Origin, SourceError, SourceErrorKind};
use super::reading::{AiDemand, AiValue, EnergyPrice, GpuWant, Hashprice, Reading};
use crate::trace::{Trace, TraceRow};

/// A source of one market input.
#[async_trait]
pub trait MarketSource<V>: Send {
    /// What it is and where it reads from, for logs and status.
    fn origin(&self) -> &Origin;

    /// One reading. `now` is the controller's time; the reading's own time may be earlier
    /// (an ERCOT interval's start, a price's timestamp). Plausibility and age are checked by
    /// the caller, the same for every source.
    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<V>, SourceError>;
}

/// A value from configuration; always current.
#[derive(Debug, Clone)]
pub struct Fixed<V> {
    value: V,
    origin: Origin,
}

impl<V> Fixed<V> {
    pub fn new(value: V) -> Self {
        Self {
            value,
            origin: Origin::new("fixed", "(config)"),
        }
    }
}

#[async_trait]
impl<V: Clone + Send + Sync> MarketSource<V> for Fixed<V> {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<V>, SourceError> {
        Ok(Reading {
            value: self.value.clone(),
            at: now,
            source: self.origin.to_string(),
        })
    }
}

/// Maps the controller's time onto a trace's time, for replaying a trace as if it were live,
/// faster than real time if wanted: trace time = trace start + offset + (now − wall start) ×
/// speed, looped over the trace's length when `repeat` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayClock {
    pub wall_start: DateTime<Utc>,
    /// Trace time at `wall_start`.
    pub trace_start: DateTime<Utc>,
    pub speed: f64,
    /// Loop over this span starting at `trace_start`.
    pub repeat_every: Option<Duration>,
}

/// Longest replay span in milliseconds we compute with (about 31,000 years): keeps f64 → i64
/// conversions exact and in range.
const MAX_REPLAY_MS: f64 = 1e15;

impl ReplayClock {
    pub fn trace_time(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let elapsed_ms = (now - self.wall_start).num_milliseconds().max(0);
        // i64 → f64 loses nothing below 2^53 ms; speed is validated finite and positive.
        let scaled = (elapsed_ms as f64 * self.speed).clamp(0.0, MAX_REPLAY_MS);
        let mut ms = scaled.round() as i64; // in 0..=1e15 by the clamp: exact and in range
        if let Some(span) = self.repeat_every {
            let span_ms = span.num_milliseconds();
            if span_ms > 0 {
                ms %= span_ms;
            }
        }
        self.trace_start + Duration::milliseconds(ms)
    }
}

/// `source = "trace"`: replay a TRACE.csv column (docs/formats.md), for the simulated site
/// and demos: trace time = first row + `start_offset_s` + (now − controller start) × `speed`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    pub file: PathBuf,
    #[serde(default)]
    pub start_offset_s: u64,
    #[serde(default = "one")]
    pub speed: f64,
    /// Start again from the offset when the trace ends (otherwise the input goes stale).
    #[serde(default)]
    pub repeat: bool,
}

fn one() -> f64 {
    1.0
}

/// Largest start offset accepted, seconds.
pub const MAX_START_OFFSET_S: u64 = 100 * 366 * 86_400;

/// Fastest replay accepted: a year of trace in about half a minute.
pub const MAX_REPLAY_SPEED: f64 = 1e6;

impl TraceConfig {
    /// Checks what needs no I/O; errors name the key under `key`.
    pub fn validate(&self, key: &str) -> Result<(), (String, String)> {
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= MAX_REPLAY_SPEED) {
            return Err((
                format!("{key}.speed"),
                format!(
                    "must be above 0 and at most {MAX_REPLAY_SPEED}, got {}",
                    self.speed
                ),
            ));
        }
        if self.start_offset_s > MAX_START_OFFSET_S {
            return Err((
                format!("{key}.start_offset_s"),
                format!(
                    "must be at most {MAX_START_OFFSET_S} (100 years), got {}",
                    self.start_offset_s
                ),
            ));
        }
        if self.file.as_os_str().is_empty() {
            return Err((format!("{key}.file"), "must name a TRACE.csv file".into()));
        }
        Ok(())
    }

    /// The replay clock for `trace`, started at `wall_start`.
    pub fn clock(&self, trace: &Trace, wall_start: DateTime<Utc>) -> ReplayClock {
        // validate() bounds the offset, so neither fallback is taken for a checked config.
        let offset = i64::try_from(self.start_offset_s)
            .ok()
            .and_then(Duration::try_seconds)
            .unwrap_or_default();
        let trace_start = trace
            .start()
            .checked_add_signed(offset)
            .unwrap_or(trace.start());
        ReplayClock {
            wall_start,
            trace_start,
            speed: self.speed,
            repeat_every: self
                .repeat
                .then(|| trace.end() - trace_start)
                .filter(|d| *d > Duration::zero()),
        }
    }
}

/// Replays one column of a trace.
pub struct TraceReplay<V> {
    trace: Arc<Trace>,
    clock: ReplayClock,
    pick: fn(&TraceRow) -> V,
    origin: Origin,
}

impl<V> TraceReplay<V> {
    pub fn new(
        trace: Arc<Trace>,
        path: &Path,
        clock: ReplayClock,
        pick: fn(&TraceRow) -> V,
    ) -> Self {
        Self {
            trace,
            clock,
            pick,
            origin: Origin::new("trace", path.display().to_string()),
        }
    }
}

#[async_trait]
impl<V: Send> MarketSource<V> for TraceReplay<V> {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<V>, SourceError> {
        let t = self.clock.trace_time(now);
        let row = self.trace.at(t).ok_or_else(|| {
            SourceError::new(
                &self.origin,
                SourceErrorKind::NoValue {
                    detail: format!(
                        "trace time {t} is outside the trace ({} to {}); set repeat = true to loop it",
                        self.trace.start(),
                        self.trace.end()
                    ),
                },
            )
        })?;
        // The row in force is the value now, by the replay's definition.
        Ok(Reading {
            value: (self.pick)(row),
            at: now,
            source: format!("{} at trace time {t}", self.origin),
        })
    }
}

pub fn hashprice_of(row: &TraceRow) -> Hashprice {
    Hashprice::only(row.hashprice_usd_per_ph_day)
}

pub fn energy_of(row: &TraceRow) -> EnergyPrice {
    EnergyPrice {
        usd_per_mwh: row.energy_usd_per_mwh,
    }
}

pub fn ai_value_of(row: &TraceRow) -> AiValue {
    AiValue {
        usd_per_gpu_hour: row.ai_usd_per_gpu_hour,
    }
}

pub fn ai_demand_of(row: &TraceRow) -> AiDemand {
    AiDemand::wanted(row.ai_gpu_demand.map_or(GpuWant::All, GpuWant::Gpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const TRACE: &str = "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,ai_gpu_demand\n\
        2026-06-01T00:00:00Z,45,30,2.0,\n\
        2026-06-01T01:00:00Z,44,-5,2.5,16\n";

    #[test]
    fn accelerated_replay_maps_wall_time_onto_trace_time() {
        let clock = ReplayClock {
            wall_start: at("2030-01-01T00:00:00Z"),
            trace_start: at("2026-06-01T00:30:00Z"),
            speed: 60.0,
            repeat_every: None,
        };
        // One wall minute is one trace hour.
        assert_eq!(
            clock.trace_time(at("2030-01-01T00:01:00Z")),
            at("2026-06-01T01:30:00Z")
        );
        // Before the wall start, the replay stands at its start.
        assert_eq!(
            clock.trace_time(at("2029-12-31T00:00:00Z")),
            at("2026-06-01T00:30:00Z")
        );
        let looping = ReplayClock {
            repeat_every: Some(Duration::hours(2)),
            ..clock
        };
        assert_eq!(
            looping.trace_time(at("2030-01-01T00:02:00Z")),
            at("2026-06-01T00:30:00Z")
        );
        // Centuries of wall time at the highest speed neither overflow nor panic.
        let far = ReplayClock {
            speed: 1e6,
            ..looping
        };
        let _ = far.trace_time(at("2400-01-01T00:00:00Z"));
    }

    #[tokio::test]
    async fn trace_replay_gives_the_row_in_force_and_says_when_it_ran_out() {
        let trace = Arc::new(Trace::parse(TRACE, "t.csv").unwrap());
        let clock = ReplayClock {
            wall_start: at("2030-01-01T00:00:00Z"),
            trace_start: trace.start(),
            speed: 1.0,
            repeat_every: None,
        };
        let mut energy = TraceReplay::new(
            Arc::clone(&trace),
            Path::new("t.csv"),
            clock.clone(),
            energy_of,
        );
        let r = energy.fetch(at("2030-01-01T01:10:00Z")).await.unwrap();
        assert_eq!(r.value.usd_per_mwh, -5.0);
        assert!(r.source.contains("2026-06-01 01:10:00"), "{}", r.source);
        let mut demand = TraceReplay::new(
            Arc::clone(&trace),
            Path::new("t.csv"),
            clock.clone(),
            ai_demand_of,
        );
        assert_eq!(
            demand
                .fetch(at("2030-01-01T00:10:00Z"))
                .await
                .unwrap()
                .value
                .wanted,
            GpuWant::All
        );
        assert_eq!(
            demand
                .fetch(at("2030-01-01T01:10:00Z"))
                .await
                .unwrap()
                .value
                .wanted,
            GpuWant::Gpus(16)
        );
        let e = energy.fetch(at("2030-01-01T02:00:00Z")).await.unwrap_err();
        assert!(matches!(e.kind, SourceErrorKind::NoValue { .. }), "{e}");
        assert!(e.to_string().contains("repeat = true"), "{e}");
    }

    #[tokio::test]
    async fn fixed_values_are_always_current() {
        let mut f = Fixed::new(AiValue {
            usd_per_gpu_hour: 2.0,
        });
        let now = at("2026-06-01T00:00:00Z");
        let r = f.fetch(now).await.unwrap();
        assert_eq!((r.value.usd_per_gpu_hour, r.at), (2.0, now));
    }
}
