//! The site policy document: what the automated policies may do, as TOML.
//!
//! One document (economic rules, schedule windows, protected devices, the market-failure safe
//! policy), stored and versioned by the store; [`validate`] checks it and names the line and key
//! of every problem. The schema is written out in docs/formats.md. Demand-response events and
//! overrides are not part of it: they come from the API and reach the planner as inputs.

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, NaiveTime, Offset, TimeZone, Utc, Weekday,
};
use serde::Deserialize;

use crate::toml_lines::TomlLines;

/// The policy a fresh controller starts with.
pub const DEFAULT_POLICY: &str = r#"# Pivot site policy (docs/formats.md has every key).
name = "economic"

[economic]
# Run loads in merit order of margin (value - energy price) while it is at least this.
enabled = true
min_margin_usd_per_mwh = 0.0
# Band around the floor: a running load stops below floor - band/2, a stopped one starts
# above floor + band/2, so a price wobbling inside the band moves nothing.
hysteresis_usd_per_mwh = 4.0
# A device that moved stays put this long (except to meet a cap).
min_dwell_s = 300
# The site's increases, watts per minute; wakes are staggered to respect it (0 = no limit).
ramp_limit_w_per_min = 3000000.0
# Seconds between two steps of increases (each step at most ramp_limit_w_per_min).
ramp_step_s = 60
# Value of interruptible GPU capacity when no AI price feed is configured.
ai_spot_price_usd_per_gpu_hour = 2.0
# GPU hosts kept released above current AI demand (a number, plus a fraction of the
# interruptible hosts, rounded down), and how long demand must stay low before a host is drained.
ai_buffer_hosts = 1
ai_buffer_fraction = 0.05
ai_drain_delay_s = 900
# Efficiency assumed for a miner that never reported one.
unknown_miner_j_per_th = 38.0
# Shedding for a demand-response deadline or a schedule window starts this long before it.
shed_lead_s = 600

[market_failure]
# When no usable market reading is at hand: "hold" (keep the current plan, never add load)
# or "curtail-mining" (sleep every miner).
action = "hold"
"#;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub name: String,
    #[serde(default)]
    pub economic: EconomicPolicy,
    #[serde(default)]
    pub market_failure: MarketFailurePolicy,
    #[serde(default)]
    pub schedule: Vec<ScheduleWindow>,
    #[serde(default)]
    pub protected: ProtectedDevices,
}

impl Default for PolicyDocument {
    fn default() -> Self {
        Self {
            name: "economic".into(),
            economic: EconomicPolicy::default(),
            market_failure: MarketFailurePolicy::default(),
            schedule: Vec::new(),
            protected: ProtectedDevices::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EconomicPolicy {
    /// false: no economic moves at all; caps, schedules, pins and the safe policy still apply.
    pub enabled: bool,
    pub min_margin_usd_per_mwh: f64,
    /// Width of the band centred on the floor.
    pub hysteresis_usd_per_mwh: f64,
    pub min_dwell_s: u64,
    /// 0 = no limit.
    pub ramp_limit_w_per_min: f64,
    /// Time between two steps of increases (after the last grant too): one minute on a site; a
    /// replay faster than the wall clock scales it down (pivot-site).
    pub ramp_step_s: u64,
    pub ai_spot_price_usd_per_gpu_hour: f64,
    pub ai_buffer_hosts: u32,
    /// Also kept released: this share of the interruptible hosts (0–1), rounded down (fewer than 20 hosts at 0.05: none).
    pub ai_buffer_fraction: f64,
    pub ai_drain_delay_s: u64,
    pub unknown_miner_j_per_th: f64,
    pub shed_lead_s: u64,
}

impl Default for EconomicPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_margin_usd_per_mwh: 0.0,
            hysteresis_usd_per_mwh: 4.0,
            min_dwell_s: 300,
            ramp_limit_w_per_min: 3_000_000.0,
            ramp_step_s: 60,
            ai_spot_price_usd_per_gpu_hour: 2.0,
            ai_buffer_hosts: 1,
            ai_buffer_fraction: 0.05,
            ai_drain_delay_s: 900,
            unknown_miner_j_per_th: 38.0,
            shed_lead_s: 600,
        }
    }
}

