//! Faults an emulated miner can be told to show, and the malformed-JSON quirks of real firmwares.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::SimError;

/// Hashrate unit of the keys a cgminer-style reply uses (`"MHS av"`, `"GHS 5s"`, `"THS av"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashUnit {
    /// MH/s keys (`MHS av`): Whatsminer, BOSminer.
    Mhs,
    /// GH/s keys (`GHS 5s`): stock Antminer, LuxOS.
    Ghs,
    /// TH/s keys (`THS av`): some newer builds.
    Ths,
}

impl HashUnit {
    fn prefix(self) -> &'static str {
        match self {
            HashUnit::Mhs => "MHS ",
            HashUnit::Ghs => "GHS ",
            HashUnit::Ths => "THS ",
        }
    }

    fn per_ths(self) -> f64 {
        match self {
            HashUnit::Mhs => 1e6,
            HashUnit::Ghs => 1e3,
            HashUnit::Ths => 1.0,
        }
    }
}

/// A malformed-JSON quirk real firmwares put in their cgminer-style (4028) replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JsonQuirk {
    /// A trailing comma before the closing brace: `..."id":1,}`.
    TrailingComma,
    /// Two objects with no comma between them: `}{` (bmminer `stats`).
    MissingComma,
    /// A comma right after an opening bracket: `[,{`.
    LeadingComma,
    /// A raw (unescaped) newline inside a string value.
    RawNewline,
    /// An empty string value glued to the next key: `"Info":"""temp0":0` (btminer).
    MissingCommaTemp,
    /// Bare `inf` and `nan` as numbers (Avalon).
    InfNan,
    /// Garbage bytes before the closing `,"id":1}`.
    GarbageBeforeId,
    /// The reply cut short (no closing brace, no NUL), as when a firmware's send buffer overflows.
    Truncated,
    /// Every number sent as a string (`"Elapsed":"3600"`).
    NumbersAsStrings,
    /// Hashrate keys in another unit than the dialect's usual one, values scaled to match.
    HashrateUnit(HashUnit),
    /// Bytes that are not UTF-8 inside a string value.
    NonUtf8,
}

/// A fault an emulated miner shows on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Accept connections, read the request, never answer (every port).
    Hang,
    /// Accept connections and close them without a reply (every port).
    CloseWithoutReply,
    /// cgminer-style replies without the terminating NUL byte (the connection still closes).
    NoNul,
    /// A malformed-JSON quirk in cgminer-style replies.
    Quirk(JsonQuirk),
    /// Every cgminer-style command fails with `STATUS` `E` and this code (14 invalid command,
    /// 45 access denied).
    StatusError(u32),
    /// LuxOS: `logon` answers Code 402 (another session is active).
    LuxosSessionBusy,
    /// LuxOS: every session expires before it is used: the use is rejected as an invalid
    /// session and the session dropped, so a new `logon` succeeds (and expires in turn).
    LuxosSessionExpired,
    /// Whatsminer: encrypted writes fail with this token error (135 token check failed,
    /// 136 token expired / too many tokens); v3 writes fail the same way.
    WhatsminerToken(u32),
    /// Antminer: `set_miner_conf.cgi` answers `M000` success and changes nothing.
    AntminerNoop,
    /// Every login is rejected: HTTP 401 on Antminer/Braiins, failed logon/token elsewhere.
    WrongCredentials,
}

impl Fault {
    /// Every fault name `FromStr` accepts, for help texts.
    pub const NAMES: &'static str = "hang, close, no-nul, trailing-comma, missing-comma, leading-comma, \
raw-newline, missing-comma-temp, inf-nan, garbage-before-id, truncated, numbers-as-strings, \
hashrate-mhs, hashrate-ghs, hashrate-ths, non-utf8, status-14, status-45, luxos-402, luxos-expired, \
token-135, token-136, noop, wrong-credentials";
}

