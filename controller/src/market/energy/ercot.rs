//! ERCOT real-time settlement point prices (report NP6-905-CD): 15-minute intervals in Central
//! Prevailing Time, hour-ending 1–24, interval 1–4, with a DST flag for the repeated hour.
//!
//! Header `DeliveryDate,DeliveryHour,DeliveryInterval,SettlementPointName,SettlementPointType,
//! SettlementPointPrice,DSTFlag` (some downloads spell the names with spaces; both are read).
//! Dates are `MM/DD/YYYY` (ERCOT's files) or `YYYY-MM-DD` (its public API). DSTFlag is `Y` in
//! the second pass of the repeated autumn hour (then standard time) and `N` otherwise, as
//! ERCOT's EWS message descriptions and gridstatus' ERCOT parser read it. The skipped spring
//! hour has no rows; a row that names a local time that does not exist is refused.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::America::Chicago;

/// One interval's price at the chosen settlement point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntervalPrice {
    pub start: DateTime<Utc>,
    pub usd_per_mwh: f64,
}

/// The length of a settlement interval.
pub const INTERVAL: Duration = Duration::minutes(15);

/// A row or header that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("row {row}{}: {problem}", .column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
pub struct ErcotError {
    /// 1-based line (the header is row 1).
    pub row: usize,
    pub column: Option<String>,
    pub problem: String,
}

const DATE: &str = "deliverydate";
const HOUR: &str = "deliveryhour";
const INTERVAL_COL: &str = "deliveryinterval";
const POINT: &str = "settlementpointname";
const PRICE: &str = "settlementpointprice";
const DST: &str = "dstflag";

/// The intervals of `settlement_point` in `text`, oldest first.
pub fn parse(text: &str, settlement_point: &str) -> Result<Vec<IntervalPrice>, ErcotError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| ErcotError {
        row: 1,
        column: None,
        problem: format!("cannot read the header: {e}"),
    })?;
    let names: Vec<String> = header
        .iter()
        .map(|h| {
            h.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .collect();
    let col = |name: &str| names.iter().position(|n| n == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| ErcotError {
            row: 1,
            column: None,
            problem: format!(
                "no `{name}` column: is this ERCOT's real-time settlement point price report (NP6-905-CD)?"
            ),
        })
    };
    let (date_i, hour_i, interval_i, point_i, price_i) = (
        need(DATE)?,
        need(HOUR)?,
        need(INTERVAL_COL)?,
        need(POINT)?,
        need(PRICE)?,
    );
    let dst_i = col(DST);
    let mut out: Vec<IntervalPrice> = Vec::new();
    let mut points_seen: Vec<String> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 2;
        let record = record.map_err(|e| ErcotError {
            row,
            column: None,
            problem: e.to_string(),
        })?;
        let cell = |idx: usize, name: &str| {
            record.get(idx).ok_or_else(|| ErcotError {
                row,
                column: Some(name.to_owned()),
                problem: "missing (the row is short)".into(),
            })
        };
        let point = cell(point_i, "SettlementPointName")?;
        if point != settlement_point {
            if points_seen.len() < 12 && !points_seen.iter().any(|p| p == point) {
                points_seen.push(point.to_owned());
            }
            continue;
        }
        let bad = |column: &str, problem: String| ErcotError {
            row,
            column: Some(column.to_owned()),
            problem,
        };
        let date_text = cell(date_i, "DeliveryDate")?;
        let date = NaiveDate::parse_from_str(date_text, "%m/%d/%Y")
            .or_else(|_| NaiveDate::parse_from_str(date_text, "%Y-%m-%d"))
            .map_err(|_| bad("DeliveryDate", format!("`{date_text}` is not MM/DD/YYYY")))?;
        let hour_text = cell(hour_i, "DeliveryHour")?;
        let hour = hour_text
            .split(':')
            .next()
            .and_then(|h| h.parse::<u32>().ok())
            .filter(|h| (1..=24).contains(h))
            .ok_or_else(|| {
                bad(
                    "DeliveryHour",
                    format!("`{hour_text}` is not an hour-ending 1 to 24"),
                )
            })?;
        let interval_text = cell(interval_i, "DeliveryInterval")?;
        let interval = interval_text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=4).contains(n))
            .ok_or_else(|| {
                bad(
                    "DeliveryInterval",
                    format!("`{interval_text}` is not an interval 1 to 4"),
                )
            })?;
        let repeated = match dst_i.map(|i| cell(i, "DSTFlag")).transpose()? {
            None | Some("") => false,
            Some(f) if f.eq_ignore_ascii_case("n") => false,
            Some(f) if f.eq_ignore_ascii_case("y") => true,
            Some(f) => return Err(bad("DSTFlag", format!("`{f}` is neither Y nor N"))),
        };
        let price_text = cell(price_i, "SettlementPointPrice")?;
        let usd_per_mwh = price_text
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite())
            .ok_or_else(|| {
                bad(
                    "SettlementPointPrice",
                    format!("`{price_text}` is not a finite price"),
                )
            })?;
        let start =
            interval_start(date, hour, interval, repeated).map_err(|p| bad("DeliveryHour", p))?;
        if out.iter().any(|p| p.start == start) {
            return Err(ErcotError {
                row,
                column: None,
                problem: format!(
                    "a second price for {settlement_point} in the interval starting {start}"
                ),
            });
        }
        out.push(IntervalPrice { start, usd_per_mwh });
    }
    if out.is_empty() {
        return Err(ErcotError {
            row: 1,
            column: Some("SettlementPointName".into()),
            problem: format!(
                "no rows for settlement point `{settlement_point}` (the file has: {})",
                if points_seen.is_empty() {
                    "no rows".to_owned()
                } else {
                    points_seen.join(", ")
                }
            ),
        });
    }
    out.sort_by_key(|p| p.start);
    Ok(out)
}

