//! A tolerant reader for what cgminer-family firmwares send on port 4028.
//!
//! Real firmwares send JSON that `serde_json` rejects: trailing `,}`, missing commas (`}{`,
//! `"a""temp0"`), a leading `[,{`, raw newlines inside strings, bare `inf`/`nan`, garbage before
//! `,"id":1}`, replies cut short, and bytes that are not UTF-8. Rather than patching the text with
//! string replacements (which can corrupt string values that happen to contain the pattern), this
//! module is a small recursive-descent parser that accepts JSON and every one of those deviations,
//! and never panics: every input either yields a [`Value`] or a [`ParseError`].
//!
//! Choices that matter for the readings built on top:
//! - `inf`, `nan` (bare or quoted) become `null`: an absent value, never a made-up 0.
//! - A truncated reply keeps every member that was complete; the cut member is dropped.
//! - Numbers keep their JSON type; callers read them through [`number`], which also accepts
//!   numeric strings, because firmwares send both.

use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Why a reply could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty reply")]
    Empty,
    #[error("no JSON object or array in the reply")]
    NoJson,
    #[error("nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
}

/// The bytes a reply consists of: everything before the first NUL (cgminer's terminator).
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|b| *b == 0) {
        Some(i) => &bytes[..i],
        None => bytes,
    }
}

/// Parses one cgminer-style reply. Bytes after a NUL are ignored; invalid UTF-8 is replaced.
pub fn parse_reply(bytes: &[u8]) -> Result<Value, ParseError> {
    let body = until_nul(bytes);
    // Fast path: a healthy firmware's reply is valid JSON, which serde_json reads several times
    // faster than the tolerant parser below (no char vector, no per-char dispatch). The result
    // is the same for valid JSON (see `valid_json_reads_the_same_either_way`); anything
    // serde_json refuses, including `inf`/`nan`, takes the tolerant path.
    if let Ok(v @ (Value::Object(_) | Value::Array(_))) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = String::from_utf8_lossy(body);
    parse_text(&text)
}

