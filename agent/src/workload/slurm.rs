//! Slurm through its own commands: `scontrol update … State=DRAIN|RESUME`, `scontrol requeue`
//! or `scancel` for the jobs left after the grace, and `sinfo --json` / `squeue --json` to read
//! the node back. Every command runs without a shell, with a timeout, and `SLURM_CONF` when set.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use pivot_jobs::command::{self, CommandError, CommandLine, Finished};
use pivot_jobs::slurm::{self, Job};
use tracing::info;

use super::config::{AfterGrace, SlurmConfig, secs};
use super::{ManagerKind, NodeStatus, Retry, Why, WorkloadError, WorkloadManager};

/// Every reason pivot writes starts with this, so pivot knows its own drains from an operator's.
pub const REASON_PREFIX: &str = "pivot:";

#[derive(Debug)]
pub struct Slurm {
    node: String,
    config: SlurmConfig,
    timeout: Duration,
}

impl Slurm {
    /// Refuses a node name that is not one plain Slurm node (`gpu[1-4]`, `a,b`, `ALL`).
    pub fn new(node: &str, config: SlurmConfig) -> Result<Self, WorkloadError> {
        pivot_jobs::names::slurm_node_name(node).map_err(|source| WorkloadError::BadNodeName {
            node: node.to_owned(),
            source,
        })?;
        let timeout = secs(config.command_timeout_s);
        Ok(Self {
            node: node.to_owned(),
            config,
            timeout,
        })
    }

    fn line(&self, program: &Path) -> CommandLine {
        let mut line = CommandLine::new(program, self.timeout);
        if let Some(conf) = &self.config.slurm_conf {
            line = line.env("SLURM_CONF", conf);
        }
        line
    }

    async fn run(&self, line: CommandLine) -> Result<Finished, WorkloadError> {
        command::run_ok(&line)
            .await
            .map_err(|source| self.classify(source))
    }

    fn classify(&self, source: CommandError) -> WorkloadError {
        let text = source.output_text().to_ascii_lowercase();
        if text.contains("invalid node name") {
            return WorkloadError::UnknownNode {
                manager: ManagerKind::Slurm,
                node: self.node.clone(),
                detail: command::quote(source.output_text()),
            };
        }
        let retry = match &source {
            CommandError::Spawn { .. } | CommandError::TooMuchOutput { .. } => Retry::Permanent,
            CommandError::TimedOut { .. } => Retry::Transient,
            CommandError::Failed { .. } => {
                if text.contains("access denied")
                    || text.contains("permission denied")
                    || text.contains("invalid user")
                {
                    Retry::Permanent
                } else {
                    // slurmctld restarting or unreachable, a state that changed under pivot:
                    // reading again and retrying is the way through.
                    Retry::Transient
                }
            }
        };
        WorkloadError::Command {
            manager: ManagerKind::Slurm,
            node: self.node.clone(),
            retry,
            source,
        }
    }

    fn reason(why: &Why) -> String {
        let text = if why.reason.trim().is_empty() {
            "power goes back to mining".to_owned()
        } else {
            why.reason.clone()
        };
        pivot_jobs::names::reason_text(&format!("{REASON_PREFIX} {text}"))
    }

    /// Jobs holding this node.
    async fn jobs_here(&self) -> Result<Vec<Job>, WorkloadError> {
        let out = self
            .run(self.line(&self.config.squeue).arg("--json"))
            .await?;
        let jobs = slurm::parse_squeue(&out.stdout).map_err(|source| WorkloadError::SlurmJson {
            node: self.node.clone(),
            source,
        })?;
        let mut here = Vec::new();
        for job in jobs {
            let on = job
                .on_node(&self.node)
                .map_err(|source| WorkloadError::Hostlist {
                    node: self.node.clone(),
                    source,
                })?;
            if on && job.occupies_nodes() {
                here.push(job);
            }
        }
        Ok(here)
    }

    async fn node_info(&self) -> Result<slurm::Node, WorkloadError> {
        let out = self
            .run(self.line(&self.config.sinfo).arg("--json"))
            .await?;
        let nodes = slurm::parse_sinfo(&out.stdout).map_err(|source| WorkloadError::SlurmJson {
            node: self.node.clone(),
            source,
        })?;
        nodes
            .into_iter()
            .find(|n| n.name == self.node)
            .ok_or_else(|| WorkloadError::UnknownNode {
                manager: ManagerKind::Slurm,
                node: self.node.clone(),
                detail: "sinfo --json lists no such node".into(),
            })
    }