/// The UTC start of interval `interval` (1–4) of hour-ending `hour_ending` (1–24) on `date` in
/// Central Prevailing Time; `repeated` picks the second (standard-time) pass of the autumn hour.
pub fn interval_start(
    date: NaiveDate,
    hour_ending: u32,
    interval: u32,
    repeated: bool,
) -> Result<DateTime<Utc>, String> {
    let minutes = (i64::from(hour_ending) - 1) * 60 + (i64::from(interval) - 1) * 15;
    let local = date.and_time(NaiveTime::MIN) + Duration::minutes(minutes);
    match Chicago.from_local_datetime(&local) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, second) => {
            Ok(if repeated { second } else { first }.with_timezone(&Utc))
        }
        LocalResult::None => Err(format!(
            "{local} does not exist in Central Prevailing Time (the hour skipped in spring)"
        )),
    }
}

/// The interval in force at `now`: the latest one that has started. It may have ended already
/// when the feed lags; the reading's age then says so.
pub fn in_force(prices: &[IntervalPrice], now: DateTime<Utc>) -> Option<&IntervalPrice> {
    let i = prices.partition_point(|p| p.start <= now);
    prices.get(i.checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn summer_and_winter_intervals_map_to_utc() {
        // CDT is UTC−5: hour-ending 15, interval 3 starts 14:30 local = 19:30Z.
        assert_eq!(
            interval_start(d(2025, 7, 15), 15, 3, false).unwrap(),
            utc("2025-07-15T19:30:00Z")
        );
        // CST is UTC−6.
        assert_eq!(
            interval_start(d(2025, 1, 15), 1, 1, false).unwrap(),
            utc("2025-01-15T06:00:00Z")
        );
        // Hour-ending 24, interval 4 starts 23:45 local.
        assert_eq!(
            interval_start(d(2025, 1, 15), 24, 4, false).unwrap(),
            utc("2025-01-16T05:45:00Z")
        );
    }

    #[test]
    fn the_repeated_autumn_hour_is_told_apart_by_the_dst_flag() {
        // 2025-11-02: 01:00–02:00 local happens twice, first in CDT (06:00Z), then CST (07:00Z).
        assert_eq!(
            interval_start(d(2025, 11, 2), 2, 1, false).unwrap(),
            utc("2025-11-02T06:00:00Z")
        );
        assert_eq!(
            interval_start(d(2025, 11, 2), 2, 1, true).unwrap(),
            utc("2025-11-02T07:00:00Z")
        );
        assert_eq!(
            interval_start(d(2025, 11, 2), 3, 1, false).unwrap(),
            utc("2025-11-02T08:00:00Z")
        );
    }

    #[test]
    fn the_skipped_spring_hour_is_refused() {
        // 2025-03-09: 02:00–03:00 local does not exist.
        assert_eq!(
            interval_start(d(2025, 3, 9), 2, 4, false).unwrap(),
            utc("2025-03-09T07:45:00Z")
        );
        assert!(
            interval_start(d(2025, 3, 9), 3, 1, false)
                .unwrap_err()
                .contains("does not exist")
        );
        assert_eq!(
            interval_start(d(2025, 3, 9), 4, 1, false).unwrap(),
            utc("2025-03-09T08:00:00Z")
        );
    }

    const FILE: &str = "DeliveryDate,DeliveryHour,DeliveryInterval,SettlementPointName,SettlementPointType,SettlementPointPrice,DSTFlag\n\
        11/02/2025,2,1,HB_NORTH,HU,21.50,N\n\
        11/02/2025,2,1,HB_WEST,HU,-3.10,N\n\
        11/02/2025,2,1,HB_NORTH,HU,19.25,Y\n\
        11/02/2025,1,4,HB_NORTH,HU,22.00,N\n";

    #[test]
    fn rows_of_the_chosen_point_come_sorted_and_the_one_in_force_is_picked() {
        let p = parse(FILE, "HB_NORTH").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].start, utc("2025-11-02T05:45:00Z"));
        assert_eq!(
            in_force(&p, utc("2025-11-02T06:59:00Z"))
                .unwrap()
                .usd_per_mwh,
            21.5
        );
        assert_eq!(
            in_force(&p, utc("2025-11-02T07:00:00Z"))
                .unwrap()
                .usd_per_mwh,
            19.25
        );
        assert!(in_force(&p, utc("2025-11-02T05:00:00Z")).is_none());
        assert_eq!(parse(FILE, "HB_WEST").unwrap()[0].usd_per_mwh, -3.1);
    }

    #[test]
    fn spaced_headers_and_iso_dates_are_read() {
        let text = "Delivery Date,Delivery Hour,Delivery Interval,Settlement Point Name,Settlement Point Type,Settlement Point Price\n\
            2025-07-15,15,3,LZ_WEST,LZ,1234.5\n";
        let p = parse(text, "LZ_WEST").unwrap();
        assert_eq!(p[0].start, utc("2025-07-15T19:30:00Z"));
        assert_eq!(p[0].usd_per_mwh, 1234.5);
    }

    #[test]
    fn bad_rows_name_their_row_and_column() {
        let head = "DeliveryDate,DeliveryHour,DeliveryInterval,SettlementPointName,SettlementPointType,SettlementPointPrice,DSTFlag\n";
        for (row, want) in [
            (
                "13/45/2025,1,1,HB_NORTH,HU,1,N",
                "row 2, column `DeliveryDate`",
            ),
            ("01/01/2025,25,1,HB_NORTH,HU,1,N", "column `DeliveryHour`"),
            (
                "01/01/2025,1,5,HB_NORTH,HU,1,N",
                "column `DeliveryInterval`",
            ),
            (
                "01/01/2025,1,1,HB_NORTH,HU,NaN,N",
                "column `SettlementPointPrice`",
            ),
            ("01/01/2025,1,1,HB_NORTH,HU,abc,N", "not a finite price"),
            ("01/01/2025,1,1,HB_NORTH,HU,1,X", "column `DSTFlag`"),
            ("03/09/2025,3,1,HB_NORTH,HU,1,N", "does not exist"),
            ("01/01/2025,1,1,HB_NORTH", "row is short"),
            (
                "01/01/2025,1,1,HB_SOUTH,HU,1,N",
                "no rows for settlement point `HB_NORTH` (the file has: HB_SOUTH)",
            ),
        ] {
            let e = parse(&format!("{head}{row}\n"), "HB_NORTH")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{row}: {e}");
        }
        let e = parse("time,price\n1,2\n", "HB_NORTH")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NP6-905-CD"), "{e}");
        let dup = format!("{head}01/01/2025,1,1,HB_NORTH,HU,1,N\n01/01/2025,1,1,HB_NORTH,HU,2,N\n");
        assert!(
            parse(&dup, "HB_NORTH")
                .unwrap_err()
                .to_string()
                .contains("row 3: a second price")
        );
    }
}
