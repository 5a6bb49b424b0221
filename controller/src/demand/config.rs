//! Where AI demand is read from, and how: [`DemandConfig`] (a source and its keys), which the
//! market's `[market.ai_demand]` holds when a workload manager is the source ([`DemandKeys`] are
//! the keys beside `source` there).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A demand source and its keys.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DemandConfig {
    pub source: DemandSource,
    /// Slurm partitions whose jobs count (all when empty).
    #[serde(default)]
    pub partitions: Vec<String>,
    #[serde(default)]
    pub slurm: Option<SlurmCommandConfig>,
    #[serde(default)]
    pub slurmrestd: Option<SlurmrestdConfig>,
    #[serde(default)]
    pub kubernetes: Option<KubeDemandConfig>,
}

/// `[market.ai_demand]`'s keys beside `source = "slurm" | "slurmrestd" | "kubernetes"`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DemandKeys {
    /// Slurm partitions whose jobs count (all when empty).
    #[serde(default)]
    pub partitions: Vec<String>,
    #[serde(default)]
    pub slurm: Option<SlurmCommandConfig>,
    #[serde(default)]
    pub slurmrestd: Option<SlurmrestdConfig>,
    #[serde(default)]
    pub kubernetes: Option<KubeDemandConfig>,
}

impl DemandKeys {
    /// The demand configuration these keys make with `source`.
    pub fn with_source(&self, source: DemandSource) -> DemandConfig {
        DemandConfig {
            source,
            partitions: self.partitions.clone(),
            slurm: self.slurm.clone(),
            slurmrestd: self.slurmrestd.clone(),
            kubernetes: self.kubernetes.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DemandSource {
    /// `squeue --json` run by the controller.
    Slurm,
    /// slurmrestd's `GET /slurm/{version}/jobs`.
    Slurmrestd,
    Kubernetes,
}

/// `[demand.slurm]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmCommandConfig {
    #[serde(default = "default_squeue")]
    pub squeue: PathBuf,
    /// Passed as `SLURM_CONF`; Slurm's default when absent.
    pub slurm_conf: Option<PathBuf>,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

impl Default for SlurmCommandConfig {
    fn default() -> Self {
        Self {
            squeue: default_squeue(),
            slurm_conf: None,
            timeout_s: default_timeout_s(),
        }
    }
}

/// `[demand.slurmrestd]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmrestdConfig {
    /// e.g. `http://slurmctl:6820`.
    pub url: String,
    /// The OpenAPI plugin version in the path; v0.0.38 is what Slurm 22.05 serves.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Sent as `X-SLURM-USER-NAME`.
    pub user_name: String,
    /// The JWT sent as `X-SLURM-USER-TOKEN`, from this environment variable ...
    pub token_env: Option<String>,
    /// ... or this file (first line).
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

/// `[demand.kubernetes]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubeDemandConfig {
    /// A kubeconfig file; the in-cluster service account when absent.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Namespaces whose pods count (all when empty).
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource: String,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

impl Default for KubeDemandConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespaces: Vec::new(),
            gpu_resource: default_gpu_resource(),
            timeout_s: default_timeout_s(),
        }
    }
}

fn default_squeue() -> PathBuf {
    PathBuf::from("squeue")
}
fn default_timeout_s() -> f64 {
    10.0
}
fn default_api_version() -> String {
    "v0.0.38".to_owned()
}
fn default_gpu_resource() -> String {
    pivot_jobs::kube_pods::NVIDIA_GPU.to_owned()
}

/// A `[demand]` value that cannot be used: the dotted key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {problem}")]
pub struct DemandConfigError {
    pub key: String,
    pub problem: String,
}

impl DemandConfig {
    /// Checks every value; keys are named under `demand` (`demand.slurmrestd.url`).
    pub fn validate(&self) -> Result<(), DemandConfigError> {
        self.validate_at("demand")
    }