/// What the planner does when the market cannot be read.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SafeAction {
    /// Keep every device where it is; only lowering moves (to meet a cap) are allowed.
    #[default]
    Hold,
    /// Sleep every miner (GPU hosts hold).
    CurtailMining,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MarketFailurePolicy {
    pub action: SafeAction,
}

/// Devices the planner never moves (they still count under the cap).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectedDevices {
    /// Device ids (`miner-7`, `gpu-...`) or GPU host ids.
    pub devices: Vec<String>,
    /// Device groups.
    pub groups: Vec<String>,
}

impl ProtectedDevices {
    pub fn covers(&self, device_or_host_id: &str, group: &str) -> bool {
        self.devices.iter().any(|d| d == device_or_host_id)
            || self.groups.iter().any(|g| g == group)
    }
}

/// A recurring window (time of use, a transmission peak such as ERCOT 4CP) in which the site
/// runs under a lower cap or curtails mining or some groups.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindow {
    pub name: String,
    /// An IANA zone name (`America/Chicago`, daylight saving followed), `UTC`, or a fixed
    /// offset (`-05:00`, `UTC+02:00`). Required: a window's clock must be explicit.
    pub time_zone: String,
    /// "HH:MM" local; the window starts here.
    pub start: String,
    /// "HH:MM" local; before `start` means the window runs past midnight.
    pub end: String,
    /// 1–12; empty = every month.
    #[serde(default)]
    pub months: Vec<u32>,
    /// `mon` … `sun` (of the day the window starts); empty = every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Site cap inside the window, W.
    #[serde(default)]
    pub cap_w: Option<f64>,
    /// Sleep every miner inside the window.
    #[serde(default)]
    pub curtail_mining: bool,
    /// Curtail these groups (miners sleep, GPU hosts drain) inside the window.
    #[serde(default)]
    pub curtail_groups: Vec<String>,
    #[serde(skip)]
    checked: Option<CheckedWindow>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Zone {
    Named(chrono_tz::Tz),
    Fixed(FixedOffset),
}

#[derive(Debug, Clone, PartialEq)]
struct CheckedWindow {
    zone: Zone,
    start: NaiveTime,
    end: NaiveTime,
    days: Vec<Weekday>,
}

/// What the schedule asks for at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleEffect {
    /// The lowest cap among the windows in force, with the window's name.
    pub cap: Option<(f64, String)>,
    /// Every miner sleeps (the name of the window that says so).
    pub curtail_mining: Option<String>,
    /// Groups to curtail, with the window's name.
    pub curtail_groups: Vec<(String, String)>,
}

impl ScheduleWindow {
    /// Whether the window holds at `t`. A window that did not pass [`validate`] never holds.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        let Some(c) = &self.checked else {
            return false;
        };
        let local = match c.zone {
            Zone::Named(tz) => tz.from_utc_datetime(&t.naive_utc()).naive_local(),
            Zone::Fixed(off) => off.from_utc_datetime(&t.naive_utc()).naive_local(),
        };
        let time = local.time();
        let crosses_midnight = c.end <= c.start;
        let (inside, start_day) = if crosses_midnight {
            if time >= c.start {
                (true, local.date())
            } else if time < c.end {
                (true, local.date() - Duration::days(1))
            } else {
                (false, local.date())
            }
        } else {
            (time >= c.start && time < c.end, local.date())
        };
        inside
            && (self.months.is_empty() || self.months.contains(&start_day.month()))
            && (c.days.is_empty() || c.days.contains(&start_day.weekday()))
    }
}

