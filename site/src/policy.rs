//! The policy the simulated site runs: the operator's document with its time constants (dwell,
//! drain delay, shed lead, the ramp's step) scaled by the replay's speed, so that a site whose market runs
//! 288 times faster behaves as the trace's site would — a five-minute dwell lasts five minutes
//! of trace time, about one wall second.

use pivot_controller::policy::{self, PolicyDocument};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("{source_name}: {}", problems.join("; "))]
    Invalid {
        source_name: String,
        problems: Vec<String>,
    },
    #[error(
        "{source_name}: schedule window `{window}` follows the wall clock, which the simulated site does not replay; give the trace a cap_w window instead (the site announces it as a demand-response event)"
    )]
    Schedule { source_name: String, window: String },
    #[error("{source_name}: {problem}")]
    Toml {
        source_name: String,
        problem: String,
    },
}

/// The document as given (checked) and as the site runs it (scaled).
#[derive(Debug, Clone)]
pub struct SitePolicy {
    /// What the backtest runs with: trace time is its time.
    pub document: PolicyDocument,
    pub text: String,
    /// What the controller runs with, in wall seconds.
    pub scaled_text: String,
}

/// The least wall time a demand-response shed may start before its deadline: several
/// phases, each confirmed by the agents, in real time.
pub const MIN_WALL_SHED_LEAD_S: f64 = 5.0;

/// The least wall time a trace cap is announced before it starts: the grid's notice in trace
/// time shrinks with the speed (30 minutes is 6 wall seconds at 288x), but the agents confirm a
/// shed in real time, and the controller lengthens its shed lead to twice what shedding took
/// lately (pivot_controller::shed_time) — a notice shorter than that would be missed by the
/// replay, not by the site.
pub const MIN_WALL_NOTICE_S: f64 = 4.0 * MIN_WALL_SHED_LEAD_S;

/// `wall_s` of wall time in whole seconds of trace time at `speed`, rounded up, at most a week.
fn trace_s_of_wall(wall_s: f64, speed: f64) -> u64 {
    // In range after the clamp (a NaN speed clamps to NaN, which `as` turns into 0).
    (wall_s * speed).ceil().clamp(0.0, 7.0 * 86_400.0) as u64
}

/// The notice the site announces trace caps with at `speed`: `notice` (trace time), or
/// [`MIN_WALL_NOTICE_S`] of wall time when that is longer.
pub fn announce_notice(notice: chrono::Duration, speed: f64) -> chrono::Duration {
    let floor_s = i64::try_from(trace_s_of_wall(MIN_WALL_NOTICE_S, speed)).unwrap_or(i64::MAX);
    notice.max(chrono::Duration::seconds(floor_s))
}

