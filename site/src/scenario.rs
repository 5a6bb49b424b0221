//! The part of a trace the site plays, fitted to the site's size: a window of rows, the trace's
//! caps and AI demand scaled from the site it was written for (its `# pivot-site reference:`
//! line) to this one, and the trace's lower caps as the demand-response windows a utility would
//! announce.

use chrono::{DateTime, Duration, Utc};
use pivot_controller::trace::{Trace, TraceError, TraceRow};

/// The site a trace's `cap_w` and `ai_gpu_demand` columns were written for, from a comment line
/// `# pivot-site reference: cap_w=850000 gpus=64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reference {
    pub cap_w: f64,
    pub gpus: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    #[error("{source_name}: line {line}: {problem}")]
    Reference {
        source_name: String,
        line: usize,
        problem: String,
    },
    #[error(
        "--from {from}: the trace runs from {start} to {end}; pick a time inside it (RFC 3339, e.g. {start})"
    )]
    OutsideTrace {
        from: DateTime<Utc>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("--hours {0}: must be a number of hours above 0")]
    Hours(f64),
    #[error(
        "the window from {from} for {hours} h holds {rows} trace row(s); it needs at least two"
    )]
    TooShort {
        from: DateTime<Utc>,
        hours: f64,
        rows: usize,
    },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

const REFERENCE_PREFIX: &str = "# pivot-site reference:";

/// The reference line of a trace's text, if it has one.
pub fn reference(text: &str, source_name: &str) -> Result<Option<Reference>, ScenarioError> {
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim().strip_prefix(REFERENCE_PREFIX) else {
            continue;
        };
        let bad = |problem: String| ScenarioError::Reference {
            source_name: source_name.to_owned(),
            line: i + 1,
            problem,
        };
        let (mut cap_w, mut gpus) = (None, None);
        for word in rest.split_whitespace() {
            match word.split_once('=') {
                Some(("cap_w", v)) => {
                    cap_w = Some(
                        v.parse::<f64>()
                            .ok()
                            .filter(|c| c.is_finite() && *c > 0.0)
                            .ok_or_else(|| {
                                bad(format!("cap_w `{v}` is not a number of watts above 0"))
                            })?,
                    );
                }
                Some(("gpus", v)) => {
                    gpus =
                        Some(v.parse::<u32>().ok().filter(|g| *g > 0).ok_or_else(|| {
                            bad(format!("gpus `{v}` is not a whole number above 0"))
                        })?);
                }
                _ => return Err(bad(format!("`{word}`: expected cap_w=W and gpus=N"))),
            }
        }
        return match (cap_w, gpus) {
            (Some(cap_w), Some(gpus)) => Ok(Some(Reference { cap_w, gpus })),
            _ => Err(bad("needs both cap_w=W and gpus=N".into())),
        };
    }
    Ok(None)
}

/// The rows from the one in force at `from` (default: the first) for `hours` (default: to the
/// end).
pub fn window(
    trace: &Trace,
    from: Option<DateTime<Utc>>,
    hours: Option<f64>,
) -> Result<Trace, ScenarioError> {
    let start = match from {
        None => 0,
        Some(t) => trace.index_at(t).ok_or(ScenarioError::OutsideTrace {
            from: t,
            start: trace.start(),
            end: trace.end(),
        })?,
    };
    let from_t = trace.rows()[start].time;
    let until = match hours {
        None => trace.end(),
        Some(h) if h.is_finite() && h > 0.0 && h <= 24.0 * 366.0 => {
            from_t + Duration::milliseconds((h * 3.6e6).round() as i64)
        }
        Some(h) => return Err(ScenarioError::Hours(h)),
    };
    let rows: Vec<TraceRow> = trace.rows()[start..]
        .iter()
        .take_while(|r| r.time < until)
        .cloned()
        .collect();
    if rows.len() < 2 {
        return Err(ScenarioError::TooShort {
            from: from_t,
            hours: hours.unwrap_or_default(),
            rows: rows.len(),
        });
    }
    Ok(Trace::from_rows(rows)?)
}

/// The trace with its caps and AI demand scaled from `reference` to a site of `cap_w` and
/// `gpus`; unchanged without a reference.
pub fn fit(trace: &Trace, reference: Option<&Reference>, cap_w: f64, gpus: u32) -> Trace {
    let Some(r) = reference else {
        return trace.clone();
    };
    let cap_ratio = cap_w / r.cap_w;
    let gpu_ratio = f64::from(gpus) / f64::from(r.gpus);
    let rows = trace
        .rows()
        .iter()
        .map(|row| TraceRow {
            cap_w: row.cap_w.map(|c| (c * cap_ratio).round().max(1.0)),
            ai_gpu_demand: row.ai_gpu_demand.map(|d| {
                (f64::from(d) * gpu_ratio)
                    .round()
                    .clamp(0.0, f64::from(u32::MAX)) as u32
            }),
            ..row.clone()
        })
        .collect();
    // Same times as the trace it came from: still strictly increasing.
    Trace::from_rows(rows).unwrap_or_else(|_| trace.clone())
}