impl PolicyDocument {
    /// The schedule windows in force at `now`, or starting within `shed_lead_s` of it (shedding
    /// must be done when the window opens, not begin then).
    pub fn schedule_at(&self, now: DateTime<Utc>) -> ScheduleEffect {
        let lead = Duration::seconds(i64::try_from(self.economic.shed_lead_s).unwrap_or(i64::MAX));
        let ahead = now.checked_add_signed(lead).unwrap_or(now);
        let mut effect = ScheduleEffect::default();
        for w in &self.schedule {
            if !(w.contains(now) || w.contains(ahead)) {
                continue;
            }
            if let Some(cap) = w.cap_w
                && effect.cap.as_ref().is_none_or(|(c, _)| cap < *c)
            {
                effect.cap = Some((cap, w.name.clone()));
            }
            if w.curtail_mining && effect.curtail_mining.is_none() {
                effect.curtail_mining = Some(w.name.clone());
            }
            for g in &w.curtail_groups {
                effect.curtail_groups.push((g.clone(), w.name.clone()));
            }
        }
        effect
    }
}

impl PolicyDocument {
    /// The earliest instant after `now` at which [`Self::schedule_at`] could answer otherwise:
    /// a window opening or closing, or opening `shed_lead_s` from then. Never later than the
    /// real change; it may be earlier (a window that does not apply that day), and is at most
    /// [`SCHEDULE_HORIZON_DAYS`] away. `None` without windows.
    pub fn schedule_changes_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let lead = Duration::seconds(i64::try_from(self.economic.shed_lead_s).unwrap_or(i64::MAX));
        let ahead = now.checked_add_signed(lead).unwrap_or(now);
        self.schedule
            .iter()
            .filter_map(|w| {
                let opens = w.changes_after(now);
                let opens_ahead = w
                    .changes_after(ahead)
                    .and_then(|t| t.checked_sub_signed(lead));
                [opens, opens_ahead].into_iter().flatten().min()
            })
            .filter(|t| *t > now)
            .min()
    }
}

/// How far ahead [`ScheduleWindow::changes_after`] looks before it gives up and answers the
/// end of its search (a window of some months or days may not change for longer).
pub const SCHEDULE_HORIZON_DAYS: i64 = 3;

impl ScheduleWindow {
    /// The earliest instant after `t` at which [`Self::contains`] may change: the local start or
    /// end (both instants of an hour that repeats), or a change of the zone's offset (a start
    /// inside a skipped hour takes effect when the clock jumps). Months and days are not
    /// consulted, so the answer may be a change that does not happen; it is never late.
    pub fn changes_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let c = self.checked.as_ref()?;
        let horizon = t.checked_add_signed(Duration::days(SCHEDULE_HORIZON_DAYS))?;
        let mut candidates: Vec<DateTime<Utc>> = Vec::new();
        let local_date = |u: DateTime<Utc>| match c.zone {
            Zone::Named(tz) => tz.from_utc_datetime(&u.naive_utc()).date_naive(),
            Zone::Fixed(off) => off.from_utc_datetime(&u.naive_utc()).date_naive(),
        };
        let first_day = local_date(t).pred_opt()?;
        for day in first_day
            .iter_days()
            .take(usize::try_from(SCHEDULE_HORIZON_DAYS + 2).ok()?)
        {
            for time in [c.start, c.end] {
                let naive = day.and_time(time);
                match c.zone {
                    Zone::Named(tz) => {
                        let r = tz.from_local_datetime(&naive);
                        candidates.extend(
                            [r.earliest(), r.latest()]
                                .into_iter()
                                .flatten()
                                .map(|u| u.with_timezone(&Utc)),
                        );
                    }
                    Zone::Fixed(off) => {
                        let r = off.from_local_datetime(&naive);
                        candidates.extend(
                            [r.earliest(), r.latest()]
                                .into_iter()
                                .flatten()
                                .map(|u| u.with_timezone(&Utc)),
                        );
                    }
                }
            }
        }
        let mut best = candidates
            .into_iter()
            .filter(|u| *u > t)
            .fold(horizon, DateTime::min);
        if let Zone::Named(tz) = c.zone {
            let offset = |u: DateTime<Utc>| {
                tz.offset_from_utc_datetime(&u.naive_utc())
                    .fix()
                    .local_minus_utc()
            };
            // Offsets change at most a few times a year and never within an hour of each other.
            let mut u = t;
            while u < best {
                let next = u + Duration::hours(1);
                if offset(next) != offset(u) {
                    // Offsets change on whole seconds: bisect on them.
                    let at = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap_or(next);
                    let (mut lo, mut hi) = (u.timestamp(), next.timestamp());
                    let before = offset(at(lo));
                    while hi - lo > 1 {
                        let mid = lo + (hi - lo) / 2;
                        if offset(at(mid)) == before {
                            lo = mid;
                        } else {
                            hi = mid;
                        }
                    }
                    best = best.min(at(hi));
                    break;
                }
                u = next;
            }
        }
        Some(best)
    }
}

