//! The agent's `[workload]` section: which manager hands this host to AI jobs, the node's name
//! there, the checkpoint grace, and each manager's commands, files and timeouts.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[workload]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    pub manager: ManagerChoice,
    /// The node's name in the manager; the hostname when absent.
    pub node_name: Option<String>,
    /// How long a drained node's jobs get to checkpoint or finish before pivot requeues,
    /// cancels or evicts them, seconds.
    #[serde(default = "default_grace_s")]
    pub grace_s: f64,
    /// After each lever, how long the read-back may take to show its effect, seconds.
    #[serde(default = "default_confirm_s")]
    pub confirm_s: f64,
    /// How often the node is read back while waiting, seconds.
    #[serde(default = "default_poll_s")]
    pub poll_s: f64,
    #[serde(default)]
    pub slurm: Option<SlurmConfig>,
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    #[serde(default)]
    pub exec: Option<ExecConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ManagerChoice {
    Slurm,
    Kubernetes,
    Exec,
}

/// What happens to a drained Slurm node's jobs once the grace is over.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AfterGrace {
    /// `scontrol requeue`: the job goes back to the queue and runs again later.
    #[default]
    Requeue,
    /// `scancel`: the job ends.
    Cancel,
}

/// `[workload.slurm]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    #[serde(default)]
    pub after_grace: AfterGrace,
    #[serde(default = "default_scontrol")]
    pub scontrol: PathBuf,
    #[serde(default = "default_squeue")]
    pub squeue: PathBuf,
    #[serde(default = "default_sinfo")]
    pub sinfo: PathBuf,
    #[serde(default = "default_scancel")]
    pub scancel: PathBuf,
    /// Passed to every command as `SLURM_CONF`; Slurm's default when absent.
    pub slurm_conf: Option<PathBuf>,
    /// Longest one command may take, seconds.
    #[serde(default = "default_command_timeout_s")]
    pub command_timeout_s: f64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            after_grace: AfterGrace::default(),
            scontrol: default_scontrol(),
            squeue: default_squeue(),
            sinfo: default_sinfo(),
            scancel: default_scancel(),
            slurm_conf: None,
            command_timeout_s: default_command_timeout_s(),
        }
    }
}

/// `[workload.kubernetes]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file; the pod's in-cluster service account when absent.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; its current one when absent.
    pub context: Option<String>,
    /// The extended resource AI pods ask for.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource: String,
    /// Longest one API request may take, seconds.
    #[serde(default = "default_command_timeout_s")]
    pub request_timeout_s: f64,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            gpu_resource: default_gpu_resource(),
            request_timeout_s: default_command_timeout_s(),
        }
    }
}

/// `[workload.exec]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The operator's executable, run without a shell.
    pub hook: PathBuf,
    /// Arguments it is run with, each passed as it is (no shell splits or expands them): one
    /// script can serve several clusters, `args = ["--cluster", "gpu-a"]`. What to do comes in
    /// the environment (`PIVOT_ACTION` …), not here.
    #[serde(default)]
    pub args: Vec<String>,
    /// Longest one run may take before its process group is killed, seconds.
    #[serde(default = "default_hook_timeout_s")]
    pub timeout_s: f64,
}

fn default_grace_s() -> f64 {
    300.0
}
fn default_confirm_s() -> f64 {
    60.0
}
fn default_poll_s() -> f64 {
    1.0
}
fn default_scontrol() -> PathBuf {
    PathBuf::from("scontrol")
}
fn default_squeue() -> PathBuf {
    PathBuf::from("squeue")
}
fn default_sinfo() -> PathBuf {
    PathBuf::from("sinfo")
}
fn default_scancel() -> PathBuf {
    PathBuf::from("scancel")
}
fn default_command_timeout_s() -> f64 {
    10.0
}
fn default_hook_timeout_s() -> f64 {
    60.0
}
fn default_gpu_resource() -> String {
    pivot_jobs::kube_pods::NVIDIA_GPU.to_owned()
}

/// A `[workload]` value that cannot be used: the dotted key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {problem}")]
pub struct WorkloadConfigError {
    pub key: String,
    pub problem: String,
}