impl FromStr for Fault {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use JsonQuirk as Q;
        Ok(match s {
            "hang" => Fault::Hang,
            "close" => Fault::CloseWithoutReply,
            "no-nul" => Fault::NoNul,
            "trailing-comma" => Fault::Quirk(Q::TrailingComma),
            "missing-comma" => Fault::Quirk(Q::MissingComma),
            "leading-comma" => Fault::Quirk(Q::LeadingComma),
            "raw-newline" => Fault::Quirk(Q::RawNewline),
            "missing-comma-temp" => Fault::Quirk(Q::MissingCommaTemp),
            "inf-nan" => Fault::Quirk(Q::InfNan),
            "garbage-before-id" => Fault::Quirk(Q::GarbageBeforeId),
            "truncated" => Fault::Quirk(Q::Truncated),
            "numbers-as-strings" => Fault::Quirk(Q::NumbersAsStrings),
            "hashrate-mhs" => Fault::Quirk(Q::HashrateUnit(HashUnit::Mhs)),
            "hashrate-ghs" => Fault::Quirk(Q::HashrateUnit(HashUnit::Ghs)),
            "hashrate-ths" => Fault::Quirk(Q::HashrateUnit(HashUnit::Ths)),
            "non-utf8" => Fault::Quirk(Q::NonUtf8),
            "status-14" => Fault::StatusError(14),
            "status-45" => Fault::StatusError(45),
            "luxos-402" => Fault::LuxosSessionBusy,
            "luxos-expired" => Fault::LuxosSessionExpired,
            "token-135" => Fault::WhatsminerToken(135),
            "token-136" => Fault::WhatsminerToken(136),
            "noop" => Fault::AntminerNoop,
            "wrong-credentials" => Fault::WrongCredentials,
            other => return Err(SimError::UnknownFault(other.to_owned())),
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use JsonQuirk as Q;
        let name = match self {
            Fault::Hang => "hang",
            Fault::CloseWithoutReply => "close",
            Fault::NoNul => "no-nul",
            Fault::Quirk(Q::TrailingComma) => "trailing-comma",
            Fault::Quirk(Q::MissingComma) => "missing-comma",
            Fault::Quirk(Q::LeadingComma) => "leading-comma",
            Fault::Quirk(Q::RawNewline) => "raw-newline",
            Fault::Quirk(Q::MissingCommaTemp) => "missing-comma-temp",
            Fault::Quirk(Q::InfNan) => "inf-nan",
            Fault::Quirk(Q::GarbageBeforeId) => "garbage-before-id",
            Fault::Quirk(Q::Truncated) => "truncated",
            Fault::Quirk(Q::NumbersAsStrings) => "numbers-as-strings",
            Fault::Quirk(Q::HashrateUnit(HashUnit::Mhs)) => "hashrate-mhs",
            Fault::Quirk(Q::HashrateUnit(HashUnit::Ghs)) => "hashrate-ghs",
            Fault::Quirk(Q::HashrateUnit(HashUnit::Ths)) => "hashrate-ths",
            Fault::Quirk(Q::NonUtf8) => "non-utf8",
            Fault::StatusError(code) => return write!(f, "status-{code}"),
            Fault::LuxosSessionBusy => "luxos-402",
            Fault::LuxosSessionExpired => "luxos-expired",
            Fault::WhatsminerToken(code) => return write!(f, "token-{code}"),
            Fault::AntminerNoop => "noop",
            Fault::WrongCredentials => "wrong-credentials",
        };
        f.write_str(name)
    }
}

/// Serialize a cgminer-style reply, then apply the quirks among `faults`.
///
/// Returns the body (without the NUL) and whether the quirks cut it short (no NUL then).
pub(crate) fn render(mut reply: Value, faults: &[Fault]) -> (Vec<u8>, bool) {
    let quirks: Vec<JsonQuirk> = faults
        .iter()
        .filter_map(|f| {
            if let Fault::Quirk(q) = f {
                Some(*q)
            } else {
                None
            }
        })
        .collect();
    for q in &quirks {
        match q {
            JsonQuirk::NumbersAsStrings => numbers_to_strings(&mut reply, true),
            JsonQuirk::HashrateUnit(unit) => rescale_hashrate_keys(&mut reply, *unit),
            _ => {}
        }
    }
    let mut body = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
    let mut truncated = false;
    for q in &quirks {
        match q {
            JsonQuirk::TrailingComma => {
                if let Some(i) = rfind(&body, b"}") {
                    body.insert(i, b',');
                }
            }
            JsonQuirk::MissingComma => {
                if let Some(i) = find(&body, b"},{") {
                    body.remove(i + 1);
                } else if let Some(i) = find(&body, b"}],") {
                    // A one-object reply: give it a second (empty) object glued to the first.
                    splice(&mut body, i + 1, b"{}");
                }
            }
            JsonQuirk::LeadingComma => {
                if let Some(i) = rfind(&body, b":[{") {
                    body.insert(i + 2, b',');
                }
            }
            JsonQuirk::RawNewline => {
                if let Some(i) = find(&body, b"\":\"") {
                    body.insert(i + 3, b'\n');
                }
            }
            JsonQuirk::MissingCommaTemp => {
                if let Some(i) = find(&body, b"\"When\":") {
                    splice(&mut body, i, b"\"Info\":\"\"\"temp0\":0,");
                }
            }
            JsonQuirk::InfNan => {
                let mut hit = false;
                for (key, word) in [
                    (&b"\"Temperature\":"[..], &b"nan"[..]),
                    (b"\"Device Hardware%\":", b"inf"),
                    (b"\"temp\":", b"nan"),
                ] {
                    hit |= replace_number_after(&mut body, key, word);
                }
                if !hit {
                    replace_number_after(&mut body, b"\"When\":", b"inf");
                }
            }
            JsonQuirk::GarbageBeforeId => {
                if let Some(i) = rfind(&body, b",\"id\":") {
                    splice(&mut body, i, b"]}xx\x01garbage");
                }
            }
            JsonQuirk::NonUtf8 => {
                let at = find(&body, b"\"Description\":\"")
                    .map(|i| i + 15)
                    .or_else(|| find(&body, b"\":\"").map(|i| i + 3));
                if let Some(i) = at {
                    splice(&mut body, i, b"\xff\xfe\xc3");
                }
            }
            JsonQuirk::Truncated => truncated = true,
            JsonQuirk::NumbersAsStrings | JsonQuirk::HashrateUnit(_) => {}
        }
    }
    if truncated {
        body.truncate(body.len() * 3 / 5);
    }
    (body, truncated)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn splice(body: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    body.splice(at..at, bytes.iter().copied());
}

/// Replace the JSON number following the first `key` with `word`. True when one was replaced.
fn replace_number_after(body: &mut Vec<u8>, key: &[u8], word: &[u8]) -> bool {
    let Some(i) = find(body, key) else {
        return false;
    };
    let start = i + key.len();
    let len = body[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'e' | b'E' | b'+'))
        .count();
    if len == 0 {
        return false;
    }
    body.splice(start..start + len, word.iter().copied());
    true
}

fn numbers_to_strings(v: &mut Value, top: bool) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if top && k == "id" {
                    continue;
                }
                numbers_to_strings(child, false);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| numbers_to_strings(c, false)),
        Value::Number(n) => *v = Value::String(n.to_string()),
        _ => {}
    }
}