fn parse_zone(s: &str) -> Option<Zone> {
    let t = s.trim();
    let offset = t.strip_prefix("UTC").unwrap_or(t);
    if offset.is_empty() {
        return Some(Zone::Fixed(FixedOffset::east_opt(0)?));
    }
    if let Some(sign) = offset.chars().next().filter(|c| *c == '+' || *c == '-') {
        let (h, m) = offset[1..].split_once(':')?;
        let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
        if !(0..=14).contains(&h) || !(0..60).contains(&m) {
            return None;
        }
        let secs = (h * 60 + m) * 60;
        return Some(Zone::Fixed(FixedOffset::east_opt(if sign == '-' {
            -secs
        } else {
            secs
        })?));
    }
    t.parse::<chrono_tz::Tz>().ok().map(Zone::Named)
}

fn parse_day(s: &str) -> Option<Weekday> {
    match s.to_ascii_lowercase().as_str() {
        "mon" => Some(Weekday::Mon),
        "tue" => Some(Weekday::Tue),
        "wed" => Some(Weekday::Wed),
        "thu" => Some(Weekday::Thu),
        "fri" => Some(Weekday::Fri),
        "sat" => Some(Weekday::Sat),
        "sun" => Some(Weekday::Sun),
        _ => None,
    }
}