    async fn requeue_or_cancel(&self, job: &Job) -> Result<bool, WorkloadError> {
        let id = job.job_id.to_string();
        let line = match self.config.after_grace {
            AfterGrace::Requeue => self.line(&self.config.scontrol).arg("requeue").arg(&id),
            AfterGrace::Cancel => self.line(&self.config.scancel).arg(&id),
        };
        match command::run_ok(&line).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let text = e.output_text().to_ascii_lowercase();
                if text.contains("invalid job id")
                    || text.contains("already completing or completed")
                {
                    // It left on its own between the read and the call.
                    Ok(false)
                } else if text.contains("presently disabled") || text.contains("not requeue") {
                    Err(WorkloadError::NotRequeueable {
                        node: self.node.clone(),
                        job_id: job.job_id,
                        detail: command::quote(e.output_text()),
                    })
                } else {
                    Err(self.classify(e))
                }
            }
        }
    }
}

#[async_trait]
impl WorkloadManager for Slurm {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Slurm
    }

    fn node(&self) -> &str {
        &self.node
    }

    async fn release(&self, why: &Why) -> Result<(), WorkloadError> {
        info!(node = %self.node, reason = %why.reason, "Resuming Slurm node");
        self.run(
            self.line(&self.config.scontrol)
                .arg("update")
                .arg(format!("NodeName={}", self.node))
                .arg("State=RESUME"),
        )
        .await
        .map(drop)
    }

    async fn drain(&self, why: &Why) -> Result<(), WorkloadError> {
        let reason = Self::reason(why);
        info!(node = %self.node, reason = %reason, "Draining Slurm node");
        self.run(
            self.line(&self.config.scontrol)
                .arg("update")
                .arg(format!("NodeName={}", self.node))
                .arg("State=DRAIN")
                .arg(format!("Reason={reason}")),
        )
        .await
        .map(drop)
    }

    async fn remove_jobs(&self, _why: &Why) -> Result<u32, WorkloadError> {
        let mut asked = 0u32;
        for job in self.jobs_here().await? {
            info!(node = %self.node, job = job.job_id, how = ?self.config.after_grace, "Grace over: removing Slurm job from the node");
            if self.requeue_or_cancel(&job).await? {
                asked = asked.saturating_add(1);
            }
        }
        Ok(asked)
    }

    async fn status(&self) -> Result<NodeStatus, WorkloadError> {
        let (node, jobs) = tokio::join!(self.node_info(), self.jobs_here());
        let (node, jobs) = (node?, jobs?);
        let gpus = node.gpus_used().map_err(|source| WorkloadError::Tres {
            node: self.node.clone(),
            source,
        })?;
        let state = &node.state;
        let closed = state.has_flag("DRAIN") || state.has_flag("FAIL") || state.base == "DOWN";
        let closed_by_other = (closed && !node.reason.starts_with(REASON_PREFIX)).then(|| {
            if node.reason.is_empty() {
                state.to_string()
            } else {
                format!("{state}: {}", command::quote(&node.reason))
            }
        });
        Ok(NodeStatus {
            node_state: state.to_string(),
            schedulable: state.schedulable(),
            closed,
            closed_by_other,
            jobs_running: u32::try_from(jobs.len()).unwrap_or(u32::MAX),
            gpus_allocated: super::saturating_u32(gpus),
            busy_without_jobs: state.busy() && jobs.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reasons_name_pivot_and_stay_plain() {
        let r = Slurm::reason(&Why {
            reason: "plan 42: hashprice 55 > AI \"value\"\nrm -rf /".into(),
            power_w: None,
        });
        assert!(r.starts_with("pivot: plan 42"), "{r}");
        assert!(!r.contains(['"', '\n', '=']), "{r}");
        assert_eq!(
            Slurm::reason(&Why::default()),
            "pivot: power goes back to mining"
        );
    }

    #[test]
    fn hostlists_and_all_are_refused_as_node_names() {
        for bad in ["gpu[1-4]", "a,b", "ALL", ""] {
            let e = Slurm::new(bad, SlurmConfig::default()).unwrap_err();
            assert_eq!(e.retry(), Retry::Permanent, "{bad}");
        }
    }
}
