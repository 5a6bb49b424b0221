//! The one-line error report every pivot binary prints before it exits non-zero.
//!
//! Pivot's error types name their cause in their own message (`cannot read config file X: No
//! such file or directory`) and also return it from `source()`, so printing the whole chain
//! (`{:#}`) said the cause twice, or three times where errors nest. This walks the chain and adds
//! only the causes the message does not already say.

use std::error::Error;

/// `e`'s message followed by each cause in its `source()` chain that the text so far does not
/// already contain, joined with `: `.
#[must_use]
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !said.is_empty() && !out.contains(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file {path}: {source}")]
    struct Names {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting the site")]
    struct Silent {
        #[source]
        source: Names,
    }

    fn missing() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::NotFound)
    }

    #[test]
    fn a_cause_the_message_already_names_is_said_once() {
        let e = Names {
            path: "/etc/pivot/agent.toml",
            source: missing(),
        };
        let cause = missing().to_string();
        let line = error_chain(&e);
        assert_eq!(
            line,
            format!("cannot read config file /etc/pivot/agent.toml: {cause}")
        );
        assert_eq!(line.matches(&cause).count(), 1, "{line}");
    }

    #[test]
    fn a_cause_the_message_does_not_name_is_added() {
        let e = Silent {
            source: Names {
                path: "a.toml",
                source: missing(),
            },
        };
        assert_eq!(
            error_chain(&e),
            format!(
                "starting the site: cannot read config file a.toml: {}",
                missing()
            )
        );
    }

    #[test]
    fn an_anyhow_context_chain_keeps_every_distinct_layer() {
        let e = anyhow::Error::new(missing()).context("reading the trace");
        let e = e.context("pivot-site");
        assert_eq!(
            error_chain(e.as_ref()),
            format!("pivot-site: reading the trace: {}", missing())
        );
    }
}
