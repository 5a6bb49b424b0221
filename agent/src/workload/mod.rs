//! Handing the host to AI jobs and taking it back, through the site's workload manager: Slurm
//! (`scontrol`/`squeue`/`sinfo`), Kubernetes (cordon, taint, label, evictions) or an operator's
//! exec hook, behind one [`WorkloadManager`] trait.
//!
//! What pivot calls done (intents.proto): RELEASED once the manager reports the node schedulable;
//! DRAINED once the manager reports it closed to new jobs and no AI job left on it. Between the
//! two sits the checkpoint grace: a drained node's jobs get `grace_s` to finish or checkpoint
//! before pivot requeues, cancels or evicts them. [`step::next_step`] decides each move from what
//! was read back; [`WorkloadActuator`] runs those moves against a manager.

pub mod actuator;
pub mod config;
pub mod device;
pub mod exec;
pub mod kubernetes;
pub mod slurm;
pub mod step;

use std::fmt;

use async_trait::async_trait;
use pivot_proto::v1;

pub use actuator::{Pacing, WorkloadActuator};
pub use config::WorkloadConfig;

/// Which kind of manager a host is handed over through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerKind {
    Slurm,
    Kubernetes,
    Exec,
}

impl ManagerKind {
    pub fn to_proto(self) -> v1::WorkloadManagerKind {
        match self {
            ManagerKind::Slurm => v1::WorkloadManagerKind::Slurm,
            ManagerKind::Kubernetes => v1::WorkloadManagerKind::Kubernetes,
            ManagerKind::Exec => v1::WorkloadManagerKind::Exec,
        }
    }
}

impl fmt::Display for ManagerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ManagerKind::Slurm => "slurm",
            ManagerKind::Kubernetes => "kubernetes",
            ManagerKind::Exec => "exec hook",
        })
    }
}

/// The node as its manager described it on one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The manager's own words, e.g. Slurm `IDLE+DRAIN`, Kubernetes `Ready,SchedulingDisabled`.
    pub node_state: String,
    /// New AI jobs can land on the node.
    pub schedulable: bool,
    /// The node is marked to take no new jobs (Slurm DRAIN, a cordon, the hook's word).
    pub closed: bool,
    /// Who closed it, when it was not pivot (an operator's maintenance drain): pivot does not
    /// reopen such a node, and says so.
    pub closed_by_other: Option<String>,
    /// AI jobs (Slurm jobs, GPU pods) on the node, finishing ones included.
    pub jobs_running: u32,
    /// GPUs allocated to jobs on the node.
    pub gpus_allocated: u32,
    /// The manager still shows work on the node that no job listing accounts for (Slurm
    /// ALLOCATED or COMPLETING with no job in `squeue`): not drained yet.
    pub busy_without_jobs: bool,
}

impl NodeStatus {
    /// DRAINED as intents.proto defines it.
    pub fn drained(&self) -> bool {
        self.closed && self.jobs_running == 0 && self.gpus_allocated == 0 && !self.busy_without_jobs
    }

    /// RELEASED as intents.proto defines it.
    pub fn released(&self) -> bool {
        self.schedulable
    }
}

/// Why pivot acts, handed to the manager (Slurm's drain reason, the hook's environment).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Why {
    /// The decision in plain words; folded to safe text before any manager sees it.
    pub reason: String,
    /// Power the host is granted (release) or keeps (drain), W, when the controller said.
    pub power_w: Option<u32>,
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Timeout, manager unreachable, PDB refusal, conflict: try again after the pacing.
    Transient,
    /// Wrong node name, missing command, no permission, a node someone else drained: a new
    /// intent (or an operator) must change something first.
    Permanent,
}

