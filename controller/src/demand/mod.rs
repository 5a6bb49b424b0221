//! AI demand as a market input: how many GPUs pending and running jobs want, read from the
//! site's workload manager (Slurm through `squeue --json` or slurmrestd, Kubernetes through its
//! API). An idle GPU host earns nothing, so the planner prices GPU hosts only where there is work.
//! [`source::WorkloadDemand`] is the market's source for it (`[market.ai_demand] source =
//! "slurm" | "slurmrestd" | "kubernetes"`).

pub mod config;
pub mod kubernetes;
pub mod slurm;
pub mod source;

use chrono::{DateTime, Utc};

pub use config::DemandConfig;

/// GPUs AI jobs want, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuDemand {
    /// GPUs asked for by jobs waiting to start that more capacity would let start (held jobs,
    /// jobs waiting on a dependency or over a quota are left out: releasing a host does not
    /// start them).
    pub gpus_pending: u64,
    /// GPUs held by jobs running now.
    pub gpus_running: u64,
    pub read_at: DateTime<Utc>,
}

/// Why demand could not be read; the controller should treat demand as unknown, not zero.
#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    #[error("AI demand from Slurm: {0}")]
    Command(#[from] pivot_jobs::command::CommandError),
    #[error("AI demand from Slurm: {0}")]
    SlurmJson(#[from] pivot_jobs::slurm::SlurmJsonError),
    #[error("AI demand from slurmrestd {url}: {problem}")]
    Slurmrestd { url: String, problem: String },
    #[error("AI demand from Slurm: {0}")]
    Http(#[from] crate::market::SourceError),
    #[error("AI demand from Kubernetes: {0}")]
    KubeSetup(#[from] pivot_jobs::kube_client::KubeSetupError),
    #[error("AI demand from Kubernetes: listing pods: {0}")]
    Kube(#[from] kube::Error),
    #[error("AI demand from Kubernetes: {0}")]
    Pod(#[from] pivot_jobs::kube_pods::BadPod),
}

/// The configured reader.
#[derive(Debug)]
pub enum DemandReader {
    Slurm(slurm::SlurmDemand),
    Kubernetes(kubernetes::KubeDemand),
}

impl DemandReader {
    /// Builds the reader `config` names (a Kubernetes client is made here).
    pub async fn connect(config: &DemandConfig) -> Result<Self, DemandError> {
        Self::connect_with(config, None).await
    }

    /// As [`connect`](Self::connect), reading slurmrestd through `client` when one is given.
    pub async fn connect_with(
        config: &DemandConfig,
        client: Option<&crate::market::http::HttpClient>,
    ) -> Result<Self, DemandError> {
        Ok(match config.source {
            config::DemandSource::Kubernetes => Self::Kubernetes(
                kubernetes::KubeDemand::connect(&config.kubernetes.clone().unwrap_or_default())
                    .await?,
            ),
            config::DemandSource::Slurm | config::DemandSource::Slurmrestd => {
                Self::Slurm(slurm::SlurmDemand::new(config, client)?)
            }
        })
    }

    pub async fn read(&self) -> Result<GpuDemand, DemandError> {
        match self {
            Self::Slurm(s) => s.read().await,
            Self::Kubernetes(k) => k.read().await,
        }
    }
}