    /// Checks every value; keys are named under `section` (`market.ai_demand.slurmrestd.url`).
    pub fn validate_at(&self, section: &str) -> Result<(), DemandConfigError> {
        let invalid = |key: &str, problem: String| DemandConfigError {
            key: format!("{section}.{key}"),
            problem,
        };
        let sections = [
            ("slurm", self.slurm.is_some(), DemandSource::Slurm),
            (
                "slurmrestd",
                self.slurmrestd.is_some(),
                DemandSource::Slurmrestd,
            ),
            (
                "kubernetes",
                self.kubernetes.is_some(),
                DemandSource::Kubernetes,
            ),
        ];
        for (name, present, owner) in sections {
            if present && owner != self.source {
                return Err(invalid(
                    name,
                    format!("[{section}.{name}] is set but {section}.source is another source"),
                ));
            }
        }
        let mut timeouts = Vec::new();
        if let Some(s) = &self.slurm {
            timeouts.push(("slurm.timeout_s", s.timeout_s));
        }
        if let Some(k) = &self.kubernetes {
            timeouts.push(("kubernetes.timeout_s", k.timeout_s));
        }
        if self.source == DemandSource::Slurmrestd {
            let Some(r) = &self.slurmrestd else {
                return Err(invalid(
                    "slurmrestd",
                    format!(
                        "source \"slurmrestd\" needs [{section}.slurmrestd] with url and user_name"
                    ),
                ));
            };
            crate::market::http::parse_url(&r.url).map_err(|e| invalid("slurmrestd.url", e))?;
            if r.user_name.trim().is_empty() {
                return Err(invalid(
                    "slurmrestd.user_name",
                    "must name the Slurm user the token belongs to".into(),
                ));
            }
            if r.token_env.is_some() == r.token_file.is_some() {
                return Err(invalid(
                    "slurmrestd.token_env",
                    "give exactly one of token_env or token_file".into(),
                ));
            }
            if !r
                .api_version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.')
            {
                return Err(invalid(
                    "slurmrestd.api_version",
                    format!("`{}` is not a version such as v0.0.38", r.api_version),
                ));
            }
            timeouts.push(("slurmrestd.timeout_s", r.timeout_s));
        }
        if !self.partitions.is_empty() && self.source == DemandSource::Kubernetes {
            return Err(invalid(
                "partitions",
                "Slurm partitions mean nothing to Kubernetes; use kubernetes.namespaces".into(),
            ));
        }
        for (key, v) in timeouts {
            if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
                return Err(invalid(
                    key,
                    format!("must be a number of seconds in (0, 3600], got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// What [`validate_at`](Self::validate_at) cannot see: the token and kubeconfig files can be
    /// read, the token's environment variable is set. For `check-config`.
    pub fn check_at(
        &self,
        section: &str,
        env: &dyn crate::config::EnvSource,
    ) -> Result<(), DemandConfigError> {
        self.validate_at(section)?;
        let readable = |path: &std::path::Path, key: &str| {
            std::fs::File::open(path)
                .map(drop)
                .map_err(|e| DemandConfigError {
                    key: format!("{section}.{key}"),
                    problem: format!("cannot read {}: {e}", path.display()),
                })
        };
        match self.source {
            DemandSource::Slurmrestd => {
                if let Some(r) = &self.slurmrestd {
                    if let Some(path) = &r.token_file {
                        readable(path, "slurmrestd.token_file")?;
                    }
                    if let Some(var) = &r.token_env
                        && env.get(var).is_none_or(|v| v.is_empty())
                    {
                        return Err(DemandConfigError {
                            key: format!("{section}.slurmrestd.token_env"),
                            problem: format!(
                                "environment variable {var} is not set (it holds slurmrestd's JWT)"
                            ),
                        });
                    }
                }
            }
            DemandSource::Kubernetes => {
                if let Some(path) = self.kubernetes.as_ref().and_then(|k| k.kubeconfig.as_ref()) {
                    readable(path, "kubernetes.kubeconfig")?;
                }
            }
            DemandSource::Slurm => {}
        }
        Ok(())
    }
}

/// Seconds from a validated config value.
pub(crate) fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<DemandConfig, String> {
        let c: DemandConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn sources() {
        let c = parse("source = \"slurm\"\npartitions = [\"ai\"]\n").unwrap();
        assert_eq!(c.partitions, ["ai"]);
        let c = parse("source = \"slurmrestd\"\n[slurmrestd]\nurl = \"http://h:6820\"\nuser_name = \"pivot\"\ntoken_env = \"SLURM_JWT\"\n").unwrap();
        assert_eq!(c.slurmrestd.unwrap().api_version, "v0.0.38");
        parse("source = \"kubernetes\"\n[kubernetes]\nnamespaces = [\"ai\"]\n").unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("source = \"slurmrestd\"\n", "demand.slurmrestd"),
            (
                "source = \"slurmrestd\"\n[slurmrestd]\nurl = \"h:6820\"\nuser_name = \"p\"\ntoken_env = \"T\"\n",
                "demand.slurmrestd.url",
            ),
            (
                "source = \"slurmrestd\"\n[slurmrestd]\nurl = \"http://h\"\nuser_name = \"p\"\n",
                "demand.slurmrestd.token_env",
            ),
            ("source = \"slurm\"\n[kubernetes]\n", "demand.kubernetes"),
            (
                "source = \"kubernetes\"\npartitions = [\"ai\"]\n",
                "demand.partitions",
            ),
            (
                "source = \"slurm\"\n[slurm]\ntimeout_s = 0\n",
                "demand.slurm.timeout_s",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        assert!(parse("source = \"lsf\"\n").unwrap_err().contains("source"));
    }
}
