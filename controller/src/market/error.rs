//! Why a market reading was not taken: typed, naming the source and where it lives (a URL
//! without credentials, or a file), with a short escaped excerpt of a bad body.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A source as the operator configured it: its kind and where it reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `mempool`, `bitcoind`, `ercot feed`, `fixed`, `trace` ...
    pub name: String,
    /// A URL with user, password and query values removed, a file path, or `config`.
    pub location: String,
}

impl Origin {
    pub fn new(name: impl Into<String>, location: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            location: location.into(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.location)
    }
}

/// A reading that was refused, and by which source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}: {kind}")]
pub struct SourceError {
    // Boxed to keep `Result<_, SourceError>` small.
    pub origin: Box<Origin>,
    pub kind: SourceErrorKind,
}

impl SourceError {
    pub fn new(origin: &Origin, kind: SourceErrorKind) -> Self {
        Self {
            origin: Box::new(origin.clone()),
            kind,
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceErrorKind {
    #[error(
        "no complete reply within {}s; is the service up and reachable? (raise timeout_s if it is only slow)",
        .after.as_secs_f64()
    )]
    Timeout { after: Duration },
    #[error("cannot connect ({request}): {detail}")]
    Connect { request: String, detail: String },
    #[error("{request} answered HTTP {status}{hint}: `{excerpt}`")]
    Status {
        request: String,
        status: u16,
        /// What the status usually means for this source (`; check the credentials`).
        hint: String,
        excerpt: String,
    },
    #[error("{request}: bad reply{}: {problem}; the body starts `{excerpt}`", field_part(.field))]
    Body {
        request: String,
        field: Option<String>,
        problem: String,
        excerpt: String,
    },
    #[error("RPC `{method}` failed (code {code}): {message}")]
    Rpc {
        method: String,
        code: i64,
        message: String,
    },
    #[error(
        "{quantity} = {value} is outside the plausible range {min} to {max} (market.checks.{key}); reading refused"
    )]
    Implausible {
        quantity: String,
        /// The `[market.checks]` key that sets the range.
        key: String,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error(
        "the reading describes {at}, {}s old, more than the {}s allowed (max_age_s); reading refused",
        .age.as_secs(), .max_age.as_secs()
    )]
    Stale {
        at: DateTime<Utc>,
        age: Duration,
        max_age: Duration,
    },
    #[error("the reading describes {at}, later than now ({now}); check the source's clock")]
    Future {
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("cannot read: {detail}")]
    Read { detail: String },
    #[error("no value in force: {detail}")]
    NoValue { detail: String },
}

fn field_part(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!(" in `{f}`"))
        .unwrap_or_default()
}

/// Longest excerpt of a body quoted in an error, bytes.
pub const EXCERPT_BYTES: usize = 100;

/// The start of a body, lossily decoded and escaped so that it prints on one line and cannot
/// forge log lines, at most [`EXCERPT_BYTES`] bytes of input.
pub fn excerpt(body: &[u8]) -> String {
    let cut = body.len().min(EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&body[..cut]);
    let mut out: String = text.chars().flat_map(char::escape_debug).collect();
    if body.len() > cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_escaped_and_single_line() {
        let body = format!("<html>\n\u{1b}[31m{}", "x".repeat(500));
        let e = excerpt(body.as_bytes());
        assert!(!e.contains('\n'), "{e}");
        assert!(!e.contains('\u{1b}'), "{e}");
        assert!(e.starts_with("<html>\\n\\u{1b}[31m"), "{e}");
        assert!(e.ends_with('…'));
        assert!(e.len() < 2 * EXCERPT_BYTES, "{}", e.len());
        assert_eq!(excerpt(b"\xff\xfeok"), "\u{fffd}\u{fffd}ok");
        assert_eq!(excerpt(b""), "");
    }

    #[test]
    fn messages_name_source_location_and_field() {
        let e = SourceError::new(
            &Origin::new("mempool", "https://mempool.example"),
            SourceErrorKind::Body {
                request: "GET /api/v1/prices".into(),
                field: Some("USD".into()),
                problem: "not a number".into(),
                excerpt: excerpt(b"{\"USD\":\"abc\"}"),
            },
        )
        .to_string();
        assert!(
            e.starts_with("mempool https://mempool.example: GET /api/v1/prices"),
            "{e}"
        );
        assert!(e.contains("in `USD`"), "{e}");
        assert!(e.contains(r#"{\"USD\":\"abc\"}"#), "{e}");
    }
}
