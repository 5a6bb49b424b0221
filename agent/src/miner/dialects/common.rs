//! Reading helpers shared by the cgminer-family dialects: boards, fans, pools, uptime and
//! miner-reported errors out of `summary`, `stats`, `devs`/`edevs` and `pools` replies.

use serde_json::Value;

use crate::miner::cgminer::parse::number;
use crate::miner::cgminer::typed::Reply;
use crate::miner::{BoardReading, FanReading, Reading};

/// The first element of an upper-case section (`SUMMARY`, `STATS`, ...), if any.
pub fn section<'a>(reply: Option<&'a Value>, name: &str) -> &'a [Value] {
    match reply.and_then(|r| r.get(name)) {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

/// Fills hashrate, uptime, power, power limit and errors from a `summary` reply's first entry.
pub fn apply_summary(r: &mut Reading, summary: Option<&Reply<'_>>) {
    let Some(s) = summary.and_then(|s| s.summary.first()) else {
        return;
    };
    r.hashrate_ths = s.hashrate.ths();
    r.uptime_s = s
        .elapsed
        .get()
        .or(s.uptime.get())
        .map(|v| v.max(0.0) as u64);
    if let Some(p) = s.power.get() {
        r.power_w = Some(p);
    }
    if let Some(t) = s.power_limit.get() {
        r.power_target_w = Some(t.max(0.0) as u32);
    }
    r.miner_errors.extend(s.error_code.0.iter().cloned());
}

/// Boards from `devs`/`edevs` (`DEVS` entries with `MHS 5s`/`Temperature`/`Chip Temp Avg`).
pub fn boards_from_devs(devs: Option<&Reply<'_>>) -> Vec<BoardReading> {
    devs.map_or(&[][..], |d| &d.devs[..])
        .iter()
        .enumerate()
        .map(|(i, d)| BoardReading {
            index: d
                .asc
                .get()
                .or(d.slot.get())
                .or(d.id.get())
                .map_or(i as u32, |v| v.max(0.0) as u32),
            hashrate_ths: d.hashrate.ths(),
            temperature_c: d
                .chip_temp_avg
                .get()
                .or(d.temperature.get())
                .or(d.temp.get()),
        })
        .collect()
}

/// Boards and fans from bmminer-style `stats` (`chain_rateN` GH/s, `temp_chipN`/`temp2_N`/
/// `tempN`, `fanN`), the second STATS entry on stock firmware.
pub fn boards_and_fans_from_stats(
    stats: Option<&Reply<'_>>,
) -> (Vec<BoardReading>, Vec<FanReading>) {
    let mut boards = Vec::new();
    let mut fans = Vec::new();
    for entry in stats.map_or(&[][..], |s| &s.stats[..]) {
        for (i, rate) in entry.chain_rate.iter().enumerate() {
            let Some(rate) = rate.get() else { continue };
            let temperature_c = entry.chain_temp[i].iter().find_map(|t| *t);
            // A slot with no board: no ASICs answered, nothing hashed, no temperature (Hiveon's
            // builds list all 16 chains this way; stock ones leave the rate empty). A board that
            // is there but dead still reports its temperature, and stays.
            let empty_slot = entry.chain_acn[i].get() == Some(0.0)
                && rate == 0.0
                && temperature_c.is_none_or(|t| t == 0.0);
            if empty_slot {
                continue;
            }
            boards.push(BoardReading {
                index: i as u32,
                hashrate_ths: Some(rate / 1000.0),
                temperature_c,
            });
        }
        for (i, rpm) in entry.fan.iter().enumerate() {
            if let Some(rpm) = rpm.get() {
                fans.push(FanReading {
                    index: i as u32,
                    rpm: Some(rpm),
                });
            }
        }
    }
    (boards, fans)
}

/// Fans from a `fans` reply (`FANS` entries with `RPM`) or Whatsminer summary (`Fan Speed In/Out`).
pub fn fans_from(reply: Option<&Reply<'_>>, summary: Option<&Reply<'_>>) -> Vec<FanReading> {
    let mut fans: Vec<FanReading> = reply
        .map_or(&[][..], |r| &r.fans[..])
        .iter()
        .enumerate()
        .map(|(i, f)| FanReading {
            index: f.id.get().map_or(i as u32, |v| v.max(0.0) as u32),
            rpm: f.rpm.get().or(f.speed.get()),
        })
        .collect();
    if fans.is_empty()
        && let Some(s) = summary.and_then(|s| s.summary.first())
    {
        for (i, rpm) in [s.fan_in, s.fan_out].iter().enumerate() {
            if let Some(rpm) = rpm.get() {
                fans.push(FanReading {
                    index: i as u32,
                    rpm: Some(rpm),
                });
            }
        }
    }
    fans
}

/// The pool in use: the one flagged `Stratum Active`, else the first alive pool with the best
/// (lowest) priority.
pub fn active_pool(pools: Option<&Reply<'_>>) -> Option<String> {
    let list = pools.map_or(&[][..], |p| &p.pools[..]);
    if let Some(p) = list.iter().find(|p| p.stratum_active.0 == Some(true)) {
        return p.url.owned();
    }
    list.iter()
        .filter(|p| {
            p.status
                .as_str()
                .is_none_or(|s| s.eq_ignore_ascii_case("alive"))
        })
        .min_by(|a, b| {
            let pa = a.priority.get().unwrap_or(f64::MAX);
            let pb = b.priority.get().unwrap_or(f64::MAX);
            pa.total_cmp(&pb)
        })
        .and_then(|p| p.url.owned())
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
    number(v).or_else(|| leading_number_text(v.as_str()?))
}

/// [`leading_number`] of text.
pub fn leading_number_text(s: &str) -> Option<f64> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(s.len());
    s[..end].parse::<f64>().ok().filter(|f| f.is_finite())
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
    use crate::miner::cgminer::typed::single;

    #[test]
    fn bmminer_stats_boards_and_fans() {
        // Shape of stock S19 `stats` STATS[1] (asic-rs antminer v2020 rpc fixtures; pyasic
        // backends/antminer.py reads the same keys).
        let raw = br#"{"STATUS":[{"STATUS":"S"}],"STATS":[{"BMMiner":"1.0.0","Type":"Antminer S19j Pro"},{"Elapsed":600,"fan1":5400,"fan2":5460,"chain_rate1":"34512.3","chain_rate2":"34700.0","temp_chip1":"60-62-75-77","temp2_2":71}],"id":1}"#;
        let v = single(raw).unwrap();
        let (boards, fans) = boards_and_fans_from_stats(Some(&v));
        assert_eq!(boards.len(), 2);
        assert!((boards[0].hashrate_ths.unwrap() - 34.5123).abs() < 1e-9);
        assert_eq!(boards[0].temperature_c, Some(77.0));
        assert_eq!(boards[1].temperature_c, Some(71.0));
        assert_eq!(fans.len(), 2);
    }

    #[test]
    fn hiveon_stats_list_sixteen_chains_of_which_three_are_boards() {
        // Keys and the first chains' values as in asic-rs's capture of an S19 on Hiveon
        // (`hiveon_s19x88_stats_captured.json`): every chain 1..16 listed, the empty slots with
        // no ASICs, a zero rate and zero temperatures; the draw as `total_power`, a number.
        let mut chains = String::new();
        for n in 4..=16 {
            chains.push_str(&format!(
                r#""chain_acn{n}":0,"chain_rate{n}":0.0,"temp{n}":0,"temp2_{n}":0,"temp_chip{n}":"0-0-0-0","#
            ));
        }
        let raw = format!(
            r#"{{"STATUS":[{{"STATUS":"S","Code":70}}],"STATS":[{{"BMMiner":"4.11.1 rwglr","Type":"Antminer S19x88 Hiveon"}},{{"Elapsed":805625,"GHS 5s":6751.0,{chains}"chain_acn1":88,"chain_acn2":88,"chain_acn3":0,"chain_rate1":2264.99,"chain_rate2":1781.21,"chain_rate3":0.0,"temp_chip1":"61-61-61-61","temp_chip2":"56-56-56-56","temp_chip3":"48-48-48-48","chain_power1":454,"chain_power2":437,"total_power":1345,"fan1":3090,"fan2":3000}}],"id":1}}"#
        );
        let v = single(raw.as_bytes()).unwrap();
        let (boards, fans) = boards_and_fans_from_stats(Some(&v));
        // Chain 3 answered with no ASICs but is warm: a dead board, kept.
        assert_eq!(
            boards.iter().map(|b| b.index).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "{boards:?}"
        );
        assert_eq!(boards[2].hashrate_ths, Some(0.0));
        assert_eq!(boards[2].temperature_c, Some(48.0));
        assert_eq!(fans.len(), 2);
        let power: Vec<_> = v.stats[1].power.iter().filter_map(|p| p.as_str()).collect();
        assert_eq!(power, vec!["1345"]);
    }

    #[test]
    fn picks_the_active_pool() {
        let raw = br#"{"POOLS":[{"URL":"stratum+tcp://b:3333","Priority":1,"Status":"Alive"},{"URL":"stratum+tcp://a:3333","Priority":0,"Status":"Dead"},{"URL":"stratum+tcp://c:3333","Priority":2,"Status":"Alive"}]}"#;
        let v = single(raw).unwrap();
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