/// A workload manager call that failed; every variant names the node.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("workload node {node}: {source}")]
    BadNodeName {
        node: String,
        source: pivot_jobs::names::BadNodeName,
    },
    #[error(
        "{manager} does not know node `{node}`: {detail}; set workload.node_name to its name there"
    )]
    UnknownNode {
        manager: ManagerKind,
        node: String,
        detail: String,
    },
    #[error("{manager} node {node}: {source}")]
    Command {
        manager: ManagerKind,
        node: String,
        retry: Retry,
        source: pivot_jobs::command::CommandError,
    },
    #[error("slurm node {node}: {source}")]
    SlurmJson {
        node: String,
        source: pivot_jobs::slurm::SlurmJsonError,
    },
    #[error("slurm node {node}: {source}")]
    Hostlist {
        node: String,
        source: pivot_jobs::slurm::BadHostlist,
    },
    #[error("slurm node {node}: {source}")]
    Tres {
        node: String,
        source: pivot_jobs::slurm::BadTres,
    },
    #[error(
        "slurm node {node}: job {job_id} cannot be requeued ({detail}); it keeps the node busy. Set workload.slurm.after_grace = \"cancel\" or let the job finish"
    )]
    NotRequeueable {
        node: String,
        job_id: u64,
        detail: String,
    },
    #[error("kubernetes node {node}: {action}: {source}")]
    Kube {
        node: String,
        action: String,
        source: kube::Error,
    },
    #[error("kubernetes node {node}: {source}")]
    KubeSetup {
        node: String,
        source: pivot_jobs::kube_client::KubeSetupError,
    },
    #[error("kubernetes node {node}: {source}")]
    Pod {
        node: String,
        source: Box<pivot_jobs::kube_pods::BadPod>,
    },
    #[error("exec hook {hook} ({action}) for node {node}: {problem}")]
    Hook {
        hook: String,
        action: &'static str,
        node: String,
        retry: Retry,
        problem: String,
    },
    #[error(
        "{manager} node {node} was closed by someone else ({by}); pivot will not reopen it. Resume it by hand when its work there is done"
    )]
    ClosedByOther {
        manager: ManagerKind,
        node: String,
        by: String,
    },
    #[error("{manager} node {node} is not {wanted} after {waited_s:.0} s: {state}")]
    NotConfirmed {
        manager: ManagerKind,
        node: String,
        wanted: &'static str,
        waited_s: f64,
        state: String,
    },
}

impl WorkloadError {
    pub fn retry(&self) -> Retry {
        match self {
            WorkloadError::BadNodeName { .. }
            | WorkloadError::UnknownNode { .. }
            | WorkloadError::NotRequeueable { .. }
            | WorkloadError::KubeSetup { .. }
            | WorkloadError::Pod { .. }
            | WorkloadError::ClosedByOther { .. } => Retry::Permanent,
            // A reply pivot cannot read is most often a manager mid-restart; a version pivot
            // does not speak shows up as the same error on every retry, in the status detail.
            WorkloadError::SlurmJson { .. }
            | WorkloadError::Hostlist { .. }
            | WorkloadError::Tres { .. }
            | WorkloadError::NotConfirmed { .. } => Retry::Transient,
            WorkloadError::Command { retry, .. } | WorkloadError::Hook { retry, .. } => *retry,
            WorkloadError::Kube { source, .. } => {
                if pivot_jobs::kube_client::transient(source) {
                    Retry::Transient
                } else {
                    Retry::Permanent
                }
            }
        }
    }

    pub fn is_transient(&self) -> bool {
        self.retry() == Retry::Transient
    }
}

/// A workload manager's levers on one node. Every call is idempotent: draining a drained node
/// or releasing a released one changes nothing.
#[async_trait]
pub trait WorkloadManager: Send + Sync {
    fn kind(&self) -> ManagerKind;

    /// The node's name in the manager.
    fn node(&self) -> &str;

    /// Opens the node to AI jobs (Slurm RESUME, uncordon).
    async fn release(&self, why: &Why) -> Result<(), WorkloadError>;

    /// Closes the node to new AI jobs; running ones keep going (Slurm DRAIN, cordon).
    async fn drain(&self, why: &Why) -> Result<(), WorkloadError>;

    /// Makes the AI jobs still on a closed node leave, after their grace (Slurm requeue or
    /// cancel, Kubernetes evictions). Returns how many it asked to leave.
    async fn remove_jobs(&self, why: &Why) -> Result<u32, WorkloadError>;

    /// Reads the node back.
    async fn status(&self) -> Result<NodeStatus, WorkloadError>;
}

