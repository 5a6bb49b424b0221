//! The seam the reconciler plugs into: `apply(target)` runs [`next_step`] against the manager
//! until the node is RELEASED or DRAINED as intents.proto defines them (or the time allowed runs
//! out), `read()` gives the reading for telemetry, `pacing()` says how soon to retry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pivot_proto::model::WorkloadState;
use pivot_proto::v1;
use tokio::time::Instant;
use tracing::{debug, info};

use super::step::{Lever, Progress, Step, Timing, next_step};
use super::{ManagerKind, NodeStatus, Why, WorkloadConfig, WorkloadError, WorkloadManager};

/// How the reconciler should pace this host's workload intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// After a transient failure, wait this long before applying again.
    pub retry_after: Duration,
    /// Longest one `apply` may take: the grace (for a drain) plus the confirmation time for each
    /// lever, and the manager's command time. A reconciler's own confirmation deadline for a
    /// workload intent should be at least this.
    pub apply_within: Duration,
}

/// One lever pulled during an apply, and how long the manager took to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeverTime {
    pub lever: Lever,
    /// From the start of the apply to the lever's call.
    pub at: Duration,
    pub took: Duration,
}

/// What an apply reached, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub status: NodeStatus,
    pub levers: Vec<LeverTime>,
    /// Read-backs made, and their total time.
    pub reads: u32,
    pub read_time: Duration,
    pub elapsed: Duration,
}

pub struct WorkloadActuator {
    manager: Arc<dyn WorkloadManager>,
    timing: Timing,
    confirm: Duration,
    progress: Mutex<Progress>,
}

impl std::fmt::Debug for WorkloadActuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadActuator")
            .field("manager", &self.manager.kind())
            .field("node", &self.manager.node())
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

impl WorkloadActuator {
    pub fn new(manager: Arc<dyn WorkloadManager>, config: &WorkloadConfig) -> Self {
        let poll = config.poll();
        Self {
            manager,
            timing: Timing {
                grace: config.grace(),
                poll,
                // A lever whose effect has not shown after the confirmation time is pulled again.
                resend: config.confirm(),
            },
            confirm: config.confirm(),
            progress: Mutex::new(Progress::default()),
        }
    }

    pub fn kind(&self) -> ManagerKind {
        self.manager.kind()
    }

    pub fn node(&self) -> &str {
        self.manager.node()
    }

    pub fn pacing(&self) -> Pacing {
        Pacing {
            retry_after: (self.timing.poll * 5).max(Duration::from_secs(5)),
            apply_within: self.timing.grace + self.confirm * 3,
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the node back, as the agent reports it (`HostReading.workload`).
    pub async fn read(&self) -> v1::WorkloadReading {
        let status = self.manager.status().await;
        super::reading(self.manager.kind(), self.manager.node(), &status)
    }

    /// Reads the node back, for the reconciler's confirmation (`NodeStatus::drained`,
    /// `released`) and `HostReading.workload_state` (`super::observed_state`).
    pub async fn read_status(&self) -> Result<NodeStatus, WorkloadError> {
        self.manager.status().await
    }

    /// Drives the node to `target` and returns once the manager confirms it. The grace counts
    /// from when the node was first seen closed and survives a failed apply: a retry continues
    /// the same drain rather than granting a new grace.
    pub async fn apply(&self, target: WorkloadState, why: &Why) -> Result<Applied, WorkloadError> {
        self.apply_checked(target, why, || Ok(())).await
    }

    /// As [`apply`](Self::apply), asking `may_release` right before every release lever (the
    /// step that lets AI jobs draw power), on the read that showed the node closed; a refusal
    /// stops the apply there with nothing opened.
    pub async fn apply_checked<E: From<WorkloadError>>(
        &self,
        target: WorkloadState,
        why: &Why,
        may_release: impl Fn() -> Result<(), E>,
    ) -> Result<Applied, E> {
        let started = Instant::now();
        self.progress().aim(target);
        let deadline = started
            + self.confirm
            + match target {
                WorkloadState::Drained => self.timing.grace + self.confirm,
                WorkloadState::Released => Duration::ZERO,
            };
        let mut levers = Vec::new();
        let mut reads = 0u32;
        let mut read_time = Duration::ZERO;
        loop {
            let read_at = Instant::now();
            let status = self.manager.status().await?;
            reads = reads.saturating_add(1);
            read_time += read_at.elapsed();
            let now = Instant::now();
            let step = {
                let mut p = self.progress();
                p.note(&status, now);
                next_step(target, &status, &p, now, &self.timing)
            };
            debug!(node = %self.node(), ?target, state = %status.node_state, ?step, "Workload step");
            let lever = match step {
                Step::Done => {
                    info!(node = %self.node(), ?target, state = %status.node_state, elapsed_ms = started.elapsed().as_millis(), "Workload target confirmed");
                    return Ok(Applied {
                        status,
                        levers,
                        reads,
                        read_time,
                        elapsed: started.elapsed(),
                    });
                }
                Step::Refuse { closed_by } => {
                    return Err(WorkloadError::ClosedByOther {
                        manager: self.kind(),
                        node: self.node().to_owned(),
                        by: closed_by,
                    }
                    .into());
                }
                Step::Wait(d) => {
                    if now >= deadline {
                        return Err(WorkloadError::NotConfirmed {
                            manager: self.kind(),
                            node: self.node().to_owned(),
                            wanted: match target {
                                WorkloadState::Released => "schedulable",
                                WorkloadState::Drained => "drained and empty of AI jobs",
                            },
                            waited_s: started.elapsed().as_secs_f64(),
                            state: format!(
                                "{} with {} job(s) and {} GPU(s) allocated",
                                status.node_state, status.jobs_running, status.gpus_allocated
                            ),
                        }
                        .into());
                    }
                    tokio::time::sleep(d.min(deadline - now)).await;
                    continue;
                }
                Step::Pull(lever) => lever,
            };
            let at = started.elapsed();
            let call_at = Instant::now();
            match lever {
                Lever::Release => {
                    may_release()?;
                    self.manager.release(why).await?;
                    self.progress().release_sent = Some(call_at);
                }
                Lever::Drain => {
                    self.manager.drain(why).await?;
                    self.progress().drain_sent = Some(call_at);
                }
                Lever::RemoveJobs => {
                    let asked = self.manager.remove_jobs(why).await?;
                    info!(node = %self.node(), jobs = asked, "Asked the remaining jobs to leave");
                    self.progress().removal_sent = Some(call_at);
                }
            }
            levers.push(LeverTime {
                lever,
                at,
                took: call_at.elapsed(),
            });
        }
    }
}