/// Parses and checks a policy document; every problem is returned as "line N: key: problem"
/// (a document that does not parse gives its first parse error).
pub fn validate(document: &str) -> Result<PolicyDocument, Vec<String>> {
    let lines = TomlLines::new(document);
    let mut doc: PolicyDocument = toml::from_str(document).map_err(|e| vec![lines.describe(&e)])?;
    let mut errors = Vec::new();
    let mut bad = |key: &str, problem: String| errors.push(lines.at_key(key, problem));
    if doc.name.trim().is_empty() {
        bad("name", "must not be empty".into());
    }
    let e = &doc.economic;
    let finite_at_least = |v: f64, min: f64| v.is_finite() && v >= min;
    if !e.min_margin_usd_per_mwh.is_finite() {
        bad(
            "economic.min_margin_usd_per_mwh",
            "must be a finite number".into(),
        );
    }
    for (key, v) in [
        ("economic.hysteresis_usd_per_mwh", e.hysteresis_usd_per_mwh),
        ("economic.ramp_limit_w_per_min", e.ramp_limit_w_per_min),
        (
            "economic.ai_spot_price_usd_per_gpu_hour",
            e.ai_spot_price_usd_per_gpu_hour,
        ),
    ] {
        if !finite_at_least(v, 0.0) {
            bad(key, format!("{v} must be a number >= 0"));
        }
    }
    if !(e.ai_buffer_fraction.is_finite() && (0.0..=1.0).contains(&e.ai_buffer_fraction)) {
        bad(
            "economic.ai_buffer_fraction",
            format!("{} must be a number from 0 to 1", e.ai_buffer_fraction),
        );
    }
    if !(e.unknown_miner_j_per_th.is_finite() && e.unknown_miner_j_per_th > 0.0) {
        bad(
            "economic.unknown_miner_j_per_th",
            format!("{} must be a number > 0", e.unknown_miner_j_per_th),
        );
    }
    // Durations beyond a week are typos, and keep every later sum of times far from overflow.
    for (key, v) in [
        ("economic.min_dwell_s", e.min_dwell_s),
        ("economic.ai_drain_delay_s", e.ai_drain_delay_s),
        ("economic.shed_lead_s", e.shed_lead_s),
        ("economic.ramp_step_s", e.ramp_step_s),
    ] {
        if v > 7 * 24 * 3600 {
            bad(key, format!("{v} s is more than a week"));
        }
    }
    for (i, w) in doc.schedule.iter_mut().enumerate() {
        let key = |k: &str| format!("schedule[{i}].{k}");
        let mut ok = true;
        if w.name.trim().is_empty() {
            bad(&key("name"), "must not be empty".into());
        }
        let zone = parse_zone(&w.time_zone);
        if zone.is_none() {
            ok = false;
            bad(
                &key("time_zone"),
                format!(
                    "`{}` is neither an IANA zone name (America/Chicago), UTC, nor an offset like -05:00",
                    w.time_zone
                ),
            );
        }
        let mut time = |k: &str, value: &str| match NaiveTime::parse_from_str(value, "%H:%M") {
            Ok(t) => Some(t),
            Err(_) => {
                bad(&key(k), format!("`{value}` is not a time HH:MM"));
                None
            }
        };
        let start = time("start", &w.start);
        let end = time("end", &w.end);
        if let (Some(s), Some(e)) = (start, end)
            && s == e
        {
            ok = false;
            bad(
                &key("end"),
                "equals start: the window would be empty or the whole day".into(),
            );
        }
        for m in &w.months {
            if !(1..=12).contains(m) {
                ok = false;
                bad(&key("months"), format!("{m} is not a month 1-12"));
            }
        }
        let mut days = Vec::new();
        for d in &w.days {
            match parse_day(d) {
                Some(day) => days.push(day),
                None => {
                    ok = false;
                    bad(
                        &key("days"),
                        format!("`{d}` is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                    );
                }
            }
        }
        if let Some(cap) = w.cap_w
            && !(cap.is_finite() && cap > 0.0)
        {
            ok = false;
            bad(&key("cap_w"), format!("{cap} must be a number > 0"));
        }
        if w.cap_w.is_none() && !w.curtail_mining && w.curtail_groups.is_empty() {
            ok = false;
            bad(
                &key("name"),
                format!(
                    "window `{}` does nothing: give cap_w, curtail_mining = true or curtail_groups",
                    w.name
                ),
            );
        }
        if let (true, Some(zone), Some(start), Some(end)) = (ok, zone, start, end) {
            w.checked = Some(CheckedWindow {
                zone,
                start,
                end,
                days,
            });
        }
    }
    if errors.is_empty() {
        Ok(doc)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn default_policy_is_valid_and_matches_the_defaults() {
        let p = validate(DEFAULT_POLICY).unwrap();
        assert_eq!(p.name, "economic");
        assert_eq!(p.economic, EconomicPolicy::default());
        assert_eq!(p.market_failure.action, SafeAction::Hold);
    }

    #[test]
    fn problems_name_their_line_and_key() {
        let errs = validate(
            "name = \"x\"\n[[schedule]]\nname = \"4cp\"\ntime_zone = \"UTC\"\nstart = \"25:00\"\nend = \"18:00\"\ncurtail_mining = true\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec!["line 5: schedule[0].start: `25:00` is not a time HH:MM".to_owned()]
        );
        let errs = validate("name = \"x\"\n[economic]\nmin_margin = 3\n").unwrap_err();
        assert!(
            errs[0].starts_with("line 3: economic.min_margin: unknown field `min_margin`"),
            "{errs:?}"
        );
        let errs = validate("name = \"x\"\n\n[economic]\nmin_dwell_s = \"ten\"\n").unwrap_err();
        assert!(
            errs[0].starts_with("line 4: economic.min_dwell_s: "),
            "{errs:?}"
        );
        let errs = validate(
            "name = \"x\"\n[economic]\nhysteresis_usd_per_mwh = -1\nramp_limit_w_per_min = nan\n",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("line 3: economic.hysteresis_usd_per_mwh"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("line 4: economic.ramp_limit_w_per_min"),
            "{errs:?}"
        );
        let errs = validate("name = \"x\"\n[market_failure]\naction = \"panic\"\n").unwrap_err();
        assert!(
            errs[0].starts_with("line 3: market_failure.action"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_window_problem_is_reported() {
        let errs = validate(
            "name = \"x\"\n[[schedule]]\nname = \"w\"\ntime_zone = \"Mars/Olympus\"\nstart = \"10:00\"\nend = \"10:00\"\nmonths = [13]\ndays = [\"funday\"]\n",
        )
        .unwrap_err();
        let joined = errs.join("\n");
        for want in [
            "line 4: schedule[0].time_zone",
            "line 6: schedule[0].end: equals start",
            "line 7: schedule[0].months: 13",
            "line 8: schedule[0].days: `funday`",
            "line 3: schedule[0].name: window `w` does nothing",
        ] {
            assert!(joined.contains(want), "{want} missing from {joined}");
        }
    }

    #[test]
    fn ercot_4cp_window_follows_central_daylight_time() {
        let p = validate(
            "name = \"x\"\n[economic]\nshed_lead_s = 0\n[[schedule]]\nname = \"4cp\"\ntime_zone = \"America/Chicago\"\nmonths = [6, 7, 8, 9]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nstart = \"15:00\"\nend = \"17:30\"\ncurtail_mining = true\n",
        )
        .unwrap();
        let w = &p.schedule[0];
        // 2026-07-15 is a Wednesday; 15:00 CDT = 20:00Z.
        assert!(w.contains(at("2026-07-15T20:00:00Z")));
        assert!(w.contains(at("2026-07-15T22:29:00Z")));
        assert!(!w.contains(at("2026-07-15T22:30:00Z")));
        assert!(!w.contains(at("2026-07-15T19:59:00Z")));
        // Saturday, and a winter weekday.
        assert!(!w.contains(at("2026-07-18T20:30:00Z")));
        assert!(!w.contains(at("2026-01-14T21:30:00Z")));
        assert_eq!(
            p.schedule_at(at("2026-07-15T21:00:00Z"))
                .curtail_mining
                .as_deref(),
            Some("4cp")
        );
    }

    #[test]
    fn windows_across_midnight_count_from_their_start_day_and_lead_applies() {
        let p = validate(
            "name = \"x\"\n[[schedule]]\nname = \"night\"\ntime_zone = \"+02:00\"\ndays = [\"fri\"]\nstart = \"22:00\"\nend = \"02:00\"\ncap_w = 5e6\n",
        )
        .unwrap();
        let w = &p.schedule[0];
        // Friday 2026-07-17 23:00+02:00 and Saturday 01:00+02:00 are inside; Saturday 23:00 is not.
        assert!(w.contains(at("2026-07-17T21:00:00Z")));
        assert!(w.contains(at("2026-07-17T23:00:00Z")));
        assert!(!w.contains(at("2026-07-18T21:00:00Z")));
        // Default lead 600 s: at 21:51 local (19:51Z) the cap is already planned for.
        let e = p.schedule_at(at("2026-07-17T19:51:00Z"));
        assert_eq!(e.cap, Some((5e6, "night".to_owned())));
        assert_eq!(p.schedule_at(at("2026-07-17T19:49:00Z")).cap, None);
    }

    #[test]
    fn protected_devices_match_by_id_or_group() {
        let p = validate("name = \"x\"\n[protected]\ndevices = [\"m-1\"]\ngroups = [\"lab\"]\n")
            .unwrap();
        assert!(p.protected.covers("m-1", "other"));
        assert!(p.protected.covers("m-9", "lab"));
        assert!(!p.protected.covers("m-9", "other"));
    }

    #[test]
    fn window_changes_are_found_across_daylight_saving() {
        let p = validate(
            "name = \"x\"\n[economic]\nshed_lead_s = 0\n[[schedule]]\nname = \"w\"\ntime_zone = \"America/Chicago\"\nstart = \"15:00\"\nend = \"17:30\"\ncap_w = 5e6\n",
        )
        .unwrap();
        let w = &p.schedule[0];
        // Summer: 15:00 CDT = 20:00Z, 17:30 CDT = 22:30Z.
        assert_eq!(
            w.changes_after(at("2026-07-15T12:00:00Z")),
            Some(at("2026-07-15T20:00:00Z"))
        );
        assert_eq!(
            w.changes_after(at("2026-07-15T20:00:00Z")),
            Some(at("2026-07-15T22:30:00Z"))
        );
        // Winter: CST, an hour later in UTC.
        assert_eq!(
            w.changes_after(at("2026-01-14T22:30:00Z")),
            Some(at("2026-01-14T23:30:00Z"))
        );
        assert_eq!(
            p.schedule_changes_after(at("2026-01-14T22:30:00Z")),
            Some(at("2026-01-14T23:30:00Z"))
        );
    }

    #[test]
    fn a_window_starting_in_a_skipped_hour_changes_when_the_clock_jumps() {
        // 2026-03-08 02:00 CST → 03:00 CDT (08:00Z). A window from 02:30 is entered at the jump.
        let p = validate(
            "name = \"x\"\n[economic]\nshed_lead_s = 0\n[[schedule]]\nname = \"w\"\ntime_zone = \"America/Chicago\"\nstart = \"02:30\"\nend = \"05:00\"\ncap_w = 5e6\n",
        )
        .unwrap();
        let w = &p.schedule[0];
        let before = at("2026-03-08T07:00:00Z");
        let change = w.changes_after(before).unwrap();
        assert_eq!(change, at("2026-03-08T08:00:00Z"));
        assert!(!w.contains(change - Duration::seconds(1)));
        assert!(w.contains(change));
        // And with a lead, the change is reported that much earlier.
        let mut q = p.clone();
        q.economic.shed_lead_s = 600;
        assert_eq!(
            q.schedule_changes_after(before),
            Some(at("2026-03-08T07:50:00Z"))
        );
    }

    /// Between two instants the schedule's answer never changes before `schedule_changes_after`
    /// said it could (checked minute by minute over a few days with a lead and DST).
    #[test]
    fn no_schedule_change_comes_before_the_announced_one() {
        let p = validate(
            "name = \"x\"\n[economic]\nshed_lead_s = 900\n[[schedule]]\nname = \"a\"\ntime_zone = \"Europe/Berlin\"\ndays = [\"sat\", \"sun\"]\nstart = \"01:30\"\nend = \"03:15\"\ncap_w = 5e6\n[[schedule]]\nname = \"b\"\ntime_zone = \"-05:00\"\nstart = \"23:00\"\nend = \"01:00\"\ncurtail_mining = true\n",
        )
        .unwrap();
        // Europe/Berlin leaves summer time on 2026-10-25 at 03:00 CEST (01:00Z).
        let mut t = at("2026-10-23T00:00:00Z");
        let end = at("2026-10-27T00:00:00Z");
        while t < end {
            let next = p.schedule_changes_after(t).unwrap();
            assert!(next > t);
            let here = p.schedule_at(t);
            let mut u = t + Duration::minutes(1);
            while u < next.min(end) {
                assert_eq!(
                    p.schedule_at(u),
                    here,
                    "changed at {u}, announced {next} at {t}"
                );
                u += Duration::minutes(1);
            }
            t = next;
        }
    }
}
