//! Slurm as `squeue --json` and `sinfo --json` describe it (the openapi v0.0.38 shapes of 22.05,
//! and the later ones where numbers became `{"set", "number"}` objects and states lists).
//!
//! In 22.05 both commands ignore their filters when asked for JSON (`squeue --json -w NODE` lists
//! every job, finished ones included), so callers filter here: by node, partition and state.

pub mod hostlist;
pub mod node_state;
pub mod tres;

pub use hostlist::BadHostlist;
pub use node_state::NodeState;
pub use tres::BadTres;

/// Why Slurm's JSON could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SlurmJsonError {
    #[error("{command} printed JSON pivot cannot read: {source}")]
    Syntax {
        command: &'static str,
        source: serde_json::Error,
    },
    #[error("{command} reported errors: {errors}")]
    Reported {
        command: &'static str,
        errors: String,
    },
    #[error("{command}: job {job_id}: field `{field}`: {problem}")]
    Job {
        command: &'static str,
        job_id: u64,
        field: &'static str,
        problem: String,
    },
}

/// Job states in which a job holds (or is still leaving) its nodes.
const OCCUPYING: [&str; 9] = [
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "CONFIGURING",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESIZING",
    "POWER_UP_NODE",
];

/// One job, as pivot reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub job_id: u64,
    /// Uppercase states, e.g. `["RUNNING"]` or `["PENDING", "REQUEUED"]`.
    pub states: Vec<String>,
    /// e.g. `ReqNodeNotAvail`, `Resources`, `BeginTime`.
    pub state_reason: String,
    /// A job submitted to several partitions lists them separated by commas.
    pub partition: String,
    /// Hostlist of the nodes it runs on (empty while pending).
    pub nodes: String,
    pub node_count: u64,
    pub tasks: Option<u64>,
    pub sockets_per_node: Option<u64>,
    pub tres_per_job: String,
    pub tres_per_node: String,
    pub tres_per_task: String,
    pub tres_per_socket: String,
    /// Per allocated node, e.g. `gpu:4(IDX:0-3)`.
    pub gres_detail: Vec<String>,
}

impl Job {
    /// The job holds resources on its nodes (or is still finishing there).
    pub fn occupies_nodes(&self) -> bool {
        self.states.iter().any(|s| OCCUPYING.contains(&s.as_str()))
    }

    /// Waiting to start (requeued jobs included), not holding a node.
    pub fn pending(&self) -> bool {
        !self.occupies_nodes() && self.states.iter().any(|s| s == "PENDING")
    }

    /// Whether it runs in any of `partitions` (all of them when empty).
    pub fn in_partitions(&self, partitions: &[String]) -> bool {
        partitions.is_empty()
            || self
                .partition
                .split(',')
                .any(|p| partitions.iter().any(|want| want == p.trim()))
    }

    pub fn on_node(&self, node: &str) -> Result<bool, BadHostlist> {
        hostlist::contains(&self.nodes, node)
    }

    /// GPUs the job asks for in all, from whichever of its per-job, per-node, per-task and
    /// per-socket requests is largest. (Per-socket counts one socket per node where Slurm does
    /// not say how many it gets.)
    pub fn gpus_requested(&self) -> Result<u64, SlurmJsonError> {
        let count = |field: &'static str, text: &str| {
            tres::gpus(text).map_err(|e| self.field_error(field, e.to_string()))
        };
        let nodes = self.node_count.max(1);
        let per_job = count("tres_per_job", &self.tres_per_job)?;
        let per_node = count("tres_per_node", &self.tres_per_node)?.saturating_mul(nodes);
        let per_task = count("tres_per_task", &self.tres_per_task)?
            .saturating_mul(self.tasks.unwrap_or(1).max(1));
        let per_socket = count("tres_per_socket", &self.tres_per_socket)?
            .saturating_mul(self.sockets_per_node.unwrap_or(1).max(1))
            .saturating_mul(nodes);
        Ok(per_job.max(per_node).max(per_task).max(per_socket))
    }

    /// GPUs the job holds: what Slurm allocated (`gres_detail`), else what it asked for.
    pub fn gpus_allocated(&self) -> Result<u64, SlurmJsonError> {
        if self.gres_detail.is_empty() {
            return self.gpus_requested();
        }
        let mut total = 0u64;
        for d in &self.gres_detail {
            let n = tres::gpus(d).map_err(|e| self.field_error("gres_detail", e.to_string()))?;
            total = total.saturating_add(n);
        }
        Ok(total)
    }

    fn field_error(&self, field: &'static str, problem: String) -> SlurmJsonError {
        SlurmJsonError::Job {
            command: "squeue --json",
            job_id: self.job_id,
            field,
            problem,
        }
    }
}

/// One node, as pivot reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub state: NodeState,
    pub reason: String,
    /// Configured GRES, e.g. `gpu:8`.
    pub gres: String,
    /// GRES in use, e.g. `gpu:6` or `gpu:a100:6(IDX:0-5)`.
    pub gres_used: String,
    pub partitions: Vec<String>,
}

impl Node {
    pub fn gpus_used(&self) -> Result<u64, BadTres> {
        tres::gpus(&self.gres_used)
    }
}

/// Parses `squeue --json`.
pub fn parse_squeue(json: &str) -> Result<Vec<Job>, SlurmJsonError> {
    const COMMAND: &str = "squeue --json";
    let reply: raw::Squeue =
        serde_json::from_str(json).map_err(|source| SlurmJsonError::Syntax {
            command: COMMAND,
            source,
        })?;
    raw::check_errors(COMMAND, &reply.errors)?;
    Ok(reply.jobs.into_iter().map(raw::RawJob::into_job).collect())
}

