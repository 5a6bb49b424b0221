//! Kubernetes pods as AI work: how many GPUs (an extended resource such as `nvidia.com/gpu`) a
//! pod asks for, and whether it waits, holds a node or is finished.

use k8s_openapi::api::core::v1::{Container, Pod};

/// The resource name NVIDIA's device plugin registers.
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";

/// A pod whose GPU request cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pod {namespace}/{name}: container `{container}`: {resource} `{value}` is not a whole number"
)]
pub struct BadPod {
    pub namespace: String,
    pub name: String,
    pub container: String,
    pub resource: String,
    pub value: String,
}

/// Where a pod is in its life, for demand and for draining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPlace {
    /// Not bound to a node yet: demand that waits for capacity.
    Waiting,
    /// Bound to this node and not finished: it holds its GPUs there.
    OnNode(String),
    /// Succeeded or failed: holds nothing.
    Finished,
}

pub fn place(pod: &Pod) -> PodPlace {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed") {
        return PodPlace::Finished;
    }
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(node) if !node.is_empty() => PodPlace::OnNode(node.to_owned()),
        _ => PodPlace::Waiting,
    }
}

/// GPUs the pod needs at once: its containers' sum, or its largest init container if that is
/// more (Kubernetes' effective request). A container's request is its `requests` entry, else its
/// `limits` entry (extended resources default the one to the other).
pub fn gpu_request(pod: &Pod, resource: &str) -> Result<u64, BadPod> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(0);
    };
    let mut app: u64 = 0;
    for c in &spec.containers {
        app = app.saturating_add(container_request(pod, c, resource)?);
    }
    let mut init: u64 = 0;
    for c in spec.init_containers.iter().flatten() {
        init = init.max(container_request(pod, c, resource)?);
    }
    Ok(app.max(init))
}

fn container_request(pod: &Pod, c: &Container, resource: &str) -> Result<u64, BadPod> {
    let Some(res) = c.resources.as_ref() else {
        return Ok(0);
    };
    let quantity = res
        .requests
        .as_ref()
        .and_then(|r| r.get(resource))
        .or_else(|| res.limits.as_ref().and_then(|l| l.get(resource)));
    let Some(q) = quantity else {
        return Ok(0);
    };
    q.0.trim().parse::<u64>().map_err(|_| BadPod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        container: c.name.clone(),
        resource: resource.to_owned(),
        value: q.0.chars().take(40).collect(),
    })
}

/// Pods a drain leaves alone, as `kubectl drain` does: those of a DaemonSet (they would come
/// straight back) and static mirror pods (the API cannot evict them).
pub fn left_by_drain(pod: &Pod) -> bool {
    let daemon = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    daemon || mirror
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn effective_gpu_request() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "train", "namespace": "ai"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "4"}}},
                    {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}},
                    {"name": "c"}
                ],
                "initContainers": [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]
            }
        }));
        assert_eq!(gpu_request(&p, NVIDIA_GPU).unwrap(), 8);
        assert_eq!(gpu_request(&p, "amd.com/gpu").unwrap(), 0);
        assert_eq!(place(&p), PodPlace::Waiting);
    }

    #[test]
    fn a_bad_quantity_names_the_pod() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "x", "namespace": "ai"},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "500m"}}}]}
        }));
        let e = gpu_request(&p, NVIDIA_GPU).unwrap_err().to_string();
        assert!(e.contains("ai/x") && e.contains("500m"), "{e}");
    }

    #[test]
    fn places_and_drain_exemptions() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "x", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "dcgm", "uid": "1"}]},
            "spec": {"nodeName": "gpu01", "containers": []},
            "status": {"phase": "Running"}
        }));
        assert_eq!(place(&p), PodPlace::OnNode("gpu01".into()));
        assert!(left_by_drain(&p));
        let done = pod(
            serde_json::json!({"spec": {"nodeName": "gpu01", "containers": []}, "status": {"phase": "Succeeded"}}),
        );
        assert_eq!(place(&done), PodPlace::Finished);
        assert!(!left_by_drain(&done));
    }
}
