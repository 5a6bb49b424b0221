//! The site policy document: what the automated policies may do, as TOML.
//!
//! Stored and versioned by the store; validated here with every problem named by its key.

use serde::Deserialize;

/// The policy a fresh controller starts with.
pub const DEFAULT_POLICY: &str = r#"# Pivot site policy.
name = "economic"

[economic]
# Run loads in merit order of margin (value - energy price) while it is at least this.
enabled = true
min_margin_usd_per_mwh = 0.0
# Value of interruptible GPU capacity.
ai_spot_price_usd_per_gpu_hour = 2.0
"#;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub name: String,
    #[serde(default)]
    pub economic: EconomicPolicy,
    #[serde(default)]
    pub schedule: Vec<ScheduleWindow>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EconomicPolicy {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub min_margin_usd_per_mwh: f64,
    #[serde(default = "default_gpu_hour")]
    pub ai_spot_price_usd_per_gpu_hour: f64,
}

impl Default for EconomicPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_margin_usd_per_mwh: 0.0,
            ai_spot_price_usd_per_gpu_hour: default_gpu_hour(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_gpu_hour() -> f64 {
    2.0
}

/// A recurring window (UTC) in which mining is curtailed, e.g. a transmission peak.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindow {
    pub name: String,
    /// "HH:MM", UTC.
    pub start: String,
    /// "HH:MM", UTC.
    pub end: String,
}

/// Parses and checks a policy document; every problem is returned, each naming its key.
pub fn validate(document: &str) -> Result<PolicyDocument, Vec<String>> {
    let doc: PolicyDocument =
        toml::from_str(document).map_err(|e| vec![e.to_string().trim_end().replace('\n', " ")])?;
    let mut errors = Vec::new();
    if doc.name.trim().is_empty() {
        errors.push("name: must not be empty".to_owned());
    }
    let e = &doc.economic;
    if !e.min_margin_usd_per_mwh.is_finite() {
        errors.push("economic.min_margin_usd_per_mwh: must be a finite number".to_owned());
    }
    if !(e.ai_spot_price_usd_per_gpu_hour.is_finite() && e.ai_spot_price_usd_per_gpu_hour >= 0.0) {
        errors.push("economic.ai_spot_price_usd_per_gpu_hour: must be a number >= 0".to_owned());
    }
    for (i, w) in doc.schedule.iter().enumerate() {
        for (key, value) in [("start", &w.start), ("end", &w.end)] {
            if chrono::NaiveTime::parse_from_str(value, "%H:%M").is_err() {
                errors.push(format!(
                    "schedule[{i}].{key}: `{value}` is not a time HH:MM"
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(doc)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid() {
        assert_eq!(validate(DEFAULT_POLICY).unwrap().name, "economic");
    }

    #[test]
    fn problems_name_their_keys() {
        let errs = validate(
            "name = \"x\"\n[[schedule]]\nname = \"4cp\"\nstart = \"25:00\"\nend = \"18:00\"\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec!["schedule[0].start: `25:00` is not a time HH:MM".to_owned()]
        );
        let errs = validate("name = \"x\"\n[economic]\nmin_margin = 3\n").unwrap_err();
        assert!(errs[0].contains("min_margin"), "{errs:?}");
    }
}