/// Parses `sinfo --json`.
pub fn parse_sinfo(json: &str) -> Result<Vec<Node>, SlurmJsonError> {
    const COMMAND: &str = "sinfo --json";
    let reply: raw::Sinfo =
        serde_json::from_str(json).map_err(|source| SlurmJsonError::Syntax {
            command: COMMAND,
            source,
        })?;
    raw::check_errors(COMMAND, &reply.errors)?;
    let nodes = reply.nodes.ok_or(SlurmJsonError::Reported {
        command: COMMAND,
        errors: "the reply has no `nodes` list (Slurm 24.05 and later group sinfo's JSON by \
                 partition); pivot reads the per-node list of Slurm 21.08 to 23.11"
            .to_owned(),
    })?;
    Ok(nodes.into_iter().map(raw::RawNode::into_node).collect())
}

/// The JSON as Slurm's versions print it; converted to [`Job`] and [`Node`] right here.
mod raw {
    use serde::Deserialize;

    use super::{Job, Node, NodeState, SlurmJsonError};

    #[derive(Deserialize)]
    pub struct Squeue {
        #[serde(default)]
        pub errors: Vec<serde_json::Value>,
        #[serde(default)]
        pub jobs: Vec<RawJob>,
    }

    #[derive(Deserialize)]
    pub struct Sinfo {
        #[serde(default)]
        pub errors: Vec<serde_json::Value>,
        /// Absent from the partition-grouped output of Slurm 24.05 on.
        pub nodes: Option<Vec<RawNode>>,
    }

    pub fn check_errors(
        command: &'static str,
        errors: &[serde_json::Value],
    ) -> Result<(), SlurmJsonError> {
        if errors.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = errors
            .iter()
            .map(|e| {
                e.get("description")
                    .or_else(|| e.get("error"))
                    .and_then(serde_json::Value::as_str)
                    .map_or_else(|| e.to_string(), str::to_owned)
            })
            .collect();
        Err(SlurmJsonError::Reported {
            command,
            errors: crate::command::quote(&texts.join("; ")),
        })
    }

    /// A string, or a list of strings (23.02 on), or null.
    #[derive(Deserialize, Default)]
    #[serde(untagged)]
    pub enum Words {
        One(String),
        Many(Vec<String>),
        #[default]
        None,
    }

    impl Words {
        fn list(self) -> Vec<String> {
            match self {
                Words::One(s) => vec![s],
                Words::Many(v) => v,
                Words::None => Vec::new(),
            }
        }
    }

    /// A number, `{"set": bool, "infinite": bool, "number": n}` (23.02 on), or null.
    #[derive(Deserialize, Default)]
    #[serde(untagged)]
    pub enum Number {
        Plain(i64),
        Wrapped {
            #[serde(default = "yes")]
            set: bool,
            #[serde(default)]
            infinite: bool,
            #[serde(default)]
            number: i64,
        },
        #[default]
        None,
    }

    fn yes() -> bool {
        true
    }

    impl Number {
        fn get(&self) -> Option<u64> {
            match self {
                Number::Plain(n) => u64::try_from(*n).ok(),
                Number::Wrapped {
                    set: true,
                    infinite: false,
                    number,
                } => u64::try_from(*number).ok(),
                _ => None,
            }
        }
    }

    /// A string or null.
    #[derive(Deserialize, Default)]
    #[serde(untagged)]
    pub enum Text {
        Some(String),
        #[default]
        None,
    }

    impl Text {
        fn get(self) -> String {
            match self {
                Text::Some(s) => s,
                Text::None => String::new(),
            }
        }
    }

    #[derive(Deserialize)]
    pub struct RawJob {
        pub job_id: u64,
        #[serde(default)]
        job_state: Words,
        #[serde(default)]
        state_reason: Text,
        #[serde(default)]
        partition: Text,
        #[serde(default)]
        nodes: Text,
        #[serde(default)]
        node_count: Number,
        #[serde(default)]
        tasks: Number,
        #[serde(default)]
        sockets_per_node: Number,
        #[serde(default)]
        tres_per_job: Text,
        #[serde(default)]
        tres_per_node: Text,
        #[serde(default)]
        tres_per_task: Text,
        #[serde(default)]
        tres_per_socket: Text,
        #[serde(default)]
        gres_detail: Vec<String>,
    }

    impl RawJob {
        pub fn into_job(self) -> Job {
            Job {
                job_id: self.job_id,
                states: self
                    .job_state
                    .list()
                    .into_iter()
                    .map(|s| s.trim().to_ascii_uppercase())
                    .collect(),
                state_reason: self.state_reason.get(),
                partition: self.partition.get(),
                nodes: self.nodes.get(),
                node_count: self.node_count.get().unwrap_or(1),
                tasks: self.tasks.get(),
                sockets_per_node: self.sockets_per_node.get(),
                tres_per_job: self.tres_per_job.get(),
                tres_per_node: self.tres_per_node.get(),
                tres_per_task: self.tres_per_task.get(),
                tres_per_socket: self.tres_per_socket.get(),
                gres_detail: self.gres_detail,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct RawNode {
        name: String,
        #[serde(default)]
        state: Words,
        #[serde(default)]
        state_flags: Vec<String>,
        #[serde(default)]
        reason: Text,
        #[serde(default)]
        gres: Text,
        #[serde(default)]
        gres_used: Text,
        #[serde(default)]
        partitions: Vec<String>,
    }

    impl RawNode {
        pub fn into_node(self) -> Node {
            let mut words = self.state.list();
            words.extend(self.state_flags);
            Node {
                name: self.name,
                state: NodeState::from_words(words.iter().map(String::as_str)),
                reason: self.reason.get(),
                gres: self.gres.get(),
                gres_used: self.gres_used.get(),
                partitions: self.partitions,
            }
        }
    }
}

#[cfg(test)]
mod tests;
