//! The SIMULATED workload manager's queue, pure: AI jobs (a GPU count and a run time in trace
//! time) arrive so that the GPUs asked for — running plus pending — follow the trace's AI demand;
//! pending jobs are placed on nodes their agent has released, with free GPUs; a drained node takes
//! no new job, and its jobs are requeued when the agent says the grace is over. Nothing here
//! touches a socket or a file: `workload.rs` serves it, `tests` drive it directly.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use pivot_controller::backtest::generate::Rng;
use serde_json::{Value, json};

/// The Slurm partition the simulated jobs run in.
pub const PARTITION: &str = "ai";

/// The cluster name the simulated squeue reports, so no reader mistakes it for a real one.
pub const CLUSTER: &str = "pivot-site-SIMULATED";

/// Shortest and longest run of a job, trace minutes.
const RUN_MINUTES: (f64, f64) = (20.0, 240.0);

/// A simulated AI job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: u64,
    pub gpus: u32,
    pub submitted_at: DateTime<Utc>,
    /// Trace time it still needs to run (a requeued job resumes from its checkpoint).
    pub remaining: Duration,
    pub requeues: u32,
    pub state: JobState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Pending,
    Running {
        node: String,
        /// The GPU indices it holds on the node.
        slots: Vec<u32>,
        started_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
    },
}

/// A GPU node: open to new jobs only after its agent released it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub open: bool,
    /// Which job holds each GPU.
    pub slots: Vec<Option<u64>>,
}

impl Node {
    fn free(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    fn jobs(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.slots.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Something that happened in the queue, at a trace time.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq)]
pub enum What {
    Submitted {
        job: u64,
        gpus: u32,
    },
    /// A pending job left the queue: the demand it stood for is gone from the trace.
    Withdrawn {
        job: u64,
        gpus: u32,
    },
    /// `ends_at`: when it ends if it runs to its run time (trace time).
    Started {
        job: u64,
        gpus: u32,
        node: String,
        ends_at: DateTime<Utc>,
    },
    /// `early`: ended before its run time, because the trace's demand fell below what runs.
    Ended {
        job: u64,
        gpus: u32,
        node: String,
        early: bool,
    },
    /// The node opened to new jobs (the agent's release).
    Opened {
        node: String,
    },
    /// The node closed to new jobs (the agent's drain); its jobs keep running.
    Closed {
        node: String,
    },
    /// Back to the queue from a drained node once the grace was over.
    Requeued {
        job: u64,
        gpus: u32,
        node: String,
    },
}

impl What {
    /// A short word for the event log.
    pub fn kind(&self) -> &'static str {
        match self {
            What::Submitted { .. } => "submitted",
            What::Withdrawn { .. } => "withdrawn",
            What::Started { .. } => "started",
            What::Ended { .. } => "ended",
            What::Opened { .. } => "opened",
            What::Closed { .. } => "closed",
            What::Requeued { .. } => "requeued",
        }
    }
}

/// A node the manager does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the SIMULATED workload manager has no node `{0}`")]
pub struct UnknownNode(pub String);

/// A node as the agent's exec hook reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    pub open: bool,
    pub jobs: u32,
    pub gpus: u32,
}

impl NodeStatus {
    /// The hook's status line (agent/src/workload/exec.rs), the state word Slurm-like and
    /// marked SIMULATED.
    pub fn line(&self) -> String {
        let load = match (self.jobs, self.gpus) {
            (0, _) => "IDLE",
            (_, g) if g > 0 && !self.open => "MIXED",
            _ => "ALLOCATED",
        };
        let state = if self.open {
            format!("SIMULATED-{load}")
        } else {
            format!("SIMULATED-{load}+DRAIN")
        };
        format!(
            "state={state} schedulable={} closed={} jobs={} gpus={}",
            self.open, !self.open, self.jobs, self.gpus
        )
    }
}

/// Jobs and GPUs, running and pending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSummary {
    pub running_jobs: u32,
    pub running_gpus: u32,
    pub pending_jobs: u32,
    pub pending_gpus: u32,
}

impl QueueSummary {
    pub fn asked_gpus(&self) -> u32 {
        self.running_gpus.saturating_add(self.pending_gpus)
    }
}

impl fmt::Display for QueueSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jobs: {} running ({} GPUs), {} pending ({} GPUs)",
            self.running_jobs, self.running_gpus, self.pending_jobs, self.pending_gpus
        )
    }
}

