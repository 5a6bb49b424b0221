//! Kubernetes through the API server (kube crate): a drain cordons the node, labels it
//! `pivot.dev/power=mining` and taints it `pivot.dev/power=mining:NoSchedule`; after the grace,
//! the GPU pods still on it are evicted through the Eviction API, so PodDisruptionBudgets are
//! respected (a 429 is a transient refusal, retried after the pacing). A release uncordons,
//! relabels `ai` and removes pivot's taint, and only pivot's: other taints stay as they are.
//!
//! Node changes are one JSON merge patch carrying the resourceVersion that was read, so a
//! concurrent writer makes it fail with 409 (transient) instead of losing its change.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use pivot_jobs::kube_pods::{self, PodPlace};
use serde_json::json;
use tracing::{info, warn};

use super::config::{KubernetesConfig, secs};
use super::{ManagerKind, NodeStatus, Why, WorkloadError, WorkloadManager};

/// The label and taint key that show where pivot put the node's power.
pub const POWER_KEY: &str = "pivot.dev/power";

pub struct Kubernetes {
    node: String,
    client: kube::Client,
    gpu_resource: String,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("node", &self.node)
            .field("gpu_resource", &self.gpu_resource)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// Connects with the configured kubeconfig (or in-cluster account).
    pub async fn connect(node: &str, config: &KubernetesConfig) -> Result<Self, WorkloadError> {
        let client = pivot_jobs::kube_client::client(
            config.kubeconfig.as_deref(),
            config.context.as_deref(),
            secs(config.request_timeout_s),
        )
        .await
        .map_err(|source| WorkloadError::KubeSetup {
            node: node.to_owned(),
            source,
        })?;
        Self::with_client(node, client, &config.gpu_resource)
    }

    pub fn with_client(
        node: &str,
        client: kube::Client,
        gpu_resource: &str,
    ) -> Result<Self, WorkloadError> {
        pivot_jobs::names::kubernetes_node_name(node).map_err(|source| {
            WorkloadError::BadNodeName {
                node: node.to_owned(),
                source,
            }
        })?;
        Ok(Self {
            node: node.to_owned(),
            client,
            gpu_resource: gpu_resource.to_owned(),
        })
    }

    fn kube_error(&self, action: &str, source: kube::Error) -> WorkloadError {
        if pivot_jobs::kube_client::api_code(&source) == Some(404) {
            return WorkloadError::UnknownNode {
                manager: ManagerKind::Kubernetes,
                node: self.node.clone(),
                detail: source.to_string(),
            };
        }
        WorkloadError::Kube {
            node: self.node.clone(),
            action: action.to_owned(),
            source,
        }
    }

    async fn get_node(&self) -> Result<Node, WorkloadError> {
        Api::<Node>::all(self.client.clone())
            .get(&self.node)
            .await
            .map_err(|e| self.kube_error("reading the node", e))
    }

    /// Sets cordon, label and pivot's taint in one conditional patch.
    async fn mark(&self, power: &str, cordon: bool) -> Result<(), WorkloadError> {
        let node = self.get_node().await?;
        let mut taints: Vec<serde_json::Value> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.key != POWER_KEY)
            .map(|t| serde_json::to_value(t).unwrap_or_default())
            .collect();
        if cordon {
            taints.push(
                serde_json::to_value(Taint {
                    key: POWER_KEY.to_owned(),
                    value: Some(power.to_owned()),
                    effect: "NoSchedule".to_owned(),
                    time_added: None,
                })
                .unwrap_or_default(),
            );
        }
        let patch = json!({
            "metadata": {
                "labels": { POWER_KEY: power },
                "resourceVersion": node.metadata.resource_version,
            },
            "spec": { "unschedulable": cordon, "taints": taints },
        });
        Api::<Node>::all(self.client.clone())
            .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.kube_error("patching the node", e))
            .map(drop)
    }

    /// GPU pods bound to this node and not finished (DaemonSet and mirror pods left out, as a
    /// drain leaves them).
    async fn gpu_pods(&self) -> Result<Vec<(Pod, u64)>, WorkloadError> {
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&params)
            .await
            .map_err(|e| self.kube_error("listing the node's pods", e))?;
        let mut out = Vec::new();
        for pod in pods.items {
            if place_here(&pod, &self.node) && !kube_pods::left_by_drain(&pod) {
                let gpus = kube_pods::gpu_request(&pod, &self.gpu_resource).map_err(|source| {
                    WorkloadError::Pod {
                        node: self.node.clone(),
                        source: Box::new(source),
                    }
                })?;
                if gpus > 0 {
                    out.push((pod, gpus));
                }
            }
        }
        Ok(out)
    }
}