/// Checks `text` and scales its time constants for a replay at `speed`: durations divided by
/// it (rounded to whole seconds, as the policy keeps them); the ramp's watts per step stay.
pub fn scale(text: &str, source_name: &str, speed: f64) -> Result<SitePolicy, PolicyError> {
    let invalid = |problems: Vec<String>| PolicyError::Invalid {
        source_name: source_name.to_owned(),
        problems,
    };
    let document = policy::validate(text).map_err(invalid)?;
    if let Some(w) = document.schedule.first() {
        return Err(PolicyError::Schedule {
            source_name: source_name.to_owned(),
            window: w.name.clone(),
        });
    }
    let toml_err = |problem: String| PolicyError::Toml {
        source_name: source_name.to_owned(),
        problem,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| toml_err(e.to_string()))?;
    // The shed lead covers the time a curtailment takes to be confirmed, and that runs on the
    // wall clock here: at least MIN_WALL_SHED_LEAD_S of wall time, so the lead in trace time
    // grows with the speed. The backtest gets the same lead (in trace time).
    let lead_floor_s = trace_s_of_wall(MIN_WALL_SHED_LEAD_S, speed);
    let mut document = document;
    let mut text = text.to_owned();
    if document.economic.shed_lead_s < lead_floor_s {
        document.economic.shed_lead_s = lead_floor_s;
        let mut trace_table = table.clone();
        if let Some(economic) = trace_table
            .entry("economic")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
        {
            economic.insert(
                "shed_lead_s".into(),
                toml::Value::Integer(i64::try_from(lead_floor_s).unwrap_or(i64::MAX)),
            );
        }
        text = format!(
            "# {source_name}, its shed lead raised to {lead_floor_s} s ({MIN_WALL_SHED_LEAD_S} wall seconds at {speed}x) by pivot-site\n{}",
            toml::to_string(&trace_table).map_err(|e| toml_err(e.to_string()))?
        );
        policy::validate(&text).map_err(invalid)?;
    }
    let e = &document.economic;
    let secs = |s: u64| -> i64 {
        let scaled = (s as f64 / speed).round().clamp(0.0, 1e12);
        scaled as i64
    };
    let economic = table
        .entry("economic")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(economic) = economic.as_table_mut() else {
        return Err(toml_err("`economic` is not a table".into()));
    };
    economic.insert(
        "min_dwell_s".into(),
        toml::Value::Integer(secs(e.min_dwell_s)),
    );
    economic.insert(
        "ai_drain_delay_s".into(),
        toml::Value::Integer(secs(e.ai_drain_delay_s)),
    );
    economic.insert(
        "shed_lead_s".into(),
        toml::Value::Integer(secs(e.shed_lead_s)),
    );
    // The ramp in trace time: each step (a trace minute on the trace's site) takes the same
    // watts, the steps come `speed` times sooner.
    economic.insert(
        "ramp_step_s".into(),
        toml::Value::Integer(secs(e.ramp_step_s)),
    );
    let scaled_text = format!(
        "# {source_name}, time constants scaled for a replay at {speed}x by pivot-site\n{}",
        toml::to_string(&table).map_err(|e| toml_err(e.to_string()))?
    );
    policy::validate(&scaled_text).map_err(invalid)?;
    Ok(SitePolicy {
        document,
        text,
        scaled_text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_is_at_least_twenty_wall_seconds() {
        let m = chrono::Duration::minutes;
        assert_eq!(announce_notice(m(30), 288.0), m(96));
        assert_eq!(announce_notice(m(30), 60.0), m(30));
        assert_eq!(announce_notice(m(30), 1.0), m(30));
        assert_eq!(announce_notice(m(0), 1e12), chrono::Duration::days(7));
    }

    #[test]
    fn the_default_policy_at_288x_keeps_its_rules_in_trace_time() {
        let p = scale(policy::DEFAULT_POLICY, "built-in policy", 288.0).unwrap();
        let s = policy::validate(&p.scaled_text).unwrap();
        assert_eq!(s.economic.min_dwell_s, 1); // 300 s / 288
        assert_eq!(s.economic.ai_drain_delay_s, 3); // 900 s / 288
        // 600 s / 288 is 2 s of wall time; raised to 5 (1,440 s of trace time).
        assert_eq!(s.economic.shed_lead_s, 5);
        assert_eq!(p.document.economic.shed_lead_s, 1440);
        assert_eq!(s.economic.ramp_step_s, 0); // 60 s / 288
        assert_eq!(s.economic.ramp_limit_w_per_min, 3_000_000.0);
        // What is not time stays as written.
        assert_eq!(
            s.economic.hysteresis_usd_per_mwh,
            p.document.economic.hysteresis_usd_per_mwh
        );
        assert_eq!(s.market_failure, p.document.market_failure);
        assert_eq!(p.document.economic.min_dwell_s, 300);
    }

    #[test]
    fn a_policy_without_an_economic_table_gets_the_defaults_scaled() {
        let p = scale("name = \"bare\"\n", "p.toml", 100.0).unwrap();
        let s = policy::validate(&p.scaled_text).unwrap();
        assert_eq!((s.economic.min_dwell_s, s.economic.shed_lead_s), (3, 6));
        assert_eq!(p.document.economic.shed_lead_s, 600);
    }

    #[test]
    fn schedule_windows_and_bad_documents_are_refused_by_name() {
        let doc = "name = \"x\"\n[[schedule]]\nname = \"4cp\"\ntime_zone = \"UTC\"\nstart = \"15:00\"\nend = \"17:00\"\ncurtail_mining = true\n";
        let e = scale(doc, "p.toml", 288.0).unwrap_err().to_string();
        assert!(e.starts_with("p.toml: schedule window `4cp`"), "{e}");
        let e = scale(
            "name = \"x\"\n[economic]\nmin_dwell_s = -1\n",
            "p.toml",
            288.0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p.toml: line 3: economic.min_dwell_s"), "{e}");
    }
}
