//! The hand-over's decision, pure: from the target, what the manager read back and what pivot
//! has done so far, the next move. The actuator executes it; tests drive it through every state.

use std::time::Duration;

use pivot_proto::model::WorkloadState;
use tokio::time::Instant;

use super::NodeStatus;

/// What pivot has done towards one target (kept across applies of the same target).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub target: Option<WorkloadState>,
    /// When pivot last asked the manager to open the node.
    pub release_sent: Option<Instant>,
    /// When pivot last asked the manager to close the node.
    pub drain_sent: Option<Instant>,
    /// Since when the node has been seen closed during this drain: the grace counts from here.
    pub closed_since: Option<Instant>,
    /// When pivot last asked the remaining jobs to leave.
    pub removal_sent: Option<Instant>,
}

impl Progress {
    /// Starts over when the target changes; otherwise keeps what was done.
    pub fn aim(&mut self, target: WorkloadState) {
        if self.target != Some(target) {
            *self = Progress {
                target: Some(target),
                ..Progress::default()
            };
        }
    }

    /// Notes what a read-back shows.
    pub fn note(&mut self, status: &NodeStatus, now: Instant) {
        if status.closed {
            self.closed_since.get_or_insert(now);
        } else {
            // Someone reopened it: a later close starts a new grace.
            self.closed_since = None;
        }
    }
}

/// How long to wait between reads, for jobs, and before a lever whose effect does not show is
/// sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub grace: Duration,
    pub poll: Duration,
    pub resend: Duration,
}

/// A call on the workload manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lever {
    Release,
    Drain,
    RemoveJobs,
}

