//! Reading numbers out of JSON replies: a dotted path (`data.0.price`), numbers or numeric
//! strings (mempool's reward stats come as strings), never NaN or infinity.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::error::{Origin, SourceError, SourceErrorKind, excerpt};

/// Why a reply is not the JSON a source expected; the caller adds the source and request.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonProblem {
    pub field: Option<String>,
    pub problem: String,
}

impl JsonProblem {
    /// The error a source reports: which request, which field, what, and the body's start.
    pub fn into_error(self, origin: &Origin, request: &str, body: &[u8]) -> SourceError {
        SourceError::new(
            origin,
            SourceErrorKind::Body {
                request: request.to_owned(),
                field: self.field,
                problem: self.problem,
                excerpt: excerpt(body),
            },
        )
    }

    /// A problem with a field the caller names.
    pub fn field(field: &str, problem: impl Into<String>) -> Self {
        Self::at(field, problem)
    }

    fn at(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            problem: problem.into(),
        }
    }
}

/// Parses a body as JSON, saying so plainly when it is an HTML page or empty.
pub fn parse(body: &[u8]) -> Result<Value, JsonProblem> {
    let trimmed = body.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(JsonProblem {
            field: None,
            problem: "the body is empty".into(),
        });
    }
    if trimmed.first() == Some(&b'<') {
        return Err(JsonProblem {
            field: None,
            problem: "an HTML or XML page, not JSON (is the URL the API's, not a web page's or a login page's?)"
                .into(),
        });
    }
    serde_json::from_slice(body).map_err(|e| JsonProblem {
        field: None,
        problem: format!("not valid JSON: {e}"),
    })
}

/// The value at a dotted path; array elements by index (`data.0.price`).
pub fn at<'v>(root: &'v Value, path: &str) -> Result<&'v Value, JsonProblem> {
    let mut cur = root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let next = match cur {
            Value::Object(m) => m.get(part),
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        cur = next.ok_or_else(|| JsonProblem::at(path, format!("missing (no `{part}`)")))?;
    }
    Ok(cur)
}

/// A finite number at `path`, given as a JSON number or a numeric string.
pub fn number(root: &Value, path: &str) -> Result<f64, JsonProblem> {
    as_number(at(root, path)?, path)
}

/// A finite number from a value that should hold one.
pub fn as_number(v: &Value, path: &str) -> Result<f64, JsonProblem> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() => Ok(n),
        Some(_) => Err(JsonProblem::at(path, format!("{v} is not a finite number"))),
        None => Err(JsonProblem::at(
            path,
            format!("{} is not a number", short(v)),
        )),
    }
}

/// A whole, non-negative number at `path` (heights, satoshi amounts).
pub fn whole(root: &Value, path: &str) -> Result<u64, JsonProblem> {
    let v = at(root, path)?;
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    n.ok_or_else(|| {
        JsonProblem::at(
            path,
            format!("{} is not a whole number of 0 or more", short(v)),
        )
    })
}

/// A time at `path`: Unix seconds (a number or numeric string) or an RFC 3339 string.
pub fn time(root: &Value, path: &str) -> Result<DateTime<Utc>, JsonProblem> {
    let v = at(root, path)?;
    let parsed = match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| s.trim().parse::<i64>().ok().and_then(unix)),
        Value::Number(n) => n.as_i64().and_then(unix),
        _ => None,
    };
    parsed.ok_or_else(|| {
        JsonProblem::at(
            path,
            format!("{} is neither Unix seconds nor an RFC 3339 time", short(v)),
        )
    })
}

fn unix(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        let cut = (0..=40).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_from_numbers_or_numeric_strings_at_a_path() {
        let v = parse(br#"{"data":[{"price":"2.5"},{"price":3}],"USD":104250,"t":"NaN"}"#).unwrap();
        assert_eq!(number(&v, "data.0.price").unwrap(), 2.5);
        assert_eq!(number(&v, "data.1.price").unwrap(), 3.0);
        assert_eq!(number(&v, "USD").unwrap(), 104250.0);
        let e = number(&v, "t").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("t"));
        assert!(e.problem.contains("finite"), "{e:?}");
        assert!(
            number(&v, "data.2.price")
                .unwrap_err()
                .problem
                .contains("missing")
        );
        assert!(
            number(&v, "data")
                .unwrap_err()
                .problem
                .contains("not a number")
        );
    }

    #[test]
    fn whole_numbers_refuse_fractions_and_negatives() {
        let v = parse(br#"{"a":"63811748254","b":-1,"c":1.5}"#).unwrap();
        assert_eq!(whole(&v, "a").unwrap(), 63_811_748_254);
        assert!(whole(&v, "b").is_err());
        assert!(whole(&v, "c").is_err());
    }

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        let v = parse(
            br#"{"a":1703252411,"b":"2026-06-01T00:00:00Z","c":"1703252411","d":true,"e":1e300}"#,
        )
        .unwrap();
        assert_eq!(time(&v, "a").unwrap().timestamp(), 1_703_252_411);
        assert_eq!(
            time(&v, "b").unwrap().to_rfc3339(),
            "2026-06-01T00:00:00+00:00"
        );
        assert_eq!(time(&v, "c").unwrap().timestamp(), 1_703_252_411);
        assert!(time(&v, "d").is_err());
        assert!(time(&v, "e").is_err());
    }

    #[test]
    fn html_empty_and_nan_bodies_are_named() {
        assert!(
            parse(b"  <!DOCTYPE html><html>")
                .unwrap_err()
                .problem
                .contains("HTML")
        );
        assert!(parse(b"").unwrap_err().problem.contains("empty"));
        assert!(
            parse(b"{\"USD\": NaN}")
                .unwrap_err()
                .problem
                .contains("not valid JSON")
        );
        assert!(
            parse(b"{\"USD\": 1")
                .unwrap_err()
                .problem
                .contains("not valid JSON")
        );
    }
}
