//! The host's workload manager as a device the reconciler drives (`host`, `Limits::Workload`):
//! the [`Actuator`] over [`WorkloadActuator`] (a release asks the lease guard right before it
//! opens the node), the node's read-back as an [`Observed`], and the cached reads the daemon
//! reports in telemetry and hands to the reconciler on the GPU poll interval.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pivot_proto::model::Target;
use pivot_proto::v1;
use tokio::time::Instant;
use tracing::warn;

use super::{NodeStatus, Why, WorkloadActuator, WorkloadError};
use crate::reconcile::{
    Actuator, ApplyError, Device, Limits, Observation, Observed, RaiseGuard, Reconciler,
};

/// The device id of the host's workload in the agent's inventory and intents.
pub const HOST_DEVICE_ID: &str = "host";

/// Time a manager's commands may add to an apply beyond its own confirmation budget (each
/// command has its own timeout; the last read-back may start just before the budget ends).
const COMMAND_SLACK: Duration = Duration::from_secs(30);

/// What a read of the node shows the reconciler. A read that failed shows nothing: the node
/// counts as unreachable (nothing is driven on a guess) until the manager answers again.
pub fn observed(status: &Result<NodeStatus, WorkloadError>) -> Observed {
    match status {
        Ok(s) => Observed::Workload {
            schedulable: Some(s.schedulable),
            drained: Some(s.drained()),
            ai_jobs_running: Some(s.jobs_running),
        },
        Err(_) => Observed::Workload {
            schedulable: None,
            drained: None,
            ai_jobs_running: None,
        },
    }
}

#[async_trait]
impl Actuator for WorkloadActuator {
    async fn apply(&self, target: &Target, guard: &RaiseGuard) -> Result<Observed, ApplyError> {
        self.apply_because(target, guard, "").await
    }

    async fn apply_because(
        &self,
        target: &Target,
        guard: &RaiseGuard,
        why: &str,
    ) -> Result<Observed, ApplyError> {
        let Target::Workload { state } = target else {
            return Err(ApplyError::WrongTarget {
                device: "workload manager",
                target: *target,
            });
        };
        let why = Why {
            reason: why.to_owned(),
            power_w: None,
        };
        // Opening the node lets AI jobs draw power: it needs the lease, checked right before the
        // lever on the read that showed the node closed, not only when the apply started.
        let applied = self
            .apply_checked(*state, &why, || {
                guard
                    .check("release the node to AI jobs")
                    .map_err(ApplyError::from)
            })
            .await?;
        Ok(observed(&Ok(applied.status)))
    }
}

/// The reconciler's view of the host's workload. A drain waits out the checkpoint grace inside
/// one call, so the call's deadline is the actuator's whole budget plus its commands' time; the
/// call returns only once the manager confirms the target, so its read-back confirms it.
pub fn device(actuator: &Arc<WorkloadActuator>) -> Device {
    let pacing = actuator.pacing();
    Device {
        limits: Limits::Workload,
        actuator: Arc::clone(actuator) as Arc<dyn Actuator>,
        pacing: pacing.retry_after,
        deadline: pacing.apply_within + COMMAND_SLACK,
        // A drain waits out a grace and requeues jobs: its pacing holds.
        repeatable: false,
    }
}

/// The node's latest read, as telemetry reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReading {
    pub reading: v1::WorkloadReading,
    /// `HostReading.workload_state`: RELEASED or DRAINED when the read shows one, else
    /// unspecified (a failed read, a node closed with jobs still on it).
    pub state: v1::WorkloadState,
}

/// The latest read of the node, shared by the poll and the telemetry.
#[derive(Debug, Default)]
pub struct NodeReadings(RwLock<Option<NodeReading>>);

impl NodeReadings {
    pub fn latest(&self) -> Option<NodeReading> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, r: NodeReading) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
    }
}

/// Reads the node once: records the reading for telemetry and returns what the reconciler sees,
/// stamped with the instant the read started.
pub async fn read_once(actuator: &WorkloadActuator, readings: &NodeReadings) -> Observation {
    let taken_at = Instant::now();
    let status = actuator.read_status().await;
    let state = match &status {
        Ok(s) => super::observed_state(s),
        Err(_) => v1::WorkloadState::Unspecified,
    };
    readings.set(NodeReading {
        reading: super::reading(actuator.kind(), actuator.node(), &status),
        state,
    });
    Observation {
        taken_at,
        observed: observed(&status),
    }
}