impl WorkloadConfig {
    /// Checks every value; keys are named from the file's root (`workload.grace_s`).
    pub fn validate(&self) -> Result<(), WorkloadConfigError> {
        let invalid = |key: &str, problem: String| WorkloadConfigError {
            key: format!("workload.{key}"),
            problem,
        };
        let mut seconds = vec![
            ("grace_s", self.grace_s, true),
            ("confirm_s", self.confirm_s, false),
            ("poll_s", self.poll_s, false),
        ];
        if let Some(s) = &self.slurm {
            seconds.push(("slurm.command_timeout_s", s.command_timeout_s, false));
        }
        if let Some(k) = &self.kubernetes {
            seconds.push(("kubernetes.request_timeout_s", k.request_timeout_s, false));
        }
        if let Some(e) = &self.exec {
            seconds.push(("exec.timeout_s", e.timeout_s, false));
        }
        for (key, v, zero_ok) in seconds {
            let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
            if !(v.is_finite() && low_ok && v <= 86_400.0) {
                return Err(invalid(
                    key,
                    format!(
                        "must be a number of seconds in {}0, 86400], got {v}",
                        if zero_ok { "[" } else { "(" }
                    ),
                ));
            }
        }
        if let Some(name) = &self.node_name {
            let checked = match self.manager {
                ManagerChoice::Kubernetes => pivot_jobs::names::kubernetes_node_name(name),
                ManagerChoice::Slurm | ManagerChoice::Exec => {
                    pivot_jobs::names::slurm_node_name(name)
                }
            };
            checked.map_err(|e| invalid("node_name", e.to_string()))?;
        }
        let sections = [
            ("slurm", self.slurm.is_some(), ManagerChoice::Slurm),
            (
                "kubernetes",
                self.kubernetes.is_some(),
                ManagerChoice::Kubernetes,
            ),
            ("exec", self.exec.is_some(), ManagerChoice::Exec),
        ];
        for (name, present, owner) in sections {
            if present && owner != self.manager {
                return Err(invalid(
                    name,
                    format!(
                        "[workload.{name}] is set but workload.manager is \"{}\"",
                        self.manager.name()
                    ),
                ));
            }
        }
        if self.manager == ManagerChoice::Exec && self.exec.is_none() {
            return Err(invalid(
                "exec",
                "manager \"exec\" needs [workload.exec] with `hook`".into(),
            ));
        }
        if let Some(e) = &self.exec
            && !e.hook.is_absolute()
        {
            return Err(invalid(
                "exec.hook",
                format!("`{}` must be an absolute path", e.hook.display()),
            ));
        }
        if let Some(k) = &self.kubernetes
            && k.gpu_resource.trim().is_empty()
        {
            return Err(invalid(
                "kubernetes.gpu_resource",
                "must not be empty".into(),
            ));
        }
        Ok(())
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.grace_s)
    }
    pub fn confirm(&self) -> Duration {
        Duration::from_secs_f64(self.confirm_s)
    }
    pub fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_s)
    }
}

impl ManagerChoice {
    pub fn name(self) -> &'static str {
        match self {
            ManagerChoice::Slurm => "slurm",
            ManagerChoice::Kubernetes => "kubernetes",
            ManagerChoice::Exec => "exec",
        }
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

    fn parse(text: &str) -> Result<WorkloadConfig, String> {
        let c: WorkloadConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_sections() {
        let c = parse("manager = \"slurm\"\n[slurm]\nafter_grace = \"cancel\"\n").unwrap();
        assert_eq!(c.grace_s, 300.0);
        assert_eq!(c.slurm.unwrap().after_grace, AfterGrace::Cancel);
        let c = parse("manager = \"exec\"\n[exec]\nhook = \"/etc/pivot/hook\"\n").unwrap();
        let e = c.exec.unwrap();
        assert_eq!(e.timeout_s, 60.0);
        assert!(e.args.is_empty());
        let c = parse(
            "manager = \"exec\"\n[exec]\nhook = \"/etc/pivot/hook\"\nargs = [\"--cluster\", \"gpu a\"]\n",
        )
        .unwrap();
        assert_eq!(c.exec.unwrap().args, ["--cluster", "gpu a"]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("manager = \"slurm\"\ngrace_s = -1\n", "workload.grace_s"),
            (
                "manager = \"slurm\"\nnode_name = \"gpu[1-4]\"\n",
                "workload.node_name",
            ),
            (
                "manager = \"kubernetes\"\nnode_name = \"GPU01\"\n",
                "workload.node_name",
            ),
            ("manager = \"exec\"\n", "workload.exec"),
            (
                "manager = \"exec\"\n[exec]\nhook = \"hook.sh\"\n",
                "workload.exec.hook",
            ),
            (
                "manager = \"slurm\"\n[exec]\nhook = \"/x\"\n",
                "workload.exec",
            ),
            (
                "manager = \"slurm\"\n[slurm]\ncommand_timeout_s = 0\n",
                "workload.slurm.command_timeout_s",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = parse("manager = \"lsf\"\n").unwrap_err();
        assert!(e.contains("manager"), "{e}");
        let e = parse("manager = \"slurm\"\n[slurm]\nscontorl = \"/x\"\n").unwrap_err();
        assert!(e.contains("scontorl"), "{e}");
    }
}