fn rescale_hashrate_keys(v: &mut Value, unit: HashUnit) {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let from = [HashUnit::Mhs, HashUnit::Ghs, HashUnit::Ths]
                    .into_iter()
                    .find(|u| k.starts_with(u.prefix()));
                match (from, map.remove(&k)) {
                    (Some(from), Some(val)) if from != unit => {
                        let scaled = val
                            .as_f64()
                            .map(|x| x / from.per_ths() * unit.per_ths())
                            .map_or(val, |x| serde_json::json!(x));
                        map.insert(format!("{}{}", unit.prefix(), &k[4..]), scaled);
                    }
                    (_, Some(mut val)) => {
                        rescale_hashrate_keys(&mut val, unit);
                        map.insert(k, val);
                    }
                    (_, None) => {}
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|c| rescale_hashrate_keys(c, unit)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply() -> Value {
        json!({"STATUS":[{"STATUS":"S","When":1,"Code":11,"Msg":"Summary","Description":"cgminer 4.9.2"}],
               "SUMMARY":[{"Elapsed":10,"GHS 5s":104000.5,"Temperature":70.0}],"id":1})
    }

    fn text(f: Fault) -> String {
        String::from_utf8_lossy(&render(reply(), &[f]).0).into_owned()
    }

    #[test]
    fn every_fault_name_round_trips() {
        for name in Fault::NAMES.split(", ") {
            let f: Fault = name.parse().unwrap();
            assert_eq!(f.to_string(), name);
        }
        assert!("nope".parse::<Fault>().is_err());
    }

    #[test]
    fn quirks_produce_what_firmwares_send() {
        assert!(text(Fault::Quirk(JsonQuirk::TrailingComma)).ends_with(",}"));
        assert!(text(Fault::Quirk(JsonQuirk::MissingComma)).contains("}{"));
        assert!(text(Fault::Quirk(JsonQuirk::LeadingComma)).contains("[,{"));
        assert!(text(Fault::Quirk(JsonQuirk::RawNewline)).contains('\n'));
        assert!(text(Fault::Quirk(JsonQuirk::MissingCommaTemp)).contains("\"\"temp0"));
        assert!(text(Fault::Quirk(JsonQuirk::InfNan)).contains(":nan"));
        assert!(text(Fault::Quirk(JsonQuirk::GarbageBeforeId)).contains("garbage,\"id\":1}"));
        assert!(text(Fault::Quirk(JsonQuirk::NumbersAsStrings)).contains("\"Elapsed\":\"10\""));
        let t = text(Fault::Quirk(JsonQuirk::HashrateUnit(HashUnit::Ths)));
        assert!(t.contains("\"THS 5s\":104.0005"), "{t}");
        let (raw, cut) = render(reply(), &[Fault::Quirk(JsonQuirk::NonUtf8)]);
        assert!(std::str::from_utf8(&raw).is_err() && !cut);
        let (raw, cut) = render(reply(), &[Fault::Quirk(JsonQuirk::Truncated)]);
        assert!(cut && serde_json::from_slice::<Value>(&raw).is_err());
        assert!(serde_json::from_slice::<Value>(&render(reply(), &[]).0).is_ok());
    }
}