/// The queue and its nodes.
#[derive(Debug, Clone)]
pub struct Scheduler {
    nodes: BTreeMap<String, Node>,
    jobs: BTreeMap<u64, Job>,
    next_id: u64,
    rng: Rng,
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Scheduler {
    /// `nodes`: name and GPU count; every node starts closed (the agents release them).
    pub fn new(nodes: &[(String, u32)], seed: u64) -> Self {
        Self {
            nodes: nodes
                .iter()
                .map(|(name, gpus)| {
                    (
                        name.clone(),
                        Node {
                            name: name.clone(),
                            open: false,
                            slots: vec![None; usize::try_from(*gpus).unwrap_or(0)],
                        },
                    )
                })
                .collect(),
            jobs: BTreeMap::new(),
            next_id: 1,
            rng: Rng::new(seed),
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    pub fn summary(&self) -> QueueSummary {
        let mut s = QueueSummary::default();
        for j in self.jobs.values() {
            match j.state {
                JobState::Pending => {
                    s.pending_jobs += 1;
                    s.pending_gpus = s.pending_gpus.saturating_add(j.gpus);
                }
                JobState::Running { .. } => {
                    s.running_jobs += 1;
                    s.running_gpus = s.running_gpus.saturating_add(j.gpus);
                }
            }
        }
        s
    }

    /// Brings the queue to trace time `now`: jobs past their run time end, the GPUs asked for
    /// are brought to `target_gpus` (new jobs arrive, or pending ones leave and then the newest
    /// running ones end early), and pending jobs are placed.
    pub fn advance(&mut self, now: DateTime<Utc>, target_gpus: u32) -> Vec<Event> {
        let mut out = Vec::new();
        let due: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Running { ends_at, .. } if ends_at <= now))
            .map(|j| j.id)
            .collect();
        for id in due {
            self.end(id, now, false, &mut out);
        }
        self.follow(now, target_gpus, &mut out);
        self.place(now, &mut out);
        out
    }

    fn follow(&mut self, now: DateTime<Utc>, target: u32, out: &mut Vec<Event>) {
        let mut asked = self.summary().asked_gpus();
        while asked > target {
            // The newest pending job leaves first; then the newest running one ends.
            let pending = self
                .jobs
                .values()
                .filter(|j| j.state == JobState::Pending)
                .max_by_key(|j| (j.submitted_at, j.id))
                .map(|j| (j.id, j.gpus));
            if let Some((job, gpus)) = pending {
                self.jobs.remove(&job);
                out.push(Event {
                    at: now,
                    what: What::Withdrawn { job, gpus },
                });
                asked -= gpus;
                continue;
            }
            let running = self
                .jobs
                .values()
                .filter_map(|j| match j.state {
                    JobState::Running { started_at, .. } => Some((started_at, j.id, j.gpus)),
                    JobState::Pending => None,
                })
                .max();
            let Some((_, job, gpus)) = running else { break };
            self.end(job, now, true, out);
            asked -= gpus;
        }
        while asked < target {
            let gpus = self.job_size(target - asked);
            let minutes = self.rng.range(RUN_MINUTES.0, RUN_MINUTES.1);
            let id = self.next_id;
            self.next_id += 1;
            self.jobs.insert(
                id,
                Job {
                    id,
                    gpus,
                    submitted_at: now,
                    remaining: Duration::seconds((minutes * 60.0).round() as i64),
                    requeues: 0,
                    state: JobState::Pending,
                },
            );
            out.push(Event {
                at: now,
                what: What::Submitted { job: id, gpus },
            });
            asked += gpus;
        }
    }

    /// A job's GPUs: a whole 8-GPU host half the time, else 4 or 2; never more than `gap`.
    fn job_size(&mut self, gap: u32) -> u32 {
        let roll = self.rng.unit();
        let wanted = if roll < 0.5 {
            8
        } else if roll < 0.8 {
            4
        } else {
            2
        };
        [8, 4, 2, 1]
            .into_iter()
            .find(|&g| g <= wanted && g <= gap)
            .unwrap_or(1)
    }

    /// First come, first placed, each on the open node it fits most tightly (a later job that
    /// fits where an earlier one does not goes ahead: backfill).
    fn place(&mut self, now: DateTime<Utc>, out: &mut Vec<Event>) {
        let pending: Vec<(u64, u32, Duration)> = {
            let mut p: Vec<&Job> = self
                .jobs
                .values()
                .filter(|j| j.state == JobState::Pending)
                .collect();
            // Largest first among those submitted together: whole-node jobs are not left
            // waiting behind small ones that fragment every node.
            p.sort_by_key(|j| (j.submitted_at, std::cmp::Reverse(j.gpus), j.id));
            p.iter().map(|j| (j.id, j.gpus, j.remaining)).collect()
        };
        for (id, gpus, remaining) in pending {
            let want = usize::try_from(gpus).unwrap_or(usize::MAX);
            let best = self
                .nodes
                .values()
                .filter(|n| n.open && n.free() >= want)
                .min_by_key(|n| (n.free(), n.name.clone()))
                .map(|n| n.name.clone());
            let Some(name) = best else { continue };
            let Some(node) = self.nodes.get_mut(&name) else {
                continue;
            };
            let mut slots = Vec::with_capacity(want);
            for (i, s) in node.slots.iter_mut().enumerate() {
                if slots.len() == want {
                    break;
                }
                if s.is_none() {
                    *s = Some(id);
                    slots.push(u32::try_from(i).unwrap_or(u32::MAX));
                }
            }
            let ends_at = add(now, remaining);
            if let Some(job) = self.jobs.get_mut(&id) {
                job.state = JobState::Running {
                    node: name.clone(),
                    slots,
                    started_at: now,
                    ends_at,
                };
            }
            out.push(Event {
                at: now,
                what: What::Started {
                    job: id,
                    gpus,
                    node: name,
                    ends_at,
                },
            });
        }
    }

    fn free_slots(&mut self, node: &str, job: u64) {
        if let Some(n) = self.nodes.get_mut(node) {
            for s in &mut n.slots {
                if *s == Some(job) {
                    *s = None;
                }
            }
        }
    }

    fn end(&mut self, id: u64, now: DateTime<Utc>, early: bool, out: &mut Vec<Event>) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        if let JobState::Running { node, .. } = job.state {
            self.free_slots(&node, id);
            out.push(Event {
                at: now,
                what: What::Ended {
                    job: id,
                    gpus: job.gpus,
                    node,
                    early,
                },
            });
        }
    }

