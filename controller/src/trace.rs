//! Market traces: one row per interval of hashprice, energy price, AI price and demand, and the
//! cap in force. The format the backtest reads, the trace-replay market sources replay and the
//! simulated site plays (docs/formats.md):
//!
//! ```text
//! time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,ai_gpu_demand,cap_w
//! 2026-06-01T00:00:00Z,45.2,31.5,2.10,,
//! 2026-06-01T00:05:00Z,45.2,-4.0,2.10,64,12000000
//! ```
//!
//! Each row holds until the next row's time; the last row holds as long as the one before it.
//! `ai_gpu_demand` and `cap_w` are optional columns, and an empty cell means "all GPUs want
//! work" and "the site's own cap" respectively. Energy prices may be negative (they are, at
//! night in West Texas); every other number must be finite and not negative. A bad cell is
//! refused naming its row (1-based, the header is row 1) and column.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};

/// One interval of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    /// Start of the interval.
    pub time: DateTime<Utc>,
    pub hashprice_usd_per_ph_day: f64,
    /// Real-time energy price; may be negative.
    pub energy_usd_per_mwh: f64,
    /// Value of interruptible GPU capacity per GPU-hour.
    pub ai_usd_per_gpu_hour: f64,
    /// GPUs the AI side can use; `None` = all.
    pub ai_gpu_demand: Option<u32>,
    /// Site cap in force (e.g. during a demand-response event); `None` = the site's own.
    pub cap_w: Option<f64>,
}

/// A trace: rows in strictly increasing time.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    rows: Vec<TraceRow>,
}

/// Why a trace was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("{source_name}: cannot read: {problem}")]
    Read {
        source_name: String,
        problem: String,
    },
    #[error("{source_name}: row {row}: {problem}")]
    Row {
        source_name: String,
        /// 1-based line of the CSV (the header is row 1).
        row: usize,
        problem: String,
    },
    #[error("{source_name}: row {row}, column `{column}`: {problem}")]
    Cell {
        source_name: String,
        row: usize,
        column: String,
        problem: String,
    },
}

const TIME: &str = "time";
const HASHPRICE: &str = "hashprice_usd_per_ph_day";
const ENERGY: &str = "energy_usd_per_mwh";
const AI_PRICE: &str = "ai_usd_per_gpu_hour";
const AI_DEMAND: &str = "ai_gpu_demand";
const CAP: &str = "cap_w";
const REQUIRED: [&str; 4] = [TIME, HASHPRICE, ENERGY, AI_PRICE];
const KNOWN: [&str; 6] = [TIME, HASHPRICE, ENERGY, AI_PRICE, AI_DEMAND, CAP];

/// Column positions in the header.
struct Columns {
    index: [Option<usize>; 6],
}