/// Reads the node every `interval`, for telemetry and for the reconciler (which re-applies a
/// target the node drifted from: an operator's resume of a node pivot drained).
pub async fn run_poll(
    actuator: Arc<WorkloadActuator>,
    readings: Arc<NodeReadings>,
    reconciler: Arc<Reconciler>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let o = read_once(&actuator, &readings).await;
        let failed = o.observed.unreachable();
        if failed && !failing {
            let error = readings
                .latest()
                .map(|r| r.reading.read_error)
                .unwrap_or_default();
            warn!(node = %actuator.node(), manager = %actuator.kind(), %error, "Cannot read the workload node; it counts as unreachable until it answers");
        }
        failing = failed;
        reconciler.observe(HOST_DEVICE_ID, o);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Mutex;

    use chrono::Utc;
    use pivot_proto::model::WorkloadState;

    use super::*;
    use crate::reconcile::{ClockCheck, ClockTrust};
    use crate::workload::config::WorkloadConfig;
    use crate::workload::{ManagerKind, WorkloadManager};

    /// A node in memory; records the levers pulled and the reasons given.
    #[derive(Default)]
    struct FakeNode {
        open: Mutex<bool>,
        jobs: Mutex<u32>,
        calls: Mutex<Vec<String>>,
        other: Option<String>,
    }

    #[async_trait]
    impl WorkloadManager for FakeNode {
        fn kind(&self) -> ManagerKind {
            ManagerKind::Exec
        }
        fn node(&self) -> &str {
            "gpu-1"
        }
        async fn release(&self, why: &Why) -> Result<(), WorkloadError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("release {}", why.reason));
            *self.open.lock().unwrap() = true;
            Ok(())
        }
        async fn drain(&self, why: &Why) -> Result<(), WorkloadError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("drain {}", why.reason));
            *self.open.lock().unwrap() = false;
            Ok(())
        }
        async fn remove_jobs(&self, _: &Why) -> Result<u32, WorkloadError> {
            self.calls.lock().unwrap().push("remove_jobs".into());
            Ok(std::mem::take(&mut *self.jobs.lock().unwrap()))
        }
        async fn status(&self) -> Result<NodeStatus, WorkloadError> {
            let open = *self.open.lock().unwrap();
            let jobs = *self.jobs.lock().unwrap();
            Ok(NodeStatus {
                node_state: if open { "open" } else { "closed" }.into(),
                schedulable: open && self.other.is_none(),
                closed: !open || self.other.is_some(),
                closed_by_other: self.other.clone(),
                jobs_running: jobs,
                gpus_allocated: jobs * 2,
                busy_without_jobs: false,
            })
        }
    }

    fn actuator(node: Arc<FakeNode>) -> Arc<WorkloadActuator> {
        let config: WorkloadConfig = toml::from_str(
            "manager = \"exec\"\ngrace_s = 0.2\nconfirm_s = 1\npoll_s = 0.05\n[exec]\nhook = \"/x\"\n",
        )
        .unwrap();
        Arc::new(WorkloadActuator::new(node, &config))
    }

    fn guard(lease_s: i64) -> RaiseGuard {
        let trust = Arc::new(ClockTrust::default());
        trust.set(ClockCheck::Within { skew_s: 0.0 });
        RaiseGuard::new(
            Some(Utc::now() + chrono::Duration::seconds(lease_s)),
            Arc::new(Utc::now),
            trust,
        )
    }

    const RELEASED: Target = Target::Workload {
        state: WorkloadState::Released,
    };
    const DRAINED: Target = Target::Workload {
        state: WorkloadState::Drained,
    };

    #[tokio::test]
    async fn a_release_needs_the_lease_at_the_lever_and_a_drain_needs_none() {
        let node = Arc::new(FakeNode::default());
        let act = actuator(Arc::clone(&node));
        let e = act
            .apply_because(&RELEASED, &guard(-1), "plan p: AI pays")
            .await
            .unwrap_err();
        assert!(matches!(e, ApplyError::RaiseRefused(_)), "{e}");
        assert!(!e.is_permanent());
        assert!(node.calls.lock().unwrap().is_empty(), "nothing opened");

        let o = act
            .apply_because(&RELEASED, &guard(60), "plan p: AI pays")
            .await
            .unwrap();
        assert_eq!(
            o,
            Observed::Workload {
                schedulable: Some(true),
                drained: Some(false),
                ai_jobs_running: Some(0)
            }
        );
        *node.jobs.lock().unwrap() = 1;
        // A fallback's guard refuses every raise; a drain needs no lease.
        let o = act
            .apply_because(&DRAINED, &RaiseGuard::lowering_only(), "lease expired")
            .await
            .unwrap();
        assert_eq!(
            o,
            Observed::Workload {
                schedulable: Some(false),
                drained: Some(true),
                ai_jobs_running: Some(0)
            }
        );
        assert_eq!(
            *node.calls.lock().unwrap(),
            [
                "release plan p: AI pays",
                "drain lease expired",
                "remove_jobs"
            ]
        );
    }

    #[tokio::test]
    async fn someone_elses_drain_is_a_permanent_failure_and_a_wrong_target_too() {
        let node = Arc::new(FakeNode {
            other: Some("DRAIN: disk swap".into()),
            ..FakeNode::default()
        });
        let act = actuator(Arc::clone(&node));
        let e = act
            .apply_because(&RELEASED, &guard(60), "plan p")
            .await
            .unwrap_err();
        assert!(
            matches!(e, ApplyError::Workload(WorkloadError::ClosedByOther { .. })),
            "{e}"
        );
        assert!(
            e.is_permanent() && e.to_string().contains("disk swap"),
            "{e}"
        );
        let e = act
            .apply_because(&Target::Gpu { power_cap_w: 300 }, &guard(60), "")
            .await
            .unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(node.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_call_deadline_covers_the_grace_and_reads_stamp_their_start() {
        let node = Arc::new(FakeNode::default());
        let act = actuator(Arc::clone(&node));
        let d = device(&act);
        assert_eq!(d.limits, Limits::Workload);
        assert!(d.deadline >= act.pacing().apply_within + COMMAND_SLACK);
        let readings = NodeReadings::default();
        let before = Instant::now();
        let o = read_once(&act, &readings).await;
        assert!(o.taken_at >= before);
        let r = readings.latest().unwrap();
        assert_eq!(r.state, v1::WorkloadState::Drained);
        assert_eq!(
            (r.reading.node.as_str(), r.reading.schedulable),
            ("gpu-1", false)
        );
        let failed = observed(&Err(WorkloadError::NotConfirmed {
            manager: ManagerKind::Exec,
            node: "gpu-1".into(),
            wanted: "schedulable",
            waited_s: 1.0,
            state: "?".into(),
        }));
        assert!(failed.unreachable());
    }
}