    fn node_mut(&mut self, node: &str) -> Result<&mut Node, UnknownNode> {
        self.nodes
            .get_mut(node)
            .ok_or_else(|| UnknownNode(node.to_owned()))
    }

    /// The agent's release: the node takes new jobs (placed at once).
    pub fn release(&mut self, node: &str, now: DateTime<Utc>) -> Result<Vec<Event>, UnknownNode> {
        let n = self.node_mut(node)?;
        let mut out = Vec::new();
        if !n.open {
            n.open = true;
            out.push(Event {
                at: now,
                what: What::Opened {
                    node: node.to_owned(),
                },
            });
        }
        self.place(now, &mut out);
        Ok(out)
    }

    /// The agent's drain: the node takes no new job; once `grace_over`, its jobs go back to the
    /// queue with the run time they have left (and are placed elsewhere if they fit).
    pub fn drain(
        &mut self,
        node: &str,
        now: DateTime<Utc>,
        grace_over: bool,
    ) -> Result<Vec<Event>, UnknownNode> {
        let n = self.node_mut(node)?;
        let mut out = Vec::new();
        if n.open {
            n.open = false;
            out.push(Event {
                at: now,
                what: What::Closed {
                    node: node.to_owned(),
                },
            });
        }
        if grace_over {
            for id in n.jobs() {
                self.requeue(id, now, &mut out);
            }
            self.place(now, &mut out);
        }
        Ok(out)
    }

    fn requeue(&mut self, id: u64, now: DateTime<Utc>, out: &mut Vec<Event>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let JobState::Running {
            node, started_at, ..
        } = &job.state
        else {
            return;
        };
        let node = node.clone();
        let ran = now - *started_at;
        job.remaining = (job.remaining - ran).max(Duration::minutes(1));
        job.requeues += 1;
        job.state = JobState::Pending;
        let gpus = job.gpus;
        self.free_slots(&node, id);
        out.push(Event {
            at: now,
            what: What::Requeued {
                job: id,
                gpus,
                node,
            },
        });
    }

    pub fn status(&self, node: &str) -> Result<NodeStatus, UnknownNode> {
        let n = self
            .nodes
            .get(node)
            .ok_or_else(|| UnknownNode(node.to_owned()))?;
        Ok(NodeStatus {
            open: n.open,
            jobs: u32::try_from(n.jobs().len()).unwrap_or(u32::MAX),
            gpus: u32::try_from(n.slots.len() - n.free()).unwrap_or(u32::MAX),
        })
    }

    /// Which of the node's GPUs a job holds.
    pub fn busy(&self, node: &str) -> Vec<bool> {
        self.nodes
            .get(node)
            .map(|n| n.slots.iter().map(Option::is_some).collect())
            .unwrap_or_default()
    }

