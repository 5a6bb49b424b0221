//! Time-of-use tariffs: a price per weekday and hour in a stated time zone, a default for the
//! hours no period names.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

/// Days a period applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Days {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
    Weekdays,
    Weekend,
    All,
}

impl Days {
    /// Days from Monday (0) that this names.
    fn indices(self) -> &'static [usize] {
        match self {
            Days::Mon => &[0],
            Days::Tue => &[1],
            Days::Wed => &[2],
            Days::Thu => &[3],
            Days::Fri => &[4],
            Days::Sat => &[5],
            Days::Sun => &[6],
            Days::Weekdays => &[0, 1, 2, 3, 4],
            Days::Weekend => &[5, 6],
            Days::All => &[0, 1, 2, 3, 4, 5, 6],
        }
    }
}

/// `[[market.energy.periods]]`: from `start_hour` (inclusive) to `end_hour` (exclusive, 24 =
/// midnight) local time on `days`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouPeriod {
    pub days: Vec<Days>,
    pub start_hour: u8,
    pub end_hour: u8,
    pub usd_per_mwh: f64,
}

/// A checked schedule: a price for every weekday and hour.
#[derive(Debug, Clone, PartialEq)]
pub struct TouSchedule {
    pub time_zone: Tz,
    grid: [[f64; 24]; 7],
}

impl TouSchedule {
    /// Builds the schedule; errors name the key (`periods[2].end_hour`) under `key`.
    pub fn new(
        time_zone: &str,
        default_usd_per_mwh: f64,
        periods: &[TouPeriod],
        key: &str,
    ) -> Result<Self, (String, String)> {
        let tz: Tz = time_zone.parse().map_err(|_| {
            (
                format!("{key}.time_zone"),
                format!("`{time_zone}` is not an IANA time zone (e.g. America/Chicago)"),
            )
        })?;
        if !default_usd_per_mwh.is_finite() {
            return Err((
                format!("{key}.default_usd_per_mwh"),
                format!("must be a finite price, got {default_usd_per_mwh}"),
            ));
        }
        let mut grid = [[default_usd_per_mwh; 24]; 7];
        let mut owner: [[Option<usize>; 24]; 7] = [[None; 24]; 7];
        for (i, p) in periods.iter().enumerate() {
            let k = |field: &str| format!("{key}.periods[{i}].{field}");
            if !p.usd_per_mwh.is_finite() {
                return Err((
                    k("usd_per_mwh"),
                    format!("must be a finite price, got {}", p.usd_per_mwh),
                ));
            }
            if p.start_hour > 23 {
                return Err((
                    k("start_hour"),
                    format!("must be 0 to 23, got {}", p.start_hour),
                ));
            }
            if p.end_hour > 24 || p.end_hour <= p.start_hour {
                return Err((
                    k("end_hour"),
                    format!(
                        "must be after start_hour ({}) and at most 24, got {} (split a period that crosses midnight in two)",
                        p.start_hour, p.end_hour
                    ),
                ));
            }
            if p.days.is_empty() {
                return Err((k("days"), "names no day".into()));
            }
            for d in p.days.iter().flat_map(|d| d.indices()) {
                for h in usize::from(p.start_hour)..usize::from(p.end_hour) {
                    if let Some(other) = owner[*d][h] {
                        return Err((
                            k("days"),
                            format!(
                                "overlaps periods[{other}] on day {} at hour {h}",
                                DAY_NAMES[*d]
                            ),
                        ));
                    }
                    owner[*d][h] = Some(i);
                    grid[*d][h] = p.usd_per_mwh;
                }
            }
        }
        Ok(Self {
            time_zone: tz,
            grid,
        })
    }

    /// The price in force at `now`.
    pub fn price_at(&self, now: DateTime<Utc>) -> f64 {
        let local = now.with_timezone(&self.time_zone);
        let day = local.weekday().num_days_from_monday() as usize;
        let hour = local.hour() as usize;
        self.grid[day % 7][hour % 24]
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn peak() -> Vec<TouPeriod> {
        vec![
            TouPeriod {
                days: vec![Days::Weekdays],
                start_hour: 14,
                end_hour: 19,
                usd_per_mwh: 120.0,
            },
            TouPeriod {
                days: vec![Days::All],
                start_hour: 0,
                end_hour: 6,
                usd_per_mwh: 15.0,
            },
        ]
    }

    #[test]
    fn local_weekday_and_hour_pick_the_price_across_dst() {
        let s = TouSchedule::new("America/Chicago", 40.0, &peak(), "market.energy").unwrap();
        // Wednesday 2025-07-16 14:30 CDT = 19:30Z: peak.
        assert_eq!(s.price_at(utc("2025-07-16T19:30:00Z")), 120.0);
        // Same UTC hour in January is 13:30 CST: not yet peak.
        assert_eq!(s.price_at(utc("2025-01-15T19:30:00Z")), 40.0);
        // Saturday afternoon: default.
        assert_eq!(s.price_at(utc("2025-07-19T19:30:00Z")), 40.0);
        // Monday 05:59 local (UTC−5 in summer) is night; it is still Sunday 10:59 in UTC.
        assert_eq!(s.price_at(utc("2025-07-14T10:59:00Z")), 15.0);
        assert_eq!(s.price_at(utc("2025-07-14T11:00:00Z")), 40.0);
    }

    #[test]
    fn bad_schedules_name_the_key() {
        let e = TouSchedule::new("Mars/Olympus", 40.0, &[], "market.energy").unwrap_err();
        assert_eq!(e.0, "market.energy.time_zone");
        let mut p = peak();
        p[1].days = vec![Days::Wed];
        p[1].start_hour = 18;
        p[1].end_hour = 20;
        let e = TouSchedule::new("UTC", 40.0, &p, "market.energy").unwrap_err();
        assert_eq!(e.0, "market.energy.periods[1].days");
        assert!(
            e.1.contains("overlaps periods[0] on day wed at hour 18"),
            "{}",
            e.1
        );
        let mut p = peak();
        p[0].end_hour = 3;
        assert_eq!(
            TouSchedule::new("UTC", 40.0, &p, "e").unwrap_err().0,
            "e.periods[0].end_hour"
        );
        p[0].end_hour = 25;
        assert!(TouSchedule::new("UTC", 40.0, &p, "e").is_err());
        assert!(TouSchedule::new("UTC", f64::NAN, &[], "e").is_err());
    }
}