fn place_here(pod: &Pod, node: &str) -> bool {
    matches!(kube_pods::place(pod), PodPlace::OnNode(n) if n == node)
}

/// `Ready`, `NotReady` or `Unknown`, then `SchedulingDisabled` when cordoned, as kubectl shows it.
fn node_words(node: &Node) -> (bool, String) {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let mut words = match ready {
        Some("True") => "Ready".to_owned(),
        Some("False") => "NotReady".to_owned(),
        _ => "Unknown".to_owned(),
    };
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if cordoned {
        words.push_str(",SchedulingDisabled");
    }
    (ready == Some("True"), words)
}

#[async_trait]
impl WorkloadManager for Kubernetes {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Kubernetes
    }

    fn node(&self) -> &str {
        &self.node
    }

    async fn release(&self, why: &Why) -> Result<(), WorkloadError> {
        info!(node = %self.node, reason = %why.reason, "Uncordoning Kubernetes node");
        self.mark("ai", false).await
    }

    async fn drain(&self, why: &Why) -> Result<(), WorkloadError> {
        info!(node = %self.node, reason = %why.reason, "Cordoning Kubernetes node");
        self.mark("mining", true).await
    }

    async fn remove_jobs(&self, _why: &Why) -> Result<u32, WorkloadError> {
        let mut evicted = 0u32;
        let mut refused = None;
        for (pod, _) in self.gpu_pods().await? {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api = Api::<Pod>::namespaced(self.client.clone(), &ns);
            // The policy/v1 Eviction kubectl sends, spelled out rather than left to the API
            // server's defaulting.
            let eviction = json!({
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns},
            });
            let sent: Result<kube::core::Status, _> = api
                .create_subresource("eviction", &name, &PostParams::default(), &eviction)
                .await;
            match sent {
                Ok(_) => {
                    info!(node = %self.node, pod = %format!("{ns}/{name}"), "Grace over: evicted GPU pod");
                    evicted = evicted.saturating_add(1);
                }
                Err(e) if pivot_jobs::kube_client::api_code(&e) == Some(404) => {}
                Err(e) => {
                    // Try the other pods too: one PodDisruptionBudget must not hold up the rest.
                    warn!(node = %self.node, pod = %format!("{ns}/{name}"), error = %e, "Eviction refused; will retry");
                    refused.get_or_insert(WorkloadError::Kube {
                        node: self.node.clone(),
                        action: format!("evicting pod {ns}/{name}"),
                        source: e,
                    });
                }
            }
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(evicted),
        }
    }

    async fn status(&self) -> Result<NodeStatus, WorkloadError> {
        let (node, pods) = tokio::join!(self.get_node(), self.gpu_pods());
        let (node, pods) = (node?, pods?);
        let (ready, words) = node_words(&node);
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        let pivot_taint = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == POWER_KEY));
        let gpus: u64 = pods.iter().map(|(_, g)| *g).fold(0, u64::saturating_add);
        Ok(NodeStatus {
            node_state: words,
            schedulable: ready && !cordoned && !pivot_taint,
            closed: cordoned || pivot_taint,
            closed_by_other: (cordoned && !pivot_taint)
                .then(|| "cordoned without pivot's taint".to_owned()),
            jobs_running: u32::try_from(pods.len()).unwrap_or(u32::MAX),
            gpus_allocated: super::saturating_u32(gpus),
            busy_without_jobs: false,
        })
    }
}