impl Lever {
    pub fn as_str(self) -> &'static str {
        match self {
            Lever::Release => "release",
            Lever::Drain => "drain",
            Lever::RemoveJobs => "remove_jobs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Pull(Lever),
    /// Read again after this long.
    Wait(Duration),
    /// The target is reached (as intents.proto defines it).
    Done,
    /// The node was closed by someone else; pivot does not reopen it.
    Refuse {
        closed_by: String,
    },
}

pub fn next_step(
    target: WorkloadState,
    status: &NodeStatus,
    progress: &Progress,
    now: Instant,
    t: &Timing,
) -> Step {
    let recently = |sent: Option<Instant>| sent.is_some_and(|at| now.duration_since(at) < t.resend);
    match target {
        WorkloadState::Released => {
            if status.released() {
                Step::Done
            } else if let Some(by) = &status.closed_by_other {
                Step::Refuse {
                    closed_by: by.clone(),
                }
            } else if recently(progress.release_sent) {
                Step::Wait(t.poll)
            } else {
                Step::Pull(Lever::Release)
            }
        }
        WorkloadState::Drained => {
            if status.drained() {
                return Step::Done;
            }
            if !status.closed {
                return if recently(progress.drain_sent) {
                    Step::Wait(t.poll)
                } else {
                    Step::Pull(Lever::Drain)
                };
            }
            let closed_for = progress
                .closed_since
                .map_or(Duration::ZERO, |since| now.duration_since(since));
            if closed_for < t.grace {
                return Step::Wait(t.poll.min(t.grace - closed_for));
            }
            if status.jobs_running > 0 && !recently(progress.removal_sent) {
                Step::Pull(Lever::RemoveJobs)
            } else {
                Step::Wait(t.poll)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn timing() -> Timing {
        Timing {
            grace: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            resend: Duration::from_secs(10),
        }
    }

    fn status(closed: bool, schedulable: bool, jobs: u32) -> NodeStatus {
        NodeStatus {
            node_state: String::new(),
            schedulable,
            closed,
            closed_by_other: None,
            jobs_running: jobs,
            gpus_allocated: jobs,
            busy_without_jobs: false,
        }
    }

    #[test]
    fn a_drain_waits_out_the_grace_then_removes_jobs() {
        let t = timing();
        let start = Instant::now();
        let mut p = Progress::default();
        p.aim(WorkloadState::Drained);
        let open = status(false, true, 2);
        assert_eq!(
            next_step(WorkloadState::Drained, &open, &p, start, &t),
            Step::Pull(Lever::Drain)
        );
        p.drain_sent = Some(start);
        let closed = status(true, false, 2);
        p.note(&closed, start);
        assert_eq!(
            next_step(
                WorkloadState::Drained,
                &closed,
                &p,
                start + Duration::from_secs(29),
                &t
            ),
            Step::Wait(Duration::from_secs(1))
        );
        let after = start + Duration::from_secs(30);
        assert_eq!(
            next_step(WorkloadState::Drained, &closed, &p, after, &t),
            Step::Pull(Lever::RemoveJobs)
        );
        p.removal_sent = Some(after);
        assert_eq!(
            next_step(
                WorkloadState::Drained,
                &closed,
                &p,
                after + Duration::from_secs(1),
                &t
            ),
            Step::Wait(t.poll)
        );
        assert_eq!(
            next_step(
                WorkloadState::Drained,
                &status(true, false, 0),
                &p,
                after,
                &t
            ),
            Step::Done
        );
    }

    #[test]
    fn pivot_does_not_reopen_a_node_someone_else_closed() {
        let mut s = status(true, false, 0);
        s.closed_by_other = Some("disk replacement".into());
        let step = next_step(
            WorkloadState::Released,
            &s,
            &Progress::default(),
            Instant::now(),
            &timing(),
        );
        assert_eq!(
            step,
            Step::Refuse {
                closed_by: "disk replacement".into()
            }
        );
    }

    #[test]
    fn a_new_target_forgets_the_old_progress() {
        let now = Instant::now();
        let mut p = Progress::default();
        p.aim(WorkloadState::Drained);
        p.drain_sent = Some(now);
        p.aim(WorkloadState::Drained);
        assert_eq!(p.drain_sent, Some(now));
        p.aim(WorkloadState::Released);
        assert_eq!(p.drain_sent, None);
    }

    fn any_status() -> impl Strategy<Value = NodeStatus> {
        (
            any::<bool>(),
            any::<bool>(),
            0u32..3,
            0u32..3,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(closed, schedulable, jobs, gpus, busy, other)| NodeStatus {
                    node_state: String::new(),
                    schedulable,
                    closed,
                    closed_by_other: other.then(|| "maintenance".to_owned()),
                    jobs_running: jobs,
                    gpus_allocated: gpus,
                    busy_without_jobs: busy,
                },
            )
    }

    fn any_progress(now: Instant) -> impl Strategy<Value = Progress> {
        let at = move || {
            proptest::option::of((0u64..100).prop_map(move |s| now - Duration::from_secs(s)))
        };
        (at(), at(), at(), at()).prop_map(|(r, d, c, j)| Progress {
            target: None,
            release_sent: r,
            drain_sent: d,
            closed_since: c,
            removal_sent: j,
        })
    }

    proptest! {
        /// Safety: a drain is done only when the node is closed, empty of jobs and GPUs; it never
        /// opens a node; jobs are removed only from a closed node after the full grace.
        #[test]
        fn drain_steps_are_safe(s in any_status(), p in any_progress(Instant::now() + Duration::from_secs(200))) {
            let now = Instant::now() + Duration::from_secs(200);
            let t = timing();
            match next_step(WorkloadState::Drained, &s, &p, now, &t) {
                Step::Done => prop_assert!(s.closed && s.jobs_running == 0 && s.gpus_allocated == 0 && !s.busy_without_jobs),
                Step::Pull(Lever::Release) | Step::Refuse { .. } => prop_assert!(false, "a drain opened the node"),
                Step::Pull(Lever::RemoveJobs) => {
                    prop_assert!(s.closed && s.jobs_running > 0);
                    let since = p.closed_since.unwrap_or(now);
                    prop_assert!(now.duration_since(since) >= t.grace);
                }
                Step::Pull(Lever::Drain) => prop_assert!(!s.closed),
                Step::Wait(d) => prop_assert!(d <= t.poll && !d.is_zero()),
            }
        }

        /// A release never closes a node or removes jobs, and never reopens someone else's drain.
        #[test]
        fn release_steps_are_safe(s in any_status(), p in any_progress(Instant::now() + Duration::from_secs(200))) {
            let now = Instant::now() + Duration::from_secs(200);
            match next_step(WorkloadState::Released, &s, &p, now, &timing()) {
                Step::Done => prop_assert!(s.schedulable),
                Step::Pull(Lever::Drain) | Step::Pull(Lever::RemoveJobs) => prop_assert!(false, "a release closed the node"),
                Step::Pull(Lever::Release) => prop_assert!(s.closed_by_other.is_none()),
                Step::Refuse { .. } => prop_assert!(s.closed_by_other.is_some() && !s.schedulable),
                Step::Wait(_) => {}
            }
        }
    }
}
