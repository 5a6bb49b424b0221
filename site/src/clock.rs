//! Trace time and wall time on the simulated site: the market replays the trace `speed` times
//! faster than the wall clock while the controller and agents run in real time, so every time
//! the composer prints, schedules or integrates goes through this one mapping.

use chrono::{DateTime, Duration, Utc};
use pivot_controller::market::source::{MAX_REPLAY_SPEED, ReplayClock};

/// trace time = `trace_start` + (wall − `wall_start`) × `speed`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteClock {
    replay: ReplayClock,
}

/// A speed the replay cannot run at.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--speed {0}: must be above 0 and at most {MAX_REPLAY_SPEED}")]
pub struct SpeedError(pub f64);

impl SiteClock {
    /// `speed` is one the replay can run at: finite, above 0, at most [`MAX_REPLAY_SPEED`].
    ///
    /// # Errors
    /// [`SpeedError`] naming it.
    pub fn check_speed(speed: f64) -> Result<(), SpeedError> {
        if speed.is_finite() && speed > 0.0 && speed <= MAX_REPLAY_SPEED {
            Ok(())
        } else {
            Err(SpeedError(speed))
        }
    }

    pub fn new(
        wall_start: DateTime<Utc>,
        trace_start: DateTime<Utc>,
        speed: f64,
    ) -> Result<Self, SpeedError> {
        Self::check_speed(speed)?;
        Ok(Self {
            replay: ReplayClock {
                wall_start,
                trace_start,
                speed,
                repeat_every: None,
            },
        })
    }

    pub fn speed(&self) -> f64 {
        self.replay.speed
    }

    pub fn wall_start(&self) -> DateTime<Utc> {
        self.replay.wall_start
    }

    pub fn trace_start(&self) -> DateTime<Utc> {
        self.replay.trace_start
    }

    /// The clock the market's trace sources read with, so the composer and the market agree to
    /// the millisecond on which row is in force.
    pub fn replay(&self) -> ReplayClock {
        self.replay.clone()
    }

    /// The trace time at wall time `wall` (the trace start before the wall start).
    pub fn trace_time(&self, wall: DateTime<Utc>) -> DateTime<Utc> {
        self.replay.trace_time(wall)
    }

    /// The first whole wall millisecond at which the trace time is at least `trace` (the wall
    /// start for trace times before the trace start).
    pub fn wall_time(&self, trace: DateTime<Utc>) -> DateTime<Utc> {
        let ms = (trace - self.replay.trace_start).num_milliseconds().max(0) as f64;
        // At most 1e15 ms of trace (the replay's own bound) over a speed of at least 1e-300
        // would not fit; a trace is days long, so the clamp never bites in practice.
        let wall_ms = (ms / self.replay.speed).ceil().clamp(0.0, 1e15) as i64;
        let mut wall = self.replay.wall_start + Duration::milliseconds(wall_ms);
        // The replay rounds to the nearest millisecond; step until it agrees.
        while self.trace_time(wall) < trace {
            wall += Duration::milliseconds(1);
        }
        // ... both ways: below 1x a rounded-up millisecond can reach the row one sooner.
        while wall > self.replay.wall_start
            && self.trace_time(wall - Duration::milliseconds(1)) >= trace
        {
            wall -= Duration::milliseconds(1);
        }
        wall
    }

    /// How long `trace` of trace time lasts on the wall clock.
    pub fn wall_span(&self, trace: Duration) -> std::time::Duration {
        let ms = trace.num_milliseconds().max(0) as f64 / self.replay.speed;
        std::time::Duration::from_millis(ms.round().clamp(0.0, 1e15) as u64)
    }

    /// `trace_s` seconds of trace time in whole wall seconds, rounded to the nearest (the
    /// policy's time constants are whole seconds).
    pub fn wall_secs(&self, trace_s: u64) -> u64 {
        (trace_s as f64 / self.replay.speed)
            .round()
            .clamp(0.0, 1e15) as u64
    }

    /// Hours of trace time between two wall times.
    pub fn trace_hours_between(&self, a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
        (self.trace_time(b) - self.trace_time(a)).num_milliseconds() as f64 / 3.6e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn forty_eight_hours_at_288_play_in_ten_minutes() {
        let c = SiteClock::new(
            at("2030-01-01T00:00:00Z"),
            at("2026-07-14T05:00:00Z"),
            288.0,
        )
        .unwrap();
        assert_eq!(
            c.wall_time(at("2026-07-16T05:00:00Z")),
            at("2030-01-01T00:10:00Z")
        );
        assert_eq!(
            c.trace_time(at("2030-01-01T00:05:00Z")),
            at("2026-07-15T05:00:00Z")
        );
        assert_eq!(c.wall_secs(300), 1);
        assert_eq!(c.wall_secs(900), 3);
        assert_eq!(c.wall_span(Duration::minutes(10)).as_millis(), 2083);
        assert!(
            (c.trace_hours_between(c.wall_start(), at("2030-01-01T00:00:12.5Z")) - 1.0).abs()
                < 1e-9
        );
    }

    #[test]
    fn impossible_speeds_are_refused() {
        let t = at("2026-07-14T05:00:00Z");
        for s in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
            assert!(SiteClock::new(t, t, s).is_err(), "{s}");
        }
    }

    proptest! {
        /// The wall time the composer schedules a row's refresh at is never before the market's
        /// replay reaches the row, and not a millisecond later than it must be.
        #[test]
        fn wall_time_is_the_first_instant_the_replay_reaches(
            speed in 0.5f64..5000.0,
            offset_ms in 0i64..(3 * 86_400_000),
        ) {
            let t0 = at("2026-07-14T05:00:00Z");
            let c = SiteClock::new(at("2030-01-01T00:00:00Z"), t0, speed).unwrap();
            let row = t0 + Duration::milliseconds(offset_ms);
            let w = c.wall_time(row);
            prop_assert!(c.trace_time(w) >= row);
            if w > c.wall_start() {
                prop_assert!(c.trace_time(w - Duration::milliseconds(1)) < row);
            }
        }
    }
}
