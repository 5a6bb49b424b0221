//! AI demand from the site's workload manager as a market input: a [`MarketSource<AiDemand>`]
//! over [`DemandReader`], its failures told in the market's terms ([`SourceError`]) so the
//! market treats demand it cannot read as unknown (the last good reading until it ages out),
//! never as zero.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pivot_jobs::command::CommandError;

use super::config::{DemandConfig, DemandSource};
use super::{DemandError, DemandReader};
use crate::market::http::HttpClient;
use crate::market::{AiDemand, MarketSource, Origin, Reading, SourceError, SourceErrorKind};

/// `[market.ai_demand] source = "slurm" | "slurmrestd" | "kubernetes"`.
pub struct WorkloadDemand {
    config: DemandConfig,
    client: Option<HttpClient>,
    /// Made at the first fetch (a Kubernetes client loads its kubeconfig then), and again after
    /// a fetch that could not make it.
    reader: Option<DemandReader>,
    origin: Origin,
}

impl std::fmt::Debug for WorkloadDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadDemand")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl WorkloadDemand {
    /// From a validated configuration; slurmrestd is read through `client` when given.
    pub fn new(config: DemandConfig, client: Option<HttpClient>) -> Self {
        let origin = origin_of(&config);
        Self {
            config,
            client,
            reader: None,
            origin,
        }
    }
}

fn origin_of(c: &DemandConfig) -> Origin {
    match c.source {
        DemandSource::Slurm => {
            let s = c.slurm.clone().unwrap_or_default();
            Origin::new("slurm", format!("{} --json", s.squeue.display()))
        }
        DemandSource::Slurmrestd => Origin::new(
            "slurmrestd",
            c.slurmrestd
                .as_ref()
                .and_then(|r| crate::market::http::parse_url(&r.url).ok())
                .map_or_else(
                    || "(no url)".to_owned(),
                    |u| crate::market::http::redact(&u),
                ),
        ),
        DemandSource::Kubernetes => Origin::new(
            "kubernetes",
            c.kubernetes
                .as_ref()
                .and_then(|k| k.kubeconfig.as_ref())
                .map_or_else(
                    || "in-cluster service account".to_owned(),
                    |p| p.display().to_string(),
                ),
        ),
    }
}

/// A demand reader's failure in the market's terms: which source, and what went wrong there.
pub fn source_error(origin: &Origin, e: DemandError) -> SourceError {
    let kind = match e {
        DemandError::Http(e) => return e,
        DemandError::Command(CommandError::TimedOut { timeout, .. }) => {
            SourceErrorKind::Timeout { after: timeout }
        }
        DemandError::Command(c @ CommandError::Failed { .. }) => SourceErrorKind::Connect {
            request: "squeue --json".into(),
            detail: c.to_string(),
        },
        DemandError::Command(c) => SourceErrorKind::Read {
            detail: c.to_string(),
        },
        DemandError::SlurmJson(j) => SourceErrorKind::Body {
            request: "squeue --json".into(),
            field: None,
            problem: j.to_string(),
            excerpt: String::new(),
        },
        DemandError::Kube(k) => SourceErrorKind::Connect {
            request: "list pods".into(),
            detail: k.to_string(),
        },
        DemandError::Pod(p) => SourceErrorKind::Body {
            request: "list pods".into(),
            field: None,
            problem: p.to_string(),
            excerpt: String::new(),
        },
        e @ (DemandError::Slurmrestd { .. } | DemandError::KubeSetup(_)) => SourceErrorKind::Read {
            detail: e.to_string(),
        },
    };
    SourceError::new(origin, kind)
}

/// GPUs as the market counts them (u32; a queue asking for more is "more than can be powered").
fn gpus(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[async_trait]
impl MarketSource<AiDemand> for WorkloadDemand {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    async fn fetch(&mut self, now: DateTime<Utc>) -> Result<Reading<AiDemand>, SourceError> {
        if self.reader.is_none() {
            let reader = DemandReader::connect_with(&self.config, self.client.as_ref())
                .await
                .map_err(|e| source_error(&self.origin, e))?;
            self.reader = Some(reader);
        }
        let Some(reader) = &self.reader else {
            return Err(SourceError::new(
                &self.origin,
                SourceErrorKind::NoValue {
                    detail: "no reader".into(),
                },
            ));
        };
        let d = reader
            .read()
            .await
            .map_err(|e| source_error(&self.origin, e))?;
        Ok(Reading {
            value: AiDemand::from_jobs(gpus(d.gpus_pending), gpus(d.gpus_running)),
            // The queue as read now; a reader's clock a little ahead is not the future.
            at: d.read_at.min(now),
            source: self.origin.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn squeue_config(squeue: &std::path::Path) -> DemandConfig {
        let text = format!(
            "source = \"slurm\"\n[slurm]\nsqueue = \"{}\"\ntimeout_s = 2\n",
            squeue.display()
        );
        let c: DemandConfig = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        c
    }

    /// A stand-in `squeue` printing what the test wrote to `reply` (or failing as told).
    fn fake_squeue(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("squeue");
        std::fs::write(
            &path,
            "#!/bin/sh\nd=$(dirname \"$0\")\nif [ -f \"$d/fail\" ]; then echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1; fi\ncat \"$d/reply\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn the_queue_becomes_pending_and_running_gpus_and_failures_name_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let squeue = fake_squeue(dir.path());
        std::fs::write(
            dir.path().join("reply"),
            include_str!("../../../jobs/src/slurm/testdata/squeue-22.05-running.json"),
        )
        .unwrap();
        let mut src = WorkloadDemand::new(squeue_config(&squeue), None);
        let now = Utc::now();
        let r = src.fetch(now).await.unwrap();
        assert_eq!(r.value, AiDemand::from_jobs(2, 6));
        assert!(r.at <= now);
        assert!(r.source.starts_with("slurm "), "{}", r.source);

        std::fs::write(dir.path().join("fail"), "").unwrap();
        let e = src.fetch(Utc::now()).await.unwrap_err();
        assert!(matches!(e.kind, SourceErrorKind::Connect { .. }), "{e}");
        assert!(e.to_string().contains("Unable to contact"), "{e}");
        std::fs::remove_file(dir.path().join("fail")).unwrap();

        std::fs::write(dir.path().join("reply"), "{\"jobs\": 7}").unwrap();
        let e = src.fetch(Utc::now()).await.unwrap_err();
        assert!(matches!(e.kind, SourceErrorKind::Body { .. }), "{e}");

        let missing = WorkloadDemand::new(squeue_config(&dir.path().join("nope")), None)
            .fetch(Utc::now())
            .await
            .unwrap_err();
        assert!(
            matches!(missing.kind, SourceErrorKind::Read { .. }),
            "{missing}"
        );
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