/// A run of rows with the same lower cap: a demand-response window.
#[derive(Debug, Clone, PartialEq)]
pub struct CapWindow {
    pub target_power_w: f64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl CapWindow {
    /// The event id the site's utility gives it (the window's start in trace time).
    pub fn event_id(&self) -> String {
        format!("trace-cap-{}", self.start.format("%Y%m%dT%H%MZ"))
    }
}

/// The trace's lower caps, one window per run of consecutive rows with the same cap: the same
/// events the backtest gives its planner.
pub fn cap_windows(trace: &Trace) -> Vec<CapWindow> {
    let mut out: Vec<CapWindow> = Vec::new();
    for (i, r) in trace.rows().iter().enumerate() {
        let Some(cap) = r.cap_w else { continue };
        let end = r.time + trace.interval_len(i);
        match out.last_mut() {
            Some(w) if w.end == r.time && w.target_power_w == cap => w.end = end,
            _ => out.push(CapWindow {
                target_power_w: cap,
                start: r.time,
                end,
            }),
        }
    }
    out
}

/// The trace as TRACE.csv, with the reference line it was fitted from (for the record).
pub fn to_csv(trace: &Trace) -> String {
    pivot_controller::backtest::generate::to_csv(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# a test trace\n# pivot-site reference: cap_w=1000 gpus=16\n\
        time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,ai_gpu_demand,cap_w\n\
        2026-07-14T05:00:00Z,45,30,2,8,\n\
        2026-07-14T05:05:00Z,45,30,2,8,400\n\
        2026-07-14T05:10:00Z,45,30,2,,400\n\
        2026-07-14T05:15:00Z,45,30,2,16,\n\
        2026-07-14T05:20:00Z,45,30,2,16,300\n\
        2026-07-14T05:25:00Z,45,30,2,16,\n";

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn caps_become_windows_and_scale_with_the_site() {
        let trace = Trace::parse(TEXT, "t.csv").unwrap();
        let r = reference(TEXT, "t.csv").unwrap().unwrap();
        assert_eq!(
            r,
            Reference {
                cap_w: 1000.0,
                gpus: 16
            }
        );
        let fitted = fit(&trace, Some(&r), 2000.0, 64);
        let w = cap_windows(&fitted);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].target_power_w, 800.0);
        assert_eq!(
            (w[0].start, w[0].end),
            (at("2026-07-14T05:05:00Z"), at("2026-07-14T05:15:00Z"))
        );
        assert_eq!(w[0].event_id(), "trace-cap-20260714T0505Z");
        assert_eq!(w[1].target_power_w, 600.0);
        assert_eq!(fitted.rows()[0].ai_gpu_demand, Some(32));
        assert_eq!(fitted.rows()[2].ai_gpu_demand, None);
    }

    #[test]
    fn a_window_starts_at_the_row_in_force_and_needs_two_rows() {
        let trace = Trace::parse(TEXT, "t.csv").unwrap();
        let w = window(&trace, Some(at("2026-07-14T05:07:00Z")), Some(0.25)).unwrap();
        assert_eq!(w.rows().len(), 3);
        assert_eq!(w.start(), at("2026-07-14T05:05:00Z"));
        assert!(matches!(
            window(&trace, Some(at("2026-07-15T00:00:00Z")), None),
            Err(ScenarioError::OutsideTrace { .. })
        ));
        assert!(matches!(
            window(&trace, None, Some(0.01)),
            Err(ScenarioError::TooShort { .. })
        ));
        assert!(matches!(
            window(&trace, None, Some(-1.0)),
            Err(ScenarioError::Hours(_))
        ));
    }

    #[test]
    fn a_bad_reference_line_is_named() {
        let e = reference("# pivot-site reference: cap_w=abc gpus=3\n", "t.csv").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.csv: line 1: cap_w `abc` is not a number of watts above 0"
        );
        let e = reference("x\n# pivot-site reference: gpus=3\n", "t.csv").unwrap_err();
        assert!(e.to_string().starts_with("t.csv: line 2:"), "{e}");
        assert_eq!(reference("time,x\n", "t.csv").unwrap(), None);
    }
}
