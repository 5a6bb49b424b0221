//! Kubernetes' AI demand: pods asking for GPUs (`nvidia.com/gpu` by default), pending ones not
//! yet bound to a node and running ones holding their GPUs, across all namespaces or the
//! configured ones.

use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use pivot_jobs::kube_pods::{self, PodPlace};

use super::config::{KubeDemandConfig, secs};
use super::{DemandError, GpuDemand};

pub struct KubeDemand {
    client: kube::Client,
    namespaces: Vec<String>,
    gpu_resource: String,
}

impl std::fmt::Debug for KubeDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDemand")
            .field("namespaces", &self.namespaces)
            .field("gpu_resource", &self.gpu_resource)
            .finish_non_exhaustive()
    }
}

/// Adds up the GPU requests of pods that wait for a node and of pods bound to one.
pub fn demand_from_pods<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    gpu_resource: &str,
) -> Result<(u64, u64), kube_pods::BadPod> {
    let (mut pending, mut running) = (0u64, 0u64);
    for pod in pods {
        let gpus = kube_pods::gpu_request(pod, gpu_resource)?;
        match kube_pods::place(pod) {
            PodPlace::Waiting => pending = pending.saturating_add(gpus),
            PodPlace::OnNode(_) => running = running.saturating_add(gpus),
            PodPlace::Finished => {}
        }
    }
    Ok((pending, running))
}

impl KubeDemand {
    pub async fn connect(config: &KubeDemandConfig) -> Result<Self, DemandError> {
        let client = pivot_jobs::kube_client::client(
            config.kubeconfig.as_deref(),
            config.context.as_deref(),
            secs(config.timeout_s),
        )
        .await?;
        Ok(Self::with_client(client, config))
    }

    pub fn with_client(client: kube::Client, config: &KubeDemandConfig) -> Self {
        Self {
            client,
            namespaces: config.namespaces.clone(),
            gpu_resource: config.gpu_resource.clone(),
        }
    }

    pub async fn read(&self) -> Result<GpuDemand, DemandError> {
        // Finished pods hold nothing; leaving them out server-side keeps large clusters cheap.
        let params = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        let mut pods = Vec::new();
        if self.namespaces.is_empty() {
            pods = Api::<Pod>::all(self.client.clone())
                .list(&params)
                .await?
                .items;
        } else {
            for ns in &self.namespaces {
                let api = Api::<Pod>::namespaced(self.client.clone(), ns);
                pods.extend(api.list(&params).await?.items);
            }
        }
        let (gpus_pending, gpus_running) = demand_from_pods(&pods, &self.gpu_resource)?;
        Ok(GpuDemand {
            gpus_pending,
            gpus_running,
            read_at: Utc::now(),
        })
    }
}