/// Builds the configured manager for this host: the node is `workload.node_name`, else the
/// hostname.
pub async fn connect(
    host_id: &str,
    config: &WorkloadConfig,
) -> Result<WorkloadActuator, WorkloadError> {
    let node = match &config.node_name {
        Some(n) => n.clone(),
        None => sysinfo::System::host_name().unwrap_or_default(),
    };
    let manager: std::sync::Arc<dyn WorkloadManager> = match config.manager {
        config::ManagerChoice::Slurm => std::sync::Arc::new(slurm::Slurm::new(
            &node,
            config.slurm.clone().unwrap_or_default(),
        )?),
        config::ManagerChoice::Kubernetes => std::sync::Arc::new(
            kubernetes::Kubernetes::connect(&node, &config.kubernetes.clone().unwrap_or_default())
                .await?,
        ),
        config::ManagerChoice::Exec => {
            let Some(exec) = &config.exec else {
                return Err(WorkloadError::Hook {
                    hook: String::new(),
                    action: "setup",
                    node,
                    retry: Retry::Permanent,
                    problem: "manager \"exec\" needs [workload.exec] with `hook`".into(),
                });
            };
            std::sync::Arc::new(exec::ExecHook::new(host_id, &node, exec))
        }
    };
    Ok(WorkloadActuator::new(manager, config))
}

/// The node as the agent reports it in `HostReading.workload`.
pub fn reading(
    kind: ManagerKind,
    node: &str,
    status: &Result<NodeStatus, WorkloadError>,
) -> v1::WorkloadReading {
    match status {
        Ok(s) => v1::WorkloadReading {
            manager: kind.to_proto() as i32,
            node: node.to_owned(),
            node_state: s.node_state.clone(),
            schedulable: s.schedulable,
            jobs_running: s.jobs_running,
            gpus_allocated: s.gpus_allocated,
            read_error: String::new(),
        },
        Err(e) => v1::WorkloadReading {
            manager: kind.to_proto() as i32,
            node: node.to_owned(),
            node_state: String::new(),
            // Unknown is not schedulable: the controller must not count on it.
            schedulable: false,
            jobs_running: 0,
            gpus_allocated: 0,
            read_error: e.to_string(),
        },
    }
}

/// The `HostReading.workload_state` a reading shows, when it shows one.
pub fn observed_state(status: &NodeStatus) -> v1::WorkloadState {
    if status.drained() {
        v1::WorkloadState::Drained
    } else if status.released() {
        v1::WorkloadState::Released
    } else {
        v1::WorkloadState::Unspecified
    }
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(closed: bool, schedulable: bool, jobs: u32, gpus: u32, busy: bool) -> NodeStatus {
        NodeStatus {
            node_state: "X".into(),
            schedulable,
            closed,
            closed_by_other: None,
            jobs_running: jobs,
            gpus_allocated: gpus,
            busy_without_jobs: busy,
        }
    }

    #[test]
    fn drained_needs_closed_and_empty() {
        assert!(status(true, false, 0, 0, false).drained());
        for not in [
            status(false, false, 0, 0, false),
            status(true, false, 1, 0, false),
            status(true, false, 0, 2, false),
            status(true, false, 0, 0, true),
        ] {
            assert!(!not.drained(), "{not:?}");
            assert_ne!(observed_state(&not), v1::WorkloadState::Drained);
        }
        assert_eq!(
            observed_state(&status(false, true, 3, 8, false)),
            v1::WorkloadState::Released
        );
    }

    #[test]
    fn a_failed_read_is_reported_unschedulable_with_its_error() {
        let e = WorkloadError::NotConfirmed {
            manager: ManagerKind::Slurm,
            node: "gpu1".into(),
            wanted: "schedulable",
            waited_s: 3.0,
            state: "DOWN".into(),
        };
        let r = reading(ManagerKind::Slurm, "gpu1", &Err(e));
        assert!(!r.schedulable && r.read_error.contains("gpu1"));
        assert_eq!(r.manager, v1::WorkloadManagerKind::Slurm as i32);
    }
}
