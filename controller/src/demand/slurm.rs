//! Slurm's AI demand: `squeue --json` run by the controller, or the same document from
//! slurmrestd (`GET /slurm/v0.0.38/jobs`, the schema 22.05's `squeue --json` prints) through the
//! market's HTTP client (HTTPS with the system's roots). Pending GPUs count only for jobs that
//! capacity would start; running GPUs are what jobs hold.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_jobs::command::{self, CommandLine};
use pivot_jobs::slurm::{self, Job, SlurmJsonError};
use url::Url;

use super::config::{DemandConfig, DemandSource, SlurmrestdConfig, secs};
use super::{DemandError, GpuDemand};
use crate::market::Origin;
use crate::market::http::{self, HttpClient};

/// Pending reasons that more nodes would not cure: held jobs, dependencies, quotas, bad
/// requests. (Slurm's own names; a `QOS…` or `Assoc…` prefix is a limit of the account's.)
const NOT_FOR_CAPACITY: [&str; 12] = [
    "JobHeldUser",
    "JobHeldAdmin",
    "Dependency",
    "DependencyNeverSatisfied",
    "PartitionDown",
    "PartitionInactive",
    "PartitionTimeLimit",
    "PartitionNodeLimit",
    "InvalidAccount",
    "InvalidQOS",
    "BadConstraints",
    "JobArrayTaskLimit",
];

/// Whether capacity could start a pending job waiting for `reason`.
pub fn waits_for_capacity(reason: &str) -> bool {
    !(NOT_FOR_CAPACITY.contains(&reason)
        || reason.starts_with("QOS")
        || reason.starts_with("Assoc"))
}

/// Adds up the GPUs of pending and running jobs in `partitions` (all when empty).
pub fn demand_from_jobs(
    jobs: &[Job],
    partitions: &[String],
    read_at: DateTime<Utc>,
) -> Result<GpuDemand, SlurmJsonError> {
    let mut pending = 0u64;
    let mut running = 0u64;
    for job in jobs.iter().filter(|j| j.in_partitions(partitions)) {
        if job.occupies_nodes() {
            running = running.saturating_add(job.gpus_allocated()?);
        } else if job.pending() && waits_for_capacity(&job.state_reason) {
            pending = pending.saturating_add(job.gpus_requested()?);
        }
    }
    Ok(GpuDemand {
        gpus_pending: pending,
        gpus_running: running,
        read_at,
    })
}

#[derive(Debug)]
enum Via {
    Squeue(CommandLine),
    Rest {
        client: HttpClient,
        jobs_url: Url,
        timeout: Duration,
        origin: Origin,
        config: SlurmrestdConfig,
    },
}

#[derive(Debug)]
pub struct SlurmDemand {
    partitions: Vec<String>,
    via: Via,
}

impl SlurmDemand {
    /// From a validated `[demand]` whose source is `slurm` or `slurmrestd`; `client` is the
    /// HTTP client slurmrestd is read through (one is built when none is given).
    pub fn new(config: &DemandConfig, client: Option<&HttpClient>) -> Result<Self, DemandError> {
        let via = match (&config.source, &config.slurmrestd) {
            (DemandSource::Slurmrestd, Some(r)) => {
                let fail = |problem: String| DemandError::Slurmrestd {
                    url: r.url.clone(),
                    problem,
                };
                let base = http::parse_url(&r.url).map_err(fail)?;
                let jobs_url = http::endpoint(&base, &format!("/slurm/{}/jobs", r.api_version))
                    .map_err(fail)?;
                let client = match client {
                    Some(c) => c.clone(),
                    None => HttpClient::new().map_err(|e| fail(e.to_string()))?,
                };
                Via::Rest {
                    client,
                    origin: Origin::new("slurmrestd", http::redact(&jobs_url)),
                    jobs_url,
                    timeout: secs(r.timeout_s),
                    config: r.clone(),
                }
            }
            _ => {
                let s = config.slurm.clone().unwrap_or_default();
                let mut line = CommandLine::new(&s.squeue, secs(s.timeout_s)).arg("--json");
                if let Some(conf) = &s.slurm_conf {
                    line = line.env("SLURM_CONF", conf);
                }
                Via::Squeue(line)
            }
        };
        Ok(Self {
            partitions: config.partitions.clone(),
            via,
        })
    }