    /// The queue as slurmrestd 0.0.38 (Slurm 22.05's `squeue --json`) shows it: pending jobs
    /// waiting for `Resources`, running ones with their node and GPUs.
    pub fn squeue(&self, now: DateTime<Utc>) -> Value {
        let jobs: Vec<Value> = self
            .jobs
            .values()
            .map(|j| {
                let (state, reason, nodes, gres, start, end) = match &j.state {
                    JobState::Pending => ("PENDING", "Resources", String::new(), Vec::new(), 0, 0),
                    JobState::Running {
                        node,
                        slots,
                        started_at,
                        ends_at,
                    } => (
                        "RUNNING",
                        "None",
                        node.clone(),
                        vec![format!("gpu:{}(IDX:{})", j.gpus, index_list(slots))],
                        started_at.timestamp(),
                        ends_at.timestamp(),
                    ),
                };
                json!({
                    "job_id": j.id,
                    "name": format!("simulated-ai-{}", j.id),
                    "account": "simulated",
                    "user_name": "simulated",
                    "cluster": CLUSTER,
                    "comment": "SIMULATED by pivot-site",
                    "partition": PARTITION,
                    "job_state": state,
                    "state_reason": reason,
                    "nodes": nodes,
                    "node_count": 1,
                    "tasks": 1,
                    "tres_per_node": format!("gres:gpu:{}", j.gpus),
                    "tres_req_str": format!("cpu=1,node=1,billing=1,gres/gpu={}", j.gpus),
                    "gres_detail": gres,
                    "submit_time": j.submitted_at.timestamp(),
                    "start_time": start,
                    "end_time": end,
                    "restart_cnt": j.requeues,
                })
            })
            .collect();
        json!({
            "meta": {
                "plugin": { "type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38" },
                "Slurm": {
                    "version": { "major": 22, "micro": 8, "minor": 5 },
                    "release": "22.05.8 (SIMULATED by pivot-site)"
                },
                "simulated_at": now.to_rfc3339(),
            },
            "errors": [],
            "jobs": jobs,
        })
    }
}