/// Parses tolerant JSON text (see the module documentation).
pub fn parse_text(text: &str) -> Result<Value, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    if chars.iter().all(|c| c.is_whitespace()) {
        return Err(ParseError::Empty);
    }
    let mut p = Parser { s: &chars, i: 0 };
    p.skip_ws();
    // "garbage before ,"id":1}": a reply that begins with a member separator is the tail of an
    // object whose opening was lost; read it as an object.
    if p.peek() == Some(',') {
        p.i += 1;
        return p.object_body(1);
    }
    // Skip anything before the first bracket (banners, stray bytes).
    while let Some(c) = p.peek() {
        if c == '{' || c == '[' {
            break;
        }
        p.i += 1;
    }
    match p.peek() {
        Some('{') => {
            p.i += 1;
            let mut top = p.object_body(1)?;
            // Garbage that closed the object early (`]}xx` spliced before `,"id":1}`) may be
            // followed by more members: read them into the same object.
            while let Some(next) = p.next_member_after_garbage() {
                p.i = next;
                if let (Value::Object(map), Ok(Value::Object(more))) = (&mut top, p.object_body(1))
                {
                    for (k, v) in more {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            Ok(top)
        }
        Some('[') => {
            p.i += 1;
            p.array_body(1)
        }
        _ => Err(ParseError::NoJson),
    }
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    /// After a closed top-level object: the position of the next `,` that is followed by a
    /// quoted key, if any.
    fn next_member_after_garbage(&self) -> Option<usize> {
        let mut j = self.i;
        while j < self.s.len() {
            if self.s[j] == ',' {
                let mut k = j + 1;
                while k < self.s.len() && self.s[k].is_whitespace() {
                    k += 1;
                }
                if self.s.get(k) == Some(&'"') {
                    return Some(j + 1);
                }
            }
            j += 1;
        }
        None
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }

    /// Members after the opening `{`; tolerates missing, doubled and trailing commas, garbage
    /// between members, and a missing closing brace at the end of input.
    fn object_body(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        let mut map = Map::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(Value::Object(map)),
                Some('}') => {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                Some(',') => {
                    self.i += 1;
                    continue;
                }
                Some('"') => {}
                Some(_) => {
                    // Garbage where a key should be: skip to the next plausible member start.
                    self.i += 1;
                    continue;
                }
            }
            let Some(key) = self.string() else {
                return Ok(Value::Object(map)); // truncated inside the key
            };
            self.skip_ws();
            match self.peek() {
                Some(':') => self.i += 1,
                // `"a""b":1` — a string followed by a string: the first was a value whose key
                // was lost, or a key missing its colon; either way nothing useful to keep.
                _ => continue,
            }
            self.skip_ws();
            match self.value(depth)? {
                Some(v) => {
                    map.insert(key, v);
                }
                None => return Ok(Value::Object(map)), // truncated inside the value
            }
        }
    }

    /// Elements after the opening `[`; same tolerance as objects.
    fn array_body(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(Value::Array(items)),
                Some(']') => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                Some(',') => {
                    self.i += 1;
                    continue;
                }
                Some('}') => {
                    // A stray closer inside an array: skip it.
                    self.i += 1;
                    continue;
                }
                Some(_) => {}
            }
            let before = self.i;
            match self.value(depth)? {
                Some(v) => items.push(v),
                None if self.i >= self.s.len() => return Ok(Value::Array(items)),
                None => {
                    if self.i == before {
                        self.i += 1; // unreadable element: skip one char and go on
                    }
                }
            }
        }
    }

    /// One value; `None` when the input ends inside it or it is unreadable.
    fn value(&mut self, depth: usize) -> Result<Option<Value>, ParseError> {
        let Some(c) = self.peek() else {
            return Ok(None);
        };
        match c {
            '{' => {
                self.i += 1;
                if self.i >= self.s.len() {
                    return Ok(None);
                }
                self.object_body(depth + 1).map(Some)
            }
            '[' => {
                self.i += 1;
                if self.i >= self.s.len() {
                    return Ok(None);
                }
                self.array_body(depth + 1).map(Some)
            }
            '"' => Ok(self
                .string()
                .map(|s| match s.to_ascii_lowercase().as_str() {
                    "inf" | "-inf" | "+inf" | "nan" | "-nan" | "infinity" | "-infinity" => {
                        Value::Null
                    }
                    _ => Value::String(s),
                })),
            _ => Ok(self.bare()),
        }
    }

    /// A quoted string (the opening quote at `self.i`); raw control characters are kept as they
    /// are, unknown escapes keep the escaped character. `None` when the input ends inside it.
    fn string(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                '"' => return Some(out),
                '\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'u' => {
                            let hex: String = self.s.iter().skip(self.i).take(4).collect();
                            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                                Some(ch) if hex.len() == 4 => {
                                    self.i += 4;
                                    out.push(ch);
                                }
                                _ => out.push(char::REPLACEMENT_CHARACTER),
                            }
                        }
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
    }

    /// A bare token: number, true/false/null, inf/nan. Reads up to the next delimiter.
    fn bare(&mut self) -> Option<Value> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if matches!(c, ',' | '}' | ']' | '"' | ':' | '{' | '[') || c.is_whitespace() {
                break;
            }
            self.i += 1;
        }
        let token: String = self.s[start..self.i].iter().collect();
        let at_end = self.i >= self.s.len();
        if token.is_empty() {
            return None;
        }
        let v = match token.to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" | "inf" | "-inf" | "+inf" | "nan" | "-nan" | "infinity" | "-infinity" => {
                Value::Null
            }
            _ => number_token(&token)?,
        };
        // A number cut off by the end of input may be missing digits: drop it.
        if at_end && matches!(v, Value::Number(_)) {
            return None;
        }
        Some(v)
    }
}

fn number_token(token: &str) -> Option<Value> {
    if let Ok(i) = token.parse::<i64>() {
        return Some(Value::Number(i.into()));
    }
    if let Ok(u) = token.parse::<u64>() {
        return Some(Value::Number(u.into()));
    }
    let f = token.parse::<f64>().ok()?;
    Number::from_f64(f).map(Value::Number).or(Some(Value::Null))
}

/// A number from a JSON number or a numeric string (firmwares send both); `None` for anything
/// else, including non-finite values.
pub fn number(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    f.is_finite().then_some(f)
}

/// A member of an object, looked up by any of `keys` (first match wins), as a number.
pub fn number_at(obj: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| obj.get(*k).and_then(number))
}