    /// Where the demand is read from, for logs and the market's status.
    pub fn origin(&self) -> Origin {
        match &self.via {
            Via::Squeue(line) => Origin::new("slurm", line.display()),
            Via::Rest { origin, .. } => origin.clone(),
        }
    }

    pub async fn read(&self) -> Result<GpuDemand, DemandError> {
        let json = match &self.via {
            Via::Squeue(line) => command::run_ok(line).await?.stdout,
            Via::Rest {
                client,
                jobs_url,
                timeout,
                origin,
                config,
            } => fetch(client, origin, jobs_url, *timeout, config).await?,
        };
        let jobs = slurm::parse_squeue(&json)?;
        Ok(demand_from_jobs(&jobs, &self.partitions, Utc::now())?)
    }
}

async fn fetch(
    client: &HttpClient,
    origin: &Origin,
    url: &Url,
    timeout: Duration,
    config: &SlurmrestdConfig,
) -> Result<String, DemandError> {
    let fail = |problem: String| DemandError::Slurmrestd {
        url: origin.location.clone(),
        problem,
    };
    // Read at every fetch, so a rotated token is picked up without a restart.
    let token = match (&config.token_env, &config.token_file) {
        (Some(var), _) => std::env::var(var)
            .map_err(|_| fail(format!("environment variable {var} (token_env) is not set")))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| fail(format!("token_file {}: {e}", path.display())))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        (None, None) => String::new(),
    };
    let headers = [
        ("x-slurm-user-name", config.user_name.as_str()),
        ("x-slurm-user-token", token.as_str()),
    ];
    let reply = client
        .get_with_headers(origin, url, &headers, timeout)
        .await?;
    let request = http::describe(&::http::Method::GET, url);
    let body = http::require_success(
        origin,
        &request,
        reply,
        "; check demand.slurmrestd.user_name and the token (401/403), or api_version (404)",
    )?;
    String::from_utf8(body).map_err(|e| fail(format!("the reply is not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(id: u64, state: &str, reason: &str, partition: &str, tres_per_node: &str) -> Job {
        Job {
            job_id: id,
            states: vec![state.to_owned()],
            state_reason: reason.to_owned(),
            partition: partition.to_owned(),
            nodes: String::new(),
            node_count: 1,
            tasks: Some(1),
            sockets_per_node: None,
            tres_per_job: String::new(),
            tres_per_node: tres_per_node.to_owned(),
            tres_per_task: String::new(),
            tres_per_socket: String::new(),
            gres_detail: Vec::new(),
        }
    }

    #[test]
    fn pending_counts_only_what_capacity_would_start() {
        let jobs = [
            job(1, "PENDING", "ReqNodeNotAvail", "ai", "gres:gpu:4"),
            job(2, "PENDING", "Resources", "ai", "gres/gpu:8"),
            job(3, "PENDING", "JobHeldUser", "ai", "gres:gpu:8"),
            job(4, "PENDING", "QOSMaxGRESPerUser", "ai", "gres:gpu:8"),
            job(5, "RUNNING", "None", "ai", "gres:gpu:2"),
            job(6, "PENDING", "Priority", "cpu", "gres:gpu:8"),
            job(7, "COMPLETED", "None", "ai", "gres:gpu:8"),
        ];
        let d = demand_from_jobs(&jobs, &["ai".to_owned()], Utc::now()).unwrap();
        assert_eq!((d.gpus_pending, d.gpus_running), (12, 2));
        let all = demand_from_jobs(&jobs, &[], Utc::now()).unwrap();
        assert_eq!((all.gpus_pending, all.gpus_running), (20, 2));
    }

    #[test]
    fn recorded_22_05_replies() {
        let drained = include_str!("../../../jobs/src/slurm/testdata/squeue-22.05-drained.json");
        let d = demand_from_jobs(&slurm::parse_squeue(drained).unwrap(), &[], Utc::now()).unwrap();
        assert_eq!((d.gpus_pending, d.gpus_running), (8, 0));
        let running = include_str!("../../../jobs/src/slurm/testdata/squeue-22.05-running.json");
        let d = demand_from_jobs(&slurm::parse_squeue(running).unwrap(), &[], Utc::now()).unwrap();
        assert_eq!((d.gpus_pending, d.gpus_running), (2, 6));
    }
}