/// `0-3`, `0,2,5-7`: Slurm's index list.
fn index_list(slots: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < slots.len() {
        let start = slots[i];
        let mut end = start;
        while i + 1 < slots.len() && slots[i + 1] == end + 1 {
            i += 1;
            end = slots[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use pivot_controller::demand::slurm::demand_from_jobs;
    use proptest::prelude::*;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn nodes(n: usize) -> Vec<(String, u32)> {
        (1..=n).map(|i| (format!("gpu-host-{i}"), 8)).collect()
    }

    #[test]
    fn jobs_wait_for_a_released_node_and_a_drain_requeues_them_after_the_grace() {
        let t0 = at("2026-07-14T18:00:00Z");
        let mut s = Scheduler::new(&nodes(2), 7);
        s.advance(t0, 12);
        let q = s.summary();
        assert_eq!((q.running_gpus, q.pending_gpus), (0, 12), "{q}");
        assert_eq!(
            s.status("gpu-host-1").unwrap().line(),
            "state=SIMULATED-IDLE+DRAIN schedulable=false closed=true jobs=0 gpus=0"
        );

        let e = s.release("gpu-host-1", t0).unwrap();
        assert!(matches!(&e[0].what, What::Opened { node } if node == "gpu-host-1"));
        let st = s.status("gpu-host-1").unwrap();
        assert!(st.open && st.gpus > 0 && st.gpus <= 8, "{st:?}");
        assert_eq!(s.summary().asked_gpus(), 12);

        // Drained: the jobs stay through the grace, then go back to the queue.
        s.drain("gpu-host-1", t0, false).unwrap();
        assert_eq!(s.status("gpu-host-1").unwrap().gpus, st.gpus);
        assert!(s.status("gpu-host-1").unwrap().line().contains("+DRAIN"));
        let e = s.drain("gpu-host-1", t0, true).unwrap();
        assert!(e.iter().any(|e| matches!(e.what, What::Requeued { .. })));
        let st = s.status("gpu-host-1").unwrap();
        assert_eq!((st.jobs, st.gpus, st.open), (0, 0, false));
        assert_eq!(s.summary().pending_gpus, 12);
        assert_eq!(
            s.drain("gpu-9", t0, false),
            Err(UnknownNode("gpu-9".into()))
        );
    }

    #[test]
    fn the_controllers_reader_reads_the_queue_as_pending_and_running_gpus() {
        let t0 = at("2026-07-14T18:00:00Z");
        let mut s = Scheduler::new(&nodes(2), 3);
        s.release("gpu-host-2", t0).unwrap();
        s.advance(t0, 20);
        let text = s.squeue(t0).to_string();
        let jobs = pivot_jobs::slurm::parse_squeue(&text).unwrap();
        let d = demand_from_jobs(&jobs, &[], t0).unwrap();
        let q = s.summary();
        assert_eq!(d.gpus_running, u64::from(q.running_gpus));
        assert_eq!(d.gpus_pending, u64::from(q.pending_gpus));
        assert_eq!(d.gpus_running + d.gpus_pending, 20);
        assert!(q.running_gpus <= 8 && q.running_gpus > 0, "{q}");
        for j in jobs.iter().filter(|j| j.occupies_nodes()) {
            assert!(j.on_node("gpu-host-2").unwrap(), "{j:?}");
        }
        assert_eq!(index_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(index_list(&[0, 2, 5, 6, 7]), "0,2,5-7");
        assert_eq!(
            q.to_string(),
            format!(
                "jobs: {} running ({} GPUs), {} pending ({} GPUs)",
                q.running_jobs, q.running_gpus, q.pending_jobs, q.pending_gpus
            )
        );
    }

    #[test]
    fn jobs_end_at_their_run_time_and_are_replaced_while_the_demand_lasts() {
        let t0 = at("2026-07-14T18:00:00Z");
        let mut s = Scheduler::new(&nodes(4), 11);
        for n in 1..=4 {
            s.release(&format!("gpu-host-{n}"), t0).unwrap();
        }
        s.advance(t0, 24);
        let first: BTreeSet<u64> = s.jobs().map(|j| j.id).collect();
        let later = t0 + Duration::hours(5);
        let e = s.advance(later, 24);
        assert!(
            e.iter()
                .any(|e| matches!(e.what, What::Ended { early: false, .. }))
        );
        assert!(
            s.jobs().all(|j| !first.contains(&j.id)),
            "every first job ran out within 4 h"
        );
        assert_eq!(s.summary().asked_gpus(), 24);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance { minutes: i64, target: u32 },
        Release(usize),
        Drain { node: usize, grace_over: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0i64..90, 0u32..48).prop_map(|(minutes, target)| Op::Advance { minutes, target }),
            1 => (0usize..4).prop_map(Op::Release),
            1 => (0usize..4, any::<bool>()).prop_map(|(node, grace_over)| Op::Drain { node, grace_over }),
        ]
    }

    proptest! {
        /// Whatever the trace and the agents do: no node runs more GPUs than it has, no job
        /// starts on a node its agent has not released (or has drained since), a node drained
        /// past its grace holds no job, and after every advance the GPUs asked for are the
        /// trace's demand.
        #[test]
        fn the_queue_keeps_its_invariants(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..60)) {
            let names: Vec<(String, u32)> = vec![
                ("gpu-host-1".into(), 8), ("gpu-host-2".into(), 8),
                ("gpu-host-3".into(), 4), ("gpu-host-4".into(), 8),
            ];
            let mut s = Scheduler::new(&names, seed);
            let mut now = at("2026-07-14T18:00:00Z");
            let mut released: BTreeSet<String> = BTreeSet::new();
            for op in ops {
                let events = match &op {
                    Op::Advance { minutes, target } => {
                        now += Duration::minutes(*minutes);
                        let e = s.advance(now, *target);
                        prop_assert_eq!(s.summary().asked_gpus(), *target);
                        e
                    }
                    Op::Release(i) => {
                        released.insert(names[*i].0.clone());
                        s.release(&names[*i].0, now).unwrap()
                    }
                    Op::Drain { node, grace_over } => {
                        released.remove(&names[*node].0);
                        let e = s.drain(&names[*node].0, now, *grace_over).unwrap();
                        if *grace_over {
                            let st = s.status(&names[*node].0).unwrap();
                            prop_assert_eq!((st.jobs, st.gpus), (0, 0));
                        }
                        e
                    }
                };
                for e in &events {
                    if let What::Started { node, .. } = &e.what {
                        prop_assert!(released.contains(node), "{:?} started on {} (released: {:?}) after {:?}", e, node, released, op);
                    }
                }
                for (name, gpus) in &names {
                    let held: u32 = s.jobs().filter_map(|j| match &j.state {
                        JobState::Running { node, slots, .. } if node == name => {
                            assert_eq!(slots.len(), j.gpus as usize);
                            Some(j.gpus)
                        }
                        _ => None,
                    }).sum();
                    prop_assert!(held <= *gpus, "{} runs {} GPUs of {}", name, held, gpus);
                    prop_assert_eq!(held, s.status(name).unwrap().gpus);
                    let open = s.nodes().find(|n| &n.name == name).unwrap().open;
                    prop_assert_eq!(open, released.contains(name));
                }
            }
        }
    }
}
