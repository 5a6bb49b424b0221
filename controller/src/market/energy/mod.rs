//! Energy price sources: a fixed tariff, a time-of-use schedule, ERCOT's real-time settlement
//! point prices, a generic CSV or JSON feed (URL or file), or a trace.

pub mod ercot;
pub mod tou;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::error::{Origin, SourceError, SourceErrorKind, excerpt};
use super::feed::Location;
use super::http::HttpClient;
use super::reading::{EnergyPrice, Reading};
use super::source::{MarketSource, TraceConfig};
use tou::{TouPeriod, TouSchedule};

/// `[market.energy]`, by `source`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum EnergySourceConfig {
    Fixed {
        usd_per_mwh: f64,
    },
    TimeOfUse {
        /// IANA zone the hours are in (`America/Chicago`).
        time_zone: String,
        default_usd_per_mwh: f64,
        #[serde(default)]
        periods: Vec<TouPeriod>,
    },
    /// ERCOT NP6-905-CD real-time prices for one settlement point (`HB_NORTH`, `LZ_WEST`).
    Ercot {
        #[serde(default)]
        url: Option<String>,
        #[serde(default)]
        file: Option<PathBuf>,
        settlement_point: String,
    },
    Feed {
        #[serde(default)]
        url: Option<String>,
        #[serde(default)]
        file: Option<PathBuf>,
        format: FeedFormat,
        /// JSON: the price's dotted path.
        #[serde(default)]
        field: Option<String>,
        /// JSON: the path of the price's time (Unix seconds or RFC 3339).
        #[serde(default)]
        time_field: Option<String>,
    },
    Trace(TraceConfig),
}

/// A generic energy feed's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedFormat {
    /// Columns `time` (RFC 3339, the interval's start) and `usd_per_mwh`; the last row that
    /// has started is in force.
    Csv,
    /// One price at `field`.
    Json,
}

/// A time-of-use tariff.
pub struct TouSource {
    schedule: TouSchedule,
    origin: Origin,
}

impl TouSource {
    pub fn new(schedule: TouSchedule) -> Self {
        Self {
            origin: Origin::new("time of use", schedule.time_zone.name()),
            schedule,
        }
    }
}

#[async_trait]
impl MarketSource<EnergyPrice> for TouSource {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<EnergyPrice>, SourceError> {
        Ok(Reading {
            value: EnergyPrice {
                usd_per_mwh: self.schedule.price_at(now),
            },
            at: now,
            source: self.origin.to_string(),
        })
    }
}

/// Which parser a fetched energy document goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnergyDocument {
    Ercot { settlement_point: String },
    Csv,
}

/// ERCOT's CSV or a generic CSV, at a URL or in a file.
pub struct CsvPriceSource {
    location: Location,
    document: EnergyDocument,
    client: HttpClient,
    timeout: Duration,
    origin: Origin,
}

impl CsvPriceSource {
    pub fn new(
        location: Location,
        document: EnergyDocument,
        client: HttpClient,
        timeout: Duration,
    ) -> Self {
        let name = match &document {
            EnergyDocument::Ercot { settlement_point } => format!("ercot {settlement_point}"),
            EnergyDocument::Csv => "energy feed".to_owned(),
        };
        Self {
            origin: Origin::new(name, location.display()),
            location,
            document,
            client,
            timeout,
        }
    }
}

#[async_trait]
impl MarketSource<EnergyPrice> for CsvPriceSource {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<EnergyPrice>, SourceError> {
        let (request, body) = self
            .location
            .read(&self.client, &self.origin, self.timeout)
            .await?;
        let bad = |field: Option<String>, problem: String| {
            SourceError::new(
                &self.origin,
                SourceErrorKind::Body {
                    request: request.clone(),
                    field,
                    problem,
                    excerpt: excerpt(&body),
                },
            )
        };
        let text =
            std::str::from_utf8(&body).map_err(|e| bad(None, format!("not UTF-8 text: {e}")))?;
        if text.trim_start().starts_with('<') {
            return Err(bad(None, "an HTML or XML page, not CSV".into()));
        }
        let prices = match &self.document {
            EnergyDocument::Ercot { settlement_point } => ercot::parse(text, settlement_point),
            EnergyDocument::Csv => parse_simple_csv(text),
        }
        .map_err(|e| bad(e.column.clone(), e.to_string()))?;
        let p = ercot::in_force(&prices, now).ok_or_else(|| {
            SourceError::new(
                &self.origin,
                SourceErrorKind::NoValue {
                    detail: format!(
                        "no interval has started by {now}; the first starts {}",
                        prices
                            .first()
                            .map_or_else(String::new, |p| p.start.to_string())
                    ),
                },
            )
        })?;
        Ok(Reading {
            value: EnergyPrice {
                usd_per_mwh: p.usd_per_mwh,
            },
            at: p.start,
            source: self.origin.to_string(),
        })
    }
}

/// `time,usd_per_mwh` rows, oldest first after sorting.
fn parse_simple_csv(text: &str) -> Result<Vec<ercot::IntervalPrice>, ercot::ErcotError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| ercot::ErcotError {
        row: 1,
        column: None,
        problem: format!("cannot read the header: {e}"),
    })?;
    let find = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ercot::ErcotError {
                row: 1,
                column: None,
                problem: format!("no `{name}` column (want `time,usd_per_mwh`)"),
            })
    };
    let (time_i, price_i) = (find("time")?, find("usd_per_mwh")?);
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 2;
        let err = |column: &str, problem: String| ercot::ErcotError {
            row,
            column: Some(column.to_owned()),
            problem,
        };
        let record = record.map_err(|e| ercot::ErcotError {
            row,
            column: None,
            problem: e.to_string(),
        })?;
        let t = record.get(time_i).unwrap_or_default();
        let start = DateTime::parse_from_rfc3339(t)
            .map_err(|_| err("time", format!("`{t}` is not an RFC 3339 time")))?
            .with_timezone(&Utc);
        let p = record.get(price_i).unwrap_or_default();
        let usd_per_mwh = p
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| err("usd_per_mwh", format!("`{p}` is not a finite price")))?;
        out.push(ercot::IntervalPrice { start, usd_per_mwh });
    }
    if out.is_empty() {
        return Err(ercot::ErcotError {
            row: 1,
            column: None,
            problem: "no rows after the header".into(),
        });
    }
    out.sort_by_key(|p| p.start);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_csv_rows_sort_and_name_bad_cells() {
        let p = parse_simple_csv(
            "time,usd_per_mwh\n2026-06-01T00:15:00Z,-4.5\n2026-06-01T00:00:00Z,30\n",
        )
        .unwrap();
        assert_eq!(p[0].usd_per_mwh, 30.0);
        assert_eq!(p[1].usd_per_mwh, -4.5);
        let e = parse_simple_csv("time,usd_per_mwh\n2026-06-01T00:00:00Z,inf\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 2, column `usd_per_mwh`"), "{e}");
        assert!(
            parse_simple_csv("when,price\n")
                .unwrap_err()
                .to_string()
                .contains("`time`")
        );
    }
}