/// A member of an object as a string (numbers are rendered), by any of `keys`.
pub fn string_at(obj: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match obj.get(*k)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// The hashrate in TH/s from whichever cgminer key the firmware uses: `THS`, `GHS`, `MHS` or
/// `KHS`, 5-second value preferred over 1-minute over average.
pub fn hashrate_ths(obj: &Value) -> Option<f64> {
    // The typed reader's table: window first, then unit.
    super::typed::HASHRATE_KEYS
        .iter()
        .find_map(|(key, scale)| obj.get(*key).and_then(number).map(|v| v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_json_reads_the_same_either_way() {
        let replies = [
            r#"{"STATUS":[{"STATUS":"S","When":1700000000,"Code":11,"Msg":"Summary","Description":"cgminer 4.11.1"}],"SUMMARY":[{"Elapsed":600,"GHS 5s":"104000.12","GHS av":103999.5,"Accepted":12,"Hardware Errors":0,"Device Hardware%":0.0}],"id":1}"#,
            r#"{"summary":[{"STATUS":[{"STATUS":"S","Code":11}],"SUMMARY":[{"MHS 5s":1.2e8}],"id":1}],"pools":[{"STATUS":[{"STATUS":"S"}],"POOLS":[{"URL":"stratum+tcp://a:3333","Stratum Active":true}],"id":1}],"id":1}"#,
            r#"[{"a":null,"b":[1,2.5,-3],"c":"x\u00e9\n"},{"d":{}}]"#,
        ];
        for r in replies {
            let tolerant = parse_text(r).unwrap();
            let fast = parse_reply(r.as_bytes()).unwrap();
            assert_eq!(tolerant, fast, "{r}");
        }
    }
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn plain_json_with_nul_terminator() {
        let v = parse_reply(b"{\"STATUS\":[{\"STATUS\":\"S\",\"Code\":11}],\"id\":1}\0").unwrap();
        assert_eq!(v, json!({"STATUS":[{"STATUS":"S","Code":11}],"id":1}));
    }

    #[test]
    fn bytes_after_nul_are_ignored() {
        let v = parse_reply(b"{\"a\":1}\0{\"b\":2}").unwrap();
        assert_eq!(v, json!({"a":1}));
    }

    #[test]
    fn trailing_comma_before_brace() {
        // Whatsminer summary (pyasic rpc/base.py notes btminer's ",}").
        let v = parse_text(r#"{"SUMMARY":[{"Elapsed":5,"Power":3300,}],}"#).unwrap();
        assert_eq!(v, json!({"SUMMARY":[{"Elapsed":5,"Power":3300}]}));
    }

    #[test]
    fn missing_comma_between_objects() {
        // bmminer stats: `}{` between STATS entries.
        let v = parse_text(r#"{"STATS":[{"BMMiner":"2.0"}{"ID":"BC50"}],"id":1}"#).unwrap();
        assert_eq!(v["STATS"], json!([{"BMMiner":"2.0"},{"ID":"BC50"}]));
    }

    #[test]
    fn leading_comma_in_array() {
        let v = parse_text(r#"{"STATS":[,{"ID":"BC50"}]}"#).unwrap();
        assert_eq!(v["STATS"], json!([{"ID":"BC50"}]));
    }

    #[test]
    fn raw_newline_inside_string() {
        let v = parse_text("{\"Msg\":\"line one\nline two\",\"Code\":1}").unwrap();
        assert_eq!(v["Msg"], json!("line one\nline two"));
        assert_eq!(v["Code"], json!(1));
    }

    #[test]
    fn missing_comma_before_temp0() {
        // btminer 2023-01-06 build: `"...""temp0"` (pyasic rpc/base.py).
        let v = parse_text(r#"{"Chip Data":"K1""temp0":62,"temp1":63}"#).unwrap();
        assert_eq!(v["Chip Data"], json!("K1"));
        assert_eq!(v["temp0"], json!(62));
        assert_eq!(v["temp1"], json!(63));
    }

    #[test]
    fn inf_and_nan_become_null() {
        let v = parse_text(r#"{"a":inf,"b":"nan","c":-inf,"d":NaN,"e":2.5}"#).unwrap();
        assert_eq!(v, json!({"a":null,"b":null,"c":null,"d":null,"e":2.5}));
    }

    #[test]
    fn garbage_before_id() {
        let v = parse_text("{\"STATUS\":[{\"STATUS\":\"S\"}],\"X\":[]}\u{1}\u{7f}junk,\"id\":1}")
            .unwrap();
        assert_eq!(v["STATUS"][0]["STATUS"], json!("S"));
        let tail = parse_text(r#","id":1}"#).unwrap();
        assert_eq!(tail, json!({"id":1}));
        let mid = parse_text(r#"{"SUMMARY":[{"Elapsed":9}]xx@@,"id":1}"#).unwrap();
        assert_eq!(mid, json!({"SUMMARY":[{"Elapsed":9}],"id":1}));
    }

    #[test]
    fn garbage_that_closes_the_object_early() {
        // What pivot-sim's garbage-before-id quirk does to a reply whose keys are sorted.
        let v =
            parse_text(r#"{"config":[{"A":1}]]}xx\u{1}garbage,"id":1,"summary":[{"GHS 5s":5}]}"#)
                .unwrap();
        assert_eq!(v["summary"][0]["GHS 5s"], json!(5));
        assert_eq!(v["config"][0]["A"], json!(1));
        assert_eq!(v["id"], json!(1));
    }

    #[test]
    fn truncated_reply_keeps_complete_members() {
        let v = parse_text(r#"{"STATUS":[{"STATUS":"S"}],"SUMMARY":[{"Elapsed":100,"MHS 5s":12"#)
            .unwrap();
        assert_eq!(v["SUMMARY"][0]["Elapsed"], json!(100));
        assert!(v["SUMMARY"][0].get("MHS 5s").is_none());
        let v = parse_text(r#"{"a":"unterminated"#).unwrap();
        assert_eq!(v, json!({}));
    }

    #[test]
    fn non_utf8_is_replaced() {
        let v = parse_reply(b"{\"Type\":\"Antminer \xff S19\"}\0").unwrap();
        assert_eq!(v["Type"], json!("Antminer \u{fffd} S19"));
    }

    #[test]
    fn numbers_as_strings_and_hashrate_units() {
        let v = parse_text(r#"{"GHS 5s":"95123.4","Power":"3250"}"#).unwrap();
        assert_eq!(number_at(&v, &["Power"]), Some(3250.0));
        let ths = hashrate_ths(&v).unwrap();
        assert!((ths - 95.1234).abs() < 1e-9);
        let v = parse_text(r#"{"MHS av":110000000.0}"#).unwrap();
        assert!((hashrate_ths(&v).unwrap() - 110.0).abs() < 1e-9);
        let v = parse_text(r#"{"THS 5s":"inf"}"#).unwrap();
        assert_eq!(hashrate_ths(&v), None);
    }

    #[test]
    fn empty_and_nonjson_are_errors() {
        assert_eq!(parse_reply(b""), Err(ParseError::Empty));
        assert_eq!(parse_reply(b"\0"), Err(ParseError::Empty));
        assert_eq!(parse_reply(b"HTTP/1.1 400"), Err(ParseError::NoJson));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000);
        assert_eq!(parse_text(&deep), Err(ParseError::TooDeep));
        let deep = "{\"a\":".repeat(100_000);
        assert_eq!(parse_text(&deep), Err(ParseError::TooDeep));
    }

    #[test]
    fn antminer_s19_summary_from_pyasic_docs() {
        // Shape of a stock bmminer `summary` (pyasic docs, rpc/bmminer.py) with the NUL.
        let raw = b"{\"STATUS\":[{\"STATUS\":\"S\",\"When\":1691496416,\"Code\":11,\"Msg\":\"Summary\",\"Description\":\"bmminer 1.0.0\"}],\"SUMMARY\":[{\"Elapsed\":89,\"GHS 5s\":\"95438.76\",\"GHS av\":95133.26,\"Found Blocks\":0,\"Accepted\":13,\"Rejected\":0,\"Hardware Errors\":4,\"Best Share\":1166745}],\"id\":1}\0";
        let v = parse_reply(raw).unwrap();
        assert!((hashrate_ths(&v["SUMMARY"][0]).unwrap() - 95.43876).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_reply(&bytes);
        }

        #[test]
        fn json_like_noise_never_panics(s in r#"[\{\}\[\]",:0-9a-z\\ \n.\-]{0,400}"#) {
            let _ = parse_text(&s);
        }

        #[test]
        fn valid_json_round_trips(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap();
            let lower = text.to_ascii_lowercase();
            if (v.is_object() || v.is_array()) && !lower.contains("inf") && !lower.contains("nan") {
                prop_assert_eq!(parse_text(&text).unwrap(), v);
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Number(i.into())),
            "[a-zA-Z0-9 _\\-\"\\\\\n]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-zA-Z0-9 ]{1,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
