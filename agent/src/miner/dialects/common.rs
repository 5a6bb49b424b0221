//! Reading helpers shared by the cgminer-family dialects: boards, fans, pools, uptime and
//! miner-reported errors out of `summary`, `stats`, `devs`/`edevs` and `pools` replies.

use serde_json::Value;

use crate::miner::cgminer::parse::{hashrate_ths, number, number_at, string_at};
use crate::miner::{BoardReading, FanReading, Reading};

/// The first element of an upper-case section (`SUMMARY`, `STATS`, ...), if any.
pub fn section<'a>(reply: Option<&'a Value>, name: &str) -> &'a [Value] {
    match reply.and_then(|r| r.get(name)) {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

/// Fills hashrate, uptime and errors from a `summary` reply's first SUMMARY entry.
pub fn apply_summary(r: &mut Reading, summary: Option<&Value>) {
    let Some(s) = section(summary, "SUMMARY").first() else {
        return;
    };
    r.hashrate_ths = hashrate_ths(s);
    r.uptime_s = number_at(s, &["Elapsed", "Uptime"]).map(|v| v.max(0.0) as u64);
    if let Some(p) = number_at(s, &["Power"]) {
        r.power_w = Some(p);
    }
    if let Some(t) = number_at(s, &["Power Limit"]) {
        r.power_target_w = Some(t.max(0.0) as u32);
    }
    for key in ["Error Code", "error_code"] {
        match s.get(key) {
            Some(Value::Array(errs)) => r.miner_errors.extend(errs.iter().map(render)),
            Some(Value::Object(errs)) => r
                .miner_errors
                .extend(errs.iter().map(|(k, v)| format!("{k}: {}", render(v)))),
            _ => {}
        }
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Boards from `devs`/`edevs` (`DEVS` entries with `MHS 5s`/`Temperature`/`Chip Temp Avg`).
pub fn boards_from_devs(devs: Option<&Value>) -> Vec<BoardReading> {
    section(devs, "DEVS")
        .iter()
        .enumerate()
        .map(|(i, d)| BoardReading {
            index: number_at(d, &["ASC", "Slot", "ID"]).map_or(i as u32, |v| v.max(0.0) as u32),
            hashrate_ths: hashrate_ths(d),
            temperature_c: number_at(d, &["Chip Temp Avg", "Temperature", "Temp"]),
        })
        .collect()
}

/// Boards and fans from bmminer-style `stats` (`chain_rateN` GH/s, `temp2_N`/`temp_chipN`,
/// `fanN`), the second STATS entry on stock firmware.
pub fn boards_and_fans_from_stats(stats: Option<&Value>) -> (Vec<BoardReading>, Vec<FanReading>) {
    let mut boards = Vec::new();
    let mut fans = Vec::new();
    for entry in section(stats, "STATS") {
        for n in 1..=16u32 {
            let rate = entry.get(format!("chain_rate{n}")).and_then(number);
            let temp = [
                format!("temp_chip{n}"),
                format!("temp2_{n}"),
                format!("temp{n}"),
            ]
            .iter()
            .find_map(|k| entry.get(k).and_then(chip_temp));
            if rate.is_some() {
                boards.push(BoardReading {
                    index: n - 1,
                    hashrate_ths: rate.map(|g| g / 1000.0),
                    temperature_c: temp,
                });
            }
            if let Some(rpm) = entry.get(format!("fan{n}")).and_then(number) {
                fans.push(FanReading {
                    index: n - 1,
                    rpm: Some(rpm),
                });
            }
        }
    }
    (boards, fans)
}

/// `temp_chip1` is either a number or a dash-separated list (`"60-62-75-77"`): take the highest.
fn chip_temp(v: &Value) -> Option<f64> {
    number(v).or_else(|| {
        v.as_str()?
            .split('-')
            .filter_map(|p| p.trim().parse::<f64>().ok())
            .filter(|f| f.is_finite())
            .reduce(f64::max)
    })
}

/// Fans from a `fans` reply (`FANS` entries with `RPM`) or Whatsminer summary (`Fan Speed In/Out`).
pub fn fans_from(reply: Option<&Value>, summary: Option<&Value>) -> Vec<FanReading> {
    let mut fans: Vec<FanReading> = section(reply, "FANS")
        .iter()
        .enumerate()
        .map(|(i, f)| FanReading {
            index: number_at(f, &["ID", "FAN"]).map_or(i as u32, |v| v.max(0.0) as u32),
            rpm: number_at(f, &["RPM", "Speed"]),
        })
        .collect();
    if fans.is_empty()
        && let Some(s) = section(summary, "SUMMARY").first()
    {
        for (i, k) in ["Fan Speed In", "Fan Speed Out"].iter().enumerate() {
            if let Some(rpm) = number_at(s, &[k]) {
                fans.push(FanReading {
                    index: i as u32,
                    rpm: Some(rpm),
                });
            }
        }
    }
    fans
}

/// The pool in use: the first alive pool with the best (lowest) priority, or the one flagged
/// `Stratum Active`.
pub fn active_pool(pools: Option<&Value>) -> Option<String> {
    let list = section(pools, "POOLS");
    if let Some(p) = list
        .iter()
        .find(|p| p.get("Stratum Active").and_then(Value::as_bool) == Some(true))
    {
        return string_at(p, &["URL", "Url", "url"]);
    }
    list.iter()
        .filter(|p| string_at(p, &["Status"]).is_none_or(|s| s.eq_ignore_ascii_case("alive")))
        .min_by(|a, b| {
            let pa = number_at(a, &["Priority"]).unwrap_or(f64::MAX);
            let pb = number_at(b, &["Priority"]).unwrap_or(f64::MAX);
            pa.total_cmp(&pb)
        })
        .and_then(|p| string_at(p, &["URL", "Url", "url"]))
}

/// Sums per-board hashrates when the summary has none.
pub fn fill_hashrate_from_boards(r: &mut Reading) {
    if r.hashrate_ths.is_none() {
        let rates: Vec<f64> = r.boards.iter().filter_map(|b| b.hashrate_ths).collect();
        if !rates.is_empty() {
            r.hashrate_ths = Some(rates.iter().sum());
        }
    }
}

/// A number at the start of a string such as `"3250 W"`, or a plain number.
pub fn leading_number(v: &Value) -> Option<f64> {
    number(v).or_else(|| {
        let s = v.as_str()?.trim();
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(s.len());
        s[..end].parse::<f64>().ok().filter(|f| f.is_finite())
    })
}

/// A watt value from a miner's reply as a `u32`, when it is one (finite, positive, in range).
pub fn watts_u32(w: f64) -> Option<u32> {
    // Truncated, as the read path turns a profile's watts into the target it reports.
    (w.is_finite() && w >= 1.0 && w <= f64::from(u32::MAX)).then(|| w.trunc() as u32)
}

/// Hashing above this counts as mining (TH/s); below it a miner is not doing useful work.
pub const HASHING_THS: f64 = 1e-6;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::miner::cgminer::parse::parse_text;

    #[test]
    fn bmminer_stats_boards_and_fans() {
        // Shape of stock S19 `stats` STATS[1] (asic-rs antminer v2020 rpc fixtures; pyasic
        // backends/antminer.py reads the same keys).
        let v = parse_text(r#"{"STATUS":[{"STATUS":"S"}],"STATS":[{"BMMiner":"1.0.0","Type":"Antminer S19j Pro"},{"Elapsed":600,"fan1":5400,"fan2":5460,"chain_rate1":"34512.3","chain_rate2":"34700.0","temp_chip1":"60-62-75-77","temp2_2":71}],"id":1}"#).unwrap();
        let (boards, fans) = boards_and_fans_from_stats(Some(&v));
        assert_eq!(boards.len(), 2);
        assert!((boards[0].hashrate_ths.unwrap() - 34.5123).abs() < 1e-9);
        assert_eq!(boards[0].temperature_c, Some(77.0));
        assert_eq!(boards[1].temperature_c, Some(71.0));
        assert_eq!(fans.len(), 2);
    }

    #[test]
    fn picks_the_active_pool() {
        let v = parse_text(r#"{"POOLS":[{"URL":"stratum+tcp://b:3333","Priority":1,"Status":"Alive"},{"URL":"stratum+tcp://a:3333","Priority":0,"Status":"Dead"},{"URL":"stratum+tcp://c:3333","Priority":2,"Status":"Alive"}]}"#).unwrap();
        assert_eq!(
            active_pool(Some(&v)).as_deref(),
            Some("stratum+tcp://b:3333")
        );
    }

    #[test]
    fn leading_numbers() {
        assert_eq!(
            leading_number(&Value::String("3250 W".into())),
            Some(3250.0)
        );
        assert_eq!(leading_number(&Value::String("W".into())), None);
    }
}