impl Columns {
    fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> Option<&'r str> {
        let k = KNOWN.iter().position(|n| *n == name)?;
        self.index[k]
            .and_then(|i| record.get(i))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

impl Trace {
    /// Reads a trace file; errors name the file.
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TraceError::Read {
            source_name: name.clone(),
            problem: e.to_string(),
        })?;
        Trace::parse(&text, &name)
    }

    /// Parses a trace from CSV text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Trace, TraceError> {
        let read_err = |problem: String| TraceError::Read {
            source_name: source_name.to_owned(),
            problem,
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .comment(Some(b'#'))
            .from_reader(text.as_bytes());
        let header = reader
            .headers()
            .map_err(|e| read_err(format!("header: {e}")))?
            .clone();
        let mut index = [None; 6];
        for (i, h) in header.iter().enumerate() {
            let h = h.trim();
            let Some(k) = KNOWN.iter().position(|n| *n == h) else {
                return Err(TraceError::Row {
                    source_name: source_name.to_owned(),
                    row: 1,
                    problem: format!("unknown column `{h}` (known: {})", KNOWN.join(", ")),
                });
            };
            if index[k].replace(i).is_some() {
                return Err(TraceError::Row {
                    source_name: source_name.to_owned(),
                    row: 1,
                    problem: format!("column `{h}` appears twice"),
                });
            }
        }
        for r in REQUIRED {
            if !header.iter().any(|h| h.trim() == r) {
                return Err(TraceError::Row {
                    source_name: source_name.to_owned(),
                    row: 1,
                    problem: format!("missing column `{r}`"),
                });
            }
        }
        let cols = Columns { index };
        let mut rows: Vec<TraceRow> = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| match e.position() {
                Some(p) => TraceError::Row {
                    source_name: source_name.to_owned(),
                    row: usize::try_from(p.line()).unwrap_or(usize::MAX),
                    problem: e.to_string(),
                },
                None => read_err(e.to_string()),
            })?;
            let row = record
                .position()
                .and_then(|p| usize::try_from(p.line()).ok())
                .unwrap_or(rows.len() + 2);
            let cell_err = |column: &str, problem: String| TraceError::Cell {
                source_name: source_name.to_owned(),
                row,
                column: column.to_owned(),
                problem,
            };
            let required = |column: &str| {
                cols.get(&record, column)
                    .ok_or_else(|| cell_err(column, "required but empty".into()))
            };
            let number = |column: &str, s: &str, allow_negative: bool| -> Result<f64, TraceError> {
                let v: f64 = s
                    .parse()
                    .map_err(|_| cell_err(column, format!("`{s}` is not a number")))?;
                if !v.is_finite() {
                    return Err(cell_err(column, format!("`{s}` is not a finite number")));
                }
                if !allow_negative && v < 0.0 {
                    return Err(cell_err(column, format!("{v} is negative")));
                }
                Ok(v)
            };
            let t = required(TIME)?;
            let time = DateTime::parse_from_rfc3339(t)
                .map_err(|e| cell_err(TIME, format!("`{t}` is not an RFC 3339 time: {e}")))?
                .with_timezone(&Utc);
            if let Some(prev) = rows.last()
                && time <= prev.time
            {
                return Err(cell_err(
                    TIME,
                    format!("{time} is not after the previous row's {}", prev.time),
                ));
            }
            let hashprice = number(HASHPRICE, required(HASHPRICE)?, false)?;
            let energy = number(ENERGY, required(ENERGY)?, true)?;
            let ai_price = number(AI_PRICE, required(AI_PRICE)?, false)?;
            let ai_gpu_demand = cols
                .get(&record, AI_DEMAND)
                .map(|s| {
                    s.parse::<u32>().map_err(|_| {
                        cell_err(AI_DEMAND, format!("`{s}` is not a whole number of GPUs"))
                    })
                })
                .transpose()?;
            let cap_w = cols
                .get(&record, CAP)
                .map(|s| {
                    let v = number(CAP, s, false)?;
                    if v == 0.0 {
                        Err(cell_err(
                            CAP,
                            "a cap of 0 W is not a cap; leave it empty for the site's own".into(),
                        ))
                    } else {
                        Ok(v)
                    }
                })
                .transpose()?;
            rows.push(TraceRow {
                time,
                hashprice_usd_per_ph_day: hashprice,
                energy_usd_per_mwh: energy,
                ai_usd_per_gpu_hour: ai_price,
                ai_gpu_demand,
                cap_w,
            });
        }
        if rows.is_empty() {
            return Err(read_err("no rows after the header".into()));
        }
        Ok(Trace { rows })
    }

    /// A trace from rows already checked (tests, generators). Rows must be in increasing time.
    pub fn from_rows(rows: Vec<TraceRow>) -> Result<Trace, TraceError> {
        if rows.is_empty() {
            return Err(TraceError::Read {
                source_name: "rows".into(),
                problem: "no rows".into(),
            });
        }
        for (i, w) in rows.windows(2).enumerate() {
            if w[1].time <= w[0].time {
                return Err(TraceError::Row {
                    source_name: "rows".into(),
                    row: i + 3,
                    problem: "time is not after the previous row's".into(),
                });
            }
        }
        Ok(Trace { rows })
    }

    pub fn rows(&self) -> &[TraceRow] {
        &self.rows
    }

    pub fn start(&self) -> DateTime<Utc> {
        self.rows[0].time
    }

    /// The end of the last interval: the last row holds as long as the one before it (or one
    /// hour for a one-row trace).
    pub fn end(&self) -> DateTime<Utc> {
        let n = self.rows.len();
        self.rows[n - 1].time + self.interval_len(n - 1)
    }

    /// How long row `i` holds.
    pub fn interval_len(&self, i: usize) -> Duration {
        let n = self.rows.len();
        if i + 1 < n {
            self.rows[i + 1].time - self.rows[i].time
        } else if n >= 2 {
            self.rows[n - 1].time - self.rows[n - 2].time
        } else {
            Duration::hours(1)
        }
    }

    /// The row in force at `t`: the last row at or before it; `None` before the first row or
    /// at or after the end.
    pub fn at(&self, t: DateTime<Utc>) -> Option<&TraceRow> {
        if t < self.start() || t >= self.end() {
            return None;
        }
        let i = self.rows.partition_point(|r| r.time <= t);
        self.rows.get(i.checked_sub(1)?)
    }

    /// The index of the row in force at `t`, as [`Trace::at`].
    pub fn index_at(&self, t: DateTime<Utc>) -> Option<usize> {
        if t < self.start() || t >= self.end() {
            return None;
        }
        self.rows.partition_point(|r| r.time <= t).checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,ai_gpu_demand,cap_w\n\
        2026-06-01T00:00:00Z,45.2,31.5,2.10,,\n\
        2026-06-01T00:05:00Z,45.2,-4.0,2.10,64,12000000\n\
        2026-06-01T00:15:00+02:00,46,30,2,0,\n";

    #[test]
    fn rows_hold_until_the_next_and_the_last_as_long_as_the_one_before() {
        // 02:15+02:00 is 00:15Z.
        let ok = OK.replace("2026-06-01T00:15:00+02:00", "2026-06-01T02:15:00+02:00");
        let t = Trace::parse(&ok, "t.csv").unwrap();
        assert_eq!(t.rows().len(), 3);
        let t0 = t.start();
        assert_eq!(t.at(t0).unwrap().energy_usd_per_mwh, 31.5);
        assert_eq!(
            t.at(t0 + Duration::minutes(5)).unwrap().energy_usd_per_mwh,
            -4.0
        );
        assert_eq!(
            t.at(t0 + Duration::minutes(5)).unwrap().ai_gpu_demand,
            Some(64)
        );
        assert_eq!(t.at(t0 + Duration::minutes(5)).unwrap().cap_w, Some(12e6));
        assert_eq!(t.at(t0).unwrap().ai_gpu_demand, None);
        assert_eq!(t.interval_len(2), Duration::minutes(10));
        assert_eq!(t.end(), t0 + Duration::minutes(25));
        assert!(t.at(t0 + Duration::minutes(25)).is_none());
        assert!(t.at(t0 - Duration::seconds(1)).is_none());
        assert_eq!(t.index_at(t0 + Duration::minutes(24)), Some(2));
    }

    #[test]
    fn times_must_increase() {
        let err = Trace::parse(OK, "t.csv");
        // 2026-06-01T00:15:00+02:00 = 2026-05-31T22:15Z, before the previous row.
        let err = match err {
            Err(e) => e.to_string(),
            Ok(t) => panic!("accepted {t:?}"),
        };
        assert!(err.contains("row 4, column `time`"), "{err}");
    }

    #[test]
    fn bad_cells_name_row_and_column() {
        let head = "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour\n";
        let cases = [
            (
                "2026-06-01T00:00:00Z,abc,1,2\n",
                "row 2, column `hashprice_usd_per_ph_day`",
            ),
            ("2026-06-01T00:00:00Z,-1,1,2\n", "is negative"),
            (
                "2026-06-01T00:00:00Z,1,NaN,2\n",
                "column `energy_usd_per_mwh`",
            ),
            ("yesterday,1,1,2\n", "column `time`"),
            (
                "2026-06-01T00:00:00Z,1,1,\n",
                "column `ai_usd_per_gpu_hour`: required",
            ),
            ("2026-06-01T00:00:00Z,1,1\n", "row 2"),
        ];
        for (row, want) in cases {
            let e = Trace::parse(&format!("{head}{row}"), "t.csv")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{row:?}: {e}");
            assert!(e.starts_with("t.csv"), "{e}");
        }
        let e = Trace::parse("time,hashprice,energy_usd_per_mwh\n", "t.csv")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown column `hashprice`"), "{e}");
        let e = Trace::parse(
            "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,cap_w\n2026-06-01T00:00:00Z,1,1,1,0\n",
            "t.csv",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("column `cap_w`"), "{e}");
        assert!(Trace::parse(head, "t.csv").is_err());
    }

    #[test]
    fn comments_and_blank_cells_are_read_as_documented() {
        let t = Trace::parse(
            "# made by hand\ntime,energy_usd_per_mwh,ai_usd_per_gpu_hour,hashprice_usd_per_ph_day,cap_w\n2026-06-01T00:00:00Z,5,2,40, \n",
            "t.csv",
        )
        .unwrap();
        assert_eq!(t.rows()[0].hashprice_usd_per_ph_day, 40.0);
        assert_eq!(t.rows()[0].cap_w, None);
        assert_eq!(t.interval_len(0), Duration::hours(1));
    }
}
